//! Batches: many messages published, or received, in one call.
//!
//! A batch does once what single calls do for every message (read the clock, look at the
//! timers, wake sleepers, count) and overlaps the cache misses of its messages: it takes the
//! tokens of up to [`CHUNK`] messages from a ring first, so that their slot headers,
//! payload lines and dedup stripes load together, and only then fills or leases each in
//! turn. Every message still moves by the same single-word CASes as in a single call, so
//! batches and single calls mix freely, in one process or across processes.

use std::time::{Duration, Instant};

use crate::base::clock::Clock;
use crate::base::id::MessageId;
use crate::engine::counters::Counter;
use crate::engine::dedup::LOCK_PATIENCE;
use crate::engine::index_ring::IndexRing;
use crate::error::{BatchAckError, BatchPublishError, PublishError, SettleError};
use crate::liveness::SleepsOn;
use crate::queue::publish::{Outgoing, PublishOptions};
use crate::queue::receive::Lease;
use crate::queue::slot_moves::split;
use crate::queue::waiting::{Change, Wakes};
use crate::queue::{Delivery, Queue};

/// Messages a batch takes from a ring before working on them: enough to overlap their
/// misses, few enough that their lines stay in the first-level cache.
const CHUNK: usize = 16;

impl<C: Clock> Queue<C> {
    /// Publishes `payloads` in order, each with a generated id, as
    /// [`publish`](Self::publish) would one by one, at a fraction of the cost per message.
    /// Each message is confirmed as it is queued: consumers may receive the first ones
    /// before the call returns.
    ///
    /// ```
    /// use ackring::{Queue, QueueConfig};
    ///
    /// let queue = Queue::new(QueueConfig::new(64, 32))?;
    /// queue.publish_batch(&[b"a".as_slice(), b"b", b"c"])?;
    ///
    /// let mut deliveries = Vec::new();
    /// assert_eq!(queue.try_receive_batch(&mut deliveries, 16), 3);
    /// for delivery in deliveries.drain(..) {
    ///     delivery.ack()?;
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// A full queue is waited on as in `publish`, as long as it takes.
    ///
    /// # Errors
    /// [`BatchPublishError`] at the first message that could not be published (see
    /// [`PublishError`]): the messages before it stay published, it and the ones after it
    /// were not.
    pub fn publish_batch<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<(), BatchPublishError> {
        self.publish_all(defaults(payloads), Some(Duration::MAX))
    }

    /// Publishes `messages` in order, each with its own [`PublishOptions`] (id, TTL,
    /// delay), as [`publish_with`](Self::publish_with) would one by one.
    ///
    /// # Errors
    /// As [`publish_batch`](Self::publish_batch).
    pub fn publish_batch_with<P: AsRef<[u8]>>(
        &self,
        messages: &[(P, PublishOptions)],
    ) -> Result<(), BatchPublishError> {
        self.publish_all(with_options(messages), Some(Duration::MAX))
    }

    /// [`publish_batch`](Self::publish_batch), never waiting: the batch stops at the first
    /// message that finds the queue full.
    ///
    /// # Errors
    /// As [`publish_batch`](Self::publish_batch); a full queue is
    /// [`PublishError::Full`] for the message that found it full.
    pub fn try_publish_batch<P: AsRef<[u8]>>(
        &self,
        payloads: &[P],
    ) -> Result<(), BatchPublishError> {
        self.publish_all(defaults(payloads), None)
    }

    /// [`publish_batch_with`](Self::publish_batch_with), never waiting (see
    /// [`try_publish_batch`](Self::try_publish_batch)).
    ///
    /// # Errors
    /// As [`try_publish_batch`](Self::try_publish_batch).
    pub fn try_publish_batch_with<P: AsRef<[u8]>>(
        &self,
        messages: &[(P, PublishOptions)],
    ) -> Result<(), BatchPublishError> {
        self.publish_all(with_options(messages), None)
    }

