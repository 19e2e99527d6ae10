//! Async receive against its peers, in one run: 64-byte messages, one producer and one
//! consumer task on a multi-thread tokio runtime.
//!
//! - ackring: `publish_async` (ids, dedup on) -> `receive_async` -> `ack`;
//! - `tokio::sync::mpsc` (bounded) and `flume` (`send_async` / `recv_async`) carrying the
//!   same messages: no acks, leases or dedup, so they are the floor;
//! - ackring's own blocking `receive`, one producer and one consumer thread: the cost
//!   per message async adds.
//!
//! Rounds alternate (A B C D, A B C D, ...) because this shared VM drifts; each line gives
//! the median rate of the rounds and the ratios the issue sets goals for.
//!
//! Then the wake-up latency across processes: this process (pinned to core 0) publishes a
//! stamped message into a shared segment every millisecond, long enough for the receiver
//! to be asleep; a child process (this binary again, pinned to core 1) receives it with
//! `receive_async` on a tokio runtime, or with the blocking `receive`, alternating, and
//! records `now - stamp` (`CLOCK_MONOTONIC`, one clock for the host). Run:
//! `cargo bench --features async --bench async`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ackring::clock::{Clock, MonotonicClock};
use ackring::{MessageId, PublishOptions, Queue};
use hdrhistogram::Histogram;

const MESSAGES: u64 = 200_000;
const CAPACITY: u32 = 4096;
const ROUNDS: usize = 11;
/// The wake-up latency: messages per round (the first `WAKE_WARM_UP` not counted), one
/// every `WAKE_INTERVAL`.
const WAKE_MESSAGES: u64 = 2_000;
const WAKE_WARM_UP: u64 = 100;
const WAKE_INTERVAL: Duration = Duration::from_millis(1);
const WAKE_ROUNDS: usize = 5;
const ROLE: &str = "ACKRING_ASYNC_BENCH_ROLE";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap()
}

fn queue() -> Arc<Queue> {
    Arc::new(
        Queue::builder(CAPACITY, 64)
            .dedup_capacity(MESSAGES as usize)
            .build()
            .unwrap(),
    )
}

fn with_id(n: u64) -> PublishOptions {
    PublishOptions {
        id: Some(MessageId(n + 1)),
        ..PublishOptions::default()
    }
}

/// ackring, async on both sides.
fn ackring_async(runtime: &tokio::runtime::Runtime) -> Duration {
    let queue = queue();
    runtime.block_on(async {
        let started = Instant::now();
        let producer = {
            let queue = Arc::clone(&queue);
            tokio::spawn(async move {
                let payload = [7u8; 64];
                for n in 0..MESSAGES {
                    queue.publish_async(&payload, with_id(n)).await.unwrap();
                }
            })
        };
        let consumer = {
            let queue = Arc::clone(&queue);
            tokio::spawn(async move {
                for _ in 0..MESSAGES {
                    queue.receive_async().await.ack().unwrap();
                }
            })
        };
        producer.await.unwrap();
        consumer.await.unwrap();
        started.elapsed()
    })
}

/// ackring's blocking receive, one thread each side.
fn ackring_blocking() -> Duration {
    let queue = queue();
    let started = Instant::now();
    let producer = {
        let queue = Arc::clone(&queue);
        std::thread::spawn(move || {
            let payload = [7u8; 64];
            for n in 0..MESSAGES {
                queue.publish_with(&payload, with_id(n)).unwrap();
            }
        })
    };
    for _ in 0..MESSAGES {
        queue.receive().ack().unwrap();
    }
    producer.join().unwrap();
    started.elapsed()
}

fn tokio_mpsc(runtime: &tokio::runtime::Runtime) -> Duration {
    runtime.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<[u8; 64]>(CAPACITY as usize);
        let started = Instant::now();
        let producer = tokio::spawn(async move {
            for _ in 0..MESSAGES {
                tx.send([7u8; 64]).await.unwrap();
            }
        });
        let consumer = tokio::spawn(async move {
            for _ in 0..MESSAGES {
                std::hint::black_box(rx.recv().await.unwrap());
            }
        });
        producer.await.unwrap();
        consumer.await.unwrap();
        started.elapsed()
    })
}

fn flume_async(runtime: &tokio::runtime::Runtime) -> Duration {
    runtime.block_on(async {
        let (tx, rx) = flume::bounded::<[u8; 64]>(CAPACITY as usize);
        let started = Instant::now();
        let producer = tokio::spawn(async move {
            for _ in 0..MESSAGES {
                tx.send_async([7u8; 64]).await.unwrap();
            }
        });
        let consumer = tokio::spawn(async move {
            for _ in 0..MESSAGES {
                std::hint::black_box(rx.recv_async().await.unwrap());
            }
        });
        producer.await.unwrap();
        consumer.await.unwrap();
        started.elapsed()
    })
}

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// Pins the calling thread (and the threads it starts later) to CPU `core` by number;
/// harmless where there is no such CPU.
fn pin(core: usize) {
    core_affinity::set_for_current(core_affinity::CoreId { id: core });
}

fn now() -> u64 {
    MonotonicClock.now_nanos()
}

/// Records `now - stamp` of message `i` (the first few warm up).
fn record(histogram: &mut Histogram<u64>, i: u64, count: u64, payload: &[u8]) {
    let stamp = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
    if i >= WAKE_WARM_UP.min(count / 2) {
        let _ = histogram.record(now().saturating_sub(stamp));
    }
}

