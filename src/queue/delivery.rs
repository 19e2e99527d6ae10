//! [`Delivery`]: a received message under lease, to be settled once.

use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::base::clock::{nanos, Clock, MonotonicClock};
use crate::base::id::MessageId;
use crate::base::sync::Ordering;
use crate::engine::counters::Counter;
use crate::engine::slots::State;
use crate::engine::wheel::Timer;
use crate::error::SettleError;
use crate::queue::dead_letters::DeadReason;
use crate::queue::slot_moves::free_token;
use crate::queue::{system_time, Queue};

/// A message delivered to this consumer, leased until [`lease_deadline`](Self::lease_deadline).
///
/// Settle it exactly once: [`ack`](Self::ack) when done, [`nack`](Self::nack) to have it
/// retried after the backoff (dead-lettered after the last attempt),
/// [`reject`](Self::reject) to dead-letter it now. [`extend`](Self::extend) pushes the lease
/// deadline while working. **A `Delivery` dropped unsettled is a nack with the error text
/// "dropped".** In a queue of this process the payload is borrowed from the queue, not
/// copied; it stays valid while the `Delivery` lives, even if the lease runs out meanwhile.
/// From a shared segment it is copied at receive (with atomic loads), since a process that
/// breaks the protocol could write the bytes under a borrow.
///
/// A `Delivery<'q, C>` from [`Queue::try_receive`] borrows the queue; an
/// [`OwnedDelivery`] from [`Queue::try_receive_owned`] holds an `Arc` of it instead, so it
/// can move into a `'static` thread or task. Both settle the same way.
pub struct Delivery<'q, C: Clock> {
    queue: Handle<'q, C>,
    pub(super) slot: u32,
    /// The slot generation of this lease: settling CASes only from `Leased(receipt)`.
    receipt: u32,
    attempt: u32,
    id: MessageId,
    payload_len: usize,
    /// The payload, copied, when the queue is in a shared segment.
    copied: Option<CopiedPayload>,
    lease_deadline: u64,
    settled: bool,
    /// Still holds its pin on the slot (an ack drops it in its own CAS).
    pinned: bool,
}

/// A delivery that owns a share of its queue (see [`Queue::try_receive_owned`]): `'static`,
/// so it can move into another thread or an async task.
pub type OwnedDelivery<C = MonotonicClock> = Delivery<'static, C>;

/// How a delivery reaches its queue.
enum Handle<'q, C: Clock> {
    Borrowed(&'q Queue<C>),
    Shared(Arc<Queue<C>>),
}

impl<C: Clock> Deref for Handle<'_, C> {
    type Target = Queue<C>;

    #[inline]
    fn deref(&self) -> &Queue<C> {
        match self {
            Handle::Borrowed(queue) => queue,
            Handle::Shared(queue) => queue,
        }
    }
}

impl<C: Clock> Queue<C> {
    /// [`try_receive`](Self::try_receive) for a queue shared as an `Arc`: the delivery holds
    /// a clone of the `Arc`, so it can move into a `'static` thread or task, and settles as
    /// a borrowed one does.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use ackring::{Queue, QueueConfig};
    ///
    /// let queue = Arc::new(Queue::new(QueueConfig::new(8, 16))?);
    /// queue.publish(b"render page 3")?;
    /// let delivery = queue.try_receive_owned().expect("ready");
    /// let worker = std::thread::spawn(move || {
    ///     assert_eq!(delivery.payload(), b"render page 3");
    ///     delivery.ack()
    /// });
    /// worker.join().unwrap()?;
    /// assert_eq!(queue.stats().acked, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_receive_owned(self: &Arc<Self>) -> Option<OwnedDelivery<C>> {
        let delivery = self.try_receive()?;
        Some(delivery.into_owned(Arc::clone(self)))
    }

    /// [`receive_timeout`](Self::receive_timeout), for a queue shared as an `Arc` (see
    /// [`try_receive_owned`](Self::try_receive_owned)).
    pub fn receive_timeout_owned(self: &Arc<Self>, timeout: Duration) -> Option<OwnedDelivery<C>> {
        let delivery = self.receive_timeout(timeout)?;
        Some(delivery.into_owned(Arc::clone(self)))
    }

    /// [`receive_deadline`](Self::receive_deadline), for a queue shared as an `Arc` (see
    /// [`try_receive_owned`](Self::try_receive_owned)).
    pub fn receive_deadline_owned(
        self: &Arc<Self>,
        deadline: std::time::Instant,
    ) -> Option<OwnedDelivery<C>> {
        let delivery = self.receive_deadline(deadline)?;
        Some(delivery.into_owned(Arc::clone(self)))
    }

    /// [`receive`](Self::receive), for a queue shared as an `Arc` (see
    /// [`try_receive_owned`](Self::try_receive_owned)).
    pub fn receive_owned(self: &Arc<Self>) -> OwnedDelivery<C> {
        self.receive().into_owned(Arc::clone(self))
    }
}

