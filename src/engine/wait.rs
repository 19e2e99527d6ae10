//! Sleeping until something may have changed, without a busy CPU: a futex word in the
//! region, shared between processes (not `FUTEX_PRIVATE`), which a sleeper *arms* before
//! it sleeps and a waker wakes only when it finds it armed. A queue has two such signals:
//! receivers sleep on the *ready* signal until a message may be ready (publishers wake
//! them), and publishers of a full queue (`Queue::publish` and its waiting kin) sleep on the *room* signal
//! until a slot may be free (whoever frees one wakes them).
//!
//! # Protocol (no lost wake-ups)
//!
//! The futex word `seq` holds an epoch above one bit, `ARMED`: some thread may be asleep
//! on the word's current value. Told for the ready signal; for the room signal, the
//! waker's step a is pushing a freed slot's token to the free ring, and the sleeper's look
//! is a claim of a free slot.
//!
//! | sleeper                                        | waker (after making a message ready, or scheduling a timer) |
//! |------------------------------------------------|----------------------------------------|
//! | 1. arm: `seen = seq.fetch_or(ARMED) \| ARMED`  | a. push the token to the ready ring (or link the timer) |
//! | 2. count in (for [`Stats`](crate::Stats))      | b. if `seq` is armed: CAS it to the next epoch, not armed; the CAS's winner wakes every sleeper |
//! | 3. look again; if found: count out             |                                        |
//! | 4. decide the timeout (next timer due)         |                                        |
//! | 5. `futex_wait(seq, seen, timeout)`            |                                        |
//! | 6. count out                                   |                                        |
//!
//! A SeqCst fence sits between each side's two steps (after 2, before b's load), so the
//! fences are ordered one way or the other. If the waker's comes second, its load of `seq`
//! sees the arming, or a later change of `seq`: another arming (still armed), or another
//! waker's CAS, made after the arming, whose maker then wakes every sleeper. Either way
//! `seq` moves from `seen` after 1, and the kernel's check of `seq` against `seen` in 5
//! fails or the wake-up arrives. If the sleeper's comes second, its look in 3 sees the
//! push in a, and its timeout in 4 the timer. Where step a is a push to an index ring,
//! whose slot CAS is SeqCst, that CAS takes the waker's fence's place
//! ([`Signal::notify_after_push`]): a publish or an ack with no sleeper then costs one
//! load of a line that is written only when someone goes to sleep or is woken.
//!
//! # Why arm, rather than wake whenever someone is asleep
//!
//! A woken thread may wait a while for a core (on a busy machine, a scheduler tick), and
//! until it has counted itself out, every publish that only asked "is anyone asleep?"
//! made a wake-up system call for it again: where threads outnumber cores, many calls per
//! sleep, which cost a large part of the rate (figures: benches/README.md, *Measurements
//! behind the code's choices*). Now the first waker after an arming takes the bit
//! with its CAS and makes the one call; the others find the bit clear and pass, until a
//! sleeper arms again.
//!
//! The price: a waker whose CAS won but which has not yet made its call (preempted, or
//! killed, between the two) holds up every sleeper of that epoch, since the wakers after
//! it find the bit clear. Preempted, it calls when it runs again; killed, its sleepers
//! wake at the end of their naps (in a shared segment at most `LIVENESS_INTERVAL`, 100 ms;
//! a killed waker of an in-process queue takes its sleepers with it). Waking whenever
//! anyone slept paid a call per publish to avoid that.
//!
//! A sleeper that armed but finds what it looked for in step 3 leaves the bit set: the
//! next waker makes one needless call. Clearing it would be wrong: a sibling may have
//! armed the same epoch (its `fetch_or` changing nothing) and be asleep on it, and no
//! waker would wake it (`loom_models` finds that deadlock if the bit is cleared). A thread killed in its sleep (SIGKILL) also leaves the bit set,
//! which costs the same one call: nothing a dead process leaves can make every publish
//! pay a system call.
//!
//! # Who is asleep
//!
//! A sleeper counts itself in its participant entry's own count for the signal
//! (`Participants::sleeping`, a word of the entry) while it sleeps, for
//! [`Queue::stats`](crate::Queue::stats) only: waking does not read the counts. Whoever
//! reaps a dead registration clears its counts, so threads killed in their sleep are not
//! counted for ever.

use crate::base::sync::{fence, AtomicU32, Ordering};
use crate::liveness::SleeperCount;

/// The bit of `seq` that says a thread may be asleep on `seq`'s current value.
const ARMED: u32 = 1;

/// A futex word, on its own cache lines.
#[repr(C, align(128))]
#[derive(Default)]
pub(crate) struct Signal {
    /// An epoch (bits 1..) and `ARMED` (bit 0).
    seq: AtomicU32,
}

