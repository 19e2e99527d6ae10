//! Sleeping until something may have changed, without a busy CPU: a futex word in the
//! region, shared between processes (not `FUTEX_PRIVATE`), which wakers bump and wake only
//! when someone sleeps (a mask of participant entries with sleepers is not zero). A queue
//! has two such signals: receivers sleep on the *ready* signal until a message may be
//! ready (publishers wake them), and publishers of a full queue (`FullPolicy::Block`) sleep
//! on the *room* signal until a slot may be free (whoever frees one wakes them).
//!
//! # Protocol (no lost wake-ups)
//!
//! Told for the ready signal; for the room signal, the waker's step a is pushing a freed
//! slot's token to the free ring, and the sleeper's look is a claim of a free slot.
//!
//! | sleeper                                  | waker (after making a message ready, or scheduling a timer) |
//! |------------------------------------------|----------------------------------------|
//! | 1. `seen = seq`                          | a. push the token to the ready ring (or link the timer) |
//! | 2. count in: `mine += 1`, `mask \|= bit` | b. if `mask != 0`: `seq += 1`, wake     |
//! | 3. look again; if found: count out       |                                         |
//! | 4. decide the timeout (next timer due)   |                                         |
//! | 5. `futex_wait(seq, seen, timeout)`      |                                         |
//! | 6. count out: `mine -= 1`, put the bit right |                                     |
//!
//! A SeqCst fence sits between each side's two steps (after 2, before b's load), so the
//! fences are ordered one way or the other: if the waker's comes second, its load of
//! the mask sees the bit, or a later clear of it whose maker then wakes the sleeper (see
//! below); either way `seq` is bumped after 1, and the kernel's check of `seq` against
//! `seen` in 5 fails or the wake-up arrives; if the sleeper's comes second, its
//! look in 3 sees the push in a, and its timeout in 4 the timer. Where step a is a push to
//! an index ring, whose slot CAS is SeqCst, that CAS takes the waker's fence's place
//! ([`Signal::notify_after_push`]): a publish or an ack with no sleeper then costs one
//! load of a line that is written only when someone goes to sleep.
//!
//! # Who is asleep: a bit per participant entry
//!
//! A sleeper counts itself in its participant entry's own count for the signal
//! (`Participants::sleeping`, a word of the entry), and the signal keeps a *mask* with the
//! entry's bit set while that count is not zero. Wakers read only the mask.
//!
//! Why not one count of sleepers in the signal: a process killed (SIGKILL) between its
//! steps on two words (the signal's count and its entry's) left the shared count one too
//! high, and every publish (or ack) after paid a wake system call for no one, for as long
//! as the segment lived. A bit is put right from the entry's count alone, by anyone:
//! whoever reaps a dead registration clears its counts, and the liveness check (at most
//! every `LIVENESS_INTERVAL`, 100 ms, run by whichever handle runs the timers) puts every
//! entry's bits right. A process killed while it puts a bit right can leave it wrong only
//! until then: a bit set with no sleeper costs wake calls for no one, a bit clear under a
//! sleeper delays its wake-up by at most its nap (which in a shared segment is at most
//! that interval), and the check that sets it again wakes the sleepers.
//!
//! *Putting a bit right* ([`Signal::put_right`]): read the count, set the bit if it is not
//! zero (else clear it), read the count again, and start over if it moved. Every decrement
//! is followed by its thread putting the bit right, every increment by its thread setting
//! the bit, and (all of it SeqCst, in one total order) the last one to change the bit read
//! the count after the count's last change, so the bit ends right.
//!
//! Meanwhile a bit may be clear while a thread of the entry sleeps: a sibling read the
//! count as zero as it counted itself out, the sleeper counted itself in and set the bit
//! (already set), then the sibling cleared it; a waker may pass the sleeper by in that
//! moment. So whoever clears a bit and then reads a count that is not zero sets it again
//! and wakes the signal's sleepers: the sleeper's increment came before its setting of the
//! bit (an RMW, even when it found the bit set), which came before the clear, which came
//! before that read, so the read sees it (unless the sleeper has counted itself out, and
//! needs no wake-up; or the clearer was killed before its read, or the count was cleared
//! by a wrong verdict of death: then the wake-up waits for the sleeper's nap or the next
//! liveness check). Setting a bit that was clear while the count was already not zero
//! wakes them too (the clearer may have been killed before its read).

use crate::participants::SleeperCount;
use crate::sync::{fence, AtomicU32, AtomicU64, Ordering};

/// A futex word and its mask of entries with sleepers, on their own cache lines.
#[repr(C, align(128))]
#[derive(Default)]
pub(crate) struct Signal {
    seq: AtomicU32,
    /// Bit `i`: participant entry `i` counts threads asleep here (see the module docs).
    sleeping_entries: AtomicU64,
}