impl<'q, C: Clock> Delivery<'q, C> {
    /// The same lease, holding `queue` (its own queue) instead of a borrow.
    pub(super) fn into_owned(mut self, queue: Arc<Queue<C>>) -> OwnedDelivery<C> {
        debug_assert!(std::ptr::eq(&*self.queue, &*queue));
        let owned = Delivery {
            queue: Handle::Shared(queue),
            slot: self.slot,
            receipt: self.receipt,
            attempt: self.attempt,
            id: self.id,
            payload_len: self.payload_len,
            copied: self.copied.take(),
            lease_deadline: self.lease_deadline,
            settled: self.settled,
            pinned: self.pinned,
        };
        // The lease and the pin moved to `owned`: dropping `self` must not settle or unpin.
        self.settled = true;
        self.pinned = false;
        owned
    }

    /// Wraps a lease just taken (the slot is pinned for us).
    pub(super) fn new(
        queue: &'q Queue<C>,
        slot: u32,
        receipt: u32,
        attempt: u32,
        lease_deadline: u64,
    ) -> Self {
        let meta = queue.store().meta(slot).expect("leased slots are in range");
        let payload_len =
            (meta.payload_len.load(Ordering::Relaxed) as usize).min(queue.config().max_payload);
        let copied = (!queue.trusted).then(|| CopiedPayload::of(queue, slot, payload_len));
        Self {
            queue: Handle::Borrowed(queue),
            slot,
            receipt,
            attempt,
            id: MessageId(meta.id.load(Ordering::Relaxed)),
            payload_len,
            copied,
            lease_deadline,
            settled: false,
            pinned: true,
        }
    }

    /// The message id.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// The payload (borrowed from the queue, or a copy from a shared segment).
    pub fn payload(&self) -> &[u8] {
        if let Some(copied) = &self.copied {
            return copied.bytes(self.payload_len);
        }
        // SAFETY: the region is this process's (`copied` is set for every shared one). The
        // lease transition that created this delivery pinned the slot after acquiring the
        // publisher's release, and the pin is dropped only when `self` is consumed (an ack's
        // CAS, or `Drop`), so the slot is not reused (rewritten) while this borrow of `self`
        // lives; the length is clamped.
        unsafe { self.queue.store().payload(self.slot, self.payload_len) }
    }

    /// Which delivery of this message this is (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the message was published.
    pub fn published_at(&self) -> SystemTime {
        // Read from the slot, not kept here (a `Delivery` stays within 128 bytes: see the
        // size assert below): pinned, the slot still holds this message's fields.
        let published_at = self
            .queue
            .store()
            .meta(self.slot)
            .map_or(0, |meta| meta.published_at.load(Ordering::Relaxed));
        system_time(self.queue.unix_time(published_at))
    }

    /// When the message was published, on the queue's clock (nanoseconds): the same in
    /// every process, where each converts it to [`published_at`](Self::published_at)
    /// with its own reading of the wall clock.
    pub fn published_nanos(&self) -> u64 {
        self.queue
            .store()
            .meta(self.slot)
            .map_or(0, |meta| meta.published_at.load(Ordering::Relaxed))
    }

    /// When the message expires (its TTL runs out), `None` if it never does.
    pub fn expires_at(&self) -> Option<SystemTime> {
        // As `published_at`: the pinned slot still holds this message's fields.
        let expires_at = self
            .queue
            .store()
            .meta(self.slot)
            .map_or(u64::MAX, |meta| meta.expires_at.load(Ordering::Relaxed));
        (expires_at != u64::MAX).then(|| system_time(self.queue.unix_time(expires_at)))
    }

    /// When the lease runs out, on the queue's clock (nanoseconds).
    pub fn lease_deadline(&self) -> u64 {
        self.lease_deadline
    }

    /// Done: the message is removed for good.
    ///
    /// # Errors
    /// [`SettleError::LeaseLost`] if the lease ran out first.
    pub fn ack(mut self) -> Result<(), SettleError> {
        let freed = self.ack_in_place()?;
        if let Some(free) = freed {
            self.queue.push_free(free);
        }
        self.queue.note_acked();
        Ok(())
    }

    /// The ack's state change without its bookkeeping, for a batch ack (see
    /// [`ack_in_place`](Self::ack_in_place)).
    pub(super) fn ack_quietly(mut self) -> Result<Option<u32>, SettleError> {
        self.ack_in_place()
    }

