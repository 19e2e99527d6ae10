//! The dedup window: remembers each accepted message id for `window`, so a re-publish of the
//! same id within that time is rejected, in fixed memory chosen at creation.
//!
//! # Design
//!
//! Entries `(id, expires_at)` live in *stripes* of [`ENTRIES_PER_STRIPE`]; a hash of the id
//! picks the stripe and the entry a probe starts at. Each stripe has a one-word lock, held
//! for a few loads and stores and never across anything that can block or panic. Inside a
//! stripe, open addressing with linear probing:
//! - an **empty** entry (`expires_at == 0`) ends a probe chain;
//! - an **expired** entry (`expires_at <= now`) keeps chains intact but may be reused;
//! - recording an id probes until it finds the id (live: duplicate; expired: renewed in
//!   place) or an empty entry, and otherwise takes the first reusable entry it passed.
//!   If there is none, the stripe is full of live ids: a typed error, never a silent forget.
//!
//! So an id is decided in exactly one place, its stripe, under its lock: two publishers of
//! one id can never both be accepted, and memory never grows.
//!
//! # Why not DESIGN.md's rotating generations
//!
//! With two generations (a current table and the previous one, rotated every window), a
//! publisher that read the old epoch checks and inserts into the old table while one that
//! read the new epoch inserts into the new table: both find nothing and both are accepted.
//! Closing that race needs a single point of decision per id, which is what a stripe is.
//! A bloom filter in front buys nothing here, since a new id must be inserted anyway.
//!
//! The lock word holds 0 (free) or the holder's id (1 in-process for now), so a shared-memory
//! queue can break a lock whose holder died; a torn entry then reads as expired or empty.

use std::time::Duration;

use crate::id::{mix64, MessageId};
use crate::sync::{AtomicU64, Backoff, Ordering};

/// Entries per stripe: 32 entries of 16 bytes, eight cache lines.
pub const ENTRIES_PER_STRIPE: usize = 32;

/// The lock value of an in-process holder.
const HELD_IN_PROCESS: u64 = 1;

/// `expires_at` of an entry that never held an id: ends probe chains.
const EMPTY: u64 = 0;
/// `expires_at` of a forgotten entry: expired at any time, yet keeps chains intact.
const FORGOTTEN: u64 = 1;

/// The `expires_at` of an id recorded at `now`: never one of the markers above.
fn expiry(now: u64, window_nanos: u64) -> u64 {
    now.saturating_add(window_nanos).max(FORGOTTEN + 1)
}

/// Why an id was not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DedupError {
    /// The id was accepted less than one window ago.
    #[error("message id {id} was already published within the dedup window")]
    Duplicate {
        /// The repeated id.
        id: MessageId,
    },
    /// The id's stripe holds only ids younger than the window.
    #[error(
        "the dedup window is full ({capacity} ids remembered); \
         create the queue with a larger dedup capacity or a shorter window"
    )]
    Full {
        /// How many ids the window can remember.
        capacity: usize,
    },
}

/// A dedup window that cannot remember anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a dedup window needs a non-zero duration and capacity, got {window:?} and {capacity}")]
pub struct DedupConfigError {
    /// The window asked for.
    pub window: Duration,
    /// The capacity asked for.
    pub capacity: usize,
}

/// One remembered id.
struct Entry {
    /// The id, valid while `expires_at != 0`.
    id: AtomicU64,
    /// When the id may be published again, in clock nanoseconds, or `EMPTY` / `FORGOTTEN`.
    expires_at: AtomicU64,
}

/// A group of entries and the lock that guards them.
struct Stripe {
    /// 0 when free, otherwise the holder (see the module docs).
    lock: AtomicU64,
    entries: [Entry; ENTRIES_PER_STRIPE],
}

impl Stripe {
    fn new() -> Self {
        Self {
            lock: AtomicU64::new(0),
            entries: std::array::from_fn(|_| Entry {
                id: AtomicU64::new(0),
                expires_at: AtomicU64::new(0),
            }),
        }
    }

    /// Runs `f` holding the stripe lock.
    fn locked<R>(&self, f: impl FnOnce(&[Entry; ENTRIES_PER_STRIPE]) -> R) -> R {
        let backoff = Backoff::new();
        while self
            .lock
            .compare_exchange_weak(0, HELD_IN_PROCESS, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            backoff.snooze();
        }
        let result = f(&self.entries);
        self.lock.store(0, Ordering::Release);
        result
    }
}

