//! [`TokenRing`]: a ring of `u64` tokens laid out in caller-provided memory.
//!
//! # Memory layout (`#[repr(C)]`, native endianness)
//!
//! | offset | field | written by |
//! |---|---|---|
//! | 0 | `head` (u64), then zero padding to 128 | consumers, CAS |
//! | 128 | `tail` (u64), then zero padding to 256 | producers, CAS |
//! | 256 | `capacity` (u64) | the initializer, before use |
//! | 264 | `one_lap` (u64) | the initializer, before use |
//! | 272 | zero padding to 384 ([`TokenRing::HEADER_BYTES`]) | the initializer |
//! | 384 + 16·i | slot i: `stamp` (u64), `token` (u64) | the claimant of the slot |
//!
//! Every header byte belongs to a field, padding included, so `init` leaves no byte of the
//! caller's memory uninitialized.
//! The view never re-reads `capacity` or `one_lap` from memory after initialization, and
//! every cursor read from memory is bounds-checked before it indexes a slot.
//!
//! What bounds-checking cannot give: progress. This is Vyukov's ring, where a producer
//! preempted between claiming a slot and stamping it makes the others wait, and a stamp
//! overwritten with a value of the wrong lap looks exactly like such a producer: the others
//! wait for it for ever (no undefined behaviour, no panic, but a hang). Memory that another
//! process can write, or kill a writer of, wants the queue's index ring instead
//! (`src/engine/index_ring.rs`), where every operation is one CAS on a slot word.

use std::mem::{align_of, size_of};

use super::{
    one_lap_for, ClaimError, Cursors, RawRing, RingMemoryError, Slot, SlotValue, TokenRingError,
    LINE_PAIR,
};
use crate::base::sync::{AtomicU64, Ordering};

/// The fixed part of a token ring in memory. Every byte belongs to a field (no compiler
/// padding), so initializing the header initializes all of its bytes.
#[repr(C)]
struct RingHeader {
    /// Head and tail (see the layout table).
    cursors: Cursors,
    /// Number of slots, set once by the initializer.
    capacity: AtomicU64,
    /// Smallest power of two above `capacity`, set once by the initializer.
    one_lap: AtomicU64,
    /// Fills the header to a whole line pair, so slots start aligned.
    _padding: [u8; LINE_PAIR - 2 * size_of::<AtomicU64>()],
}

// The documented layout, with no implicit padding anywhere in the header.
#[cfg(not(loom))]
const _: () = {
    assert!(size_of::<RingHeader>() == 3 * LINE_PAIR);
    assert!(align_of::<RingHeader>() == LINE_PAIR);
    assert!(size_of::<Slot<AtomicU64>>() == 2 * size_of::<u64>());
};

/// A token slot's value. Ordering comes from the slot's stamp (release/acquire), so the token
/// itself is relaxed; being atomic, a misbehaving writer can garble it but never cause UB.
impl SlotValue for AtomicU64 {
    type Item = u64;

    fn empty() -> Self {
        AtomicU64::new(0)
    }

    unsafe fn write(&self, item: u64) {
        self.store(item, Ordering::Relaxed);
    }

    unsafe fn take(&self) -> u64 {
        self.load(Ordering::Relaxed)
    }
}

/// A bounded lock-free MPMC ring of `u64` tokens living in memory the caller provides, e.g.
/// a region that other threads (and, later, other processes) map.
///
/// Same algorithm as [`Ring`](super::Ring) (one implementation), so the same guarantees:
/// FIFO, lock-free, a full ring refuses pushes. The view is `Copy`: hand it to every thread.
///
/// # Examples
///
/// ```
/// use ackring::TokenRing;
///
/// // Any memory aligned to `TokenRing::ALIGN` will do; here, a `Vec` of aligned blocks.
/// #[repr(C, align(128))]
/// struct Block([u8; 128]);
/// let bytes = TokenRing::bytes_needed(4)?;
/// let mut blocks: Vec<Block> = (0..bytes.div_ceil(128)).map(|_| Block([0; 128])).collect();
/// // SAFETY (of the example): `Block` is plain bytes, the slice covers the whole Vec.
/// let memory = unsafe { std::slice::from_raw_parts_mut(blocks.as_mut_ptr().cast::<u8>(), bytes) };
///
/// let ring = TokenRing::init(memory, 4)?;
/// std::thread::scope(|s| {
///     s.spawn(|| ring.try_push(7).unwrap());
/// });
/// assert_eq!(ring.try_pop(), Ok(7));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy)]
pub struct TokenRing<'a> {
    raw: RawRing<'a, AtomicU64>,
}

