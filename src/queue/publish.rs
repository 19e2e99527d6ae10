//! Publishing: admitting a message (size, TTL, dedup), claiming a free slot (or waiting
//! for one, as the call says), writing it, and making it ready or delayed.

use std::time::{Duration, Instant};

use crate::base::clock::{nanos, Clock};
use crate::base::id::MessageId;
use crate::base::sync::Ordering;
use crate::engine::counters::Counter;
use crate::engine::dedup::{DedupError, LOCK_PATIENCE};
use crate::engine::slots::State;
use crate::engine::wheel::Timer;
use crate::error::PublishError;
use crate::queue::slot_moves::{pop, push, split, token};
use crate::queue::waiting::{Change, Wakes};
use crate::queue::Queue;

/// How many ids ahead a publish guesses: it prefetches the dedup stripe of its own id
/// plus this (see `prefetch_dedup_stripe`).
pub(super) const GUESS_AHEAD: u64 = 2;

/// Optional settings of one publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// The message id; `None` = generate a unique one. Only ids given here are remembered
    /// by the dedup window (a generated id is unique, so there is nothing to reject).
    pub id: Option<MessageId>,
    /// Time to live; `None` = the queue's `default_ttl`.
    pub ttl: Option<Duration>,
    /// Not deliverable before this much time has passed.
    pub delay: Option<Duration>,
}

/// A message on its way into a slot: what `fill` writes.
#[derive(Clone, Copy)]
pub(super) struct Outgoing<'p> {
    pub(super) id: MessageId,
    /// The caller gave the id: the dedup window records it.
    pub(super) remembered: bool,
    pub(super) payload: &'p [u8],
    pub(super) ttl: Option<Duration>,
    pub(super) delay: Option<Duration>,
}

impl<C: Clock> Queue<C> {
    /// Publishes `payload` with a generated id; returns the id once the message is queued.
    /// A full queue is waited on, as long as it takes, until a slot frees up (an ack, a
    /// dropped or discarded message), by any thread of any process.
    ///
    /// The wait is a blocking receive's: it looks every half microsecond for 20 µs (for the
    /// first 10 µs taking a slot only once a run of slots is free, an eighth of the queue,
    /// at most 64, so that publisher and consumer stop trading cache lines for every
    /// message), then sleeps on a futex in the queue's memory (`Stats::sleeping_publishers`
    /// counts the sleepers).
    ///
    /// # Errors
    /// See [`PublishError`] (never `Full`): nothing is queued on error.
    pub fn publish(&self, payload: &[u8]) -> Result<MessageId, PublishError> {
        self.publish_with(payload, PublishOptions::default())
    }

    /// [`publish`](Self::publish) with the given id, TTL and delay.
    ///
    /// # Errors
    /// See [`PublishError`] (never `Full`): nothing is queued on error.
    pub fn publish_with(
        &self,
        payload: &[u8],
        options: PublishOptions,
    ) -> Result<MessageId, PublishError> {
        self.publish_waiting(payload, options, Some(Duration::MAX))
    }

    /// Publishes `payload` with a generated id if the queue has room now; never waits.
    ///
    /// # Errors
    /// See [`PublishError`]; a full queue is [`PublishError::Full`]. Nothing is queued on
    /// error.
    pub fn try_publish(&self, payload: &[u8]) -> Result<MessageId, PublishError> {
        self.try_publish_with(payload, PublishOptions::default())
    }

    /// [`try_publish`](Self::try_publish) with the given id, TTL and delay.
    ///
    /// # Errors
    /// As [`try_publish`](Self::try_publish).
    pub fn try_publish_with(
        &self,
        payload: &[u8],
        options: PublishOptions,
    ) -> Result<MessageId, PublishError> {
        self.publish_waiting(payload, options, None)
    }

    /// [`publish_with`](Self::publish_with), waiting for room at most `timeout` of real time.
    ///
    /// # Errors
    /// See [`PublishError`]; [`PublishError::Full`] if no slot freed up in time.
    pub fn publish_timeout(
        &self,
        payload: &[u8],
        options: PublishOptions,
        timeout: Duration,
    ) -> Result<MessageId, PublishError> {
        self.publish_waiting(payload, options, Some(timeout))
    }

