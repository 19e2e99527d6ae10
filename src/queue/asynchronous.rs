//! Async receive and publish (feature `async`): futures and a stream that any executor
//! can poll (tokio, async-std, smol, a hand-rolled `block_on`), on a queue shared as an
//! `Arc`, in one process or across processes.
//!
//! # How a waiting future is woken
//!
//! A future that finds nothing registers its waker with the queue handle's waker list
//! (`engine::wakers`) and looks again, so a push either is seen by that look or wakes it.
//! A push in this process wakes the list directly, from `Queue::notify`. While any future
//! of the handle waits, one *bridge* thread runs the timers, as a sleeping receiver would
//! (they end delays, backoffs and leases); it is started by the first waiting future and
//! ends once none has waited for 100 ms.
//!
//! - In a heap queue only this process pushes: the bridge naps until the next timer, and
//!   a timer scheduled meanwhile unparks it. It never arms the futex, which would make
//!   every publish pay a wake-up call.
//! - In a shared segment a push by another process only touches the futex, which has no
//!   file descriptor to hand to an executor: the bridge sleeps on it as an ordinary
//!   sleeper (counted in `Stats::sleeping_receivers`; killed with its process, uncounted
//!   when its registration is reaped) and wakes the list. Room another process frees is
//!   noticed by the bridge within 1 ms (the room signal is a second futex, and a thread
//!   sleeps on one).
//!
//! # Waiting for room
//!
//! This process's acks wake waiting publishes once a run of slots is free (an eighth of
//! the queue, at most 64), for the reason a blocking publish holds back for a run: woken
//! at each freed slot, a publisher fills it and waits again, and each round trip costs the
//! acking task a wake-up of another worker. So that a run that never comes (messages held
//! by leases or delays) strands no one, the bridge wakes them every millisecond while
//! any waits (they look; a publish that begins waiting wakes the bridge from a longer
//! nap): a single freed slot is taken within about a millisecond.
//!
//! # Yielding
//!
//! A task whose every receive (or publish) finds a message (or room) would never return
//! to its executor, and the tasks it wakes would wait: tokio puts a task woken from a
//! worker in that worker's next-task slot, which other workers do not steal, so a
//! consumer woken by a producer that never waits would run only once the queue is full,
//! on the producer's worker, and the two would take turns on one core. So after
//! 128 polls in a row by one task on a thread that did not wait, the next yields
//! once: it wakes its task and returns `Pending`, having taken nothing; the poll after
//! it goes on. tokio's own channels yield by the same count, from the runtime's budget
//! per task poll, which a future that works on any executor cannot see; a task here is
//! told apart by its waker (so futures that a combinator polls each with a waker of its
//! own, as `FuturesUnordered` does, count apart; figures: benches/README.md, *Async
//! receive against tokio's and flume's channels*).
//!
//! # Cancel safety
//!
//! A future takes a message only inside a `poll` that then returns it: dropped while
//! pending, it holds no lease and has taken nothing, so a `select!` with a timeout around
//! [`Queue::receive_async`] loses no message. A waiting publish has written nothing until
//! the `poll` that returns `Ready`.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::base::clock::{Clock, MonotonicClock};
use crate::base::id::MessageId;
use crate::base::sync::Mutex;
use crate::engine::wakers::{Helper, WakerList};
use crate::error::PublishError;
use crate::liveness::SleepsOn;
use crate::queue::{OwnedDelivery, PublishOptions, Queue};

/// How long the bridge sleeps at most between looks at whether any future still waits.
const BRIDGE_NAP: Duration = Duration::from_millis(100);

/// How often the bridge wakes the publishes that wait for room, while any waits.
const ROOM_POLL: Duration = Duration::from_millis(1);

/// Polls in a row by one task that do not wait, after which the next yields (see
/// *Yielding*): the size of tokio's cooperative budget.
const BUDGET: u32 = 128;