impl<'a> TokenRing<'a> {
    /// The alignment ring memory must have.
    pub const ALIGN: usize = align_of::<RingHeader>();

    /// Bytes of the fixed header before the slots.
    pub const HEADER_BYTES: usize = size_of::<RingHeader>();

    /// Bytes a ring of `capacity` tokens occupies.
    ///
    /// # Errors
    /// [`RingMemoryError::Capacity`] for a capacity of 0 or above the maximum.
    pub fn bytes_needed(capacity: usize) -> Result<usize, RingMemoryError> {
        one_lap_for(capacity)?;
        Ok(Self::HEADER_BYTES + capacity * size_of::<Slot<AtomicU64>>())
    }

    /// Lays out an empty ring of `capacity` tokens at the start of `memory`.
    ///
    /// # Errors
    /// A [`RingMemoryError`] if the capacity is out of range, or `memory` is misaligned or
    /// shorter than [`bytes_needed`](Self::bytes_needed).
    pub fn init(memory: &'a mut [u8], capacity: usize) -> Result<Self, RingMemoryError> {
        let one_lap = one_lap_for(capacity)?;
        let needed = Self::bytes_needed(capacity)?;
        let address = memory.as_ptr() as usize;
        if !address.is_multiple_of(Self::ALIGN) {
            return Err(RingMemoryError::Misaligned {
                address,
                required: Self::ALIGN,
            });
        }
        if memory.len() < needed {
            return Err(RingMemoryError::TooSmall {
                needed,
                provided: memory.len(),
            });
        }
        let header_ptr = memory.as_mut_ptr().cast::<RingHeader>();
        // `memory` is exclusively ours for 'a, aligned to `ALIGN` (checked), and at least
        // `needed` bytes long (checked), which covers the header and `capacity` slots; slots
        // follow the header, whose size is a multiple of its alignment, which is at least a
        // slot's. Writing (not assigning) overwrites plain bytes without dropping anything.
        // The `&'a` references made afterwards inherit `memory`'s exclusive borrow, so no one
        // else reads or writes these bytes for 'a except through this view.
        // SAFETY: aligned, long enough and exclusively ours for 'a, as just explained.
        let (header, slots) = unsafe {
            header_ptr.write(RingHeader {
                cursors: Cursors::new(),
                capacity: AtomicU64::new(capacity as u64),
                one_lap: AtomicU64::new(one_lap),
                _padding: [0; LINE_PAIR - 2 * size_of::<AtomicU64>()],
            });
            let slots_ptr = header_ptr.add(1).cast::<Slot<AtomicU64>>();
            for index in 0..capacity {
                slots_ptr.add(index).write(Slot::new(index as u64));
            }
            (
                &*header_ptr,
                std::slice::from_raw_parts(slots_ptr.cast_const(), capacity),
            )
        };
        Ok(Self {
            raw: RawRing::new(&header.cursors, slots, one_lap),
        })
    }

    /// Pushes `token` at the tail.
    ///
    /// # Errors
    /// [`TokenRingError::Full`], or [`TokenRingError::Corrupt`] if the memory was overwritten.
    #[inline]
    pub fn try_push(&self, token: u64) -> Result<(), TokenRingError> {
        self.raw
            .try_push(token)
            .map_err(|(error, _)| token_error(error, TokenRingError::Full))
    }

    /// Pops the token at the head.
    ///
    /// # Errors
    /// [`TokenRingError::Empty`], or [`TokenRingError::Corrupt`] if the memory was overwritten.
    #[inline]
    pub fn try_pop(&self) -> Result<u64, TokenRingError> {
        match self.raw.try_pop() {
            Ok(Some(token)) => Ok(token),
            Ok(None) => Err(TokenRingError::Empty),
            Err(error) => Err(token_error(error, TokenRingError::Empty)),
        }
    }