/// The receiving child: opens the segment, says READY, receives `count` stamped messages
/// (async or blocking) and prints "p50 p99" of `now - stamp` in nanoseconds.
fn wake_up_child(role: &str) {
    pin(1);
    let (mode, rest) = role.split_once(':').expect("mode:name:count");
    let (name, count) = rest.split_once(':').expect("name:count");
    let count: u64 = count.parse().expect("count");
    let queue = Arc::new(Queue::open_shm(name).expect("open"));
    let mut histogram = Histogram::<u64>::new(3).expect("precision");
    println!("READY");
    if mode == "async" {
        histogram = runtime().block_on(async move {
            let task = tokio::spawn(async move {
                for i in 0..count {
                    let delivery = queue.receive_async().await;
                    record(&mut histogram, i, count, delivery.payload());
                    delivery.ack().expect("acked within the lease");
                }
                histogram
            });
            task.await.expect("the receiving task")
        });
    } else {
        for i in 0..count {
            let delivery = queue.receive();
            record(&mut histogram, i, count, delivery.payload());
            delivery.ack().expect("acked within the lease");
        }
    }
    println!(
        "{} {}",
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99)
    );
}

/// One wake-up round: a receiver process in `mode`; returns its (p50, p99) in ns.
fn wake_up_round(mode: &str, count: u64) -> (u64, u64) {
    let name = format!("bench-async-{}", std::process::id());
    let queue = Queue::builder(1024, 64).create_shm(&name).expect("create");
    let mut receiver = Command::new(std::env::current_exe().expect("this binary"))
        .env(ROLE, format!("{mode}:{name}:{count}"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the receiver");
    let mut ready = [0u8; 6];
    receiver
        .stdout
        .as_mut()
        .expect("piped")
        .read_exact(&mut ready)
        .expect("READY");
    let start = now();
    for i in 0..count {
        // Spun, not slept: a sleep would add this side's wake-up to the figure.
        let due = start + (i + 1) * WAKE_INTERVAL.as_nanos() as u64;
        while now() < due {
            std::hint::spin_loop();
        }
        let mut payload = [7u8; 64];
        payload[..8].copy_from_slice(&now().to_le_bytes());
        queue
            .publish(&payload)
            .expect("room: the receiver keeps up");
    }
    let output = receiver.wait_with_output().expect("receiver");
    let _ = Queue::unlink_shm(&name);
    assert!(output.status.success(), "receiver failed: {output:?}");
    let said = String::from_utf8(output.stdout).expect("utf-8");
    let numbers: Vec<u64> = said
        .split_whitespace() // after READY, read above
        .map(|n| n.parse().expect("number"))
        .collect();
    (numbers[0], numbers[1])
}

/// Wake-up latency across processes, async against blocking, alternating rounds.
fn wake_up_latency(quick: bool) {
    pin(0);
    let (rounds, count) = if quick {
        (1, 50)
    } else {
        (WAKE_ROUNDS, WAKE_MESSAGES)
    };
    let (mut async_p50, mut async_p99, mut blocking_p50, mut blocking_p99) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (p50, p99) = wake_up_round("async", count);
        async_p50.push(p50 as f64);
        async_p99.push(p99 as f64);
        let (p50, p99) = wake_up_round("blocking", count);
        blocking_p50.push(p50 as f64);
        blocking_p99.push(p99 as f64);
    }
    let (a50, a99, b50, b99) = (
        median(async_p50),
        median(async_p99),
        median(blocking_p50),
        median(blocking_p99),
    );
    println!(
        "\nwake-up across processes, one publish every {WAKE_INTERVAL:?} ({count} per round), \
         median of {rounds} alternating rounds:"
    );
    println!("  receive_async (tokio, 2 workers): p50 {a50:>8.0} ns  p99 {a99:>8.0} ns");
    println!("  blocking receive:                 p50 {b50:>8.0} ns  p99 {b99:>8.0} ns");
    println!(
        "  p50 async / blocking: {:.2}x (goal <= 1.5x); p99 {:.2}x",
        a50 / b50,
        a99 / b99
    );
}

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        wake_up_child(&role);
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once, quickly.
    let quick = !std::env::args().any(|arg| arg == "--bench");
    let rounds = if quick { 1 } else { ROUNDS };
    let runtime = runtime();
    let rate = |elapsed: Duration| MESSAGES as f64 / elapsed.as_secs_f64() / 1e6;
    let (mut ack_async, mut ack_blocking, mut mpsc, mut flume) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        ack_async.push(rate(ackring_async(&runtime)));
        mpsc.push(rate(tokio_mpsc(&runtime)));
        flume.push(rate(flume_async(&runtime)));
        ack_blocking.push(rate(ackring_blocking()));
    }
    let (a, b, m, f) = (
        median(ack_async),
        median(ack_blocking),
        median(mpsc),
        median(flume),
    );
    println!("async 1p1c, {MESSAGES} messages of 64 bytes, median of {rounds} alternating rounds:");
    println!("  ackring publish_async -> receive_async -> ack (ids, dedup): {a:.2} M msg/s");
    println!("  tokio::sync::mpsc bounded send -> recv:                    {m:.2} M msg/s");
    println!("  flume bounded send_async -> recv_async:                     {f:.2} M msg/s");
    println!("  ackring publish -> blocking receive -> ack (threads):       {b:.2} M msg/s");
    println!(
        "  ratio ackring async / tokio mpsc: {:.2}x (goal >= 0.8x)",
        a / m
    );
    println!(
        "  cost per message, async / blocking: {:.2}x (goal <= 1.3x)",
        b / a
    );
    wake_up_latency(quick);
}