    /// [`publish_with`](Self::publish_with), waiting for room until `deadline` at the latest.
    ///
    /// # Errors
    /// See [`PublishError`]; [`PublishError::Full`] if no slot freed up in time.
    pub fn publish_deadline(
        &self,
        payload: &[u8],
        options: PublishOptions,
        deadline: Instant,
    ) -> Result<MessageId, PublishError> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.publish_waiting(payload, options, Some(timeout))
    }

    /// Publishes, waiting for room up to `wait` (`None`: not at all; `Duration::MAX`: as
    /// long as it takes).
    fn publish_waiting(
        &self,
        payload: &[u8],
        options: PublishOptions,
        wait: Option<Duration>,
    ) -> Result<MessageId, PublishError> {
        // The id's dedup stripe is most likely a cache miss: it loads from here on, while we
        // read the clock and claim a slot.
        self.prefetch_dedup_stripe(&options, true);
        let ttl = self.admit(payload, &options)?;
        let mut now = self.now();
        self.run_timers(now);
        let message = self.outgoing(payload, options, ttl);
        // Only a timed wait reads the clock for what is left of it for the id's stripe.
        let give_up = wait
            .filter(|&wait| wait > Duration::ZERO && wait < LOCK_PATIENCE)
            .and_then(|wait| Instant::now().checked_add(wait));
        let Some(claimed) = self.claim_free_slot_or_wait(&mut now, wait) else {
            return Err(PublishError::Full {
                capacity: self.config.capacity,
            });
        };
        let patience = match (wait, give_up) {
            (_, Some(give_up)) => give_up.saturating_duration_since(Instant::now()),
            (None, None) => Duration::ZERO,
            (Some(wait), None) => wait.min(LOCK_PATIENCE),
        };
        // A delayed message's timer woke the sleepers in `fill`; a ready one wakes them here.
        if let Some(ready) = self.fill(claimed, &message, now, patience)? {
            self.push_ready_token(ready);
        }
        self.counters().bump(Counter::Published);
        Ok(message.id)
    }

    /// The message as `fill` will write it: the caller's id, remembered by the dedup
    /// window, or a generated one, which is unique by construction and so not remembered:
    /// no caller can publish it again by mistake, and a window sized for the caller's ids
    /// is not filled with ids no one repeats.
    pub(super) fn outgoing<'p>(
        &self,
        payload: &'p [u8],
        options: PublishOptions,
        ttl: Option<Duration>,
    ) -> Outgoing<'p> {
        let (id, remembered) = match options.id {
            Some(id) => (id, true),
            None => (self.ids.id(), false),
        };
        Outgoing {
            id,
            remembered,
            payload,
            ttl,
            delay: options.delay,
        }
    }

    /// Starts loading the dedup stripe of the caller's id, if any, into the cache, and with
    /// `and_next` the stripe of the id two after it: publishers often number their
    /// messages (a producer's sequence, the counter in a Snowflake id), and a single
    /// publish then finds its stripe loaded by the one before the one before. Not the
    /// next id's: a publish takes about as long as a miss to memory, so that stripe would
    /// still be on its way (figures: benches/README.md, *Measurements behind the code's
    /// choices*). A wrong guess costs a read from memory that no one waits for. (A batch
    /// prefetches each message's own stripe as it admits it.)
    #[inline]
    pub(super) fn prefetch_dedup_stripe(&self, options: &PublishOptions, and_next: bool) {
        if let (Some(id), Some(dedup)) = (options.id, self.dedup()) {
            dedup.prefetch(id);
            if and_next {
                dedup.prefetch_guess(MessageId(id.0.wrapping_add(GUESS_AHEAD)));
            }
        }
    }

    /// Checks what can be checked of a message before it takes a slot; returns its TTL.
    pub(super) fn admit(
        &self,
        payload: &[u8],
        options: &PublishOptions,
    ) -> Result<Option<Duration>, PublishError> {
        if payload.len() > self.config.max_payload {
            return Err(PublishError::PayloadTooLarge {
                len: payload.len(),
                max: self.config.max_payload,
            });
        }
        let ttl = options.ttl.or(self.config.default_ttl);
        if ttl.is_some_and(|ttl| ttl.is_zero()) {
            return Err(PublishError::AlreadyExpired);
        }
        Ok(ttl)
    }

    /// Writes `message` into a slot we claimed (in `Writing`) and makes it ready or
    /// delayed. A ready message's token is returned for the caller to push to the ready
    /// ring (then to wake sleepers), so a batch can push its tokens together. On a dedup
    /// refusal the slot is freed again and nothing is queued.
    /// A live process holding the id's dedup stripe is waited on for `patience` after a
    /// first look (the caller's own time left, at most `LOCK_PATIENCE`).
    pub(super) fn fill(
        &self,
        (slot, generation): (u32, u32),
        message: &Outgoing<'_>,
        now: u64,
        patience: Duration,
    ) -> Result<Option<u32>, PublishError> {
        let meta = self.store().meta(slot).expect("claimed slots are in range");
        meta.id.store(message.id.0, Ordering::Relaxed);
        meta.published_at.store(now, Ordering::Relaxed);
        // Crash recovery forgets the id of a publish that died from here on (see `recovery`).
        meta.written_at_generation
            .store(u64::from(generation), Ordering::Release);
        // The id is recorded only with a slot in hand, so "duplicate" is never said of an id
        // whose first publish then failed for want of room.
        if let (true, Some(dedup)) = (message.remembered, self.dedup()) {
            if let Err(error) = dedup.record(message.id, now, Some(patience)) {
                self.abandon_claim((slot, generation));
                return Err(match error {
                    DedupError::Duplicate { id } => {
                        self.counters().bump(Counter::Duplicates);
                        PublishError::Duplicate { id }
                    }
                    DedupError::Full { capacity } => PublishError::DedupFull { capacity },
                    DedupError::Locked { pid, waited } => PublishError::DedupLocked { pid, waited },
                });
            }
        }
        meta.payload_len
            .store(message.payload.len() as u64, Ordering::Relaxed);
        meta.set_attempts(0);
        let expires_at = message
            .ttl
            .map_or(u64::MAX, |ttl| now.saturating_add(nanos(ttl)));
        meta.expires_at.store(expires_at, Ordering::Relaxed);
        // `claim_free_slot` moved the slot to Writing for us; `admit` checked the length.
        self.store().write_payload(slot, message.payload);
        let delay = message.delay.map_or(0, nanos);
        if delay > 0 {
            let due = now.saturating_add(delay);
            meta.set_due(due, super::timers::take_ticket());
            self.begin_scheduling();
            self.move_slot(slot, generation, State::Delayed);
            self.schedule_timer(slot, Timer::Delay, due);
            self.end_scheduling();
            Ok(None)
        } else {
            // No deadline: one the slot's last message left must not become this one's,
            // should its first receiver die before writing its own (see `recovery`).
            meta.due_at.store(0, Ordering::Relaxed);
            self.move_slot(slot, generation, State::Ready);
            Ok(Some(token(slot, generation)))
        }
    }

    /// Frees a slot we claimed but will not fill.
    pub(super) fn abandon_claim(&self, (slot, generation): (u32, u32)) {
        let freed = self.store().abandon(slot, generation);
        if let Ok(freed) = freed {
            self.release_if_unpinned(slot, freed);
        }
    }

    /// A free slot now, or, if the caller waits (`Some`), once one frees up within `wait`.
    /// After a wait, `now` moves on to the clock's time then: a message is published when
    /// it goes in, and its TTL, delay and dedup window count from then.
    pub(super) fn claim_free_slot_or_wait(
        &self,
        now: &mut u64,
        wait: Option<Duration>,
    ) -> Option<(u32, u32)> {
        let claimed = self.claim_free_slot();
        match wait {
            Some(timeout) if claimed.is_none() => {
                let claimed = self.wait_for_room(timeout);
                *now = self.now();
                claimed
            }
            _ => claimed,
        }
    }

    /// Takes a free slot into `Writing`, dropping stale free tokens.
    pub(super) fn claim_free_slot(&self) -> Option<(u32, u32)> {
        while let Some(free) = pop(self.free()) {
            if let Some(claimed) = self.claim_token(free) {
                // The slot's header and payload were last written by a consumer, on another
                // core: the claim waits for them. The next publish will most likely claim
                // the next free token's slot, so its lines start moving here, a whole
                // publish ahead, which pays off with two producers and two consumers
                // (figures: benches/README.md, *Measurements behind the code's choices*).
                // A wrong guess costs a prefetch no one waits for.
                if let Some(next) = self.free().peek() {
                    self.store().prefetch(split(next).0);
                }
                return Some(claimed);
            }
        }
        None
    }

    /// Takes the slot a popped free token names into `Writing`; `None` for a stale token
    /// (dropped).
    pub(crate) fn claim_token(&self, free: u32) -> Option<(u32, u32)> {
        let (slot, generation) = self.resolve(free, State::Free)?;
        self.store()
            .claim(slot, generation, self.owner_tag.0)
            .ok()
            .map(|_| (slot, generation))
    }

    pub(crate) fn push_ready(&self, slot: u32, generation: u32) {
        self.push_ready_token(token(slot, generation));
    }

    /// Pushes a ready token and wakes sleeping receivers.
    pub(super) fn push_ready_token(&self, ready: u32) {
        // The ready ring has a place for every slot, and a slot has at most one ready token.
        let pushed = push(self.ready(), ready);
        self.invariant(pushed, "ready ring holds every slot");
        self.notify(Change::Pushed(Wakes::Receivers));
    }
}
