//! The dedup window: remembers each accepted message id for `window`, so a re-publish of the
//! same id within that time is rejected, in fixed memory chosen at creation.
//!
//! # Design
//!
//! Entries `(id, expires_at)` live in *stripes* of [`ENTRIES_PER_STRIPE`]; a hash of the id
//! picks the stripe. Each stripe has a one-word lock, held for a few loads and stores and
//! never across anything that can block or panic, and a length: its entries in use are
//! `entries[..len]`, in no order. Recording an id scans them: the id live there is a
//! duplicate; otherwise the id takes its own expired entry, or the first expired one, or
//! the next one past `len`. If there is none, the stripe is full of live ids: a typed
//! error, never a silent forget. Expired entries at the end shrink `len` again.
//!
//! Hashing spreads ids over stripes unevenly (a Poisson spread), so a table sized at 32 ids
//! per stripe would report a full stripe at under half its entries. A window for `capacity`
//! ids therefore gets stripes for [`IDS_PER_STRIPE`] (8) of them each: a stripe then
//! overflows with probability 3e-11 (P[Poisson(8) >= 33]), so a million-stripe table
//! holding its full capacity of random ids overflows somewhere with probability 3e-5.
//! The price is 72 bytes per id (a stripe is 576 bytes: 16 of lock and length, 512 of
//! entries, rounded up to whole cache lines).
//!
//! Why a length and not open addressing: once every entry of an open-addressed stripe has
//! been used, no empty entry ends a probe, and every record scans the whole stripe (eight
//! cache lines). Reusing expired entries from the front keeps `len` near the most ids the
//! stripe held live at once, and the lock, the length and the first entries share the
//! stripe's first cache lines, which a publish prefetches ([`DedupWindow::prefetch`])
//! before it does its other work.
//!
//! A table for a million ids is tens of megabytes: a record is a miss to memory, longer
//! than the rest of a publish, so the prefetch at the start of a publish hides only part
//! of it. A queue's publish therefore also prefetches the stripe of the id two after the
//! caller's: publishers that number their messages find their stripe loaded. Two ahead,
//! not the next, since a publish takes about as long as the miss; ids that look random
//! gain nothing either way (figures: benches/README.md, *Measurements behind the code's
//! choices*).
//!
//! So an id is decided in exactly one place, its stripe, under its lock: two publishers of
//! one id can never both be accepted, and memory never grows.
//!
//! # Why not rotating generations (or a bloom filter in front)
//!
//! With two generations (a current table and the previous one, rotated every window), a
//! publisher that read the old epoch checks and inserts into the old table while one that
//! read the new epoch inserts into the new table: both find nothing and both are accepted.
//! Closing that race needs a single point of decision per id, which is what a stripe is.
//! A bloom filter in front buys nothing here, since a new id must be inserted anyway.
//!
//! The lock word holds 0 (free) or the holder's id (1 in-process for now), so a shared-memory
//! queue can break a lock whose holder died; a torn entry then reads as expired or empty.

use std::time::{Duration, Instant};

use crate::base::id::{mix64, MessageId};
use crate::base::sync::{prefetch_read, prefetch_write, AtomicU64, Backoff, Ordering};
pub use crate::error::{DedupConfigError, DedupError};
use crate::liveness::Participants;

/// Entries per stripe: 32 entries of 16 bytes, eight cache lines.
pub const ENTRIES_PER_STRIPE: usize = 32;

/// Ids a stripe is sized for on average: a quarter of its entries (see the module docs).
pub const IDS_PER_STRIPE: usize = ENTRIES_PER_STRIPE / 4;

/// The most ids a window may be sized for, 2^32 (on 64-bit targets): its stripes then
/// count in 32 bits, as a queue's region records them, and already take 288 GiB.
pub const MAX_CAPACITY: usize = (u32::MAX as usize).saturating_add(1);

/// The lock value of a standalone window's holder (a queue's holders are participant ids).
const HELD_IN_PROCESS: u64 = 1;

/// Tries at a held stripe lock between looks at whether its holder is alive.
const SPINS_BEFORE_CHECK: u32 = 1 << 10;

/// How long a record waits for a stripe lock that a live process of a shared queue holds:
/// a holder keeps it for nanoseconds, so one that keeps it this long is stopped (SIGSTOP,
/// a debugger) or stuck, and waiting on would hang every publish of an id on the stripe.
pub(crate) const LOCK_PATIENCE: Duration = Duration::from_secs(1);

