//! Waiting: look for a while awake, then sleep on the region's futex signal until a
//! change wakes the sleeper or the deadline passes.

use std::time::Duration;

use crate::base::clock::Clock;
use crate::base::sync::spin_hint;
use crate::engine::wait::Signal;
use crate::liveness::SleepsOn;
use crate::queue::Queue;

/// How long a waiting receiver keeps looking for a message before it sleeps (see
/// `look_while_spinning`): twice what a futex wake-up costs. Longer spins take CPU from
/// other threads where there are more busy threads than cores, and their tail latency
/// grows (figures: benches/README.md, *Measurements behind the code's choices*).
pub(super) const SPIN_BUDGET: Duration = Duration::from_micros(20);

/// How often a waiting receiver looks while it spins.
pub(super) const LOOK_INTERVAL: Duration = Duration::from_nanos(500);

/// How long a publisher waiting for room holds back for a run of free slots (see
/// `wait_for_room`): half the time it looks before it sleeps.
pub(super) const HOLD_BACK: Duration = Duration::from_micros(10);

/// The first part of a wait: `look` every [`LOOK_INTERVAL`] for [`SPIN_BUDGET`] (or
/// `timeout`, if shorter), awake. A message that comes within that time is found within
/// a look interval, where a sleeper would take a futex wake-up (many look intervals) and
/// its publisher a wake system call.
///
/// Why not look as often as possible: each look reads the ready ring's next slot, the
/// very cache line the next publish writes, so a receiver that looks more often than
/// messages come takes that line from the publisher before every publish, and the
/// publisher, the slower side, pays a transfer between cores each time. Looking every
/// half microsecond (longer than a publish takes between two busy cores) lets the
/// publisher of a busy stream run ahead; the price is up to one interval (plus a look)
/// of delay for a message that comes while the receiver waits (figures:
/// benches/README.md, *Measurements behind the code's choices*).
///
/// Why not `sched_yield` between looks, so that where threads outnumber cores the thread
/// we wait for may run: it did raise the rate of two publishers and two blocking
/// receivers on two cores, but a yielding receiver lets every other runnable thread take
/// its core for a time slice, and is not running when its message comes: the tour (six
/// processes on two cores) saw its p50 from publish to delivery go from microseconds to
/// milliseconds (figures: benches/README.md, *Measurements behind the code's choices*).
/// A receiver that spins, or sleeps on the futex and is woken, is there when the message
/// comes.
///
/// The caller has looked once already, at `started`.
pub(super) fn look_while_spinning<T>(
    started: std::time::Instant,
    timeout: Duration,
    look: &mut impl FnMut() -> Option<T>,
) -> Option<T> {
    let spin_for = SPIN_BUDGET.min(timeout);
    let mut looked = started;
    loop {
        if looked.duration_since(started) >= spin_for {
            return None;
        }
        while looked.elapsed() < LOOK_INTERVAL {
            for _ in 0..4 {
                spin_hint();
            }
        }
        if let Some(found) = look() {
            return Some(found);
        }
        looked = std::time::Instant::now();
    }
}

/// Who waits for a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wakes {
    /// Receivers, for a ready message.
    Receivers,
    /// Publishers of a full queue, for a free slot.
    Publishers,
}

/// A change someone may be waiting for (see `Queue::notify`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Change {
    /// Tokens went into the ready ring (receivers) or the free ring (publishers). The
    /// ring's SeqCst slot CAS orders the push before the wake-up's look at the signal.
    Pushed(Wakes),
    /// A timer was linked, or a run relinked timers it had detached: a sleeping receiver
    /// may need an earlier deadline. No push orders this change, so a fence does.
    TimersMoved,
}

impl<C: Clock> Queue<C> {
    /// A free slot once one frees up within `timeout`: the queue was full.
    ///
    /// For its first [`HOLD_BACK`], the publisher claims a slot only once a run of them is
    /// free (an eighth of the queue, at most 64). Claiming each slot as soon as a consumer
    /// frees it keeps both on the same free-ring word and slot lines, handing them back and
    /// forth between cores for every message; waiting for a run lets the consumer free
    /// slots while the publisher then fills them, and moves more messages (figures:
    /// benches/README.md, *Measurements behind the code's choices*).
    #[cold]
    #[inline(never)]
    pub(super) fn wait_for_room(&self, timeout: Duration) -> Option<(u32, u32)> {
        let started = std::time::Instant::now();
        let run = self.room_run();
        self.wait_until(SleepsOn::Room, timeout, || {
            if started.elapsed() < HOLD_BACK.min(timeout / 2) && self.free().len() < run {
                return None;
            }
            self.claim_free_slot().or_else(|| {
                self.tick(); // deadlines may be what frees slots (expired leases, then acks)
                None
            })
        })
    }