thread_local! {
    /// The task that polled last on this thread (its waker's data pointer), and how many
    /// of its polls in a row did not wait.
    static SPENT: Cell<(usize, u32)> = const { Cell::new((0, 0)) };
}

/// Counts this poll against its task's budget (see *Yielding*); spent, it wakes the task
/// and says so: the poll returns `Pending` before it takes anything. The poll after a
/// yield (`yielded`) always goes on, so every future makes progress.
fn out_of_budget(cx: &Context<'_>, yielded: &mut bool) -> bool {
    if std::mem::take(yielded) {
        return false;
    }
    let task = cx.waker().data() as usize;
    SPENT.with(|spent| {
        let (last, done) = spent.get();
        let done = if last == task { done + 1 } else { 1 };
        if done <= BUDGET {
            spent.set((task, done));
            return false;
        }
        spent.set((task, 0));
        cx.waker().wake_by_ref();
        *yielded = true;
        true
    })
}

/// A poll waits: its task returns to the executor, and its count starts again.
fn waited() {
    SPENT.with(|spent| spent.set((0, 0)));
}

/// A queue handle's async waiters (process-local). On cache lines of their own: waiting
/// futures write them, while a publish in another thread reads the handle's other fields.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct AsyncWaiters {
    /// Futures waiting for a message.
    pub(crate) ready: WakerList,
    /// Futures waiting for room.
    pub(crate) room: WakerList,
    /// Publishes waiting for room, from their first registration to their end. The room
    /// list says less: a wake-up empties it until the woken poll again (see *Waiting for
    /// room*).
    publishing: AtomicU64,
    /// A segment's bridge sleeps on the ready signal longer than [`ROOM_POLL`]: the first
    /// publish to wait for room wakes it (through the signal, which wakes every sleeper
    /// on it, so only then).
    napping_long: AtomicBool,
    /// Whether a bridge thread runs.
    bridge: Helper,
    /// The bridge thread of a heap queue, for a timer scheduled meanwhile to unpark it.
    thread: Mutex<Option<std::thread::Thread>>,
}

impl AsyncWaiters {
    /// Whether publishes wait for room (the bridge then naps at most [`ROOM_POLL`]).
    fn publishing(&self) -> bool {
        self.publishing.load(Ordering::SeqCst) > 0
    }

    /// Wakes a heap queue's bridge from its nap: a timer was scheduled, perhaps earlier
    /// than the one it knew of, or a publish began waiting for room.
    pub(crate) fn unpark_bridge(&self) {
        if self.bridge.is_running() {
            let thread = self
                .thread
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(thread) = thread.as_ref() {
                thread.unpark();
            }
        }
    }
}

