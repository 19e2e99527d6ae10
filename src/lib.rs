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
//! - [`Ring<T>`]: the bounded lock-free MPMC FIFO underneath (Vyukov's algorithm) with
//!   batch operations, usable on its own.
//! - [`TokenRing`]: the same algorithm over caller-provided memory, carrying `u64` tokens.
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

pub mod clock;
pub mod dedup;
mod id;
mod participants;
pub mod queue;
mod region;
pub mod ring;
#[cfg(not(loom))]
pub mod shm;
mod slots;
mod stats;
mod sync;
mod wait;
mod wheel;

pub use clock::MonotonicClock;
pub use id::MessageId;
pub use queue::{
    BatchAckError, BatchPublishError, Delivery, PublishError, PublishOptions, Queue, QueueConfig,
    ReadyMessage, SettleError,
};
pub use ring::{Ring, TokenRing};

/// The README's example is compiled and run as a doc test, so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
