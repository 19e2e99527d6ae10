//! Receiving: popping a ready token and taking the slot under a lease, at once, with a
//! timeout, or waiting for ever.

use std::time::Duration;

use crate::base::clock::{nanos, Clock};
use crate::base::sync::Ordering;
use crate::engine::counters::Counter;
use crate::engine::slots::{State, TransitionError};
use crate::engine::wheel::Timer;
use crate::liveness::SleepsOn;
use crate::queue::dead_letters::{DeadReason, LEASE_RAN_OUT};
use crate::queue::slot_moves::{pop, split};
use crate::queue::{Delivery, Queue};

/// What came of leasing a popped ready token.
pub(super) enum Lease<'q, C: Clock> {
    /// The message, leased.
    Taken(Delivery<'q, C>),
    /// A stale token (dropped) or an expired message (dead-lettered or dropped): pop again.
    Skipped,
    /// 255 live deliveries still borrow the slot's payload: the token went back to the
    /// ready ring; stop receiving for now.
    Pinned,
}

impl<C: Clock> Queue<C> {
    /// Receives the oldest ready message, if any, leasing it for the visibility timeout.
    /// Expired messages met on the way are dead-lettered (or dropped, per policy).
    pub fn try_receive(&self) -> Option<Delivery<'_, C>> {
        let now = self.run_timers_then_now();
        while let Some(ready) = pop(self.ready()) {
            self.store().prefetch(split(ready).0); // header and payload misses overlap
            match self.lease(ready, now) {
                Lease::Taken(delivery) => {
                    self.counters().bump(Counter::Delivered);
                    return Some(delivery);
                }
                Lease::Skipped => continue,
                Lease::Pinned => return None,
            }
        }
        None
    }

    /// Runs the timers that are due, then reads the clock again if they ran (a run takes
    /// time: TTLs are judged by the clock after it).
    pub(super) fn run_timers_then_now(&self) -> u64 {
        let now = self.now();
        if self.run_timers(now) {
            self.now()
        } else {
            now
        }
    }

    /// Leases the message that the popped ready token `ready` names, at `now`. Expired
    /// messages are dead-lettered (or dropped) and stale tokens dropped: `Skipped`. The
    /// caller counts the delivery.
    pub(super) fn lease(&self, ready: u32, now: u64) -> Lease<'_, C> {
        let (slot, generation_bits) = split(ready);
        let Ok(meta) = self.store().meta(slot) else {
            return Lease::Skipped;
        };
        let Ok(seen) = self.store().load(slot) else {
            return Lease::Skipped;
        };
        if seen.state != State::Ready || seen.generation as u8 != generation_bits {
            return Lease::Skipped; // stale token: whoever moved the slot on owns it now
        }
        let generation = seen.generation;
        if now >= meta.expires_at.load(Ordering::Relaxed) {
            self.expire(slot, generation);
            return Lease::Skipped;
        }
        let delivered = u64::from(meta.attempts());
        if delivered >= u64::from(self.config.max_attempts) {
            // Every allowed delivery's lease ran out (its consumers too slow, or killed,
            // perhaps by this very message): dead, not delivered once too often.
            self.kill(
                slot,
                State::Ready,
                generation,
                DeadReason::AttemptsExhausted,
                LEASE_RAN_OUT,
            );
            return Lease::Skipped;
        }
        // Saturating: a corrupt count must not overflow (and attempts are reported as u32).
        let attempt = delivered.saturating_add(1).min(u64::from(u32::MAX));
        let due = now.saturating_add(nanos(self.config.visibility_timeout));
        // The slot's fields are written only once the CAS below made it ours, in Taken:
        // a ready token can have a twin (crash recovery re-queues what a header says is
        // ready without proving its token missing), and the twin's holder, losing the CAS,
        // could otherwise write this message's attempt count or deadline into whatever
        // the slot holds by then. Taken also keeps the ticker off the lease (it looks
        // again next tick) until its deadline is written, and recovery makes a lease
        // whose taker died mid-way run out (see `recovery`).
        // The pin is counted before the CAS that takes it, and a lease timer this
        // lease must link is bracketed from before that CAS (see `recovery`).
        self.mark_pin(slot);
        let mut bracketed = !seen.lease_timer && !self.trusted;
        if bracketed {
            self.begin_scheduling();
        }
        let taken = loop {
            let may_link = bracketed || self.trusted;
            match self
                .store()
                .take_to_lease(slot, seen, generation, self.owner_tag.0, may_link)
            {
                Err(TransitionError::Unbracketed) => {
                    bracketed = true; // the ticker just dropped the timer
                    self.begin_scheduling();
                }
                taken => break taken,
            }
        };
        let (taken, schedule_lease_timer) = match taken {
            Ok(taken) => taken,
            Err(error) => {
                self.unmark_pin(slot);
                if bracketed {
                    self.end_scheduling();
                }
                if error == TransitionError::TooManyPins {
                    // 255 live deliveries still borrow this message's payload: leave it
                    // queued (token back) until some of them are dropped.
                    self.push_ready(slot, generation);
                    return Lease::Pinned;
                }
                return Lease::Skipped; // a stale token: whoever moved the slot on owns it
            }
        };
        meta.set_attempts_and_due(attempt as u32, due, super::timers::take_ticket());
        let leased = self.store().lease(slot, taken, seen.version);
        self.invariant(leased.is_ok(), "only the taker moves a slot it is leasing");
        if schedule_lease_timer {
            // Rare: a slot's lease timer stays linked from one lease to the next.
            self.schedule_timer(slot, Timer::Lease, due);
        }
        if bracketed {
            self.end_scheduling();
        }
        if attempt > 1 {
            self.counters().bump(Counter::Redelivered);
        }
        Lease::Taken(Delivery::new(
            self,
            slot,
            taken.generation,
            attempt as u32,
            due,
        ))
    }

    /// Receives, waiting as long as it takes for a message to become ready.
    ///
    /// It looks every half microsecond for the first 20 µs, then sleeps on a futex
    /// (shared with other processes for a queue in shared memory) that publishers wake, so
    /// a receiver of a steady stream (a message at least every 20 µs) does not sleep
    /// between messages, and an idle one uses no CPU.
    /// For the lowest latency, at the cost of a core, call [`try_receive`](Self::try_receive)
    /// in a loop; but under load, wait about half a microsecond between empty tries: each
    /// try reads the cache line the next publish writes, and a consumer that tries much more
    /// often (as crossbeam's `Backoff` does) slows the publisher by a transfer between cores
    /// per message (see the figures in `benches/README.md`).
    pub fn receive(&self) -> Delivery<'_, C> {
        loop {
            if let Some(delivery) = self.receive_timeout(Duration::from_secs(3600)) {
                return delivery;
            }
        }
    }

    /// Receives, waiting up to `timeout` of real time for a message to become ready (see
    /// [`receive`](Self::receive) for how it waits).
    pub fn receive_timeout(&self, timeout: Duration) -> Option<Delivery<'_, C>> {
        self.wait_until(SleepsOn::Ready, timeout, || self.try_receive())
    }

    /// Receives, waiting until `deadline` at the latest for a message to become ready (see
    /// [`receive`](Self::receive) for how it waits).
    pub fn receive_deadline(&self, deadline: std::time::Instant) -> Option<Delivery<'_, C>> {
        self.receive_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    }
}
