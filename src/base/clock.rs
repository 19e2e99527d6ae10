//! Time as a queue sees it: nanoseconds on one host-wide monotonic clock.
//!
//! Every deadline a queue stores (lease, delay, backoff, TTL, dedup expiry) is a count of
//! nanoseconds on `CLOCK_MONOTONIC`, which every process on the host reads alike, never a
//! process-local `Instant`. Tests build queues with a [`ManualClock`] and move time by hand,
//! so no test sleeps to wait for a timeout.

use std::sync::Arc;
use std::time::Duration;

use crate::base::sync::{AtomicU64, Ordering};

/// A source of monotonic time in nanoseconds.
pub trait Clock: Send + Sync {
    /// Nanoseconds since an arbitrary fixed origin; never decreases.
    fn now_nanos(&self) -> u64;
}

/// The host's `CLOCK_MONOTONIC`: the same reading in every process on this machine.
///
/// ```
/// use ackring::clock::{Clock, MonotonicClock};
/// let clock = MonotonicClock;
/// let before = clock.now_nanos();
/// assert!(clock.now_nanos() >= before);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now_nanos(&self) -> u64 {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        // CLOCK_MONOTONIC counts from boot: non-negative, and u64 nanoseconds last 584 years.
        (now.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(now.tv_nsec as u64)
    }
}

/// A clock that moves only when told to, for deterministic tests. Clones share one time.
///
/// ```
/// use std::time::Duration;
/// use ackring::clock::{Clock, ManualClock};
/// let clock = ManualClock::new();
/// let handle = clock.clone();
/// handle.advance(Duration::from_millis(5));
/// assert_eq!(clock.now_nanos(), 5_000_000);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock reading 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `by` (saturating at `u64::MAX` nanoseconds).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                Some(now.saturating_add(by))
            });
    }
}

impl Clock for ManualClock {
    fn now_nanos(&self) -> u64 {
        self.nanos.load(Ordering::Acquire)
    }
}

/// A duration in whole nanoseconds, saturating at `u64::MAX` (584 years).
pub(crate) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}
