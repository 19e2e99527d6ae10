//! The region: one block of memory holding all of a queue's state.
//!
//! Every part of the queue (slot headers and payloads, the index rings, the timing wheel,
//! the dedup table, the counters, the shared cursors) is a *section* of the region: an
//! array of one plain type at a fixed offset, found by index, never by pointer. The same
//! engine code runs over a region on the heap (an in-process queue) or in a mapped segment
//! (a queue shared by processes); only where the bytes come from differs.
//!
//! The sections, their order, sizes and writers are drawn on the format page
//! (`layout`'s module docs); [`Layout::new`] is the one place that computes them. (Twice
//! the slots in the free and ready rings: room for every token plus the copies crash
//! recovery may push.)
//!
//! Under loom the same sections are separate typed allocations (loom's atomics are not
//! plain memory); the views handed to the engine are the same types either way.

#[cfg(not(loom))]
use std::mem::align_of;
use std::mem::size_of;
use std::ptr::NonNull;

use crate::base::sync::AtomicU64;
use crate::base::table::Table;
use crate::engine::counters::{CounterStripe, STRIPES};
use crate::engine::dedup::Stripe;
use crate::engine::slots::{PayloadLine, SlotHeader};
use crate::engine::wheel::{BUCKETS, LEVELS};
use crate::layout::shared::SharedWords;
use crate::liveness::{Participant, PARTICIPANTS};

/// Section starts are multiples of this (a cache-line pair).
pub(crate) const SECTION_ALIGN: usize = 128;

/// The numbers that fix a region's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) capacity: u32,
    /// Cache lines of payload per slot.
    pub(crate) lines_per_slot: u32,
    pub(crate) dead_capacity: u32,
    /// Dedup stripes; 0 when dedup is off.
    pub(crate) dedup_stripes: u32,
}

/// A section: where it starts and how many elements it has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) offset: usize,
    pub(crate) count: usize,
}

/// Where every section of a region of some [`Shape`] lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) shared: Span,
    pub(crate) counters: Span,
    pub(crate) participants: Span,
    pub(crate) slot_headers: Span,
    pub(crate) payloads: Span,
    pub(crate) free_ring: Span,
    pub(crate) ready_ring: Span,
    pub(crate) dead_ring: Span,
    pub(crate) wheel_heads: Span,
    pub(crate) wheel_next: Span,
    pub(crate) dedup: Span,
    /// Bytes in all.
    pub(crate) size: usize,
}

/// The region would not fit in the address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a queue of this shape needs more memory than the address space holds")]
pub(crate) struct TooLarge;

impl Layout {
    /// The layout of a region of `shape`, starting at byte `start`.
    pub(crate) fn new(shape: Shape, start: usize) -> Result<Self, TooLarge> {
        let mut end = start;
        let mut section = |count: usize, element: usize| -> Result<Span, TooLarge> {
            let offset = end
                .checked_next_multiple_of(SECTION_ALIGN)
                .ok_or(TooLarge)?;
            let bytes = count.checked_mul(element).ok_or(TooLarge)?;
            end = offset.checked_add(bytes).ok_or(TooLarge)?;
            Ok(Span { offset, count })
        };
        let capacity = shape.capacity as usize;
        let payload_lines = capacity
            .checked_mul(shape.lines_per_slot as usize)
            .ok_or(TooLarge)?;
        let word = size_of::<AtomicU64>();
        let layout = Self {
            shared: section(1, size_of::<SharedWords>())?,
            counters: section(STRIPES, size_of::<CounterStripe>())?,
            participants: section(PARTICIPANTS, size_of::<Participant>())?,
            slot_headers: section(capacity, size_of::<SlotHeader>())?,
            payloads: section(payload_lines, size_of::<PayloadLine>())?,
            // Twice the slots: room for every token plus the copies recovery may push.
            free_ring: section(capacity.checked_mul(2).ok_or(TooLarge)?, word)?,
            ready_ring: section(capacity.checked_mul(2).ok_or(TooLarge)?, word)?,
            dead_ring: section(shape.dead_capacity as usize, word)?,
            wheel_heads: section(LEVELS * BUCKETS, word)?,
            wheel_next: section(capacity.checked_mul(2).ok_or(TooLarge)?, word)?,
            dedup: section(shape.dedup_stripes as usize, size_of::<Stripe>())?,
            size: 0,
        };
        let size = end
            .checked_next_multiple_of(SECTION_ALIGN)
            .ok_or(TooLarge)?;
        Ok(Self { size, ..layout })
    }
}

