//! The slot lifecycle: one function per arrow of the state diagram, each one CAS on the
//! slot's state word. Code above the engine moves slots only through these and never
//! builds a state word itself.
//!
//! ```text
//!  publishing     Free(g) ─claim─► Writing(g) ─hand_on─► Ready(g) | Delayed(g)
//!                 Writing(g) ─abandon─► Free(g+1)
//!  taking         Ready(g) ─take_to_lease─► Taken(g+1, pins+1) ─lease─► Leased(g+1)
//!                 Ready(g) | Dead(g) ─take─► Taken(g+1) ─kill─► Dead   ─revive─► Ready
//!  settling       Leased(g) ─ack─► Free(g+1, pins-1)
//!                 Leased(g) ─begin_settle─► Settling(g) ─finish_settle─► Ready | Delayed
//!                                                       ─kill─► Dead  ─extended─► Leased
//!  timers         Leased(g) ─lease_ran_out─► Ready(g)     Delayed(g) ─due─► Ready(g)
//!  freeing        Ready(g) | Dead(g) ─free─► Free(g+1)
//!  inspecting     pin: pins+1 (unpin: pins-1, in `slots`)
//!  recovery       Taken | Settling of a dead owner ─undo─► Leased   dead pins ─drop_pins─► 0
//! ```
//!
//! **Taking before writing.** Whoever writes a slot's fields (a receive writing a lease, a
//! receive or timer dead-lettering, a redrive resetting attempts, a settle) first moves the
//! slot into a state only it may leave, `Taken` or `Settling`, under its owner tag (in the
//! word's version bits), and writes afterwards. A token can have a twin (crash recovery
//! re-queues tokens without proving them missing); the twin's holder loses the CAS that
//! takes the slot and writes nothing. Taking bumps the generation, so a receipt or token
//! of the old generation can never touch what follows.
//!
//! **Two states, two meanings.** `Taken` is a slot someone took out of the queue to write
//! its fields (a lease being written, a death being recorded, a redrive); `Settling` is a
//! lease whose holder is changing it (nack, reject, extend). Both are owned, keep the ticker
//! off the slot (it looks again next tick), and are undone the same way if the owner dies:
//! recovery makes the slot a lease that runs out, so the message comes back.

use super::slots::{MessageStore, State, TransitionError, Word};

