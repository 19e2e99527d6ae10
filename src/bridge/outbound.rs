//! The outbox: local queue -> JetStream (see the module docs of `bridge`).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture};
use async_nats::HeaderMap;
use futures_util::stream::{FuturesUnordered, StreamExt};

use super::{
    unix_nanos, BridgeError, HEADER_ATTEMPT, HEADER_EXPIRES, HEADER_MSG_ID, HEADER_ORIGIN,
    HEADER_PUBLISHED,
};
use crate::layout::config::{QueueConfig, RetryBackoff};
use crate::queue::{OwnedDelivery, Queue};

/// Settings of an [`Outbound`] bridge.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OutboundConfig {
    /// The stream that stores what is forwarded (its duplicate window is checked).
    pub stream: String,
    /// The subject each message is published to; the stream must capture it.
    pub subject: String,
    /// Publishes awaiting JetStream's ack at once, at most. [256 publishes]
    pub window: usize,
    /// How long a publish may wait for JetStream's ack before the message is nacked. [5 s]
    pub ack_timeout: Duration,
    /// Named in each message's `Ackring-Origin` header. [the host's name]
    pub origin: String,
}

impl OutboundConfig {
    /// Forwarding to `subject`, captured by `stream`, with the defaults above.
    pub fn new(stream: impl Into<String>, subject: impl Into<String>) -> Self {
        Self {
            stream: stream.into(),
            subject: subject.into(),
            window: 256,
            ack_timeout: Duration::from_secs(5),
            origin: host_name(),
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "ackring".to_owned())
}

/// What an [`Outbound`] bridge has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboundCounts {
    /// Stored by JetStream and acked locally.
    pub forwarded: u64,
    /// Of those, JetStream said it had stored already (a re-send it absorbed).
    pub duplicates: u64,
    /// Nacked locally: the publish failed or was not acked in time.
    pub failed: u64,
    /// Stored by JetStream, but the local lease had run out before the ack (the message
    /// is delivered again, and JetStream absorbs its re-send).
    pub lease_lost: u64,
}

#[derive(Default)]
struct Counts {
    forwarded: AtomicU64,
    duplicates: AtomicU64,
    failed: AtomicU64,
    lease_lost: AtomicU64,
}

impl Counts {
    fn snapshot(&self) -> OutboundCounts {
        OutboundCounts {
            forwarded: self.forwarded.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            lease_lost: self.lease_lost.load(Ordering::Relaxed),
        }
    }
}

/// The outbox bridge: forwards a local queue's messages to a JetStream subject.
///
/// The stream's duplicate window must cover the queue's retries (see
/// [`start`](Self::start)): a queue with the defaults (5 attempts, 30 s leases, backoff up
/// to 60 s) needs 360 s, over JetStream's default of 2 minutes, so give the stream a
/// longer `duplicate_window` or the queue fewer attempts.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use ackring::bridge::{Outbound, OutboundConfig};
///
/// let queue = Arc::new(ackring::Queue::open_shm("orders")?);
/// let client = async_nats::connect("127.0.0.1:4222").await?;
/// let bridge = Outbound::start(queue, client, OutboundConfig::new("ORDERS", "orders.new")).await?;
/// let counts = bridge.run(async { tokio::signal::ctrl_c().await.ok(); }).await;
/// println!("forwarded {}", counts.forwarded);
/// # Ok(())
/// # }
/// ```
pub struct Outbound {
    queue: Arc<Queue>,
    client: async_nats::Client,
    jetstream: jetstream::Context,
    config: OutboundConfig,
    counts: Counts,
}

impl Outbound {
    /// Checks the settings and the stream's duplicate window against the queue's retry
    /// rules, and makes a bridge ready to [`run`](Self::run).
    ///
    /// # Errors
    /// [`BridgeError::Config`], [`BridgeError::Stream`] (no such stream, or no server),
    /// [`BridgeError::WindowTooShort`].
    pub async fn start(
        queue: Arc<Queue>,
        client: async_nats::Client,
        config: OutboundConfig,
    ) -> Result<Self, BridgeError> {
        if config.window == 0 {
            return Err(BridgeError::Config("the window must be at least 1"));
        }
        if config.subject.is_empty() || config.ack_timeout.is_zero() {
            return Err(BridgeError::Config(
                "the subject must not be empty, nor the ack timeout zero",
            ));
        }
        let mut jetstream = jetstream::new(client.clone());
        // Its own timeout for publish acks would cut ours short.
        jetstream.set_timeout(config.ack_timeout);
        let stream_error = |reason: String| BridgeError::Stream {
            stream: config.stream.clone(),
            reason,
        };
        let mut stream = jetstream
            .get_stream(&config.stream)
            .await
            .map_err(|e| stream_error(e.to_string()))?;
        let window = stream
            .info()
            .await
            .map_err(|e| stream_error(e.to_string()))?
            .config
            .duplicate_window;
        let (needed, attempt) = forward_span(queue.config(), config.ack_timeout);
        if window < needed {
            return Err(BridgeError::WindowTooShort {
                stream: config.stream,
                window,
                needed,
                attempts: queue.config().max_attempts,
                attempt,
            });
        }
        Ok(Self {
            queue,
            client,
            jetstream,
            config,
            counts: Counts::default(),
        })
    }

