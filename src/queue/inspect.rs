//! Looking inside without changing anything: stats, ready messages copied out, and who
//! is attached.

use std::time::SystemTime;

use crate::base::clock::Clock;
use crate::base::id::MessageId;
use crate::base::sync::Ordering;
use crate::engine::counters::{StalledHolder, Stats};
use crate::engine::slots::State;
use crate::liveness::SleepsOn;
use crate::queue::{system_time, Queue};

/// A ready message, copied out by [`Queue::peek`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyMessage {
    /// The message id.
    pub id: MessageId,
    /// The payload.
    pub payload: Vec<u8>,
    /// Deliveries it had so far.
    pub attempts: u32,
    /// When it was published.
    pub published_at: SystemTime,
}

/// A slot's fields and payload, copied out under a pin.
pub(super) struct Snapshot {
    pub(super) id: MessageId,
    pub(super) payload: Vec<u8>,
    pub(super) attempts: u32,
    /// On the queue's clock.
    pub(super) published_at: u64,
    pub(super) dead_unix: u64,
    pub(super) dead_reason: u64,
    pub(super) error: String,
}

impl<C: Clock> Queue<C> {
    /// A diagnostic: the wake-up system calls (`FUTEX_WAKE`) made so far on the queue's two
    /// signals, (receivers waiting for a message, publishers waiting for room), by every
    /// process, modulo 2^31. With no thread asleep, publishes and acks make none, but one
    /// per signal after sleepers that were killed (see `src/engine/wait.rs`): a count that
    /// grows with every publish means wake-ups are being wasted.
    pub fn wake_up_calls(&self) -> (u32, u32) {
        (
            self.ready_signal().wake_ups(),
            self.room_signal().wake_ups(),
        )
    }

    /// The process ids of the handles attached to this queue now (more than one only for
    /// a queue in shared memory).
    pub fn attached_pids(&self) -> Vec<u32> {
        self.participants().live_pids()
    }

    /// Copies of up to `limit` ready messages, oldest publish first, left in the queue
    /// (for inspection: `ackring peek`). Only those `limit` payloads are copied: the slots
    /// are ordered by their publish times first.
    pub fn peek(&self, limit: usize) -> Vec<ReadyMessage> {
        let mut ready: Vec<(u64, u32, u32)> = (0..self.store().capacity())
            .filter_map(|slot| {
                let word = self.store().load(slot).ok()?;
                let meta = self.store().meta(slot).ok()?;
                (word.state == State::Ready).then(|| {
                    let published_at = meta.published_at.load(Ordering::Relaxed);
                    (published_at, slot, word.generation)
                })
            })
            .collect();
        ready.sort_unstable();
        ready
            .into_iter()
            // A message received meanwhile is skipped: the next one in line takes its place.
            .filter_map(|(_, slot, generation)| self.snapshot(slot, State::Ready, Some(generation)))
            .take(limit)
            .map(|copy| ReadyMessage {
                id: copy.id,
                payload: copy.payload,
                attempts: copy.attempts,
                published_at: system_time(self.unix_time(copy.published_at)),
            })
            .collect()
    }

    /// Copies a slot in `state` (at `generation`, if given) under a pin, so it cannot be
    /// reused while we read; `None` if it is not in that state, or left it while we read.
    pub(super) fn snapshot(
        &self,
        slot: u32,
        state: State,
        generation: Option<u32>,
    ) -> Option<Snapshot> {
        let word = self.store().load(slot).ok()?;
        if word.state != state || generation.is_some_and(|g| g != word.generation) {
            return None;
        }
        self.mark_pin(slot);
        let Ok(pinned) = self.store().pin(slot, state, word.generation) else {
            self.unmark_pin(slot);
            return None;
        };
        let meta = self.store().meta(slot).ok()?;
        let len = (meta.payload_len.load(Ordering::Relaxed) as usize).min(self.config.max_payload);
        // Pinned after acquiring a word written after its payload was published, the slot
        // is not reused; `len` is clamped to `max_payload`.
        let mut payload = vec![0; len];
        self.store().copy_payload(slot, &mut payload);
        let copy = Snapshot {
            id: MessageId(meta.id.load(Ordering::Relaxed)),
            payload,
            attempts: meta.attempts(),
            published_at: meta.published_at.load(Ordering::Relaxed),
            dead_unix: meta.dead_unix.load(Ordering::Relaxed),
            dead_reason: meta.dead_reason.load(Ordering::Relaxed),
            error: meta.reason(),
        };
        // Fields are only consistent if the slot is still the message we pinned.
        let consistent = self
            .store()
            .load(slot)
            .is_ok_and(|now| now.generation == pinned.generation && now.state == state);
        self.unpin(slot);
        consistent.then_some(copy)
    }

    /// Gauges (by a scan of the slots) and counters.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        let store = self.store();
        for slot in 0..store.capacity() {
            match store.load(slot).map(|w| w.state) {
                Ok(State::Ready) => stats.ready += 1,
                Ok(State::Delayed) => stats.delayed += 1,
                Ok(State::Leased | State::Settling | State::Taken) => stats.in_flight += 1,
                Ok(State::Dead) => stats.dead += 1,
                _ => {}
            }
        }
        Stats {
            ready: stats.ready,
            delayed: stats.delayed,
            in_flight: stats.in_flight,
            dead: stats.dead,
            sleeping_receivers: self.participants().sleepers(SleepsOn::Ready),
            sleeping_publishers: self.participants().sleepers(SleepsOn::Room),
            timers_stalled: self
                .wheel()
                .stalled(self.now())
                .map(|(holder, held)| StalledHolder {
                    pid: self.participants().pid_of(holder).unwrap_or(0),
                    held_for: std::time::Duration::from_nanos(held),
                }),
            ..self.counters().snapshot()
        }
    }
}