impl<C: Clock + Send + Sync + 'static> Queue<C> {
    /// Receives the oldest ready message, waiting as long as it takes, as a future.
    ///
    /// Cancel safe: dropped before it is ready, it has taken nothing (see the module
    /// docs of `queue::asynchronous`).
    ///
    /// ```
    /// # #[cfg(feature = "async")] {
    /// use std::sync::Arc;
    /// use ackring::{Queue, QueueConfig};
    ///
    /// let queue = Arc::new(Queue::new(QueueConfig::new(64, 256))?);
    /// queue.publish(b"resize image 7")?;
    /// let delivery = block_on(queue.receive_async());
    /// assert_eq!(delivery.payload(), b"resize image 7");
    /// delivery.ack()?;
    /// # }
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn receive_async(self: &Arc<Self>) -> Receive<C> {
        Receive {
            queue: Arc::clone(self),
            key: None,
            yielded: false,
        }
    }

    /// The ready messages as a stream of owned deliveries (each may move into a spawned
    /// task), oldest first, waiting for more as long as it takes: it never ends.
    pub fn deliveries(self: &Arc<Self>) -> Deliveries<C> {
        Deliveries {
            receive: self.receive_async(),
        }
    }

    /// Receives up to `max` ready messages into `out` (appended, oldest first), waiting
    /// as long as it takes for the first; resolves to how many (0 only if `max` is 0).
    /// Cancel safe, as [`receive_async`](Self::receive_async).
    pub fn receive_batch_async<'a>(
        self: &'a Arc<Self>,
        out: &'a mut Vec<OwnedDelivery<C>>,
        max: usize,
    ) -> ReceiveBatch<'a, C> {
        ReceiveBatch {
            queue: self,
            out,
            max,
            key: None,
            done: false,
            yielded: false,
        }
    }

    /// Publishes `payload` with `options`, waiting for room in a full queue as long as it
    /// takes, as a future. Dropped before it is ready, it has published nothing. A waiting
    /// publish is woken once a run of slots is free, or within a millisecond of any room
    /// (see the module docs, *Waiting for room*).
    ///
    /// # Errors
    /// As [`try_publish_with`](Self::try_publish_with), but never
    /// [`PublishError::Full`].
    pub fn publish_async<'a>(
        self: &'a Arc<Self>,
        payload: &'a [u8],
        options: PublishOptions,
    ) -> Publish<'a, C> {
        Publish {
            queue: self,
            payload,
            options,
            key: None,
            done: false,
            yielded: false,
            waiting: false,
        }
    }

    /// Starts the bridge thread unless one runs (see the module docs).
    fn start_bridge(self: &Arc<Self>) {
        if !self.waiters.bridge.claim() {
            return;
        }
        let queue = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("ackring-async".into())
            .spawn(move || queue.bridge());
        if spawned.is_err() {
            // No thread to be had: the futures look again (and try to start one again).
            self.waiters.bridge.release();
            self.waiters.ready.wake_all();
            self.waiters.room.wake_all();
        }
    }

    /// How long a heap queue's bridge may nap: [`ROOM_POLL`] while publishes wait for room.
    fn longest_nap(&self) -> Duration {
        if self.waiters.publishing() {
            ROOM_POLL
        } else {
            BRIDGE_NAP
        }
    }

    /// A publish begins waiting for room (counted before it claims a bridge, which stops
    /// only once none waits): the first wakes the bridge from a long nap, to nap
    /// [`ROOM_POLL`] from now on. In a segment: through the ready signal, whose look sees
    /// the count; the flag, set before the bridge reads the count, tells whether it must
    /// (both SeqCst: one of the two reads sees the other's write).
    fn publish_waits(&self) {
        let waiters = &self.waiters;
        if waiters.publishing.fetch_add(1, Ordering::SeqCst) == 0 {
            if self.trusted {
                waiters.unpark_bridge();
            } else if waiters.napping_long.load(Ordering::SeqCst) {
                self.ready_signal().notify();
            }
        }
    }

    /// The bridge thread: sleeps on the ready signal (running the timers, as a sleeping
    /// receiver does) and wakes the waiting futures at each change, until none waits.
    fn bridge(&self) {
        /// Marks the bridge stopped however it ends (a panic too): the next waiting
        /// future starts another.
        struct Running<'w>(&'w AsyncWaiters);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.bridge.release();
                }
            }
        }
        let waiters = &self.waiters;
        let _running = Running(waiters);
        *waiters
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(std::thread::current());
        // Futures woken register again only once they have polled: the bridge stops only
        // when none has waited for a whole nap, not each time it has just woken them all.
        let mut idle_since = None;
        loop {
            if self.trusted {
                self.nap_for_timers();
            } else {
                self.carry_wake_ups();
            }
            if waiters.ready.waiting() > 0 || waiters.publishing() {
                idle_since = None;
                continue;
            }
            if idle_since
                .get_or_insert_with(std::time::Instant::now)
                .elapsed()
                >= BRIDGE_NAP
            {
                // A future that registered after the look above found the bridge running
                // and started none: keep going for it (unless it started another).
                let waiting = || waiters.ready.waiting() > 0 || waiters.publishing();
                if !waiters.bridge.stop_unless(waiting) {
                    return;
                }
            }
        }
    }

    /// A heap queue's bridge: only this process pushes, and its pushes wake the futures
    /// directly (`notify`). So it only runs the timers, napping until the next is due
    /// without arming the futex, which would make every publish pay a wake-up call; a
    /// timer scheduled meanwhile unparks it (`AsyncWaiters::unpark_bridge`). While
    /// publishes wait for room, it wakes them every [`ROOM_POLL`].
    fn nap_for_timers(&self) {
        let now = self.now();
        self.run_timers(now);
        let until_due = self.wheel().next_due().map(|due| due.saturating_sub(now));
        let longest = self.longest_nap();
        // At least a tick: a timer already due is being run by another thread.
        let nap = until_due
            .map_or(longest, Duration::from_nanos)
            .max(self.config.timer_tick)
            .min(longest);
        std::thread::park_timeout(nap);
        // Acks wake waiting publishes once a run of slots is free: for less, they look
        // now (see *Waiting for room*).
        self.waiters.room.wake_all();
    }

    /// A shared segment's bridge: sleeps on the ready signal as a receiver would (running
    /// the timers), and wakes the futures when another process (or this one) made a
    /// message ready; looks for room freed by another process every [`ROOM_POLL`].
    fn carry_wake_ups(&self) {
        let waiters = &self.waiters;
        let seen = self.ready_signal().wake_ups();
        waiters.napping_long.store(true, Ordering::SeqCst); // see `publish_waits`
        let publishing = waiters.publishing();
        let nap = if publishing {
            waiters.napping_long.store(false, Ordering::SeqCst);
            ROOM_POLL
        } else {
            BRIDGE_NAP
        };
        let changed = self.wait_until(SleepsOn::Ready, nap, || {
            // Timers end delays, backoffs and leases: what they make ready wakes the
            // futures through `notify`, as any push of this process does.
            self.run_timers(self.now());
            // A change since `seen` (a wake-up), or, while futures wait for one, a
            // message that came before we were armed (its pusher saw no one armed): they
            // look. Not `len`: the pusher may not have moved the ring's tail yet.
            let came = waiters.ready.waiting() > 0 && self.ready().holds_value();
            if self.ready_signal().wake_ups() != seen || came {
                return Some(true);
            }
            // A publish that began waiting after the nap was chosen: choose again.
            (!publishing && waiters.publishing()).then_some(false)
        });
        waiters.napping_long.store(false, Ordering::SeqCst);
        if changed == Some(true) {
            waiters.ready.wake_all();
        }
        // Room another process made wakes no one here: the waiting publishes look.
        waiters.room.wake_all();
    }
}

