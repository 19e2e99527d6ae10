//! Publish-to-receive latency of the reliable queue, against the raw ring in the same run.
//!
//! A producer pinned to one core sends a 64-byte message every 5 µs, stamped with the
//! monotonic clock; a consumer pinned to another busy-polls (or, in the last run, waits in
//! `receive_timeout`), records `now - stamp` in an HDR histogram and acks. Prints p50 /
//! p99 / p99.9 / max.
//!
//! `cargo bench --bench queue_latency`

use std::time::Duration;

use ackring::clock::{Clock, MonotonicClock};
use ackring::{MessageId, PublishOptions, Queue, Ring};
use hdrhistogram::Histogram;

const MESSAGES: u64 = 200_000;
const WARM_UP: u64 = 20_000;
const INTERVAL_NANOS: u64 = 5_000;

/// The machine's cores, read once before any thread is pinned: `get_core_ids` lists only
/// the cores the calling thread may run on, so asking again after pinning the main thread
/// would put every later thread on that one core.
static CORES: std::sync::OnceLock<Vec<core_affinity::CoreId>> = std::sync::OnceLock::new();

fn pin(core: usize) {
    let cores = CORES.get_or_init(|| core_affinity::get_core_ids().unwrap_or_default());
    if let Some(id) = cores.get(core % cores.len().max(1)) {
        core_affinity::set_for_current(*id);
    }
}

/// Runs the paced producer and the consumer, which calls `receive` until it has every
/// message; `send` publishes a stamped message, `receive` returns a stamp if a message was
/// there.
fn measure(send: impl Fn(u64) + Sync, receive: impl Fn() -> Option<u64> + Sync) -> Histogram<u64> {
    let clock = MonotonicClock;
    std::thread::scope(|s| {
        let consumer = s.spawn(|| {
            pin(1);
            let mut histogram = Histogram::<u64>::new(3).expect("valid precision");
            let mut received = 0;
            while received < MESSAGES {
                if let Some(stamp) = receive() {
                    if received >= WARM_UP {
                        let _ = histogram.record(clock.now_nanos().saturating_sub(stamp));
                    }
                    received += 1;
                }
            }
            histogram
        });
        pin(0);
        let start = clock.now_nanos();
        for i in 0..MESSAGES {
            let due = start + i * INTERVAL_NANOS;
            while clock.now_nanos() < due {
                std::hint::spin_loop();
            }
            send(clock.now_nanos());
        }
        consumer.join().expect("consumer thread")
    })
}

fn report(name: &str, histogram: &Histogram<u64>) {
    println!(
        "{name:<42} p50 {:>6} ns   p99 {:>6} ns   p99.9 {:>7} ns   max {:>8} ns",
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.max()
    );
}

fn stamped(stamp: u64) -> [u8; 64] {
    let mut message = [0u8; 64];
    message[..8].copy_from_slice(&stamp.to_le_bytes());
    message
}

fn stamp_of(payload: &[u8]) -> u64 {
    u64::from_le_bytes(payload[..8].try_into().expect("8-byte stamp"))
}

fn main() {
    // `cargo test --benches` runs bench binaries with no arguments of ours: stay quick there.
    if std::env::args().any(|arg| arg == "--test" || arg == "--list") {
        return;
    }
    CORES.get_or_init(|| core_affinity::get_core_ids().unwrap_or_default());
    println!(
        "{} messages of 64 bytes, one every {} µs, producer and consumer pinned (first {} not counted)\n",
        MESSAGES,
        INTERVAL_NANOS / 1_000,
        WARM_UP
    );
    let ring: Ring<[u8; 64]> = Ring::new(1024).expect("valid capacity");
    let histogram = measure(
        |stamp| {
            let mut message = stamped(stamp);
            while let Err(full) = ring.try_push(message) {
                message = full.into_inner();
            }
        },
        || ring.try_pop().map(|message| stamp_of(&message)),
    );
    report("ackring::Ring<[u8; 64]> push -> pop", &histogram);

    let queue = Queue::builder(1024, 64)
        .dedup_window(Duration::from_millis(100))
        .dedup_capacity(1 << 16)
        .build()
        .expect("valid config");
    // Ids given, so that every publish goes through the dedup window (generated ones skip it).
    let next_id = std::sync::atomic::AtomicU64::new(0); // one sender at a time: no contention
    let publish = |stamp| {
        let options = PublishOptions {
            id: Some(MessageId(
                next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            )),
            ..PublishOptions::default()
        };
        while queue.try_publish_with(&stamped(stamp), options).is_err() {
            std::hint::spin_loop();
        }
    };
    let settle = |delivery: ackring::Delivery<'_, MonotonicClock>| {
        let stamp = stamp_of(delivery.payload());
        delivery.ack().expect("acked within the lease");
        stamp
    };
    let histogram = measure(publish, || queue.try_receive().map(settle));
    report("ackring::Queue publish -> try_receive", &histogram);
    // The queue's own waiting: looks every half microsecond, sleeps after 20 µs.
    let histogram = measure(publish, || {
        queue.receive_timeout(Duration::from_secs(1)).map(settle)
    });
    report("ackring::Queue publish -> receive_timeout", &histogram);
}
