//! Sleeping until a message may be ready, without a busy CPU: a futex word in the region,
//! shared between processes (not `FUTEX_PRIVATE`), which publishers bump and wake only when
//! someone sleeps.
//!
//! # Protocol (no lost wake-ups)
//!
//! | sleeper                                  | waker (after making a message ready, or scheduling a timer) |
//! |------------------------------------------|----------------------------------------|
//! | 1. `seen = seq`                          | a. push the token to the ready ring (or link the timer) |
//! | 2. `waiters += 1`                        | b. if `waiters > 0`: `seq += 1`, wake   |
//! | 3. look again; if found: `waiters -= 1`  |                                         |
//! | 4. decide the timeout (next timer due)   |                                         |
//! | 5. `futex_wait(seq, seen, timeout)`      |                                         |
//! | 6. `waiters -= 1`                        |                                         |
//!
//! A SeqCst fence sits between each side's two steps (after 2, before b's load), so the
//! fences are ordered one way or the other: if the waker's comes second, its load of
//! `waiters` sees the increment (then it bumps `seq`, and the kernel's check of `seq`
//! against `seen` in 5 fails or the wake-up arrives); if the sleeper's comes second, its
//! look in 3 sees the push in a, and its timeout in 4 the timer. A publish with no sleeper
//! costs the fence and one load of a line that is written only when someone goes to sleep.
//!
//! # Sleepers killed in their sleep
//!
//! A process killed (SIGKILL) while one of its threads sleeps never takes that thread off
//! `waiters`, and every publish after would then pay a wake system call for no one. So a
//! sleeper also counts itself in its registration's own word (`Participants::sleeping`),
//! after its increment of `waiters` and before its decrement, with release order: whoever
//! reaps the dead registration takes that word's count off `waiters`
//! ([`forget_dead_sleepers`](Signal::forget_dead_sleepers)). A kill between the two steps
//! leaves `waiters` one too high, a spurious wake per publish, never one too low, which
//! would leave a live sleeper unwoken.

use crate::sync::{fence, AtomicU32, AtomicU64, Ordering};

/// A futex word and its sleeper count, on their own cache lines.
#[repr(C, align(128))]
#[derive(Default)]
pub(crate) struct Signal {
    seq: AtomicU32,
    waiters: AtomicU32,
}

impl Signal {
    /// After a reboot: the sleepers counted belonged to the ended boot.
    pub(crate) fn forget_sleepers(&self) {
        self.waiters.store(0, Ordering::SeqCst);
    }

    /// Takes `sleepers` that were killed in their sleep off the count (see the module docs).
    pub(crate) fn forget_dead_sleepers(&self, sleepers: u64) {
        if sleepers == 0 {
            return;
        }
        let sleepers = u32::try_from(sleepers).unwrap_or(u32::MAX);
        // A few tries: live sleepers come and go meanwhile, and only a process writing
        // garbage could make every try fail (then the count stays high: spurious wakes).
        let mut seen = self.waiters.load(Ordering::SeqCst);
        for _ in 0..8 {
            let rest = seen.saturating_sub(sleepers);
            match self
                .waiters
                .compare_exchange_weak(seen, rest, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return,
                Err(now) => seen = now,
            }
        }
    }

    /// Counts the calling thread asleep: in `waiters`, then in `mine` (its registration's
    /// own count, if any; see the module docs).
    fn count_in(&self, mine: Option<&AtomicU64>) {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        if let Some(mine) = mine {
            mine.fetch_add(1, Ordering::Release);
        }
    }