    /// Publishes `messages`, waiting for room up to `wait` each time none is free (`None`:
    /// not at all).
    fn publish_all<'p>(
        &self,
        mut messages: impl Iterator<Item = (&'p [u8], PublishOptions)>,
        wait: Option<Duration>,
    ) -> Result<(), BatchPublishError> {
        let mut published = 0;
        // Admitted messages waiting for slots are `outgoing[..pending]`; an admission error
        // ends the batch once they are in.
        let mut outgoing = [Outgoing::NONE; CHUNK];
        let mut pending = 0;
        let mut refused = None;
        let mut slots = [(0u32, 0u32); CHUNK];
        loop {
            let mut now = self.now();
            self.run_timers(now);
            while pending < CHUNK && refused.is_none() {
                let Some((payload, options)) = messages.next() else {
                    break;
                };
                self.prefetch_dedup_stripe(&options, false);
                match self.admit(payload, &options) {
                    Ok(ttl) => {
                        outgoing[pending] = self.outgoing(payload, options, ttl);
                        pending += 1;
                    }
                    Err(error) => refused = Some(error),
                }
            }
            if pending == 0 {
                break refused.map_or(Ok(()), |error| Err(BatchPublishError { published, error }));
            }
            let mut claimed = self.claim_free_slots(&mut slots[..pending]);
            if claimed == 0 {
                // None free: wait if the caller does, holding no slot meanwhile (a batch
                // that held slots while it waited could wait on itself).
                let Some(slot) = self.claim_free_slot_or_wait(&mut now, wait) else {
                    let error = PublishError::Full {
                        capacity: self.config.capacity,
                    };
                    break Err(BatchPublishError { published, error });
                };
                slots[0] = slot;
                claimed = 1;
            }
            let mut failed = None;
            let mut ready = [0u32; CHUNK];
            let mut readied = 0;
            let mut published_now = 0;
            for index in 0..claimed {
                // Batches wait for room as long as it takes, or not at all.
                let patience = wait.map_or(Duration::ZERO, |_| LOCK_PATIENCE);
                match self.fill(slots[index], &outgoing[index], now, patience) {
                    Ok(token) => {
                        if let Some(token) = token {
                            ready[readied] = token;
                            readied += 1;
                        }
                        published_now += 1;
                    }
                    Err(error) => {
                        for &unused in &slots[index + 1..claimed] {
                            self.abandon_claim(unused);
                        }
                        failed = Some(error);
                        break;
                    }
                }
            }
            if readied > 0 {
                // (Delayed ones woke the sleepers as their timers went in.)
                self.push_tokens(self.ready(), &ready[..readied]);
                self.notify(Change::Pushed(Wakes::Receivers));
            }
            // Counted chunk by chunk: the caller's `AsRef` may panic before the end.
            self.counters()
                .add(Counter::Published, published_now as u64);
            published += published_now;
            if let Some(error) = failed {
                break Err(BatchPublishError { published, error });
            }
            outgoing.copy_within(claimed..pending, 0);
            pending -= claimed;
        }
    }

    /// Claims free slots for up to `slots.len()` messages into `slots`, never waiting;
    /// returns how many. Pops the tokens first, so that the slots' lines load together.
    fn claim_free_slots(&self, slots: &mut [(u32, u32)]) -> usize {
        let mut tokens = [0u32; CHUNK];
        let popped = self.pop_tokens(self.free(), &mut tokens[..slots.len().min(CHUNK)]);
        let mut claimed = 0;
        for &free in &tokens[..popped] {
            if let Some(slot) = self.claim_token(free) {
                slots[claimed] = slot;
                claimed += 1;
            }
        }
        claimed
    }

