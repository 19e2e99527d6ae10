//! [`Ring<T>`]: the in-process ring that owns its slots.

use std::fmt;
use std::mem::MaybeUninit;

use super::{one_lap_for, CapacityError, ClaimError, Cursors, Full, RawRing, Slot, SlotValue};
use crate::base::sync::UnsafeCell;

/// A slot's value for an owned ring: possibly-uninitialized `T`, accessed by the claimant.
pub(crate) struct ValueCell<T>(UnsafeCell<MaybeUninit<T>>);

impl<T> SlotValue for ValueCell<T> {
    type Item = T;

    fn empty() -> Self {
        Self(UnsafeCell::new(MaybeUninit::uninit()))
    }

    unsafe fn write(&self, item: T) {
        // SAFETY: the caller claimed the empty slot for writing, so no other reference to the
        // cell's contents exists while we write.
        self.0.with_mut(|cell| unsafe { (*cell).write(item) });
    }

    unsafe fn take(&self) -> T {
        // SAFETY: the caller claimed the full slot for reading: the cell holds an initialized
        // `T` that no one else will read, and the stamp store after this marks it empty.
        self.0
            .with_mut(|cell| unsafe { (*cell).assume_init_read() })
    }
}

/// A bounded, lock-free, multi-producer multi-consumer FIFO queue of `T`.
///
/// The algorithm is Vyukov's bounded queue (see the [module docs](crate::ring)): pushes and
/// pops are one CAS and one store each on the fast path, and a batch moves many items for one
/// CAS. Any capacity from 1 to [`MAX_CAPACITY`](super::MAX_CAPACITY) works.
///
/// A full ring refuses a push and hands the item back; it never overwrites.
/// Items left in the ring are dropped with it.
///
/// # Examples
///
/// ```
/// use ackring::Ring;
///
/// let ring = Ring::new(2)?;
/// ring.try_push("a")?;
/// ring.try_push("b")?;
/// assert_eq!(ring.try_push("c").unwrap_err().into_inner(), "c"); // full: nothing overwritten
/// assert_eq!(ring.try_pop(), Some("a"));
///
/// let mut batch = vec!["c", "d"];
/// assert_eq!(ring.push_batch(&mut batch), 1); // room for one: "c" moved in, "d" stays
/// assert_eq!(batch, ["d"]);
///
/// let mut out = Vec::new();
/// assert_eq!(ring.pop_batch(&mut out, 8), 2);
/// assert_eq!(out, ["b", "c"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Ring<T> {
    /// Head and tail, cache-padded.
    cursors: Cursors,
    /// `capacity` slots; the stamps decide who may touch each value.
    slots: Box<[Slot<ValueCell<T>>]>,
    /// The smallest power of two greater than the capacity (position = lap | index).
    one_lap: u64,
}

// SAFETY: a `Ring<T>` moves `T`s between threads but never shares a `&T`: each value is
// accessed only by the one thread that claimed its slot. So `T: Send` suffices for both.
unsafe impl<T: Send> Send for Ring<T> {}
// SAFETY: as above; all shared state is atomics plus values guarded by slot stamps.
unsafe impl<T: Send> Sync for Ring<T> {}

impl<T> Ring<T> {
    /// Creates an empty ring holding at most `capacity` items.
    ///
    /// # Errors
    /// [`CapacityError`] if `capacity` is 0 or above [`MAX_CAPACITY`](super::MAX_CAPACITY).
    pub fn new(capacity: usize) -> Result<Self, CapacityError> {
        let one_lap = one_lap_for(capacity)?;
        Ok(Self {
            cursors: Cursors::new(),
            slots: (0..capacity as u64).map(Slot::new).collect(),
            one_lap,
        })
    }

