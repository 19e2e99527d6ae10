//! The inbox: JetStream -> local queue (see the module docs of `bridge`).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures_util::StreamExt;

use super::{BridgeError, HEADER_EXPIRES, HEADER_MSG_ID};
use crate::base::id::MessageId;
use crate::error::PublishError;
use crate::queue::{PublishOptions, Queue};

/// Settings of an [`Inbound`] bridge.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct InboundConfig {
    /// The stream to read.
    pub stream: String,
    /// The durable consumer's name (created if missing): a restarted bridge goes on where
    /// the last one left off.
    pub consumer: String,
    /// Only messages on subjects matching this; empty: all the stream's.
    pub filter_subject: String,
    /// How long the broker waits for this bridge's ack before it delivers again. [30 s]
    pub ack_wait: Duration,
    /// How long a message waits for room in a full local queue before the broker is asked
    /// to hold it back (a delayed Nak), and for how long. [100 ms]
    pub full_delay: Duration,
}

impl InboundConfig {
    /// Reading `stream` through the durable consumer `consumer`, with the defaults above.
    pub fn new(stream: impl Into<String>, consumer: impl Into<String>) -> Self {
        Self {
            stream: stream.into(),
            consumer: consumer.into(),
            filter_subject: String::new(),
            ack_wait: Duration::from_secs(30),
            full_delay: Duration::from_millis(100),
        }
    }
}

/// What an [`Inbound`] bridge has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboundCounts {
    /// Published locally, and acked to the broker.
    pub published: u64,
    /// Refused locally as already published (a broker redelivery absorbed), and acked.
    pub duplicates: u64,
    /// Held back with a delayed Nak while the local queue was full.
    pub pushed_back: u64,
    /// Held back with a delayed Nak while the local dedup window was full of live ids or
    /// locked by a stopped process (raise the queue's `dedup_capacity` if this grows).
    pub dedup_busy: u64,
    /// Past their expiry when they came: acked and not published (their TTL ran out).
    pub expired: u64,
    /// Refused for good by the local queue (a payload over its `max_payload`): terminated
    /// at the broker, which then stops delivering them.
    pub refused: u64,
    /// Acks or Naks the broker did not take (the message comes again after the ack wait).
    pub ack_errors: u64,
    /// Errors from the consumer's message stream (missed heartbeats while the server was
    /// away, a consumer deleted): the client goes on retrying.
    pub stream_errors: u64,
}

#[derive(Default)]
struct Counts {
    published: AtomicU64,
    duplicates: AtomicU64,
    pushed_back: AtomicU64,
    dedup_busy: AtomicU64,
    expired: AtomicU64,
    refused: AtomicU64,
    ack_errors: AtomicU64,
    stream_errors: AtomicU64,
}

impl Counts {
    fn snapshot(&self) -> InboundCounts {
        let get = |count: &AtomicU64| count.load(Ordering::Relaxed);
        InboundCounts {
            published: get(&self.published),
            duplicates: get(&self.duplicates),
            pushed_back: get(&self.pushed_back),
            dedup_busy: get(&self.dedup_busy),
            expired: get(&self.expired),
            refused: get(&self.refused),
            ack_errors: get(&self.ack_errors),
            stream_errors: get(&self.stream_errors),
        }
    }
}

/// The inbox bridge: publishes a JetStream consumer's messages into a local queue.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use ackring::bridge::{Inbound, InboundConfig};
///
/// let queue = Arc::new(ackring::Queue::open_shm("orders-in")?);
/// let client = async_nats::connect("127.0.0.1:4222").await?;
/// let bridge = Inbound::start(queue, client, InboundConfig::new("ORDERS", "host-b")).await?;
/// let counts = bridge.run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
/// println!("published {}", counts.published);
/// # Ok(())
/// # }
/// ```
pub struct Inbound {
    queue: Arc<Queue>,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    config: InboundConfig,
    counts: Counts,
}

