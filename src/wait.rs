//! Sleeping until something may have changed, without a busy CPU: a futex word in the
//! region, shared between processes (not `FUTEX_PRIVATE`), which wakers bump and wake only
//! when someone sleeps. A queue has two such signals: receivers sleep on the *ready* signal
//! until a message may be ready (publishers wake them), and publishers of a full queue
//! (`FullPolicy::Block`) sleep on the *room* signal until a slot may be free (whoever frees
//! one wakes them).
//!
//! # Protocol (no lost wake-ups)
//!
//! Told for the ready signal; for the room signal, the waker's step a is pushing a freed
//! slot's token to the free ring, and the sleeper's look is a claim of a free slot.
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
//! look in 3 sees the push in a, and its timeout in 4 the timer. Where step a is a push to
//! an index ring, whose slot CAS is SeqCst, that CAS takes the waker's fence's place
//! ([`Signal::notify_after_push`]): a publish or an ack with no sleeper then costs one
//! load of a line that is written only when someone goes to sleep.
//!
//! # Sleepers killed in their sleep
//!
//! A process killed (SIGKILL) while one of its threads sleeps never takes that thread off
//! `waiters`, and every publish (or ack) after would then pay a wake system call for no one.
//! So a sleeper also counts itself in its registration's own word (`Participants::sleeping`,
//! one count per signal),
//! after its increment of `waiters` and before its decrement, with release order: whoever
//! reaps the dead registration takes that word's count off `waiters`
//! ([`forget_dead_sleepers`](Signal::forget_dead_sleepers)). A kill between the two steps
//! leaves `waiters` one too high, a spurious wake per publish, never one too low, which
//! would leave a live sleeper unwoken.