    /// Frees the slot and drops our pin in one CAS. Only for callers that consume the
    /// delivery (nothing borrows the payload any more), which keep it, and so its queue,
    /// alive until they are done. Returns the slot's free token if the slot may go back to
    /// the free ring now (no other delivery pins it), for the caller to push; the caller
    /// counts the ack.
    fn ack_in_place(&mut self) -> Result<Option<u32>, SettleError> {
        self.settled = true;
        let freed = self
            .queue
            .store()
            .ack(self.slot, self.receipt)
            .map_err(|_| self.lease_lost())?;
        self.pinned = false;
        self.queue.unmark_pin(self.slot);
        Ok(free_token(self.slot, freed))
    }

    /// Whether this delivery came from `queue`.
    pub(super) fn is_from(&self, queue: &Queue<C>) -> bool {
        std::ptr::eq(&*self.queue, queue)
    }

    /// Failed with `error`: retried after the backoff for this attempt, or dead-lettered
    /// (reason "attempts exhausted", with `error`) if this was the last allowed attempt.
    ///
    /// # Errors
    /// [`SettleError::LeaseLost`] if the lease ran out first.
    pub fn nack(mut self, error: &str) -> Result<(), SettleError> {
        self.settled = true;
        self.nack_inner(error, None)
    }

    /// Failed with `error`: retried after `delay` instead of the backoff (as NATS's `Nak`
    /// with a delay), or dead-lettered if this was the last allowed attempt, as
    /// [`nack`](Self::nack). A zero delay queues it again at once, at the back.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ackring::{clock::ManualClock, Queue, QueueConfig};
    ///
    /// let clock = ManualClock::new();
    /// let queue = Queue::with_clock(QueueConfig::new(8, 16), clock.clone())?;
    /// queue.publish(b"call the bank")?;
    /// let delivery = queue.try_receive().expect("ready");
    /// delivery.nack_with_delay("the bank opens at nine", Duration::from_secs(60))?;
    /// clock.advance(Duration::from_secs(59));
    /// assert!(queue.try_receive().is_none(), "not before the delay");
    /// clock.advance(Duration::from_secs(1));
    /// assert_eq!(queue.try_receive().expect("retried").attempt(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`SettleError::LeaseLost`] if the lease ran out first.
    pub fn nack_with_delay(mut self, error: &str, delay: Duration) -> Result<(), SettleError> {
        self.settled = true;
        self.nack_inner(error, Some(delay))
    }

    /// Hands the message back now, at the back of the ready queue, without using up an
    /// attempt (as SQS's `ChangeMessageVisibility` to 0, or Redis's `XNACK`): for a
    /// consumer that cannot take the message now (shutting down, overloaded), not one that
    /// failed on it. Its next delivery has this delivery's attempt number. Past its TTL it
    /// is dead-lettered (or dropped) instead, as a nack's retry would be.
    ///
    /// ```
    /// use ackring::{Queue, QueueConfig};
    ///
    /// let queue = Queue::new(QueueConfig::new(8, 16))?;
    /// queue.publish(b"resize image 7")?;
    /// let delivery = queue.try_receive().expect("ready");
    /// delivery.release()?; // shutting down: someone else takes it
    /// let again = queue.try_receive().expect("ready again, at once");
    /// assert_eq!(again.attempt(), 1);
    /// assert_eq!(queue.stats().released, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`SettleError::LeaseLost`] if the lease ran out first.
    pub fn release(mut self) -> Result<(), SettleError> {
        self.settled = true;
        let _lease_version = self.begin_settling()?;
        let meta = self.queue.store().meta(self.slot).expect("in range");
        // The receive counted this delivery as an attempt: uncount it.
        meta.set_attempts(self.attempt.saturating_sub(1));
        self.queue.counters().bump(Counter::Released);
        self.requeue_now();
        Ok(())
    }

    fn nack_inner(&self, error: &str, delay: Option<Duration>) -> Result<(), SettleError> {
        let _lease_version = self.begin_settling()?;
        self.queue.note_nacked();
        if self.attempt >= self.queue.config().max_attempts {
            self.queue.kill(
                self.slot,
                State::Settling,
                self.receipt,
                DeadReason::AttemptsExhausted,
                error,
            );
            return Ok(());
        }
        let meta = self.queue.store().meta(self.slot).expect("in range");
        meta.set_reason(error);
        let wait = nanos(delay.unwrap_or_else(|| self.queue.retry_wait(self.attempt)));
        if wait == 0 {
            self.requeue_now();
        } else {
            let due = self.queue.now().saturating_add(wait);
            meta.set_due(due, super::timers::take_ticket());
            self.queue.begin_scheduling();
            self.finish_settling(State::Delayed);
            self.queue.schedule_timer(self.slot, Timer::Delay, due);
            self.queue.end_scheduling();
        }
        Ok(())
    }

