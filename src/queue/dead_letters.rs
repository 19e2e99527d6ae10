//! Dead letters: dead-lettering (or dropping) a message, and listing, popping and
//! redriving the dead-letter queue.

use std::time::SystemTime;

use crate::base::clock::Clock;
use crate::base::id::MessageId;
use crate::base::sync::Ordering;
use crate::engine::counters::Counter;
use crate::engine::slots::{State, TransitionError, Word};
use crate::queue::slot_moves::{pop, push, token};
use crate::queue::{system_time, ExpiryPolicy, Queue};

/// Why a message died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// Its TTL ran out before it was delivered.
    Expired,
    /// A consumer rejected it.
    Rejected,
    /// Its last allowed delivery was nacked (the error is the consumer's), or its lease
    /// ran out (the error is [`LEASE_RAN_OUT`]).
    AttemptsExhausted,
}

/// The error text of a message dead-lettered because the lease of its last allowed
/// delivery ran out.
pub const LEASE_RAN_OUT: &str = "lease ran out";

/// A dead-lettered message, copied out of the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message id.
    pub id: MessageId,
    /// The payload.
    pub payload: Vec<u8>,
    /// Why it died.
    pub reason: DeadReason,
    /// The consumer's error text (reject or last nack), empty for expiry.
    pub error: String,
    /// Deliveries it got.
    pub attempts: u32,
    /// When it was published.
    pub published_at: SystemTime,
    /// When it was dead-lettered.
    pub dead_at: SystemTime,
}

impl<C: Clock> Queue<C> {
    /// A ready message whose TTL ran out: dead-letter or drop it. We hold its ready token.
    pub(super) fn expire(&self, slot: u32, generation: u32) {
        // Counted by whoever moves it (a twin token's holder may race us).
        let expired = match self.config.on_expiry {
            ExpiryPolicy::DeadLetter => {
                self.kill(slot, State::Ready, generation, DeadReason::Expired, "")
            }
            ExpiryPolicy::Drop => {
                let freed = self.store().free(slot, State::Ready, generation);
                if let Ok(word) = freed {
                    self.release_if_unpinned(slot, word);
                }
                freed.is_ok()
            }
        };
        if expired {
            self.counters().bump(Counter::Expired);
        }
    }

    /// Moves a slot from `from` at `generation` to `Dead` and files it in the dead ring,
    /// discarding the oldest dead letter if that ring is full. Returns false if stale.
    ///
    /// From `Settling` the caller owns the slot already. From `Ready` it does not (a twin
    /// token's holder may race it): it takes the slot first (`take`), so that only the
    /// winner writes the dead-letter fields.
    pub(crate) fn kill(
        &self,
        slot: u32,
        from: State,
        generation: u32,
        reason: DeadReason,
        error: &str,
    ) -> bool {
        let Ok(meta) = self.store().meta(slot) else {
            return false;
        };
        let (from, generation) = if from == State::Settling {
            (from, generation)
        } else {
            match self.take(slot, from, generation) {
                Some(taken) => (State::Taken, taken),
                None => return false,
            }
        };
        meta.dead_reason.store(reason.code(), Ordering::Relaxed);
        meta.dead_unix
            .store(self.unix_time(self.now()), Ordering::Relaxed);
        meta.set_reason(error);
        let Ok(dead) = self.store().kill(slot, from, generation) else {
            return false;
        };
        self.counters().bump(Counter::DeadLettered);
        self.file_dead(token(slot, dead.generation));
        true
    }

    /// Files a dead slot's token in the dead ring, discarding the oldest dead letter if that
    /// ring is full.
    pub(crate) fn file_dead(&self, filed: u32) {
        // Bounded: each round discards a letter or finds one gone, so a sane ring has room
        // within a few rounds, unless other threads file into the room we make as fast as
        // we make it (a corrupt ring never has room).
        let rounds = 4 * (self.config.dead_letter_capacity as usize + 1);
        for _ in 0..rounds {
            if push(self.dead(), filed) {
                return;
            }
            let Some(oldest) = pop(self.dead()) else {
                continue; // a racing pop made room
            };
            let Some((old_slot, old_generation)) = self.resolve(oldest, State::Dead) else {
                continue;
            };
            self.discard_dead(old_slot, old_generation);
        }
        // Out of rounds: this letter is discarded too, as the oldest would have been. Left
        // dead with no token, it could be neither listed nor redriven, and its slot would
        // never be free again.
        if let Some((slot, generation)) = self.resolve(filed, State::Dead) {
            self.discard_dead(slot, generation);
        }
    }

