//! Model-based property test: random sequences of publish / receive / ack / nack / reject /
//! extend / drop / advance-clock / redrive / pop-dead run against the queue and against a
//! simple reference model. After every step, DESIGN.md's invariants are checked:
//! 1. every accepted message is in exactly one of ready, delayed, leased, dead or acked;
//! 2. an ack succeeds at most once per message, and never with a stale receipt;
//! 3. no message is delivered at or after its TTL;
//! 4. a duplicate id within the window is rejected, after the window accepted;
//! 5. a full queue never overwrites: `Full` only when every slot is taken.
//!
//! Each payload carries the message's serial number, so the model follows every message.

use std::collections::HashMap;
use std::time::Duration;

use ackring::clock::{Clock, ManualClock};
use ackring::queue::{DeadReason, RetryBackoff};
use ackring::{Delivery, MessageId, PublishError, PublishOptions, Queue, QueueConfig, SettleError};
use proptest::prelude::*;

const MS: u64 = 1_000_000;
const CAPACITY: u32 = 6;
const LEASE_MS: u64 = 100;
const BACKOFF_MS: u64 = 20;
const WINDOW_MS: u64 = 200;
const MAX_ATTEMPTS: u32 = 3;
const EXTEND_MS: u64 = 50;

#[derive(Debug, Clone)]
enum Op {
    Publish {
        reuse_id: Option<usize>,
        ttl_ms: Option<u64>,
        delay_ms: Option<u64>,
    },
    Receive,
    Ack(usize),
    Nack(usize),
    Reject(usize),
    Extend(usize),
    Drop(usize),
    Advance(u64),
    Redrive,
    PopDead,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (
            proptest::option::weighted(0.3, 0..8usize),
            proptest::option::weighted(0.3, 1..300u64),
            proptest::option::weighted(0.2, 1..100u64),
        )
            .prop_map(|(reuse_id, ttl_ms, delay_ms)| Op::Publish { reuse_id, ttl_ms, delay_ms }),
        3 => Just(Op::Receive),
        2 => any::<usize>().prop_map(Op::Ack),
        1 => any::<usize>().prop_map(Op::Nack),
        1 => any::<usize>().prop_map(Op::Reject),
        1 => any::<usize>().prop_map(Op::Extend),
        1 => any::<usize>().prop_map(Op::Drop),
        2 => (1..120u64).prop_map(Op::Advance),
        1 => Just(Op::Redrive),
        1 => Just(Op::PopDead),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Where {
    Ready,
    Delayed {
        due: u64,
    },
    /// Leased to the held delivery with this lease number, until `due`.
    Leased {
        lease: u64,
        due: u64,
    },
    Dead,
    Gone,
}

#[derive(Debug)]
struct Message {
    id: MessageId,
    place: Where,
    attempts: u32,
    expires_at: u64,
}

#[derive(Default)]
struct Model {
    messages: HashMap<u64, Message>,
    /// Accepted publish time of each id, for the dedup window.
    accepted_at: HashMap<MessageId, u64>,
    ids: Vec<MessageId>,
    next_serial: u64,
    next_lease: u64,
    acked: u64,
}

impl Model {
    fn count(&self, pred: impl Fn(&Where) -> bool) -> u64 {
        self.messages.values().filter(|m| pred(&m.place)).count() as u64
    }
}

struct Held<'q> {
    delivery: Delivery<'q, ManualClock>,
    serial: u64,
    lease: u64,
}

fn serial_of(payload: &[u8]) -> u64 {
    u64::from_le_bytes(payload.try_into().expect("8-byte payload"))
}