impl Signal {
    /// After a reboot: the sleepers counted belonged to the ended boot.
    pub(crate) fn forget_sleepers(&self) {
        self.sleeping_entries.store(0, Ordering::SeqCst);
    }

    /// Counts the calling thread asleep: in its entry's count, then in the mask.
    fn count_in(&self, mine: SleeperCount<'_>) {
        let others = mine.count_in();
        let before = self.sleeping_entries.fetch_or(mine.bit(), Ordering::SeqCst);
        if others != 0 && before & mine.bit() == 0 {
            // Siblings counted under a clear bit (see the module docs).
            self.wake_everyone();
        }
    }

    /// Undoes [`count_in`](Self::count_in).
    fn count_out(&self, mine: SleeperCount<'_>) {
        mine.count_out();
        self.put_right(mine);
    }

    /// Sets the bit of `count`'s entry in the mask if its count is not zero, and clears it
    /// otherwise (see the module docs). Called after every decrement or clearing of the
    /// count, by whoever made it (an increment sets the bit in `count_in`); anyone may call
    /// it at any time.
    pub(crate) fn put_right(&self, count: SleeperCount<'_>) {
        let bit = count.bit();
        let mut seen = count.count();
        let mut cleared = false;
        loop {
            let mask = self.sleeping_entries.load(Ordering::SeqCst);
            if seen != 0 {
                let set_again = mask & bit == 0
                    && self.sleeping_entries.fetch_or(bit, Ordering::SeqCst) & bit == 0;
                // A waker may have found the bit clear while a sleeper was counted: under
                // our clear, or one whose maker died before it looked again.
                if cleared || set_again {
                    cleared = false;
                    self.wake_everyone();
                }
            } else if mask & bit != 0 {
                self.sleeping_entries.fetch_and(!bit, Ordering::SeqCst);
                cleared = true;
            }
            let now = count.count();
            if now == seen {
                return;
            }
            seen = now;
        }
    }

    /// Wakes every sleeper, if there is one (after a message became ready, or a slot free).
    #[inline]
    pub(crate) fn notify(&self) {
        fence(Ordering::SeqCst); // orders the caller's push before the load below
        self.wake_if_waited_on();
    }