    /// Frees a dead letter we took out of (or could not put into) the dead ring, counted.
    pub(super) fn discard_dead(&self, slot: u32, generation: u32) {
        if let Ok(word) = self.free_dead(slot, generation) {
            self.counters().bump(Counter::DeadDiscarded);
            self.release_if_unpinned(slot, word);
        }
    }

    /// `Dead(generation) -> Free(generation + 1)`, keeping pins.
    pub(super) fn free_dead(&self, slot: u32, generation: u32) -> Result<Word, TransitionError> {
        self.store().free(slot, State::Dead, generation)
    }

    /// Copies of every dead letter, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        let mut letters: Vec<(u64, DeadLetter)> = (0..self.store().capacity())
            .filter_map(|slot| self.copy_dead(slot, None))
            .collect();
        letters.sort_by_key(|(dead_unix, _)| *dead_unix);
        letters.into_iter().map(|(_, letter)| letter).collect()
    }

    /// Removes and returns the oldest dead letter.
    pub fn pop_dead_letter(&self) -> Option<DeadLetter> {
        while let Some(dead) = pop(self.dead()) {
            let Some((slot, generation)) = self.resolve(dead, State::Dead) else {
                continue;
            };
            let Some((_, letter)) = self.copy_dead(slot, Some(generation)) else {
                let still_ours = self
                    .store()
                    .load(slot)
                    .is_ok_and(|w| w.state == State::Dead && w.generation == generation);
                if still_ours {
                    // Pinned 255 times by concurrent listings: keep it filed, try later.
                    let _ = push(self.dead(), dead);
                    return None;
                }
                continue;
            };
            if let Ok(word) = self.free_dead(slot, generation) {
                self.release_if_unpinned(slot, word);
                return Some(letter);
            }
        }
        None
    }

    /// Puts every dead letter back on the ready queue (at the tail) with its attempts reset.
    /// Returns how many. A message keeps its TTL: one that has expired is dead-lettered (or
    /// dropped) again as expired when a receive meets it or it reaches the head of the
    /// queue at a timer run, never delivered; publish its payload anew to send it again.
    /// Letters that die again while it runs (expired, or rejected at once by a consumer)
    /// wait for the next redrive: a call takes at most as many letters as the dead-letter
    /// queue holds, so it ends however fast letters come back.
    pub fn redrive(&self) -> usize {
        let mut redriven = 0;
        let most = self.dead().capacity();
        for dead in std::iter::from_fn(|| pop(self.dead())).take(most) {
            let Some((slot, generation)) = self.resolve(dead, State::Dead) else {
                continue;
            };
            let Ok(meta) = self.store().meta(slot) else {
                continue;
            };
            // Taken first, so that the reset is ours alone (see `take`); no longer looked
            // at by listings of dead letters, so none of them sees it.
            let Some(taken) = self.take(slot, State::Dead, generation) else {
                continue;
            };
            meta.set_attempts(0);
            let revived = self.store().revive(slot, taken);
            self.invariant(revived.is_ok(), "only the taker moves a slot it took");
            if let Ok(word) = revived {
                self.push_ready(slot, word.generation);
                redriven += 1;
            }
        }
        redriven
    }

    /// Copies a dead slot (at `generation`, if given). Returns its dead time and the copy.
    pub(super) fn copy_dead(
        &self,
        slot: u32,
        generation: Option<u32>,
    ) -> Option<(u64, DeadLetter)> {
        let copy = self.snapshot(slot, State::Dead, generation)?;
        let letter = DeadLetter {
            id: copy.id,
            payload: copy.payload,
            reason: DeadReason::from_code(copy.dead_reason),
            error: copy.error,
            attempts: copy.attempts,
            published_at: system_time(self.unix_time(copy.published_at)),
            dead_at: system_time(copy.dead_unix),
        };
        Some((copy.dead_unix, letter))
    }
}
