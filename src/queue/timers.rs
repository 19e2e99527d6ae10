//! Timers: one run of the timing wheel at a time, at most once a tick, which ends
//! delays, backoffs and leases, and takes expired messages off the head of the ready queue.

use crate::base::clock::Clock;
use crate::base::sync::Ordering;
use crate::engine::slots::{Meta, State, TransitionError};
use crate::engine::wheel::{node, split_node, Fired, Order, Timer};
use crate::queue::slot_moves::split;
use crate::queue::waiting::Change;
use crate::queue::Queue;

/// The most expired messages one wheel run takes off the head of the ready queue (see
/// `expire_at_head`): a run stays short, and 256 a tick is 256,000 a second
/// at the default tick; the rest wait for the next runs, or for receives, which never
/// deliver them.
pub(super) const EXPIRED_PER_RUN: usize = 256;

/// What a ready token's message is to a timer run looking at the head of the queue.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Ready and within its TTL: the run stops here.
    Deliverable,
    /// Ready at this (full) generation and past its TTL.
    Expired(u32),
    /// The token's slot moved on.
    Stale,
}

/// A ticket for a deadline being set (a lease taken, a delay or backoff begun): this
/// thread's next. Equal deadlines go ready in ticket order, so in the order one thread set
/// them. A shared count would order threads too, but it cost every receive an atomic add
/// on a line all consumers write (benches/README.md); and ties between threads need
/// deadlines equal to the nanosecond, which on a real clock only calls at the same moment
/// give, with no order to keep.
pub(crate) fn take_ticket() -> u32 {
    thread_local! {
        static TICKETS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }
    TICKETS.with(|tickets| {
        let ticket = tickets.get().wrapping_add(1);
        tickets.set(ticket);
        ticket
    })
}

impl<C: Clock> Queue<C> {
    /// Marks the start of a stretch from making a timer due in a slot word to linking it
    /// into the wheel (crash recovery waits for these; see `recovery`).
    pub(crate) fn begin_scheduling(&self) {
        if !self.trusted {
            self.participants().begin_scheduling(self.participant);
        }
    }

    pub(crate) fn end_scheduling(&self) {
        if !self.trusted {
            self.participants().end_scheduling(self.participant);
        }
    }

    /// Runs the timers that are due: expired leases make their messages ready again
    /// (delivered at the tail of the queue), finished delays and backoffs make theirs ready
    /// (each dead-lettered instead if its TTL ran out meanwhile), and messages past their
    /// TTL leave the head of the queue. Receives and publishes do this themselves; call it
    /// to move time along when idle.
    pub fn tick(&self) {
        self.run_timers(self.now());
    }

    /// Runs the wheel if a tick has passed and no one else is running it; returns whether
    /// this call ran it. The messages it makes ready go to the tail in the order of their
    /// deadlines, ties in the order their timers were set (the wheel sorts them).
    #[inline]
    pub(super) fn run_timers(&self, now: u64) -> bool {
        let mut relinked = false;
        let ran = self.wheel().advance(
            now,
            |node, now| {
                let fired = self.fire(node, now);
                relinked |= matches!(fired, Fired::Again(_));
                fired
            },
            |(slot, generation)| self.ready_or_expired(slot, generation, now),
        );
        if ran {
            // A sleeper that looked at the timers while this run held some of them
            // detached did not see them: wake it to look again (`wait`'s protocol).
            if relinked {
                self.notify(Change::TimersMoved);
            }
            self.expire_at_head(now);
            self.recover_if_needed(now);
        }
        ran
    }

    /// TTL expiry when no receive comes: takes the messages past their TTL off the head of
    /// the ready queue (at most [`EXPIRED_PER_RUN`]), dead-lettering or dropping them,
    /// and stops at the first message that could be delivered (why only the head: the
    /// module docs, *TTL*).
    #[cold]
    #[inline(never)]
    pub(super) fn expire_at_head(&self, now: u64) {
        for _ in 0..EXPIRED_PER_RUN {
            // The pop takes exactly the token judged. Its message is expired at the full
            // generation judged, or the token was stale: a token keeps 8 generation bits,
            // so a stale one may name a later message of its slot by the time we act,
            // and `expire`'s CAS on the full generation keeps that message out of reach.
            let judged = std::cell::Cell::new(Verdict::Stale);
            let taken = self.ready().try_pop_if(|ready| {
                judged.set(self.judge(ready, now));
                judged.get() != Verdict::Deliverable
            });
            let Ok(Some(ready)) = taken else {
                return;
            };
            if let Verdict::Expired(generation) = judged.get() {
                self.expire(split(ready).0, generation);
            } // else a stale token, dropped as a receive would
        }
    }

