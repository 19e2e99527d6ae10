//! The reliable queue's cost per message against the raw ring, measured in the same run:
//! publish -> receive -> ack of 64-byte messages with ids given (numbered per publisher,
//! or looking random) and dedup on, received with `try_receive` (the harness backing off
//! between empty tries, as it does for the ring) or with the queue's own waiting
//! (`receive_timeout`; and, in one peer, publishes into a full queue waiting in the queue
//! too, `publish_timeout`), against
//! pushing and popping 64-byte arrays through `ackring::Ring`; one message per call, and in
//! batches of [`BATCH`] (`publish_batch` / `try_receive_batch` / `ack_batch` against
//! `push_batch` / `pop_batch`).
//!
//! A third peer, the design's skeleton ([`Skeleton`]), moves messages the way the queue
//! does underneath (two rings of slot tokens, a header CAS on each side, a payload line)
//! with none of its features, to split the queue's cost over the ring's into what the
//! design's shape costs and what the features cost.
//!
//! After each group, the ratios the goal is about are measured once more with the ring and
//! the queue alternating run by run (see [`compare`]), because on a shared machine the
//! speed of either can drift by half between criterion's back-to-back benchmarks.
//!
//! `cargo bench --bench queue`

use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use ackring::{MessageId, PublishOptions, Queue, QueueConfig, Ring};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use crossbeam_utils::Backoff;

const CAPACITY: u32 = 1024;
const MESSAGES_PER_ITERATION: u64 = 1 << 15;
const BATCH: usize = 32;
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

/// How a peer moves messages: `send(count, end)` sends `count` messages (end markers if
/// `end`), retrying until all went in; `receive()` takes what it can and says how many of
/// them were end markers (`None`: nothing there).
struct Peer<S, R> {
    send: S,
    receive: R,
    /// Messages per `send` call.
    batch: usize,
}

/// Runs `producers` threads sending `total / producers` messages each, then one end marker
/// per consumer, and `consumers` threads receiving until all the end markers were seen.
/// Returns the time from the start barrier to the end.
fn run<S, R>(producers: usize, consumers: usize, total: u64, peer: &Peer<S, R>) -> Duration
where
    S: Fn(usize, bool) + Sync,
    R: Fn() -> Option<usize> + Sync,
{
    let threads = producers + consumers;
    let start = Barrier::new(threads);
    // One batch may hold several end markers: consumers stop once all were seen.
    let ends_seen = AtomicUsize::new(0);
    let producers_done = Barrier::new(producers);
    let calls_per_producer = total / producers as u64 / peer.batch as u64;
    // The span is timed by the working threads themselves, from the first to start to the
    // last to finish. (Timed from the spawning thread, which has no core of its own, a
    // start read late made some runs look many times faster: one showed 649 M msg/s.)
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let mut workers = Vec::with_capacity(threads);
        for p in 0..producers {
            let (start, producers_done) = (&start, &producers_done);
            workers.push(s.spawn(move || {
                pin(p, threads);
                start.wait();
                let began = Instant::now();
                for _ in 0..calls_per_producer {
                    (peer.send)(peer.batch, false);
                }
                producers_done.wait();
                if p == 0 {
                    (peer.send)(consumers, true);
                }
                (began, Instant::now())
            }));
        }
        for c in 0..consumers {
            let (start, ends_seen) = (&start, &ends_seen);
            workers.push(s.spawn(move || {
                pin(producers + c, threads);
                start.wait();
                let began = Instant::now();
                let backoff = Backoff::new();
                while ends_seen.load(Ordering::Relaxed) < consumers {
                    match (peer.receive)() {
                        Some(ends) => {
                            ends_seen.fetch_add(ends, Ordering::Relaxed);
                            backoff.reset();
                        }
                        None => backoff.snooze(),
                    }
                }
                (began, Instant::now())
            }));
        }
        workers
            .into_iter()
            .map(|worker| worker.join().expect("a bench thread panicked"))
            .collect()
    });
    let began = spans.iter().map(|(began, _)| *began).min();
    let ended = spans.iter().map(|(_, ended)| *ended).max();
    match (began, ended) {
        (Some(began), Some(ended)) => ended - began,
        _ => Duration::ZERO,
    }
}

/// `iters` runs of [`MESSAGES_PER_ITERATION`] messages, their times summed (criterion's
/// `iter_custom`).
fn runs<S, R>(iters: u64, producers: usize, consumers: usize, peer: &Peer<S, R>) -> Duration
where
    S: Fn(usize, bool) + Sync,
    R: Fn() -> Option<usize> + Sync,
{
    (0..iters)
        .map(|_| run(producers, consumers, MESSAGES_PER_ITERATION, peer))
        .sum()
}