    /// Pushes the longest prefix of `tokens` that fits, with one claim; returns its length
    /// (0 when full).
    ///
    /// # Errors
    /// [`TokenRingError::Corrupt`] if the memory was overwritten.
    pub fn push_slice(&self, tokens: &[u64]) -> Result<usize, TokenRingError> {
        let mut source = tokens.iter().copied();
        self.raw
            .push_batch(tokens.len(), || source.next().unwrap_or_default())
            .map_err(|error| token_error(error, TokenRingError::Full))
    }

    /// Pops up to `out.len()` tokens into the front of `out`, with one claim; returns how
    /// many (0 when empty).
    ///
    /// # Errors
    /// [`TokenRingError::Corrupt`] if the memory was overwritten.
    pub fn pop_into(&self, out: &mut [u64]) -> Result<usize, TokenRingError> {
        let mut targets = out.iter_mut();
        let max = targets.len();
        self.raw
            .pop_batch(max, |token| {
                if let Some(target) = targets.next() {
                    *target = token;
                }
            })
            .map_err(|error| token_error(error, TokenRingError::Empty))
    }

    /// Number of tokens at some instant during the call.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Whether the ring was empty at some instant during the call.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The most tokens the ring holds.
    pub fn capacity(&self) -> usize {
        self.raw.slots_len()
    }
}

fn token_error(error: ClaimError, unavailable: TokenRingError) -> TokenRingError {
    match error {
        ClaimError::Unavailable => unavailable,
        ClaimError::Corrupt => TokenRingError::Corrupt,
    }
}

