//! Async receive and publish on a tokio multi-thread runtime: every message acked once by
//! many tasks, cancel safety (futures dropped mid-wait, `select!` with timeouts), a
//! publisher waiting for room, an idle wait that burns no CPU, and an async consumer
//! process woken by a synchronous publisher process, and one killed with SIGKILL while
//! its tasks hold deliveries and wait.
//!
//! Child processes are this test binary run again with `ACKRING_ASYNC_CHILD` set: the
//! `child` test then plays the role it names.

use std::collections::HashSet;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use ackring::{PublishError, PublishOptions, Queue, QueueConfig};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_time()
        .build()
        .unwrap()
}

fn heap_queue(capacity: u32) -> Arc<Queue> {
    Arc::new(Queue::new(QueueConfig::new(capacity, 64)).unwrap())
}

#[test]
fn many_tasks_receive_and_ack_every_message_once() {
    const MESSAGES: u64 = 20_000;
    let queue = heap_queue(256);
    let producer = {
        let queue = Arc::clone(&queue);
        std::thread::spawn(move || {
            for n in 0..MESSAGES {
                queue.publish(&n.to_le_bytes()).unwrap();
            }
        })
    };
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let acked = runtime().block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (queue, done) = (Arc::clone(&queue), Arc::clone(&done));
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    while done.load(std::sync::atomic::Ordering::SeqCst) < MESSAGES {
                        let wait =
                            tokio::time::timeout(Duration::from_millis(50), queue.receive_async());
                        let Ok(delivery) = wait.await else {
                            continue; // others took the rest meanwhile: look at the count
                        };
                        let n = u64::from_le_bytes(delivery.payload().try_into().unwrap());
                        // Settled in another task: an owned delivery moves.
                        tokio::spawn(async move { delivery.ack() })
                            .await
                            .unwrap()
                            .unwrap();
                        done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        mine.push(n);
                    }
                    mine
                })
            })
            .collect();
        let mut acked = Vec::new();
        for task in tasks {
            acked.extend(task.await.unwrap());
        }
        acked
    });
    producer.join().unwrap();
    let distinct: HashSet<u64> = acked.iter().copied().collect();
    assert_eq!(acked.len() as u64, MESSAGES, "each acked once");
    assert_eq!(distinct.len() as u64, MESSAGES);
    let stats = queue.stats();
    assert_eq!(
        (stats.acked, stats.redelivered, stats.in_flight),
        (MESSAGES, 0, 0)
    );
}

/// Publishes the numbers `0..count` from a thread, pausing 3 ms after every `every`-th:
/// in the gaps, receives wait.
fn paced_producer(queue: &Arc<Queue>, count: u64, every: u64) -> std::thread::JoinHandle<()> {
    let queue = Arc::clone(queue);
    std::thread::spawn(move || {
        for n in 0..count {
            queue.publish(&n.to_le_bytes()).unwrap();
            if n % every == 0 {
                std::thread::sleep(Duration::from_millis(3));
            }
        }
    })
}

/// `received` is `0..count`, each once, in order, and the queue delivered and acked each
/// once, with none left.
fn all_once_in_order(queue: &Queue, received: &[u64], count: u64) {
    assert_eq!(
        received,
        (0..count).collect::<Vec<_>>(),
        "all, in order, once"
    );
    let stats = queue.stats();
    assert_eq!(
        (stats.delivered, stats.acked, stats.in_flight),
        (count, count, 0)
    );
    assert!(queue.try_receive().is_none());
}

#[test]
fn receives_cancelled_by_timeouts_lose_nothing_and_hold_no_lease() {
    const MESSAGES: u64 = 300;
    let queue = heap_queue(64);
    let producer = paced_producer(&queue, MESSAGES, 8);
    let (received, cancelled) = runtime().block_on(async {
        let (mut received, mut cancelled) = (Vec::new(), 0u32);
        while (received.len() as u64) < MESSAGES {
            tokio::select! {
                delivery = queue.receive_async() => {
                    received.push(u64::from_le_bytes(delivery.payload().try_into().unwrap()));
                    delivery.ack().unwrap();
                }
                () = tokio::time::sleep(Duration::from_millis(1)) => cancelled += 1,
            }
        }
        (received, cancelled)
    });
    producer.join().unwrap();
    all_once_in_order(&queue, &received, MESSAGES);
    assert!(cancelled > 0, "some waits were cancelled");
}

