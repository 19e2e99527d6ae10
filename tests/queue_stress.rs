//! Multi-threaded stress of the queue, with invariants checked at the end:
//! every published message is acked exactly once or dead-lettered; none is lost; no ack
//! succeeds twice for one message, even though slow consumers lose leases and late-ack.
//!
//! Producers, consumers and a clock thread (advancing a manual clock, so leases and
//! backoffs run out without any sleep) race freely.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use ackring::clock::{Clock, ManualClock};
use ackring::queue::{PublishError, RetryBackoff};
use ackring::{MessageId, PublishOptions, Queue, QueueConfig};

const PRODUCERS: u64 = 2;
const CONSUMERS: u64 = 3;
const PER_PRODUCER: u64 = 3_000;

/// Stops every thread's loop if the thread holding it panics, so a failure fails the test
/// instead of leaving the others waiting for ever.
struct StopAllOnPanic<'a>(&'a AtomicBool);

impl Drop for StopAllOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Release);
        }
    }
}

/// What a consumer does with a delivery, decided by a hash of (id, attempt).
fn choice(id: MessageId, attempt: u32) -> u64 {
    let mut x = id.0 ^ u64::from(attempt).rotate_left(17);
    x = (x ^ (x >> 31)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 40) % 100
}

#[test]
fn every_message_is_acked_once_or_dead_lettered() {
    let clock = ManualClock::new();
    let config = QueueConfig {
        visibility_timeout: Duration::from_millis(50),
        max_attempts: 3,
        backoff: RetryBackoff::Fixed(Duration::from_millis(5)),
        dead_letter_capacity: 64,
        dedup_capacity: 16_384, // every id of the run stays inside the 2-minute window
        ..QueueConfig::new(256, 16)
    };
    let queue = Queue::with_clock(config, clock.clone()).unwrap();
    let acked: Mutex<Vec<MessageId>> = Mutex::new(Vec::new());
    let producers_done = AtomicBool::new(false);
    let all_done = AtomicBool::new(false);

    std::thread::scope(|s| {
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|producer| {
                let (queue, all_done) = (&queue, &all_done);
                s.spawn(move || {
                    let _stop = StopAllOnPanic(all_done);
                    for seq in 0..PER_PRODUCER {
                        if all_done.load(Ordering::Acquire) {
                            return;
                        }
                        let id = MessageId(producer << 32 | seq);
                        let options = PublishOptions {
                            id: Some(id),
                            ..PublishOptions::default()
                        };
                        loop {
                            match queue.publish_with(&seq.to_le_bytes(), options) {
                                Ok(_) => break,
                                Err(PublishError::Full { .. }) => std::thread::yield_now(),
                                Err(other) => panic!("unexpected publish error {other}"),
                            }
                        }
                    }
                })
            })
            .collect();
        for _ in 0..CONSUMERS {
            let (queue, acked, all_done, clock) = (&queue, &acked, &all_done, &clock);
            s.spawn(move || {
                let _stop = StopAllOnPanic(all_done);
                let mut held = Vec::new();
                let mut mine = Vec::new();
                while !all_done.load(Ordering::Acquire) {
                    // Late acks of held deliveries once their lease deadline has passed: they
                    // fail if the sweep already handed the message to someone else.
                    let now = clock.now_nanos();
                    let (late, keep): (Vec<_>, Vec<_>) =
                        held.drain(..)
                            .partition(|d: &ackring::Delivery<'_, ManualClock>| {
                                now > d.lease_deadline()
                            });
                    held = keep;
                    for delivery in late {
                        let id = delivery.id();
                        if delivery.ack().is_ok() {
                            mine.push(id);
                        }
                    }
                    let Some(delivery) = queue.try_receive() else {
                        std::thread::yield_now();
                        continue;
                    };
                    let id = delivery.id();
                    assert_eq!(delivery.payload().len(), 8, "payload intact");
                    match choice(id, delivery.attempt()) {
                        0..=64 => {
                            if delivery.ack().is_ok() {
                                mine.push(id);
                            }
                        }
                        65..=79 => _ = delivery.nack("transient failure"),
                        80..=84 => _ = delivery.reject("poison"),
                        85..=89 => drop(delivery), // counts as a nack
                        _ => held.push(delivery),  // too slow: will likely lose its lease
                    }
                }
                drop(held);
                acked.lock().unwrap().extend(mine);
            });
        }
        // The clock: moves time on while anything is unsettled, then declares the end.
        let (queue, clock, producers_done, all_done) = (&queue, &clock, &producers_done, &all_done);
        let ticker = s.spawn(move || loop {
            if all_done.load(Ordering::Acquire) {
                return; // another thread failed
            }
            clock.advance(Duration::from_millis(1));
            queue.tick();
            let stats = queue.stats();
            let settled = stats.acked + stats.dead_lettered;
            if producers_done.load(Ordering::Acquire)
                && stats.ready + stats.delayed + stats.in_flight == 0
                && settled == stats.published
            {
                all_done.store(true, Ordering::Release);
                return;
            }
            std::thread::yield_now();
        });
        for producer in producers {
            producer.join().unwrap();
        }
        producers_done.store(true, Ordering::Release);
        ticker.join().unwrap();
    });

    let acked = acked.into_inner().unwrap();
    let unique: HashSet<MessageId> = acked.iter().copied().collect();
    assert_eq!(unique.len(), acked.len(), "no message acked twice");
    let stats = queue.stats();
    let published = PRODUCERS * PER_PRODUCER;
    assert_eq!(stats.published, published);
    assert_eq!(stats.acked, acked.len() as u64);
    assert_eq!(
        stats.acked + stats.dead_lettered,
        published,
        "every message acked or dead-lettered: {stats:?}"
    );
    let dead: Vec<MessageId> = queue.dead_letters().into_iter().map(|d| d.id).collect();
    assert_eq!(
        dead.len() as u64 + stats.dead_discarded,
        stats.dead_lettered
    );
    assert!(
        dead.iter().all(|id| !unique.contains(id)),
        "no message both acked and dead"
    );
    eprintln!("{stats:?}");
    assert!(stats.nacked > 0 && stats.dead_lettered > 0);
    assert!(
        stats.redelivered > stats.nacked,
        "some leases ran out: {stats:?}"
    );
}
