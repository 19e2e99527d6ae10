//! Throughput of ackring's `Ring` against crossbeam's `ArrayQueue`, measured in the same run:
//! same capacity, same `u64` messages, same thread layout, same backoff when full or empty.
//!
//! `cargo bench --bench ring` — each group shows both queues side by side.

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// Pins the calling thread to a core, round robin, where the OS allows it.
fn pin(thread_index: usize) {
    if let Some(cores) = core_affinity::get_core_ids() {
        if !cores.is_empty() {
            core_affinity::set_for_current(cores[thread_index % cores.len()]);
        }
    }
}

/// Moves `total` messages from `producers` threads to `consumers` threads; returns the
/// wall time from the start barrier until the last message was popped.
fn transfer<Q: Queue>(
    queue: &Q,
    producers: usize,
    consumers: usize,
    total: u64,
    batched: bool,
) -> Duration {
    let per_producer = total / producers as u64;
    let total = per_producer * producers as u64;
    let popped = AtomicUsize::new(0);
    let start = Barrier::new(producers + consumers + 1);
    std::thread::scope(|s| {
        for p in 0..producers {
            let (start, queue) = (&start, queue);
            s.spawn(move || {
                pin(p);
                start.wait();
                let backoff = Backoff::new();
                if batched {
                    let mut pending = Vec::with_capacity(BATCH);
                    let mut next = 0;
                    while next < per_producer || !pending.is_empty() {
                        while pending.len() < BATCH && next < per_producer {
                            pending.push(next);
                            next += 1;
                        }
                        if queue.push_many(&mut pending) == 0 {
                            backoff.snooze();
                        } else {
                            backoff.reset();
                        }
                    }
                } else {
                    for value in 0..per_producer {
                        while !queue.push(value) {
                            backoff.snooze();
                        }
                        backoff.reset();
                    }
                }
            });
        }
        for c in 0..consumers {
            let (start, queue, popped) = (&start, queue, &popped);
            s.spawn(move || {
                pin(producers + c);
                start.wait();
                let backoff = Backoff::new();
                let mut out = Vec::with_capacity(BATCH);
                while (popped.load(Ordering::Relaxed) as u64) < total {
                    let n = if batched {
                        out.clear();
                        queue.pop_many(&mut out)
                    } else {
                        usize::from(queue.pop().map(black_box).is_some())
                    };
                    if n == 0 {
                        backoff.snooze();
                    } else {
                        popped.fetch_add(n, Ordering::Relaxed);
                        backoff.reset();
                    }
                }
            });
        }
        start.wait();
        let began = Instant::now();
        // Spin until every message is out; the scope then joins the threads.
        while (popped.load(Ordering::Relaxed) as u64) < total {
            std::thread::yield_now();
        }
        began.elapsed()
    })
}

fn bench_pair(c: &mut Criterion, producers: usize, consumers: usize) {
    let mut group = c.benchmark_group(format!("ring_throughput/{producers}p{consumers}c"));
    group.throughput(Throughput::Elements(MESSAGES_PER_ITERATION));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(4));
    for batched in [false, true] {
        let mode = if batched { "batch32" } else { "single" };
        group.bench_function(BenchmarkId::new("crossbeam::ArrayQueue", mode), |b| {
            b.iter_custom(|iters| {
                let queue = ArrayQueue::new(CAPACITY);
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
        });
        group.bench_function(BenchmarkId::new("ackring::Ring", mode), |b| {
            b.iter_custom(|iters| {
                let queue = Ring::new(CAPACITY).expect("valid capacity");
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