    /// Dead-letter now with reason "rejected" and `error`.
    ///
    /// # Errors
    /// [`SettleError::LeaseLost`] if the lease ran out first.
    pub fn reject(mut self, error: &str) -> Result<(), SettleError> {
        self.settled = true;
        let _lease_version = self.begin_settling()?;
        self.queue.kill(
            self.slot,
            State::Settling,
            self.receipt,
            DeadReason::Rejected,
            error,
        );
        Ok(())
    }

    /// Still working: the lease now runs out `by` from now, or when it would have anyway
    /// if that is later (an extend never shortens a lease).
    ///
    /// # Errors
    /// [`SettleError::LeaseLost`] if the lease ran out first.
    pub fn extend(&mut self, by: Duration) -> Result<(), SettleError> {
        let lease_version = self.begin_settling()?;
        // Never earlier: the lease timer sits in the wheel for the current deadline.
        let due = self
            .queue
            .now()
            .saturating_add(nanos(by))
            .max(self.lease_deadline);
        let meta = self.queue.store().meta(self.slot).expect("in range");
        meta.due_at.store(due, Ordering::Relaxed);
        self.queue
            .store()
            .extended(self.slot, self.receipt, lease_version)
            .map_err(|_| self.lease_lost())?; // only another process's corruption gets here
        self.lease_deadline = due;
        Ok(())
    }

    /// `Leased(receipt) -> Settling(receipt)`: from here the lease cannot run out under us.
    /// The word's version holds our owner tag meanwhile (crash recovery undoes the settle if
    /// we die); returns the lease's version.
    fn begin_settling(&self) -> Result<u16, SettleError> {
        self.queue
            .store()
            .begin_settle(self.slot, self.receipt, self.queue.owner_tag.0)
            .map_err(|_| self.lease_lost())
    }

    /// `Settling -> Ready`, queued at the back at once, unless its TTL ran out meanwhile
    /// (then dead-lettered or dropped, as a timer ending a backoff would).
    fn requeue_now(&self) {
        self.finish_settling(State::Ready);
        let now = self.queue.now();
        self.queue.ready_or_expired(self.slot, self.receipt, now);
    }

    fn finish_settling(&self, to: State) {
        let moved = self
            .queue
            .store()
            .finish_settle(self.slot, self.receipt, to);
        self.queue
            .invariant(moved.is_ok(), "only the holder moves a settling slot");
    }

    fn lease_lost(&self) -> SettleError {
        SettleError::LeaseLost { id: self.id }
    }
}

impl<C: Clock> Drop for Delivery<'_, C> {
    fn drop(&mut self) {
        if !self.settled {
            // Documented: an unsettled delivery is a nack; a lost lease needs nothing more.
            let _ = self.nack_inner("dropped", None);
        }
        if self.pinned {
            self.queue.unpin(self.slot);
        }
    }
}

impl<C: Clock> std::fmt::Debug for Delivery<'_, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.id)
            .field("attempt", &self.attempt)
            .field("payload_len", &self.payload_len)
            .field("lease_deadline", &self.lease_deadline)
            .finish_non_exhaustive()
    }
}

// A `Delivery` is moved by value (out of `try_receive`, into a `Vec`, to a worker): at up
// to 128 bytes a move is a few vector stores, beyond that a call to `memcpy`, a visible
// share of a publish-receive-ack's instructions (figures: benches/README.md,
// *Measurements behind the code's choices*).
const _: () =
    assert!(std::mem::size_of::<Delivery<'static, crate::base::clock::MonotonicClock>>() <= 128);

/// Payloads up to this size are copied into the `Delivery` itself, larger ones to the heap.
const INLINE_PAYLOAD: usize = 64;

/// A payload copied out of a shared segment. (Its length is the delivery's: not kept twice,
/// so that a `Delivery` stays within 128 bytes, which moves without a `memcpy` call.)
enum CopiedPayload {
    Inline([u8; INLINE_PAYLOAD]),
    Heap(Box<[u8]>),
}

impl CopiedPayload {
    fn of<C: Clock>(queue: &Queue<C>, slot: u32, len: usize) -> Self {
        let store = queue.store();
        if len <= INLINE_PAYLOAD {
            let mut bytes = [0; INLINE_PAYLOAD];
            store.copy_payload(slot, &mut bytes[..len]);
            Self::Inline(bytes)
        } else {
            let mut bytes = vec![0; len].into_boxed_slice();
            store.copy_payload(slot, &mut bytes);
            Self::Heap(bytes)
        }
    }

    /// The first `len` bytes (the length it was copied with).
    fn bytes(&self, len: usize) -> &[u8] {
        match self {
            Self::Inline(bytes) => &bytes[..len.min(INLINE_PAYLOAD)],
            Self::Heap(bytes) => &bytes[..len.min(bytes.len())],
        }
    }
}
