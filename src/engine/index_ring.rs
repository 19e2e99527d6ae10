//! A bounded lock-free MPMC ring of 32-bit values that no stopped thread can block: the
//! queue's index of slot tokens, in process or in a shared segment.
//!
//! # Why not the Vyukov ring
//!
//! In [`RawRing`](super::RawRing) a producer claims a position (CAS on `tail`) and publishes
//! it later (stamp store). A producer that stops between the two (a process killed with
//! SIGKILL) leaves its slot claimed for ever, and every consumer queues up behind it. In a
//! shared segment that is one crash away from a dead queue.
//!
//! # Algorithm
//!
//! Here each slot is **one word**, `seq << 32 | value`, and every push or pop is **one CAS on
//! a slot word**, which both claims the position and completes the operation. `head` and
//! `tail` are hints that whoever sees them lag moves forward ("helping"), so a thread that
//! stops after its slot CAS leaves nothing half done.
//!
//! A slot serves positions `index, index + cap, index + 2 cap, ...`; its `seq` (the low 32
//! bits of a position) says which one it waits for, and its value whether it is filled:
//!
//! | slot word          | meaning at position `p` (this slot's turn)        |
//! |--------------------|---------------------------------------------------|
//! | `(p, EMPTY)`       | waiting for the push at `p`                        |
//! | `(p, v)`           | holds `v`, pushed at `p`, waiting for the pop at `p`|
//! | `(p + cap, EMPTY)` | popped at `p`, waiting for the push at `p + cap`   |
//!
//! - push at `t = tail`: `(t, EMPTY) -> (t, v)`. Seeing `(t, v')` or `(t + cap, EMPTY)` means
//!   the push at `t` already happened: help `tail` past `t` and retry. Seeing
//!   `(t - cap, v')` means the ring is full.
//! - pop at `h = head`: `(h, v) -> (h + cap, EMPTY)`. Seeing `(h + cap, ..)` means the pop
//!   at `h` already happened: help `head` past `h`. Seeing `(h, EMPTY)` means it is empty.
//!
//! A cursor promises only that every position before it is done, so it may lag by any
//! amount: one that was set back (the pusher or popper of a slot moves the cursor past it
//! with a plain store, see `move_past`) finds slots a turn or more ahead of it, and jumps
//! past the operation such a slot shows done (`(s, v)`: the push at `s`; `(s, EMPTY)`: the
//! pop at `s - cap`), since that operation ran at its cursor, after every one before it.
//!
//! Every other word is impossible (a cursor only moves past a position once the slot's
//! CAS for it has happened), so it is reported as [`Corrupt`]: memory another process
//! wrote cannot make an operation misbehave or spin for ever (each call also gives up,
//! as corrupt, after more helping steps than a sane ring could ever need).
//!
//! Slot CASes are acquire-release, so whatever a pusher wrote before pushing (the slot
//! header it moved to Ready) happens-before the popper's use of the value.
//!
//! `seq` keeps 32 bits of a position: a thread would have to stall between reading a slot
//! and its CAS while the ring turns over 2^32 positions *and* find the identical word
//! again for a stale CAS to succeed. (`move_past` has a blind spot of the same kind.)

use crate::base::sync::{AtomicU64, Ordering};

/// The value of an empty slot; never pushed.
pub(crate) const EMPTY: u32 = u32::MAX;

/// The most slots a ring may have: positions are compared as wrapping 32-bit numbers.
pub(crate) const MAX_SLOTS: usize = 1 << 30;

/// The ring's memory says something no sequence of operations leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("index ring is corrupt: {what}")]
pub(crate) struct Corrupt {
    pub(crate) what: &'static str,
}

#[inline]
fn word(seq: u64, value: u32) -> u64 {
    (seq & 0xffff_ffff) << 32 | u64::from(value)
}

#[inline]
fn seq_of(word: u64) -> u32 {
    (word >> 32) as u32
}

#[inline]
fn value_of(word: u64) -> u32 {
    word as u32
}

/// `a - b` as a signed distance between wrapping 32-bit positions.
#[inline]
fn distance(a: u32, b: u32) -> i64 {
    i64::from(a.wrapping_sub(b) as i32)
}

/// A ring over borrowed cursors and slots (in a region, or in owned memory).
pub(crate) struct IndexRing<'r> {
    head: &'r AtomicU64,
    tail: &'r AtomicU64,
    slots: &'r [AtomicU64],
}

impl<'r> IndexRing<'r> {
    /// Writes an empty ring into the given words: both cursors at 0, slot `i` waiting for
    /// the push at `i`. `slots` must be `1..=MAX_SLOTS` long.
    pub(crate) fn init(head: &'r AtomicU64, tail: &'r AtomicU64, slots: &'r [AtomicU64]) -> Self {
        debug_assert!((1..=MAX_SLOTS).contains(&slots.len()));
        head.store(0, Ordering::Relaxed);
        tail.store(0, Ordering::Relaxed);
        for (index, slot) in slots.iter().enumerate() {
            slot.store(word(index as u64, EMPTY), Ordering::Relaxed);
        }
        Self { head, tail, slots }
    }

    /// A ring already laid out in these words (by [`init`](Self::init), maybe in another
    /// process). Nothing is trusted: every word is checked when it is used.
    #[inline]
    pub(crate) fn attach(head: &'r AtomicU64, tail: &'r AtomicU64, slots: &'r [AtomicU64]) -> Self {
        Self { head, tail, slots }
    }

    #[inline]
    fn slot(&self, position: u64) -> &AtomicU64 {
        let len = self.slots.len() as u64;
        // A queue's rings are a power of two long when its capacity is: a mask then, since
        // a division costs tens of cycles on every push and pop.
        let index = if len.is_power_of_two() {
            position & (len - 1)
        } else {
            position % len
        };
        &self.slots[index as usize]
    }