/// `expires_at` of a forgotten entry: expired at any time (no clock reads below 0).
const FORGOTTEN: u64 = 0;

/// The `expires_at` of an id recorded at `now` (the window is at least 1 ns, so never
/// `FORGOTTEN`).
#[inline]
fn expiry(now: u64, window_nanos: u64) -> u64 {
    now.saturating_add(window_nanos)
}

/// One remembered id.
#[derive(Default)]
struct Entry {
    /// The id.
    id: AtomicU64,
    /// When the id may be published again, in clock nanoseconds, or `FORGOTTEN`.
    expires_at: AtomicU64,
}

impl Entry {
    #[inline]
    fn live(&self, now: u64) -> bool {
        now < self.expires_at.load(Ordering::Relaxed)
    }
}

/// A group of entries and the lock that guards them; the lock, the length and the first
/// three entries share the first cache line.
#[repr(C, align(64))]
#[derive(Default)]
pub(crate) struct Stripe {
    /// 0 when free, otherwise the holder (see the module docs).
    lock: AtomicU64,
    /// Entries in use: `entries[..len]`. Read and written under the lock; a value beyond
    /// the stripe (a torn write in shared memory) reads as all of them.
    len: AtomicU64,
    entries: [Entry; ENTRIES_PER_STRIPE],
}

/// How many entries a stripe's length says are in use (a torn length reads as all).
#[inline]
fn in_use(len: &AtomicU64) -> usize {
    (len.load(Ordering::Relaxed) as usize).min(ENTRIES_PER_STRIPE)
}

impl Stripe {
    /// Runs `f` holding the stripe lock as `holder`, with the entries and how many are in
    /// use. A lock held through [`SPINS_BEFORE_CHECK`] tries by a holder that `alive` says
    /// is gone (a killed process, or a value no holder writes) is taken over; its entries
    /// may then be torn, which reads as an old id or expiry, never as anything unsafe. A
    /// live holder is waited on for `patience` at most after the first look at it (`None`:
    /// as long as it lives), then `Err` names it.
    #[inline]
    fn locked<R>(
        &self,
        holder: u64,
        alive: impl Fn(u64) -> bool,
        patience: Option<Duration>,
        f: impl FnOnce(&[Entry; ENTRIES_PER_STRIPE], &AtomicU64) -> R,
    ) -> Result<R, u64> {
        let backoff = Backoff::new();
        let mut tries = 0u32;
        let mut since = None;
        loop {
            match self
                .lock
                .compare_exchange_weak(0, holder, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(current) => {
                    tries = tries.wrapping_add(1);
                    if tries.is_multiple_of(SPINS_BEFORE_CHECK) && current != 0 {
                        if !alive(current)
                            && self
                                .lock
                                .compare_exchange(
                                    current,
                                    holder,
                                    Ordering::Acquire,
                                    Ordering::Relaxed,
                                )
                                .is_ok()
                        {
                            break;
                        }
                        if let Some(patience) = patience {
                            let since = *since.get_or_insert_with(Instant::now);
                            if since.elapsed() >= patience {
                                return Err(current);
                            }
                        }
                    }
                    backoff.snooze();
                }
            }
        }
        let result = f(&self.entries, &self.len);
        self.lock.store(0, Ordering::Release);
        Ok(result)
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

/// Stripes for `capacity` ids ([`IDS_PER_STRIPE`] each), a power of two of them.
pub(crate) fn stripes_for(capacity: usize) -> usize {
    capacity.div_ceil(IDS_PER_STRIPE).next_power_of_two()
}

/// The dedup logic over stripes anywhere (a [`DedupWindow`]'s own, or a queue region's).
/// All-zero stripes are empty.
#[derive(Clone, Copy)]
pub(crate) struct DedupTable<'r> {
    /// A power of two of them (the hash picks one with a mask).
    stripes: &'r [Stripe],
    window_nanos: u64,
    /// Written into a stripe's lock while we hold it.
    holder: u64,
    /// Who can hold locks (`None`: only this process, whose holders are always alive).
    participants: Option<Participants<'r>>,
}

impl DedupWindow {
    /// A window remembering each id for `window`, sized for at least `capacity` live ids
    /// at once (rounded up to a power of two of stripes; see the module docs for why a
    /// stripe of 32 entries is sized for 8 ids).
    ///
    /// # Errors
    /// [`DedupConfigError`] if `window` or `capacity` is zero, `capacity` is above
    /// [`MAX_CAPACITY`], or the memory for it cannot be had.
    pub fn new(window: Duration, capacity: usize) -> Result<Self, DedupConfigError> {
        let window_nanos = crate::base::clock::nanos(window);
        let refused = DedupConfigError { window, capacity };
        if window_nanos == 0 || capacity == 0 || capacity > MAX_CAPACITY {
            return Err(refused);
        }
        let count = stripes_for(capacity);
        let mut stripes = Vec::new();
        stripes.try_reserve_exact(count).map_err(|_| refused)?;
        stripes.resize_with(count, Stripe::default);
        Ok(Self {
            stripes: stripes.into_boxed_slice(),
            window_nanos,
        })
    }