fn run(ops: Vec<Op>) {
    let clock = ManualClock::new();
    let config = QueueConfig {
        visibility_timeout: Duration::from_millis(LEASE_MS),
        max_attempts: MAX_ATTEMPTS,
        backoff: RetryBackoff::Fixed(Duration::from_millis(BACKOFF_MS)),
        dedup_window: Some(Duration::from_millis(WINDOW_MS)),
        dead_letter_capacity: CAPACITY,
        dedup_capacity: 1024,
        ..QueueConfig::new(CAPACITY, 8)
    };
    let queue = Queue::with_clock(config, clock.clone()).unwrap();
    let mut model = Model::default();
    let mut held: Vec<Held<'_>> = Vec::new();

    // Moves the model's due leases and delays to ready, as the queue's sweep does.
    let sweep = |model: &mut Model, now: u64| {
        for message in model.messages.values_mut() {
            match message.place {
                Where::Delayed { due } | Where::Leased { due, .. } if due <= now => {
                    message.place = Where::Ready
                }
                _ => {}
            }
        }
    };

    for op in ops {
        let now = clock.now_nanos();
        match op {
            Op::Publish {
                reuse_id,
                ttl_ms,
                delay_ms,
            } => {
                let id = match reuse_id.and_then(|i| model.ids.get(i).copied()) {
                    Some(id) => id,
                    None => MessageId(1_000 + model.next_serial),
                };
                let serial = model.next_serial;
                let options = PublishOptions {
                    id: Some(id),
                    ttl: ttl_ms.map(Duration::from_millis),
                    delay: delay_ms.map(Duration::from_millis),
                };
                let result = queue.publish_with(&serial.to_le_bytes(), options);
                sweep(&mut model, now); // publish sweeps first
                let duplicate = model
                    .accepted_at
                    .get(&id)
                    .is_some_and(|&at| now < at + WINDOW_MS * MS);
                let occupied = model.count(|p| !matches!(p, Where::Gone));
                let pinned_elsewhere = held
                    .iter()
                    .filter(|h| !matches!(model.messages[&h.serial].place, Where::Leased { lease, .. } if lease == h.lease))
                    .count() as u64;
                match result {
                    Ok(returned) => {
                        assert_eq!(returned, id);
                        assert!(!duplicate, "invariant 4: duplicate {id} accepted");
                        let place = match delay_ms {
                            Some(d) => Where::Delayed { due: now + d * MS },
                            None => Where::Ready,
                        };
                        let expires_at = ttl_ms.map_or(u64::MAX, |t| now + t * MS);
                        model.messages.insert(
                            serial,
                            Message {
                                id,
                                place,
                                attempts: 0,
                                expires_at,
                            },
                        );
                        model.accepted_at.insert(id, now);
                        model.ids.push(id);
                        model.next_serial += 1;
                    }
                    Err(PublishError::Duplicate { .. }) => {
                        assert!(duplicate, "invariant 4: {id} refused as a duplicate")
                    }
                    Err(PublishError::Full { .. }) => assert!(
                        occupied + pinned_elsewhere >= u64::from(CAPACITY),
                        "invariant 5: full with {occupied} messages and {pinned_elsewhere} pins"
                    ),
                    Err(other) => panic!("unexpected {other}"),
                }
            }
            Op::Receive => {
                let received = queue.try_receive();
                sweep(&mut model, now);
                // Expired ready messages met on the way were dead-lettered.
                let dead_now: Vec<u64> = queue
                    .dead_letters()
                    .iter()
                    .map(|d| serial_of(&d.payload))
                    .collect();
                for serial in &dead_now {
                    let message = model.messages.get_mut(serial).unwrap();
                    if message.place == Where::Ready {
                        assert!(
                            now >= message.expires_at,
                            "only expired ready messages die on receive"
                        );
                        message.place = Where::Dead;
                    }
                }
                match received {
                    Some(delivery) => {
                        let serial = serial_of(delivery.payload());
                        let message = model.messages.get_mut(&serial).unwrap();
                        assert_eq!(message.place, Where::Ready, "delivered from ready only");
                        assert!(
                            now < message.expires_at,
                            "invariant 3: delivered after its TTL"
                        );
                        message.attempts += 1;
                        assert_eq!(delivery.attempt(), message.attempts);
                        assert_eq!(delivery.id(), message.id);
                        let lease = model.next_lease;
                        model.next_lease += 1;
                        message.place = Where::Leased {
                            lease,
                            due: now + LEASE_MS * MS,
                        };
                        held.push(Held {
                            delivery,
                            serial,
                            lease,
                        });
                    }
                    None => assert!(
                        model
                            .messages
                            .values()
                            .all(|m| m.place != Where::Ready || now >= m.expires_at),
                        "nothing received while a live message was ready"
                    ),
                }
            }
            Op::Ack(i) | Op::Nack(i) | Op::Reject(i) | Op::Drop(i) | Op::Extend(i) => {
                if held.is_empty() {
                    continue;
                }
                let index = i % held.len();
                let serial = held[index].serial;
                let current = matches!(
                    model.messages[&serial].place,
                    Where::Leased { lease, .. } if lease == held[index].lease
                );
                let message = model.messages.get_mut(&serial).unwrap();
                let failed = |result: Result<(), SettleError>| {
                    assert_eq!(
                        result.is_ok(),
                        current,
                        "invariant 2: settle with a stale receipt"
                    );
                };
                match op {
                    Op::Extend(_) => {
                        failed(
                            held[index]
                                .delivery
                                .extend(Duration::from_millis(EXTEND_MS)),
                        );
                        if let Where::Leased { lease, due } = message.place {
                            if current {
                                // An extend never shortens a lease.
                                message.place = Where::Leased {
                                    lease,
                                    due: due.max(now + EXTEND_MS * MS),
                                };
                            }
                        }
                        continue;
                    }
                    Op::Ack(_) => {
                        failed(held.remove(index).delivery.ack());
                        if current {
                            message.place = Where::Gone;
                            model.acked += 1;
                        }
                    }
                    Op::Reject(_) => {
                        failed(held.remove(index).delivery.reject("bad"));
                        if current {
                            message.place = Where::Dead;
                        }
                    }
                    _ => {
                        let held = held.remove(index);
                        if matches!(op, Op::Nack(_)) {
                            failed(held.delivery.nack("failed"));
                        } else {
                            drop(held.delivery);
                        }
                        if current {
                            message.place = if message.attempts >= MAX_ATTEMPTS {
                                Where::Dead
                            } else {
                                Where::Delayed {
                                    due: now + BACKOFF_MS * MS,
                                }
                            };
                        }
                    }
                }
            }
            Op::Advance(ms) => {
                clock.advance(Duration::from_millis(ms));
                queue.tick();
                sweep(&mut model, clock.now_nanos());
            }
            Op::Redrive => {
                let redriven = queue.redrive() as u64;
                assert_eq!(redriven, model.count(|p| *p == Where::Dead));
                for message in model.messages.values_mut() {
                    if message.place == Where::Dead {
                        message.place = Where::Ready;
                        message.attempts = 0;
                    }
                }
            }
            Op::PopDead => {
                let popped = queue.pop_dead_letter();
                match popped {
                    Some(letter) => {
                        let message = model.messages.get_mut(&serial_of(&letter.payload)).unwrap();
                        assert_eq!(message.place, Where::Dead);
                        if letter.reason == DeadReason::Expired {
                            assert!(now >= message.expires_at);
                        }
                        message.place = Where::Gone;
                    }
                    None => assert_eq!(model.count(|p| *p == Where::Dead), 0),
                }
            }
        }
        // Invariant 1: the queue's gauges and counters agree with the model everywhere.
        let stats = queue.stats();
        assert_eq!(stats.ready, model.count(|p| *p == Where::Ready), "ready");
        assert_eq!(
            stats.delayed,
            model.count(|p| matches!(p, Where::Delayed { .. })),
            "delayed"
        );
        assert_eq!(
            stats.in_flight,
            model.count(|p| matches!(p, Where::Leased { .. })),
            "in flight"
        );
        assert_eq!(stats.dead, model.count(|p| *p == Where::Dead), "dead");
        assert_eq!(stats.acked, model.acked, "acked");
        assert_eq!(stats.published, model.messages.len() as u64);
    }
}

// 256 cases by default; `PROPTEST_CASES=5000 cargo test --test queue_model` for more.
proptest! {
    #[test]
    fn the_queue_follows_its_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops);
    }
}
