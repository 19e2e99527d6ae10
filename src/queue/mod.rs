//! The reliable queue: publish, receive, ack / nack / reject / extend, leases and
//! redelivery, retries with backoff, TTL, dedup and a dead-letter queue.
//!
//! # How a message moves
//!
//! The slot header in the message store (`slots`) is the truth; the rings are indexes
//! of slot tokens (the slot index, and 8 generation bits above its 24): `free` holds empty slots, `ready` deliverable
//! ones, `dead` dead letters, oldest first. Every move is one CAS on the slot's state word
//! by whoever holds the slot's token or lease, so a stale token or receipt simply fails.
//!
//! # Deadlines
//!
//! Lease deadlines and delay/backoff ends live in the slot header (`due_at`); the
//! timing wheel (`wheel`) says when to look at them. Each slot has two wheel nodes:
//!
//! - its **delay** node, scheduled by whoever moves the slot to `Delayed` (a delayed
//!   publish, a nack with a backoff). Only the node's firing moves the slot on, to ready.
//! - its **lease** node, in the wheel while the slot word's lease-timer bit is set. A
//!   receive that finds the bit clear sets it and schedules the node; one that finds it set
//!   schedules nothing, because the node is already in the wheel for an earlier deadline
//!   (an earlier lease of the slot, acked before it ran out). When the node fires, the
//!   queue looks at the slot: a lease that ran out goes back to ready, a lease that runs
//!   out later is scheduled again for its deadline, a slot in `Taken` or `Settling` (a
//!   lease being written or settled) is looked at again next tick, anything else clears the bit. So a
//!   fast ack costs the wheel nothing, and the wheel holds one node per slot at most.
//!
//! The wheel runs from receives, publishes and [`Queue::tick`], one run at a time, at
//! most once per [`timer_tick`](QueueConfig::timer_tick).
//!
//! # TTL
//!
//! A receive that reaches a message past its TTL dead-letters (or drops) it, so an expired
//! message is never delivered. A message whose TTL runs out during its delay, backoff or
//! lease is dead-lettered when that ends, by the timer that ends it, instead of being
//! queued. Without receives, each wheel run takes the expired messages off the head of the
//! ready queue, up to the first live one (`expire_at_head`, at most 256 a run): with one
//! TTL for all, first deliveries leave on time; one behind a longer-lived message (or a
//! retried one behind younger ones) leaves when it reaches the head, as with RabbitMQ's
//! per-message TTLs. Runs happen while the queue is used (publishes, receives) or at
//! [`Queue::tick`].
//!
//! Why not a wheel node per message: a token cannot be taken out of the middle of a ring,
//! so a message killed while its token stays queued leaves a stale copy behind, one per
//! such death, which a queue without consumers would pile up past the ring's room; and
//! with no cancel, a slot's node may still wait for an earlier message's later deadline.

#[cfg(all(feature = "async", not(loom)))]
pub mod asynchronous;
mod batch;
mod builder;
mod dead_letters;
mod delivery;
mod inspect;
mod publish;
mod receive;
pub(crate) mod recovery;
mod slot_moves;
mod timers;
mod waiting;

pub use crate::engine::counters::{StalledHolder, Stats};
pub use crate::error::{BatchAckError, BatchPublishError, ConfigError, PublishError, SettleError};
pub use crate::layout::config::{ExpiryPolicy, QueueConfig, RetryBackoff};
pub use builder::QueueBuilder;
pub use dead_letters::{DeadLetter, DeadReason, LEASE_RAN_OUT};
pub use delivery::{Delivery, OwnedDelivery};
pub use inspect::ReadyMessage;
pub use publish::PublishOptions;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::base::clock::{nanos, Clock, MonotonicClock};
use crate::base::id::{random_word, IdSource};
use crate::base::sync::Ordering;
use crate::engine::counters::{Counter, Counters};
use crate::engine::dedup::DedupTable;
use crate::engine::index_ring::IndexRing;
use crate::engine::slots::MessageStore;
use crate::engine::wheel::Wheel;
use crate::layout::region::Region;
use crate::liveness::{OwnerTag, Participants};
use slot_moves::{push, token};

impl DeadReason {
    fn code(self) -> u64 {
        self as u64
    }
    fn from_code(code: u64) -> Self {
        match code {
            1 => Self::Rejected,
            2 => Self::AttemptsExhausted,
            _ => Self::Expired,
        }
    }
}

/// How a handle comes to a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attach {
    /// A zeroed region: lay the queue out.
    Fresh,
    /// A queue others made, on this boot.
    #[cfg_attr(loom, allow(dead_code))] // made by `shm`, which loom builds leave out
    Existing,
    /// A queue made before the host's last reboot, which no one else is attaching now:
    /// rebase it first (see `reboot`).
    AfterReboot,
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, nanos)
}

fn system_time(unix_nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(unix_nanos)
}