#[test]
fn batches_and_the_stream_carry_every_message_once_in_order() {
    const MESSAGES: u64 = 600;
    let queue = heap_queue(64);
    let producer = paced_producer(&queue, MESSAGES, 16);
    let number = |payload: &[u8]| u64::from_le_bytes(payload.try_into().unwrap());
    let (received, cancelled) = runtime().block_on(async {
        let (mut received, mut cancelled) = (Vec::new(), 0u32);
        // The first half in batches, each wait raced against a timer.
        while (received.len() as u64) < MESSAGES / 2 {
            let mut batch = Vec::new();
            tokio::select! {
                got = queue.receive_batch_async(&mut batch, 16) => assert!(got > 0),
                () = tokio::time::sleep(Duration::from_millis(1)) => cancelled += 1,
            }
            for delivery in batch {
                received.push(number(delivery.payload()));
                delivery.ack().unwrap();
            }
        }
        // The rest from the stream, each delivery settled in a task of its own.
        let mut stream = queue.deliveries();
        while (received.len() as u64) < MESSAGES {
            let next = std::future::poll_fn(|cx| {
                futures_core::Stream::poll_next(Pin::new(&mut stream), cx)
            });
            let delivery = next.await.expect("the stream never ends");
            received.push(number(delivery.payload()));
            tokio::spawn(async move { delivery.ack() })
                .await
                .unwrap()
                .unwrap();
        }
        (received, cancelled)
    });
    producer.join().unwrap();
    all_once_in_order(&queue, &received, MESSAGES);
    assert!(cancelled > 0, "some batch waits were cancelled");
}

#[test]
fn a_receive_dropped_while_pending_takes_nothing() {
    let queue = heap_queue(8);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..100 {
        let mut pending = pin!(queue.receive_async());
        assert!(pending.as_mut().poll(&mut cx).is_pending());
    } // each dropped pending
    queue.publish(b"kept").unwrap();
    let delivery = queue.try_receive().expect("not taken by a dropped future");
    assert_eq!((delivery.payload(), delivery.attempt()), (&b"kept"[..], 1));
}