impl Signal {
    /// Wakes every sleeper, if one may be asleep (after a message became ready, or a slot
    /// free, or a timer was linked).
    #[inline]
    pub(crate) fn notify(&self) {
        fence(Ordering::SeqCst); // orders the caller's push before the load below
        self.wake_if_armed();
    }

    /// [`notify`](Self::notify) after the caller pushed a token to an index ring, whose
    /// slot CAS is SeqCst: with the load of `seq` below (SeqCst too), it is in the one
    /// total order of SeqCst operations and fences, which then has the sleeper's fence
    /// before the push whenever the sleeper's look missed the token (C++20
    /// [atomics.order] p4.3), so this load sees the sleeper's arming (or a later wake-up
    /// of it: see the module docs): no fence of ours is needed. A fence here (`lock or` on
    /// x86) after every ack's push cost a producer and a consumer a good part of their
    /// rate (figures: benches/README.md, *Measurements behind the code's choices*).
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
        self.wake_if_armed();
    }

    /// If `seq` is armed, moves it to the next epoch, not armed, and wakes every sleeper;
    /// a waker whose CAS loses to another's (which wakes them) stops there.
    #[inline]
    fn wake_if_armed(&self) {
        let mut seq = self.seq.load(Ordering::SeqCst);
        while seq & ARMED != 0 {
            // `seq` odd: + 1 clears the bit and carries into the epoch.
            match self.seq.compare_exchange_weak(
                seq,
                seq.wrapping_add(1),
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    self.wake_all();
                    return;
                }
                Err(now) => seq = now,
            }
        }
    }

    /// Returns what `look` finds, sleeping between looks until a [`notify`](Self::notify),
    /// or until `sleep_for` says how long is left (`None`: no more waiting). `sleep_for` is
    /// asked after this sleeper armed the signal, so what a waker did before its `notify`
    /// is seen by it (or the waker wakes it). `mine` is the caller's entry's count of
    /// sleepers on this signal (see the module docs).
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
            let seen = self.seq.fetch_or(ARMED, Ordering::SeqCst) | ARMED;
            mine.count_in();
            // Orders the arming before the look below. How long to sleep is decided after
            // the fence too: it depends on the timers (the next one due), and a waker that
            // scheduled one before our fence is seen here, while one after it finds the
            // signal armed and wakes us.
            fence(Ordering::SeqCst);
            let found = look();
            let nap = if found.is_none() { sleep_for() } else { None };
            if let Some(nap) = nap {
                self.sleep(seen, nap);
            }
            mine.count_out();
            if nap.is_none() {
                return found; // found, or no more waiting
            }
        }
    }

    /// Arms the signal and counts a sleeper that never sleeps, as one killed in its sleep
    /// (for tests).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn count_a_sleeper(&self, mine: SleeperCount<'_>) {
        self.arm();
        mine.count_in();
    }

    /// Arms the signal as a sleeper about to sleep would (for tests).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn arm(&self) {
        self.seq.fetch_or(ARMED, Ordering::SeqCst);
    }

    /// Wake-up calls so far (modulo 2^31; for tests and diagnostics).
    pub(crate) fn wake_ups(&self) -> u32 {
        self.seq.load(Ordering::SeqCst) >> 1
    }
}

impl Signal {
    /// Sleeps while `seq == seen`, at most `nap`.
    #[cfg(all(target_os = "linux", not(loom), not(miri)))]
    fn sleep(&self, seen: u32, nap: std::time::Duration) {
        use rustix::thread::futex;
        let timeout = futex::Timespec {
            tv_sec: nap.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(nap.subsec_nanos()),
        };
        // Shared (no PRIVATE flag): sleepers and wakers may be different processes. Errors
        // (EAGAIN: the word changed; EINTR; ETIMEDOUT) all mean "look again".
        let _ = futex::wait(&self.seq, futex::Flags::empty(), seen, Some(&timeout));
    }

    /// Wakes every thread asleep on `seq`.
    #[cfg(all(target_os = "linux", not(loom), not(miri)))]
    fn wake_all(&self) {
        // The kernel reads the count as an `int`: `u32::MAX` would be -1, which wakes one.
        let every = i32::MAX as u32;
        let _ =
            rustix::thread::futex::wake(&self.seq, rustix::thread::futex::Flags::empty(), every);
    }

    /// Without futexes (loom, Miri, other systems): nap briefly by yielding. (In the
    /// models of `loom_models`, a futex stand-in sleeps as the kernel would instead.)
    #[cfg(not(all(target_os = "linux", not(loom), not(miri))))]
    fn sleep(&self, seen: u32, _nap: std::time::Duration) {
        #[cfg(all(test, loom))]
        if loom_models::futex_sleep(&self.seq, seen) {
            return;
        }
        if self.seq.load(Ordering::SeqCst) == seen {
            crate::base::sync::Backoff::new().snooze();
        }
    }

