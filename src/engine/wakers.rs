//! The async waiters of this process: wakers that a change wakes, as the futex signal
//! (`wait`) wakes sleeping threads, and by the same protocol.
//!
//! | waiter (a future's poll)                     | waker (after a push)                      |
//! |----------------------------------------------|-------------------------------------------|
//! | 1. look (a try-receive); found: ready        | a. push the token (a SeqCst CAS)          |
//! | 2. register its waker, then a SeqCst fence   | b. if anyone is registered: take them all, and wake them |
//! | 3. look again; found: deregister, ready      |                                           |
//! | 4. pending                                   |                                           |
//!
//! The fence after 2 and the push's SeqCst CAS are in one total order. If the push comes
//! first, the look in 3 sees it; if the fence does, b's SeqCst load sees the registration.
//! So a registered waiter either finds the change or is woken (`loom_models` checks it,
//! and finds the lost wake-up without the look in 3). The list is process-local memory:
//! another process's push reaches it through the futex (see `queue::asynchronous`).
//!
//! Registering and waking take a lock; a push with no one registered reads one word.

use std::task::Waker;

use crate::base::sync::{fence, AtomicU64, Mutex, Ordering};

/// Registered wakers, each under a key its future keeps.
#[derive(Default)]
pub(crate) struct WakerList {
    /// How many are registered: all a push with no one waiting reads.
    waiting: AtomicU64,
    /// The next key, and the registrations.
    wakers: Mutex<(u64, Vec<(u64, Waker)>)>,
}

#[cfg_attr(loom, allow(dead_code))] // loom models only register and wake
impl WakerList {
    /// Registers `waker` (under `key`'s registration if it is still in the list, else a
    /// new one, whose key goes to `key`). The caller must look again afterwards (step 3).
    pub(crate) fn register(&self, key: &mut Option<u64>, waker: &Waker) {
        // A waker replaced is dropped after the lock: dropping one runs executor code,
        // which may drop a future that deregisters.
        let _replaced = {
            let mut guard = self.lock();
            let (next, wakers) = &mut *guard;
            match key.and_then(|key| wakers.iter_mut().find(|(k, _)| *k == key)) {
                Some((_, registered)) if registered.will_wake(waker) => None,
                Some((_, registered)) => Some(std::mem::replace(registered, waker.clone())),
                None => {
                    *next += 1;
                    *key = Some(*next);
                    wakers.push((*next, waker.clone()));
                    self.waiting.fetch_add(1, Ordering::SeqCst);
                    None
                }
            }
        };
        fence(Ordering::SeqCst); // orders the registration before the caller's look
    }

    /// Withdraws `key`'s registration, if it is still in the list (a future that found
    /// what it looked for, or was dropped).
    pub(crate) fn deregister(&self, key: &mut Option<u64>) {
        let Some(key) = key.take() else {
            return;
        };
        let _removed = {
            let mut guard = self.lock();
            let wakers = &mut guard.1;
            let index = wakers.iter().position(|(k, _)| *k == key);
            index.map(|index| {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                wakers.swap_remove(index)
            })
        }; // dropped after the lock, as in `register`
    }

    /// Wakes every registered waker (each then polls again, and registers again if it
    /// still finds nothing), after the caller's push. That push's SeqCst CAS orders it
    /// before the load here (see the module docs); other callers fence first.
    #[inline]
    pub(crate) fn wake_all(&self) {
        #[cfg(loom)]
        fence(Ordering::SeqCst); // loom models SeqCst accesses as AcqRel (see `wait`)
        if self.waiting.load(Ordering::SeqCst) == 0 {
            return;
        }
        self.wake_all_registered();
    }

    #[cold]
    #[inline(never)]
    fn wake_all_registered(&self) {
        let mut guard = self.lock();
        let wakers = &mut guard.1;
        // Most often one waits: popped, the list keeps its buffer for the next register,
        // where taking the list would free it and the next register allocate anew.
        if wakers.len() == 1 {
            let one = wakers.pop();
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            drop(guard);
            // Outside the lock: a waker may run its task's poll here, which registers again.
            if let Some((_, waker)) = one {
                waker.wake();
            }
            return;
        }
        let woken = std::mem::take(wakers);
        self.waiting.fetch_sub(woken.len() as u64, Ordering::SeqCst);
        drop(guard);
        for (_, waker) in woken {
            waker.wake();
        }
    }

    /// How many wakers are registered.
    pub(crate) fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::SeqCst)
    }

    fn lock(&self) -> crate::base::sync::MutexGuard<'_, (u64, Vec<(u64, Waker)>)> {
        // A panic while holding the lock (a waker's clone) leaves the list whole.
        self.wakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether a helper thread runs for a waker list's waiters (the async bridge), handed
/// between the waiters that start one and the helper that stops when none waits.
///
/// | waiter (after `WakerList::register`)       | helper, having seen none waiting          |
/// |--------------------------------------------|-------------------------------------------|
/// | `claim`: swap to 1; was 0: start a helper  | `stop_unless`: swap to 0, look at waiters |
/// | was 1: one runs, and sees the registration | one waits: swap to 1; was 0: go on        |
///
/// Every change of the word is a swap, so they are in one modification order. If the
/// waiter's claim comes before the stop, the stop reads it and so sees the registration
/// made before it: the helper goes on. Otherwise the claim reads the stop's 0 and starts
/// one. Never both: the helper's second swap then reads the claim's 1 (`loom_models`
/// checks it, and finds the stranded waiter without the look).
#[derive(Default)]
pub(crate) struct Helper {
    running: AtomicU64,
}

