//! Bounded lock-free MPMC ring (Dmitry Vyukov's bounded queue), written once and used twice.
//!
//! # Algorithm
//!
//! The ring is `capacity` slots, each holding a value and a **stamp**, plus two cursors, `head`
//! (next position to pop) and `tail` (next position to push). A position is `lap | index`: the
//! low bits index a slot, the high bits count laps. `one_lap` is the smallest power of two
//! greater than `capacity`, so any capacity works, powers of two or not.
//!
//! A slot's stamp says whose turn it is at that slot:
//! - `stamp == position`: empty, a producer at `position` may fill it;
//! - `stamp == position + 1`: full, a consumer at `position` may take it;
//! - `stamp == position + one_lap`: emptied, ready for the producer one lap later.
//!
//! To push, a producer reads `tail`, checks the slot's stamp, and claims the position with a
//! CAS on `tail`; it then writes the value and publishes it by storing `stamp = position + 1`
//! (release). Popping is the mirror image on `head`. Winning the CAS is what grants exclusive
//! access to the slot's value, and the stamp store is what hands it to the other side.
//!
//! When the stamp is one lap behind (push) or equal to the position (pop), the ring *may* be
//! full or empty: only then does the slow path fence and read the other cursor to decide.
//! A batch claims up to `max` consecutive ready slots with a single CAS.
//!
//! # Two homes, one algorithm
//!
//! `RawRing` is the algorithm over *borrowed* cursors and slots, so the same code serves
//! - [`Ring<T>`], a generic in-process ring that owns its slots (a peer of crossbeam's
//!   `ArrayQueue`), and
//! - [`TokenRing`], a ring of `u64` tokens laid out in caller-provided memory (later a
//!   shared-memory segment). Its indices are bounds-checked at every use, so corrupt memory
//!   yields [`TokenRingError::Corrupt`] rather than undefined behaviour.

mod owned;
mod token;

#[cfg(all(test, loom))]
mod loom_models;

pub use crate::error::{CapacityError, Full, RingMemoryError, TokenRingError};
pub use owned::Ring;
pub use token::TokenRing;

use std::mem::size_of;
use std::ops::Deref;

use crate::base::sync::{fence, AtomicU64, Backoff, Ordering};

/// The largest capacity a ring accepts: positions must keep many lap bits above the index.
pub const MAX_CAPACITY: usize = u32::MAX as usize;

/// Bytes of the line pair a cursor owns: the adjacent-line prefetcher moves 64-byte lines in
/// pairs, so two cursors closer than this still contend.
pub(crate) const LINE_PAIR: usize = 128;

/// Storage of one slot's value. Access is arbitrated by the slot's stamp, not by this type.
pub(crate) trait SlotValue {
    /// What the slot carries.
    type Item;

    /// An empty value cell.
    fn empty() -> Self;

    /// Stores `item`.
    ///
    /// # Safety
    /// The caller has claimed this slot for writing (won the `tail` CAS for its position) and
    /// the slot holds no item.
    unsafe fn write(&self, item: Self::Item);

    /// Moves the item out.
    ///
    /// # Safety
    /// The caller has claimed this slot for reading (won the `head` CAS for its position), so
    /// it holds an item written by the producer whose stamp store the caller acquired.
    unsafe fn take(&self) -> Self::Item;
}

/// One slot: the stamp and the value it guards.
#[repr(C)]
pub(crate) struct Slot<V> {
    /// Whose turn it is at this slot (see the module docs). Written by the claimant only.
    pub(crate) stamp: AtomicU64,
    /// The value; read and written only by the thread that claimed the slot.
    pub(crate) value: V,
}

impl<V: SlotValue> Slot<V> {
    /// An empty slot for `index`, ready for the producer of lap 0.
    pub(crate) fn new(index: u64) -> Self {
        Self {
            stamp: AtomicU64::new(index),
            value: V::empty(),
        }
    }
}