    /// Receives up to `max` ready messages, oldest first, as [`try_receive`](Self::try_receive)
    /// would one by one, and appends them to `out`; returns how many. Never waits.
    ///
    /// Reuse `out` across calls: once it has grown, a batch allocates nothing.
    pub fn try_receive_batch<'q>(&'q self, out: &mut Vec<Delivery<'q, C>>, max: usize) -> usize {
        let mut now = self.run_timers_then_now();
        let mut received = 0;
        let mut tokens = [0u32; CHUNK];
        let mut pinned = false;
        while received < max && !pinned {
            let wanted = (max - received).min(CHUNK);
            let popped = self.pop_tokens(self.ready(), &mut tokens[..wanted]);
            for &ready in &tokens[..popped] {
                match self.lease(ready, now) {
                    Lease::Taken(delivery) => {
                        out.push(delivery);
                        received += 1;
                    }
                    Lease::Skipped => {}
                    // Rare (255 live deliveries of one slot): its token went back to the
                    // ready ring; the rest of the chunk is leased (in order), then we stop.
                    Lease::Pinned => pinned = true,
                }
            }
            if popped < wanted {
                break; // the ring ran dry
            }
            now = self.now(); // TTLs and leases of the next chunk by the clock of now
        }
        self.counters().add(Counter::Delivered, received as u64);
        received
    }

    /// Acks every delivery, as [`Delivery::ack`] would one by one, at a lower cost per
    /// message: the freed slots go back to the free ring in groups of up to 16 as the
    /// batch goes on (all of them by the time it returns), and are counted once.
    ///
    /// # Errors
    /// [`BatchAckError`] naming the messages whose lease ran out first: those were not
    /// acked (they go, or went, to another delivery); every other one was.
    pub fn ack_batch<'q>(
        &'q self,
        deliveries: impl IntoIterator<Item = Delivery<'q, C>>,
    ) -> Result<(), BatchAckError> {
        // The iterator is the caller's code and may panic: the guard returns the slots freed
        // so far (and counts their acks) however this call ends.
        let mut freed = FreedSlots {
            queue: self,
            tokens: [0; CHUNK],
            pending: 0,
            acked: 0,
        };
        let mut lost = Vec::new();
        for delivery in deliveries {
            if !delivery.is_from(self) {
                // Another queue's: settled by its own queue.
                if let Err(SettleError::LeaseLost { id }) = delivery.ack() {
                    lost.push(id);
                }
                continue;
            }
            match delivery.ack_quietly() {
                Ok(free) => freed.add(free),
                Err(SettleError::LeaseLost { id }) => lost.push(id),
            }
        }
        drop(freed);
        if lost.is_empty() {
            Ok(())
        } else {
            Err(BatchAckError { lost })
        }
    }

    /// Pops up to `tokens.len()` tokens from `ring` (consecutive ones with one CAS each and
    /// one cursor move) and starts loading their slots; returns how many.
    fn pop_tokens(&self, ring: IndexRing<'_>, tokens: &mut [u32]) -> usize {
        // A corrupt ring (only another process could make one) reads as empty.
        let popped = ring.try_pop_many(tokens).unwrap_or(0);
        for &token in &tokens[..popped] {
            self.store().prefetch(split(token).0);
        }
        popped
    }

    /// Pushes tokens to `ring` in order (consecutive ones with one CAS each and one cursor
    /// move). The free and ready rings have a place for every slot, so all go in.
    fn push_tokens(&self, ring: IndexRing<'_>, mut tokens: &[u32]) {
        while !tokens.is_empty() {
            match ring.try_push_many(tokens) {
                Ok(pushed) if pushed > 0 => tokens = &tokens[pushed..],
                _ => {
                    // Only a corrupt ring refuses (another process wrote it).
                    self.invariant(false, "the free and ready rings hold every slot");
                    return;
                }
            }
        }
    }

    /// Returns freed slots' tokens to the free ring, and wakes publishers waiting for room.
    fn push_free_tokens(&self, tokens: &[u32]) {
        if !tokens.is_empty() {
            self.push_tokens(self.free(), tokens);
            self.notify(Change::Pushed(Wakes::Publishers));
        }
    }

    /// Receives up to `max` messages into `out` as [`try_receive_batch`](Self::try_receive_batch),
    /// first waiting as long as it takes for one to become ready (as
    /// [`receive`](Self::receive) waits). Returns how many: at least one, unless `max` is 0.
    pub fn receive_batch<'q>(&'q self, out: &mut Vec<Delivery<'q, C>>, max: usize) -> usize {
        loop {
            let received = self.receive_batch_timeout(out, max, Duration::from_secs(3600));
            if received > 0 || max == 0 {
                return received;
            }
        }
    }

    /// [`receive_batch`](Self::receive_batch), waiting until `deadline` at the latest.
    /// Returns how many; 0 if none came.
    pub fn receive_batch_deadline<'q>(
        &'q self,
        out: &mut Vec<Delivery<'q, C>>,
        max: usize,
        deadline: Instant,
    ) -> usize {
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.receive_batch_timeout(out, max, timeout)
    }

    /// Receives up to `max` messages into `out` as [`try_receive_batch`](Self::try_receive_batch),
    /// first waiting up to `timeout` of real time for one to become ready (as
    /// [`receive_timeout`](Self::receive_timeout) waits). Returns how many; 0 if none came.
    pub fn receive_batch_timeout<'q>(
        &'q self,
        out: &mut Vec<Delivery<'q, C>>,
        max: usize,
        timeout: Duration,
    ) -> usize {
        if max == 0 {
            return self.try_receive_batch(out, 0); // runs the timers, as with a larger max
        }
        self.wait_until(SleepsOn::Ready, timeout, || {
            let received = self.try_receive_batch(out, max);
            (received > 0).then_some(received)
        })
        .unwrap_or(0)
    }
}