impl MessageStore<'_> {
    /// `Free(g) -> Writing(g)`: a publisher takes a free slot to write a message into it,
    /// under its owner tag (recovery frees the slot if it dies there). Only an unpinned
    /// one: a free slot's token goes to the free ring when its last pin is dropped, so a
    /// token of a pinned one is a stale copy (one crash recovery pushed, whose 8
    /// generation bits came round again), and a delivery still reads the slot's payload
    /// and fields.
    #[inline]
    pub(crate) fn claim(
        &self,
        slot: u32,
        generation: u32,
        owner: u16,
    ) -> Result<Word, TransitionError> {
        self.transition_from(slot, State::Free, generation, |w| {
            (w.pins == 0).then_some(Word {
                state: State::Writing,
                version: owner,
                ..w
            })
        })
    }

    /// `Writing(g) -> Ready(g) | Delayed(g)`: the publisher hands the written message on.
    /// (Only its pins, from deliveries of the slot's previous message, and its lease-timer
    /// bit, cleared by the ticker, can change meanwhile.)
    #[inline]
    pub(crate) fn hand_on(
        &self,
        slot: u32,
        generation: u32,
        to: State,
    ) -> Result<Word, TransitionError> {
        debug_assert!(matches!(to, State::Ready | State::Delayed));
        self.transition_from(slot, State::Writing, generation, |w| {
            Some(Word { state: to, ..w })
        })
    }

    /// `Writing(g) -> Free(g+1)`: the publisher gives the slot up unpublished.
    #[inline]
    pub(crate) fn abandon(&self, slot: u32, generation: u32) -> Result<Word, TransitionError> {
        self.transition_from(slot, State::Writing, generation, |w| Some(w.freed()))
    }

    /// `Ready(g) -> Taken(g+1)` with one more pin and the lease-timer bit set: a receive
    /// takes the message to write its lease (attempt, deadline), then [`lease`]s it. The
    /// new generation is the delivery's receipt.
    ///
    /// `may_link` says whether the caller is ready to link the lease timer (it is inside a
    /// scheduling bracket, or trusted); if the bit is clear and it is not, nothing changes
    /// and the result is [`TransitionError::Unbracketed`]: bracket, and try again. On
    /// success, the `bool` says whether the bit was clear, so the caller links the timer.
    ///
    /// [`lease`]: Self::lease
    #[inline]
    pub(crate) fn take_to_lease(
        &self,
        slot: u32,
        seen: Word,
        generation: u32,
        owner: u16,
        may_link: bool,
    ) -> Result<(Word, bool), TransitionError> {
        let unbracketed = std::cell::Cell::new(false);
        let link = std::cell::Cell::new(false);
        let taken = self.transition_from_seen(slot, seen, State::Ready, generation, |w| {
            if !w.lease_timer && !may_link {
                unbracketed.set(true); // the ticker just dropped the timer
                return None;
            }
            link.set(!w.lease_timer);
            Some(Word {
                state: State::Taken,
                pins: w.pins.checked_add(1)?,
                generation: w.generation.wrapping_add(1),
                lease_timer: true,
                version: owner, // who to undo it for if we die
            })
        });
        match taken {
            Err(TransitionError::TooManyPins) if unbracketed.get() => {
                Err(TransitionError::Unbracketed)
            }
            other => other.map(|word| (word, link.get())),
        }
    }

    /// `Ready(g) | Dead(g) -> Taken(g+1)`: someone takes the slot to write its fields (a
    /// death's reason, a redrive's reset). Returns the new generation.
    #[inline]
    pub(crate) fn take(
        &self,
        slot: u32,
        from: State,
        generation: u32,
        owner: u16,
    ) -> Result<u32, TransitionError> {
        debug_assert!(matches!(from, State::Ready | State::Dead));
        self.transition_from(slot, from, generation, |w| {
            Some(Word {
                state: State::Taken,
                generation: w.generation.wrapping_add(1),
                version: owner,
                ..w
            })
        })
        .map(|taken| taken.generation)
    }

    /// `Taken(g) -> Leased(g)`, the lease's fields written; `version` is the lease's first
    /// version (a ticker that read an older word fails its CAS).
    #[inline]
    pub(crate) fn lease(
        &self,
        slot: u32,
        taken: Word,
        version: u16,
    ) -> Result<Word, TransitionError> {
        self.transition_from_seen(slot, taken, State::Taken, taken.generation, |w| {
            Some(Word {
                state: State::Leased,
                version,
                ..w
            })
        })
    }

    /// `Taken(g) | Settling(g) -> Dead(g)`: the owner files the message as a dead letter,
    /// its reason written.
    #[inline]
    pub(crate) fn kill(
        &self,
        slot: u32,
        from: State,
        generation: u32,
    ) -> Result<Word, TransitionError> {
        debug_assert!(matches!(from, State::Taken | State::Settling));
        self.transition_from(slot, from, generation, |w| {
            Some(Word {
                state: State::Dead,
                ..w
            })
        })
    }

    /// `Taken(g) -> Ready(g)`: a redriven letter, its attempts reset, queued again.
    #[inline]
    pub(crate) fn revive(&self, slot: u32, generation: u32) -> Result<Word, TransitionError> {
        self.transition_from(slot, State::Taken, generation, |w| {
            Some(Word {
                state: State::Ready,
                ..w
            })
        })
    }

    /// `Leased(g) -> Free(g+1)` with the acker's pin dropped in the same CAS.
    #[inline]
    pub(crate) fn ack(&self, slot: u32, receipt: u32) -> Result<Word, TransitionError> {
        self.transition_from(slot, State::Leased, receipt, |w| {
            Some(Word {
                pins: w.pins.checked_sub(1)?,
                ..w.freed()
            })
        })
    }

    /// `Leased(g) -> Settling(g)`: the leaseholder starts a nack, reject or extend; from
    /// here the lease cannot run out under it. The version bits hold its owner tag
    /// meanwhile; returns the lease's version, for [`extended`](Self::extended).
    #[inline]
    pub(crate) fn begin_settle(
        &self,
        slot: u32,
        receipt: u32,
        owner: u16,
    ) -> Result<u16, TransitionError> {
        let lease_version = std::cell::Cell::new(0);
        self.transition_from(slot, State::Leased, receipt, |w| {
            lease_version.set(w.version);
            Some(Word {
                state: State::Settling,
                version: owner,
                ..w
            })
        })
        .map(|_| lease_version.get())
    }

    /// `Settling(g) -> Ready(g) | Delayed(g)`: a nack's retry, queued now or after a
    /// backoff.
    #[inline]
    pub(crate) fn finish_settle(
        &self,
        slot: u32,
        receipt: u32,
        to: State,
    ) -> Result<Word, TransitionError> {
        debug_assert!(matches!(to, State::Ready | State::Delayed));
        self.transition_from(slot, State::Settling, receipt, |w| {
            Some(Word { state: to, ..w })
        })
    }

    /// `Settling(g) -> Leased(g)` after an extend wrote the new deadline: the version moves
    /// past the lease's, so a ticker that read the old deadline fails its CAS.
    #[inline]
    pub(crate) fn extended(
        &self,
        slot: u32,
        receipt: u32,
        lease_version: u16,
    ) -> Result<Word, TransitionError> {
        self.transition_from(slot, State::Settling, receipt, |w| {
            Some(Word {
                state: State::Leased,
                version: lease_version.wrapping_add(1),
                ..w
            })
        })
    }

    /// `Leased(g) -> Ready(g)`, the lease timer leaving the wheel: the ticker takes back a
    /// lease that ran out. The CAS expects the exact word the ticker judged (`seen`), so a
    /// lease extended or settled meanwhile makes it look again.
    #[inline]
    pub(crate) fn lease_ran_out(&self, slot: u32, seen: Word) -> Result<Word, TransitionError> {
        debug_assert_eq!(seen.state, State::Leased);
        self.transition(slot, seen, |w| {
            Some(Word {
                state: State::Ready,
                lease_timer: false,
                ..w
            })
        })
    }

    /// The lease timer leaves the wheel from a slot that is no longer leased (exact word,
    /// as [`lease_ran_out`](Self::lease_ran_out)).
    #[inline]
    pub(crate) fn unlink_lease_timer(
        &self,
        slot: u32,
        seen: Word,
    ) -> Result<Word, TransitionError> {
        self.transition(slot, seen, |w| {
            Some(Word {
                lease_timer: false,
                ..w
            })
        })
    }

    /// `Delayed(g) -> Ready(g)`: a delay or backoff ended.
    #[inline]
    pub(crate) fn due(&self, slot: u32, generation: u32) -> Result<Word, TransitionError> {
        self.transition_from(slot, State::Delayed, generation, |w| {
            Some(Word {
                state: State::Ready,
                ..w
            })
        })
    }

    /// `Ready(g) | Dead(g) -> Free(g+1)`, pins kept: an expired message dropped, a dead
    /// letter popped or discarded.
    #[inline]
    pub(crate) fn free(
        &self,
        slot: u32,
        from: State,
        generation: u32,
    ) -> Result<Word, TransitionError> {
        debug_assert!(matches!(from, State::Ready | State::Dead));
        self.transition_from(slot, from, generation, |w| Some(w.freed()))
    }

    /// One more pin on a slot in `state` at `generation`, to copy its message out.
    #[inline]
    pub(crate) fn pin(
        &self,
        slot: u32,
        state: State,
        generation: u32,
    ) -> Result<Word, TransitionError> {
        self.transition_from(slot, state, generation, |w| {
            Some(Word {
                pins: w.pins.checked_add(1)?,
                ..w
            })
        })
    }

    /// Recovery: a dead owner's `Writing(g)` (exact word) `-> Free(g+1)`.
    #[inline]
    pub(crate) fn free_abandoned(&self, slot: u32, seen: Word) -> Result<Word, TransitionError> {
        debug_assert_eq!(seen.state, State::Writing);
        self.transition(slot, seen, |w| Some(w.freed()))
    }

    /// Recovery: a dead owner's `Taken(g) | Settling(g)` (exact word) `-> Leased(g)` with
    /// the lease-timer bit set, for the caller to link: the lease runs out and the message
    /// comes back. Not the lease's old version: a ticker holding that word re-reads the
    /// deadline (which the dead owner may have moved).
    #[inline]
    pub(crate) fn undo(&self, slot: u32, seen: Word) -> Result<Word, TransitionError> {
        debug_assert!(matches!(seen.state, State::Taken | State::Settling));
        self.transition(slot, seen, |w| {
            Some(Word {
                state: State::Leased,
                version: w.version.wrapping_add(1),
                lease_timer: true,
                ..w
            })
        })
    }

    /// Recovery: every pin of the exact word `seen` dropped (no live participant holds one).
    #[inline]
    pub(crate) fn drop_pins(&self, slot: u32, seen: Word) -> Result<Word, TransitionError> {
        self.transition(slot, seen, |w| Some(Word { pins: 0, ..w }))
    }
}