/// The future of [`Queue::receive_async`].
#[must_use = "futures do nothing unless polled"]
pub struct Receive<C: Clock + Send + Sync + 'static = MonotonicClock> {
    queue: Arc<Queue<C>>,
    /// Its registration in the waker list, while it waits.
    key: Option<u64>,
    /// Its last poll yielded (see *Yielding*).
    yielded: bool,
}

impl<C: Clock + Send + Sync + 'static> Receive<C> {
    /// One poll: a delivery, or registered to be woken (steps 1 to 4 of `engine::wakers`).
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<OwnedDelivery<C>> {
        if out_of_budget(cx, &mut self.yielded) {
            return Poll::Pending;
        }
        let waiters = &self.queue.waiters.ready;
        for look in 0..2 {
            if let Some(delivery) = self.queue.try_receive_owned() {
                waiters.deregister(&mut self.key);
                return Poll::Ready(delivery);
            }
            if look == 0 {
                waiters.register(&mut self.key, cx.waker());
                self.queue.start_bridge();
            }
        }
        waited();
        Poll::Pending
    }
}

impl<C: Clock + Send + Sync + 'static> Future for Receive<C> {
    type Output = OwnedDelivery<C>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.poll_receive(cx)
    }
}

impl<C: Clock + Send + Sync + 'static> Drop for Receive<C> {
    fn drop(&mut self) {
        self.queue.waiters.ready.deregister(&mut self.key);
    }
}