/// A batch of payloads, each with the default options.
fn defaults<P: AsRef<[u8]>>(payloads: &[P]) -> impl Iterator<Item = (&[u8], PublishOptions)> {
    payloads
        .iter()
        .map(|payload| (payload.as_ref(), PublishOptions::default()))
}

/// A batch of payloads with their options.
fn with_options<P: AsRef<[u8]>>(
    messages: &[(P, PublishOptions)],
) -> impl Iterator<Item = (&[u8], PublishOptions)> {
    messages
        .iter()
        .map(|(payload, options)| (payload.as_ref(), *options))
}

/// Slots an [`ack_batch`](Queue::ack_batch) freed, going back to the free ring a chunk at a
/// time; the rest, and the count of acks, when dropped.
struct FreedSlots<'q, C: Clock> {
    queue: &'q Queue<C>,
    tokens: [u32; CHUNK],
    pending: usize,
    acked: u64,
}

impl<C: Clock> FreedSlots<'_, C> {
    /// One ack done; `free` is its slot's token if the slot goes back now.
    fn add(&mut self, free: Option<u32>) {
        self.acked += 1;
        if let Some(free) = free {
            self.tokens[self.pending] = free;
            self.pending += 1;
            if self.pending == CHUNK {
                self.queue.push_free_tokens(&self.tokens);
                self.pending = 0;
            }
        }
    }
}

impl<C: Clock> Drop for FreedSlots<'_, C> {
    fn drop(&mut self) {
        let queue = self.queue;
        queue.push_free_tokens(&self.tokens[..self.pending]);
        queue.counters().add(Counter::Acked, self.acked);
    }
}

