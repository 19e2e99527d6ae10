//! Slot tokens and the moves between the rings: a token names a slot and its
//! generation, and every move of a slot is a CAS on its word by whoever holds its token.

use crate::base::clock::Clock;
use crate::engine::index_ring::IndexRing;
use crate::engine::slots::{State, Word};
use crate::queue::waiting::{Change, Wakes};
use crate::queue::Queue;

/// A slot's token in a ring: its index and the low 8 bits of its generation. Whoever pops
/// a token checks it against the slot header (state and those bits) and then moves the slot
/// with a CAS on the full word, so a stale token is dropped; the rare stale token whose bits
/// match a later incarnation in the same state only takes that incarnation's turn early (its
/// own token then finds it moved on), never a message twice.
pub(super) fn token(slot: u32, generation: u32) -> u32 {
    slot | (generation & 0xff) << SLOT_BITS
}

/// Bits of a token that name the slot; the queue holds at most `2^SLOT_BITS - 1` slots, so
/// no token is the ring's `EMPTY` (all ones).
pub(super) const SLOT_BITS: u32 = 24;

/// The token to return a slot to the free ring with, if its word `freed` says it is free
/// and unpinned (a pinned one goes back when its last pin is dropped).
pub(super) fn free_token(slot: u32, freed: Word) -> Option<u32> {
    (freed.state == State::Free && freed.pins == 0).then(|| token(slot, freed.generation))
}

pub(super) fn split(token: u32) -> (u32, u8) {
    (token & ((1 << SLOT_BITS) - 1), (token >> SLOT_BITS) as u8)
}

/// Pushes a token; `false` if the ring is full. (A ring whose words are corrupt, which
/// only a writer outside this process could cause, reads as full.)
pub(super) fn push(ring: IndexRing<'_>, token: u32) -> bool {
    ring.try_push(token).unwrap_or(false)
}

/// Pops a token. (A corrupt ring reads as empty.)
pub(super) fn pop(ring: IndexRing<'_>) -> Option<u32> {
    ring.try_pop().ok().flatten()
}

impl<C: Clock> Queue<C> {
    /// Moves a slot we hold in `Writing` to `to`. (Only its pins, from deliveries of its
    /// previous message, and its lease-timer bit, cleared by the ticker, can change
    /// meanwhile.)
    pub(super) fn move_slot(&self, slot: u32, generation: u32, to: State) {
        let moved = self.store().hand_on(slot, generation, to);
        self.invariant(moved.is_ok(), "a slot in Writing changed state under us");
    }

    /// Checks what must hold unless another process corrupted the region (see `trusted`).
    pub(crate) fn invariant(&self, holds: bool, what: &str) {
        debug_assert!(holds || !self.trusted, "broken invariant: {what}");
    }

    /// The slot a popped token names and its full generation, if its header is in `state`
    /// with the token's generation bits; `None` for a stale token (drop it).
    pub(super) fn resolve(&self, token: u32, state: State) -> Option<(u32, u32)> {
        let (slot, generation_bits) = split(token);
        self.store().prefetch(slot); // header and payload misses overlap
        let word = self.store().load(slot).ok()?;
        (word.state == state && word.generation as u8 == generation_bits)
            .then_some((slot, word.generation))
    }

    /// `from(generation) -> Taken(generation + 1)` under our owner tag, so that we alone
    /// write the slot's fields next (a twin token's holder fails this CAS and writes
    /// nothing), and a receipt of the old generation can never settle what follows (if we
    /// die here, recovery makes it a lease that runs out). Returns the new generation.
    pub(super) fn take(&self, slot: u32, from: State, generation: u32) -> Option<u32> {
        self.store()
            .take(slot, from, generation, self.owner_tag.0)
            .ok()
    }

    /// Returns a freed slot to the free ring unless a delivery still pins it (then the last
    /// unpin does).
    pub(crate) fn release_if_unpinned(&self, slot: u32, freed: Word) {
        if let Some(free) = free_token(slot, freed) {
            self.push_free(free);
        }
    }

    /// Returns a free slot's token to the free ring.
    pub(super) fn push_free(&self, free: u32) {
        let pushed = push(self.free(), free);
        self.invariant(pushed, "free ring holds every slot");
        self.notify(Change::Pushed(Wakes::Publishers));
    }

    /// Drops a pin of ours, freeing the slot if it was the last pin of a freed slot.
    pub(crate) fn unpin(&self, slot: u32) {
        if let Ok(Some(generation)) = self.store().unpin(slot) {
            self.push_free(token(slot, generation));
        }
        self.unmark_pin(slot);
    }

    /// Counts a pin we are about to take on `slot`, for crash recovery (see `recovery`);
    /// only in a shared region.
    pub(crate) fn mark_pin(&self, slot: u32) {
        if !self.trusted {
            self.participants().mark_pin(self.participant, slot);
        }
    }

    /// Uncounts a pin on `slot` we dropped or failed to take.
    pub(crate) fn unmark_pin(&self, slot: u32) {
        if !self.trusted {
            self.participants().unmark_pin(self.participant, slot);
        }
    }
}