    /// What a receive would do with the message a ready token names at `now`.
    pub(super) fn judge(&self, ready: u32, now: u64) -> Verdict {
        let Some((slot, generation)) = self.resolve(ready, State::Ready) else {
            return Verdict::Stale;
        };
        let Ok(meta) = self.store().meta(slot) else {
            return Verdict::Stale;
        };
        if now >= meta.expires_at.load(Ordering::Relaxed) {
            Verdict::Expired(generation)
        } else {
            Verdict::Deliverable
        }
    }

    /// A timer node came due (or early: a coarse bucket). Acts on the slot if its deadline
    /// has passed (a message made ready is handed back, to be queued in order); otherwise
    /// returns the deadline to be asked again at.
    pub(super) fn fire(&self, node: u32, now: u64) -> Fired<(u32, u32)> {
        let (slot, timer) = split_node(node);
        let Ok(meta) = self.store().meta(slot) else {
            return Fired::Done;
        };
        match timer {
            Timer::Lease => self.fire_lease(slot, meta, now),
            Timer::Delay => self.fire_delay(slot, meta, now),
        }
    }

    /// Where a message made ready goes among those of its run: by deadline, ties by the
    /// ticket taken when it was set (read while the message is ours, not queued yet).
    fn order(meta: &Meta, due: u64) -> Order {
        (due, u64::from(meta.ticket()))
    }

    /// The lease node: an expired lease goes back to ready at the lease's generation (so
    /// its receipt is stale from here on) and the node leaves the wheel; a live one is asked
    /// again at its deadline; for a slot no longer leased the node leaves the wheel. Every
    /// decision is one CAS on the exact word it read, so a lease extended or settled
    /// meanwhile (version, state) makes it look again.
    pub(super) fn fire_lease(&self, slot: u32, meta: &Meta, now: u64) -> Fired<(u32, u32)> {
        loop {
            let Ok(word) = self.store().load(slot) else {
                return Fired::Done;
            };
            if !word.lease_timer {
                return Fired::Done; // the bit says the node is not ours (corrupt memory)
            }
            let due = meta.due_at.load(Ordering::Relaxed);
            let moved = match word.state {
                State::Leased if due > now => return Fired::Again(due),
                State::Leased => self.store().lease_ran_out(slot, word),
                // Its holder is mid-settle, or its taker mid-write: look again next tick.
                State::Settling | State::Taken => return Fired::Again(now.saturating_add(1)),
                _ => self.store().unlink_lease_timer(slot, word),
            };
            return match moved {
                Ok(moved) if word.state == State::Leased => {
                    Fired::Due(Self::order(meta, due), (slot, moved.generation))
                }
                Ok(_) => Fired::Done,
                Err(TransitionError::Stale(_)) => continue,
                Err(_) => Fired::Done,
            };
        }
    }

    /// The delay node: a finished delay or backoff makes the message ready.
    pub(super) fn fire_delay(&self, slot: u32, meta: &Meta, now: u64) -> Fired<(u32, u32)> {
        let Ok(word) = self.store().load(slot) else {
            return Fired::Done;
        };
        if word.state != State::Delayed {
            return Fired::Done; // only this node moves a slot out of Delayed: a corrupt link
        }
        let due = meta.due_at.load(Ordering::Relaxed);
        if due > now {
            return Fired::Again(due);
        }
        match self.store().due(slot, word.generation) {
            Ok(ready) => Fired::Due(Self::order(meta, due), (slot, ready.generation)),
            Err(_) => Fired::Done,
        }
    }

    /// A message a timer just made ready (its lease, delay or backoff ended): queued at
    /// the tail, or, if its TTL ran out meanwhile, dead-lettered (or dropped) at once
    /// rather than left to wait in the queue for a receive to meet it. Its token is not
    /// queued yet, so no one else holds it (if we die here, recovery queues it).
    pub(super) fn ready_or_expired(&self, slot: u32, generation: u32, now: u64) {
        let Ok(meta) = self.store().meta(slot) else {
            return;
        };
        if now >= meta.expires_at.load(Ordering::Relaxed) {
            self.expire(slot, generation);
        } else {
            self.push_ready(slot, generation);
        }
    }

    /// Links a slot's `timer` node into the wheel until `due` (the delay node of a slot
    /// just moved to `Delayed`, or the lease node of a first lease). Wakes sleeping
    /// receivers: each sleeps until the earliest timer it saw, and this one may be earlier
    /// (`wait`'s protocol).
    pub(crate) fn schedule_timer(&self, slot: u32, timer: Timer, due: u64) {
        self.wheel().schedule(node(slot, timer), due);
        self.notify(Change::TimersMoved);
    }
}
