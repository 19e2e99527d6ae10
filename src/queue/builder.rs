//! Building a queue: its configuration, setting by setting, then where it lives (this
//! process's memory, a named shared segment, or a file).

use std::time::Duration;

use crate::base::clock::{Clock, MonotonicClock};
use crate::error::ConfigError;
use crate::layout::config::{ExpiryPolicy, QueueConfig, RetryBackoff};
use crate::queue::Queue;

/// A queue's configuration being built: start from [`Queue::builder`], change what differs
/// from the defaults, and finish with [`build`](Self::build),
/// `create_shm` or `create_file` (in `shm`, for a queue other processes share). Every setting
/// is checked when the queue is made; a bad one is a [`ConfigError`] naming it.
///
/// ```
/// use std::time::Duration;
/// use ackring::{ConfigError, Queue};
///
/// let queue = Queue::builder(1024, 256)
///     .visibility_timeout(Duration::from_secs(5))
///     .max_attempts(3)
///     .default_ttl(Duration::from_secs(60))
///     .build()?;
/// assert_eq!(queue.config().max_attempts, 3);
///
/// let refused = Queue::builder(1024, 256).max_attempts(0).build();
/// assert!(matches!(refused, Err(ConfigError::MaxAttempts)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a builder makes nothing until `build`, `create_shm` or `create_file`"]
pub struct QueueBuilder {
    config: QueueConfig,
}

impl Queue<MonotonicClock> {
    /// A builder for a queue of `capacity` messages of up to `max_payload` bytes, with the
    /// defaults of [`QueueConfig::new`].
    pub fn builder(capacity: u32, max_payload: usize) -> QueueBuilder {
        QueueBuilder {
            config: QueueConfig::new(capacity, max_payload),
        }
    }
}

impl QueueBuilder {
    /// How long a delivery is leased to its consumer before it is delivered again. [30 s]
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.config.visibility_timeout = timeout;
        self
    }

    /// Deliveries a message gets before it is dead-lettered (releases do not count). [5 deliveries]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.max_attempts = attempts;
        self
    }

    /// The wait before a nacked message is delivered again. [100 ms, doubling, to 60 s]
    pub fn backoff(mut self, backoff: RetryBackoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// The TTL of messages published without one. [none: they never expire]
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.config.default_ttl = Some(ttl);
        self
    }

    /// How long a publisher-given id is remembered to refuse a re-publish. [2 minutes]
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.config.dedup_window = Some(window);
        self
    }

    /// No dedup: ids are not remembered, and the window takes no memory.
    pub fn no_dedup(mut self) -> Self {
        self.config.dedup_window = None;
        self
    }

    /// Ids the dedup window remembers at once (72 bytes each). [2 × capacity]
    pub fn dedup_capacity(mut self, ids: usize) -> Self {
        self.config.dedup_capacity = ids;
        self
    }

    /// What an expired message becomes. [dead-lettered]
    pub fn on_expiry(mut self, policy: ExpiryPolicy) -> Self {
        self.config.on_expiry = policy;
        self
    }

    /// Dead letters kept; beyond them the oldest is discarded, counted. [capacity / 4]
    pub fn dead_letter_capacity(mut self, letters: u32) -> Self {
        self.config.dead_letter_capacity = letters;
        self
    }

    /// How finely the timing wheel keeps time, at most 1 s. [1 ms]
    pub fn timer_tick(mut self, tick: Duration) -> Self {
        self.config.timer_tick = tick;
        self
    }

    /// The configuration as built so far.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// The configuration, for the calls that take one ([`Queue::new`],
    /// [`Queue::create_shm`], ...).
    pub fn into_config(self) -> QueueConfig {
        self.config
    }

    /// A queue in this process's memory.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first invalid setting.
    pub fn build(self) -> Result<Queue, ConfigError> {
        Queue::new(self.config)
    }

    /// A queue in this process's memory on `clock` (a [`ManualClock`](crate::ManualClock)
    /// in tests).
    ///
    /// # Errors
    /// [`ConfigError`] naming the first invalid setting.
    pub fn build_with_clock<C: Clock>(self, clock: C) -> Result<Queue<C>, ConfigError> {
        Queue::with_clock(self.config, clock)
    }
}