    fn table(&self) -> DedupTable<'_> {
        DedupTable::new(&self.stripes, self.window_nanos)
    }

    /// How many ids the window can remember at once.
    pub fn capacity(&self) -> usize {
        self.table().capacity()
    }

    /// Starts loading `id`'s stripe into the cache, so a [`record`](Self::record) a little
    /// later does not wait for memory (a large window does not fit in any cache). Only a
    /// hint: it does nothing where the CPU has no prefetch instruction.
    #[inline]
    pub fn prefetch(&self, id: MessageId) {
        self.table().prefetch(id);
    }

    /// Records `id` as published at `now` (clock nanoseconds).
    ///
    /// # Errors
    /// [`DedupError::Duplicate`] if `id` was recorded less than one window before `now`;
    /// [`DedupError::Full`] if its stripe holds only live ids.
    pub fn record(&self, id: MessageId, now: u64) -> Result<(), DedupError> {
        // In-process holders always finish: waited on as long as they take.
        self.table().record(id, now, None)
    }

    /// Forgets `id` if it was recorded at `recorded_at`, so a publish that failed after
    /// recording (say, the queue was full) can be retried without being called a duplicate.
    pub fn forget(&self, id: MessageId, recorded_at: u64) {
        // In-process holders always finish: waited on as long as they take.
        let _ = self.table().forget(id, recorded_at, None);
    }
}

impl<'r> DedupTable<'r> {
    /// The table over `stripes` (a power of two of them, or none: then every id is
    /// accepted and nothing remembered), remembering ids for `window_nanos`.
    #[inline]
    pub(crate) fn new(stripes: &'r [Stripe], window_nanos: u64) -> Self {
        debug_assert!(stripes.len().is_power_of_two() || stripes.is_empty());
        Self {
            stripes,
            window_nanos: window_nanos.max(1),
            holder: HELD_IN_PROCESS,
            participants: None,
        }
    }

    /// The table as used by participant `holder` of a queue with these `participants`.
    #[inline]
    pub(crate) fn held_by(self, holder: u64, participants: Participants<'r>) -> Self {
        Self {
            holder,
            participants: Some(participants),
            ..self
        }
    }

    fn holder_alive(&self, holder: u64) -> bool {
        match self.participants {
            Some(participants) => participants.is_alive(holder),
            None => holder == HELD_IN_PROCESS,
        }
    }

    /// The error for a stripe lock `holder` kept past `waited`.
    fn locked_error(&self, holder: u64, waited: Duration) -> DedupError {
        let pid = self.participants.and_then(|p| p.pid_of(holder));
        DedupError::Locked {
            pid: pid.unwrap_or(0),
            waited,
        }
    }

    /// Writes `holder` into `id`'s stripe lock (0 frees it), as a holder stopped mid-record
    /// leaves it.
    #[cfg(test)]
    pub(crate) fn hold_stripe_of(&self, id: MessageId, holder: u64) {
        let stripe = self.stripe(id).expect("dedup on");
        stripe.lock.store(holder, Ordering::Relaxed);
    }

    /// After a reboot (see `queue::reboot`; no other process attached): frees every
    /// stripe lock, whose holders belonged to the ended boot.
    pub(crate) fn free_locks(&self) {
        for stripe in self.stripes {
            stripe.lock.store(0, Ordering::Relaxed);
        }
    }

    /// How many live ids the table is sized for.
    pub(crate) fn capacity(&self) -> usize {
        self.stripes.len() * IDS_PER_STRIPE
    }