/// A reliable in-process message queue. Share it by reference (it is `Sync`).
///
/// ```
/// use std::time::Duration;
/// use ackring::clock::ManualClock;
/// use ackring::queue::{Queue, QueueConfig};
///
/// let clock = ManualClock::new();
/// let queue = Queue::with_clock(QueueConfig::new(64, 128), clock.clone())?;
/// queue.publish(b"charge order 17")?;
///
/// let delivery = queue.try_receive().expect("a message is ready");
/// assert_eq!(delivery.payload(), b"charge order 17");
/// assert_eq!(delivery.attempt(), 1);
/// delivery.nack("card processor timed out")?; // retried after the backoff
///
/// clock.advance(Duration::from_millis(100));
/// let again = queue.try_receive().expect("retried");
/// assert_eq!(again.attempt(), 2);
/// again.ack()?;
/// assert_eq!(queue.stats().acked, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
// Aligned so that in an `Arc` the counts, which each async receive and owned delivery
// write, do not share a cache line with the fields every publish reads.
#[repr(align(128))]
pub struct Queue<C: Clock = MonotonicClock> {
    config: QueueConfig,
    /// All shared state: slots, rings, wheel, dedup table, counters (see `region`).
    region: Region,
    lines_per_slot: usize,
    tick_nanos: u64,
    dedup_window_nanos: u64,
    clock: C,
    /// Generated ids and retry jitter.
    ids: IdSource,
    /// See [`Queue::identity`].
    identity: u128,
    /// This handle's entry in the region's participant table (see `participants`).
    participant: u64,
    /// The same, in the 16 bits a slot word keeps of an owner.
    owner_tag: OwnerTag,
    /// The region is this process's alone (on the heap): broken invariants are our bugs,
    /// worth a debug assertion. In a shared segment another process may have written
    /// anything, so they are handled, never asserted.
    trusted: bool,
    /// The Unix time (nanoseconds) at `clock_anchor` on the queue's clock: publish and
    /// dead-letter times for people are derived from the queue's clock, one read, not two.
    unix_anchor: u64,
    clock_anchor: u64,
    /// Added to every reading of `clock`: the queue's clock is the host's monotonic clock
    /// moved by the region's `clock_base`, which stays 0 until a file-backed queue is
    /// opened after a reboot (see `reboot`). Read once when attaching: it changes only
    /// while no other handle is attached.
    clock_base: u64,
    /// This handle's async waiters (see `asynchronous`).
    #[cfg(all(feature = "async", not(loom)))]
    waiters: asynchronous::AsyncWaiters,
}

impl Queue<MonotonicClock> {
    /// A queue on the host's monotonic clock.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first invalid setting.
    pub fn new(config: QueueConfig) -> Result<Self, ConfigError> {
        Self::with_clock(config, MonotonicClock)
    }
}

impl<C: Clock> Queue<C> {
    /// A queue on `clock` (a [`ManualClock`](crate::base::clock::ManualClock) in tests).
    ///
    /// # Errors
    /// [`ConfigError`] naming the first invalid setting.
    pub fn with_clock(config: QueueConfig, clock: C) -> Result<Self, ConfigError> {
        config.validate()?;
        let region = Region::on_heap(config.shape()).map_err(|_| ConfigError::TooLarge)?;
        // As a segment's: the creation time and a random word (see `identity`).
        let identity = u128::from(unix_nanos()) << 64 | u128::from(random_word().max(1));
        Ok(
            Self::on_region(config, region, clock, Attach::Fresh, identity)
                .expect("a new region has room"),
        )
    }

    /// The queue over `region`, which holds a queue of `config` (validated by the caller);
    /// `fresh`: the region is all zeros and needs its initial state written. `None` when
    /// the participant table is full of live handles.
    pub(crate) fn on_region(
        config: QueueConfig,
        region: Region,
        clock: C,
        attach: Attach,
        identity: u128,
    ) -> Option<Self> {
        let participants = Participants::new(region.sections().participants);
        let recovery_words = &region.sections().shared.recovery;
        if attach == Attach::AfterReboot {
            participants.forget_previous_boot();
            recovery::reboot::carry_the_clock_over(recovery_words, clock.now_nanos());
        }
        let clock_base = recovery_words.clock_base.0.load(Ordering::Relaxed);
        let registration = participants.register()?;
        let queue = Self {
            participant: registration.token,
            owner_tag: OwnerTag::of(registration.token),
            trusted: region.is_private(),
            lines_per_slot: config.shape().lines_per_slot as usize,
            tick_nanos: nanos(config.timer_tick),
            dedup_window_nanos: config.dedup_window.map_or(0, nanos),
            region,
            ids: IdSource::new(),
            identity,
            unix_anchor: unix_nanos(),
            clock_anchor: clock.now_nanos().wrapping_add(clock_base),
            clock_base,
            clock,
            config,
            #[cfg(all(feature = "async", not(loom)))]
            waiters: asynchronous::AsyncWaiters::default(),
        };
        match attach {
            Attach::Fresh => queue.lay_out(),
            Attach::AfterReboot => queue.rebase_after_reboot(),
            Attach::Existing => {
                if registration.replaced_dead {
                    queue.note_deaths(1);
                }
            }
        }
        Some(queue)
    }