    #[inline(always)]
    fn raw(&self) -> RawRing<'_, ValueCell<T>> {
        RawRing::new(&self.cursors, &self.slots, self.one_lap)
    }

    /// Pushes `item` at the tail, or returns it inside [`Full`] if the ring is full.
    #[inline(always)]
    pub fn try_push(&self, item: T) -> Result<(), Full<T>> {
        self.raw().try_push(item).map_err(|(error, item)| {
            debug_assert_eq!(
                error,
                ClaimError::Unavailable,
                "owned cursors stay in range"
            );
            Full(item)
        })
    }

    /// Pops the item at the head, or `None` if the ring is empty.
    #[inline(always)]
    pub fn try_pop(&self) -> Option<T> {
        // An owned ring's cursors are only ever written by this algorithm: never corrupt.
        self.raw().try_pop().ok().flatten()
    }

    /// Moves the longest prefix of `items` that fits into the ring, in order, with a single
    /// claim. Returns how many were moved; the rest stay in `items`.
    pub fn push_batch(&self, items: &mut Vec<T>) -> usize {
        let mut source = std::mem::take(items).into_iter();
        // A `vec::IntoIter` yields exactly as many items as it reports, and the claim is at
        // most that many, so `next` cannot run dry.
        let pushed = self
            .raw()
            .push_batch(source.len(), || source.next().expect("claim <= items"))
            .unwrap_or(0);
        // Put back what was not pushed, in order, in the same allocation.
        *items = source.collect();
        pushed
    }

    /// Pops up to `max` items into `out` (appended in FIFO order) with a single claim.
    /// Returns how many were popped.
    pub fn pop_batch(&self, out: &mut Vec<T>, max: usize) -> usize {
        // Reserve first: once slots are claimed, nothing may fail until their stamps are set.
        let max = max.min(self.capacity());
        out.reserve(max);
        self.raw()
            .pop_batch(max, |item| out.push(item))
            .unwrap_or(0)
    }

    /// Number of items in the ring at some instant during the call.
    pub fn len(&self) -> usize {
        self.raw().len()
    }

    /// Whether the ring was empty at some instant during the call.
    pub fn is_empty(&self) -> bool {
        self.raw().is_empty()
    }

    /// Whether the ring was full at some instant during the call.
    pub fn is_full(&self) -> bool {
        self.raw().is_full()
    }

    /// The most items the ring holds.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // `&mut self`: no other thread is inside; popping drops every remaining item.
        while self.try_pop().is_some() {}
    }
}