    /// How many steps in a row one call may take without seeing its cursor move before it
    /// calls the ring corrupt: live threads move a cursor (or let us help it) within a
    /// step or two, however heavy the contention; only memory no operation wrote can keep
    /// a cursor still while its slot says it should move.
    #[inline]
    fn step_limit(&self) -> usize {
        self.slots.len().saturating_mul(4).saturating_add(1024)
    }

    /// Moves `cursor` past `position`, whose slot CAS we just made, unless someone already
    /// did. A load and a plain store, not a CAS: in an uncontended push or pop the cursor
    /// CAS cost as much as the slot CAS, a locked instruction each, and dropping it makes
    /// every publish, receive and ack cheaper (figures: benches/README.md, *Measurements
    /// behind the code's choices*). The price is that a cursor can move back: if others
    /// move it on between our load and our store, we set it back to `position + 1`. Every
    /// position before that is done all the same, which is all a cursor promises, and
    /// whoever reads it next finds the slot there moved on by whole turns and jumps the
    /// cursor forward again (see `push` and `pop`).
    ///
    /// A thread stopped between the load and the store (SIGSTOP) while the ring turns on
    /// by 2^31 positions or more sets the cursor back further than a 32-bit `seq` can show:
    /// its slots then read as behind it, and `catch_up` moves it to where the other cursor
    /// proves the ring got. What stays undetected is a stop that ends within a turn of an
    /// exact multiple of 2^32 positions later (at 5 M operations a second, 14 minutes, give
    /// or take a ring's turn): the slot words then look current and a push may skip
    /// positions, leaving values no pop reaches. The slot CAS has the same kind of blind
    /// spot (module docs).
    #[inline]
    fn move_past(cursor: &AtomicU64, position: u64) {
        if cursor.load(Ordering::Relaxed) == position {
            // wrapping: a corrupt cursor must not panic
            cursor.store(position.wrapping_add(1), Ordering::Release);
        }
    }

    /// Appends `value` (not [`EMPTY`]). `Ok(false)` if the ring is full.
    #[inline]
    pub(crate) fn try_push(&self, value: u32) -> Result<bool, Corrupt> {
        Ok(self.push(value, true)?.is_some())
    }

    /// Appends the longest prefix of `values` (none [`EMPTY`]) that fits, in order; returns
    /// how many. The first goes in as a `try_push` would; each next one by a CAS on the
    /// next position's slot directly, which succeeds only if that slot waits for exactly
    /// that push (so the values stay consecutive, in order); `tail` then moves once, past
    /// them all (see [`advance_to`](Self::advance_to)). At most a ring's length at once.
    #[inline]
    pub(crate) fn try_push_many(&self, values: &[u32]) -> Result<usize, Corrupt> {
        // At most one turn of the ring: a batch cannot fill (or empty) more anyway.
        let values = &values[..values.len().min(self.slots.len())];
        let Some((&first, rest)) = values.split_first() else {
            return Ok(0);
        };
        let Some(position) = self.push(first, false)? else {
            return Ok(0);
        };
        let mut next = position.wrapping_add(1);
        let mut pushed = 1;
        for &value in rest {
            debug_assert_ne!(value, EMPTY);
            let waiting = word(next, EMPTY);
            // SeqCst, as in `push`.
            let taken = self.slot(next).compare_exchange(
                waiting,
                word(next, value),
                Ordering::SeqCst,
                Ordering::Acquire,
            );
            if taken.is_err() {
                break; // full, or another pusher took `next`: the batch ends here
            }
            pushed += 1;
            next = next.wrapping_add(1);
        }
        self.advance_to(self.tail, next);
        Ok(pushed)
    }

    /// Pops up to `out.len()` values into `out`, oldest first; returns how many. The first
    /// comes out as a `try_pop` would; each next one by a CAS on the next position's slot
    /// directly, which succeeds only if that slot holds the value pushed at exactly that
    /// position; `head` then moves once, past them all. At most a ring's length at once.
    #[inline]
    pub(crate) fn try_pop_many(&self, out: &mut [u32]) -> Result<usize, Corrupt> {
        // At most one turn of the ring (see `try_push_many`).
        let turn = out.len().min(self.slots.len());
        let out = &mut out[..turn];
        if out.is_empty() {
            return Ok(0);
        }
        let Some((position, first)) = self.pop(false, |_| true)? else {
            return Ok(0);
        };
        out[0] = first;
        let cap = self.slots.len() as u64;
        let mut next = position.wrapping_add(1);
        let mut popped = 1;
        while popped < out.len() {
            let slot = self.slot(next);
            let current = slot.load(Ordering::Acquire);
            if seq_of(current) != next as u32 || value_of(current) == EMPTY {
                break; // empty, or another popper took `next` (or a corrupt word)
            }
            let emptied = word(next.wrapping_add(cap), EMPTY);
            if slot
                .compare_exchange(current, emptied, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                break;
            }
            out[popped] = value_of(current);
            popped += 1;
            next = next.wrapping_add(1);
        }
        self.advance_to(self.head, next);
        Ok(popped)
    }