use crate::participants::OwnSleeper;
use crate::sync::{fence, AtomicU32, Ordering};

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
    fn count_in(&self, mine: Option<OwnSleeper<'_>>) {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        if let Some(mine) = mine {
            mine.count_in();
        }
    }

    /// Undoes [`count_in`](Self::count_in), in the opposite order.
    fn count_out(&self, mine: Option<OwnSleeper<'_>>) {
        if let Some(mine) = mine {
            mine.count_out();
        }
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Wakes every sleeper, if there is one (after a message became ready, or a slot free).
    #[inline]
    pub(crate) fn notify(&self) {
        fence(Ordering::SeqCst); // orders the caller's push before the load below
        self.wake_if_waited_on();
    }

    /// [`notify`](Self::notify) after the caller pushed a token to an index ring, whose
    /// slot CAS is SeqCst: with the load of `waiters` below (SeqCst too), it is in the one
    /// total order of SeqCst operations and fences, which then has the sleeper's fence
    /// before the push whenever the sleeper's look missed the token (C++20
    /// [atomics.order] p4.3), so this load sees the sleeper's increment: no fence of ours
    /// is needed. A fence here (`lock or` on x86) after every ack's push cost one
    /// producer and one consumer 20% of their rate.
    ///
    /// One case the language's rule leaves to the hardware: a sleeper's look that stops at
    /// an earlier position, pushed by a pusher killed between its CAS and its notify, and
    /// seen by this waker only through a chain of acquire loads (happens-before, not
    /// strongly happens-before). Every multi-copy-atomic CPU (x86, ARMv8, RISC-V) still
    /// orders it; and a killed pusher's own wake-up is lost anyway, which the sleepers of a
    /// shared segment bound by napping at most `LIVENESS_INTERVAL`.
    ///
    /// Loom models SeqCst accesses as if they were AcqRel, so under loom a fence stands in
    /// for that rule, and `loom_models` checks the protocol with it.
    #[inline]
    pub(crate) fn notify_after_push(&self) {
        #[cfg(loom)]
        fence(Ordering::SeqCst);
        self.wake_if_waited_on();
    }

    #[inline]
    fn wake_if_waited_on(&self) {
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
        mine: Option<OwnSleeper<'_>>,
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
    pub(crate) fn count_a_sleeper(&self, mine: Option<OwnSleeper<'_>>) {
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

/// Without futexes (loom, Miri, other systems): nap briefly by yielding. (`loom_models`
/// sleeps as the kernel would instead.)
#[cfg(not(all(target_os = "linux", not(loom), not(miri))))]
fn sleep(word: &AtomicU32, seen: u32, _nap: std::time::Duration) {
    #[cfg(all(test, loom))]
    if loom_models::futex_sleep(word, seen) {
        return;
    }
    if word.load(Ordering::SeqCst) == seen {
        crate::sync::Backoff::new().snooze();
    }
}

#[cfg(not(all(target_os = "linux", not(loom), not(miri))))]
fn wake_all(_word: &AtomicU32) {}

#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use crate::ring::index::{IndexRing, OwnedWords};
    use crate::sync::AtomicU64;
    use loom::sync::Arc;
    use std::cell::{Cell, RefCell};

    std::thread_local! {
        /// Set by the model: 1 once the waker is done, so no wake-up can come any more.
        static WAKER_DONE: RefCell<Option<Arc<AtomicU64>>> = const { RefCell::new(None) };
        /// Whether a sleep would have lasted its whole nap, the waker done and no wake-up.
        static SLEPT_THROUGH: Cell<bool> = const { Cell::new(false) };
    }

    /// Sleeps as a futex wait would: until `word` moves from `seen` (a wake-up). Once the
    /// waker is done and `word` has not moved, the sleep would last its whole nap: noted,
    /// and ended. `false` (no sleep) outside the model below.
    pub(super) fn futex_sleep(word: &AtomicU32, seen: u32) -> bool {
        let Some(done) = WAKER_DONE.with(|done| done.borrow().clone()) else {
            return false;
        };
        loop {
            // `done` first: a wake-up before it is then seen in `word`.
            let waker_done = done.load(Ordering::SeqCst) == 1;
            if word.load(Ordering::SeqCst) != seen {
                return true;
            }
            if waker_done {
                SLEPT_THROUGH.with(|slept| slept.set(true));
                return true;
            }
            loom::thread::yield_now();
        }
    }

    /// The protocol's promise, for a waker that pushes a token to a ring (a ready token, or
    /// a freed slot's) and calls `notify_after_push`: a sleeper that did not find the token
    /// is woken, never left asleep for its whole nap.
    #[test]
    fn a_sleeper_never_sleeps_through_a_push() {
        sleeper_against(|ring| assert!(ring.try_push(7).unwrap()));
    }

    /// The same for a batch push (`publish_batch`, `ack_batch`), whose first value the
    /// sleeper takes.
    #[test]
    fn a_sleeper_never_sleeps_through_a_batch_push() {
        sleeper_against(|ring| assert_eq!(ring.try_push_many(&[7, 8]).unwrap(), 2));
    }

    /// One sleeper waiting for a value in a ring of two, against a waker that runs `push`
    /// (which pushes 7 first) and then `notify_after_push`.
    fn sleeper_against(push: fn(&IndexRing<'_>)) {
        fn ring(words: &OwnedWords) -> IndexRing<'_> {
            IndexRing::attach(&words.head, &words.tail, &words.slots)
        }
        loom::model(move || {
            let done = Arc::new(AtomicU64::new(0));
            WAKER_DONE.with(|slot| *slot.borrow_mut() = Some(done.clone()));
            SLEPT_THROUGH.with(|slept| slept.set(false));
            let shared = Arc::new((Signal::default(), OwnedWords::new(2)));
            shared.1.ring();
            let waker = {
                let shared = shared.clone();
                loom::thread::spawn(move || {
                    let (signal, words) = &*shared;
                    push(&ring(words));
                    signal.notify_after_push();
                    done.store(1, Ordering::SeqCst);
                })
            };
            let (signal, words) = &*shared;
            let found = signal.wait_for(
                || ring(words).try_pop().unwrap(),
                || Some(std::time::Duration::from_secs(1)),
                None,
            );
            waker.join().unwrap();
            WAKER_DONE.with(|slot| *slot.borrow_mut() = None);
            assert_eq!(found, Some(7));
            assert!(
                !SLEPT_THROUGH.with(Cell::get),
                "slept through the push: no wake-up came"
            );
        });
    }
}

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