impl<T> fmt::Debug for Ring<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use std::sync::Arc;

    /// Scales iteration counts down under Miri, which is ~1000x slower.
    fn scaled(n: usize) -> usize {
        if cfg!(miri) {
            (n / 50).max(4)
        } else {
            n
        }
    }

    #[test]
    fn rejects_bad_capacity() {
        assert_eq!(
            Ring::<u8>::new(0).unwrap_err(),
            CapacityError { requested: 0 }
        );
        assert!(Ring::<u8>::new(super::super::MAX_CAPACITY + 1).is_err());
    }

    #[test]
    fn wraps_around_many_times_at_small_and_odd_capacities() {
        // Miri runs the large capacities for fewer rounds: still several laps each.
        let capacities: &[usize] = if cfg!(miri) {
            &[1, 2, 3, 5, 7, 8, 64, 100]
        } else {
            &[1, 2, 3, 5, 7, 8, 64, 100, 128]
        };
        for &capacity in capacities {
            let ring = Ring::new(capacity).unwrap();
            let mut next_in = 0u64;
            let mut next_out = 0u64;
            // Under Miri: every drain amount (`round % capacity`) still comes at least twice
            // for the small capacities, in at most 30 rounds.
            let rounds = if cfg!(miri) {
                (4 * capacity + 10).min(30)
            } else {
                300
            };
            for round in 0..rounds {
                // Fill to the brim, then drain a varying amount, so every boundary is crossed
                // at every index.
                while ring.try_push(next_in).is_ok() {
                    next_in += 1;
                }
                assert_eq!(ring.len(), capacity, "full at round {round}");
                assert!(ring.is_full());
                for _ in 0..=(round % capacity) {
                    assert_eq!(ring.try_pop(), Some(next_out));
                    next_out += 1;
                }
            }
            while let Some(value) = ring.try_pop() {
                assert_eq!(value, next_out);
                next_out += 1;
            }
            assert_eq!(next_in, next_out);
            assert!(
                next_in > 3 * capacity as u64,
                "wrapped several laps at {capacity}"
            );
            assert!(ring.is_empty());
            assert_eq!(ring.len(), 0);
        }
    }

    #[test]
    fn full_and_empty_boundaries() {
        let ring = Ring::new(3).unwrap();
        assert_eq!(ring.try_pop(), None);
        assert!(ring.is_empty() && !ring.is_full());
        for i in 0..3 {
            ring.try_push(i).unwrap();
        }
        assert_eq!(ring.try_push(99).unwrap_err().into_inner(), 99);
        assert_eq!(ring.len(), 3);
        assert_eq!(ring.try_pop(), Some(0));
        ring.try_push(3).unwrap();
        assert_eq!(ring.try_push(100), Err(Full(100)));
        let drained: Vec<_> = std::iter::from_fn(|| ring.try_pop()).collect();
        assert_eq!(drained, [1, 2, 3]);
        assert_eq!(ring.try_pop(), None);
    }

    #[test]
    fn batches_stop_at_full_and_empty_and_keep_order_across_the_wrap() {
        let ring = Ring::new(5).unwrap();
        let mut out = Vec::new();
        assert_eq!(ring.pop_batch(&mut out, 4), 0);
        assert_eq!(ring.push_batch(&mut Vec::new()), 0);
        let mut next_in = 0u32;
        let mut next_out = 0u32;
        for round in 0..200 {
            let mut batch: Vec<u32> = (next_in..next_in + 1 + round as u32 % 7).collect();
            let offered = batch.len();
            let pushed = ring.push_batch(&mut batch);
            assert_eq!(pushed + batch.len(), offered);
            assert_eq!(
                batch.first().copied(),
                (pushed < offered).then_some(next_in + pushed as u32)
            );
            next_in += pushed as u32;
            out.clear();
            let popped = ring.pop_batch(&mut out, round % 4 + 1);
            assert_eq!(
                out,
                (next_out..next_out + popped as u32).collect::<Vec<_>>()
            );
            next_out += popped as u32;
            assert_eq!(ring.len(), (next_in - next_out) as usize);
        }
        assert!(next_out > 20);
    }

    /// Counts live instances so tests can see exactly which items were dropped.
    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    #[test]
    fn drops_remaining_items_exactly_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        let ring = Ring::new(4).unwrap();
        for _ in 0..6 {
            // Two of these do not fit and are handed back, then dropped here.
            let _ = ring.try_push(Counted(drops.clone()));
        }
        assert_eq!(drops.load(Relaxed), 2);
        drop(ring.try_pop());
        assert_eq!(drops.load(Relaxed), 3);
        drop(ring);
        assert_eq!(
            drops.load(Relaxed),
            6,
            "the three left in the ring dropped with it"
        );
    }

    #[test]
    fn drops_nothing_twice_after_wrapping() {
        let drops = Arc::new(AtomicUsize::new(0));
        let ring = Ring::new(2).unwrap();
        for _ in 0..5 {
            ring.try_push(Counted(drops.clone())).unwrap();
            drop(ring.try_pop());
        }
        ring.try_push(Counted(drops.clone())).unwrap();
        drop(ring);
        assert_eq!(drops.load(Relaxed), 6);
    }

    #[test]
    fn threads_transfer_every_item_exactly_once() {
        let ring = Arc::new(Ring::new(4).unwrap());
        let per_producer = scaled(2_000);
        let producers: Vec<_> = (0..2u64)
            .map(|producer| {
                let ring = ring.clone();
                std::thread::spawn(move || {
                    for seq in 0..per_producer as u64 {
                        let mut item = (producer << 32) | seq;
                        while let Err(Full(back)) = ring.try_push(item) {
                            item = back;
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let consumed = Arc::new(AtomicUsize::new(0));
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let (ring, consumed) = (ring.clone(), consumed.clone());
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    let mut out = Vec::new();
                    while consumed.load(Relaxed) < 2 * per_producer {
                        out.clear();
                        match ring.pop_batch(&mut out, 3) {
                            0 => std::thread::yield_now(),
                            n => _ = consumed.fetch_add(n, Relaxed),
                        }
                        got.extend_from_slice(&out);
                    }
                    got
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        let mut all: Vec<u64> = consumers
            .into_iter()
            .flat_map(|c| {
                let got = c.join().unwrap();
                // Per producer, a consumer sees increasing sequence numbers.
                for producer in 0..2u64 {
                    let seqs: Vec<_> = got.iter().filter(|v| *v >> 32 == producer).collect();
                    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
                }
                got
            })
            .collect();
        all.extend(std::iter::from_fn(|| ring.try_pop()));
        all.sort_unstable();
        let expected: Vec<u64> = (0..2u64)
            .flat_map(|p| (0..per_producer as u64).map(move |s| (p << 32) | s))
            .collect();
        assert_eq!(all, expected);
    }
}