/// A type a region section may hold: valid for every bit pattern (all zero included),
/// shared through atomics or cells only, and no stricter alignment than a section start.
///
/// # Safety
/// Implementors are `repr(C)` or `repr(transparent)` compositions of `AtomicU64`,
/// `AtomicU32` (the signals' futex words) and `UnsafeCell<[u8; N]>` with no padding that
/// is read, alignment at most [`SECTION_ALIGN`], and no drop glue.
pub(crate) unsafe trait Plain: Sync + Default {}

/// Raw views of a region's sections. They point into memory the owning [`Region`] keeps
/// alive and never moves; [`Region::sections`] hands them out as references bound to the
/// region's borrow.
struct RawSections {
    shared: NonNull<SharedWords>,
    counters: NonNull<[CounterStripe]>,
    participants: NonNull<[Participant]>,
    slot_headers: NonNull<[SlotHeader]>,
    payloads: NonNull<[PayloadLine]>,
    free_ring: NonNull<[AtomicU64]>,
    ready_ring: NonNull<[AtomicU64]>,
    dead_ring: NonNull<[AtomicU64]>,
    wheel_heads: NonNull<[AtomicU64]>,
    wheel_next: NonNull<[AtomicU64]>,
    dedup: NonNull<[Stripe]>,
}

/// The sections of a region, borrowed from it.
#[derive(Clone, Copy)]
pub(crate) struct Sections<'r> {
    pub(crate) shared: &'r SharedWords,
    pub(crate) counters: &'r [CounterStripe],
    pub(crate) participants: Table<'r, Participant>,
    pub(crate) slot_headers: &'r [SlotHeader],
    pub(crate) payloads: &'r [PayloadLine],
    pub(crate) free_ring: &'r [AtomicU64],
    pub(crate) ready_ring: &'r [AtomicU64],
    pub(crate) dead_ring: &'r [AtomicU64],
    pub(crate) wheel_heads: &'r [AtomicU64],
    pub(crate) wheel_next: &'r [AtomicU64],
    pub(crate) dedup: &'r [Stripe],
}