    /// The run of free slots a publisher waiting for room waits for: an eighth of the
    /// queue, at most 64 (see [`wait_for_room`](Self::wait_for_room)).
    pub(super) fn room_run(&self) -> usize {
        (self.config.capacity as usize / 8).clamp(1, 64)
    }

    /// Tells whoever may be waiting that `change` happened: the one place a change wakes
    /// sleepers: the region's futex signals, shared with other processes, and this
    /// handle's async waiters (feature `async`).
    #[inline]
    pub(super) fn notify(&self, change: Change) {
        match change {
            Change::Pushed(Wakes::Receivers) => {
                self.ready_signal().notify_after_push();
                #[cfg(all(feature = "async", not(loom)))]
                self.waiters.ready.wake_all();
            }
            Change::Pushed(Wakes::Publishers) => {
                self.room_signal().notify_after_push();
                // Async publishes are woken once a run of slots is free, for the reason a
                // blocking one holds back; the bridge wakes them within a millisecond of
                // any room (`queue::asynchronous`, *Waiting for room*).
                #[cfg(all(feature = "async", not(loom)))]
                if self.waiters.room.waiting() > 0 && self.free().len() >= self.room_run() {
                    self.waiters.room.wake_all();
                }
            }
            // The bridge of async waiters runs the timers: in a segment it sleeps on the
            // ready signal; a heap queue's naps until the next timer.
            Change::TimersMoved => {
                self.ready_signal().notify();
                #[cfg(all(feature = "async", not(loom)))]
                if self.trusted {
                    self.waiters.unpark_bridge();
                }
            }
        }
    }

    pub(super) fn ready_signal(&self) -> &Signal {
        &self.region.sections().shared.ready_signal
    }

    /// Publishers waiting for a free slot sleep on it (see [`publish`](Self::publish)).
    pub(crate) fn room_signal(&self) -> &Signal {
        &self.region.sections().shared.room_signal
    }

    /// Calls `look` (a receive, or a claim of a free slot) until it finds something or
    /// `timeout` of real time has passed: every half microsecond for the first 20 µs (see
    /// `look_while_spinning`), then between sleeps on the signal `on`.
    pub(crate) fn wait_until<T>(
        &self,
        on: SleepsOn,
        timeout: Duration,
        mut look: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        // Most calls find something at once: the first look reads no clock (a clock read
        // is a large part of a receive's cost; figures: benches/README.md, *Measurements
        // behind the code's choices*). The timeout counts from just after it.
        if let Some(found) = look() {
            return Some(found);
        }
        let started = std::time::Instant::now();
        // None: no limit.
        let give_up = started.checked_add(timeout);
        if let Some(found) = look_while_spinning(started, timeout, &mut look) {
            return Some(found);
        }
        let mine = self.participants().sleeping(self.participant, on);
        let signal = match on {
            SleepsOn::Ready => self.ready_signal(),
            SleepsOn::Room => self.room_signal(),
        };
        signal.wait_for(
            look,
            || {
                let left = match give_up {
                    Some(give_up) => give_up.checked_duration_since(std::time::Instant::now())?,
                    None => Duration::from_secs(3600),
                };
                // Wake for the next timer too: timers make delayed and expired-lease
                // messages ready, and a sleeping receiver is what would run them.
                let now = self.now();
                // A timer already due that the look did not run is being run by another
                // thread (or one stopped holding the run lock): looking again at once
                // would only spin, so wait a tick for it.
                let timer = self
                    .wheel()
                    .next_due()
                    .map(|due| match due.checked_sub(now) {
                        Some(wait) if wait > 0 => Duration::from_nanos(wait),
                        _ => self.config.timer_tick,
                    });
                let sleep = timer.map_or(left, |timer| timer.min(left));
                // In a shared segment, wake now and then even when idle: a process killed
                // mid-operation is noticed (and repaired) by whoever runs the timers.
                Some(if self.trusted {
                    sleep
                } else {
                    sleep.min(crate::queue::recovery::LIVENESS_INTERVAL)
                })
            },
            mine,
        )
    }
}
