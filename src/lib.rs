//! # ackring
//!
//! A lock-free, in-memory message-queue engine for single-host low latency.
//!
//! ackring's goal is a broker's reliability (acks, leases and redelivery, retries with
//! backoff, a dead-letter queue, TTL, dedup) at the latency of a lock-free ring, both inside
//! one process and between sibling processes sharing a memory segment.
//!
//! - [`Queue`]: the reliable queue. Publish with ids (dedup), TTL and delay; receive under
//!   a lease; ack, nack (retry with backoff), reject, extend; dead letters you can list,
//!   pop and redrive; stats. In one process ([`Queue::new`]) or shared by processes
//!   through a segment ([`Queue::create_shm`], [`Queue::open_shm`], or a file that
//!   outlives a reboot), where a process killed at any instruction leaves nothing stuck.
//! - [`Ring<T>`]: a bounded lock-free MPMC FIFO (Vyukov's algorithm) with batch
//!   operations, a product of its own; the queue does not use it (its index rings are a
//!   different algorithm, one that a process killed mid-operation cannot block).
//! - [`TokenRing`]: the same algorithm over caller-provided memory, carrying `u64` tokens.
//!
//! `ARCHITECTURE.md` at the repository root maps the code: layers as folders, each
//! importing only the ones below it (`base`, then `ring` and `liveness`, `engine`,
//! `layout`, `queue`, `shm`).
//!
//! ```
//! use ackring::{Queue, QueueConfig};
//!
//! let queue = Queue::new(QueueConfig::new(1024, 64))?;
//! let id = queue.publish(b"order 17")?;
//! let delivery = queue.try_receive().expect("a ready message");
//! assert_eq!((delivery.id(), delivery.payload()), (id, &b"order 17"[..]));
//! delivery.ack()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ```
//! let ring = ackring::Ring::new(1024)?;
//! ring.try_push("hello")?;
//! assert_eq!(ring.try_pop(), Some("hello"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod base;
#[cfg(all(feature = "nats", not(loom)))]
pub mod bridge;
mod engine;
pub mod error;
mod layout;
mod liveness;
pub mod queue;
pub mod ring;
#[cfg(not(loom))]
pub mod shm;

pub use base::clock;
pub use engine::dedup;

// The whole public surface, at the root.
pub use base::clock::{Clock, ManualClock, MonotonicClock};
pub use base::id::MessageId;
pub use engine::dedup::{DedupConfigError, DedupError, DedupWindow};
pub use error::{
    BatchAckError, BatchPublishError, ConfigError, PublishError, SettleError, ShmError,
};
#[cfg(all(feature = "async", not(loom)))]
pub use queue::asynchronous::{Deliveries, Publish, Receive, ReceiveBatch};
pub use queue::{
    DeadLetter, DeadReason, Delivery, ExpiryPolicy, OwnedDelivery, PublishOptions, Queue,
    QueueBuilder, QueueConfig, ReadyMessage, RetryBackoff, StalledHolder, Stats, LEASE_RAN_OUT,
};
pub use ring::{CapacityError, Full, Ring, RingMemoryError, TokenRing, TokenRingError};
#[cfg(not(loom))]
pub use shm::Sharing;

/// The README's examples are compiled and run as doc tests, so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// So is ARCHITECTURE.md's.
#[cfg(doctest)]
#[doc = include_str!("../ARCHITECTURE.md")]
struct ArchitectureDoctests;
