//! The reliable queue's cost per message against the raw ring, measured in the same run:
//! publish -> receive -> ack of 64-byte messages with generated ids and dedup on, against
//! pushing and popping 64-byte arrays through `ackring::Ring`.
//!
//! `cargo bench --bench queue`

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use ackring::{Queue, QueueConfig, Ring};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use crossbeam_utils::Backoff;

const CAPACITY: u32 = 1024;
const MESSAGES_PER_ITERATION: u64 = 1 << 15;
const PAYLOAD: [u8; 64] = [7; 64];
const END: u8 = 0xff;

/// Pins the calling thread to its own core when there are enough cores for every thread.
fn pin(thread_index: usize, threads: usize) {
    if let Some(cores) = core_affinity::get_core_ids() {
        if threads <= cores.len() {
            core_affinity::set_for_current(cores[thread_index]);
        }
    }
}

/// Runs `producers` threads calling `send(false)` `total / producers` times, then one of them
/// `send(true)` once per consumer (end markers), and `consumers` threads calling `receive`
/// until it reports an end marker. Returns the time from the start barrier to the end.
fn run(
    producers: usize,
    consumers: usize,
    total: u64,
    send: impl Fn(bool) + Sync,
    receive: impl Fn() -> Option<bool> + Sync,
) -> Duration {
    let threads = producers + consumers;
    let start = Barrier::new(threads + 1);
    let producers_done = Barrier::new(producers);
    let per_producer = total / producers as u64;
    let began = std::thread::scope(|s| {
        for p in 0..producers {
            let (start, producers_done, send) = (&start, &producers_done, &send);
            s.spawn(move || {
                pin(p, threads);
                start.wait();
                for _ in 0..per_producer {
                    send(false);
                }
                producers_done.wait();
                if p == 0 {
                    for _ in 0..consumers {
                        send(true);
                    }
                }
            });
        }
        for c in 0..consumers {
            let (start, receive) = (&start, &receive);
            s.spawn(move || {
                pin(producers + c, threads);
                start.wait();
                let backoff = Backoff::new();
                loop {
                    match receive() {
                        Some(true) => return,
                        Some(false) => backoff.reset(),
                        None => backoff.snooze(),
                    }
                }
            });
        }
        start.wait();
        Instant::now()
    });
    began.elapsed()
}

/// `iters` runs of `MESSAGES_PER_ITERATION` messages, timed and summed (criterion's
/// `iter_custom`).
fn timed(
    iters: u64,
    producers: usize,
    consumers: usize,
    send: impl Fn(bool) + Sync,
    receive: impl Fn() -> Option<bool> + Sync,
) -> Duration {
    (0..iters)
        .map(|_| {
            run(
                producers,
                consumers,
                MESSAGES_PER_ITERATION,
                &send,
                &receive,
            )
        })
        .sum()
}

/// A 64-byte message; the first byte marks the end of the stream.
fn message(end: bool) -> [u8; 64] {
    let mut message = PAYLOAD;
    message[0] = if end { END } else { 0 };
    message
}

fn queue_config() -> QueueConfig {
    QueueConfig {
        // Dedup sized for the rate: ids live 100 ms, a million remembered.
        dedup_window: Some(Duration::from_millis(100)),
        dedup_capacity: 1 << 20,
        ..QueueConfig::new(CAPACITY, PAYLOAD.len())
    }
}

fn bench_pair(c: &mut Criterion, producers: usize, consumers: usize) {
    let mut group = c.benchmark_group(format!("queue_roundtrip/{producers}p{consumers}c"));
    group.throughput(Throughput::Elements(MESSAGES_PER_ITERATION));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(4));
    let ring: Ring<[u8; 64]> = Ring::new(CAPACITY as usize).unwrap();
    group.bench_function(BenchmarkId::new("ackring::Ring", "64B"), |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                producers,
                consumers,
                |end| {
                    let mut message = message(end);
                    let backoff = Backoff::new();
                    while let Err(full) = ring.try_push(message) {
                        message = full.into_inner();
                        backoff.snooze();
                    }
                },
                || ring.try_pop().map(|m| black_box(m)[0] == END),
            )
        })
    });
    group.bench_function(
        BenchmarkId::new("ackring::Queue", "64B publish-receive-ack"),
        |b| {
            b.iter_custom(|iters| {
                let queue = Queue::new(queue_config()).unwrap();
                timed(
                    iters,
                    producers,
                    consumers,
                    |end| {
                        let backoff = Backoff::new();
                        while queue.publish(&message(end)).is_err() {
                            backoff.snooze();
                        }
                    },
                    || {
                        let delivery = queue.try_receive()?;
                        let end = black_box(delivery.payload())[0] == END;
                        delivery.ack().expect("acked within the lease");
                        Some(end)
                    },
                )
            })
        },
    );
    group.finish();
}

fn roundtrip(c: &mut Criterion) {
    bench_pair(c, 1, 1);
    bench_pair(c, 2, 2);
}

criterion_group!(benches, roundtrip);
criterion_main!(benches);
