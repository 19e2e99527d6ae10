//! A tour of the ring at the core of ackring: producers and consumers on threads move a
//! million numbered messages through a 1024-slot `Ring`, using single and batch operations;
//! then the same through a `TokenRing` laid out in memory we allocate ourselves.
//! At the end it checks that every message arrived exactly once, and prints the rate.
//!
//! Run: `cargo run --release --example ring_demo`

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ackring::{Ring, TokenRing};

const PRODUCERS: u64 = 2;
const CONSUMERS: usize = 2;
const PER_PRODUCER: u64 = 500_000;
const TOTAL: u64 = PRODUCERS * PER_PRODUCER;

/// Producers push `producer << 32 | seq`; consumers pop with `pop` and record what they saw.
/// Returns (sorted messages received, seconds taken).
fn run(
    push: impl Fn(&[u64]) -> usize + Sync,
    pop: impl Fn(&mut Vec<u64>) + Sync,
) -> (Vec<u64>, f64) {
    let popped = AtomicU64::new(0);
    let started = Instant::now();
    let mut received: Vec<u64> = std::thread::scope(|s| {
        for producer in 0..PRODUCERS {
            let push = &push;
            s.spawn(move || {
                let messages: Vec<u64> =
                    (0..PER_PRODUCER).map(|seq| producer << 32 | seq).collect();
                let mut rest = &messages[..];
                while !rest.is_empty() {
                    let pushed = push(&rest[..rest.len().min(16)]);
                    rest = &rest[pushed..];
                    if pushed == 0 {
                        std::thread::yield_now();
                    }
                }
            });
        }
        let consumers: Vec<_> = (0..CONSUMERS)
            .map(|_| {
                let (pop, popped) = (&pop, &popped);
                s.spawn(move || {
                    let mut got = Vec::new();
                    while popped.load(Ordering::Relaxed) < TOTAL {
                        let before = got.len();
                        pop(&mut got);
                        match got.len() - before {
                            0 => std::thread::yield_now(),
                            n => _ = popped.fetch_add(n as u64, Ordering::Relaxed),
                        }
                    }
                    got
                })
            })
            .collect();
        consumers
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    received.sort_unstable();
    (received, seconds)
}

fn report(name: &str, received: &[u64], seconds: f64) {
    let exactly_once = received.len() as u64 == TOTAL
        && received
            .iter()
            .copied()
            .eq((0..PRODUCERS).flat_map(|p| (0..PER_PRODUCER).map(move |s| p << 32 | s)));
    println!(
        "{name:<34} {:>9} messages  {:>6.1} M msg/s  every message exactly once: {}",
        received.len(),
        TOTAL as f64 / seconds / 1e6,
        if exactly_once { "yes" } else { "NO" }
    );
    assert!(exactly_once, "{name}: messages were lost or duplicated");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "{PRODUCERS} producer and {CONSUMERS} consumer threads, {TOTAL} messages, 1024 slots\n"
    );

    let ring = Ring::new(1024)?;
    let (received, seconds) = run(
        |batch| ring.push_batch(&mut batch.to_vec()),
        |out| _ = ring.pop_batch(out, 16),
    );
    report("Ring<u64>, batches of 16", &received, seconds);

    let (received, seconds) = run(
        |batch| usize::from(ring.try_push(batch[0]).is_ok()),
        |out| out.extend(ring.try_pop()),
    );
    report("Ring<u64>, one at a time", &received, seconds);

    // The same algorithm over memory we provide: this is how a shared segment will hold it.
    let bytes = TokenRing::bytes_needed(1024)?;
    let layout = Layout::from_size_align(bytes, TokenRing::ALIGN)?;
    // SAFETY: the layout has a non-zero size.
    let memory = unsafe { alloc_zeroed(layout) };
    assert!(!memory.is_null(), "allocation failed");
    {
        // SAFETY: `memory` is a fresh allocation of `bytes` bytes, used only through this slice
        // until it is freed below, after the slice's last use.
        let region = unsafe { std::slice::from_raw_parts_mut(memory, bytes) };
        let tokens = TokenRing::init(region, 1024)?;
        let (received, seconds) = run(
            |batch| tokens.push_slice(batch).unwrap_or(0),
            |out| {
                let mut buffer = [0u64; 16];
                let n = tokens.pop_into(&mut buffer).unwrap_or(0);
                out.extend_from_slice(&buffer[..n]);
            },
        );
        report("TokenRing in caller memory, 16", &received, seconds);
    }
    // SAFETY: allocated above with this layout; no reference into it is alive any more.
    unsafe { dealloc(memory, layout) };
    Ok(())
}
