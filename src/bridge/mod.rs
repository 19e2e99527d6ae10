//! Beyond one host: a bridge between a local queue and a NATS JetStream stream (feature
//! `nats`), on the async API and tokio (which async-nats needs).
//!
//! - [`Outbound`], the outbox: leases messages from a local queue and publishes each to a
//!   subject a stream captures, with `Nats-Msg-Id` naming the message beyond its queue
//!   (the queue's [`identity`](crate::Queue::identity) and the message id), and acks it
//!   locally only once JetStream has acked the publish (a duplicate counts as stored). A
//!   publish that fails or is not acked within `ack_timeout` nacks the message, so the
//!   queue's backoff and dead-letter rules apply. Its window of unacked publishes is
//!   bounded; it extends leases while it waits.
//! - [`Inbound`], the inbox: pulls from a durable JetStream consumer with explicit acks and
//!   publishes each message locally with an id derived from its `Nats-Msg-Id` (or its
//!   stream and sequence), so the local dedup window absorbs the broker's redeliveries. It
//!   acks the broker message once the local publish returned Ok or Duplicate; a full local
//!   queue makes it Nak with a delay (back-pressure), never drop.
//!
//! # What holds end to end
//!
//! - **At least once across the hop.** A message leaves the local queue (acked) only after
//!   JetStream stored it, and leaves JetStream's consumer (acked) only after the other
//!   queue holds it. A bridge killed at any point re-sends or re-delivers, never loses.
//!   While the server is unreachable the outbound bridge takes no new leases, so an
//!   outage uses up at most one attempt of the messages in flight when it began (their
//!   acks time out and they are nacked). The one exception to "never loses": a message
//!   whose payload is over the receiving queue's `max_payload` is terminated at the broker
//!   and counted (`InboundCounts::refused`); give both queues the same `max_payload`.
//! - **Order:** each direction keeps the order it receives in, until a message is retried:
//!   a nack, a lease that ran out (a killed bridge), a Nak while the local queue is full
//!   send that message behind later ones.
//! - **Expired in transit:** a message whose `Ackring-Expires` has passed when it comes
//!   in is acked and counted (`InboundCounts::expired`), not published (nor dead-lettered)
//!   on the receiving queue.
//! - **Effectively once for consumers idempotent per id**, within the windows:
//!   - *Outbound*: JetStream's duplicate window must cover the longest time between a
//!     message's first and last forward attempt, `(attempts - 1) x (max(lease, 2 x ack
//!     timeout) + longest backoff)` as the queue is configured; [`Outbound::start`] refuses a stream whose
//!     window is shorter ([`BridgeError::WindowTooShort`]). A re-send after a bridge was
//!     down longer than the rest of that window, or after the message waited long behind
//!     others in the queue, is stored twice.
//!   - The `Nats-Msg-Id` names the queue, the message id and its publish time, so a new
//!     message that reuses an id (after the queue's own window) is not taken for a
//!     re-send.
//!   - *Inbound*: the local dedup window must cover the time from a message's local
//!     publish to its broker redelivery if the broker ack was lost: the consumer's ack wait,
//!     plus however long the bridge is down. [`Inbound::start`] refuses a queue without
//!     dedup or with a window shorter than twice the ack wait
//!     ([`BridgeError::LocalWindowTooShort`]).
//! - Headers carry the attempt (`Ackring-Attempt`), the publish time (`Ackring-Published`,
//!   Unix ns), the origin (`Ackring-Origin`) and the expiry (`Ackring-Expires`, Unix ns),
//!   which the inbound side honours as the local message's TTL.

mod inbound;
mod outbound;

pub use inbound::{Inbound, InboundConfig, InboundCounts};
pub use outbound::{Outbound, OutboundConfig, OutboundCounts};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The delivery attempt the message was forwarded on (1 for the first).
pub const HEADER_ATTEMPT: &str = "Ackring-Attempt";
/// When the message was first published, Unix nanoseconds.
pub const HEADER_PUBLISHED: &str = "Ackring-Published";
/// Who forwarded it (`OutboundConfig::origin`).
pub const HEADER_ORIGIN: &str = "Ackring-Origin";
/// When it expires, Unix nanoseconds; absent: never.
pub const HEADER_EXPIRES: &str = "Ackring-Expires";
/// JetStream's dedup header.
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";

/// What went wrong in a bridge.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// A setting is out of range.
    #[error("invalid bridge setting: {0}")]
    Config(&'static str),
    /// The stream could not be looked up (missing, or the server unreachable).
    #[error("JetStream stream {stream:?}: {reason}")]
    Stream {
        /// The stream's name.
        stream: String,
        /// The client's error.
        reason: String,
    },
    /// The stream forgets message ids sooner than a message may be re-sent.
    #[error(
        "stream {stream:?} remembers message ids for {window:?}, but a message may be \
         forwarded again up to {needed:?} after its first attempt ({attempts} attempts of up \
         to {attempt:?} each, lease or ack timeout plus backoff): raise the stream's \
         duplicate_window, or lower the queue's max_attempts, visibility timeout or backoff"
    )]
    WindowTooShort {
        /// The stream's name.
        stream: String,
        /// Its duplicate window.
        window: Duration,
        /// The longest span between a message's first and last forward attempt.
        needed: Duration,
        /// The queue's max_attempts.
        attempts: u32,
        /// The longest attempt, with its backoff.
        attempt: Duration,
    },
    /// The local queue would not absorb the broker's redeliveries.
    #[error(
        "the local queue's dedup window ({window:?}) must cover at least {needed:?} (twice \
         the consumer's ack wait) to absorb the broker's redeliveries: build the queue with \
         a longer dedup_window"
    )]
    LocalWindowTooShort {
        /// The queue's dedup window (zero: dedup off).
        window: Duration,
        /// What it must cover.
        needed: Duration,
    },
    /// The durable consumer could not be created or read from.
    #[error("JetStream consumer {consumer:?}: {reason}")]
    Consumer {
        /// The consumer's name.
        consumer: String,
        /// The client's error.
        reason: String,
    },
}

/// Unix nanoseconds of `at` (0 before the epoch).
fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
