//! # ackring
//!
//! A lock-free, in-memory message-queue engine for single-host low latency.
//!
//! ackring's goal is a broker's reliability (acks, leases and redelivery, retries with
//! backoff, a dead-letter queue, TTL, dedup) at the latency of a lock-free ring, both inside
//! one process and between sibling processes sharing a memory segment.
//!
//! This release provides the core everything else stands on:
//! - [`Ring<T>`]: a bounded lock-free MPMC FIFO (Vyukov's algorithm) with batch operations;
//! - [`TokenRing`]: the same algorithm over caller-provided memory, carrying `u64` tokens,
//!   the building block of the shared-memory queue.
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
    Delivery, PublishError, PublishOptions, Queue, QueueConfig, ReadyMessage, SettleError,
};
pub use ring::{Ring, TokenRing};

/// The README's example is compiled and run as a doc test, so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
