//! The reliable queue: publish, receive, ack / nack / reject / extend, leases and
//! redelivery, retries with backoff, TTL, dedup and a dead-letter queue.
//!
//! # How a message moves
//!
//! The slot header in the message store (`slots`) is the truth; the rings are indexes
//! of slot tokens (`slot << 32 | generation`): `free` holds empty slots, `ready` deliverable
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
//!   out later is scheduled again for its deadline, a slot in `Settling` (a lease being
//!   taken or settled) is looked at again next tick, anything else clears the bit. So a
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

mod batch;
mod config;
mod delivery;
mod reboot;
pub(crate) mod recovery;

pub use batch::{BatchAckError, BatchPublishError};
pub use config::{ConfigError, ExpiryPolicy, FullPolicy, QueueConfig, RetryBackoff};
pub use delivery::{Delivery, SettleError};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::clock::{nanos, Clock, MonotonicClock};
use crate::dedup::{DedupError, DedupTable};
use crate::id::{IdSource, MessageId};
use crate::participants::{OwnerTag, Participants, SleepsOn};
use crate::region::Region;
use crate::ring::index::IndexRing;
use crate::slots::{MessageStore, Meta, State, TransitionError, Word};
pub use crate::stats::Stats;
use crate::stats::{Counter, Counters};
use crate::sync::{spin_hint, Ordering};
use crate::wait::Signal;
use crate::wheel::{node, split_node, Refire, Timer, Wheel};

/// How many ids ahead a publish guesses: it prefetches the dedup stripe of its own id
/// plus this (see `prefetch_dedup_stripe`).
const GUESS_AHEAD: u64 = 2;

/// The most expired messages one wheel run takes off the head of the ready queue (see
/// `expire_at_head`): a run stays short, and 256 a tick is 256,000 a second
/// at the default tick; the rest wait for the next runs, or for receives, which never
/// deliver them.
const EXPIRED_PER_RUN: usize = 256;

/// How long a waiting receiver keeps looking for a message before it sleeps (see
/// `look_while_spinning`): twice what a futex wake-up costs (about 10 µs on the machine we
/// measure on). Longer spins take CPU from other threads where there are more busy threads
/// than cores (measured with 50 µs: the tour's 6 processes on 2 cores saw their p99 grow
/// from 3.4-3.6 ms to 4.7-5.2 ms).
const SPIN_BUDGET: Duration = Duration::from_micros(20);

/// How often a waiting receiver looks while it spins.
const LOOK_INTERVAL: Duration = Duration::from_nanos(500);

/// How long a publisher waiting for room holds back for a run of free slots (see
/// `wait_for_room`): half the time it looks before it sleeps.
const HOLD_BACK: Duration = Duration::from_micros(10);

/// What a ready token's message is to a timer run looking at the head of the queue.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Ready and within its TTL: the run stops here.
    Deliverable,
    /// Ready at this (full) generation and past its TTL.
    Expired(u32),
    /// The token's slot moved on.
    Stale,
}

/// Why a message died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// Its TTL ran out before it was delivered.
    Expired,
    /// A consumer rejected it.
    Rejected,
    /// Its last allowed delivery was nacked (the error is the consumer's), or its lease
    /// ran out (the error is [`LEASE_RAN_OUT`]).
    AttemptsExhausted,
}

/// The error text of a message dead-lettered because the lease of its last allowed
/// delivery ran out.
pub const LEASE_RAN_OUT: &str = "lease ran out";

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

/// A dead-lettered message, copied out of the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message id.
    pub id: MessageId,
    /// The payload.
    pub payload: Vec<u8>,
    /// Why it died.
    pub reason: DeadReason,
    /// The consumer's error text (reject or last nack), empty for expiry.
    pub error: String,
    /// Deliveries it got.
    pub attempts: u32,
    /// When it was published.
    pub published_at: SystemTime,
    /// When it was dead-lettered.
    pub dead_at: SystemTime,
}

/// A ready message, copied out by [`Queue::peek`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyMessage {
    /// The message id.
    pub id: MessageId,
    /// The payload.
    pub payload: Vec<u8>,
    /// Deliveries it had so far.
    pub attempts: u32,
    /// When it was published.
    pub published_at: SystemTime,
}

/// A slot's fields and payload, copied out under a pin.
struct Snapshot {
    id: MessageId,
    payload: Vec<u8>,
    attempts: u32,
    /// On the queue's clock.
    published_at: u64,
    dead_unix: u64,
    dead_reason: u64,
    error: String,
}

/// Optional settings of one publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// The message id; `None` = generate a unique one. Only ids given here are remembered
    /// by the dedup window (a generated id is unique, so there is nothing to reject).
    pub id: Option<MessageId>,
    /// Time to live; `None` = the queue's `default_ttl`.
    pub ttl: Option<Duration>,
    /// Not deliverable before this much time has passed.
    pub delay: Option<Duration>,
}

/// A message on its way into a slot: what `fill` writes.
#[derive(Clone, Copy)]
struct Outgoing<'p> {
    id: MessageId,
    /// The caller gave the id: the dedup window records it.
    remembered: bool,
    payload: &'p [u8],
    ttl: Option<Duration>,
    delay: Option<Duration>,
}

/// What came of leasing a popped ready token.
enum Lease<'q, C: Clock> {
    /// The message, leased.
    Taken(Delivery<'q, C>),
    /// A stale token (dropped) or an expired message (dead-lettered or dropped): pop again.
    Skipped,
    /// 255 live deliveries still borrow the slot's payload: the token went back to the
    /// ready ring; stop receiving for now.
    Pinned,
}

/// Why a publish was refused. Nothing was enqueued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The payload is larger than the queue's `max_payload`.
    #[error("payload of {len} bytes exceeds the queue's max_payload of {max} bytes")]
    PayloadTooLarge {
        /// Bytes given.
        len: usize,
        /// Bytes allowed.
        max: usize,
    },
    /// The id was published within the dedup window.
    #[error("message id {id} was already published within the dedup window")]
    Duplicate {
        /// The repeated id.
        id: MessageId,
    },
    /// The dedup window is full of live ids.
    #[error(
        "the dedup window is full ({capacity} ids); raise dedup_capacity or shorten the window"
    )]
    DedupFull {
        /// Ids it remembers.
        capacity: usize,
    },
    /// Every slot holds a message (ready, delayed, in flight or dead).
    #[error(
        "the queue is full ({capacity} messages); retry after consumers ack, or drain dead letters"
    )]
    Full {
        /// Messages the queue holds.
        capacity: u32,
    },
    /// The TTL is zero: the message would expire before anyone could receive it.
    #[error("the message's TTL is zero: it would expire before delivery")]
    AlreadyExpired,
}

/// A slot's token in a ring: its index and the low 8 bits of its generation. Whoever pops
/// a token checks it against the slot header (state and those bits) and then moves the slot
/// with a CAS on the full word, so a stale token is dropped; the rare stale token whose bits
/// match a later incarnation in the same state only takes that incarnation's turn early (its
/// own token then finds it moved on), never a message twice.
fn token(slot: u32, generation: u32) -> u32 {
    slot | (generation & 0xff) << SLOT_BITS
}

/// Bits of a token that name the slot; the queue holds at most `2^SLOT_BITS - 1` slots, so
/// no token is the ring's `EMPTY` (all ones).
const SLOT_BITS: u32 = 24;

/// The token to return a slot to the free ring with, if its word `freed` says it is free
/// and unpinned (a pinned one goes back when its last pin is dropped).
fn free_token(slot: u32, freed: Word) -> Option<u32> {
    (freed.state == State::Free && freed.pins == 0).then(|| token(slot, freed.generation))
}

fn split(token: u32) -> (u32, u8) {
    (token & ((1 << SLOT_BITS) - 1), (token >> SLOT_BITS) as u8)
}

