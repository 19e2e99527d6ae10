//! Throughput of ackring's `Ring` against crossbeam's `ArrayQueue`, measured in the same run:
//! same capacity, same `u64` messages, same thread layout, same backoff when full or empty.
//!
//! `cargo bench --bench ring` — each group shows both queues side by side.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use ackring::Ring;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use crossbeam_utils::Backoff;

const CAPACITY: usize = 1024;
const MESSAGES_PER_ITERATION: u64 = 1 << 16;
const BATCH: usize = 32;

/// What the benchmark needs of a queue.
trait Queue: Sync {
    fn push(&self, value: u64) -> bool;
    fn pop(&self) -> Option<u64>;
    /// Moves up to `BATCH` values; the default is one by one.
    fn push_many(&self, values: &mut Vec<u64>) -> usize {
        let n = values.iter().take_while(|v| self.push(**v)).count();
        values.drain(..n);
        n
    }
    fn pop_many(&self, out: &mut Vec<u64>) -> usize {
        let before = out.len();
        while out.len() - before < BATCH {
            match self.pop() {
                Some(v) => out.push(v),
                None => break,
            }
        }
        out.len() - before
    }
}

impl Queue for Ring<u64> {
    fn push(&self, value: u64) -> bool {
        self.try_push(value).is_ok()
    }
    fn pop(&self) -> Option<u64> {
        self.try_pop()
    }
    fn push_many(&self, values: &mut Vec<u64>) -> usize {
        self.push_batch(values)
    }
    fn pop_many(&self, out: &mut Vec<u64>) -> usize {
        self.pop_batch(out, BATCH)
    }
}

impl Queue for ArrayQueue<u64> {
    fn push(&self, value: u64) -> bool {
        ArrayQueue::push(self, value).is_ok()
    }
    fn pop(&self) -> Option<u64> {
        ArrayQueue::pop(self)
    }
}

/// Pins the calling thread to its own core where the OS allows it and there are enough
/// cores for every thread; with more threads than cores, pinning two spinning threads to one
/// core makes the scheduler's time slices, not the queue, decide the result, so the OS
/// places them instead.
fn pin(thread_index: usize, threads: usize) {
    if let Some(cores) = core_affinity::get_core_ids() {
        if threads <= cores.len() {
            core_affinity::set_for_current(cores[thread_index]);
        }
    }
}

/// Marks the end of the stream: every consumer stops at the first one it pops.
const END: u64 = u64::MAX;

