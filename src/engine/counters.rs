//! A queue's counters, striped so that threads counting at once do not share a cache line.
//!
//! Every publish, delivery and ack bumps a counter. One shared word per counter would move
//! its cache line between the producer's and the consumer's cores on every message (it was
//! the single largest cost of a publish). So each counter is kept in [`STRIPES`] places,
//! each 128-byte stripe holding one copy of every counter; a thread bumps the copies of
//! the stripe it was dealt (see `this_thread_stripe`), and a read sums the stripes. Two
//! threads on one stripe still count correctly (the bumps are atomic), only slower.

use std::cell::Cell;

use crate::base::id::mix64;
use crate::base::sync::{AtomicU64, Ordering};

/// A snapshot of a queue: gauges (scanned, exact) and counters (since creation). A process
/// killed mid-operation can leave each counter off, either way, by at most the operations
/// it had under way (the README's *What it promises*).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Deliverable now.
    pub ready: u64,
    /// Waiting for a delay or a retry backoff.
    pub delayed: u64,
    /// Delivered and not yet settled.
    pub in_flight: u64,
    /// Dead letters.
    pub dead: u64,
    /// Receivers asleep now, waiting for a message (those still looking, in their first
    /// 20 µs, are not counted).
    pub sleeping_receivers: u64,
    /// Publishers asleep now, waiting for a free slot in a full queue
    /// (`Queue::publish`; those still looking, in their first 20 µs, are not counted).
    pub sleeping_publishers: u64,
    /// Publishes accepted.
    pub published: u64,
    /// Publishes refused as duplicates.
    pub duplicates: u64,
    /// Messages whose TTL ran out.
    pub expired: u64,
    /// Deliveries, redeliveries included.
    pub delivered: u64,
    /// Deliveries after the first (lease ran out, or retried after a nack).
    pub redelivered: u64,
    /// Acks accepted.
    pub acked: u64,
    /// Nacks accepted (with or without a delay of their own).
    pub nacked: u64,
    /// Deliveries handed back with `Delivery::release` (no attempt used up).
    pub released: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
    /// Dead letters discarded because the dead-letter queue was full.
    pub dead_discarded: u64,
    /// Crash-recovery sweeps that repaired something a killed process left (shared memory
    /// only; see `Queue::open_shm`).
    pub recoveries: u64,
    /// A live process that has held the timing wheel's run lock for over 100 ms (a run
    /// takes microseconds): stopped (SIGSTOP, a debugger) or stuck. Until it lets go, no
    /// delay, backoff or lease ends and no TTL is enforced at the head of the queue;
    /// messages already in the ready queue are still delivered (not those the stalled run
    /// was making ready). A dead holder's lock is broken by the next run.
    pub timers_stalled: Option<StalledHolder>,
}

/// A process holding a lock for long (see [`Stats::timers_stalled`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StalledHolder {
    /// Its pid (0 if it could not be told).
    pub pid: u32,
    /// How long it has held the lock.
    pub held_for: std::time::Duration,
}

/// What a counter counts (an index into a stripe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Counter {
    Published,
    Duplicates,
    Expired,
    Delivered,
    Redelivered,
    Acked,
    Nacked,
    DeadLettered,
    DeadDiscarded,
    Recoveries,
    Released,
}

pub(crate) const COUNTERS: usize = 11;

/// Copies of the counters kept apart: the first 16 threads of a process each get their own.
pub(crate) const STRIPES: usize = 16;

/// One copy of every counter, alone on its cache lines (128 bytes: adjacent-line prefetch
/// pairs 64-byte lines on x86).
#[repr(C, align(128))]
#[derive(Default)]
pub(crate) struct CounterStripe([AtomicU64; COUNTERS]);

/// The counters of one queue: [`STRIPES`] stripes in its region.
#[derive(Clone, Copy)]
pub(crate) struct Counters<'r> {
    stripes: &'r [CounterStripe],
}

impl<'r> Counters<'r> {
    /// Counters over `stripes`: [`STRIPES`] of them, zeroed at creation (a region always
    /// has that many; a thread whose stripe is missing would count nothing).
    #[inline]
    pub(crate) fn new(stripes: &'r [CounterStripe]) -> Self {
        Self { stripes }
    }

    /// Counts one `counter` event.
    #[inline]
    pub(crate) fn bump(&self, counter: Counter) {
        self.add(counter, 1);
    }

    /// Counts `count` at once (a batch).
    #[inline]
    pub(crate) fn add(&self, counter: Counter, count: u64) {
        // A region's counters are STRIPES stripes (a power of two): a mask, not a division.
        if let Some(stripe) = self.stripes.get(this_thread_stripe() & (STRIPES - 1)) {
            stripe.0[counter as usize].fetch_add(count, Ordering::Relaxed);
        }
    }

    /// The total of `counter` over all stripes.
    pub(crate) fn read(&self, counter: Counter) -> u64 {
        self.stripes.iter().fold(0u64, |sum, stripe| {
            sum.wrapping_add(stripe.0[counter as usize].load(Ordering::Relaxed))
        })
    }

    /// The counters of a [`Stats`]; the gauges are left to the caller.
    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            published: self.read(Counter::Published),
            duplicates: self.read(Counter::Duplicates),
            expired: self.read(Counter::Expired),
            delivered: self.read(Counter::Delivered),
            redelivered: self.read(Counter::Redelivered),
            acked: self.read(Counter::Acked),
            nacked: self.read(Counter::Nacked),
            dead_lettered: self.read(Counter::DeadLettered),
            dead_discarded: self.read(Counter::DeadDiscarded),
            recoveries: self.read(Counter::Recoveries),
            released: self.read(Counter::Released),
            ..Stats::default()
        }
    }
}

/// This thread's stripe, picked once per thread: the next one in turn after a stripe picked
/// per process (from a hash of the process id), so that the first [`STRIPES`] threads of a
/// process never share one. (A hash per thread put an in-process producer and consumer on
/// one stripe one time in sixteen, and then every count moved a cache line between their
/// cores.) Threads of different processes still share a stripe one time in sixteen.
#[inline]
fn this_thread_stripe() -> usize {
    thread_local!(static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) });
    STRIPE.with(|stripe| {
        let cached = stripe.get();
        if cached < STRIPES {
            return cached;
        }
        let picked = next_stripe();
        stripe.set(picked);
        picked
    })
}

/// The stripe for a thread asking for the first time. (A `std` atomic, not the `sync`
/// facade's: dealing stripes is no part of any model, and a loom atomic cannot be a static.)
#[cold]
fn next_stripe() -> usize {
    static TURN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let first = mix64(u64::from(std::process::id())) as usize;
    first.wrapping_add(TURN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) % STRIPES
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up() {
        let stripes: Vec<CounterStripe> = (0..STRIPES).map(|_| CounterStripe::default()).collect();
        let counters = Counters::new(&stripes);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(move || {
                    for _ in 0..1000 {
                        counters.bump(Counter::Acked);
                    }
                    counters.bump(Counter::Published);
                });
            }
        });
        let stats = counters.snapshot();
        assert_eq!((stats.acked, stats.published, stats.nacked), (8000, 8, 0));
    }

    #[test]
    fn a_stripe_is_alone_on_its_cache_lines() {
        assert_eq!(std::mem::size_of::<CounterStripe>(), 128);
        assert_eq!(std::mem::align_of::<CounterStripe>(), 128);
    }
}