#[test]
fn a_publisher_task_waits_for_room_until_an_ack_frees_a_slot() {
    let queue = heap_queue(2);
    queue.publish(b"a").unwrap();
    queue.publish(b"b").unwrap();
    runtime().block_on(async {
        let publisher = {
            let queue = Arc::clone(&queue);
            tokio::spawn(async move { queue.publish_async(b"c", PublishOptions::default()).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await; // it has found the queue full
        assert!(!publisher.is_finished(), "a full queue makes it wait");
        queue.try_receive().unwrap().ack().unwrap();
        publisher
            .await
            .unwrap()
            .expect("published once room was made");
    });
    let payloads: Vec<Vec<u8>> = std::iter::from_fn(|| queue.try_receive())
        .map(|d| {
            let p = d.payload().to_vec();
            d.ack().unwrap();
            p
        })
        .collect();
    assert_eq!(payloads, [b"b".to_vec(), b"c".to_vec()]);
    // Refusals other than Full come back at once.
    let big = [0u8; 65];
    let refused = runtime().block_on(queue.publish_async(&big, PublishOptions::default()));
    assert!(matches!(refused, Err(PublishError::PayloadTooLarge { .. })));
}

/// A waker that sets a flag and unparks the thread that made it.
struct Flag(AtomicBool, std::thread::Thread);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
        self.1.unpark();
    }
}

#[test]
fn a_publish_waiting_for_room_is_woken_for_a_single_free_slot() {
    // Acks wake waiting publishes once 8 slots of 64 are free; one slot: the bridge does.
    a_single_free_slot_wakes_a_waiting_publish(&heap_queue(64));
    let name = format!("async-one-slot-{}", std::process::id());
    let segment = Arc::new(Queue::create_shm(&name, QueueConfig::new(64, 64)).unwrap());
    Queue::unlink_shm(&name).unwrap(); // mapped still; nothing left behind if it fails
    a_single_free_slot_wakes_a_waiting_publish(&segment);
}

fn a_single_free_slot_wakes_a_waiting_publish(queue: &Arc<Queue>) {
    for n in 0..64u8 {
        queue.publish(&[n]).unwrap();
    }
    let (flag, waker) = flag();
    let mut cx = Context::from_waker(&waker);
    let mut publish = pin!(queue.publish_async(b"last", PublishOptions::default()));
    assert!(
        publish.as_mut().poll(&mut cx).is_pending(),
        "the queue is full"
    );
    queue.try_receive().unwrap().ack().unwrap();
    assert!(
        woken_within(&flag, Duration::from_secs(10)).is_some(),
        "not woken for a single free slot"
    );
    assert!(matches!(publish.as_mut().poll(&mut cx), Poll::Ready(Ok(_))));
    assert_eq!(queue.stats().ready, 64);
}

/// How long until `flag`'s waker is woken, if within `limit`.
fn woken_within(flag: &Flag, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while !flag.0.load(Ordering::SeqCst) {
        let left = limit.checked_sub(started.elapsed())?;
        std::thread::park_timeout(left);
    }
    Some(started.elapsed())
}

fn flag() -> (Arc<Flag>, Waker) {
    let flag = Arc::new(Flag(AtomicBool::new(false), std::thread::current()));
    let waker = Waker::from(Arc::clone(&flag));
    (flag, waker)
}

#[test]
fn the_first_waiting_publish_cuts_the_segment_bridges_long_nap_short() {
    let name = format!("async-long-nap-{}", std::process::id());
    let queue = Arc::new(Queue::create_shm(&name, QueueConfig::new(64, 64)).unwrap());
    Queue::unlink_shm(&name).unwrap(); // mapped still; nothing left behind if it fails
    for n in 0..64u8 {
        queue.publish(&[n]).unwrap();
    }
    let mut held: Vec<_> = (0..64).map(|_| queue.try_receive().unwrap()).collect();
    // A receive waits: the bridge starts and, no publish waiting, sleeps for 100 ms.
    let (_, receive_waker) = flag();
    let mut receive = pin!(queue.receive_async());
    assert!(receive
        .as_mut()
        .poll(&mut Context::from_waker(&receive_waker))
        .is_pending());
    let asleep_by = Instant::now() + Duration::from_secs(10);
    while queue.stats().sleeping_receivers != 1 {
        assert!(Instant::now() < asleep_by, "the bridge never slept");
        std::thread::yield_now();
    }
    let (woken, waker) = flag();
    let mut publish = pin!(queue.publish_async(b"last", PublishOptions::default()));
    let mut cx = Context::from_waker(&waker);
    assert!(
        publish.as_mut().poll(&mut cx).is_pending(),
        "the queue is full"
    );
    // One slot, less than a run: only the bridge wakes the publish, and only if it woke
    // from its long nap when the publish began to wait.
    held.pop().unwrap().ack().unwrap();
    let took = woken_within(&woken, Duration::from_secs(10)).expect("woken at all");
    assert!(
        took < Duration::from_millis(50),
        "woken after {took:?}: the bridge slept out its 100 ms nap"
    );
    assert!(matches!(publish.as_mut().poll(&mut cx), Poll::Ready(Ok(_))));
    for delivery in held {
        delivery.ack().unwrap();
    }
}

#[test]
fn a_publish_racing_a_receives_first_poll_is_found_or_wakes_it() {
    // The window: after the poll's first look, before its waker is registered. Without
    // the look after registering, a publish landing there wakes no one, and in a heap
    // queue nothing else would.
    let queue = heap_queue(8);
    for _ in 0..2_000 {
        let start = Arc::new(std::sync::Barrier::new(2));
        let publisher = {
            let (queue, start) = (Arc::clone(&queue), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                queue.publish(b"racing").unwrap();
            })
        };
        let (woken, waker) = flag();
        let mut cx = Context::from_waker(&waker);
        let mut receive = pin!(queue.receive_async());
        start.wait();
        let delivery = loop {
            woken.0.store(false, Ordering::SeqCst); // before the poll that registers
            match receive.as_mut().poll(&mut cx) {
                Poll::Ready(delivery) => break delivery,
                // Pending (or a budget's yield, which wakes at once): a wake-up must come.
                Poll::Pending => {
                    woken_within(&woken, Duration::from_secs(10)).expect("a lost wake-up")
                }
            };
        };
        delivery.ack().unwrap();
        publisher.join().unwrap();
    }
    assert_eq!(queue.stats().acked, 2_000);
}

#[test]
fn tasks_that_never_wait_yield_to_the_others() {
    // One thread: another task runs only when the running one returns to the executor.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let queue = heap_queue(1024);
    runtime.block_on(async {
        for side in ["publish", "receive"] {
            let ran = Arc::new(AtomicBool::new(false));
            let other = {
                let ran = Arc::clone(&ran);
                tokio::spawn(async move { ran.store(true, Ordering::SeqCst) })
            };
            // More than a budget of operations, each ready at once.
            for n in 0..1000u32 {
                if side == "publish" {
                    let payload = n.to_le_bytes();
                    queue
                        .publish_async(&payload, PublishOptions::default())
                        .await
                        .unwrap();
                } else {
                    queue.receive_async().await.ack().unwrap();
                }
            }
            assert!(
                ran.load(Ordering::SeqCst),
                "{side}: the other task never ran"
            );
            other.await.unwrap();
        }
    });
    assert_eq!((queue.stats().acked, queue.stats().ready), (1000, 0));
}