/// Remembers accepted message ids for a fixed window, in fixed memory.
///
/// ```
/// use std::time::Duration;
/// use ackring::{dedup::{DedupError, DedupWindow}, MessageId};
///
/// let window = DedupWindow::new(Duration::from_secs(120), 1024)?;
/// let id = MessageId(7);
/// let t0 = 1_000;
/// assert_eq!(window.record(id, t0), Ok(()));
/// assert_eq!(window.record(id, t0 + 1), Err(DedupError::Duplicate { id }));
/// assert_eq!(window.record(id, t0 + 120_000_000_000), Ok(())); // a window later: accepted
/// # Ok::<(), ackring::dedup::DedupConfigError>(())
/// ```
pub struct DedupWindow {
    stripes: Box<[Stripe]>,
    window_nanos: u64,
}

impl DedupWindow {
    /// A window remembering each id for `window`, room for at least `capacity` ids at once
    /// (rounded up to whole stripes, a power of two of them).
    ///
    /// # Errors
    /// [`DedupConfigError`] if `window` or `capacity` is zero.
    pub fn new(window: Duration, capacity: usize) -> Result<Self, DedupConfigError> {
        let window_nanos = crate::clock::nanos(window);
        if window_nanos == 0 || capacity == 0 {
            return Err(DedupConfigError { window, capacity });
        }
        let stripes = capacity.div_ceil(ENTRIES_PER_STRIPE).next_power_of_two();
        Ok(Self {
            stripes: (0..stripes).map(|_| Stripe::new()).collect(),
            window_nanos,
        })
    }

    /// How many ids the window can remember at once.
    pub fn capacity(&self) -> usize {
        self.stripes.len() * ENTRIES_PER_STRIPE
    }

    /// Records `id` as published at `now` (clock nanoseconds).
    ///
    /// # Errors
    /// [`DedupError::Duplicate`] if `id` was recorded less than one window before `now`;
    /// [`DedupError::Full`] if its stripe holds only live ids.
    pub fn record(&self, id: MessageId, now: u64) -> Result<(), DedupError> {
        let hash = mix64(id.0);
        let stripe = &self.stripes[(hash as usize) & (self.stripes.len() - 1)];
        let start = (hash >> 32) as usize % ENTRIES_PER_STRIPE;
        let expires_at = expiry(now, self.window_nanos);
        stripe.locked(|entries| {
            let mut reusable = None;
            for step in 0..ENTRIES_PER_STRIPE {
                let entry = &entries[(start + step) % ENTRIES_PER_STRIPE];
                let entry_expires_at = entry.expires_at.load(Ordering::Relaxed);
                if entry_expires_at == EMPTY {
                    // End of the chain: the id is not here.
                    reusable.get_or_insert(entry);
                    break;
                }
                let live = entry_expires_at != FORGOTTEN && now < entry_expires_at;
                if entry.id.load(Ordering::Relaxed) == id.0 {
                    if live {
                        return Err(DedupError::Duplicate { id });
                    }
                    // Seen before, but longer ago than the window: accept and renew here.
                    reusable = Some(entry);
                    break;
                }
                if !live && reusable.is_none() {
                    reusable = Some(entry);
                }
            }
            let entry = reusable.ok_or(DedupError::Full {
                capacity: self.capacity(),
            })?;
            entry.id.store(id.0, Ordering::Relaxed);
            entry.expires_at.store(expires_at, Ordering::Relaxed);
            Ok(())
        })
    }

    /// Forgets `id` if it was recorded at `recorded_at`, so a publish that failed after
    /// recording (say, the queue was full) can be retried without being called a duplicate.
    pub fn forget(&self, id: MessageId, recorded_at: u64) {
        let hash = mix64(id.0);
        let stripe = &self.stripes[(hash as usize) & (self.stripes.len() - 1)];
        let start = (hash >> 32) as usize % ENTRIES_PER_STRIPE;
        let expires_at = expiry(recorded_at, self.window_nanos);
        stripe.locked(|entries| {
            for step in 0..ENTRIES_PER_STRIPE {
                let entry = &entries[(start + step) % ENTRIES_PER_STRIPE];
                let entry_expires_at = entry.expires_at.load(Ordering::Relaxed);
                if entry_expires_at == EMPTY {
                    return;
                }
                if entry.id.load(Ordering::Relaxed) == id.0 && entry_expires_at == expires_at {
                    // Forgotten, not empty: an empty entry would cut the chains running past it.
                    entry.expires_at.store(FORGOTTEN, Ordering::Relaxed);
                    return;
                }
            }
        });
    }
}

