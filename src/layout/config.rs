//! A queue's policy, fixed at creation.

use std::time::Duration;

use crate::error::ConfigError;

/// How long a nacked message waits before it is delivered again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RetryBackoff {
    /// The same wait after every failed attempt.
    Fixed(Duration),
    /// `initial * multiplier^(attempt - 1)`, at most `max`; with `jitter`, a uniformly random
    /// wait between half and all of that, so failed messages do not retry in lockstep.
    Exponential {
        /// The wait after the first failed attempt.
        initial: Duration,
        /// Growth per further attempt.
        multiplier: f64,
        /// The longest wait.
        max: Duration,
        /// Randomize the wait (between 50% and 100% of the computed value).
        jitter: bool,
    },
}

impl Default for RetryBackoff {
    /// Exponential: 100 ms, doubling, at most 60 s, no jitter.
    fn default() -> Self {
        Self::Exponential {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max: Duration::from_secs(60),
            jitter: false,
        }
    }
}

impl RetryBackoff {
    /// The wait after attempt `attempt` (1-based) failed; `random` in `[0, 1)` drives jitter.
    pub(crate) fn wait(&self, attempt: u32, random: f64) -> Duration {
        match *self {
            Self::Fixed(wait) => wait,
            Self::Exponential {
                initial,
                multiplier,
                max,
                jitter,
            } => {
                let exponent = attempt.saturating_sub(1).min(1_000) as i32;
                let secs = initial.as_secs_f64() * multiplier.max(1.0).powi(exponent);
                let capped = secs.min(max.as_secs_f64());
                let scaled = if jitter {
                    capped * (0.5 + random / 2.0)
                } else {
                    capped
                };
                Duration::try_from_secs_f64(scaled).unwrap_or(max)
            }
        }
    }
}

/// What becomes of a message whose TTL ran out before it was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpiryPolicy {
    /// Dead-lettered with reason "expired" (the default).
    #[default]
    DeadLetter,
    /// Dropped, and counted in `Stats::expired`.
    Drop,
}

/// The most messages a queue holds: ring tokens keep 24 bits of slot index.
const MAX_QUEUE_CAPACITY: u32 = (1 << 24) - 1;

/// The most ids a dedup window may be sized for: its stripes must count in 32 bits (and a
/// window this large already needs 288 GiB).
const MAX_DEDUP_CAPACITY: usize = crate::engine::dedup::MAX_CAPACITY;

/// The longest timer tick: timers (leases, delays, backoff) and, in a shared segment, the
/// liveness checks that start crash recovery run at most once a tick, so a tick longer
/// than the time left to the host's uptime would stop them all.
const MAX_TIMER_TICK: Duration = Duration::from_secs(1);

/// A queue configuration: start from [`QueueConfig::new`] and set fields, or build one
/// with [`Queue::builder`](crate::Queue::builder).
///
/// ```
/// use std::time::Duration;
/// use ackring::QueueConfig;
/// let mut config = QueueConfig::new(1024, 256);
/// config.visibility_timeout = Duration::from_secs(5);
/// config.max_attempts = 3;
/// assert_eq!(config.capacity, 1024);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct QueueConfig {
    /// Messages the queue holds at once, dead letters included.
    pub capacity: u32,
    /// Bytes of payload each message may carry (stored inline).
    pub max_payload: usize,
    /// How long a delivery is leased to its consumer before it is delivered again.
    pub visibility_timeout: Duration,
    /// Deliveries a message gets: a nack of the last one dead-letters it, and so does the
    /// running out of the last one's lease (reason `AttemptsExhausted`, error
    /// [`LEASE_RAN_OUT`](crate::queue::LEASE_RAN_OUT)) when the message is next received.
    pub max_attempts: u32,
    /// The wait before a nacked message is delivered again.
    pub backoff: RetryBackoff,
    /// TTL of messages published without one; `None` = they never expire.
    pub default_ttl: Option<Duration>,
    /// How long a message id given by the publisher is remembered to reject re-publishes;
    /// `None` = no dedup. (Generated ids are unique and not remembered.)
    pub dedup_window: Option<Duration>,
    /// Ids the dedup window remembers at once (rounded up): at least the publisher-given
    /// ids published in any one `dedup_window`, or publishes fail with `DedupFull`; at most
    /// 2^32 (a window costs 72 bytes per id).
    pub dedup_capacity: usize,
    /// What an expired message becomes.
    pub on_expiry: ExpiryPolicy,
    /// Dead letters kept; when full, the oldest is discarded (and counted in
    /// `Stats::dead_discarded`). Dead letters occupy message slots: while they fill the
    /// queue, publishes fail with `Full` until dead letters are popped or redriven.
    pub dead_letter_capacity: u32,
    /// How finely the timing wheel keeps time: a lease, delay or backoff ends within one
    /// tick after its deadline, and the wheel does work at most once per tick; at most
    /// 1 s. [1 ms]
    pub timer_tick: Duration,
}