    /// `id`'s stripe: the low bits of its hash. (`x & (len - 1)` is below `len` for any
    /// `len`, so a count that is not a power of two, from bad memory, cannot index past.)
    #[inline]
    fn stripe(&self, id: MessageId) -> Option<&'r Stripe> {
        let stripes: &'r [Stripe] = self.stripes;
        stripes.get(mix64(id.0) as usize & stripes.len().wrapping_sub(1))
    }

    /// Starts loading `id`'s stripe, about to be recorded (so fetched for writing): its
    /// first three lines, which hold the lock, the length and entries 0-10. A stripe's
    /// length stays near the most ids it held live at once (a full table holds eight per
    /// stripe on average, some stripes more), so a record often scans into the third line,
    /// and loading it too makes a publish cheaper (figures: benches/README.md,
    /// *Measurements behind the code's choices*).
    #[inline]
    pub(crate) fn prefetch(&self, id: MessageId) {
        if let Some(stripe) = self.stripe(id) {
            prefetch_write(&stripe.lock); // the lock line, about to be written
            prefetch_read(&stripe.entries[4]);
            prefetch_read(&stripe.entries[8]);
        }
    }

    /// Starts loading the stripe of an id that may be recorded next: read only, so that a
    /// wrong guess does not take the line from a core that is using it.
    #[inline]
    pub(crate) fn prefetch_guess(&self, id: MessageId) {
        if let Some(stripe) = self.stripe(id) {
            prefetch_read(&stripe.lock);
            prefetch_read(&stripe.entries[4]);
            prefetch_read(&stripe.entries[8]);
        }
    }

    #[inline]
    /// Records `id` at `now`, waiting for a live holder of its stripe as `patience` says
    /// (see `Stripe::locked`).
    pub(crate) fn record(
        &self,
        id: MessageId,
        now: u64,
        patience: Option<Duration>,
    ) -> Result<(), DedupError> {
        let expires_at = expiry(now, self.window_nanos);
        let Some(stripe) = self.stripe(id) else {
            return Ok(()); // no stripes: dedup is off
        };
        let recorded = stripe.locked(
            self.holder,
            |h| self.holder_alive(h),
            patience,
            |entries, len| {
                let used = in_use(len);
                let mut reusable = None;
                for (index, entry) in entries[..used].iter().enumerate() {
                    let live = entry.live(now);
                    if entry.id.load(Ordering::Relaxed) == id.0 {
                        if live {
                            return Err(DedupError::Duplicate { id });
                        }
                        reusable = Some(index); // seen longer ago than the window: renew here
                        break;
                    }
                    if !live && reusable.is_none() {
                        reusable = Some(index);
                    }
                }
                let Some(index) = reusable.or((used < ENTRIES_PER_STRIPE).then_some(used)) else {
                    return Err(DedupError::Full {
                        capacity: self.capacity(),
                    });
                };
                entries[index].id.store(id.0, Ordering::Relaxed);
                entries[index]
                    .expires_at
                    .store(expires_at, Ordering::Relaxed);
                // Expired entries at the end no longer count: shorter scans for the next ids.
                let mut kept = used.max(index + 1);
                while kept > index + 1 && !entries[kept - 1].live(now) {
                    kept -= 1;
                }
                len.store(kept as u64, Ordering::Relaxed);
                Ok(())
            },
        );
        recorded
            .unwrap_or_else(|holder| Err(self.locked_error(holder, patience.unwrap_or_default())))
    }

    /// Forgets `id` if it was recorded at `recorded_at`, waiting for a live holder of its
    /// stripe as `patience` says; `false` if it gave up (the id is still remembered).
    pub(crate) fn forget(
        &self,
        id: MessageId,
        recorded_at: u64,
        patience: Option<Duration>,
    ) -> bool {
        let expires_at = expiry(recorded_at, self.window_nanos);
        let Some(stripe) = self.stripe(id) else {
            return true;
        };
        stripe
            .locked(
                self.holder,
                |h| self.holder_alive(h),
                patience,
                |entries, len| {
                    let recorded = entries[..in_use(len)].iter().find(|entry| {
                        entry.id.load(Ordering::Relaxed) == id.0
                            && entry.expires_at.load(Ordering::Relaxed) == expires_at
                    });
                    if let Some(entry) = recorded {
                        entry.expires_at.store(FORGOTTEN, Ordering::Relaxed);
                    }
                },
            )
            .is_ok()
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
        assert!(DedupWindow::new(WINDOW, MAX_CAPACITY + 1).is_err());
        assert!(
            DedupWindow::new(WINDOW, usize::MAX).is_err(),
            "no panic either"
        );
        assert_eq!(DedupWindow::new(WINDOW, 33).unwrap().capacity(), 64);
        assert_eq!(DedupWindow::new(WINDOW, 64).unwrap().stripes.len(), 8);
    }

    #[test]
    fn a_full_stripe_is_an_error_until_ids_expire() {
        // One stripe: 32 live ids fill it.
        let dedup = DedupWindow::new(WINDOW, IDS_PER_STRIPE).unwrap();
        for id in 0..ENTRIES_PER_STRIPE as u64 {
            dedup.record(MessageId(id), 10).unwrap();
        }
        let late = MessageId(1_000);
        assert_eq!(
            dedup.record(late, 11),
            Err(DedupError::Full {
                capacity: IDS_PER_STRIPE
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
    fn a_full_capacity_of_random_ids_fits() {
        // Hashed ids land unevenly: the table must still hold as many as it was sized for
        // (with 32 ids per stripe, this fails at under half the capacity).
        let capacity = if cfg!(miri) { 256 } else { 1 << 16 };
        let dedup = DedupWindow::new(WINDOW, capacity).unwrap();
        assert_eq!(dedup.capacity(), capacity);
        for n in 0..capacity as u64 {
            let id = MessageId::from_key(&n.to_le_bytes());
            assert_eq!(dedup.record(id, 1), Ok(()), "id number {n} of {capacity}");
        }
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
    fn expired_entries_are_reused_from_the_front_and_trimmed_from_the_end() {
        let dedup = DedupWindow::new(WINDOW, IDS_PER_STRIPE).unwrap();
        let stripe = &dedup.stripes[0];
        for id in 0..10u64 {
            dedup.record(MessageId(id), id).unwrap();
        }
        assert_eq!(in_use(&stripe.len), 10);
        // A window after the first 5 were recorded: they have expired; the next id takes
        // entry 0 and the length stays (live ids behind it).
        let later = 5 + WINDOW_NANOS - 1;
        dedup.record(MessageId(100), later).unwrap();
        assert_eq!(stripe.entries[0].id.load(Ordering::Relaxed), 100);
        assert_eq!(in_use(&stripe.len), 10);
        // Once all of the first 10 have expired, a record trims the length to itself.
        dedup.record(MessageId(101), 10 + WINDOW_NANOS).unwrap();
        assert_eq!(
            in_use(&stripe.len),
            2,
            "entries 0 (id 100, live) and 1 (id 101)"
        );
        assert!(dedup.record(MessageId(100), 10 + WINDOW_NANOS).is_err());
        // A torn length in shared memory reads as the whole stripe, never past it.
        stripe.len.store(u64::MAX, Ordering::Relaxed);
        assert!(dedup.record(MessageId(101), 11 + WINDOW_NANOS).is_err());
        dedup.record(MessageId(102), 11 + WINDOW_NANOS).unwrap();
    }

    #[test]
    fn forgetting_some_ids_keeps_the_others() {
        // Fill one stripe, forget every third id, and check the rest are still found.
        let dedup = DedupWindow::new(WINDOW, IDS_PER_STRIPE).unwrap();
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

/// Loom model of the dedup window: two publishers racing with one id, exactly one accepted.
#[cfg(all(test, loom))]
mod loom_models {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;
    use crate::base::sync::model::explore;
    use loom::sync::Arc;
    use loom::thread;

    #[test]
    fn two_publishers_with_the_same_id_exactly_one_is_accepted() {
        let seen = explore(|| {
            let dedup = Arc::new(DedupWindow::new(Duration::from_secs(1), 32).unwrap());
            let id = MessageId(77);
            let publishers: Vec<_> = (0..2)
                .map(|_| {
                    let dedup = dedup.clone();
                    thread::spawn(move || dedup.record(id, 10))
                })
                .collect();
            let results: Vec<_> = publishers.into_iter().map(|p| p.join().unwrap()).collect();
            let accepted = results.iter().filter(|r| r.is_ok()).count();
            assert_eq!(accepted, 1, "exactly one publish of the id: {results:?}");
            assert!(results.contains(&Err(DedupError::Duplicate { id })));
            // And the id stays remembered for the rest of the window.
            assert!(dedup.record(id, 11).is_err());
            results[0].is_ok()
        });
        // Either publisher may be the one accepted.
        assert_eq!(seen, BTreeSet::from([false, true]));
    }
}