impl Outgoing<'_> {
    /// A placeholder for the unused places of a chunk.
    const NONE: Self = Outgoing {
        id: MessageId(0),
        remembered: false,
        payload: &[],
        ttl: None,
        delay: None,
    };
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::base::clock::ManualClock;
    use crate::queue::QueueConfig;

    fn queue(capacity: u32) -> (Queue<ManualClock>, ManualClock) {
        let clock = ManualClock::new();
        let queue = Queue::with_clock(QueueConfig::new(capacity, 16), clock.clone()).unwrap();
        (queue, clock)
    }

    fn payloads(range: std::ops::Range<u32>) -> Vec<Vec<u8>> {
        range.map(|n| n.to_le_bytes().to_vec()).collect()
    }

    fn with_id(payload: &[u8], id: u64) -> (&[u8], PublishOptions) {
        let options = PublishOptions {
            id: Some(MessageId(id)),
            ..PublishOptions::default()
        };
        (payload, options)
    }

    /// Receives everything ready in batches of `max`, acks it, returns the payloads.
    fn drain(queue: &Queue<ManualClock>, max: usize) -> Vec<Vec<u8>> {
        let mut received = Vec::new();
        let mut batch = Vec::new();
        while queue.try_receive_batch(&mut batch, max) > 0 {
            assert!(
                batch.len() <= max,
                "{} deliveries for a batch of {max}",
                batch.len()
            );
            for delivery in batch.drain(..) {
                received.push(delivery.payload().to_vec());
                delivery.ack().unwrap();
            }
        }
        received
    }

    #[test]
    fn batches_longer_than_a_chunk_go_round_in_fifo_order() {
        let (queue, _) = queue(64);
        let sent = payloads(0..(3 * CHUNK as u32 + 5));
        queue.try_publish_batch(&sent).unwrap();
        assert_eq!(drain(&queue, 7), sent);
        let stats = queue.stats();
        assert_eq!(stats.published, sent.len() as u64);
        assert_eq!(
            (stats.delivered, stats.acked),
            (stats.published, stats.published)
        );
        assert_eq!((stats.ready, stats.in_flight), (0, 0));
    }

    #[test]
    fn a_full_queue_stops_the_batch_after_the_messages_that_fit() {
        let (queue, _) = queue(20);
        let sent = payloads(0..30);
        let refused = queue.try_publish_batch(&sent).unwrap_err();
        assert_eq!(
            refused,
            BatchPublishError {
                published: 20,
                error: PublishError::Full { capacity: 20 },
            }
        );
        assert_eq!(drain(&queue, 64), sent[..20]);
        // No slot was kept by the refused part: the whole capacity takes a batch again.
        queue.try_publish_batch(&sent[..20]).unwrap();
        assert_eq!(queue.stats().ready, 20);
    }

    #[test]
    fn a_duplicate_stops_the_batch_and_frees_the_slots_it_had_claimed() {
        let (queue, _) = queue(8);
        let batch = [
            with_id(b"one", 1),
            with_id(b"two", 2),
            with_id(b"two again", 2),
            with_id(b"three", 3),
        ];
        assert_eq!(
            queue.try_publish_batch_with(&batch),
            Err(BatchPublishError {
                published: 2,
                error: PublishError::Duplicate { id: MessageId(2) },
            })
        );
        assert_eq!(drain(&queue, 8), [b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(queue.stats().duplicates, 1);
        // "three" was never tried: its id is free, and every slot is free.
        let fill: Vec<_> = (3..11).map(|id| with_id(b"fill", id)).collect();
        queue.try_publish_batch_with(&fill).unwrap();
        assert_eq!(queue.stats().ready, 8);
    }

    #[test]
    fn a_bad_payload_past_the_first_chunk_stops_the_batch_there() {
        let (queue, _) = queue(64);
        let mut sent = payloads(0..40);
        let bad_at = CHUNK + 4;
        sent[bad_at] = vec![0; 17];
        assert_eq!(
            queue.try_publish_batch(&sent),
            Err(BatchPublishError {
                published: bad_at,
                error: PublishError::PayloadTooLarge { len: 17, max: 16 },
            })
        );
        assert_eq!(drain(&queue, 64), sent[..bad_at]);
        assert_eq!(queue.stats().published, bad_at as u64);
    }

    #[test]
    fn a_batch_receive_leases_each_message_and_dead_letters_the_expired() {
        let (queue, clock) = queue(8);
        let short = PublishOptions {
            ttl: Some(Duration::from_millis(5)),
            ..PublishOptions::default()
        };
        let long = PublishOptions {
            ttl: Some(Duration::from_secs(60)),
            ..PublishOptions::default()
        };
        let delayed = PublishOptions {
            delay: Some(Duration::from_secs(1)),
            ..PublishOptions::default()
        };
        let batch = [(b"a", long), (b"b", short), (b"c", long), (b"d", delayed)];
        queue.try_publish_batch_with(&batch).unwrap();
        clock.advance(Duration::from_millis(10));
        let mut deliveries = Vec::new();
        assert_eq!(queue.try_receive_batch(&mut deliveries, 8), 2);
        let received: Vec<_> = deliveries.iter().map(|d| d.payload().to_vec()).collect();
        assert_eq!(received, [b"a".to_vec(), b"c".to_vec()]);
        assert!(deliveries.iter().all(|d| d.attempt() == 1));
        let letters = queue.dead_letters();
        assert_eq!(letters.len(), 1);
        assert_eq!(
            (letters[0].payload.as_slice(), letters[0].reason),
            (b"b".as_slice(), crate::queue::DeadReason::Expired)
        );
        // Leased, never settled (a consumer that vanished): the leases run out and both
        // come back, attempt 2, along with the delayed one (all due in one timer run, in
        // no promised order).
        deliveries.into_iter().for_each(std::mem::forget);
        clock.advance(Duration::from_secs(31));
        let mut again = Vec::new();
        assert_eq!(queue.try_receive_batch(&mut again, 8), 3);
        let mut attempts: Vec<_> = again
            .iter()
            .map(|d| (d.payload().to_vec(), d.attempt()))
            .collect();
        attempts.sort();
        assert_eq!(
            attempts,
            [(b"a".to_vec(), 2), (b"c".to_vec(), 2), (b"d".to_vec(), 1)]
        );
    }

    #[test]
    fn a_batch_ack_frees_every_slot_and_names_the_leases_it_lost() {
        let (queue, clock) = queue(4);
        queue.try_publish_batch(&payloads(0..2)).unwrap();
        let mut late = Vec::new();
        assert_eq!(queue.try_receive_batch(&mut late, 2), 2);
        let late_ids: Vec<_> = late.iter().map(Delivery::id).collect();
        clock.advance(Duration::from_secs(31)); // their leases run out
        queue.tick();
        queue.try_publish_batch(&payloads(2..4)).unwrap();
        let mut batch = Vec::new();
        // The two redelivered messages (ready since the tick), then the two fresh ones.
        assert_eq!(queue.try_receive_batch(&mut batch, 4), 4);
        let fresh = batch.split_off(2);
        let redelivered = batch;
        assert!(redelivered.iter().all(|d| d.attempt() == 2));
        let mut settling = late;
        settling.extend(fresh);
        assert_eq!(
            queue.ack_batch(settling),
            Err(BatchAckError { lost: late_ids })
        );
        assert_eq!(queue.stats().acked, 2);
        queue.ack_batch(redelivered).unwrap();
        let stats = queue.stats();
        assert_eq!((stats.acked, stats.in_flight, stats.ready), (4, 0, 0));
        // Every slot came back: the whole capacity takes a batch again.
        queue.try_publish_batch(&payloads(0..4)).unwrap();
    }

    #[test]
    fn a_batch_ack_cut_short_by_a_panicking_iterator_still_frees_what_it_acked() {
        let (queue, _) = queue(4);
        queue.try_publish_batch(&payloads(0..4)).unwrap();
        let mut deliveries = Vec::new();
        assert_eq!(queue.try_receive_batch(&mut deliveries, 4), 4);
        let cut_short = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut deliveries = deliveries.into_iter();
            queue.ack_batch(std::iter::from_fn(|| {
                let next = deliveries.next();
                assert!(next.is_some(), "the caller's iterator panics at its end");
                next
            }))
        }));
        assert!(cut_short.is_err());
        let stats = queue.stats();
        assert_eq!((stats.acked, stats.in_flight), (4, 0));
        // All four slots came back to the free ring.
        queue.try_publish_batch(&payloads(0..4)).unwrap();
    }

    #[test]
    fn a_batch_ack_settles_another_queues_deliveries_on_that_queue() {
        let (mine, _) = queue(2);
        let (other, _) = queue(2);
        other.try_publish(b"theirs").unwrap();
        let delivery = other.try_receive().unwrap();
        mine.ack_batch([delivery]).unwrap();
        assert_eq!((other.stats().acked, mine.stats().acked), (1, 0));
    }

    #[test]
    fn a_batch_receive_takes_no_more_than_asked() {
        let (queue, _) = queue(8);
        queue.try_publish_batch(&payloads(0..5)).unwrap();
        let mut deliveries = Vec::new();
        assert_eq!(queue.try_receive_batch(&mut deliveries, 0), 0);
        assert_eq!(queue.try_receive_batch(&mut deliveries, 3), 3);
        assert_eq!(queue.try_receive_batch(&mut deliveries, 3), 2);
        assert_eq!(deliveries.len(), 5);
        assert_eq!(queue.stats().in_flight, 5);
    }

    #[test]
    #[cfg_attr(miri, ignore = "real time and threads")]
    fn a_blocking_batch_larger_than_the_queue_waits_for_room_as_it_goes() {
        let config = QueueConfig {
            dedup_window: None, // 50 ids would overflow a 4-slot queue's default window
            ..QueueConfig::new(4, 8)
        };
        let queue = Queue::new(config).unwrap();
        let sent = payloads(0..50);
        let received = std::thread::scope(|s| {
            let consumer = s.spawn(|| {
                let mut received = Vec::new();
                let mut batch = Vec::new();
                while received.len() < sent.len() {
                    queue.receive_batch_timeout(&mut batch, 3, Duration::from_secs(30));
                    for delivery in batch.drain(..) {
                        received.push(delivery.payload().to_vec());
                        delivery.ack().unwrap();
                    }
                }
                received
            });
            // Holds at most a chunk of claimed slots while it waits for the next: never
            // all four, or the consumer would have nothing to ack.
            queue.publish_batch(&sent).unwrap();
            consumer.join().unwrap()
        });
        assert_eq!(received, sent);
    }

    #[test]
    #[cfg_attr(miri, ignore = "real time")]
    fn a_batch_receive_with_a_timeout_gives_up_empty_handed() {
        let queue = Queue::new(QueueConfig::new(4, 8)).unwrap();
        let mut deliveries = Vec::new();
        assert_eq!(
            queue.receive_batch_timeout(&mut deliveries, 4, Duration::from_millis(5)),
            0
        );
        assert!(deliveries.is_empty());
    }
}