    /// What the bridge has done so far.
    pub fn counts(&self) -> OutboundCounts {
        self.counts.snapshot()
    }

    /// Forwards until `stop` resolves, then waits for the publishes under way (each ends
    /// within the ack timeout); returns the counts. Errors of single messages are counted
    /// and nacked, and a lost connection is retried by the client: this never fails.
    ///
    /// Messages are sent in the order they are received, so JetStream stores one producer's
    /// messages in its order, as long as none is retried.
    pub async fn run(&self, stop: impl Future<Output = ()>) -> OutboundCounts {
        let identity = format!("{:032x}", self.queue.identity());
        // The lease must outlast the wait for the ack: one extend when taken, where the
        // ack timeout comes near it (a timer per message cost a good part of the rate).
        let hold = self.config.ack_timeout.saturating_mul(2);
        let extend = hold > self.queue.config().visibility_timeout;
        let mut stop = std::pin::pin!(stop);
        // Polled here, not spawned: a task per message cost a good part of the rate too.
        let mut in_flight = FuturesUnordered::new();
        loop {
            if in_flight.len() >= self.config.window {
                in_flight.next().await;
                continue;
            }
            // While the server is away, take no lease: each would time out and be nacked,
            // using up the message's attempts for nothing.
            if self.client.connection_state() != async_nats::connection::State::Connected {
                tokio::select! {
                    biased;
                    () = &mut stop => break,
                    Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                    () = tokio::time::sleep(RECONNECT_LOOK) => {}
                }
                continue;
            }
            let mut delivery = tokio::select! {
                biased;
                () = &mut stop => break,
                Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
                delivery = self.queue.receive_async() => delivery,
            };
            if extend {
                // Lost already (an error): the message is delivered again, and re-sent.
                let _ = delivery.extend(hold);
            }
            // Sent here, in order; the waits for JetStream's acks run beside the next sends.
            let sent = self
                .jetstream
                .publish_with_headers(
                    self.config.subject.clone(),
                    headers(&delivery, &identity, &self.config.origin),
                    bytes::Bytes::copy_from_slice(delivery.payload()),
                )
                .await;
            match sent {
                Ok(ack) => in_flight.push(settle(delivery, ack, &self.counts)),
                Err(error) => {
                    self.counts.failed.fetch_add(1, Ordering::Relaxed);
                    let _ = delivery.nack(&format!("JetStream publish failed: {error}"));
                }
            }
        }
        while in_flight.next().await.is_some() {}
        self.counts()
    }
}

/// How often a bridge without a connection looks whether the client reconnected.
const RECONNECT_LOOK: Duration = Duration::from_millis(50);

/// The longest time between a message's first and last forward attempt, and the longest
/// attempt with its backoff. An attempt holds the lease, the visibility timeout or, where
/// `run` extends it, twice the ack timeout: a killed bridge leaves it to run out, and a
/// live one nacks within the ack timeout; then the backoff. Not counted: time the message
/// then waits in the queue behind others, which a backlog adds to each retry.
fn forward_span(config: &QueueConfig, ack_timeout: Duration) -> (Duration, Duration) {
    let backoff = match config.backoff {
        RetryBackoff::Fixed(wait) => wait,
        RetryBackoff::Exponential { max, .. } => max,
    };
    let attempt = config.visibility_timeout.max(ack_timeout.saturating_mul(2)) + backoff;
    let retries = config.max_attempts.saturating_sub(1);
    (attempt.saturating_mul(retries), attempt)
}

/// A message's headers (see the module docs of `bridge`). Its `Nats-Msg-Id` names the
/// queue, the id and the publish time: a publisher may give an id again once the queue's
/// own dedup window has passed, for a new message JetStream must not take for a re-send.
/// The time is on the queue's clock, the same in every process that re-sends it (each
/// reads its own wall-clock offset, so the Unix time differs by microseconds).
fn headers(delivery: &OwnedDelivery, identity: &str, origin: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        HEADER_MSG_ID,
        format!(
            "{identity}-{:016x}-{:x}",
            delivery.id().0,
            delivery.published_nanos()
        ),
    );
    headers.insert(HEADER_ATTEMPT, delivery.attempt().to_string());
    let published = unix_nanos(delivery.published_at());
    headers.insert(HEADER_PUBLISHED, published.to_string());
    headers.insert(HEADER_ORIGIN, origin);
    if let Some(expires) = delivery.expires_at() {
        headers.insert(HEADER_EXPIRES, unix_nanos(expires).to_string());
    }
    headers
}

/// Waits for JetStream's ack of a sent message (the context's timeout is the bridge's ack
/// timeout), and settles the message by the outcome.
async fn settle(delivery: OwnedDelivery, ack: PublishAckFuture, counts: &Counts) {
    match ack.await {
        Ok(ack) => {
            if ack.duplicate {
                counts.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            match delivery.ack() {
                Ok(()) => counts.forwarded.fetch_add(1, Ordering::Relaxed),
                Err(_) => counts.lease_lost.fetch_add(1, Ordering::Relaxed),
            };
        }
        Err(error) => {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            let _ = delivery.nack(&format!("JetStream did not store the message: {error}"));
        }
    }
}
