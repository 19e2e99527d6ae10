//! What each call of the reliable queue costs in one thread, with nothing to wait for:
//! rounds of 1,000 publishes (64-byte messages, numbered ids, dedup on as in
//! `benches/queue.rs`), then 1,000 `try_receive`s, then 1,000 acks, each phase timed as a
//! whole. The same with dedup off shows what the dedup window costs a publish, and the
//! same with ids that look random what it costs when the id's stripe is not in the cache:
//! a publish of a numbered id prefetches the stripe of the next id, a guess that ids that
//! look random always miss, and a window for a million ids (72 MiB) does not fit in any
//! cache; one for 64 Ki ids (4.5 MiB, with a 5 ms window to stay within it) does. Prints
//! nanoseconds per call, three runs each.
//!
//! `cargo bench --bench queue_costs`

use std::hint::black_box;
use std::time::{Duration, Instant};

use ackring::{MessageId, PublishOptions, Queue, QueueConfig};

const MESSAGES: u64 = 2_000_000;
const ROUND: usize = 1_000;
const PAYLOAD: [u8; 64] = [7; 64];

/// One configuration measured: its label, the dedup window (`None`: off) and its
/// capacity, and whether ids look random.
struct Case {
    label: &'static str,
    window: Option<Duration>,
    capacity: usize,
    random_ids: bool,
}

const CASES: [Case; 4] = [
    Case {
        label: "dedup on (1 Mi ids), numbered ids",
        window: Some(Duration::from_millis(100)),
        capacity: 1 << 20,
        random_ids: false,
    },
    Case {
        label: "dedup on (1 Mi ids), random ids  ",
        window: Some(Duration::from_millis(100)),
        capacity: 1 << 20,
        random_ids: true,
    },
    Case {
        label: "dedup on (64 Ki ids), random ids ",
        window: Some(Duration::from_millis(5)),
        capacity: 1 << 16,
        random_ids: true,
    },
    Case {
        label: "dedup off                        ",
        window: None,
        capacity: 1,
        random_ids: false,
    },
];

fn config(case: &Case) -> QueueConfig {
    let mut config = QueueConfig::new(1024, PAYLOAD.len());
    config.dedup_window = case.window;
    config.dedup_capacity = case.capacity;
    config
}

/// The `n`th id: `n` itself, or `n` times an odd constant (a bijection, so still unique),
/// as `benches/queue.rs` makes ids that look random.
fn id(n: u64, random: bool) -> MessageId {
    MessageId(if random {
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    } else {
        n
    })
}

/// Per-call times of publish, receive and ack over [`MESSAGES`] messages.
fn costs(queue: &Queue, next_id: &mut u64, random_ids: bool) -> [Duration; 3] {
    let mut spent = [Duration::ZERO; 3];
    let mut deliveries = Vec::with_capacity(ROUND);
    for _ in 0..MESSAGES / ROUND as u64 {
        let started = Instant::now();
        for _ in 0..ROUND {
            let options = PublishOptions {
                id: Some(id(*next_id, random_ids)),
                ..PublishOptions::default()
            };
            *next_id += 1;
            queue
                .try_publish_with(&PAYLOAD, options)
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
    for case in &CASES {
        let queue = Queue::new(config(case)).expect("a valid configuration");
        let mut next_id = 1;
        for _ in 0..3 {
            let [publish, receive, ack] = costs(&queue, &mut next_id, case.random_ids);
            println!(
                "{}  publish {:4} ns  try_receive {:4} ns  ack {:4} ns",
                case.label,
                publish.as_nanos(),
                receive.as_nanos(),
                ack.as_nanos(),
            );
        }
    }
}