impl QueueConfig {
    /// Defaults for a queue of `capacity` messages of up to `max_payload` bytes: 30 s leases,
    /// 5 attempts, exponential backoff from 100 ms to 60 s, no TTL, a 2-minute dedup window
    /// remembering `2 * capacity` ids, expired messages dead-lettered, and room for
    /// `capacity / 4` (at least 1) dead letters.
    pub fn new(capacity: u32, max_payload: usize) -> Self {
        Self {
            capacity,
            max_payload,
            visibility_timeout: Duration::from_secs(30),
            max_attempts: 5,
            backoff: RetryBackoff::default(),
            default_ttl: None,
            dedup_window: Some(Duration::from_secs(120)),
            dedup_capacity: (capacity as usize).saturating_mul(2).max(1),
            on_expiry: ExpiryPolicy::DeadLetter,
            dead_letter_capacity: (capacity / 4).max(1),
            timer_tick: Duration::from_millis(1),
        }
    }

    /// The region shape this configuration needs.
    pub(crate) fn shape(&self) -> crate::layout::region::Shape {
        crate::layout::region::Shape {
            capacity: self.capacity,
            lines_per_slot: self.max_payload.div_ceil(64) as u32,
            dead_capacity: self.dead_letter_capacity,
            dedup_stripes: match self.dedup_window {
                // Fits: `validate` bounds the capacity (2^32 ids are 2^29 stripes).
                Some(_) => crate::engine::dedup::stripes_for(self.dedup_capacity) as u32,
                None => 0,
            },
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let dedup = self.dedup_window.is_some();
        Err(
            if self.capacity == 0 || self.capacity > MAX_QUEUE_CAPACITY {
                ConfigError::Capacity {
                    max: MAX_QUEUE_CAPACITY,
                }
            } else if self.max_attempts == 0 {
                ConfigError::MaxAttempts
            } else if self.visibility_timeout.is_zero() {
                ConfigError::VisibilityTimeout
            } else if self.dead_letter_capacity == 0 || self.dead_letter_capacity > self.capacity {
                ConfigError::DeadLetterCapacity
            } else if self.dedup_window.is_some_and(|w| w.is_zero()) {
                ConfigError::DedupWindow
            } else if dedup
                && (self.dedup_capacity == 0 || self.dedup_capacity > MAX_DEDUP_CAPACITY)
            {
                ConfigError::DedupCapacity {
                    max: MAX_DEDUP_CAPACITY as u64,
                }
            } else if self.timer_tick.is_zero() || self.timer_tick > MAX_TIMER_TICK {
                ConfigError::TimerTick {
                    max: MAX_TIMER_TICK,
                }
            } else if self.max_payload > u32::MAX as usize {
                ConfigError::MaxPayload {
                    max: u64::from(u32::MAX),
                }
            } else if matches!(self.backoff, RetryBackoff::Exponential { multiplier, .. } if multiplier.is_nan() || multiplier < 1.0)
            {
                ConfigError::BackoffMultiplier
            } else {
                return Ok(());
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_backoff_grows_caps_and_jitters_within_half() {
        let backoff = RetryBackoff::default();
        assert_eq!(backoff.wait(1, 0.0), Duration::from_millis(100));
        assert_eq!(backoff.wait(2, 0.0), Duration::from_millis(200));
        assert_eq!(backoff.wait(4, 0.0), Duration::from_millis(800));
        assert_eq!(backoff.wait(30, 0.0), Duration::from_secs(60));
        assert_eq!(backoff.wait(u32::MAX, 0.0), Duration::from_secs(60));
        let jittered = RetryBackoff::Exponential {
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            max: Duration::from_secs(10),
            jitter: true,
        };
        assert_eq!(jittered.wait(1, 0.0), Duration::from_millis(500));
        assert!(jittered.wait(1, 0.999) <= Duration::from_secs(1));
        assert_eq!(
            RetryBackoff::Fixed(Duration::from_secs(3)).wait(9, 0.5),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(QueueConfig::new(8, 64).validate().is_ok());
        assert!(QueueConfig::new(2, 64).validate().is_ok());
        let zero = QueueConfig::new(0, 64).validate().unwrap_err();
        assert!(zero.to_string().contains("capacity"));
        let attempts = QueueConfig {
            max_attempts: 0,
            ..QueueConfig::new(8, 64)
        };
        assert_eq!(attempts.validate(), Err(ConfigError::MaxAttempts));
        let dead = QueueConfig {
            dead_letter_capacity: 9,
            ..QueueConfig::new(8, 64)
        };
        assert_eq!(dead.validate(), Err(ConfigError::DeadLetterCapacity));
        let no_window = QueueConfig {
            dedup_window: Some(Duration::ZERO),
            ..QueueConfig::new(8, 64)
        };
        assert_eq!(no_window.validate(), Err(ConfigError::DedupWindow));
        let dedup_off = QueueConfig {
            dedup_window: None,
            dedup_capacity: 0,
            ..QueueConfig::new(8, 64)
        };
        assert_eq!(dedup_off.validate(), Ok(()));
    }
}