/// The stream of [`Queue::deliveries`]: never ends.
#[must_use = "streams do nothing unless polled"]
pub struct Deliveries<C: Clock + Send + Sync + 'static = MonotonicClock> {
    receive: Receive<C>,
}

impl<C: Clock + Send + Sync + 'static> futures_core::Stream for Deliveries<C> {
    type Item = OwnedDelivery<C>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.receive.poll_receive(cx).map(Some)
    }
}

/// The future of [`Queue::receive_batch_async`].
#[must_use = "futures do nothing unless polled"]
pub struct ReceiveBatch<'a, C: Clock + Send + Sync + 'static = MonotonicClock> {
    queue: &'a Arc<Queue<C>>,
    out: &'a mut Vec<OwnedDelivery<C>>,
    max: usize,
    key: Option<u64>,
    /// Resolved: polled again, it would take more leases.
    done: bool,
    /// Its last poll yielded (see *Yielding*).
    yielded: bool,
}

impl<C: Clock + Send + Sync + 'static> Future for ReceiveBatch<'_, C> {
    type Output = usize;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        let this = &mut *self;
        assert!(!this.done, "ReceiveBatch polled after it resolved");
        if this.max == 0 {
            this.done = true;
            return Poll::Ready(0);
        }
        if out_of_budget(cx, &mut this.yielded) {
            return Poll::Pending;
        }
        let waiters = &this.queue.waiters.ready;
        for look in 0..2 {
            let mut batch = Vec::new();
            let got = this.queue.try_receive_batch(&mut batch, this.max);
            if got > 0 {
                let owned = batch
                    .into_iter()
                    .map(|delivery| delivery.into_owned(Arc::clone(this.queue)));
                this.out.extend(owned);
                waiters.deregister(&mut this.key);
                this.done = true;
                return Poll::Ready(got);
            }
            if look == 0 {
                waiters.register(&mut this.key, cx.waker());
                this.queue.start_bridge();
            }
        }
        waited();
        Poll::Pending
    }
}

impl<C: Clock + Send + Sync + 'static> Drop for ReceiveBatch<'_, C> {
    fn drop(&mut self) {
        self.queue.waiters.ready.deregister(&mut self.key);
    }
}

/// The future of [`Queue::publish_async`].
#[must_use = "futures do nothing unless polled"]
pub struct Publish<'a, C: Clock + Send + Sync + 'static = MonotonicClock> {
    queue: &'a Arc<Queue<C>>,
    payload: &'a [u8],
    options: PublishOptions,
    key: Option<u64>,
    /// Resolved: polled again, it would publish a second time.
    done: bool,
    /// Its last poll yielded (see *Yielding*).
    yielded: bool,
    /// Counted in `AsyncWaiters::publishing`: it has registered to wait for room.
    waiting: bool,
}

impl<C: Clock + Send + Sync + 'static> Future for Publish<'_, C> {
    type Output = Result<MessageId, PublishError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        assert!(!this.done, "Publish polled after it resolved");
        if out_of_budget(cx, &mut this.yielded) {
            return Poll::Pending;
        }
        let waiters = &this.queue.waiters.room;
        for look in 0..2 {
            match this.queue.try_publish_with(this.payload, this.options) {
                Err(PublishError::Full { .. }) if look == 0 => {
                    waiters.register(&mut this.key, cx.waker());
                    if !std::mem::replace(&mut this.waiting, true) {
                        this.queue.publish_waits();
                    }
                    this.queue.start_bridge();
                }
                Err(PublishError::Full { .. }) => {
                    waited();
                    return Poll::Pending;
                }
                result => {
                    waiters.deregister(&mut this.key);
                    this.stop_waiting();
                    this.done = true;
                    return Poll::Ready(result);
                }
            }
        }
        Poll::Pending
    }
}