impl std::fmt::Debug for DedupWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupWindow")
            .field("capacity", &self.capacity())
            .field("window_nanos", &self.window_nanos)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(120);
    const WINDOW_NANOS: u64 = 120_000_000_000;

    #[test]
    fn rejects_within_the_window_and_accepts_after_it() {
        let dedup = DedupWindow::new(WINDOW, 64).unwrap();
        let id = MessageId(42);
        let t0 = 5_000;
        dedup.record(id, t0).unwrap();
        assert_eq!(dedup.record(id, t0), Err(DedupError::Duplicate { id }));
        assert_eq!(
            dedup.record(id, t0 + WINDOW_NANOS - 1),
            Err(DedupError::Duplicate { id })
        );
        dedup.record(MessageId(43), t0 + 1).unwrap();
        // Exactly one window later the id is accepted again, and remembered anew.
        dedup.record(id, t0 + WINDOW_NANOS).unwrap();
        assert_eq!(
            dedup.record(id, t0 + WINDOW_NANOS + 1),
            Err(DedupError::Duplicate { id })
        );
    }

    #[test]
    fn rejects_bad_config() {
        assert!(DedupWindow::new(Duration::ZERO, 8).is_err());
        assert!(DedupWindow::new(WINDOW, 0).is_err());
        assert_eq!(DedupWindow::new(WINDOW, 33).unwrap().capacity(), 64);
    }

    #[test]
    fn a_full_stripe_is_an_error_until_ids_expire() {
        // One stripe: 32 live ids fill it.
        let dedup = DedupWindow::new(WINDOW, ENTRIES_PER_STRIPE).unwrap();
        for id in 0..ENTRIES_PER_STRIPE as u64 {
            dedup.record(MessageId(id), 10).unwrap();
        }
        let late = MessageId(1_000);
        assert_eq!(
            dedup.record(late, 11),
            Err(DedupError::Full {
                capacity: ENTRIES_PER_STRIPE
            })
        );
        // Earlier ids are still rejected as duplicates, not forgotten to make room.
        assert!(matches!(
            dedup.record(MessageId(3), 12),
            Err(DedupError::Duplicate { .. })
        ));
        dedup.record(late, 10 + WINDOW_NANOS).unwrap();
    }

    #[test]
    fn memory_stays_bounded_over_many_windows() {
        let dedup = DedupWindow::new(WINDOW, 1024).unwrap();
        let capacity = dedup.capacity();
        let mut next_id = 0u64;
        for window in 0..50u64 {
            let now = window * WINDOW_NANOS;
            // A quarter of the capacity per window, all new: expired entries are reused.
            for _ in 0..capacity / 4 {
                dedup.record(MessageId(next_id), now).unwrap();
                next_id += 1;
            }
            // The previous window's ids are accepted again now.
            if window > 0 {
                let previous = next_id - 2 * (capacity as u64 / 4);
                dedup.record(MessageId(previous), now).unwrap();
            }
        }
        assert_eq!(dedup.capacity(), capacity);
    }

    #[test]
    fn forget_lets_a_failed_publish_retry() {
        let dedup = DedupWindow::new(WINDOW, 64).unwrap();
        let id = MessageId(9);
        dedup.record(id, 0).unwrap();
        dedup.forget(id, 1); // not this recording: kept
        assert!(dedup.record(id, 0).is_err());
        dedup.forget(id, 0);
        // Forgotten even at time 0, the earliest any clock reads.
        dedup.record(id, 0).unwrap();
    }

    #[test]
    fn forgetting_keeps_probe_chains_intact() {
        // Fill one stripe so that ids share chains, forget one, and check the rest are
        // still found.
        let dedup = DedupWindow::new(WINDOW, ENTRIES_PER_STRIPE).unwrap();
        for id in 0..20u64 {
            dedup.record(MessageId(id), 1).unwrap();
        }
        for id in (0..20u64).step_by(3) {
            dedup.forget(MessageId(id), 1);
        }
        for id in 0..20u64 {
            let result = dedup.record(MessageId(id), 2);
            if id % 3 == 0 {
                assert_eq!(result, Ok(()), "forgotten id {id} is accepted");
            } else {
                assert!(result.is_err(), "remembered id {id} is still a duplicate");
            }
        }
    }

    #[test]
    fn racing_publishers_of_the_same_ids_are_accepted_exactly_once() {
        let dedup = DedupWindow::new(WINDOW, 4096).unwrap();
        let ids: u64 = if cfg!(miri) { 50 } else { 2_000 };
        let accepted: Vec<Vec<u64>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let dedup = &dedup;
                    s.spawn(move || {
                        (0..ids)
                            .filter(|&id| dedup.record(MessageId(id), 7).is_ok())
                            .collect::<Vec<u64>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut all: Vec<u64> = accepted.into_iter().flatten().collect();
        all.sort_unstable();
        assert_eq!(all, (0..ids).collect::<Vec<_>>());
    }
}