    /// Every push before this position is done: each pop before `head` took a pushed value.
    #[inline]
    fn pushed_at_least(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Every pop before this position is done: the push at `tail - 1` found its slot
    /// emptied by the pop at `tail - 1 - cap`, which ran at the head, after every pop
    /// before it.
    #[inline]
    fn popped_at_least(&self) -> u64 {
        self.tail
            .load(Ordering::Acquire)
            .saturating_sub(self.slots.len() as u64)
    }

    /// The repair for a cursor set back by half the sequence space or more, which its slots
    /// cannot show (their 32-bit `seq` then reads as behind it): moves `cursor` from `at` to
    /// `done`, a position the other cursor proves done, if that is ahead. Returns whether it
    /// did; if not, the slot at `at` really is corrupt.
    #[cold]
    fn catch_up(&self, cursor: &AtomicU64, at: u64, done: u64) -> bool {
        if done <= at {
            return false;
        }
        self.advance_to(cursor, done);
        true
    }

    /// Moves `cursor` forward to `to` unless it is already there or past. Sound for a batch
    /// that completed every position from the one it began at (which the cursor had
    /// reached, or was helped to) up to `to`: a cursor may stand at a position only once
    /// every position before it is done, and that holds for `to`.
    #[inline]
    fn advance_to(&self, cursor: &AtomicU64, to: u64) {
        let mut current = cursor.load(Ordering::Acquire);
        // Positions never wrap (2^64 operations); a corrupt cursor past `to` stays put. Each
        // failed CAS means the cursor moved: a bounded number of tries, so that a process
        // writing the cursor without pause cannot keep us here.
        for _ in 0..self.step_limit() {
            if current >= to {
                return;
            }
            match cursor.compare_exchange_weak(current, to, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(moved) => current = moved,
            }
        }
    }

    /// `try_push`, returning the position pushed at (`None`: full); `advance: false` stops
    /// right after the slot CAS, as a pusher killed at its linearization point would (and
    /// as a batch does, moving `tail` once at its end).
    #[inline]
    fn push(&self, value: u32, advance: bool) -> Result<Option<u64>, Corrupt> {
        debug_assert_ne!(value, EMPTY);
        let cap = self.slots.len() as i64;
        let mut tail = self.tail.load(Ordering::Acquire);
        let mut still = 0;
        while still < self.step_limit() {
            let before = tail;
            let slot = self.slot(tail);
            let current = slot.load(Ordering::Acquire);
            let behind = distance(tail as u32, seq_of(current));
            let filled = value_of(current) != EMPTY;
            if behind == 0 && !filled {
                // On failure another pusher took `tail`: look again. SeqCst (no dearer than
                // AcqRel on x86 or ARMv8): a waker that pushed a token and then loads the
                // signal's armed bit needs its push in the single total order of SeqCst
                // operations (see `Signal::notify_after_push`).
                if slot
                    .compare_exchange(
                        current,
                        word(tail, value),
                        Ordering::SeqCst,
                        Ordering::Acquire,
                    )
                    .is_ok()
                {
                    if advance {
                        Self::move_past(self.tail, tail);
                    }
                    return Ok(Some(tail));
                }
            } else if behind == cap && filled {
                // The slot still holds the value pushed one turn ago: full, unless a pop
                // just made room (then the cursor moved), or `tail` was set back by half
                // the sequence space (`catch_up`).
                let now = self.tail.load(Ordering::Acquire);
                if now == tail && !self.catch_up(self.tail, tail, self.pushed_at_least()) {
                    return Ok(None);
                }
                tail = self.tail.load(Ordering::Acquire);
                continue;
            } else if behind <= 0 && behind % cap == 0 {
                // The slot has moved on by whole turns: a value there was pushed at its
                // `seq`, an empty slot was popped at `seq - cap` (after the push at
                // `seq - cap`). Either ran at its cursor, so every push before it is done
                // too: move `tail` past it (its pusher lags, or `tail` is stale or was set
                // back; see `move_past`).
                let moved_on = behind.unsigned_abs();
                let done_through = if filled {
                    moved_on
                } else {
                    moved_on - cap as u64 // an empty slot at `tail` itself was handled above
                };
                self.advance_to(self.tail, tail.wrapping_add(done_through).wrapping_add(1));
            } else if !self.catch_up(self.tail, tail, self.pushed_at_least()) {
                return Err(Corrupt {
                    what: "a slot is behind the tail",
                });
            }
            tail = self.tail.load(Ordering::Acquire);
            still = if tail == before { still + 1 } else { 0 };
        }
        Err(Corrupt {
            what: "push made no progress",
        })
    }

    /// The value the next pop would take, if the slot at `head` holds it now. Only a guess
    /// (another popper may take it first), for prefetching: a corrupt cursor or slot reads
    /// as some value or none.
    #[inline]
    pub(crate) fn peek(&self) -> Option<u32> {
        let head = self.head.load(Ordering::Relaxed);
        let current = self.slot(head).load(Ordering::Relaxed);
        (seq_of(current) == head as u32 && value_of(current) != EMPTY).then(|| value_of(current))
    }

    /// Whether the ring holds a value, taking nothing: unlike `len`, it sees a push whose
    /// pusher has not yet moved `tail` (one in another process, just before a sleeper
    /// armed its signal). It walks from `head` past slots already popped (a lagging
    /// `head`) to the first slot not popped: a value there, or none in the ring. SeqCst
    /// loads: a sleeper calls it after arming, against a pusher's SeqCst slot CAS followed
    /// by its load of the armed bit. A corrupt slot reads as empty.
    #[cfg_attr(not(feature = "async"), allow(dead_code))] // the async bridge's look
    pub(crate) fn holds_value(&self) -> bool {
        let cap = self.slots.len() as u64;
        let mut position = self.head.load(Ordering::SeqCst);
        for _ in 0..cap {
            let current = self.slot(position).load(Ordering::SeqCst);
            let popped_here =
                seq_of(current) == position.wrapping_add(cap) as u32 && value_of(current) == EMPTY;
            if !popped_here {
                return seq_of(current) == position as u32 && value_of(current) != EMPTY;
            }
            position = position.wrapping_add(1);
        }
        false
    }

    /// Takes the oldest value, `Ok(None)` if the ring is empty.
    #[inline]
    pub(crate) fn try_pop(&self) -> Result<Option<u32>, Corrupt> {
        Ok(self.pop(true, |_| true)?.map(|(_, value)| value))
    }

    /// Takes the oldest value if `wanted` says so of it: `Ok(None)` if the ring is empty or
    /// its oldest value is not wanted. The value `wanted` saw is the value taken (the pop's
    /// CAS expects it), so no other value is ever taken in its place.
    #[inline]
    pub(crate) fn try_pop_if(&self, wanted: impl Fn(u32) -> bool) -> Result<Option<u32>, Corrupt> {
        Ok(self.pop(true, wanted)?.map(|(_, value)| value))
    }

    /// `try_pop_if`, returning the position popped at too; `advance: false` leaves `head`
    /// to the caller (a batch moves it once, at its end).
    #[inline]
    fn pop(
        &self,
        advance: bool,
        wanted: impl Fn(u32) -> bool,
    ) -> Result<Option<(u64, u32)>, Corrupt> {
        let cap = self.slots.len() as i64;
        let mut head = self.head.load(Ordering::Acquire);
        let mut still = 0;
        while still < self.step_limit() {
            let before = head;
            let slot = self.slot(head);
            let current = slot.load(Ordering::Acquire);
            let ahead = distance(seq_of(current), head as u32);
            let filled = value_of(current) != EMPTY;
            if ahead == 0 && filled {
                if !wanted(value_of(current)) {
                    return Ok(None);
                }
                // On failure another popper took `head`: look again.
                let emptied = word(head.wrapping_add(cap as u64), EMPTY);
                if slot
                    .compare_exchange(current, emptied, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    if advance {
                        Self::move_past(self.head, head);
                    }
                    return Ok(Some((head, value_of(current))));
                }
            } else if ahead == 0 {
                // Waiting for the push at `head`: empty, unless the cursor moved meanwhile.
                let now = self.head.load(Ordering::Acquire);
                if now == head {
                    return Ok(None);
                }
                head = now;
                continue;
            } else if ahead >= cap && ahead % cap == 0 {
                // The slot has moved on by whole turns: it was popped at `seq - cap`, at the
                // cursor, so every pop before that is done too: move `head` past it (its
                // popper lags, or `head` is stale or was set back; see `move_past`).
                let done_through = (ahead - cap) as u64;
                self.advance_to(self.head, head.wrapping_add(done_through).wrapping_add(1));
            } else if !self.catch_up(self.head, head, self.popped_at_least()) {
                return Err(Corrupt {
                    what: "a slot is behind the head",
                });
            }
            head = self.head.load(Ordering::Acquire);
            still = if head == before { still + 1 } else { 0 };
        }
        Err(Corrupt {
            what: "pop made no progress",
        })
    }

    /// The values the ring's slots hold, in slot order, read one slot at a time (for crash
    /// recovery: with pushes and pops racing, a value may be missed or seen twice).
    pub(crate) fn held_values(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots
            .iter()
            .map(|slot| value_of(slot.load(Ordering::Acquire)))
            .filter(|&value| value != EMPTY)
    }

    /// How many values the ring can hold.
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Values in the ring now (a snapshot; exact when no one is pushing or popping and no
    /// cursor was set back, see `move_past`; otherwise a guess, at most the ring's length).
    pub(crate) fn len(&self) -> usize {
        let tail = self.tail.load(Ordering::Acquire);
        let head = self.head.load(Ordering::Acquire);
        (tail.saturating_sub(head) as usize).min(self.slots.len())
    }

    /// Pushes `value` with its slot CAS but stops before moving `tail`, as a pusher killed
    /// right after its linearization point would.
    #[cfg(test)]
    pub(crate) fn push_and_stop(&self, value: u32) -> bool {
        matches!(self.push(value, false), Ok(Some(_)))
    }
}

/// An [`IndexRing`]'s words in memory of its own (for tests and the loom models).
#[cfg(test)]
pub(crate) struct OwnedWords {
    pub(crate) head: AtomicU64,
    pub(crate) tail: AtomicU64,
    pub(crate) slots: Box<[AtomicU64]>,
}

#[cfg(test)]
impl OwnedWords {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            head: AtomicU64::new(0),
            tail: AtomicU64::new(0),
            slots: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub(crate) fn ring(&self) -> IndexRing<'_> {
        IndexRing::init(&self.head, &self.tail, &self.slots)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    #[test]
    fn holds_value_sees_a_push_before_tail_moves_and_walks_past_a_lagging_head() {
        let words = OwnedWords::new(4);
        let ring = words.ring();
        assert!(!ring.holds_value(), "empty");
        assert!(ring.push_and_stop(1), "pushed, tail not moved");
        assert_eq!(ring.len(), 0, "the cursors do not show it yet");
        assert!(ring.holds_value(), "the slot does");
        assert_eq!(ring.try_pop(), Ok(Some(1)));
        assert!(!ring.holds_value(), "popped");
        // Popped without moving head, then a push behind it: head lags by one.
        assert!(ring.try_push(2).unwrap());
        assert!(ring.try_push(3).unwrap());
        assert_eq!(
            ring.pop(false, |_| true).map(|p| p.map(|(_, v)| v)),
            Ok(Some(2))
        );
        assert!(ring.holds_value(), "3 waits behind the popped slot at head");
        assert_eq!(ring.try_pop(), Ok(Some(3)));
        assert!(!ring.holds_value(), "empty again, across a lagging head");
    }

    #[test]
    fn a_conditional_pop_takes_the_oldest_value_only_if_wanted() {
        let words = OwnedWords::new(4);
        let ring = words.ring();
        assert_eq!(ring.try_pop_if(|_| true), Ok(None), "empty");
        for value in [1, 2, 3] {
            assert!(ring.try_push(value).unwrap());
        }
        let odd = |value: u32| value % 2 == 1;
        assert_eq!(ring.try_pop_if(odd), Ok(Some(1)));
        assert_eq!(ring.try_pop_if(odd), Ok(None), "2 is oldest and not wanted");
        assert_eq!(ring.len(), 2, "nothing taken");
        assert_eq!(ring.try_pop(), Ok(Some(2)));
        assert_eq!(ring.try_pop_if(odd), Ok(Some(3)));
        assert_eq!(ring.try_pop(), Ok(None));
    }

    #[test]
    fn batches_keep_fifo_and_stop_at_full_and_empty_across_the_wrap() {
        let capacities: &[usize] = if cfg!(miri) {
            &[1, 3, 8]
        } else {
            &[1, 2, 3, 5, 8, 100]
        };
        for &capacity in capacities {
            let words = OwnedWords::new(capacity);
            let ring = words.ring();
            let mut model = VecDeque::new();
            let mut next = 0u32;
            let mut out = vec![0u32; capacity + 3];
            for round in 0..(capacity * 7) {
                let wanted = round % (capacity + 3);
                let values: Vec<u32> = (next..next + wanted as u32).collect();
                let pushed = ring.try_push_many(&values).unwrap();
                assert_eq!(
                    pushed,
                    wanted.min(capacity - model.len()),
                    "capacity {capacity}"
                );
                model.extend(&values[..pushed]);
                next += wanted as u32;
                let asked = (round * 5 + 1) % (capacity + 3);
                let popped = ring.try_pop_many(&mut out[..asked]).unwrap();
                let expected: Vec<u32> = model.drain(..asked.min(model.len())).collect();
                assert_eq!(&out[..popped], expected, "capacity {capacity}");
                assert_eq!(ring.len(), model.len());
                // Single operations pick up where the batches left the cursors.
                if round % 3 == 0 {
                    assert_eq!(ring.try_push(next).unwrap(), model.len() < capacity);
                    if model.len() < capacity {
                        model.push_back(next);
                    }
                    next += 1;
                    assert_eq!(ring.try_pop().unwrap(), model.pop_front());
                }
            }
        }
    }

    /// Makes `pushes` pushes (of `next`, `next + 1`, ...) and `pops` pops, checking each
    /// answer against `model`, a queue of the ring's capacity.
    fn push_and_pop_against(
        ring: &IndexRing<'_>,
        model: &mut VecDeque<u32>,
        next: &mut u32,
        pushes: usize,
        pops: usize,
    ) {
        let capacity = ring.slots.len();
        for _ in 0..pushes {
            let pushed = ring.try_push(*next).unwrap();
            assert_eq!(pushed, model.len() < capacity, "capacity {capacity}");
            if pushed {
                model.push_back(*next);
            }
            *next += 1;
        }
        for _ in 0..pops {
            assert_eq!(ring.try_pop().unwrap(), model.pop_front());
        }
    }

    #[test]
    fn fifo_with_wrap_around_at_small_and_odd_capacities() {
        for capacity in [1, 2, 3, 5, 8, 100] {
            let words = OwnedWords::new(capacity);
            let ring = words.ring();
            let mut model = VecDeque::new();
            let mut next = 0u32;
            for round in 0..(capacity * 7) {
                // Fill, or push a few, then pop a few.
                let (pushes, pops) = (round % (capacity + 2), round % 3 + 1);
                push_and_pop_against(&ring, &mut model, &mut next, pushes, pops);
                assert_eq!(ring.len(), model.len());
            }
        }
    }

    #[test]
    fn a_pusher_stopped_after_its_cas_blocks_no_one() {
        let words = OwnedWords::new(2);
        let ring = words.ring();
        assert!(ring.push_and_stop(7)); // `tail` never moved
        assert!(ring.try_push(8).unwrap(), "the next push helps tail past 7");
        assert!(!ring.try_push(9).unwrap(), "full");
        assert_eq!(ring.try_pop().unwrap(), Some(7));
        assert_eq!(ring.try_pop().unwrap(), Some(8));
        assert_eq!(ring.try_pop().unwrap(), None);
        assert!(ring.push_and_stop(10));
        assert_eq!(ring.try_pop().unwrap(), Some(10), "a pop helps too");
    }

    #[test]
    fn cursors_set_back_any_distance_are_jumped_forward() {
        // `move_past` can set a cursor back: by one position when two threads race, by
        // turns of the ring when the storing thread stalled between its load and its store.
        let capacities: &[usize] = if cfg!(miri) { &[1, 4] } else { &[1, 3, 4, 7] };
        for &capacity in capacities {
            let words = OwnedWords::new(capacity);
            let ring = words.ring();
            let mut model = VecDeque::new();
            let mut next = 0u32;
            for round in 0..(capacity * 12) {
                let (pushes, pops) = (round % (capacity + 2), round % 3);
                push_and_pop_against(&ring, &mut model, &mut next, pushes, pops);
                let cursor = if round % 2 == 0 {
                    &words.head
                } else {
                    &words.tail
                };
                let back = (round % 4 * capacity + round % 2) as u64;
                cursor.store(
                    cursor.load(Ordering::Relaxed).saturating_sub(back),
                    Ordering::Relaxed,
                );
            }
            while let Some(expected) = model.pop_front() {
                assert_eq!(ring.try_pop().unwrap(), Some(expected));
            }
            assert_eq!(ring.try_pop().unwrap(), None);
        }
    }

    #[test]
    fn peek_shows_what_the_next_pop_takes() {
        let words = OwnedWords::new(2);
        let ring = words.ring();
        assert_eq!(ring.peek(), None);
        for round in 0..5 {
            assert!(ring.try_push(round).unwrap());
            assert!(ring.try_push(round + 100).unwrap());
            assert_eq!(ring.peek(), Some(round));
            assert_eq!(ring.try_pop().unwrap(), Some(round));
            assert_eq!(ring.peek(), Some(round + 100));
            assert_eq!(ring.try_pop().unwrap(), Some(round + 100));
            assert_eq!(ring.peek(), None);
        }
    }

    #[test]
    fn a_cursor_set_back_by_half_the_sequence_space_catches_up_from_the_other() {
        // A thread stopped inside `move_past` while the ring turned 2^31 positions: the
        // slots' 32-bit `seq` then reads as behind the cursor it stores.
        let capacity = 4;
        let start = (1u64 << 33) + 3;
        let words = OwnedWords::new(capacity);
        let ring = words.ring();
        for position in start..start + capacity as u64 {
            ring.slot(position)
                .store(word(position, EMPTY), Ordering::Relaxed);
        }
        words.head.store(start, Ordering::Relaxed);
        words.tail.store(start, Ordering::Relaxed);
        assert!(ring.try_push(1).unwrap());
        assert!(ring.try_push(2).unwrap());
        assert_eq!(ring.try_pop().unwrap(), Some(1));
        let head = words.head.load(Ordering::Relaxed);
        words.head.store(head - (1 << 31) - 2, Ordering::Relaxed);
        assert_eq!(ring.try_pop().unwrap(), Some(2));
        assert_eq!(ring.try_pop().unwrap(), None);
        let tail = words.tail.load(Ordering::Relaxed);
        words.tail.store(tail - (1 << 31) - 3, Ordering::Relaxed);
        for value in 3..7 {
            assert!(ring.try_push(value).unwrap());
        }
        assert!(!ring.try_push(7).unwrap(), "full, not corrupt");
        assert_eq!(ring.try_pop().unwrap(), Some(3));
    }

    #[test]
    fn corrupt_words_are_errors_not_hangs() {
        let words = OwnedWords::new(4);
        let ring = words.ring();
        // A slot claiming to wait for a position far behind the tail.
        words.tail.store(100, Ordering::Relaxed);
        assert!(ring.try_push(1).is_err());
        // Cursors far apart with nothing in between: helping would run for ever.
        let words = OwnedWords::new(4);
        let ring = words.ring();
        for slot in words.slots.iter() {
            slot.store(word(1 << 20, 5), Ordering::Relaxed);
        }
        assert!(ring.try_push(1).is_err() || ring.try_pop().is_err());
        // Random garbage never panics.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200 {
            let words = OwnedWords::new(3);
            let ring = words.ring();
            for slot in words.slots.iter() {
                x = crate::base::id::mix64(x);
                slot.store(x, Ordering::Relaxed);
            }
            x = crate::base::id::mix64(x);
            words.head.store(x % 16, Ordering::Relaxed);
            words.tail.store(x % 16 + x % 5, Ordering::Relaxed);
            let _ = ring.try_push(1);
            let _ = ring.try_pop();
            let _ = ring.len();
        }
    }

    #[test]
    fn threads_transfer_every_value_exactly_once() {
        transfer_every_value_exactly_once(false);
    }

    #[test]
    fn threads_in_batches_and_alone_transfer_every_value_exactly_once() {
        transfer_every_value_exactly_once(true);
    }

    /// Three producers and two consumers; with `batches`, every other operation of each is
    /// a batch (pushes of up to 5, pops of up to 7), racing the single ones.
    fn transfer_every_value_exactly_once(batches: bool) {
        let words = OwnedWords::new(64);
        let ring = words.ring();
        let per_producer: u32 = if cfg!(miri) { 200 } else { 50_000 };
        let producers = 3u32;
        let remaining = std::sync::atomic::AtomicUsize::new((producers * per_producer) as usize);
        let consumed: Vec<Vec<u32>> = std::thread::scope(|s| {
            for p in 0..producers {
                let ring = &ring;
                s.spawn(move || {
                    let values: Vec<u32> =
                        (0..per_producer).map(|i| p * per_producer + i).collect();
                    let mut sent = 0;
                    for turn in 0.. {
                        if sent == values.len() {
                            break;
                        }
                        let pushed = if batches && turn % 2 == 0 {
                            let end = (sent + 5).min(values.len());
                            ring.try_push_many(&values[sent..end]).unwrap()
                        } else {
                            usize::from(ring.try_push(values[sent]).unwrap())
                        };
                        if pushed == 0 {
                            std::hint::spin_loop();
                        }
                        sent += pushed;
                    }
                });
            }
            let remaining = &remaining;
            let consumers: Vec<_> = (0..2)
                .map(|_| {
                    let ring = &ring;
                    s.spawn(move || {
                        let mut got = Vec::new();
                        // Until every value has been taken by one consumer or the other.
                        let mut batch = [0u32; 7];
                        for turn in 0usize.. {
                            if remaining.load(std::sync::atomic::Ordering::Acquire) == 0 {
                                break;
                            }
                            let popped = if batches && turn % 2 == 0 {
                                let popped = ring.try_pop_many(&mut batch).unwrap();
                                got.extend_from_slice(&batch[..popped]);
                                popped
                            } else {
                                ring.try_pop().unwrap().map_or(0, |v| {
                                    got.push(v);
                                    1
                                })
                            };
                            remaining.fetch_sub(popped, std::sync::atomic::Ordering::AcqRel);
                        }
                        got
                    })
                })
                .collect();
            consumers.into_iter().map(|c| c.join().unwrap()).collect()
        });
        // Per-producer FIFO at each consumer, and every value exactly once overall.
        for got in &consumed {
            for p in 0..producers {
                let mine: Vec<u32> = got
                    .iter()
                    .copied()
                    .filter(|v| v / per_producer == p)
                    .collect();
                assert!(mine.windows(2).all(|w| w[0] < w[1]), "per-producer order");
            }
        }
        let mut all: Vec<u32> = consumed.into_iter().flatten().collect();
        all.sort_unstable();
        assert_eq!(all, (0..producers * per_producer).collect::<Vec<_>>());
    }
}

/// Loom models: every raced operation in a spawned thread, outcomes checked at the end.
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    fn shared(capacity: usize) -> Arc<OwnedWords> {
        let words = Arc::new(OwnedWords::new(capacity));
        words.ring();
        words
    }