    /// [`notify`](Self::notify) after the caller pushed a token to an index ring, whose
    /// slot CAS is SeqCst: with the load of the mask below (SeqCst too), it is in the one
    /// total order of SeqCst operations and fences, which then has the sleeper's fence
    /// before the push whenever the sleeper's look missed the token (C++20
    /// [atomics.order] p4.3), so this load sees the sleeper's bit (or a later clear, whose
    /// maker wakes the sleeper: see the module docs): no fence of ours is needed. A fence here (`lock or` on x86) after every ack's push cost one
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
        if self.sleeping_entries.load(Ordering::SeqCst) != 0 {
            self.wake_everyone();
        }
    }

    fn wake_everyone(&self) {
        self.seq.fetch_add(1, Ordering::SeqCst);
        wake_all(&self.seq);
    }

    /// Returns what `look` finds, sleeping between looks until a [`notify`](Self::notify),
    /// or until `sleep_for` says how long is left (`None`: no more waiting). `sleep_for` is
    /// asked while this sleeper is counted, so what a waker did before its `notify` is
    /// seen by it (or the waker wakes it). `mine` is the caller's entry's count of sleepers
    /// on this signal (see the module docs).
    pub(crate) fn wait_for<T>(
        &self,
        mut look: impl FnMut() -> Option<T>,
        mut sleep_for: impl FnMut() -> Option<std::time::Duration>,
        mine: SleeperCount<'_>,
    ) -> Option<T> {
        loop {
            if let Some(found) = look() {
                return Some(found);
            }
            let seen = self.seq.load(Ordering::SeqCst);
            self.count_in(mine);
            // Orders the count (the mask's bit) before the look below. How long to sleep is decided
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

    /// The mask of entries with sleepers (see the module docs).
    pub(crate) fn sleeping_entries(&self) -> u64 {
        self.sleeping_entries.load(Ordering::SeqCst)
    }

    /// Counts a sleeper that never sleeps (as one killed in its sleep), so that every
    /// `notify` shows (for tests).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn count_a_sleeper(&self, mine: SleeperCount<'_>) {
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
        /// Set by the model: how many of the threads that may wake the sleeper are done,
        /// and how many there are; once all are, no wake-up can come any more.
        static WAKERS_DONE: RefCell<Option<(Arc<AtomicU64>, u64)>> = const { RefCell::new(None) };
        /// Whether a sleep would have lasted its whole nap, the waker done and no wake-up.
        static SLEPT_THROUGH: Cell<bool> = const { Cell::new(false) };
    }

    /// Sleeps as a futex wait would: until `word` moves from `seen` (a wake-up). Once the
    /// wakers are done and `word` has not moved, the sleep would last its whole nap: noted,
    /// and ended. `false` (no sleep) outside the model below.
    pub(super) fn futex_sleep(word: &AtomicU32, seen: u32) -> bool {
        let Some((done, wakers)) = WAKERS_DONE.with(|done| done.borrow().clone()) else {
            return false;
        };
        loop {
            // `done` first: a wake-up before it is then seen in `word`.
            let wakers_done = done.load(Ordering::SeqCst) == wakers;
            if word.load(Ordering::SeqCst) != seen {
                return true;
            }
            if wakers_done {
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
        sleeper_against(|ring| assert!(ring.try_push(7).unwrap()), 0);
    }

    /// The same while a sibling thread (of the same participant entry) counts itself in
    /// and out: as it counts out it may clear the entry's bit just as the sleeper counts
    /// itself in, and a waker may then find no bit; the sibling then sets the bit again and
    /// wakes the sleeper (fails without that wake-up).
    #[test]
    fn a_sleeper_never_sleeps_through_a_push_while_a_sibling_counts_out() {
        sleeper_against(|ring| assert!(ring.try_push(7).unwrap()), 1);
    }

    /// The same with two siblings: one clears the bit as the sleeper counts itself in, the
    /// other sets it again (counting itself in) before the first looks at the count again;
    /// the first must wake the sleeper all the same (fails if only setting a clear bit
    /// wakes).
    #[test]
    fn a_sleeper_never_sleeps_through_a_push_while_siblings_count_in_and_out() {
        sleeper_against(|ring| assert!(ring.try_push(7).unwrap()), 2);
    }

    /// The same for a batch push (`publish_batch`, `ack_batch`), whose first value the
    /// sleeper takes.
    #[test]
    fn a_sleeper_never_sleeps_through_a_batch_push() {
        sleeper_against(
            |ring| assert_eq!(ring.try_push_many(&[7, 8]).unwrap(), 2),
            0,
        );
    }

    /// One sleeper waiting for a value in a ring of two, against a waker that runs `push`
    /// (which pushes 7 first) and then `notify_after_push`, while `siblings` threads count
    /// themselves in and out of the sleeper's entry.
    fn sleeper_against(push: fn(&IndexRing<'_>), siblings: u64) {
        fn ring(words: &OwnedWords) -> IndexRing<'_> {
            IndexRing::attach(&words.head, &words.tail, &words.slots)
        }
        loom::model(move || {
            let done = Arc::new(AtomicU64::new(0));
            let wakers = 1 + siblings;
            WAKERS_DONE.with(|slot| *slot.borrow_mut() = Some((done.clone(), wakers)));
            SLEPT_THROUGH.with(|slept| slept.set(false));
            let shared = Arc::new((Signal::default(), OwnedWords::new(2), AtomicU64::new(0)));
            shared.1.ring();
            let waker = {
                let (shared, done) = (shared.clone(), done.clone());
                loom::thread::spawn(move || {
                    let (signal, words, _) = &*shared;
                    push(&ring(words));
                    signal.notify_after_push();
                    done.fetch_add(1, Ordering::SeqCst);
                })
            };
            let siblings: Vec<_> = (0..siblings)
                .map(|_| {
                    let (shared, done) = (shared.clone(), done.clone());
                    loom::thread::spawn(move || {
                        let (signal, _, count) = &*shared;
                        let mine = SleeperCount::standalone(count);
                        signal.count_in(mine);
                        signal.count_out(mine);
                        done.fetch_add(1, Ordering::SeqCst);
                    })
                })
                .collect();
            let (signal, words, count) = &*shared;
            let found = signal.wait_for(
                || ring(words).try_pop().unwrap(),
                || Some(std::time::Duration::from_secs(1)),
                SleeperCount::standalone(count),
            );
            waker.join().unwrap();
            for sibling in siblings {
                sibling.join().unwrap();
            }
            WAKERS_DONE.with(|slot| *slot.borrow_mut() = None);
            assert_eq!(found, Some(7));
            assert!(
                !SLEPT_THROUGH.with(Cell::get),
                "slept through the push: no wake-up came"
            );
            assert_eq!(signal.sleeping_entries(), 0, "counted out");
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
        let count = crate::sync::AtomicU64::new(0);
        let mine = SleeperCount::standalone(&count);
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
                    mine,
                )
            });
            // Publish only once the sleeper has counted itself (it may still be about to
            // sleep: the protocol covers both).
            while signal.sleeping_entries() == 0 {
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
        assert_eq!((signal.sleeping_entries(), mine.count()), (0, 0));
    }

    #[test]
    fn waiting_ends_when_time_is_up() {
        let signal = Signal::default();
        let count = crate::sync::AtomicU64::new(0);
        let give_up = Instant::now() + Duration::from_millis(20);
        let found: Option<()> = signal.wait_for(
            || None,
            || give_up.checked_duration_since(Instant::now()),
            SleeperCount::standalone(&count),
        );
        assert_eq!(found, None);
        assert!(Instant::now() >= give_up);
    }
}