#[cfg_attr(loom, allow(dead_code))] // loom models only claim and stop
impl Helper {
    /// A waiter, registered: whether it must start a helper (none runs).
    pub(crate) fn claim(&self) -> bool {
        self.running.swap(1, Ordering::SeqCst) == 0
    }

    /// The helper: stops, unless a waiter registered meanwhile that found it running
    /// (`waiting` says whether any waits); returns whether it must go on.
    pub(crate) fn stop_unless(&self, waiting: impl Fn() -> bool) -> bool {
        // A swap, not a store: the argument needs the stop to read a claim before it.
        self.running.swap(0, Ordering::SeqCst);
        waiting() && self.claim()
    }

    /// A helper ends abnormally (a panic), or could not be started: the next waiter
    /// starts another.
    pub(crate) fn release(&self) {
        self.running.store(0, Ordering::SeqCst);
    }

    /// Whether a helper runs (or is being started).
    pub(crate) fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst) == 1
    }
}

#[cfg(all(test, not(loom)))]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::task::Wake;

    /// A waker that counts its wake-ups.
    pub(crate) struct Count(pub(crate) AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn registered_wakers_are_woken_once_and_deregistered_ones_not() {
        let list = WakerList::default();
        let (a, b) = (
            Arc::new(Count(AtomicUsize::new(0))),
            Arc::new(Count(AtomicUsize::new(0))),
        );
        let (mut key_a, mut key_b) = (None, None);
        list.register(&mut key_a, &Waker::from(a.clone()));
        list.register(&mut key_a, &Waker::from(a.clone())); // again: the same registration
        list.register(&mut key_b, &Waker::from(b.clone()));
        assert_eq!(list.waiting(), 2);
        list.deregister(&mut key_b);
        assert_eq!((list.waiting(), key_b), (1, None));
        list.wake_all();
        list.wake_all();
        let woken = |count: &Count| count.0.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!((woken(&a), woken(&b)), (1, 0));
        assert_eq!(list.waiting(), 0);
        list.deregister(&mut key_a); // already woken and removed: nothing to do
        assert_eq!(list.waiting(), 0);
        // Two at once, then one again (the list kept its buffer).
        list.register(&mut key_a, &Waker::from(a.clone()));
        list.register(&mut key_b, &Waker::from(b.clone()));
        list.wake_all();
        assert_eq!((woken(&a), woken(&b), list.waiting()), (2, 1, 0));
        list.register(&mut key_b, &Waker::from(b.clone()));
        list.wake_all();
        assert_eq!((woken(&a), woken(&b), list.waiting()), (2, 2, 0));
    }
}

/// Loom model of a waiter registering while a pusher pushes and wakes. Run from the repo
/// root: `RUSTFLAGS="--cfg loom" cargo test --lib --release loom_models`.
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::sync::atomic::AtomicBool;
    use loom::sync::Arc;
    use loom::thread;
    use std::task::Wake;

    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    // `Wake` wants `std::sync::Arc`: the flag inside is loom's.
    fn waker(flag: &std::sync::Arc<Flag>) -> Waker {
        Waker::from(flag.clone())
    }

    #[test]
    fn a_waiter_registering_while_the_helper_stops_has_exactly_one_helper() {
        crate::base::sync::model::check(|| {
            let list = Arc::new(WakerList::default());
            let helper = Arc::new(Helper::default());
            assert!(helper.claim(), "a helper runs");
            let running = {
                let (list, helper) = (list.clone(), helper.clone());
                thread::spawn(move || {
                    // Its idle look found no waiter (or it would go on at once).
                    list.waiting() > 0 || helper.stop_unless(|| list.waiting() > 0)
                })
            };
            let flag = std::sync::Arc::new(Flag(AtomicBool::new(false)));
            let mut key = None;
            list.register(&mut key, &waker(&flag));
            let started = helper.claim();
            let goes_on = running.join().unwrap();
            assert!(
                started || goes_on,
                "a registered waiter was left with no helper"
            );
            assert!(!(started && goes_on), "two helpers run");
            assert!(helper.is_running());
        });
    }

    #[test]
    fn a_waiter_registering_while_a_push_wakes_finds_the_push_or_is_woken() {
        crate::base::sync::model::check(|| {
            let list = Arc::new(WakerList::default());
            let pushed = Arc::new(AtomicU64::new(0));
            let pusher = {
                let (list, pushed) = (list.clone(), pushed.clone());
                thread::spawn(move || {
                    // A push: a SeqCst RMW, as an index ring's slot CAS.
                    pushed.fetch_add(1, Ordering::SeqCst);
                    list.wake_all();
                })
            };
            let flag = std::sync::Arc::new(Flag(AtomicBool::new(false)));
            let mut key = None;
            let found = pushed.load(Ordering::SeqCst) > 0 || {
                list.register(&mut key, &waker(&flag));
                pushed.load(Ordering::SeqCst) > 0 // the look again
            };
            pusher.join().unwrap();
            assert!(
                found || flag.0.load(Ordering::SeqCst),
                "a pending waiter was neither woken nor saw the push"
            );
        });
    }
}