    fn ring(words: &OwnedWords) -> IndexRing<'_> {
        IndexRing::attach(&words.head, &words.tail, &words.slots)
    }

    /// Pushes each of `values`, popping once after each push; returns the values that went
    /// in and those that came out.
    fn push_and_pop_each(ring: &IndexRing<'_>, values: &[u32]) -> (Vec<u32>, Vec<u32>) {
        let (mut pushed, mut got) = (Vec::new(), Vec::new());
        for &value in values {
            if ring.try_push(value).unwrap() {
                pushed.push(value);
            }
            got.extend(ring.try_pop().unwrap());
        }
        (pushed, got)
    }

    /// Checks that `seen` and what is left in a ring of one slot are exactly `want` (in any
    /// order), and that the ring then holds one value and no more.
    fn exactly_these_then_one_place(ring: &IndexRing<'_>, mut seen: Vec<u32>, mut want: Vec<u32>) {
        drain_into(ring, &mut seen);
        seen.sort_unstable();
        want.sort_unstable();
        assert_eq!(seen, want);
        assert!(ring.try_push(9).unwrap() && !ring.try_push(10).unwrap());
        assert_eq!(ring.try_pop().unwrap(), Some(9));
    }

    /// Pops everything left into `seen`.
    fn drain_into(ring: &IndexRing<'_>, seen: &mut Vec<u32>) {
        while let Some(value) = ring.try_pop().unwrap() {
            seen.push(value);
        }
    }

    #[test]
    fn two_pushers_one_popper_lose_and_duplicate_nothing() {
        crate::base::sync::model::check(|| {
            let words = shared(2);
            let pushers: Vec<_> = [1u32, 2]
                .into_iter()
                .map(|v| {
                    let words = words.clone();
                    thread::spawn(move || assert!(ring(&words).try_push(v).unwrap()))
                })
                .collect();
            let popper = {
                let words = words.clone();
                thread::spawn(move || ring(&words).try_pop().unwrap())
            };
            for p in pushers {
                p.join().unwrap();
            }
            let mut seen: Vec<u32> = popper.join().unwrap().into_iter().collect();
            let ring = ring(&words);
            drain_into(&ring, &mut seen);
            seen.sort_unstable();
            assert_eq!(seen, [1, 2]);
        });
    }

    #[test]
    fn two_poppers_take_each_value_once_across_a_wrap() {
        crate::base::sync::model::check(|| {
            let words = shared(1);
            let ring0 = ring(&words);
            assert!(ring0.try_push(1).unwrap());
            let poppers: Vec<_> = (0..2)
                .map(|_| {
                    let words = words.clone();
                    thread::spawn(move || ring(&words).try_pop().unwrap())
                })
                .collect();
            let pusher = {
                let words = words.clone();
                thread::spawn(move || ring(&words).try_push(2).unwrap())
            };
            let mut seen: Vec<u32> = poppers
                .into_iter()
                .filter_map(|p| p.join().unwrap())
                .collect();
            let pushed = pusher.join().unwrap();
            while let Some(v) = ring0.try_pop().unwrap() {
                seen.push(v);
            }
            seen.sort_unstable();
            let expected: &[u32] = if pushed { &[1, 2] } else { &[1] };
            assert_eq!(seen, expected);
        });
    }

    #[test]
    fn a_batch_pop_racing_a_pop_and_a_push_takes_each_value_once_in_order() {
        crate::base::sync::model::check(|| {
            let words = shared(3);
            let ring0 = ring(&words);
            assert_eq!(ring0.try_push_many(&[1, 2]).unwrap(), 2);
            let batch = {
                let words = words.clone();
                thread::spawn(move || {
                    let mut out = [0u32; 3];
                    let popped = ring(&words).try_pop_many(&mut out).unwrap();
                    out[..popped].to_vec()
                })
            };
            let single = {
                let words = words.clone();
                thread::spawn(move || ring(&words).try_pop().unwrap())
            };
            let pusher = {
                let words = words.clone();
                thread::spawn(move || ring(&words).try_push(3).unwrap())
            };
            let batch = batch.join().unwrap();
            assert!(batch.windows(2).all(|w| w[0] < w[1]), "in order: {batch:?}");
            let mut seen = batch;
            seen.extend(single.join().unwrap());
            assert!(pusher.join().unwrap(), "room for a third value");
            while let Some(v) = ring0.try_pop().unwrap() {
                seen.push(v);
            }
            seen.sort_unstable();
            assert_eq!(seen, [1, 2, 3]);
        });
    }

    #[test]
    fn a_batch_push_racing_a_push_and_a_pop_loses_nothing() {
        crate::base::sync::model::check(|| {
            let words = shared(3);
            let ring0 = ring(&words);
            assert!(ring0.try_push(1).unwrap());
            let batch = {
                let words = words.clone();
                thread::spawn(move || ring(&words).try_push_many(&[10, 11]).unwrap())
            };
            let single = {
                let words = words.clone();
                thread::spawn(move || ring(&words).try_push(20).unwrap())
            };
            let popper = {
                let words = words.clone();
                thread::spawn(move || ring(&words).try_pop().unwrap())
            };
            let batched = batch.join().unwrap();
            let pushed_single = single.join().unwrap();
            let mut seen: Vec<u32> = popper.join().unwrap().into_iter().collect();
            while let Some(v) = ring0.try_pop().unwrap() {
                seen.push(v);
            }
            // The batch's values come out in order, none lost or doubled.
            let from_batch: Vec<u32> = seen
                .iter()
                .copied()
                .filter(|v| (10..20).contains(v))
                .collect();
            assert_eq!(from_batch, [10, 11][..batched].to_vec());
            let mut expected = vec![1];
            expected.extend([10, 11][..batched].iter());
            if pushed_single {
                expected.push(20);
            }
            seen.sort_unstable();
            expected.sort_unstable();
            assert_eq!(seen, expected);
            assert!(
                ring0.try_push_many(&[5, 6, 7]).unwrap() == 3,
                "all room again"
            );
        });
    }

    #[test]
    fn a_pusher_stopping_after_its_cas_blocks_neither_pushers_nor_poppers() {
        crate::base::sync::model::check(|| {
            let words = shared(2);
            let stopped = {
                let words = words.clone();
                thread::spawn(move || assert!(ring(&words).push_and_stop(1)))
            };
            let pusher = {
                let words = words.clone();
                thread::spawn(move || assert!(ring(&words).try_push(2).unwrap()))
            };
            let popper = {
                let words = words.clone();
                thread::spawn(move || ring(&words).try_pop().unwrap())
            };
            stopped.join().unwrap();
            pusher.join().unwrap();
            let mut seen: Vec<u32> = popper.join().unwrap().into_iter().collect();
            let ring = ring(&words);
            drain_into(&ring, &mut seen);
            seen.sort_unstable();
            assert_eq!(seen, [1, 2], "both values came out, none twice");
            assert!(
                ring.try_push(3).unwrap() && ring.try_push(4).unwrap(),
                "room again"
            );
        });
    }

    /// A pushes 1; B pushes 2 then 3. A's store can set `tail` back two positions (from 3 to
    /// 1) while B still has a push to make; a popper races. Capacity 3 (not a power of two):
    /// no push may report full, nothing lost or doubled, 2 before 3; afterwards exactly 3 fit.
    #[test]
    fn tail_set_back_by_a_racing_pusher() {
        crate::base::sync::model::check(|| {
            let words = shared(3);
            let a = {
                let words = words.clone();
                thread::spawn(move || assert!(ring(&words).try_push(1).unwrap(), "A: false full"))
            };
            let b = {
                let words = words.clone();
                thread::spawn(move || {
                    let r = ring(&words);
                    assert!(r.try_push(2).unwrap(), "B: false full");
                    assert!(r.try_push(3).unwrap(), "B: false full");
                })
            };
            let c = {
                let words = words.clone();
                thread::spawn(move || ring(&words).try_pop().unwrap())
            };
            a.join().unwrap();
            b.join().unwrap();
            let mut seen: Vec<u32> = c.join().unwrap().into_iter().collect();
            let r = ring(&words);
            drain_into(&r, &mut seen);
            let p2 = seen.iter().position(|&v| v == 2);
            let p3 = seen.iter().position(|&v| v == 3);
            // C's value comes first in `seen`; 2 and 3 both drained after, or C took 2.
            assert!(p2 < p3, "FIFO of one pusher: {seen:?}");
            seen.sort_unstable();
            assert_eq!(seen, [1, 2, 3]);
            assert_eq!(
                r.try_push_many(&[4, 5, 6, 7]).unwrap(),
                3,
                "room for exactly 3"
            );
            assert!(!r.try_push(8).unwrap());
            assert_eq!(r.try_pop().unwrap(), Some(4));
        });
    }

    /// Ring holds 1, 2 (capacity 3). A pops once; B pops, pushes 3, pops again. A's store can
    /// set `head` back while B pops again. B's second pop cannot be empty (at most two pops
    /// came before it, three values were pushed before it began); B's pops are in order.
    #[test]
    fn head_set_back_by_a_racing_popper() {
        crate::base::sync::model::check(|| {
            let words = shared(3);
            assert_eq!(ring(&words).try_push_many(&[1, 2]).unwrap(), 2);
            let a = {
                let words = words.clone();
                thread::spawn(move || ring(&words).try_pop().unwrap())
            };
            let b = {
                let words = words.clone();
                thread::spawn(move || {
                    let r = ring(&words);
                    let first = r.try_pop().unwrap();
                    assert!(r.try_push(3).unwrap(), "false full");
                    let second = r.try_pop().unwrap();
                    (first, second)
                })
            };
            let a = a.join().unwrap();
            let (b1, b2) = b.join().unwrap();
            let b2 = b2.expect("false empty");
            if let Some(b1) = b1 {
                assert!(b1 < b2, "FIFO");
            }
            let mut seen: Vec<u32> = a.into_iter().chain(b1).chain([b2]).collect();
            let r = ring(&words);
            drain_into(&r, &mut seen);
            seen.sort_unstable();
            assert_eq!(seen, [1, 2, 3]);
            assert_eq!(
                r.try_push_many(&[4, 5, 6, 7]).unwrap(),
                3,
                "room for exactly 3"
            );
            assert_eq!(r.try_pop().unwrap(), Some(4));
        });
    }

    /// Capacity 1. A pops 1; B pushes and pops 2, 3, 4 in turn. A's store can set `head` back
    /// by whole turns, so B's pops must jump it (done_through > 0).
    #[test]
    fn head_set_back_whole_turns_capacity_one() {
        crate::base::sync::model::check(|| {
            let words = shared(1);
            assert!(ring(&words).try_push(1).unwrap());
            let a = {
                let words = words.clone();
                thread::spawn(move || ring(&words).try_pop().unwrap())
            };
            let b = {
                let words = words.clone();
                thread::spawn(move || push_and_pop_each(&ring(&words), &[2, 3, 4]))
            };
            let a = a.join().unwrap();
            let (pushed, got) = b.join().unwrap();
            assert!(got.windows(2).all(|w| w[0] < w[1]), "FIFO {got:?}");
            let seen = a.into_iter().chain(got).collect();
            let want = [1].into_iter().chain(pushed).collect();
            exactly_these_then_one_place(&ring(&words), seen, want);
        });
    }

    /// Capacity 1. A pushes 1; B pops, pushes 2, pops, pushes 3, pops. A's store can set
    /// `tail` back by whole turns.
    #[test]
    fn tail_set_back_whole_turns_capacity_one() {
        crate::base::sync::model::check(|| {
            let words = shared(1);
            let a = {
                let words = words.clone();
                thread::spawn(move || ring(&words).try_push(1).unwrap())
            };
            let b = {
                let words = words.clone();
                thread::spawn(move || {
                    let r = ring(&words);
                    let first = r.try_pop().unwrap();
                    let (pushed, got) = push_and_pop_each(&r, &[2, 3]);
                    (pushed, first.into_iter().chain(got).collect::<Vec<_>>())
                })
            };
            let a_pushed = a.join().unwrap();
            let (pushed, seen) = b.join().unwrap();
            let want = a_pushed.then_some(1).into_iter().chain(pushed).collect();
            exactly_these_then_one_place(&ring(&words), seen, want);
        });
    }
}