/// Publishes a message delayed 30 ms and awaits it: with no other caller, only the
/// bridge runs the timers that end the delay.
fn a_delayed_message_reaches_a_waiting_future(queue: &Arc<Queue>) {
    let delayed = PublishOptions {
        delay: Some(Duration::from_millis(30)),
        ..PublishOptions::default()
    };
    queue.publish_with(b"later", delayed).unwrap();
    let delivery = runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(5), queue.receive_async())
            .await
            .expect("woken when the delay ended")
    });
    assert_eq!(delivery.payload(), b"later");
}

#[test]
fn a_delayed_message_reaches_a_waiting_future_with_no_other_caller() {
    a_delayed_message_reaches_a_waiting_future(&heap_queue(8));
}

#[test]
fn a_timer_tick_longer_than_the_bridges_nap_still_ends_delays() {
    // The bridge naps at most 100 ms; a tick of 200 ms once made its nap computation panic.
    let queue = Queue::builder(8, 64)
        .timer_tick(Duration::from_millis(200))
        .build()
        .unwrap();
    a_delayed_message_reaches_a_waiting_future(&Arc::new(queue));
}

/// CPU time this process has used so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes the struct we pass; it has no other preconditions.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Sixteen futures wait on an empty queue for 500 ms; returns the CPU time this process
/// used meanwhile (run alone in a child process: other tests' threads would count).
fn cpu_of_idle_waiters(queue: &Arc<Queue>) -> Duration {
    let runtime = runtime();
    let waiting: Vec<_> = (0..16)
        .map(|_| {
            let queue = Arc::clone(queue);
            runtime.spawn(async move { queue.receive_async().await.ack() })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50)); // they are all waiting by now
    let before = cpu_time();
    std::thread::sleep(Duration::from_millis(500));
    let used = cpu_time() - before;
    for n in 0..16u8 {
        queue.publish(&[n]).unwrap();
    }
    runtime.block_on(async {
        for task in waiting {
            task.await.unwrap().unwrap();
        }
    });
    assert_eq!(queue.stats().acked, 16);
    used
}

#[test]
fn idle_async_receivers_burn_no_cpu() {
    // A heap queue's bridge naps until the next timer; a segment's sleeps on the futex.
    for kind in ["heap", "shm"] {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child", "--nocapture", "--test-threads=1"])
            .env("ACKRING_ASYNC_CHILD", format!("idle:{kind}"))
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{kind}: {said}");
        let micros: u64 = said
            .lines()
            .find_map(|line| line.split("IDLE CPU ").nth(1))
            .and_then(|rest| rest.trim().parse().ok())
            .unwrap_or_else(|| panic!("{kind}: no figure in {said}"));
        let used = Duration::from_micros(micros);
        assert!(
            used < Duration::from_millis(50),
            "{kind}: idle waiters used {used:?} of CPU in 500 ms"
        );
    }
}

#[test]
fn child() {
    let Ok(role) = std::env::var("ACKRING_ASYNC_CHILD") else {
        return; // not a child: nothing to do
    };
    if let Some(kind) = role.strip_prefix("idle:") {
        let queue = if kind == "heap" {
            heap_queue(8)
        } else {
            let name = format!("async-idle-{}", std::process::id());
            let queue = Queue::create_shm(&name, QueueConfig::new(8, 64)).unwrap();
            Queue::unlink_shm(&name).unwrap(); // mapped still
            Arc::new(queue)
        };
        println!("IDLE CPU {}", cpu_of_idle_waiters(&queue).as_micros());
        return;
    }
    if let Some(name) = role.strip_prefix("hold:") {
        hold_and_wait(name);
    }
    let (name, count) = role.split_once(':').unwrap();
    let count: u64 = count.parse().unwrap();
    let queue = Arc::new(Queue::open_shm(name).unwrap());
    let got = runtime().block_on(async {
        let mut got = Vec::new();
        while (got.len() as u64) < count {
            let delivery = queue.receive_async().await;
            got.push(u64::from_le_bytes(delivery.payload().try_into().unwrap()));
            delivery.ack().unwrap();
        }
        got
    });
    assert_eq!(got, (0..count).collect::<Vec<_>>());
    println!("RECEIVED {count}");
}