/// Pushes a token; `false` if the ring is full. (A ring whose words are corrupt, which
/// only a writer outside this process could cause, reads as full.)
fn push(ring: IndexRing<'_>, token: u32) -> bool {
    ring.try_push(token).unwrap_or(false)
}

/// Pops a token. (A corrupt ring reads as empty.)
fn pop(ring: IndexRing<'_>) -> Option<u32> {
    ring.try_pop().ok().flatten()
}

/// The first part of a wait: `look` every [`LOOK_INTERVAL`] for [`SPIN_BUDGET`] (or
/// `timeout`, if shorter), awake. A message that comes within that time is found within
/// a look interval, where a sleeper would take a futex wake-up (about 10 µs, measured)
/// and its publisher a wake system call.
///
/// Why not look as often as possible: each look reads the ready ring's next slot, the
/// very cache line the next publish writes, so a receiver that looks more often than
/// messages come takes that line from the publisher before every publish, and the
/// publisher, the slower side, pays a transfer between cores each time. Looking every
/// half microsecond (longer than a publish takes between two busy cores, 200-350 ns)
/// lets the publisher of a busy stream run ahead; the price is up to one interval (plus
/// a look) of delay for a message that comes while the receiver waits. See
/// `benches/README.md` for the figures.
///
/// Why not `sched_yield` between looks, so that where threads outnumber cores the thread
/// we wait for may run: it did raise two publishers and two blocking receivers on two
/// cores from 2.2-2.7 to 3.0-3.4 M msg/s, but a yielding receiver lets every other
/// runnable thread take its core for a time slice, and is not running when its message
/// comes. The tour (six processes on two cores) saw its p50 from publish to delivery go
/// from 19-32 µs to 1.28-1.33 ms. A receiver that spins, or sleeps on the futex and is
/// woken, is there when the message comes.
///
/// The caller has looked once already, at `started`.
fn look_while_spinning<T>(
    started: std::time::Instant,
    timeout: Duration,
    look: &mut impl FnMut() -> Option<T>,
) -> Option<T> {
    let spin_for = SPIN_BUDGET.min(timeout);
    let mut looked = started;
    loop {
        if looked.duration_since(started) >= spin_for {
            return None;
        }
        while looked.elapsed() < LOOK_INTERVAL {
            for _ in 0..4 {
                spin_hint();
            }
        }
        if let Some(found) = look() {
            return Some(found);
        }
        looked = std::time::Instant::now();
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
    /// A queue on `clock` (a [`ManualClock`](crate::clock::ManualClock) in tests).
    ///
    /// # Errors
    /// [`ConfigError`] naming the first invalid setting.
    pub fn with_clock(config: QueueConfig, clock: C) -> Result<Self, ConfigError> {
        config.validate()?;
        let region = Region::on_heap(config.shape()).map_err(|_| ConfigError {
            problem: "capacity * max_payload is larger than memory can hold",
        })?;
        Ok(Self::on_region(config, region, clock, Attach::Fresh).expect("a new region has room"))
    }

    /// The queue over `region`, which holds a queue of `config` (validated by the caller);
    /// `fresh`: the region is all zeros and needs its initial state written. `None` when
    /// the participant table is full of live handles.
    pub(crate) fn on_region(
        config: QueueConfig,
        region: Region,
        clock: C,
        attach: Attach,
    ) -> Option<Self> {
        let participants = Participants::new(region.sections().participants);
        let recovery_words = &region.sections().shared.recovery;
        if attach == Attach::AfterReboot {
            participants.forget_previous_boot();
            reboot::carry_the_clock_over(recovery_words, clock.now_nanos());
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
            unix_anchor: unix_nanos(),
            clock_anchor: clock.now_nanos().wrapping_add(clock_base),
            clock_base,
            clock,
            config,
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

    /// Diagnostics: the wake-up system calls made so far on the (ready, room) signals, by
    /// every process, modulo 2^31 (see `src/wait.rs`). With no thread asleep, publishes
    /// and acks make none, but for one per signal after sleepers that were killed.
    #[doc(hidden)]
    pub fn wake_up_calls(&self) -> (u32, u32) {
        (
            self.ready_signal().wake_ups(),
            self.room_signal().wake_ups(),
        )
    }

    /// The process ids of the handles attached to this queue now (more than one only for
    /// a queue in shared memory).
    pub fn attached_pids(&self) -> Vec<u32> {
        self.participants().live_pids()
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
    pub(crate) fn adopt_host(&self, host: &crate::shm::Host) {
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

    /// Publishes `payload` with a generated id; returns the id once the message is queued.
    ///
    /// # Errors
    /// See [`PublishError`]: nothing is queued on error.
    pub fn publish(&self, payload: &[u8]) -> Result<MessageId, PublishError> {
        self.publish_with(payload, PublishOptions::default())
    }

    /// Publishes `payload` with the given id, TTL and delay.
    ///
    /// # Errors
    /// See [`PublishError`]: nothing is queued on error.
    pub fn publish_with(
        &self,
        payload: &[u8],
        options: PublishOptions,
    ) -> Result<MessageId, PublishError> {
        // The id's dedup stripe is most likely a cache miss: it loads from here on, while we
        // read the clock and claim a slot.
        self.prefetch_dedup_stripe(&options, true);
        let ttl = self.admit(payload, &options)?;
        let mut now = self.now();
        self.run_timers(now);
        let message = self.outgoing(payload, options, ttl);
        let Some(claimed) = self.claim_free_slot_per_policy(&mut now) else {
            return Err(PublishError::Full {
                capacity: self.config.capacity,
            });
        };
        // A delayed message's timer woke the sleepers in `fill`; a ready one wakes them here.
        if let Some(ready) = self.fill(claimed, &message, now)? {
            self.push_ready_token(ready);
        }
        self.counters().bump(Counter::Published);
        Ok(message.id)
    }

    /// The message as `fill` will write it: the caller's id, remembered by the dedup
    /// window, or a generated one, which is unique by construction and so not remembered:
    /// no caller can publish it again by mistake, and a window sized for the caller's ids
    /// is not filled with ids no one repeats.
    fn outgoing<'p>(
        &self,
        payload: &'p [u8],
        options: PublishOptions,
        ttl: Option<Duration>,
    ) -> Outgoing<'p> {
        let (id, remembered) = match options.id {
            Some(id) => (id, true),
            None => (self.ids.id(), false),
        };
        Outgoing {
            id,
            remembered,
            payload,
            ttl,
            delay: options.delay,
        }
    }

    /// Starts loading the dedup stripe of the caller's id, if any, into the cache, and with
    /// `and_next` the stripe of the id two after it: publishers often number their
    /// messages (a producer's sequence, the counter in a Snowflake id), and a single
    /// publish then finds its stripe loaded by the one before the one before. Not the
    /// next id's: a publish takes about as long as a miss to memory, so that stripe would
    /// still be on its way (one thread, a publish: 106-113 ns guessing one ahead, 91-95
    /// guessing two; in the bench, one per call, 7-15% more messages). A wrong guess costs
    /// a read from memory that no one waits for. (A batch prefetches each message's own
    /// stripe as it admits it.)
    #[inline]
    pub(super) fn prefetch_dedup_stripe(&self, options: &PublishOptions, and_next: bool) {
        if let (Some(id), Some(dedup)) = (options.id, self.dedup()) {
            dedup.prefetch(id);
            if and_next {
                dedup.prefetch_guess(MessageId(id.0.wrapping_add(GUESS_AHEAD)));
            }
        }
    }

    /// Checks what can be checked of a message before it takes a slot; returns its TTL.
    fn admit(
        &self,
        payload: &[u8],
        options: &PublishOptions,
    ) -> Result<Option<Duration>, PublishError> {
        if payload.len() > self.config.max_payload {
            return Err(PublishError::PayloadTooLarge {
                len: payload.len(),
                max: self.config.max_payload,
            });
        }
        let ttl = options.ttl.or(self.config.default_ttl);
        if ttl.is_some_and(|ttl| ttl.is_zero()) {
            return Err(PublishError::AlreadyExpired);
        }
        Ok(ttl)
    }

    /// Writes `message` into a slot we claimed (in `Writing`) and makes it ready or
    /// delayed. A ready message's token is returned for the caller to push to the ready
    /// ring (then to wake sleepers), so a batch can push its tokens together. On a dedup
    /// refusal the slot is freed again and nothing is queued.
    fn fill(
        &self,
        (slot, generation): (u32, u32),
        message: &Outgoing<'_>,
        now: u64,
    ) -> Result<Option<u32>, PublishError> {
        let meta = self.store().meta(slot).expect("claimed slots are in range");
        meta.id.store(message.id.0, Ordering::Relaxed);
        meta.published_at.store(now, Ordering::Relaxed);
        // Crash recovery forgets the id of a publish that died from here on (see `recovery`).
        meta.written_at_generation
            .store(u64::from(generation), Ordering::Release);
        // The id is recorded only with a slot in hand, so "duplicate" is never said of an id
        // whose first publish then failed for want of room.
        if let (true, Some(dedup)) = (message.remembered, self.dedup()) {
            if let Err(error) = dedup.record(message.id, now) {
                self.abandon_claim((slot, generation));
                return Err(match error {
                    DedupError::Duplicate { id } => {
                        self.counters().bump(Counter::Duplicates);
                        PublishError::Duplicate { id }
                    }
                    DedupError::Full { capacity } => PublishError::DedupFull { capacity },
                });
            }
        }
        meta.payload_len
            .store(message.payload.len() as u64, Ordering::Relaxed);
        meta.attempts.store(0, Ordering::Relaxed);
        let expires_at = message
            .ttl
            .map_or(u64::MAX, |ttl| now.saturating_add(nanos(ttl)));
        meta.expires_at.store(expires_at, Ordering::Relaxed);
        // `claim_free_slot` moved the slot to Writing for us; `admit` checked the length.
        self.store().write_payload(slot, message.payload);
        let delay = message.delay.map_or(0, nanos);
        if delay > 0 {
            let due = now.saturating_add(delay);
            meta.due_at.store(due, Ordering::Relaxed);
            self.begin_scheduling();
            self.move_slot(slot, generation, State::Delayed);
            self.schedule_timer(slot, Timer::Delay, due);
            self.end_scheduling();
            Ok(None)
        } else {
            // No deadline: one the slot's last message left must not become this one's,
            // should its first receiver die before writing its own (see `recovery`).
            meta.due_at.store(0, Ordering::Relaxed);
            self.move_slot(slot, generation, State::Ready);
            Ok(Some(token(slot, generation)))
        }
    }

    /// Frees a slot we claimed but will not fill.
    fn abandon_claim(&self, (slot, generation): (u32, u32)) {
        let freed = self
            .store()
            .transition_from(slot, State::Writing, generation, |w| Some(w.freed()));
        if let Ok(freed) = freed {
            self.release_if_unpinned(slot, freed);
        }
    }

    /// A free slot now, or (with `FullPolicy::Block`) once one frees up within the timeout.
    /// After a wait, `now` moves on to the clock's time then: a message is published when
    /// it goes in, and its TTL, delay and dedup window count from then.
    fn claim_free_slot_per_policy(&self, now: &mut u64) -> Option<(u32, u32)> {
        let claimed = self.claim_free_slot();
        match self.config.on_full {
            FullPolicy::Block(timeout) if claimed.is_none() => {
                let claimed = self.wait_for_room(timeout);
                *now = self.now();
                claimed
            }
            _ => claimed,
        }
    }

    /// A free slot once one frees up within `timeout`: the queue was full.
    ///
    /// For its first [`HOLD_BACK`], the publisher claims a slot only once a run of them is
    /// free (an eighth of the queue, at most 64). Claiming each slot as soon as a consumer
    /// frees it keeps both on the same free-ring word and slot lines, handing them back and
    /// forth between cores for every message; waiting for a run lets the consumer free
    /// slots while the publisher then fills them. Measured (probe, one publisher and one
    /// consumer, both waiting in the queue): 5.0-5.4 M msg/s claiming at once, 6.4-6.6
    /// with the run.
    #[cold]
    #[inline(never)]
    fn wait_for_room(&self, timeout: Duration) -> Option<(u32, u32)> {
        let started = std::time::Instant::now();
        let run = (self.config.capacity as usize / 8).clamp(1, 64);
        self.wait_until(SleepsOn::Room, timeout, || {
            if started.elapsed() < HOLD_BACK && self.free().len() < run {
                return None;
            }
            self.claim_free_slot().or_else(|| {
                self.tick(); // deadlines may be what frees slots (expired leases, then acks)
                None
            })
        })
    }

    /// Takes a free slot into `Writing`, dropping stale free tokens.
    fn claim_free_slot(&self) -> Option<(u32, u32)> {
        while let Some(free) = pop(self.free()) {
            if let Some(claimed) = self.claim_token(free) {
                // The slot's header and payload were last written by a consumer, on another
                // core: the claim waits for them. The next publish will most likely claim
                // the next free token's slot, so its lines start moving here, a whole
                // publish ahead (probe, two producers and two consumers: 3.1-3.2 -> 3.7-3.8
                // M msg/s; one and one: within the noise). A wrong guess costs a prefetch no
                // one waits for.
                if let Some(next) = self.free().peek() {
                    self.store().prefetch(split(next).0);
                }
                return Some(claimed);
            }
        }
        None
    }

    /// Takes the slot a popped free token names into `Writing`; `None` for a stale token
    /// (dropped).
    pub(crate) fn claim_token(&self, free: u32) -> Option<(u32, u32)> {
        let (slot, generation) = self.resolve(free, State::Free)?;
        self.store()
            .transition_from(slot, State::Free, generation, |w| {
                Some(Word {
                    state: State::Writing,
                    version: self.owner_tag.0, // who to free it from if it dies
                    ..w
                })
            })
            .ok()
            .map(|_| (slot, generation))
    }

    /// Moves a slot we hold in `Writing` to `to`. (Only its pins, from deliveries of its
    /// previous message, and its lease-timer bit, cleared by the ticker, can change
    /// meanwhile.)
    fn move_slot(&self, slot: u32, generation: u32, to: State) {
        let moved = self
            .store()
            .transition_from(slot, State::Writing, generation, |w| {
                Some(Word { state: to, ..w })
            });
        self.invariant(moved.is_ok(), "a slot in Writing changed state under us");
    }

    pub(crate) fn push_ready(&self, slot: u32, generation: u32) {
        self.push_ready_token(token(slot, generation));
    }

    /// Pushes a ready token and wakes sleeping receivers.
    fn push_ready_token(&self, ready: u32) {
        // The ready ring has a place for every slot, and a slot has at most one ready token.
        let pushed = push(self.ready(), ready);
        self.invariant(pushed, "ready ring holds every slot");
        self.ready_signal().notify_after_push();
    }

    fn ready_signal(&self) -> &Signal {
        &self.region.sections().shared.ready_signal
    }

    /// Publishers waiting for a free slot sleep on it (see [`FullPolicy::Block`]).
    pub(crate) fn room_signal(&self) -> &Signal {
        &self.region.sections().shared.room_signal
    }

    /// Checks what must hold unless another process corrupted the region (see `trusted`).
    pub(crate) fn invariant(&self, holds: bool, what: &str) {
        debug_assert!(holds || !self.trusted, "broken invariant: {what}");
    }

    /// The slot a popped token names and its full generation, if its header is in `state`
    /// with the token's generation bits; `None` for a stale token (drop it).
    fn resolve(&self, token: u32, state: State) -> Option<(u32, u32)> {
        let (slot, generation_bits) = split(token);
        self.store().prefetch(slot); // header and payload misses overlap
        let word = self.store().load(slot).ok()?;
        (word.state == state && word.generation as u8 == generation_bits)
            .then_some((slot, word.generation))
    }

    /// Unix nanoseconds at `at` on the queue's clock (before or after this handle opened).
    pub(super) fn unix_time(&self, at: u64) -> u64 {
        if at >= self.clock_anchor {
            self.unix_anchor.saturating_add(at - self.clock_anchor)
        } else {
            self.unix_anchor.saturating_sub(self.clock_anchor - at)
        }
    }

    /// Receives the oldest ready message, if any, leasing it for the visibility timeout.
    /// Expired messages met on the way are dead-lettered (or dropped, per policy).
    pub fn try_receive(&self) -> Option<Delivery<'_, C>> {
        let now = self.run_timers_then_now();
        while let Some(ready) = pop(self.ready()) {
            self.store().prefetch(split(ready).0); // header and payload misses overlap
            match self.lease(ready, now) {
                Lease::Taken(delivery) => {
                    self.counters().bump(Counter::Delivered);
                    return Some(delivery);
                }
                Lease::Skipped => continue,
                Lease::Pinned => return None,
            }
        }
        None
    }

    /// Runs the timers that are due, then reads the clock again if they ran (a run takes
    /// time: TTLs are judged by the clock after it).
    fn run_timers_then_now(&self) -> u64 {
        let now = self.now();
        if self.run_timers(now) {
            self.now()
        } else {
            now
        }
    }

    /// Leases the message that the popped ready token `ready` names, at `now`. Expired
    /// messages are dead-lettered (or dropped) and stale tokens dropped: `Skipped`. The
    /// caller counts the delivery.
    fn lease(&self, ready: u32, now: u64) -> Lease<'_, C> {
        let (slot, generation_bits) = split(ready);
        let Ok(meta) = self.store().meta(slot) else {
            return Lease::Skipped;
        };
        let Ok(seen) = self.store().load(slot) else {
            return Lease::Skipped;
        };
        if seen.state != State::Ready || seen.generation as u8 != generation_bits {
            return Lease::Skipped; // stale token: whoever moved the slot on owns it now
        }
        let generation = seen.generation;
        if now >= meta.expires_at.load(Ordering::Relaxed) {
            self.expire(slot, generation);
            return Lease::Skipped;
        }
        let delivered = meta.attempts.load(Ordering::Relaxed);
        if delivered >= u64::from(self.config.max_attempts) {
            // Every allowed delivery's lease ran out (its consumers too slow, or killed,
            // perhaps by this very message): dead, not delivered once too often.
            self.kill(
                slot,
                State::Ready,
                generation,
                DeadReason::AttemptsExhausted,
                LEASE_RAN_OUT,
            );
            return Lease::Skipped;
        }
        // Saturating: a corrupt count must not overflow (and attempts are reported as u32).
        let attempt = delivered.saturating_add(1).min(u64::from(u32::MAX));
        let due = now.saturating_add(nanos(self.config.visibility_timeout));
        // The slot's fields are written only once the CAS below made it ours, in Settling:
        // a ready token can have a twin (crash recovery re-queues what a header says is
        // ready without proving its token missing), and the twin's holder, losing the CAS,
        // could otherwise write this message's attempt count or deadline into whatever
        // the slot holds by then. Settling also keeps the ticker off the lease (it looks
        // again next tick) until its deadline is written, and recovery makes a lease
        // whose taker died mid-way run out (see `recovery`).
        // The pin is counted before the CAS that takes it, and a lease timer this
        // lease must link is bracketed from before that CAS (see `recovery`).
        self.mark_pin(slot);
        let mut bracketed = !seen.lease_timer && !self.trusted;
        if bracketed {
            self.begin_scheduling();
        }
        let schedule_lease_timer = std::cell::Cell::new(false);
        let needs_bracket = std::cell::Cell::new(false);
        let leased = loop {
            let leased =
                self.store()
                    .transition_from_seen(slot, seen, State::Ready, generation, |w| {
                        if !w.lease_timer && !bracketed && !self.trusted {
                            needs_bracket.set(true); // the ticker just dropped the timer
                            return None;
                        }
                        schedule_lease_timer.set(!w.lease_timer);
                        Some(Word {
                            state: State::Settling,
                            pins: w.pins.checked_add(1)?,
                            generation: w.generation.wrapping_add(1),
                            lease_timer: true,
                            version: self.owner_tag.0, // who to undo it for if we die
                        })
                    });
            if needs_bracket.replace(false) {
                bracketed = true;
                self.begin_scheduling();
                continue;
            }
            break leased;
        };
        let leased = match leased {
            Ok(leased) => leased,
            Err(error) => {
                self.unmark_pin(slot);
                if bracketed {
                    self.end_scheduling();
                }
                if error == TransitionError::TooManyPins {
                    // 255 live deliveries still borrow this message's payload: leave it
                    // queued (token back) until some of them are dropped.
                    self.push_ready(slot, generation);
                    return Lease::Pinned;
                }
                return Lease::Skipped; // a stale token: whoever moved the slot on owns it
            }
        };
        meta.attempts.store(attempt, Ordering::Relaxed);
        meta.due_at.store(due, Ordering::Relaxed);
        let taken = self.store().transition_from_seen(
            slot,
            leased,
            State::Settling,
            leased.generation,
            |w| {
                Some(Word {
                    state: State::Leased,
                    version: seen.version,
                    ..w
                })
            },
        );
        self.invariant(taken.is_ok(), "only the taker moves a slot it is leasing");
        if schedule_lease_timer.get() {
            // Rare: a slot's lease timer stays linked from one lease to the next.
            self.schedule_timer(slot, Timer::Lease, due);
        }
        if bracketed {
            self.end_scheduling();
        }
        if attempt > 1 {
            self.counters().bump(Counter::Redelivered);
        }
        Lease::Taken(Delivery::new(
            self,
            slot,
            leased.generation,
            attempt as u32,
            due,
        ))
    }

    /// Receives, waiting as long as it takes for a message to become ready.
    ///
    /// It looks every half microsecond for the first 20 µs, then sleeps on a futex
    /// (shared with other processes for a queue in shared memory) that publishers wake, so
    /// a receiver of a steady stream (a message at least every 20 µs) does not sleep
    /// between messages, and an idle one uses no CPU.
    /// For the lowest latency, at the cost of a core, call [`try_receive`](Self::try_receive)
    /// in a loop; but under load, wait about half a microsecond between empty tries: each
    /// try reads the cache line the next publish writes, and a consumer that tries much more
    /// often (as crossbeam's `Backoff` does) slows the publisher by a transfer between cores
    /// per message (see the figures in `benches/README.md`).
    pub fn receive(&self) -> Delivery<'_, C> {
        loop {
            if let Some(delivery) = self.receive_timeout(Duration::from_secs(3600)) {
                return delivery;
            }
        }
    }

    /// Receives, waiting up to `timeout` of real time for a message to become ready (see
    /// [`receive`](Self::receive) for how it waits).
    pub fn receive_timeout(&self, timeout: Duration) -> Option<Delivery<'_, C>> {
        self.wait_until(SleepsOn::Ready, timeout, || self.try_receive())
    }

    /// Calls `look` (a receive, or a claim of a free slot) until it finds something or
    /// `timeout` of real time has passed: every half microsecond for the first 20 µs (see
    /// `look_while_spinning`), then between sleeps on the signal `on`.
    pub(crate) fn wait_until<T>(
        &self,
        on: SleepsOn,
        timeout: Duration,
        mut look: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        // Most calls find something at once: the first look reads no clock (a clock read
        // costs a receive a third more: 21 ns against 55-60 for the rest of it). The
        // timeout counts from just after it.
        if let Some(found) = look() {
            return Some(found);
        }
        let started = std::time::Instant::now();
        // None: no limit.
        let give_up = started.checked_add(timeout);
        if let Some(found) = look_while_spinning(started, timeout, &mut look) {
            return Some(found);
        }
        let mine = self.participants().sleeping(self.participant, on);
        let signal = match on {
            SleepsOn::Ready => self.ready_signal(),
            SleepsOn::Room => self.room_signal(),
        };
        signal.wait_for(
            look,
            || {
                let left = match give_up {
                    Some(give_up) => give_up.checked_duration_since(std::time::Instant::now())?,
                    None => Duration::from_secs(3600),
                };
                // Wake for the next timer too: timers make delayed and expired-lease
                // messages ready, and a sleeping receiver is what would run them.
                let now = self.now();
                // A timer already due that the look did not run is being run by another
                // thread (or one stopped holding the run lock): looking again at once
                // would only spin, so wait a tick for it.
                let timer = self
                    .wheel()
                    .next_due()
                    .map(|due| match due.checked_sub(now) {
                        Some(wait) if wait > 0 => Duration::from_nanos(wait),
                        _ => self.config.timer_tick,
                    });
                let sleep = timer.map_or(left, |timer| timer.min(left));
                // In a shared segment, wake now and then even when idle: a process killed
                // mid-operation is noticed (and repaired) by whoever runs the timers.
                Some(if self.trusted {
                    sleep
                } else {
                    sleep.min(recovery::LIVENESS_INTERVAL)
                })
            },
            mine,
        )
    }

    /// A ready message whose TTL ran out: dead-letter or drop it. We hold its ready token.
    fn expire(&self, slot: u32, generation: u32) {
        // Counted by whoever moves it (a twin token's holder may race us).
        let expired = match self.config.on_expiry {
            ExpiryPolicy::DeadLetter => {
                self.kill(slot, State::Ready, generation, DeadReason::Expired, "")
            }
            ExpiryPolicy::Drop => {
                let freed = self
                    .store()
                    .transition_from(slot, State::Ready, generation, |w| Some(w.freed()));
                if let Ok(word) = freed {
                    self.release_if_unpinned(slot, word);
                }
                freed.is_ok()
            }
        };
        if expired {
            self.counters().bump(Counter::Expired);
        }
    }

    /// Moves a slot from `from` at `generation` to `Dead` and files it in the dead ring,
    /// discarding the oldest dead letter if that ring is full. Returns false if stale.
    ///
    /// From `Settling` the caller owns the slot already. From `Ready` it does not (a twin
    /// token's holder may race it): it takes the slot first (`take`), so that only the
    /// winner writes the dead-letter fields.
    pub(crate) fn kill(
        &self,
        slot: u32,
        from: State,
        generation: u32,
        reason: DeadReason,
        error: &str,
    ) -> bool {
        let Ok(meta) = self.store().meta(slot) else {
            return false;
        };
        let (from, generation) = if from == State::Settling {
            (from, generation)
        } else {
            match self.take(slot, from, generation) {
                Some(taken) => (State::Settling, taken),
                None => return false,
            }
        };
        meta.dead_reason.store(reason.code(), Ordering::Relaxed);
        meta.dead_unix
            .store(self.unix_time(self.now()), Ordering::Relaxed);
        meta.set_reason(error);
        let Ok(dead) = self.store().transition_from(slot, from, generation, |w| {
            Some(Word {
                state: State::Dead,
                ..w
            })
        }) else {
            return false;
        };
        self.counters().bump(Counter::DeadLettered);
        self.file_dead(token(slot, dead.generation));
        true
    }

    /// Files a dead slot's token in the dead ring, discarding the oldest dead letter if that
    /// ring is full.
    pub(crate) fn file_dead(&self, filed: u32) {
        // Bounded: each round discards a letter or finds one gone, so a sane ring has room
        // within a few rounds, unless other threads file into the room we make as fast as
        // we make it (a corrupt ring never has room).
        let rounds = 4 * (self.config.dead_letter_capacity as usize + 1);
        for _ in 0..rounds {
            if push(self.dead(), filed) {
                return;
            }
            let Some(oldest) = pop(self.dead()) else {
                continue; // a racing pop made room
            };
            let Some((old_slot, old_generation)) = self.resolve(oldest, State::Dead) else {
                continue;
            };
            self.discard_dead(old_slot, old_generation);
        }
        // Out of rounds: this letter is discarded too, as the oldest would have been. Left
        // dead with no token, it could be neither listed nor redriven, and its slot would
        // never be free again.
        if let Some((slot, generation)) = self.resolve(filed, State::Dead) {
            self.discard_dead(slot, generation);
        }
    }

    /// Frees a dead letter we took out of (or could not put into) the dead ring, counted.
    fn discard_dead(&self, slot: u32, generation: u32) {
        if let Ok(word) = self.free_dead(slot, generation) {
            self.counters().bump(Counter::DeadDiscarded);
            self.release_if_unpinned(slot, word);
        }
    }

    /// `from(generation) -> Settling(generation + 1)` under our owner tag, so that we alone
    /// write the slot's fields next (a twin token's holder fails this CAS and writes
    /// nothing), and a receipt of the old generation can never settle what follows (if we
    /// die here, recovery makes it a lease that runs out). Returns the new generation.
    fn take(&self, slot: u32, from: State, generation: u32) -> Option<u32> {
        self.store()
            .transition_from(slot, from, generation, |w| {
                Some(Word {
                    state: State::Settling,
                    generation: w.generation.wrapping_add(1),
                    version: self.owner_tag.0,
                    ..w
                })
            })
            .ok()
            .map(|taken| taken.generation)
    }

    /// `Dead(generation) -> Free(generation + 1)`, keeping pins.
    fn free_dead(&self, slot: u32, generation: u32) -> Result<Word, TransitionError> {
        self.store()
            .transition_from(slot, State::Dead, generation, |w| Some(w.freed()))
    }

    /// Returns a freed slot to the free ring unless a delivery still pins it (then the last
    /// unpin does).
    pub(crate) fn release_if_unpinned(&self, slot: u32, freed: Word) {
        if let Some(free) = free_token(slot, freed) {
            self.push_free(free);
        }
    }

    /// Returns a free slot's token to the free ring.
    fn push_free(&self, free: u32) {
        let pushed = push(self.free(), free);
        self.invariant(pushed, "free ring holds every slot");
        self.room_signal().notify_after_push();
    }

    /// Drops a pin of ours, freeing the slot if it was the last pin of a freed slot.
    pub(crate) fn unpin(&self, slot: u32) {
        if let Ok(Some(generation)) = self.store().unpin(slot) {
            self.push_free(token(slot, generation));
        }
        self.unmark_pin(slot);
    }

    /// Counts a pin we are about to take on `slot`, for crash recovery (see `recovery`);
    /// only in a shared region.
    pub(crate) fn mark_pin(&self, slot: u32) {
        if !self.trusted {
            self.participants().mark_pin(self.participant, slot);
        }
    }

    /// Uncounts a pin on `slot` we dropped or failed to take.
    pub(crate) fn unmark_pin(&self, slot: u32) {
        if !self.trusted {
            self.participants().unmark_pin(self.participant, slot);
        }
    }

    /// Marks the start of a stretch from making a timer due in a slot word to linking it
    /// into the wheel (crash recovery waits for these; see `recovery`).
    pub(crate) fn begin_scheduling(&self) {
        if !self.trusted {
            self.participants().begin_scheduling(self.participant);
        }
    }

    pub(crate) fn end_scheduling(&self) {
        if !self.trusted {
            self.participants().end_scheduling(self.participant);
        }
    }

    /// Runs the timers that are due: expired leases make their messages ready again
    /// (delivered at the tail of the queue), finished delays and backoffs make theirs ready
    /// (each dead-lettered instead if its TTL ran out meanwhile), and messages past their
    /// TTL leave the head of the queue. Receives and publishes do this themselves; call it
    /// to move time along when idle.
    pub fn tick(&self) {
        self.run_timers(self.now());
    }

    /// Runs the wheel if a tick has passed and no one else is running it; returns whether
    /// this call ran it.
    #[inline]
    fn run_timers(&self, now: u64) -> bool {
        let mut relinked = false;
        let ran = self.wheel().advance(now, |node, now| {
            let again = self.fire(node, now);
            relinked |= again.is_some();
            again
        });
        if ran {
            // A sleeper that looked at the timers while this run held some of them
            // detached did not see them: wake it to look again (`wait`'s protocol).
            if relinked {
                self.ready_signal().notify();
            }
            self.expire_at_head(now);
            self.recover_if_needed(now);
        }
        ran
    }

    /// TTL expiry when no receive comes: takes the messages past their TTL off the head of
    /// the ready queue (at most [`EXPIRED_PER_RUN`]), dead-lettering or dropping them,
    /// and stops at the first message that could be delivered (why only the head: the
    /// module docs, *TTL*).
    #[cold]
    #[inline(never)]
    fn expire_at_head(&self, now: u64) {
        for _ in 0..EXPIRED_PER_RUN {
            // The pop takes exactly the token judged. Its message is expired at the full
            // generation judged, or the token was stale: a token keeps 8 generation bits,
            // so a stale one may name a later message of its slot by the time we act,
            // and `expire`'s CAS on the full generation keeps that message out of reach.
            let judged = std::cell::Cell::new(Verdict::Stale);
            let taken = self.ready().try_pop_if(|ready| {
                judged.set(self.judge(ready, now));
                judged.get() != Verdict::Deliverable
            });
            let Ok(Some(ready)) = taken else {
                return;
            };
            if let Verdict::Expired(generation) = judged.get() {
                self.expire(split(ready).0, generation);
            } // else a stale token, dropped as a receive would
        }
    }

    /// What a receive would do with the message a ready token names at `now`.
    fn judge(&self, ready: u32, now: u64) -> Verdict {
        let Some((slot, generation)) = self.resolve(ready, State::Ready) else {
            return Verdict::Stale;
        };
        let Ok(meta) = self.store().meta(slot) else {
            return Verdict::Stale;
        };
        if now >= meta.expires_at.load(Ordering::Relaxed) {
            Verdict::Expired(generation)
        } else {
            Verdict::Deliverable
        }
    }

    /// A timer node came due (or early: a coarse bucket). Acts on the slot if its deadline
    /// has passed; otherwise returns the deadline to be asked again at.
    fn fire(&self, node: u32, now: u64) -> Refire {
        let (slot, timer) = split_node(node);
        let meta = self.store().meta(slot).ok()?;
        match timer {
            Timer::Lease => self.fire_lease(slot, meta, now),
            Timer::Delay => self.fire_delay(slot, meta, now),
        }
    }

    /// The lease node: an expired lease goes back to ready at the lease's generation (so
    /// its receipt is stale from here on) and the node leaves the wheel; a live one is asked
    /// again at its deadline; for a slot no longer leased the node leaves the wheel. Every
    /// decision is one CAS on the exact word it read, so a lease extended or settled
    /// meanwhile (version, state) makes it look again.
    fn fire_lease(&self, slot: u32, meta: &Meta, now: u64) -> Refire {
        loop {
            let word = self.store().load(slot).ok()?;
            if !word.lease_timer {
                return None; // the bit says the node is not ours to fire (corrupt memory)
            }
            let next = match word.state {
                State::Leased => {
                    let due = meta.due_at.load(Ordering::Relaxed);
                    if due > now {
                        return Some(due);
                    }
                    Word {
                        state: State::Ready,
                        lease_timer: false,
                        ..word
                    }
                }
                // Its holder is mid-settle: look again next tick.
                State::Settling => return Some(now.saturating_add(1)),
                _ => Word {
                    lease_timer: false,
                    ..word
                },
            };
            match self.store().transition(slot, word, |_| Some(next)) {
                Ok(moved) => {
                    if word.state == State::Leased {
                        self.ready_or_expired(slot, meta, moved.generation, now);
                    }
                    return None;
                }
                Err(TransitionError::Stale(_)) => continue,
                Err(_) => return None,
            }
        }
    }

    /// The delay node: a finished delay or backoff makes the message ready.
    fn fire_delay(&self, slot: u32, meta: &Meta, now: u64) -> Refire {
        let word = self.store().load(slot).ok()?;
        if word.state != State::Delayed {
            return None; // only this node moves a slot out of Delayed: a corrupt link
        }
        let due = meta.due_at.load(Ordering::Relaxed);
        if due > now {
            return Some(due);
        }
        let ready = self
            .store()
            .transition_from(slot, State::Delayed, word.generation, |w| {
                Some(Word {
                    state: State::Ready,
                    ..w
                })
            })
            .ok()?;
        self.ready_or_expired(slot, meta, ready.generation, now);
        None
    }

    /// A message a timer just made ready (its lease, delay or backoff ended): queued at
    /// the tail, or, if its TTL ran out meanwhile, dead-lettered (or dropped) at once
    /// rather than left to wait in the queue for a receive to meet it. Its token is not
    /// queued yet, so no one else holds it (if we die here, recovery queues it).
    fn ready_or_expired(&self, slot: u32, meta: &Meta, generation: u32, now: u64) {
        if now >= meta.expires_at.load(Ordering::Relaxed) {
            self.expire(slot, generation);
        } else {
            self.push_ready(slot, generation);
        }
    }

    /// Links a slot's `timer` node into the wheel until `due` (the delay node of a slot
    /// just moved to `Delayed`, or the lease node of a first lease). Wakes sleeping
    /// receivers: each sleeps until the earliest timer it saw, and this one may be earlier
    /// (`wait`'s protocol).
    pub(crate) fn schedule_timer(&self, slot: u32, timer: Timer, due: u64) {
        self.wheel().schedule(node(slot, timer), due);
        self.ready_signal().notify();
    }

    /// Copies of every dead letter, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        let mut letters: Vec<(u64, DeadLetter)> = (0..self.store().capacity())
            .filter_map(|slot| self.copy_dead(slot, None))
            .collect();
        letters.sort_by_key(|(dead_unix, _)| *dead_unix);
        letters.into_iter().map(|(_, letter)| letter).collect()
    }

    /// Removes and returns the oldest dead letter.
    pub fn pop_dead_letter(&self) -> Option<DeadLetter> {
        while let Some(dead) = pop(self.dead()) {
            let Some((slot, generation)) = self.resolve(dead, State::Dead) else {
                continue;
            };
            let Some((_, letter)) = self.copy_dead(slot, Some(generation)) else {
                let still_ours = self
                    .store()
                    .load(slot)
                    .is_ok_and(|w| w.state == State::Dead && w.generation == generation);
                if still_ours {
                    // Pinned 255 times by concurrent listings: keep it filed, try later.
                    let _ = push(self.dead(), dead);
                    return None;
                }
                continue;
            };
            if let Ok(word) = self.free_dead(slot, generation) {
                self.release_if_unpinned(slot, word);
                return Some(letter);
            }
        }
        None
    }

    /// Puts every dead letter back on the ready queue (at the tail) with its attempts reset.
    /// Returns how many. A message keeps its TTL: one that has expired is dead-lettered (or
    /// dropped) again as expired when a receive meets it or it reaches the head of the
    /// queue at a timer run, never delivered; publish its payload anew to send it again.
    /// Letters that die again while it runs (expired, or rejected at once by a consumer)
    /// wait for the next redrive: a call takes at most as many letters as the dead-letter
    /// queue holds, so it ends however fast letters come back.
    pub fn redrive(&self) -> usize {
        let mut redriven = 0;
        let most = self.dead().capacity();
        for dead in std::iter::from_fn(|| pop(self.dead())).take(most) {
            let Some((slot, generation)) = self.resolve(dead, State::Dead) else {
                continue;
            };
            let Ok(meta) = self.store().meta(slot) else {
                continue;
            };
            // Taken first, so that the reset is ours alone (see `take`); no longer looked
            // at by listings of dead letters, so none of them sees it.
            let Some(taken) = self.take(slot, State::Dead, generation) else {
                continue;
            };
            meta.attempts.store(0, Ordering::Relaxed);
            let revived = self
                .store()
                .transition_from(slot, State::Settling, taken, |w| {
                    Some(Word {
                        state: State::Ready,
                        ..w
                    })
                });
            self.invariant(revived.is_ok(), "only the taker moves a slot it took");
            if let Ok(word) = revived {
                self.push_ready(slot, word.generation);
                redriven += 1;
            }
        }
        redriven
    }

    /// Copies a dead slot (at `generation`, if given). Returns its dead time and the copy.
    fn copy_dead(&self, slot: u32, generation: Option<u32>) -> Option<(u64, DeadLetter)> {
        let copy = self.snapshot(slot, State::Dead, generation)?;
        let letter = DeadLetter {
            id: copy.id,
            payload: copy.payload,
            reason: DeadReason::from_code(copy.dead_reason),
            error: copy.error,
            attempts: copy.attempts,
            published_at: system_time(self.unix_time(copy.published_at)),
            dead_at: system_time(copy.dead_unix),
        };
        Some((copy.dead_unix, letter))
    }

    /// Copies of up to `limit` ready messages, oldest publish first, left in the queue
    /// (for inspection: `ackring peek`). Only those `limit` payloads are copied: the slots
    /// are ordered by their publish times first.
    pub fn peek(&self, limit: usize) -> Vec<ReadyMessage> {
        let mut ready: Vec<(u64, u32, u32)> = (0..self.store().capacity())
            .filter_map(|slot| {
                let word = self.store().load(slot).ok()?;
                let meta = self.store().meta(slot).ok()?;
                (word.state == State::Ready).then(|| {
                    let published_at = meta.published_at.load(Ordering::Relaxed);
                    (published_at, slot, word.generation)
                })
            })
            .collect();
        ready.sort_unstable();
        ready
            .into_iter()
            // A message received meanwhile is skipped: the next one in line takes its place.
            .filter_map(|(_, slot, generation)| self.snapshot(slot, State::Ready, Some(generation)))
            .take(limit)
            .map(|copy| ReadyMessage {
                id: copy.id,
                payload: copy.payload,
                attempts: copy.attempts,
                published_at: system_time(self.unix_time(copy.published_at)),
            })
            .collect()
    }

    /// Copies a slot in `state` (at `generation`, if given) under a pin, so it cannot be
    /// reused while we read; `None` if it is not in that state, or left it while we read.
    fn snapshot(&self, slot: u32, state: State, generation: Option<u32>) -> Option<Snapshot> {
        let word = self.store().load(slot).ok()?;
        if word.state != state || generation.is_some_and(|g| g != word.generation) {
            return None;
        }
        self.mark_pin(slot);
        let Ok(pinned) = self
            .store()
            .transition_from(slot, state, word.generation, |w| {
                Some(Word {
                    pins: w.pins.checked_add(1)?,
                    ..w
                })
            })
        else {
            self.unmark_pin(slot);
            return None;
        };
        let meta = self.store().meta(slot).ok()?;
        let len = (meta.payload_len.load(Ordering::Relaxed) as usize).min(self.config.max_payload);
        // Pinned after acquiring a word written after its payload was published, the slot
        // is not reused; `len` is clamped to `max_payload`.
        let mut payload = vec![0; len];
        self.store().copy_payload(slot, &mut payload);
        let copy = Snapshot {
            id: MessageId(meta.id.load(Ordering::Relaxed)),
            payload,
            attempts: meta.attempts.load(Ordering::Relaxed) as u32,
            published_at: meta.published_at.load(Ordering::Relaxed),
            dead_unix: meta.dead_unix.load(Ordering::Relaxed),
            dead_reason: meta.dead_reason.load(Ordering::Relaxed),
            error: meta.reason(),
        };
        // Fields are only consistent if the slot is still the message we pinned.
        let consistent = self
            .store()
            .load(slot)
            .is_ok_and(|now| now.generation == pinned.generation && now.state == state);
        self.unpin(slot);
        consistent.then_some(copy)
    }

    /// Gauges (by a scan of the slots) and counters.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        let store = self.store();
        for slot in 0..store.capacity() {
            match store.load(slot).map(|w| w.state) {
                Ok(State::Ready) => stats.ready += 1,
                Ok(State::Delayed) => stats.delayed += 1,
                Ok(State::Leased | State::Settling) => stats.in_flight += 1,
                Ok(State::Dead) => stats.dead += 1,
                _ => {}
            }
        }
        Stats {
            ready: stats.ready,
            delayed: stats.delayed,
            in_flight: stats.in_flight,
            dead: stats.dead,
            sleeping_receivers: self.participants().sleepers(SleepsOn::Ready),
            sleeping_publishers: self.participants().sleepers(SleepsOn::Room),
            ..self.counters().snapshot()
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
mod loom_models {
    use super::*;
    use crate::clock::ManualClock;
    use loom::sync::Arc;
    use loom::thread;

    /// One nanosecond: the wheel's tick in the models that run it, and a short TTL.
    const NS: Duration = Duration::from_nanos(1);

    /// A queue of `capacity` one-byte messages on a manual clock, with dedup off (its
    /// stripes add nothing to these races), as `adjust` changes that configuration.
    fn model_queue(
        capacity: u32,
        adjust: impl FnOnce(QueueConfig) -> QueueConfig,
    ) -> (Arc<Queue<ManualClock>>, ManualClock) {
        let clock = ManualClock::new();
        let config = adjust(QueueConfig {
            dedup_window: None,
            ..QueueConfig::new(capacity, 1)
        });
        (
            Arc::new(Queue::with_clock(config, clock.clone()).unwrap()),
            clock,
        )
    }

    /// The wheel ticking every nanosecond.
    fn ticking(config: QueueConfig) -> QueueConfig {
        QueueConfig {
            timer_tick: NS,
            ..config
        }
    }

    /// A message that lives a nanosecond.
    fn short_lived() -> PublishOptions {
        PublishOptions {
            ttl: Some(NS),
            ..PublishOptions::default()
        }
    }

    /// DESIGN.md's "wheel insert racing the ticker", end to end: a lease taken while the
    /// wheel runs must not lose its timer, or the message would stay in flight for ever
    /// after its consumer vanished. (`wheel::loom_models` races the wheel on its own.)
    #[test]
    fn a_lease_taken_during_a_wheel_run_still_expires() {
        loom::model(|| {
            let (queue, clock) = model_queue(2, ticking);
            queue.publish(b"m").unwrap();
            let delayed = PublishOptions {
                delay: Some(NS),
                ..PublishOptions::default()
            };
            queue.publish_with(b"d", delayed).unwrap();
            clock.advance(NS); // the delayed message is due: a run fires it
            let receiver = {
                let queue = queue.clone();
                // Lease "m" and walk away without settling (a vanished consumer).
                thread::spawn(move || std::mem::forget(queue.try_receive()))
            };
            let ticker = {
                let queue = queue.clone();
                thread::spawn(move || queue.tick())
            };
            receiver.join().unwrap();
            ticker.join().unwrap();
            // Past every lease: whatever was leased must come back.
            clock.advance(queue.config().visibility_timeout * 2);
            let mut seen = Vec::new();
            while let Some(delivery) = queue.try_receive() {
                seen.push(delivery.payload().to_vec());
                delivery.ack().unwrap();
            }
            seen.sort();
            assert_eq!(
                seen,
                [b"d".to_vec(), b"m".to_vec()],
                "both messages delivered again"
            );
        });
    }

    /// The issue's "ack racing lease expiry", on the queue's own receive, ack and ticker:
    /// the lease has run out and a tick runs while the consumer acks. Exactly one outcome:
    /// the ack counts and the message is gone, or the ack fails with `LeaseLost` and the
    /// message is delivered again, as attempt 2.
    #[test]
    fn an_ack_racing_its_lease_running_out_has_exactly_one_outcome() {
        loom::model(|| {
            let (queue, clock) = model_queue(1, |config| QueueConfig {
                // A few ticks: the wheel catches up tick by tick.
                visibility_timeout: 2 * NS,
                ..ticking(config)
            });
            let lease = queue.config().visibility_timeout;
            queue.publish(b"a").unwrap();
            let delivery = queue.try_receive().expect("a is ready");
            clock.advance(lease); // the lease has run out: the next tick takes it back
            let ticker = {
                let queue = queue.clone();
                thread::spawn(move || queue.tick())
            };
            let acked = delivery.ack();
            ticker.join().unwrap();
            queue.tick();
            let again = queue.try_receive();
            match acked {
                Ok(()) => {
                    assert!(again.is_none(), "an acked message is not delivered again");
                }
                Err(SettleError::LeaseLost { .. }) => {
                    let again = again.expect("a message whose ack failed comes back");
                    assert_eq!((again.payload(), again.attempt()), (&b"a"[..], 2));
                    again.ack().unwrap();
                }
            }
        });
    }

    /// A timer run taking an expired message off the head of the ready queue while a
    /// receive pops: the expired message dies exactly once, and the live one behind it is
    /// delivered, never taken by the run.
    #[test]
    fn a_timer_run_expiring_the_head_races_a_receive() {
        loom::model(|| {
            let (queue, clock) = model_queue(2, ticking);
            queue.publish_with(b"a", short_lived()).unwrap();
            queue.publish(b"b").unwrap();
            clock.advance(NS); // "a" has expired
            let ticker = {
                let queue = queue.clone();
                thread::spawn(move || queue.tick())
            };
            let delivery = queue.try_receive().expect("b is ready");
            assert_eq!(delivery.payload(), b"b");
            delivery.ack().unwrap();
            ticker.join().unwrap();
            assert!(queue.try_receive().is_none());
            let letters: Vec<_> = queue
                .dead_letters()
                .into_iter()
                .map(|letter| (letter.payload, letter.reason))
                .collect();
            assert_eq!(letters, [(b"a".to_vec(), DeadReason::Expired)]);
        });
    }

    /// Crash recovery may leave a message two ready tokens (it re-queues what a slot's
    /// header says is ready without proving the token missing). Two receivers race with
    /// them; the winner acks and publishes the next message into the same slot. The loser
    /// must write nothing to the slot: by then it may hold that next message, whose
    /// attempt count it would overwrite (first delivered as attempt 2).
    #[test]
    fn a_receiver_that_loses_the_race_for_a_twin_token_writes_nothing() {
        loom::model(|| {
            let (queue, _) = model_queue(1, |config| config);
            queue.publish(b"a").unwrap();
            let ready = queue.store().load(0).unwrap();
            queue.push_ready(0, ready.generation); // the twin
            let receiver = |queue: Arc<Queue<ManualClock>>| {
                thread::spawn(move || {
                    if let Some(delivery) = queue.try_receive() {
                        let first = delivery.payload() == b"a";
                        assert_eq!(delivery.attempt(), 1, "nothing failed or ran out");
                        delivery.ack().unwrap();
                        if first {
                            queue.publish(b"b").unwrap();
                        }
                    }
                })
            };
            let one = receiver(queue.clone());
            let two = receiver(queue.clone());
            one.join().unwrap();
            two.join().unwrap();
            if let Some(delivery) = queue.try_receive() {
                assert_eq!(
                    (delivery.payload(), delivery.attempt()),
                    (&b"b"[..], 1),
                    "the next message's first delivery"
                );
            };
        });
    }

    /// The same twin tokens when the message has expired: both holders would dead-letter
    /// it. The winner's dead letter is popped, and the next message published into the
    /// same slot and rejected. The loser must write nothing: its "expired" reason, empty
    /// error text and time would otherwise land on that next message's dead letter.
    #[test]
    fn a_twin_token_holder_that_loses_the_race_to_dead_letter_writes_nothing() {
        // Two preemptions: the losing write needs only one (after the loser read the slot
        // as ready), and three take CI's loom step past a quarter of an hour.
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(2);
        builder.check(|| {
            let (queue, clock) = model_queue(1, |config| QueueConfig {
                dead_letter_capacity: 1,
                ..config
            });
            queue.publish_with(b"a", short_lived()).unwrap();
            let ready = queue.store().load(0).unwrap();
            queue.push_ready(0, ready.generation); // the twin
            clock.advance(NS); // "a" has expired
            let reject = |delivery: Delivery<'_, ManualClock>| {
                assert_eq!(
                    delivery.payload(),
                    b"b",
                    "an expired message is never delivered"
                );
                delivery.reject("bad").unwrap();
            };
            // One receiver only receives; the other also pops the dead letter and reuses
            // the slot for "b", which it receives and rejects.
            let plain = {
                let queue = queue.clone();
                thread::spawn(move || {
                    if let Some(delivery) = queue.try_receive() {
                        reject(delivery);
                    }
                })
            };
            let reusing = {
                let queue = queue.clone();
                thread::spawn(move || {
                    if let Some(delivery) = queue.try_receive() {
                        reject(delivery);
                    }
                    let Some(letter) = queue.pop_dead_letter() else {
                        return; // "a" not dead-lettered yet: the other receiver will
                    };
                    assert_eq!(
                        (&letter.payload[..], letter.reason),
                        (&b"a"[..], DeadReason::Expired)
                    );
                    queue.publish(b"b").unwrap();
                    if let Some(delivery) = queue.try_receive() {
                        reject(delivery);
                    }
                })
            };
            plain.join().unwrap();
            reusing.join().unwrap();
            if let Some(delivery) = queue.try_receive() {
                reject(delivery);
            }
            let letters: Vec<_> = queue
                .dead_letters()
                .into_iter()
                .map(|letter| (letter.payload, letter.reason, letter.error))
                .collect();
            let a = (b"a".to_vec(), DeadReason::Expired, String::new());
            let b = (b"b".to_vec(), DeadReason::Rejected, "bad".to_string());
            assert!(
                letters == [a] || letters == [b],
                "each message's own dead letter, got {letters:?}"
            );
        });
    }

    /// The lease-timer bit under a race: a slot's old lease node fires (its lease was
    /// acked) while the slot is published and leased again. Whichever CAS wins, exactly one
    /// timer must stay behind for the new lease, so it still runs out.
    #[test]
    fn an_old_lease_timer_firing_while_the_slot_is_leased_again_keeps_the_new_lease_timed() {
        loom::model(|| {
            let (queue, clock) = model_queue(1, ticking);
            let lease = queue.config().visibility_timeout;
            queue.publish(b"a").unwrap();
            queue.try_receive().unwrap().ack().unwrap(); // its lease node stays in the wheel
            clock.advance(lease); // ... and is due now
            let ticker = {
                let queue = queue.clone();
                thread::spawn(move || queue.tick())
            };
            let consumer = {
                let queue = queue.clone();
                thread::spawn(move || {
                    queue.publish(b"b").unwrap();
                    // Lease "b" and vanish without settling.
                    std::mem::forget(queue.try_receive().expect("b is ready"));
                })
            };
            ticker.join().unwrap();
            consumer.join().unwrap();
            clock.advance(lease);
            let again = queue.try_receive().expect("b's lease ran out");
            assert_eq!((again.payload(), again.attempt()), (&b"b"[..], 2));
            again.ack().unwrap();
        });
    }
}