    #[cfg(not(all(target_os = "linux", not(loom), not(miri))))]
    fn wake_all(&self) {
        #[cfg(all(test, loom))]
        loom_models::futex_wake_all();
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use crate::base::sync::AtomicU64;
    use crate::engine::index_ring::{IndexRing, OwnedWords};
    use loom::sync::{Arc, Condvar, Mutex};
    use std::cell::Cell;

    loom::lazy_static! {
        /// The kernel's futex, for the models below: the wake-up calls made so far, under a
        /// lock that a sleeper's check of its word and each call take (the kernel checks
        /// and queues a sleeper in one step against wake-ups), and the sleepers' queue.
        static ref FUTEX: (Mutex<u64>, Condvar) = (Mutex::new(0), Condvar::new());
    }

    // Loom's own thread local: one per model thread.
    loom::thread_local! {
        /// Set in every thread of the models below, which use the futex stand-in.
        static MODELLED: Cell<bool> = Cell::new(false);
    }

    /// Sleeps as a futex wait would: not at all if `word` is no longer `seen`, else until
    /// a wake-up call made after that check. A sleep no call ends never ends: loom reports
    /// it as a deadlock, the models' failure (a nap would have hidden it). `false` (no
    /// sleep) outside the models below.
    pub(super) fn futex_sleep(word: &AtomicU32, seen: u32) -> bool {
        if !MODELLED.with(Cell::get) {
            return false;
        }
        let (calls, queue) = &*FUTEX;
        let mut calls = calls.lock().unwrap();
        if word.load(Ordering::SeqCst) != seen {
            return true;
        }
        let before = *calls;
        while *calls == before {
            calls = queue.wait(calls).unwrap();
        }
        true
    }

    /// A wake-up call: wakes every thread asleep in [`futex_sleep`].
    pub(super) fn futex_wake_all() {
        if !MODELLED.with(Cell::get) {
            return;
        }
        let (calls, queue) = &*FUTEX;
        *calls.lock().unwrap() += 1;
        queue.notify_all();
    }

    /// The protocol's promise, for a waker that pushes a token to a ring (a ready token, or
    /// a freed slot's) and calls `notify_after_push`: a sleeper that did not find the token
    /// is woken, never left asleep.
    #[test]
    fn a_sleeper_never_sleeps_through_a_push() {
        sleepers_against(&[push_one], 1, 1, None);
    }

    /// The same for a batch push (`publish_batch`, `ack_batch`), both of whose values the
    /// sleeper takes.
    #[test]
    fn a_sleeper_never_sleeps_through_a_batch_push() {
        sleepers_against(&[push_two], 2, 1, None);
    }

    /// Two wakers, one push each, one sleeper that takes both: a waker that finds the
    /// signal no longer armed (the other took the bit), or loses the CAS, makes no call;
    /// the sleeper must still be woken, or find the value, for each push.
    #[test]
    fn a_sleeper_never_sleeps_through_either_of_two_pushes() {
        sleepers_against(&[push_one, push_one], 2, 1, None);
    }

    /// Two sleepers, one value each from one batch push: both may arm the same epoch (the
    /// second's `fetch_or` changing nothing), and the one call must wake both; a sleeper
    /// that finds its value leaves the bit armed for the other (fails if it cleared it).
    #[test]
    fn two_sleepers_never_sleep_through_a_batch_push() {
        sleepers_against(&[push_two], 2, 2, None);
    }

    /// Two sleepers and two wakers, one value each. (Four threads: at most two preemptions,
    /// since three make the model far too slow to run; figures: benches/README.md,
    /// *Measurements behind the code's choices*.)
    #[test]
    fn two_sleepers_never_sleep_through_two_pushes() {
        sleepers_against(&[push_one, push_one], 2, 2, Some(2));
    }

    fn push_one(ring: &IndexRing<'_>) {
        assert!(ring.try_push(7).unwrap());
    }

    fn push_two(ring: &IndexRing<'_>) {
        assert_eq!(ring.try_push_many(&[7, 8]).unwrap(), 2);
    }

    /// Each of `pushes` runs in its own waker thread, then `notify_after_push`; `sleepers`
    /// threads (the model's own among them) share the `values` pushed (at most two, the
    /// ring's capacity) equally, one `wait_for` per value. None may be left asleep.
    /// `preemptions` bounds loom's search below the environment's `LOOM_MAX_PREEMPTIONS`.
    fn sleepers_against(
        pushes: &'static [fn(&IndexRing<'_>)],
        values: usize,
        sleepers: usize,
        preemptions: Option<usize>,
    ) {
        fn ring(words: &OwnedWords) -> IndexRing<'_> {
            IndexRing::attach(&words.head, &words.tail, &words.slots)
        }
        let story = move || {
            let shared = Arc::new((Signal::default(), OwnedWords::new(2), AtomicU64::new(0)));
            shared.1.ring();
            let wakers: Vec<_> = pushes
                .iter()
                .map(|&push| {
                    let shared = shared.clone();
                    loom::thread::spawn(move || {
                        MODELLED.with(|modelled| modelled.set(true));
                        let (signal, words, _) = &*shared;
                        push(&ring(words));
                        signal.notify_after_push();
                    })
                })
                .collect();
            let sleep = {
                let shared = shared.clone();
                move || {
                    MODELLED.with(|modelled| modelled.set(true));
                    let (signal, words, count) = &*shared;
                    for _ in 0..values / sleepers {
                        let found = signal.wait_for(
                            || ring(words).try_pop().unwrap(),
                            || Some(std::time::Duration::from_secs(1)),
                            SleeperCount::standalone(count),
                        );
                        assert!(found.is_some(), "found its value");
                    }
                }
            };
            let others: Vec<_> = (1..sleepers)
                .map(|_| loom::thread::spawn(sleep.clone()))
                .collect();
            sleep();
            for thread in others.into_iter().chain(wakers) {
                thread.join().unwrap();
            }
            assert_eq!(
                SleeperCount::standalone(&shared.2).count(),
                0,
                "counted out"
            );
        };
        match preemptions {
            Some(bound) => crate::base::sync::model::check_bounded(bound, story),
            None => crate::base::sync::model::check(story),
        }
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
        let count = crate::base::sync::AtomicU64::new(0);
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
            while mine.count() == 0 {
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
        assert_eq!(mine.count(), 0);
    }

    /// One wake-up call wakes every thread asleep on the signal, not only the first: the
    /// kernel reads FUTEX_WAKE's count as an `int`, so a count of `u32::MAX` (-1) woke one
    /// (fails with that count: two sleepers sleep their whole nap of a minute).
    #[test]
    #[cfg(all(target_os = "linux", not(miri)))]
    fn one_wake_up_call_wakes_every_sleeper() {
        const SLEEPERS: usize = 3;
        let signal = Signal::default();
        let count = crate::base::sync::AtomicU64::new(0);
        let ready = AtomicBool::new(false);
        let tids = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            let sleepers: Vec<_> = (0..SLEEPERS)
                .map(|_| {
                    s.spawn(|| {
                        let tid = rustix::thread::gettid().as_raw_nonzero().get();
                        tids.lock().unwrap().push(tid);
                        signal.wait_for(
                            || {
                                ready
                                    .load(std::sync::atomic::Ordering::SeqCst)
                                    .then(Instant::now)
                            },
                            || Some(Duration::from_secs(60)),
                            SleeperCount::standalone(&count),
                        )
                    })
                })
                .collect();
            // Until every sleeper is counted and blocked in the kernel (state S).
            let asleep = |tid: &i32| {
                std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
                    .ok()
                    .and_then(|stat| {
                        let (_, fields) = stat.rsplit_once(')')?;
                        fields.split_whitespace().next().map(|state| state == "S")
                    })
                    .unwrap_or(false)
            };
            let give_up = Instant::now() + Duration::from_secs(5);
            while !(count.load(std::sync::atomic::Ordering::SeqCst) == SLEEPERS as u64
                && tids.lock().unwrap().iter().all(asleep))
            {
                assert!(Instant::now() < give_up, "the sleepers never fell asleep");
                std::thread::yield_now();
            }
            let notified = Instant::now();
            ready.store(true, std::sync::atomic::Ordering::SeqCst);
            signal.notify();
            assert_eq!(signal.wake_ups(), 1, "one call");
            for sleeper in sleepers {
                let found = sleeper.join().unwrap().expect("naps never end the wait");
                // Not a speed claim: woken, against sleeping out a nap of a minute.
                assert!(
                    found.duration_since(notified) < Duration::from_secs(30),
                    "slept its nap out: the call did not wake it"
                );
            }
        });
    }

    /// However many wakers come after one arming, one of them makes a wake-up call; a
    /// signal not armed since makes none.
    #[test]
    fn one_arming_is_woken_once() {
        let signal = Signal::default();
        signal.notify();
        assert_eq!(signal.wake_ups(), 0, "no one armed it");
        signal.arm();
        signal.arm(); // a sibling arming the same epoch
        for _ in 0..3 {
            signal.notify_after_push();
        }
        assert_eq!(signal.wake_ups(), 1);
        signal.arm();
        signal.notify();
        signal.notify();
        assert_eq!(signal.wake_ups(), 2);
    }

    #[test]
    fn waiting_ends_when_time_is_up() {
        let signal = Signal::default();
        let count = crate::base::sync::AtomicU64::new(0);
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