/// The memory a region lives in.
enum Memory {
    /// Zeroed heap memory, aligned to [`SECTION_ALIGN`].
    #[cfg(not(loom))]
    Heap {
        start: NonNull<u8>,
        layout: std::alloc::Layout,
    },
    /// A private anonymous mapping with a transparent-huge-page hint, for large regions:
    /// the kernel hands out zeroed pages on first touch, so the hint is given before any
    /// page exists (an allocator's zeroing would touch every page first, as 4 KiB pages).
    #[cfg(all(not(loom), not(miri)))]
    Anonymous(#[allow(dead_code, reason = "owned: unmapped on drop")] memmap2::MmapRaw),
    /// A mapped segment file (the segment header first, then the region).
    #[cfg(not(loom))]
    Mapped(crate::layout::memory::Mapping),
    /// One allocation per section (loom's atomics cannot be laid over bytes).
    #[cfg(loom)]
    Typed(#[allow(dead_code, reason = "owned, only read through `RawSections`")] TypedSections),
}

/// A queue's region: the memory and the sections carved from it.
pub(crate) struct Region {
    raw: RawSections,
    _memory: Memory,
}

// SAFETY: the region is a block of atomics and cells, shared by design; every access goes
// through atomics or through the slot protocol that orders payload bytes (see `slots`).
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

#[cfg(not(loom))]
impl Drop for Memory {
    fn drop(&mut self) {
        if let Memory::Heap { start, layout } = self {
            // SAFETY: allocated in `Region::on_heap` with exactly this layout, freed once.
            unsafe { std::alloc::dealloc(start.as_ptr(), *layout) };
        }
    }
}

/// Regions this large get a transparent-huge-page hint: their sections are reached at random
/// (a hash table, slots in any order), and 4 KiB pages would make each reach a TLB miss.
#[cfg(all(not(loom), not(miri)))]
const HUGE_PAGE: usize = 2 << 20;

impl Region {
    /// A zeroed region of `shape` on the heap, sections not yet initialized.
    pub(crate) fn on_heap(shape: Shape) -> Result<Self, TooLarge> {
        let layout = Layout::new(shape, 0)?;
        #[cfg(not(loom))]
        {
            #[cfg(not(miri))]
            if layout.size >= HUGE_PAGE {
                return Self::on_huge_pages(&layout);
            }
            let alloc_layout =
                std::alloc::Layout::from_size_align(layout.size.max(SECTION_ALIGN), SECTION_ALIGN)
                    .map_err(|_| TooLarge)?;
            // SAFETY: the layout has a non-zero size.
            let start =
                NonNull::new(unsafe { std::alloc::alloc_zeroed(alloc_layout) }).ok_or(TooLarge)?;
            let memory = Memory::Heap {
                start,
                layout: alloc_layout,
            };
            // SAFETY: `start` is a zeroed allocation of at least `layout.size` bytes aligned
            // to SECTION_ALIGN, owned by `memory`, which the region keeps.
            let raw = unsafe { RawSections::carve(start, alloc_layout.size(), &layout) }?;
            Ok(Self {
                raw,
                _memory: memory,
            })
        }
        #[cfg(loom)]
        {
            let typed = TypedSections::new(&layout);
            let raw = typed.raw();
            Ok(Self {
                raw,
                _memory: Memory::Typed(typed),
            })
        }
    }

    /// A zeroed region of `layout` in a fresh anonymous mapping, starting on a huge-page
    /// boundary (so every whole 2 MiB of it can be one huge page).
    #[cfg(all(not(loom), not(miri)))]
    fn on_huge_pages(layout: &Layout) -> Result<Self, TooLarge> {
        let map = memmap2::MmapOptions::new()
            .len(layout.size.checked_add(HUGE_PAGE).ok_or(TooLarge)?)
            .map_anon()
            .map_err(|_| TooLarge)?;
        let skip = map.as_ptr().align_offset(HUGE_PAGE);
        #[cfg(target_os = "linux")]
        {
            // Only hints: without them the queue works the same, a little slower. Huge pages
            // first, then every page faulted in now, at creation, rather than on first use
            // by a publish (a 2 MiB page is zeroed on its first touch: a stall of tens of
            // microseconds on the hot path). Kernels before 5.14 refuse the second.
            let _ = map.advise(memmap2::Advice::HugePage);
            let _ = map.advise_range(memmap2::Advice::PopulateWrite, skip, layout.size);
        }
        let map = memmap2::MmapRaw::from(map);
        // SAFETY: `skip` < HUGE_PAGE, and the mapping is HUGE_PAGE bytes longer than the
        // region, so the offset stays inside it.
        let start = NonNull::new(unsafe { map.as_mut_ptr().add(skip) }).ok_or(TooLarge)?;
        // SAFETY: from `start` on, the mapping has at least `layout.size` bytes, zeroed by
        // the kernel, aligned to HUGE_PAGE (so to SECTION_ALIGN); it is owned by the region
        // (mapped until the region is dropped) and only ever accessed shared.
        let raw = unsafe { RawSections::carve(start, map.len() - skip, layout) }?;
        Ok(Self {
            raw,
            _memory: Memory::Anonymous(map),
        })
    }

    /// The region of `layout` in a mapped segment (header first); sections not checked
    /// beyond lying inside the mapping.
    #[cfg(not(loom))]
    pub(crate) fn in_mapping(
        mapping: crate::layout::memory::Mapping,
        layout: &Layout,
    ) -> Result<Self, TooLarge> {
        // SAFETY: a mapping is page-aligned (so aligned to SECTION_ALIGN), its bytes are
        // initialized (file contents, zero-filled where never written), it stays mapped for
        // as long as `memory` (owned by the region) lives, and region memory is only ever
        // accessed shared.
        let raw = unsafe { RawSections::carve(mapping.start(), mapping.len(), layout) }?;
        Ok(Self {
            raw,
            _memory: Memory::Mapped(mapping),
        })
    }

    /// The segment header, for a region in a mapped segment.
    #[cfg(not(loom))]
    pub(crate) fn segment_header(&self) -> Option<crate::layout::header::Header<'_>> {
        match &self._memory {
            Memory::Mapped(mapping) => mapping.header().ok(),
            _ => None, // this process's own memory: no segment header
        }
    }

    /// Whether the region is this process's alone (not a mapped segment).
    pub(crate) fn is_private(&self) -> bool {
        #[cfg(not(loom))]
        return !matches!(self._memory, Memory::Mapped(_));
        #[cfg(loom)]
        return true;
    }

    /// The sections, borrowed from the region.
    #[inline]
    pub(crate) fn sections(&self) -> Sections<'_> {
        let raw = &self.raw;
        // SAFETY: every raw section points into memory `self._memory` owns and never moves
        // or frees before `self` is dropped, holds initialized `Plain` values, and is only
        // ever shared (no `&mut` is made of region memory); the borrow of `self` bounds the
        // references.
        unsafe {
            Sections {
                shared: raw.shared.as_ref(),
                counters: raw.counters.as_ref(),
                participants: Table::from_raw(raw.participants),
                slot_headers: raw.slot_headers.as_ref(),
                payloads: raw.payloads.as_ref(),
                free_ring: raw.free_ring.as_ref(),
                ready_ring: raw.ready_ring.as_ref(),
                dead_ring: raw.dead_ring.as_ref(),
                wheel_heads: raw.wheel_heads.as_ref(),
                wheel_next: raw.wheel_next.as_ref(),
                dedup: raw.dedup.as_ref(),
            }
        }
    }
}