impl std::fmt::Debug for TokenRing<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRing")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{alloc_zeroed, dealloc, Layout};

    /// A separately allocated block of memory aligned for a token ring, freed on drop.
    struct AlignedMemory {
        ptr: *mut u8,
        layout: Layout,
    }

    impl AlignedMemory {
        fn new(bytes: usize, align: usize) -> Self {
            let layout = Layout::from_size_align(bytes, align).unwrap();
            // SAFETY: the layout has a non-zero size (every ring needs its header).
            let ptr = unsafe { alloc_zeroed(layout) };
            assert!(!ptr.is_null());
            Self { ptr, layout }
        }

        fn bytes(&mut self) -> &mut [u8] {
            // SAFETY: `ptr` is a live, zeroed allocation of `layout.size()` bytes that only
            // this value owns; the returned borrow is tied to `&mut self`.
            unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
        }
    }

    impl Drop for AlignedMemory {
        fn drop(&mut self) {
            // SAFETY: allocated in `new` with this layout and not freed before.
            unsafe { dealloc(self.ptr, self.layout) }
        }
    }

    #[test]
    fn header_layout_is_as_documented() {
        if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
            assert_eq!(TokenRing::ALIGN, 128);
            assert_eq!(TokenRing::HEADER_BYTES, 384);
            assert_eq!(size_of::<Slot<AtomicU64>>(), 16);
        }
        assert_eq!(TokenRing::HEADER_BYTES % TokenRing::ALIGN, 0);
    }

    #[test]
    fn rejects_unsuitable_memory() {
        let needed = TokenRing::bytes_needed(8).unwrap();
        let mut memory = AlignedMemory::new(needed + TokenRing::ALIGN, TokenRing::ALIGN);
        assert!(matches!(
            TokenRing::init(&mut memory.bytes()[1..], 8),
            Err(RingMemoryError::Misaligned { required, .. }) if required == TokenRing::ALIGN
        ));
        assert_eq!(
            TokenRing::init(&mut memory.bytes()[..needed - 1], 8).unwrap_err(),
            RingMemoryError::TooSmall {
                needed,
                provided: needed - 1
            }
        );
        assert!(matches!(
            TokenRing::init(memory.bytes(), 0),
            Err(RingMemoryError::Capacity(_))
        ));
        assert!(TokenRing::init(&mut memory.bytes()[..needed], 8).is_ok());
    }

    #[test]
    fn fifo_full_empty_and_slices() {
        let capacity = 3;
        let mut memory =
            AlignedMemory::new(TokenRing::bytes_needed(capacity).unwrap(), TokenRing::ALIGN);
        let ring = TokenRing::init(memory.bytes(), capacity).unwrap();
        assert_eq!(ring.try_pop(), Err(TokenRingError::Empty));
        assert_eq!(ring.push_slice(&[1, 2, 3, 4]), Ok(3));
        assert_eq!(ring.try_push(5), Err(TokenRingError::Full));
        assert_eq!(ring.try_pop(), Ok(1));
        ring.try_push(5).unwrap();
        let mut out = [0; 8];
        assert_eq!(ring.pop_into(&mut out), Ok(3));
        assert_eq!(out[..3], [2, 3, 5]);
        assert!(ring.is_empty());
    }

    #[test]
    fn corrupt_cursor_is_an_error_not_ub() {
        let capacity = 3;
        let mut memory =
            AlignedMemory::new(TokenRing::bytes_needed(capacity).unwrap(), TokenRing::ALIGN);
        let ring = TokenRing::init(memory.bytes(), capacity).unwrap();
        ring.try_push(1).unwrap();
        // Another writer scribbles over the cursors: index 3 is outside a 3-slot ring.
        ring.raw.cursors_for_test().head.store(3, Ordering::Relaxed);
        ring.raw.cursors_for_test().tail.store(3, Ordering::Relaxed);
        assert_eq!(ring.try_pop(), Err(TokenRingError::Corrupt));
        assert_eq!(ring.try_push(2), Err(TokenRingError::Corrupt));
        assert_eq!(ring.pop_into(&mut [0; 2]), Err(TokenRingError::Corrupt));
        assert!(ring.len() <= capacity);
        // A head index past the capacity and ahead of the tail: `len` must not underflow.
        ring.raw.cursors_for_test().head.store(3, Ordering::Relaxed);
        ring.raw.cursors_for_test().tail.store(1, Ordering::Relaxed);
        assert!(ring.len() <= capacity);
        assert_eq!(ring.try_pop(), Err(TokenRingError::Corrupt));
    }

    #[test]
    fn threads_share_a_ring_in_caller_memory() {
        let capacity = 5;
        let per_producer: u64 = if cfg!(miri) { 40 } else { 20_000 };
        let mut memory =
            AlignedMemory::new(TokenRing::bytes_needed(capacity).unwrap(), TokenRing::ALIGN);
        let ring = TokenRing::init(memory.bytes(), capacity).unwrap();
        let consumed = AtomicU64::new(0);
        let mut seen: Vec<u64> = std::thread::scope(|s| {
            for producer in 0..2u64 {
                s.spawn(move || {
                    for seq in 0..per_producer {
                        while ring.try_push(producer << 32 | seq).is_err() {
                            std::thread::yield_now();
                        }
                    }
                });
            }
            let consumers: Vec<_> = (0..2)
                .map(|_| {
                    let consumed = &consumed;
                    s.spawn(move || {
                        let mut got = Vec::new();
                        let mut last_seq = [None::<u64>; 2];
                        while consumed.load(Ordering::Relaxed) < 2 * per_producer {
                            let Ok(token) = ring.try_pop() else {
                                std::thread::yield_now();
                                continue;
                            };
                            consumed.fetch_add(1, Ordering::Relaxed);
                            let (producer, seq) = ((token >> 32) as usize, token & 0xffff_ffff);
                            assert!(last_seq[producer] < Some(seq), "per-producer FIFO");
                            last_seq[producer] = Some(seq);
                            got.push(token);
                        }
                        got
                    })
                })
                .collect();
            consumers
                .into_iter()
                .flat_map(|c| c.join().unwrap())
                .collect()
        });
        seen.sort_unstable();
        let expected: Vec<u64> = (0..2u64)
            .flat_map(|p| (0..per_producer).map(move |s| p << 32 | s))
            .collect();
        assert_eq!(seen, expected);
        assert!(ring.is_empty());
    }
}