#[test]
fn an_async_consumer_process_is_woken_by_a_publisher_process() {
    const MESSAGES: u64 = 200;
    let name = format!("test-{}-async", std::process::id());
    let queue = Queue::create_shm(&name, QueueConfig::new(64, 64)).unwrap();
    let consumer = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env("ACKRING_ASYNC_CHILD", format!("{name}:{MESSAGES}"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for n in 0..MESSAGES {
        queue.publish(&n.to_le_bytes()).unwrap();
        if n % 10 == 0 {
            // Gaps, so the consumer's futures wait and are woken across the processes.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let output = consumer.wait_with_output().unwrap();
    let _ = Queue::unlink_shm(&name);
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{said}");
    assert!(said.contains(&format!("RECEIVED {MESSAGES}")), "{said}");
    assert_eq!(queue.stats().acked, MESSAGES);
}

/// Deliveries held by the killed process's tasks, and how many of its tasks wait.
const HELD: u64 = 8;
const WAITING_TASKS: usize = 4;

/// The killed child: tasks take every message and hold it, others wait for more; says
/// HOLDING once every message is held, then waits to be killed.
fn hold_and_wait(name: &str) -> ! {
    let queue = Arc::new(Queue::open_shm(name).unwrap());
    let runtime = runtime();
    let (held, holding) = std::sync::mpsc::channel();
    for _ in 0..HELD as usize + WAITING_TASKS {
        let (queue, held) = (Arc::clone(&queue), held.clone());
        runtime.spawn(async move {
            let delivery = queue.receive_async().await;
            held.send(()).unwrap();
            std::future::pending::<()>().await;
            drop(delivery); // never reached: the lease stays taken until the kill
        });
    }
    for _ in 0..HELD {
        holding.recv().unwrap();
    }
    println!("HOLDING");
    loop {
        std::thread::park();
    }
}

#[test]
fn a_killed_async_consumer_process_leaves_its_leases_to_run_out_and_no_sleeper() {
    let name = format!("test-{}-async-kill", std::process::id());
    let queue = Queue::builder(64, 64)
        .visibility_timeout(Duration::from_millis(300))
        .create_shm(&name)
        .unwrap();
    for n in 0..HELD {
        queue.publish(&n.to_le_bytes()).unwrap();
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env("ACKRING_ASYNC_CHILD", format!("hold:{name}"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    while !said.contains("HOLDING") {
        let line = lines
            .next()
            .expect("the child ended before holding")
            .unwrap();
        said.push_str(&line);
    }
    // Its waiting tasks have a bridge thread asleep on the segment's futex.
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    while queue.stats().sleeping_receivers != 1 {
        assert!(std::time::Instant::now() < give_up, "{:?}", queue.stats());
        std::thread::yield_now();
    }
    assert_eq!(queue.stats().in_flight, HELD);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // Every held message comes back once its lease runs out, once, on its second attempt.
    let mut back = HashSet::new();
    while back.len() < HELD as usize {
        let delivery = queue
            .receive_timeout(Duration::from_secs(5))
            .expect("a killed process's lease came back");
        assert_eq!(delivery.attempt(), 2);
        let n = u64::from_le_bytes(delivery.payload().try_into().unwrap());
        assert!(back.insert(n), "{n} delivered twice");
        delivery.ack().unwrap();
    }
    assert!(queue.try_receive().is_none());

    // The dead bridge is no longer counted asleep once a liveness check has seen it, and
    // costs the survivors no wake-up call.
    let give_up = std::time::Instant::now() + Duration::from_secs(5);
    while queue.stats().sleeping_receivers != 0 {
        assert!(std::time::Instant::now() < give_up, "{:?}", queue.stats());
        queue.tick(); // runs the timers, and with them the liveness check
    }
    let before = queue.wake_up_calls();
    for n in 0..3u64 {
        queue.publish(&n.to_le_bytes()).unwrap();
        queue.try_receive().unwrap().ack().unwrap();
    }
    let after = queue.wake_up_calls();
    assert!(
        after.0.wrapping_sub(before.0) <= 1,
        "publishes with no one asleep woke someone: {before:?} -> {after:?}"
    );
    let stats = queue.stats();
    let _ = Queue::unlink_shm(&name);
    assert_eq!((stats.acked, stats.in_flight), (HELD + 3, 0), "{stats:?}");
}