impl<C: Clock + Send + Sync + 'static> Publish<'_, C> {
    /// Uncounted from the publishes waiting for room, if it was counted.
    fn stop_waiting(&mut self) {
        if std::mem::take(&mut self.waiting) {
            self.queue.waiters.publishing.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl<C: Clock + Send + Sync + 'static> Drop for Publish<'_, C> {
    fn drop(&mut self) {
        self.queue.waiters.room.deregister(&mut self.key);
        self.stop_waiting();
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Waker};

    use super::{out_of_budget, BRIDGE_NAP, BUDGET, ROOM_POLL};
    use crate::engine::wakers::tests::Count;
    use crate::{PublishOptions, Queue, QueueConfig};

    fn counting() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        (count, waker)
    }

    #[test]
    fn a_task_yields_after_a_budget_of_polls_and_goes_on_after_it() {
        let ((count, one), (_, other)) = (counting(), counting());
        let (mut yielded, mut other_yielded) = (false, false);
        let (cx, other_cx) = (Context::from_waker(&one), Context::from_waker(&other));
        for _ in 0..BUDGET {
            assert!(!out_of_budget(&cx, &mut yielded));
        }
        // Another task's polls in between start its own count, and then this one's anew.
        for _ in 0..BUDGET {
            assert!(!out_of_budget(&other_cx, &mut other_yielded));
        }
        for _ in 0..BUDGET {
            assert!(!out_of_budget(&cx, &mut yielded));
        }
        assert!(out_of_budget(&cx, &mut yielded), "the next poll yields");
        assert!(yielded);
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "woken, to be polled again"
        );
        // Futures in one task share its waker (`join!`): another spends the budget again
        // before this one is polled, and still the poll after its yield goes on.
        let mut sibling = false;
        for _ in 0..BUDGET {
            assert!(!out_of_budget(&cx, &mut sibling));
        }
        assert!(
            !out_of_budget(&cx, &mut yielded),
            "the poll after a yield goes on"
        );
    }

    #[test]
    fn the_bridge_naps_briefly_while_a_woken_publish_still_waits() {
        let queue = Arc::new(Queue::new(QueueConfig::new(8, 8)).unwrap());
        for n in 0..8u8 {
            queue.publish(&[n]).unwrap();
        }
        assert_eq!(queue.longest_nap(), BRIDGE_NAP);
        {
            let (_count, waker) = counting();
            let mut publish = pin!(queue.publish_async(b"x", PublishOptions::default()));
            assert!(publish
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending());
            assert_eq!(queue.longest_nap(), ROOM_POLL);
            // The bridge wakes it, which empties the room list until it polls again: it still
            // waits, and the bridge's next nap must still be short.
            queue.waiters.room.wake_all();
            assert_eq!(queue.waiters.room.waiting(), 0);
            assert_eq!(queue.longest_nap(), ROOM_POLL);
        } // dropped while it waits
        assert_eq!(queue.longest_nap(), BRIDGE_NAP);
    }

    #[test]
    fn acks_wake_a_waiting_publish_once_a_run_of_slots_is_free() {
        let queue = Arc::new(Queue::new(QueueConfig::new(64, 8)).unwrap());
        assert_eq!(queue.room_run(), 8);
        for n in 0..64u8 {
            queue.publish(&[n]).unwrap();
        }
        // Registered as a pending publish registers, with no bridge to wake it.
        let (count, waker) = counting();
        let mut key = None;
        queue.waiters.room.register(&mut key, &waker);
        let held: Vec<_> = (0..8).map(|_| queue.try_receive().unwrap()).collect();
        for (free, delivery) in held.into_iter().enumerate() {
            let woken = count.0.load(Ordering::SeqCst);
            assert_eq!(woken, 0, "woken with {free} slots free");
            delivery.ack().unwrap();
        }
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken with a run free");
    }
}