#[cfg(not(loom))]
impl RawSections {
    /// Carves the sections of `layout` out of `len` bytes at `start`.
    ///
    /// # Safety
    /// `start` is aligned to [`SECTION_ALIGN`], `len` bytes from it are initialized memory
    /// that outlives every use of the result, and it is only ever accessed shared.
    unsafe fn carve(start: NonNull<u8>, len: usize, layout: &Layout) -> Result<Self, TooLarge> {
        /// One section, checked to lie inside the memory and to be aligned for `T`.
        fn section<T: Plain>(
            start: NonNull<u8>,
            len: usize,
            span: Span,
        ) -> Result<NonNull<[T]>, TooLarge> {
            let bytes = span.count.checked_mul(size_of::<T>()).ok_or(TooLarge)?;
            let end = span.offset.checked_add(bytes).ok_or(TooLarge)?;
            if end > len || !span.offset.is_multiple_of(align_of::<T>()) {
                return Err(TooLarge);
            }
            // The offset is within the allocation (checked above), so the add stays in it.
            let first = start.as_ptr().wrapping_add(span.offset).cast::<T>();
            let first = NonNull::new(first).ok_or(TooLarge)?;
            Ok(NonNull::slice_from_raw_parts(first, span.count))
        }
        let shared = section::<SharedWords>(start, len, layout.shared)?.cast::<SharedWords>();
        Ok(Self {
            shared,
            counters: section(start, len, layout.counters)?,
            participants: section(start, len, layout.participants)?,
            slot_headers: section(start, len, layout.slot_headers)?,
            payloads: section(start, len, layout.payloads)?,
            free_ring: section(start, len, layout.free_ring)?,
            ready_ring: section(start, len, layout.ready_ring)?,
            dead_ring: section(start, len, layout.dead_ring)?,
            wheel_heads: section(start, len, layout.wheel_heads)?,
            wheel_next: section(start, len, layout.wheel_next)?,
            dedup: section(start, len, layout.dedup)?,
        })
    }
}

/// Under loom: each section its own allocation of loom-tracked values.
#[cfg(loom)]
struct TypedSections {
    shared: Box<SharedWords>,
    counters: Box<[CounterStripe]>,
    participants: Box<[Participant]>,
    slot_headers: Box<[SlotHeader]>,
    payloads: Box<[PayloadLine]>,
    free_ring: Box<[AtomicU64]>,
    ready_ring: Box<[AtomicU64]>,
    dead_ring: Box<[AtomicU64]>,
    wheel_heads: Box<[AtomicU64]>,
    wheel_next: Box<[AtomicU64]>,
    dedup: Box<[Stripe]>,
}

#[cfg(loom)]
impl TypedSections {
    fn new(layout: &Layout) -> Self {
        fn many<T: Plain>(span: Span) -> Box<[T]> {
            (0..span.count).map(|_| T::default()).collect()
        }
        Self {
            shared: Box::default(),
            counters: many(layout.counters),
            participants: many(layout.participants),
            slot_headers: many(layout.slot_headers),
            payloads: many(layout.payloads),
            free_ring: many(layout.free_ring),
            ready_ring: many(layout.ready_ring),
            dead_ring: many(layout.dead_ring),
            wheel_heads: many(layout.wheel_heads),
            wheel_next: many(layout.wheel_next),
            dedup: many(layout.dedup),
        }
    }

