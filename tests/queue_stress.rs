//! Multi-threaded stress of the queue, with invariants checked at the end:
//! every published message is acked exactly once or dead-lettered; none is lost; no ack
//! succeeds twice for one message, even though slow consumers lose leases and late-ack.
//!
//! Producers, consumers and a clock thread (advancing a manual clock, so leases and
//! backoffs run out without any sleep, and some messages expire) race freely. Half of the producers publish in
//! batches (`publish_batch_with` with ids, `publish_batch` with generated ones, batches
//! longer than a chunk among them) and retry the part a full queue refused; some consumers
//! receive in batches (`try_receive_batch`, `receive_batch_timeout`) and ack in batches
//! (`ack_batch`, late acks of lost leases among them).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use ackring::clock::{Clock, ManualClock};
use ackring::queue::{BatchAckError, BatchPublishError, PublishError, RetryBackoff};
use ackring::{Delivery, MessageId, PublishOptions, Queue};

/// Producers publishing one message at a time, with ids.
const PRODUCERS: u64 = 2;
/// Producers publishing in batches: even ones with ids, odd ones with generated ids.
const BATCH_PRODUCERS: u64 = 2;
const CONSUMERS: u64 = 3;
/// Consumers receiving in batches: even ones with `try_receive_batch`, odd ones with
/// `receive_batch_timeout`.
const BATCH_CONSUMERS: u64 = 2;
const PER_PRODUCER: u64 = 3_000;
/// How long the run may take before the test fails (see the ticker).
const WATCHDOG: Duration = Duration::from_secs(300);
/// Batches are 1 to this many messages long, and batch receives ask for as many.
const MAX_BATCH: u64 = 40;

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

/// A batch length or `max` for round `round` of a thread: 1 to `MAX_BATCH`.
fn batch_len(thread: u64, round: u64) -> u64 {
    let mut x = thread << 32 ^ round;
    x = (x ^ (x >> 31)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    1 + (x >> 40) % MAX_BATCH
}

/// Every message's payload: its producer and sequence number. Producers that give ids give
/// this as the id too.
fn key(producer: u64, seq: u64) -> u64 {
    producer << 32 | seq
}

/// Whether `producer` leaves its ids to the queue.
fn generates_ids(producer: u64) -> bool {
    producer >= PRODUCERS && (producer - PRODUCERS) % 2 == 1
}

/// Checks a delivery's payload against its id; returns the message's key.
fn key_of(delivery: &Delivery<'_, ManualClock>) -> u64 {
    let payload = delivery.payload();
    assert_eq!(payload.len(), 8, "payload intact");
    let key = u64::from_le_bytes(payload.try_into().unwrap());
    let (producer, seq) = (key >> 32, key & 0xffff_ffff);
    assert!(
        producer < PRODUCERS + BATCH_PRODUCERS && seq < PER_PRODUCER,
        "payload {key:#x} was never published"
    );
    if !generates_ids(producer) {
        assert_eq!(delivery.id(), MessageId(key), "payload under its own id");
    }
    key
}

/// One consumer's doings: deliveries it sat on past their lease, the (id, key) of each
/// message it acked, and the deliveries it got (first ones and redeliveries).
#[derive(Default)]
struct Consumer<'q> {
    /// Acks with `ack_batch`: `ack` collects deliveries in `to_ack`, `flush_acks` acks them.
    batch_acks: bool,
    to_ack: Vec<Delivery<'q, ManualClock>>,
    held: Vec<Delivery<'q, ManualClock>>,
    acked: Vec<(MessageId, u64)>,
    delivered: u64,
    redelivered: u64,
}

impl<'q> Consumer<'q> {
    /// Late acks of held deliveries once their lease deadline has passed: they fail if the
    /// sweep already handed the message to someone else.
    fn ack_late(&mut self, queue: &'q Queue<ManualClock>, now: u64) {
        let (late, keep): (Vec<_>, Vec<_>) =
            self.held.drain(..).partition(|d| now > d.lease_deadline());
        self.held = keep;
        for delivery in late {
            self.ack(delivery);
        }
        self.flush_acks(queue);
    }

    fn ack(&mut self, delivery: Delivery<'q, ManualClock>) {
        if self.batch_acks {
            self.to_ack.push(delivery);
            return;
        }
        let (id, key) = (delivery.id(), key_of(&delivery));
        if delivery.ack().is_ok() {
            self.acked.push((id, key));
        }
    }

    /// Acks what `ack` collected, with one `ack_batch`: all but those it names as lost.
    fn flush_acks(&mut self, queue: &'q Queue<ManualClock>) {
        if self.to_ack.is_empty() {
            return;
        }
        let sent: Vec<(MessageId, u64)> = self.to_ack.iter().map(|d| (d.id(), key_of(d))).collect();
        let lost = match queue.ack_batch(self.to_ack.drain(..)) {
            Ok(()) => Vec::new(),
            Err(BatchAckError { lost }) => {
                assert!(!lost.is_empty(), "an ack_batch error names no lost lease");
                lost
            }
        };
        // The lost ones are named in batch order. (One message may be in a batch twice:
        // a late ack of a lost lease, and of its later lease.)
        let mut named = lost.iter().peekable();
        for (id, key) in sent {
            if named.peek() == Some(&&id) {
                named.next();
            } else {
                self.acked.push((id, key));
            }
        }
        assert_eq!(
            named.next(),
            None,
            "lost leases named out of batch order: {lost:?}"
        );
    }