/// A cursor alone on its [`LINE_PAIR`]. The padding is an explicit byte array rather than
/// compiler padding, so writing a `PaddedCursor` initializes every byte it covers (the
/// layout lives in memory the caller owns and, later, other processes map).
#[repr(C, align(128))]
pub(crate) struct PaddedCursor {
    value: AtomicU64,
    _padding: [u8; LINE_PAIR - size_of::<AtomicU64>()],
}

impl PaddedCursor {
    fn new(position: u64) -> Self {
        Self {
            value: AtomicU64::new(position),
            _padding: [0; LINE_PAIR - size_of::<AtomicU64>()],
        }
    }
}

impl Deref for PaddedCursor {
    type Target = AtomicU64;
    fn deref(&self) -> &AtomicU64 {
        &self.value
    }
}

/// The two cursors, each on its own line pair so producers and consumers do not invalidate
/// each other's line.
#[repr(C)]
pub(crate) struct Cursors {
    /// Next position to pop; advanced by consumers with a CAS.
    pub(crate) head: PaddedCursor,
    /// Next position to push; advanced by producers with a CAS.
    pub(crate) tail: PaddedCursor,
}

impl Cursors {
    pub(crate) fn new() -> Self {
        Self {
            head: PaddedCursor::new(0),
            tail: PaddedCursor::new(0),
        }
    }
}

/// The smallest power of two greater than `capacity`, or an error if it is out of range.
pub(crate) fn one_lap_for(capacity: usize) -> Result<u64, CapacityError> {
    if capacity == 0 || capacity > MAX_CAPACITY {
        return Err(CapacityError {
            requested: capacity,
        });
    }
    Ok((capacity as u64 + 1).next_power_of_two())
}

/// Aborts the process if dropped: armed while claimed slots are being published, where an
/// unwinding panic would leave a slot claimed for ever and wedge the ring for every thread.
struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        std::process::abort();
    }
}

/// Which end of the ring an operation works on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// Producers: cursor `tail`, ready when `stamp == position`.
    Tail,
    /// Consumers: cursor `head`, ready when `stamp == position + 1`.
    Head,
}

/// Why a claim got nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimError {
    /// Full (claiming at the tail) or empty (claiming at the head).
    Unavailable,
    /// A cursor points outside the slots: the memory was corrupted.
    Corrupt,
}

/// Consecutive positions, starting at `first`, whose slots the claimant owns exclusively.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claim {
    first: u64,
    count: usize,
}

/// The algorithm over borrowed memory. `slots.len()` is the capacity.
pub(crate) struct RawRing<'a, V> {
    cursors: &'a Cursors,
    slots: &'a [Slot<V>],
    one_lap: u64,
}

impl<V> Clone for RawRing<'_, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V> Copy for RawRing<'_, V> {}

impl<'a, V: SlotValue> RawRing<'a, V> {
    /// A view of a ring. `one_lap` must be `one_lap_for(slots.len())`.
    pub(crate) fn new(cursors: &'a Cursors, slots: &'a [Slot<V>], one_lap: u64) -> Self {
        debug_assert_eq!(one_lap_for(slots.len()), Ok(one_lap));
        Self {
            cursors,
            slots,
            one_lap,
        }
    }

    #[inline(always)]
    fn capacity(&self) -> u64 {
        self.slots.len() as u64
    }

    /// Number of slots (the capacity).
    pub(crate) fn slots_len(&self) -> usize {
        self.slots.len()
    }

