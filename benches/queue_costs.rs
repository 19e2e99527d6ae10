//! What each call of the reliable queue costs in one thread, with nothing to wait for:
//! rounds of 1,000 publishes (64-byte messages, numbered ids, dedup on as in
//! `benches/queue.rs`), then 1,000 `try_receive`s, then 1,000 acks, each phase timed as a
//! whole. The same with dedup off shows what the dedup window costs a publish. Prints
//! nanoseconds per call, three runs each.
//!
//! `cargo bench --bench queue_costs`

use std::hint::black_box;
use std::time::{Duration, Instant};

use ackring::{MessageId, PublishOptions, Queue, QueueConfig};

const MESSAGES: u64 = 2_000_000;
const ROUND: usize = 1_000;
const PAYLOAD: [u8; 64] = [7; 64];

fn config(dedup: bool) -> QueueConfig {
    QueueConfig {
        dedup_window: dedup.then_some(Duration::from_millis(100)),
        dedup_capacity: 1 << 20,
        ..QueueConfig::new(1024, PAYLOAD.len())
    }
}

/// Per-call times of publish, receive and ack over [`MESSAGES`] messages.
fn costs(queue: &Queue, next_id: &mut u64) -> [Duration; 3] {
    let mut spent = [Duration::ZERO; 3];
    let mut deliveries = Vec::with_capacity(ROUND);
    for _ in 0..MESSAGES / ROUND as u64 {
        let started = Instant::now();
        for _ in 0..ROUND {
            let options = PublishOptions {
                id: Some(MessageId(*next_id)),
                ..PublishOptions::default()
            };
            *next_id += 1;
            queue
                .publish_with(&PAYLOAD, options)
                .expect("room for a round");
        }
        spent[0] += started.elapsed();
        let started = Instant::now();
        for _ in 0..ROUND {
            let delivery = queue.try_receive().expect("published above");
            black_box(delivery.payload()[0]);
            deliveries.push(delivery);
        }
        spent[1] += started.elapsed();
        let started = Instant::now();
        for delivery in deliveries.drain(..) {
            delivery.ack().expect("within the lease");
        }
        spent[2] += started.elapsed();
    }
    spent.map(|total| total / MESSAGES as u32)
}

fn main() {
    // Not when cargo only smoke-tests the benches (`cargo test --benches`).
    if std::env::args().any(|arg| arg == "--test" || arg == "--list") {
        return;
    }
    println!("one thread, rounds of {ROUND}: ns per call");
    for dedup in [true, false] {
        let queue = Queue::new(config(dedup)).expect("a valid configuration");
        let mut next_id = 0;
        for _ in 0..3 {
            let [publish, receive, ack] = costs(&queue, &mut next_id);
            println!(
                "dedup {:3}  publish {:4} ns  try_receive {:4} ns  ack {:4} ns",
                if dedup { "on" } else { "off" },
                publish.as_nanos(),
                receive.as_nanos(),
                ack.as_nanos(),
            );
        }
    }
}