    fn participants(&self) -> Participants<'_> {
        Participants::new(self.region.sections().participants)
    }

    /// Marks a segment-backed queue's segment as initialized (its creation's last step).
    #[cfg(not(loom))]
    pub(crate) fn finish_segment(&self) {
        if let Some(header) = self.region.segment_header() {
            header.publish();
        }
    }

    /// Marks a rebased segment as this boot's and pid namespace's (see `reboot`).
    #[cfg(not(loom))]
    pub(crate) fn adopt_host(&self, host: &crate::liveness::host::Host) {
        if let Some(header) = self.region.segment_header() {
            header.adopt(host);
        }
    }

    /// Writes the initial state into a zeroed region: empty rings, an empty wheel, and
    /// every slot's token in the free ring. (Slots, dedup stripes and counters start as
    /// zeros.)
    fn lay_out(&self) {
        let sections = self.region.sections();
        let shared = sections.shared;
        for (cursors, slots) in [
            (&shared.free, sections.free_ring),
            (&shared.ready, sections.ready_ring),
            (&shared.dead, sections.dead_ring),
        ] {
            IndexRing::init(&cursors.head.0, &cursors.tail.0, slots);
        }
        Wheel::init(
            self.tick_nanos,
            self.now(),
            &shared.wheel,
            sections.wheel_heads,
            sections.wheel_next,
        );
        for slot in 0..self.config.capacity {
            let pushed = push(self.free(), token(slot, 0));
            self.invariant(pushed, "room for every slot");
        }
        self.note_clock(self.now());
    }

    /// The message store.
    pub(crate) fn store(&self) -> MessageStore<'_> {
        let sections = self.region.sections();
        MessageStore::new(
            sections.slot_headers,
            sections.payloads,
            self.lines_per_slot,
        )
    }

    fn free(&self) -> IndexRing<'_> {
        let sections = self.region.sections();
        sections.shared.free.ring(sections.free_ring)
    }

    fn ready(&self) -> IndexRing<'_> {
        let sections = self.region.sections();
        sections.shared.ready.ring(sections.ready_ring)
    }

    fn dead(&self) -> IndexRing<'_> {
        let sections = self.region.sections();
        sections.shared.dead.ring(sections.dead_ring)
    }

    fn wheel(&self) -> Wheel<'_> {
        let sections = self.region.sections();
        Wheel::attach(
            self.tick_nanos,
            &sections.shared.wheel,
            sections.wheel_heads,
            sections.wheel_next,
        )
        .held_by(self.participant, self.participants())
    }

    /// The dedup table, if dedup is on.
    fn dedup(&self) -> Option<DedupTable<'_>> {
        let stripes = self.region.sections().dedup;
        (!stripes.is_empty()).then(|| {
            DedupTable::new(stripes, self.dedup_window_nanos)
                .held_by(self.participant, self.participants())
        })
    }

    fn counters(&self) -> Counters<'_> {
        Counters::new(self.region.sections().counters)
    }

    /// The configuration the queue was built with.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// This queue's identity, unique to it among queues anywhere (with the odds of a random
    /// 64-bit word): the Unix time it was created, in nanoseconds, in the high half, a
    /// random word in the low half. The same in every process that opens a shared queue,
    /// and after a reboot (it is in the segment's header); a heap queue has its own. Use
    /// it with a message id to name a message beyond this queue (as the NATS bridge does).
    pub fn identity(&self) -> u128 {
        self.identity
    }

    /// Unix nanoseconds at `at` on the queue's clock (before or after this handle opened).
    pub(super) fn unix_time(&self, at: u64) -> u64 {
        if at >= self.clock_anchor {
            self.unix_anchor.saturating_add(at - self.clock_anchor)
        } else {
            self.unix_anchor.saturating_sub(self.clock_anchor - at)
        }
    }

    /// The queue's clock (see `clock_base`).
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.clock.now_nanos().wrapping_add(self.clock_base)
    }

    pub(crate) fn note_acked(&self) {
        self.counters().bump(Counter::Acked);
    }

    pub(crate) fn note_nacked(&self) {
        self.counters().bump(Counter::Nacked);
    }

    pub(crate) fn retry_wait(&self, attempt: u32) -> Duration {
        self.config.backoff.wait(attempt, self.ids.unit())
    }
}

impl<C: Clock> Drop for Queue<C> {
    fn drop(&mut self) {
        self.participants().leave(self.participant);
    }
}

impl<C: Clock> std::fmt::Debug for Queue<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;

/// Loom models of the engine's races. Run from the repo root:
/// `RUSTFLAGS="--cfg loom" cargo test --lib --release loom_models`.
#[cfg(all(test, loom))]
mod loom_models;