    /// The cursors, for tests that play a corrupting writer.
    #[cfg(test)]
    pub(crate) fn cursors_for_test(&self) -> &'a Cursors {
        self.cursors
    }

    /// The slot at `position`, or `None` if the position's index is out of range.
    #[inline(always)]
    fn slot(&self, position: u64) -> Option<&'a Slot<V>> {
        self.slots.get((position & (self.one_lap - 1)) as usize)
    }

    /// The position after `position`: next index, or index 0 of the next lap.
    #[inline(always)]
    fn next(&self, position: u64) -> u64 {
        let index = position & (self.one_lap - 1);
        if index + 1 < self.capacity() {
            position.wrapping_add(1)
        } else {
            (position & !(self.one_lap - 1)).wrapping_add(self.one_lap)
        }
    }

    /// Claims up to `max` (at least one) consecutive ready slots at `end` with one CAS.
    #[inline(always)]
    fn claim(&self, end: End, max: usize) -> Result<Claim, ClaimError> {
        let (cursor, other) = match end {
            End::Tail => (&self.cursors.tail, &self.cursors.head),
            End::Head => (&self.cursors.head, &self.cursors.tail),
        };
        let ready_offset = u64::from(end == End::Head);
        let backoff = Backoff::new();
        let mut position = cursor.load(Ordering::Relaxed);
        loop {
            let slot = self.slot(position).ok_or(ClaimError::Corrupt)?;
            let stamp = slot.stamp.load(Ordering::Acquire);
            if stamp == position.wrapping_add(ready_offset) {
                // Ready. Extend the claim over the following ready slots: their stamps cannot
                // change before our CAS, because only the owner of a position (who must first
                // move `cursor` past our `position`) touches a ready slot.
                let mut count = 1;
                let mut after = self.next(position);
                while count < max {
                    match self.slot(after) {
                        Some(next_slot)
                            if next_slot.stamp.load(Ordering::Acquire)
                                == after.wrapping_add(ready_offset) =>
                        {
                            count += 1;
                            after = self.next(after);
                        }
                        _ => break,
                    }
                }
                match cursor.compare_exchange_weak(
                    position,
                    after,
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        return Ok(Claim {
                            first: position,
                            count,
                        })
                    }
                    Err(current) => {
                        position = current;
                        backoff.spin();
                    }
                }
            } else if self.lags_one_lap(end, stamp, position) {
                // The slot still holds last lap's item (tail) or this lap's item is not yet
                // written (head): full or empty, unless the other cursor moved meanwhile. The
                // fence orders our stamp read before reading the other cursor.
                fence(Ordering::SeqCst);
                let other_position = other.load(Ordering::Relaxed);
                let unavailable = match end {
                    End::Tail => other_position.wrapping_add(self.one_lap) == position,
                    End::Head => other_position == position,
                };
                if unavailable {
                    return Err(ClaimError::Unavailable);
                }
                backoff.spin();
                position = cursor.load(Ordering::Relaxed);
            } else {
                // Another thread claimed this position and has not stored the stamp yet.
                backoff.snooze();
                position = cursor.load(Ordering::Relaxed);
            }
        }
    }

    /// Whether `stamp` at `position` says "the other side has not finished here yet".
    #[inline(always)]
    fn lags_one_lap(&self, end: End, stamp: u64, position: u64) -> bool {
        match end {
            End::Tail => stamp.wrapping_add(self.one_lap) == position.wrapping_add(1),
            End::Head => stamp == position,
        }
    }

    /// The slots of a claim, with their positions, in ring order.
    #[inline(always)]
    fn claimed(&self, claim: Claim) -> impl Iterator<Item = (u64, &'a Slot<V>)> + '_ {
        let mut position = claim.first;
        (0..claim.count).map(move |_| {
            let this = position;
            position = self.next(position);
            // The claim validated every one of these positions; `slots` cannot shrink.
            (this, &self.slots[(this & (self.one_lap - 1)) as usize])
        })
    }

    /// Pushes one item. On failure the item comes back with the reason.
    #[inline(always)]
    pub(crate) fn try_push(&self, item: V::Item) -> Result<(), (ClaimError, V::Item)> {
        match self.claim(End::Tail, 1) {
            Ok(claim) => {
                let slot = &self.slots[(claim.first & (self.one_lap - 1)) as usize];
                // SAFETY: the claim won the tail CAS for `claim.first` and the stamp said the
                // slot was empty, so this thread alone may write it until it stores the stamp.
                unsafe { slot.value.write(item) };
                slot.stamp
                    .store(claim.first.wrapping_add(1), Ordering::Release);
                Ok(())
            }
            Err(error) => Err((error, item)),
        }
    }

    /// Pops one item, `Ok(None)` if the ring is empty.
    #[inline(always)]
    pub(crate) fn try_pop(&self) -> Result<Option<V::Item>, ClaimError> {
        match self.claim(End::Head, 1) {
            Ok(claim) => {
                let slot = &self.slots[(claim.first & (self.one_lap - 1)) as usize];
                // SAFETY: the claim won the head CAS for `claim.first` and acquired the stamp
                // `first + 1`, so the slot holds an item and this thread alone may take it.
                let item = unsafe { slot.value.take() };
                slot.stamp
                    .store(claim.first.wrapping_add(self.one_lap), Ordering::Release);
                Ok(Some(item))
            }
            Err(ClaimError::Unavailable) => Ok(None),
            Err(ClaimError::Corrupt) => Err(ClaimError::Corrupt),
        }
    }

    /// A batch claim of up to `max` slots, `None` when there is nothing to claim.
    #[inline(always)]
    fn claim_batch(&self, end: End, max: usize) -> Result<Option<Claim>, ClaimError> {
        if max == 0 {
            return Ok(None);
        }
        match self.claim(end, max) {
            Ok(claim) => Ok(Some(claim)),
            Err(ClaimError::Unavailable) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Pushes up to `max` items produced by `next_item`, claimed with one CAS; returns how many.
    /// `next_item` is called exactly that many times and must not panic.
    #[inline]
    pub(crate) fn push_batch(
        &self,
        max: usize,
        mut next_item: impl FnMut() -> V::Item,
    ) -> Result<usize, ClaimError> {
        let Some(claim) = self.claim_batch(End::Tail, max)? else {
            return Ok(0);
        };
        let must_publish = AbortOnUnwind;
        for (position, slot) in self.claimed(claim) {
            // SAFETY: as in `try_push`: this position is in our claim and its slot was empty.
            unsafe { slot.value.write(next_item()) };
            slot.stamp
                .store(position.wrapping_add(1), Ordering::Release);
        }
        std::mem::forget(must_publish);
        Ok(claim.count)
    }

    /// Pops up to `max` items into `sink`, claimed with one CAS; returns how many.
    /// `sink` must not panic.
    #[inline]
    pub(crate) fn pop_batch(
        &self,
        max: usize,
        mut sink: impl FnMut(V::Item),
    ) -> Result<usize, ClaimError> {
        let Some(claim) = self.claim_batch(End::Head, max)? else {
            return Ok(0);
        };
        let must_publish = AbortOnUnwind;
        for (position, slot) in self.claimed(claim) {
            // SAFETY: as in `try_pop`: this position is in our claim and its slot is full.
            sink(unsafe { slot.value.take() });
            slot.stamp
                .store(position.wrapping_add(self.one_lap), Ordering::Release);
        }
        std::mem::forget(must_publish);
        Ok(claim.count)
    }

    /// Number of items, consistent at some instant during the call.
    pub(crate) fn len(&self) -> usize {
        loop {
            let tail = self.cursors.tail.load(Ordering::SeqCst);
            let head = self.cursors.head.load(Ordering::SeqCst);
            // A tail unchanged across the head read gives a consistent pair.
            if self.cursors.tail.load(Ordering::SeqCst) == tail {
                let mask = self.one_lap - 1;
                let (head_index, tail_index) = (head & mask, tail & mask);
                let capacity = self.capacity();
                // Wrapping: corrupt cursors may hold indices past the capacity.
                let len = if head_index < tail_index {
                    tail_index - head_index
                } else if head_index > tail_index {
                    capacity.wrapping_sub(head_index).wrapping_add(tail_index)
                } else if tail == head {
                    0
                } else {
                    capacity
                };
                // Corrupt cursors could claim more than the capacity; never report that.
                return len.min(capacity) as usize;
            }
        }
    }

    /// Whether the ring was empty at some instant during the call.
    pub(crate) fn is_empty(&self) -> bool {
        let head = self.cursors.head.load(Ordering::SeqCst);
        let tail = self.cursors.tail.load(Ordering::SeqCst);
        head == tail
    }

    /// Whether the ring was full at some instant during the call.
    pub(crate) fn is_full(&self) -> bool {
        let tail = self.cursors.tail.load(Ordering::SeqCst);
        let head = self.cursors.head.load(Ordering::SeqCst);
        head.wrapping_add(self.one_lap) == tail
    }
}