impl Inbound {
    /// Checks the local dedup window, and creates (or finds) the durable consumer.
    ///
    /// # Errors
    /// [`BridgeError::Config`], [`BridgeError::LocalWindowTooShort`],
    /// [`BridgeError::Stream`], [`BridgeError::Consumer`].
    pub async fn start(
        queue: Arc<Queue>,
        client: async_nats::Client,
        config: InboundConfig,
    ) -> Result<Self, BridgeError> {
        if config.consumer.is_empty() || config.ack_wait.is_zero() {
            return Err(BridgeError::Config(
                "the consumer's name must not be empty, nor the ack wait zero",
            ));
        }
        let jetstream = jetstream::new(client);
        let stream =
            jetstream
                .get_stream(&config.stream)
                .await
                .map_err(|e| BridgeError::Stream {
                    stream: config.stream.clone(),
                    reason: e.to_string(),
                })?;
        let consumer_config = pull::Config {
            durable_name: Some(config.consumer.clone()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: config.ack_wait,
            // Unlimited: a Nak for back-pressure must never use up a message's deliveries.
            max_deliver: -1,
            filter_subject: config.filter_subject.clone(),
            ..pull::Config::default()
        };
        let consumer_error = |reason: String| BridgeError::Consumer {
            consumer: config.consumer.clone(),
            reason,
        };
        let consumer = stream
            .get_or_create_consumer(&config.consumer, consumer_config)
            .await
            .map_err(|e| consumer_error(e.to_string()))?;
        // A consumer that existed keeps its own settings: check those.
        let actual = &consumer.cached_info().config;
        if actual.ack_policy != jetstream::consumer::AckPolicy::Explicit || actual.max_deliver > 0 {
            return Err(consumer_error(format!(
                "it exists with ack policy {:?} and max_deliver {}; the bridge needs explicit \
                 acks and unlimited deliveries (a Nak for back-pressure must not use them up)",
                actual.ack_policy, actual.max_deliver
            )));
        }
        let window = queue.config().dedup_window.unwrap_or_default();
        let needed = actual.ack_wait.saturating_mul(2);
        if window < needed {
            return Err(BridgeError::LocalWindowTooShort { window, needed });
        }
        Ok(Self {
            queue,
            consumer,
            config,
            counts: Counts::default(),
        })
    }

    /// What the bridge has done so far.
    pub fn counts(&self) -> InboundCounts {
        self.counts.snapshot()
    }

    /// Moves messages until `stop` resolves; returns the counts. A lost connection is
    /// retried by the client.
    ///
    /// # Errors
    /// [`BridgeError::Consumer`] if the consumer cannot be read at all (deleted).
    pub async fn run(&self, stop: impl Future<Output = ()>) -> Result<InboundCounts, BridgeError> {
        let consumer_error = |reason: String| BridgeError::Consumer {
            consumer: self.config.consumer.clone(),
            reason,
        };
        let mut messages = self
            .consumer
            .messages()
            .await
            .map_err(|e| consumer_error(e.to_string()))?;
        let mut stop = std::pin::pin!(stop);
        loop {
            let message = tokio::select! {
                biased;
                () = &mut stop => break,
                message = messages.next() => message,
            };
            match message {
                Some(Ok(message)) => self.take(message).await,
                // Heartbeats missed, a reconnect: the stream goes on by itself.
                Some(Err(_)) => {
                    self.counts.stream_errors.fetch_add(1, Ordering::Relaxed);
                }
                None => return Err(consumer_error("the message stream ended".into())),
            }
        }
        Ok(self.counts())
    }

    /// Publishes one broker message locally, and settles it at the broker by the outcome.
    async fn take(&self, message: jetstream::Message) {
        let headers = message.headers.as_ref();
        let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
        let id = match (header(HEADER_MSG_ID), message.info()) {
            (Some(msg_id), _) => MessageId::from_key(msg_id.as_bytes()),
            (None, Ok(info)) => {
                MessageId::from_key(format!("{}:{}", info.stream, info.stream_sequence).as_bytes())
            }
            // No id and no reply subject to name it by: not a JetStream delivery at all.
            (None, Err(_)) => MessageId::from_key(&message.payload),
        };
        let ttl = header(HEADER_EXPIRES)
            .and_then(|expires| expires.parse::<u64>().ok())
            .map(|expires| {
                let at = SystemTime::UNIX_EPOCH + Duration::from_nanos(expires);
                at.duration_since(SystemTime::now()).unwrap_or_default()
            });
        let options = PublishOptions {
            id: Some(id),
            ttl,
            ..PublishOptions::default()
        };
        let mut published = self.queue.try_publish_with(&message.payload, options);
        if let Err(PublishError::Full { .. }) = published {
            // A moment's wait for room keeps the order through a short hiccup; longer,
            // the broker holds the message back.
            let wait = self.queue.publish_async(&message.payload, options);
            if let Ok(result) = tokio::time::timeout(self.config.full_delay, wait).await {
                published = result;
            }
        }
        let ack = match published {
            Ok(_) => {
                self.counts.published.fetch_add(1, Ordering::Relaxed);
                AckKind::Ack
            }
            Err(PublishError::Duplicate { .. }) => {
                self.counts.duplicates.fetch_add(1, Ordering::Relaxed);
                AckKind::Ack
            }
            Err(PublishError::AlreadyExpired) => {
                self.counts.expired.fetch_add(1, Ordering::Relaxed);
                AckKind::Ack
            }
            Err(PublishError::PayloadTooLarge { .. }) => {
                self.counts.refused.fetch_add(1, Ordering::Relaxed);
                AckKind::Term
            }
            Err(PublishError::Full { .. }) => {
                self.counts.pushed_back.fetch_add(1, Ordering::Relaxed);
                AckKind::Nak(Some(self.config.full_delay))
            }
            // The dedup window full or locked: the broker keeps it a while too.
            Err(_) => {
                self.counts.dedup_busy.fetch_add(1, Ordering::Relaxed);
                AckKind::Nak(Some(self.config.full_delay))
            }
        };
        if message.ack_with(ack).await.is_err() {
            self.counts.ack_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}
