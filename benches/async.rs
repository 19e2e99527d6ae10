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
//! the median rate of the rounds and the ratios the issue sets goals for. Run:
//! `cargo bench --features async --bench async`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ackring::{MessageId, PublishOptions, Queue};

const MESSAGES: u64 = 200_000;
const CAPACITY: u32 = 4096;
const ROUNDS: usize = 5;

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

fn main() {
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
}