/// A 64-byte message; the first byte marks the end of the stream.
fn message(end: bool) -> [u8; 64] {
    let mut message = PAYLOAD;
    message[0] = if end { END } else { 0 };
    message
}

/// A fresh id for the calling thread: ids are given, not generated, so that every publish
/// goes through the dedup window (the queue does not remember the ids it generates).
fn fresh_id() -> MessageId {
    static BLOCKS: AtomicU64 = AtomicU64::new(0);
    thread_local!(static NEXT: Cell<u64> = Cell::new(BLOCKS.fetch_add(1 << 40, Ordering::Relaxed)));
    MessageId(NEXT.with(|next| next.replace(next.get() + 1)))
}

/// A fresh id that looks random: [`fresh_id`] times an odd constant (a bijection, so still
/// unique). The queue guesses that a publisher numbers its ids, and prefetches the dedup
/// stripe of this id plus two; with these ids the guess is always wrong.
fn fresh_random_id() -> MessageId {
    MessageId(fresh_id().0.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn with_fresh_id<P>(payload: P) -> (P, PublishOptions) {
    with_id(payload, fresh_id())
}

fn with_id<P>(payload: P, id: MessageId) -> (P, PublishOptions) {
    let options = PublishOptions {
        id: Some(id),
        ..PublishOptions::default()
    };
    (payload, options)
}

fn queue_config() -> QueueConfig {
    Queue::builder(CAPACITY, PAYLOAD.len())
        // Dedup sized for the rate: ids live 100 ms, a million remembered.
        .dedup_window(Duration::from_millis(100))
        .dedup_capacity(1 << 20)
        .into_config()
}

/// How a queue peer's producers and consumers wait.
#[derive(Clone, Copy)]
enum Receive {
    /// `try_publish` and `try_receive`, with the harness's backoff between tries that
    /// failed (as the ring's).
    Try,
    /// `receive_timeout`: the queue's own waiting, for consumers.
    Blocking,
    /// `publish_timeout` and `receive_timeout`: the queue's own waiting on both sides.
    BothSides,
}

/// The queue moving one message per call: publish with an id from `ids`, then receive
/// (as `receive` says) and ack.
fn queue_single(
    queue: &Queue,
    ids: fn() -> MessageId,
    receive: Receive,
) -> Peer<impl Fn(usize, bool) + Sync + '_, impl Fn() -> Option<usize> + Sync + '_> {
    Peer {
        batch: 1,
        send: move |count: usize, end: bool| {
            for _ in 0..count {
                let (payload, options) = with_id(message(end), ids());
                let backoff = Backoff::new();
                let published = |queue: &Queue| match receive {
                    Receive::BothSides => {
                        let wait = Duration::from_secs(1);
                        queue.publish_timeout(&payload, options, wait).is_ok()
                    }
                    _ => queue.try_publish_with(&payload, options).is_ok(),
                };
                while !published(queue) {
                    backoff.snooze();
                }
            }
        },
        receive: move || {
            let delivery = match receive {
                Receive::Try => queue.try_receive(),
                // Short: a consumer whose partner took the last end marker waits it out.
                Receive::Blocking | Receive::BothSides => {
                    queue.receive_timeout(Duration::from_micros(100))
                }
            }?;
            let end = black_box(delivery.payload())[0] == END;
            delivery.ack().expect("acked within the lease");
            Some(usize::from(end))
        },
    }
}

/// One 64-byte line of words.
#[repr(C, align(64))]
#[derive(Default)]
struct Line([AtomicU64; 8]);

/// The data movement the queue's design makes for a message, and nothing else: a slot token
/// from a free ring, a header CAS to claim the slot, the payload written as words, a
/// header CAS to publish it, the token pushed to a ready ring; the consumer pops it, CASes
/// the header to leased, reads the payload, CASes the header free and pushes the token
/// back. No ids, dedup, clock, timers or counters: what is left between this and the queue
/// is the cost of those, and what is left between this and the ring is the cost of the
/// design's shape (two rings, and a header line beside the payload).
struct Skeleton {
    free: Ring<u32>,
    ready: Ring<u32>,
    headers: Vec<Line>,
    payloads: Vec<Line>,
}

/// A header's states in the skeleton.
const SLOT_FREE: u64 = 0;
const SLOT_WRITING: u64 = 1;
const SLOT_READY: u64 = 2;
const SLOT_LEASED: u64 = 3;

impl Skeleton {
    fn new() -> Self {
        let free = Ring::new(CAPACITY as usize).unwrap();
        for slot in 0..CAPACITY {
            free.try_push(slot).unwrap();
        }
        Self {
            free,
            ready: Ring::new(CAPACITY as usize).unwrap(),
            headers: (0..CAPACITY).map(|_| Line::default()).collect(),
            payloads: (0..CAPACITY).map(|_| Line::default()).collect(),
        }
    }

    /// Moves `header`'s state word from `from` to `to` (the skeleton's protocol makes it so).
    fn transition(header: &Line, from: u64, to: u64) {
        let moved = header.0[0].compare_exchange(from, to, Ordering::AcqRel, Ordering::Relaxed);
        assert_eq!(moved, Ok(from), "the skeleton's slot protocol");
    }

    fn peer(
        &self,
    ) -> Peer<impl Fn(usize, bool) + Sync + '_, impl Fn() -> Option<usize> + Sync + '_> {
        Peer {
            batch: 1,
            send: move |count: usize, end: bool| {
                for _ in 0..count {
                    let backoff = Backoff::new();
                    let slot = loop {
                        match self.free.try_pop() {
                            Some(slot) => break slot,
                            None => backoff.snooze(),
                        }
                    };
                    let header = &self.headers[slot as usize];
                    Self::transition(header, SLOT_FREE, SLOT_WRITING);
                    let words = &self.payloads[slot as usize].0;
                    words[0].store(u64::from(end), Ordering::Relaxed);
                    for word in &words[1..] {
                        word.store(u64::from_le_bytes([7; 8]), Ordering::Relaxed);
                    }
                    Self::transition(header, SLOT_WRITING, SLOT_READY);
                    assert!(self.ready.try_push(slot).is_ok(), "a token per slot fits");
                }
            },
            receive: move || {
                let slot = self.ready.try_pop()?;
                let header = &self.headers[slot as usize];
                Self::transition(header, SLOT_READY, SLOT_LEASED);
                let end = black_box(self.payloads[slot as usize].0[0].load(Ordering::Relaxed)) == 1;
                Self::transition(header, SLOT_LEASED, SLOT_FREE);
                assert!(self.free.try_push(slot).is_ok(), "a token per slot fits");
                Some(usize::from(end))
            },
        }
    }
}

/// Rounds of the interleaved comparison (see [`compare`]).
const ROUNDS: usize = 15;

/// Messages a second of one run.
fn rate<S, R>(producers: usize, consumers: usize, peer: &Peer<S, R>) -> f64
where
    S: Fn(usize, bool) + Sync,
    R: Fn() -> Option<usize> + Sync,
{
    let took = run(producers, consumers, MESSAGES_PER_ITERATION, peer);
    MESSAGES_PER_ITERATION as f64 / took.as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The goal's ratio, measured so that a machine whose speed drifts (a shared one) does not
/// skew it: [`ROUNDS`] rounds, each a run of the ring then a run of the queue, back to
/// back; prints the median rates and the median of the rounds' ratios.
fn compare<S1, R1, S2, R2>(
    what: &str,
    (producers, consumers): (usize, usize),
    ring: &Peer<S1, R1>,
    queue: &Peer<S2, R2>,
) where
    S1: Fn(usize, bool) + Sync,
    R1: Fn() -> Option<usize> + Sync,
    S2: Fn(usize, bool) + Sync,
    R2: Fn() -> Option<usize> + Sync,
{
    compare_named(
        what,
        (producers, consumers),
        ("Ring", ring),
        ("Queue", queue),
    );
}

/// [`compare`] of any two peers, named as given: prints `first / second`.
fn compare_named<S1, R1, S2, R2>(
    what: &str,
    (producers, consumers): (usize, usize),
    (first_name, first): (&str, &Peer<S1, R1>),
    (second_name, second): (&str, &Peer<S2, R2>),
) where
    S1: Fn(usize, bool) + Sync,
    R1: Fn() -> Option<usize> + Sync,
    S2: Fn(usize, bool) + Sync,
    R2: Fn() -> Option<usize> + Sync,
{
    let (mut first_rates, mut second_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let first_rate = rate(producers, consumers, first);
        let second_rate = rate(producers, consumers, second);
        first_rates.push(first_rate);
        second_rates.push(second_rate);
        ratios.push(first_rate / second_rate);
    }
    println!(
        "ratio {producers}p{consumers}c {what}: {first_name} {:.2} M/s, {second_name} {:.2} M/s, \
         {first_name}/{second_name} {:.2}x (medians of {ROUNDS} alternating rounds)",
        median(first_rates) / 1e6,
        median(second_rates) / 1e6,
        median(ratios),
    );
}

fn bench_pair(c: &mut Criterion, producers: usize, consumers: usize) {
    let mut group = c.benchmark_group(format!("queue_roundtrip/{producers}p{consumers}c"));
    group.throughput(Throughput::Elements(MESSAGES_PER_ITERATION));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(4));
    let mut bench = |name: &str, parameter: &str, timed: &dyn Fn(u64) -> Duration| {
        group.bench_function(BenchmarkId::new(name, parameter), |b| b.iter_custom(timed));
    };
    let threads = (producers, consumers);
    let ring: Ring<[u8; 64]> = Ring::new(CAPACITY as usize).unwrap();
    let ring_single = Peer {
        batch: 1,
        send: |count: usize, end: bool| {
            for _ in 0..count {
                let mut item = message(end);
                let backoff = Backoff::new();
                while let Err(full) = ring.try_push(item) {
                    item = full.into_inner();
                    backoff.snooze();
                }
            }
        },
        receive: || ring.try_pop().map(|m| usize::from(black_box(m)[0] == END)),
    };
    bench("ackring::Ring", "64B", &|iters| {
        runs(iters, producers, consumers, &ring_single)
    });
    let ring_batches = Peer {
        batch: BATCH,
        send: |count: usize, end: bool| {
            let mut items = vec![message(end); count];
            let backoff = Backoff::new();
            while !items.is_empty() {
                if ring.push_batch(&mut items) == 0 {
                    backoff.snooze();
                }
            }
        },
        receive: || {
            let mut out = Vec::with_capacity(BATCH);
            (ring.pop_batch(&mut out, BATCH) > 0)
                .then(|| out.iter().filter(|m| black_box(m)[0] == END).count())
        },
    };
    bench("ackring::Ring", "64B batches of 32", &|iters| {
        runs(iters, producers, consumers, &ring_batches)
    });
    let skeleton = Skeleton::new();
    let skeleton = skeleton.peer();
    bench(
        "design skeleton",
        "64B, two rings, header and payload",
        &|iters| runs(iters, producers, consumers, &skeleton),
    );
    let queue = Queue::new(queue_config()).unwrap();
    let numbered = queue_single(&queue, fresh_id, Receive::Try);
    bench("ackring::Queue", "64B publish-receive-ack", &|iters| {
        runs(iters, producers, consumers, &numbered)
    });
    let blocking = queue_single(&queue, fresh_id, Receive::Blocking);
    bench(
        "ackring::Queue",
        "64B publish-receive-ack, blocking receive",
        &|iters| runs(iters, producers, consumers, &blocking),
    );
    let waiting_queue = Queue::new(queue_config()).unwrap();
    let waiting = queue_single(&waiting_queue, fresh_id, Receive::BothSides);
    bench(
        "ackring::Queue",
        "64B publish-receive-ack, the queue's own waiting on both sides",
        &|iters| runs(iters, producers, consumers, &waiting),
    );
    let random = queue_single(&queue, fresh_random_id, Receive::Try);
    bench(
        "ackring::Queue",
        "64B publish-receive-ack, random ids",
        &|iters| runs(iters, producers, consumers, &random),
    );
    let queue_batches = Peer {
        batch: BATCH,
        send: |count: usize, end: bool| {
            let messages: Vec<_> = (0..count).map(|_| with_fresh_id(message(end))).collect();
            let mut sent = 0;
            let backoff = Backoff::new();
            while sent < count {
                match queue.try_publish_batch_with(&messages[sent..]) {
                    Ok(()) => sent = count,
                    Err(refused) => {
                        sent += refused.published;
                        backoff.snooze();
                    }
                }
            }
        },
        receive: || {
            let mut deliveries = Vec::with_capacity(BATCH);
            if queue.try_receive_batch(&mut deliveries, BATCH) == 0 {
                return None;
            }
            let ends = deliveries
                .iter()
                .filter(|d| black_box(d.payload())[0] == END)
                .count();
            queue.ack_batch(deliveries).expect("acked within the lease");
            Some(ends)
        },
    };
    bench("ackring::Queue", "64B batches of 32", &|iters| {
        runs(iters, producers, consumers, &queue_batches)
    });
    group.finish();
    // Not when criterion only lists or smoke-tests the benchmarks.
    if std::env::args().any(|arg| arg == "--list" || arg == "--test") {
        return;
    }
    compare("one per call", threads, &ring_single, &numbered);
    compare("one per call, random ids", threads, &ring_single, &random);
    compare(
        "one per call, the queue's blocking receive",
        threads,
        &ring_single,
        &blocking,
    );
    compare(
        "one per call, the queue's own waiting on both sides",
        threads,
        &ring_single,
        &waiting,
    );
    compare_named(
        "one per call, the design's skeleton",
        threads,
        ("Ring", &ring_single),
        ("Skeleton", &skeleton),
    );
    compare_named(
        "one per call, the queue's blocking receive against the skeleton",
        threads,
        ("Skeleton", &skeleton),
        ("Queue", &blocking),
    );
    compare("batches of 32", threads, &ring_batches, &queue_batches);
    compare(
        "queue batches against ring one per call",
        threads,
        &ring_single,
        &queue_batches,
    );
}

fn roundtrip(c: &mut Criterion) {
    bench_pair(c, 1, 1);
    bench_pair(c, 2, 2);
}

criterion_group!(benches, roundtrip);
criterion_main!(benches);