/// Moves `total` messages from `producers` threads to `consumers` threads and returns the
/// time from the start barrier until every thread has finished.
///
/// No shared counter on the hot path: consumers count locally and stop at an `END` marker,
/// which producer 0 pushes (one per consumer) once every producer is done. The queue is
/// FIFO, so every message is popped before any marker. The main thread blocks in `join`
/// rather than spinning, so it takes no CPU from the measured threads.
fn transfer<Q: Queue>(
    queue: &Q,
    producers: usize,
    consumers: usize,
    total: u64,
    batched: bool,
) -> Duration {
    let per_producer = total / producers as u64;
    let threads = producers + consumers;
    let start = Barrier::new(threads);
    let producers_done = Barrier::new(producers);
    // Timed by the working threads, from the first to start to the last to finish (the
    // spawning thread has no core of its own: its clock read could come late).
    let (began, ended) = std::thread::scope(|s| {
        let producer_threads: Vec<_> = (0..producers)
            .map(|p| {
                let (start, producers_done) = (&start, &producers_done);
                s.spawn(move || {
                    pin(p, threads);
                    start.wait();
                    let began = Instant::now();
                    let backoff = Backoff::new();
                    let mut pending = Vec::with_capacity(BATCH);
                    let mut next = 0;
                    while next < per_producer || !pending.is_empty() {
                        if !batched {
                            while !queue.push(next) {
                                backoff.snooze();
                            }
                            next += 1;
                            continue;
                        }
                        while pending.len() < BATCH && next < per_producer {
                            pending.push(next);
                            next += 1;
                        }
                        if queue.push_many(&mut pending) == 0 {
                            backoff.snooze();
                        }
                    }
                    producers_done.wait();
                    if p == 0 {
                        for _ in 0..consumers {
                            while !queue.push(END) {
                                backoff.snooze();
                            }
                        }
                    }
                    (began, Instant::now())
                })
            })
            .collect();
        let consumer_threads: Vec<_> = (0..consumers)
            .map(|c| {
                let start = &start;
                s.spawn(move || {
                    pin(producers + c, threads);
                    start.wait();
                    let began = Instant::now();
                    let backoff = Backoff::new();
                    let mut out = Vec::with_capacity(BATCH);
                    let mut received = 0u64;
                    loop {
                        out.clear();
                        if batched {
                            queue.pop_many(&mut out);
                        } else {
                            out.extend(queue.pop());
                        }
                        if out.is_empty() {
                            backoff.snooze();
                            continue;
                        }
                        backoff.reset();
                        for &value in &out {
                            if value == END {
                                // Markers come last; any popped with it in a batch are
                                // other consumers' and go back.
                                let others = out.iter().filter(|v| **v == END).count() - 1;
                                for _ in 0..others {
                                    while !queue.push(END) {
                                        backoff.snooze();
                                    }
                                }
                                return (black_box(received), began, Instant::now());
                            }
                            received += 1;
                        }
                    }
                })
            })
            .collect();
        let mut spans: Vec<(Instant, Instant)> = producer_threads
            .into_iter()
            .map(|p| p.join().unwrap())
            .collect();
        let mut received = 0;
        for consumer in consumer_threads {
            let (count, began, ended) = consumer.join().unwrap();
            received += count;
            spans.push((began, ended));
        }
        assert_eq!(
            received,
            per_producer * producers as u64,
            "benchmark lost messages"
        );
        let began = spans.iter().map(|span| span.0).min().expect("threads ran");
        let ended = spans.iter().map(|span| span.1).max().expect("threads ran");
        (began, ended)
    });
    ended - began
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Single,
    Batch32,
}

/// One line of a group: `name`'s queue moving `MESSAGES_PER_ITERATION` messages per
/// iteration, between the group's producers and consumers.
fn bench_queue<Q: Queue>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    (producers, consumers, mode): (usize, usize, Mode),
    new_queue: impl Fn() -> Q,
) {
    group.bench_function(
        BenchmarkId::new(
            name,
            match mode {
                Mode::Single => "single",
                Mode::Batch32 => "batch32",
            },
        ),
        |b| {
            b.iter_custom(|iters| {
                let queue = new_queue();
                let batched = matches!(mode, Mode::Batch32);
                (0..iters)
                    .map(|_| {
                        transfer(
                            &queue,
                            producers,
                            consumers,
                            MESSAGES_PER_ITERATION,
                            batched,
                        )
                    })
                    .sum()
            })
        },
    );
}

fn bench_pair(c: &mut Criterion, producers: usize, consumers: usize) {
    let mut group = c.benchmark_group(format!("ring_throughput/{producers}p{consumers}c"));
    group.throughput(Throughput::Elements(MESSAGES_PER_ITERATION));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(4));
    for mode in [Mode::Single, Mode::Batch32] {
        let setup = (producers, consumers, mode);
        bench_queue(&mut group, "crossbeam::ArrayQueue", setup, || {
            ArrayQueue::new(CAPACITY)
        });
        bench_queue(&mut group, "ackring::Ring", setup, || {
            Ring::new(CAPACITY).expect("valid capacity")
        });
    }
    group.finish();
}

fn throughput(c: &mut Criterion) {
    bench_pair(c, 1, 1);
    bench_pair(c, 2, 2);
}

criterion_group!(benches, throughput);
criterion_main!(benches);