    /// Undoes [`count_in`](Self::count_in), in the opposite order.
    fn count_out(&self, mine: Option<&AtomicU64>) {
        if let Some(mine) = mine {
            mine.fetch_sub(1, Ordering::Release);
        }
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Wakes every sleeper, if there is one (after a message became ready).
    #[inline]
    pub(crate) fn notify(&self) {
        fence(Ordering::SeqCst); // orders the caller's push before the load below
        if self.waiters.load(Ordering::SeqCst) != 0 {
            self.seq.fetch_add(1, Ordering::SeqCst);
            wake_all(&self.seq);
        }
    }

    /// Returns what `look` finds, sleeping between looks until a [`notify`](Self::notify),
    /// or until `sleep_for` says how long is left (`None`: no more waiting). `sleep_for` is
    /// asked while this sleeper is counted, so what a waker did before its `notify` is
    /// seen by it (or the waker wakes it). `mine` is the caller's registration's count of
    /// sleepers, if it has one (see the module docs).
    pub(crate) fn wait_for<T>(
        &self,
        mut look: impl FnMut() -> Option<T>,
        mut sleep_for: impl FnMut() -> Option<std::time::Duration>,
        mine: Option<&AtomicU64>,
    ) -> Option<T> {
        loop {
            if let Some(found) = look() {
                return Some(found);
            }
            let seen = self.seq.load(Ordering::SeqCst);
            self.count_in(mine);
            // Orders the increment before the look below. How long to sleep is decided
            // after the fence too: it depends on the timers (the next one due), and a waker
            // that scheduled one before our fence is seen here, while one after it sees us
            // waiting and wakes us.
            fence(Ordering::SeqCst);
            let nap = match look() {
                Some(found) => Err(found),
                None => Ok(sleep_for()),
            };
            match nap {
                Ok(Some(nap)) => sleep(&self.seq, seen, nap),
                Ok(None) => {
                    self.count_out(mine);
                    return None;
                }
                Err(found) => {
                    self.count_out(mine);
                    return Some(found);
                }
            }
            self.count_out(mine);
        }
    }

    /// Sleepers now.
    pub(crate) fn sleepers(&self) -> u32 {
        self.waiters.load(Ordering::SeqCst)
    }

    /// Counts a sleeper that never sleeps (as one killed in its sleep), so that every
    /// `notify` shows (for tests).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn count_a_sleeper(&self, mine: Option<&AtomicU64>) {
        self.count_in(mine);
    }

    /// Wake-ups so far while someone was counted asleep (for tests).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn wake_ups(&self) -> u32 {
        self.seq.load(Ordering::SeqCst)
    }
}

/// Sleeps while `word == seen`, at most `nap`.
#[cfg(all(target_os = "linux", not(loom), not(miri)))]
fn sleep(word: &AtomicU32, seen: u32, nap: std::time::Duration) {
    use rustix::thread::futex;
    let timeout = futex::Timespec {
        tv_sec: nap.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(nap.subsec_nanos()),
    };
    // Shared (no PRIVATE flag): sleepers and wakers may be different processes. Errors
    // (EAGAIN: the word changed; EINTR; ETIMEDOUT) all mean "look again".
    let _ = futex::wait(word, futex::Flags::empty(), seen, Some(&timeout));
}

/// Wakes every sleeper on `word`.
#[cfg(all(target_os = "linux", not(loom), not(miri)))]
fn wake_all(word: &AtomicU32) {
    let _ = rustix::thread::futex::wake(word, rustix::thread::futex::Flags::empty(), u32::MAX);
}

/// Without futexes (loom, Miri, other systems): nap briefly by yielding.
#[cfg(not(all(target_os = "linux", not(loom), not(miri))))]
fn sleep(word: &AtomicU32, seen: u32, _nap: std::time::Duration) {
    if word.load(Ordering::SeqCst) == seen {
        crate::sync::Backoff::new().snooze();
    }
}

#[cfg(not(all(target_os = "linux", not(loom), not(miri))))]
fn wake_all(_word: &AtomicU32) {}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    #[test]
    fn a_sleeper_is_woken_by_a_notify_and_finds_what_was_made_ready() {
        let signal = Signal::default();
        let ready = AtomicBool::new(false);
        std::thread::scope(|s| {
            let sleeper = s.spawn(|| {
                signal.wait_for(
                    || {
                        ready
                            .load(std::sync::atomic::Ordering::SeqCst)
                            .then_some(())
                    },
                    || Some(Duration::from_secs(3600)),
                    None,
                )
            });
            // Publish only once the sleeper has registered (it may still be about to sleep:
            // the protocol covers both).
            while signal.sleepers() == 0 {
                std::thread::yield_now();
            }
            ready.store(true, std::sync::atomic::Ordering::SeqCst);
            signal.notify();
            assert_eq!(
                sleeper.join().unwrap(),
                Some(()),
                "woken, not timed out (an hour)"
            );
        });
        assert_eq!(signal.sleepers(), 0);
    }

    #[test]
    fn waiting_ends_when_time_is_up() {
        let signal = Signal::default();
        let give_up = Instant::now() + Duration::from_millis(20);
        let found: Option<()> = signal.wait_for(
            || None,
            || give_up.checked_duration_since(Instant::now()),
            None,
        );
        assert_eq!(found, None);
        assert!(Instant::now() >= give_up);
    }
}