    fn handle(&mut self, delivery: Delivery<'q, ManualClock>) {
        let id = delivery.id();
        key_of(&delivery); // checks the payload
        self.delivered += 1;
        if delivery.attempt() > 1 {
            self.redelivered += 1;
        }
        match choice(id, delivery.attempt()) {
            0..=64 => self.ack(delivery),
            65..=79 => _ = delivery.nack("transient failure"),
            80..=84 => _ = delivery.reject("poison"),
            85..=89 => drop(delivery),     // counts as a nack
            _ => self.held.push(delivery), // too slow: will likely lose its lease
        }
    }
}

/// What the consumers did, all together.
#[derive(Default)]
struct Tally {
    acked: Vec<(MessageId, u64)>,
    delivered: u64,
    redelivered: u64,
}

impl Tally {
    fn add(&mut self, consumer: Consumer<'_>) {
        self.acked.extend(consumer.acked);
        self.delivered += consumer.delivered;
        self.redelivered += consumer.redelivered;
    }
}

/// Publishes producer `producer`'s messages one at a time.
fn produce(queue: &Queue<ManualClock>, producer: u64, all_done: &AtomicBool) {
    for seq in 0..PER_PRODUCER {
        let key = key(producer, seq);
        let options = PublishOptions {
            id: Some(MessageId(key)),
            // Some live a millisecond: the clock thread's timer runs take them off the head
            // of the queue while consumers receive.
            ttl: seq.is_multiple_of(5).then_some(Duration::from_millis(1)),
            ..PublishOptions::default()
        };
        loop {
            if all_done.load(Ordering::Acquire) {
                return;
            }
            match queue.try_publish_with(&key.to_le_bytes(), options) {
                Ok(_) => break,
                Err(PublishError::Full { .. }) => std::thread::yield_now(),
                Err(other) => panic!("unexpected publish error {other}"),
            }
        }
    }
}

/// Publishes producer `producer`'s messages in batches of 1 to `MAX_BATCH`; of a batch a
/// full queue cut short, publishes the rest again, from the first message not published.
/// (Dedup makes an overcount visible: the rest would hold a duplicate id, or, with
/// generated ids, a message published twice. An undercount loses messages.)
fn produce_batches(queue: &Queue<ManualClock>, producer: u64, all_done: &AtomicBool) {
    let mut seq = 0;
    let mut round = 0;
    while seq < PER_PRODUCER {
        round += 1;
        let len = batch_len(producer, round).min(PER_PRODUCER - seq);
        let payloads: Vec<[u8; 8]> = (seq..seq + len)
            .map(|seq| key(producer, seq).to_le_bytes())
            .collect();
        let messages: Vec<([u8; 8], PublishOptions)> = payloads
            .iter()
            .map(|payload| {
                let options = PublishOptions {
                    id: Some(MessageId(u64::from_le_bytes(*payload))),
                    ..PublishOptions::default()
                };
                (*payload, options)
            })
            .collect();
        let mut sent = 0;
        while sent < payloads.len() {
            if all_done.load(Ordering::Acquire) {
                return;
            }
            let result = if generates_ids(producer) {
                queue.try_publish_batch(&payloads[sent..])
            } else {
                queue.try_publish_batch_with(&messages[sent..])
            };
            match result {
                Ok(()) => sent = payloads.len(),
                Err(BatchPublishError {
                    published,
                    error: PublishError::Full { .. },
                }) => {
                    assert!(
                        published < payloads.len() - sent,
                        "a refused batch of {} published {published}",
                        payloads.len() - sent
                    );
                    sent += published;
                    std::thread::yield_now();
                }
                Err(other) => panic!("unexpected batch publish error {other}"),
            }
        }
        seq += len;
    }
}