    fn raw(&self) -> RawSections {
        RawSections {
            shared: NonNull::from(&*self.shared),
            counters: NonNull::from(&*self.counters),
            participants: NonNull::from(&*self.participants),
            slot_headers: NonNull::from(&*self.slot_headers),
            payloads: NonNull::from(&*self.payloads),
            free_ring: NonNull::from(&*self.free_ring),
            ready_ring: NonNull::from(&*self.ready_ring),
            dead_ring: NonNull::from(&*self.dead_ring),
            wheel_heads: NonNull::from(&*self.wheel_heads),
            wheel_next: NonNull::from(&*self.wheel_next),
            dedup: NonNull::from(&*self.dedup),
        }
    }
}

// SAFETY: any bit pattern is a valid `AtomicU64`, its alignment is 8, no drop glue.
unsafe impl Plain for AtomicU64 {}
// SAFETY: a `repr(C)` composition of `AtomicU64`s and `AtomicU32`s (any bit pattern is a
// valid value), with alignment 128 and no drop glue; the same holds for the types below.
unsafe impl Plain for SharedWords {}
// SAFETY: see above.
unsafe impl Plain for CounterStripe {}
// SAFETY: see above.
unsafe impl Plain for SlotHeader {}
// SAFETY: see above.
unsafe impl Plain for Participant {}
// SAFETY: see above; its bytes are an `UnsafeCell<[u8; 64]>`, any bytes valid.
unsafe impl Plain for PayloadLine {}
// SAFETY: see above.
unsafe impl Plain for Stripe {}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            capacity: 10,
            lines_per_slot: 2,
            dead_capacity: 3,
            dedup_stripes: 4,
        }
    }

    #[test]
    fn sections_are_aligned_in_order_and_disjoint() {
        let layout = Layout::new(shape(), 0).unwrap();
        let spans = [
            (layout.shared, size_of::<SharedWords>()),
            (layout.counters, size_of::<CounterStripe>()),
            (layout.participants, size_of::<Participant>()),
            (layout.slot_headers, size_of::<SlotHeader>()),
            (layout.payloads, size_of::<PayloadLine>()),
            (layout.free_ring, 8),
            (layout.ready_ring, 8),
            (layout.dead_ring, 8),
            (layout.wheel_heads, 8),
            (layout.wheel_next, 8),
            (layout.dedup, size_of::<Stripe>()),
        ];
        let mut end = 0;
        for (span, element) in spans {
            assert_eq!(span.offset % SECTION_ALIGN, 0);
            assert!(span.offset >= end, "sections overlap");
            end = span.offset + span.count * element;
        }
        assert!(end <= layout.size);
        assert_eq!(layout.payloads.count, 20);
        assert_eq!(layout.wheel_next.count, 20);
    }

    #[test]
    fn a_heap_region_is_zeroed_and_carved_to_its_layout() {
        let region = Region::on_heap(shape()).unwrap();
        let sections = region.sections();
        assert_eq!(sections.slot_headers.len(), 10);
        assert_eq!(sections.payloads.len(), 20);
        assert_eq!(sections.dead_ring.len(), 3);
        assert_eq!(sections.dedup.len(), 4);
        assert!(sections
            .free_ring
            .iter()
            .all(|w| w.load(crate::base::sync::Ordering::Relaxed) == 0));
        assert_eq!(Layout::new(shape(), 0).unwrap().size % SECTION_ALIGN, 0);
    }

    #[test]
    fn absurd_shapes_are_too_large_not_a_panic() {
        let huge = Shape {
            capacity: u32::MAX,
            lines_per_slot: u32::MAX,
            dead_capacity: u32::MAX,
            dedup_stripes: u32::MAX,
        };
        // 2^32 slots of 2^32 lines of 64 bytes: 2^70 bytes, more than any usize.
        assert_eq!(Layout::new(huge, 0), Err(TooLarge));
        assert_eq!(Layout::new(shape(), usize::MAX - 10), Err(TooLarge));
    }
}