#[test]
fn every_message_is_acked_once_or_dead_lettered() {
    let clock = ManualClock::new();
    let queue = Queue::builder(256, 16)
        .visibility_timeout(Duration::from_millis(50))
        .max_attempts(3)
        .backoff(RetryBackoff::Fixed(Duration::from_millis(5)))
        .dead_letter_capacity(64)
        .dedup_capacity(16_384) // every id of the run stays inside the 2-minute window
        .build_with_clock(clock.clone())
        .unwrap();
    let tally: Mutex<Tally> = Mutex::default();
    let batch_received = AtomicU64::new(0);
    let producers_done = AtomicBool::new(false);
    let all_done = AtomicBool::new(false);

    std::thread::scope(|s| {
        let producers: Vec<_> = (0..PRODUCERS + BATCH_PRODUCERS)
            .map(|producer| {
                let (queue, all_done) = (&queue, &all_done);
                s.spawn(move || {
                    let _stop = StopAllOnPanic(all_done);
                    if producer < PRODUCERS {
                        produce(queue, producer, all_done);
                    } else {
                        produce_batches(queue, producer, all_done);
                    }
                })
            })
            .collect();
        for _ in 0..CONSUMERS {
            let (queue, tally, all_done, clock) = (&queue, &tally, &all_done, &clock);
            s.spawn(move || {
                let _stop = StopAllOnPanic(all_done);
                let mut consumer = Consumer::default();
                while !all_done.load(Ordering::Acquire) {
                    consumer.ack_late(queue, clock.now_nanos());
                    let Some(delivery) = queue.try_receive() else {
                        std::thread::yield_now();
                        continue;
                    };
                    consumer.handle(delivery);
                }
                consumer.held.clear();
                tally.lock().unwrap().add(consumer);
            });
        }
        for batch_consumer in 0..BATCH_CONSUMERS {
            let (queue, tally, all_done, clock) = (&queue, &tally, &all_done, &clock);
            let batch_received = &batch_received;
            s.spawn(move || {
                let _stop = StopAllOnPanic(all_done);
                let mut consumer = Consumer {
                    batch_acks: true,
                    ..Consumer::default()
                };
                let mut batch = Vec::new();
                let mut round = 0;
                while !all_done.load(Ordering::Acquire) {
                    consumer.ack_late(queue, clock.now_nanos());
                    round += 1;
                    let max = batch_len(batch_consumer, round) as usize;
                    let received = if batch_consumer % 2 == 0 {
                        queue.try_receive_batch(&mut batch, max)
                    } else {
                        // Gives up after 1 ms of real time so that the end is noticed.
                        queue.receive_batch_timeout(&mut batch, max, Duration::from_millis(1))
                    };
                    assert_eq!(received, batch.len(), "returns how many it appended");
                    assert!(received <= max, "received {received} of at most {max}");
                    if received == 0 {
                        std::thread::yield_now();
                        continue;
                    }
                    batch_received.fetch_add(received as u64, Ordering::Relaxed);
                    for delivery in batch.drain(..) {
                        consumer.handle(delivery);
                    }
                    consumer.flush_acks(queue);
                }
                consumer.held.clear();
                tally.lock().unwrap().add(consumer);
            });
        }
        // The clock: moves time on while anything is unsettled, then declares the end.
        let (queue, clock, producers_done, all_done) = (&queue, &clock, &producers_done, &all_done);
        // A lost message would leave the end never reached: the watchdog turns that hang
        // into a failure (a run takes seconds; this is minutes, for a loaded machine).
        let give_up = std::time::Instant::now() + WATCHDOG;
        let ticker = s.spawn(move || loop {
            if all_done.load(Ordering::Acquire) {
                return; // another thread failed
            }
            clock.advance(Duration::from_millis(1));
            queue.tick();
            let stats = queue.stats();
            if std::time::Instant::now() > give_up {
                all_done.store(true, Ordering::Release); // the others stop too
                panic!("not every message settled within {WATCHDOG:?}: {stats:?}");
            }
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

    let Tally {
        acked,
        delivered,
        redelivered,
    } = tally.into_inner().unwrap();
    let unique: HashSet<MessageId> = acked.iter().map(|&(id, _)| id).collect();
    assert_eq!(unique.len(), acked.len(), "no message acked twice");
    let unique_keys: HashSet<u64> = acked.iter().map(|&(_, key)| key).collect();
    assert_eq!(
        unique_keys.len(),
        acked.len(),
        "no payload acked twice (a batch publish repeated a message)"
    );
    let stats = queue.stats();
    let published = (PRODUCERS + BATCH_PRODUCERS) * PER_PRODUCER;
    assert_eq!(stats.published, published);
    assert_eq!(stats.acked, acked.len() as u64);
    assert_eq!(
        (stats.delivered, stats.redelivered),
        (delivered, redelivered),
        "deliveries counted as consumers got them"
    );
    assert_eq!(
        stats.acked + stats.dead_lettered,
        published,
        "every message acked or dead-lettered: {stats:?}"
    );
    let dead = queue.dead_letters();
    assert_eq!(
        dead.len() as u64 + stats.dead_discarded,
        stats.dead_lettered
    );
    assert!(
        dead.iter().all(|letter| !unique.contains(&letter.id)),
        "no message both acked and dead"
    );
    assert!(
        dead.iter().all(|letter| {
            let key = u64::from_le_bytes(letter.payload.as_slice().try_into().unwrap());
            !unique_keys.contains(&key)
        }),
        "no payload both acked and dead"
    );
    eprintln!("{stats:?}");
    assert!(stats.nacked > 0 && stats.dead_lettered > 0 && stats.expired > 0);
    assert!(
        stats.redelivered > stats.nacked,
        "some leases ran out: {stats:?}"
    );
    assert!(
        batch_received.into_inner() > 0,
        "the batch consumers received nothing"
    );
}
