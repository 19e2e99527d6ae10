//! Every error the crate returns, in one place (as crossbeam's `err.rs`): each message
//! says what went wrong and, where there is one, what to do about it.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::base::id::MessageId;

/// A configuration a queue cannot be built with: the first setting found wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `capacity` is 0 or above the most a queue holds.
    #[error("invalid queue configuration: capacity must be between 1 and {max}")]
    Capacity {
        /// The most messages a queue holds (ring tokens keep 24 bits of slot index).
        max: u32,
    },
    /// `max_payload` does not fit in 32 bits.
    #[error("invalid queue configuration: max_payload must be at most {max} bytes")]
    MaxPayload {
        /// The largest payload a slot can be sized for.
        max: u64,
    },
    /// `max_attempts` is 0.
    #[error("invalid queue configuration: max_attempts must be at least 1")]
    MaxAttempts,
    /// `visibility_timeout` is zero.
    #[error("invalid queue configuration: visibility_timeout must be longer than zero")]
    VisibilityTimeout,
    /// `dead_letter_capacity` is 0 or above `capacity` (dead letters occupy slots).
    #[error("invalid queue configuration: dead_letter_capacity must be between 1 and capacity")]
    DeadLetterCapacity,
    /// `dedup_window` is zero; turn dedup off with `None` instead.
    #[error(
        "invalid queue configuration: dedup_window must be longer than zero, or None for no dedup"
    )]
    DedupWindow,
    /// `dedup_capacity` is 0 or above the most ids a window can be sized for.
    #[error(
        "invalid queue configuration: dedup_capacity must be between 1 and {max} ids (or dedup off)"
    )]
    DedupCapacity {
        /// The most ids a dedup window may be sized for.
        max: u64,
    },
    /// `timer_tick` is zero or longer than the longest tick.
    #[error(
        "invalid queue configuration: timer_tick must be longer than zero and at most {max:?}"
    )]
    TimerTick {
        /// The longest tick (a longer one could stop every timer on a young host).
        max: std::time::Duration,
    },
    /// An exponential backoff's multiplier is below 1 (or not a number).
    #[error("invalid queue configuration: an exponential backoff's multiplier must be at least 1")]
    BackoffMultiplier,
    /// The queue would need more memory than the address space holds.
    #[error(
        "invalid queue configuration: capacity × max_payload (and the dedup window) need more \
         memory than the address space holds"
    )]
    TooLarge,
}

/// Why a segment could not be created, opened or removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShmError {
    /// No segment has this name or path.
    #[error("no queue segment at {path}")]
    NotFound {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A segment (or some file) already has this name or path.
    #[error("a queue segment already exists at {path}")]
    AlreadyExists {
        /// The path taken.
        path: PathBuf,
    },
    /// The segment's permissions do not let this process map it.
    #[error("permission denied for the queue segment at {path}")]
    PermissionDenied {
        /// The path refused.
        path: PathBuf,
    },
    /// The segment is not this user's alone (see [`Sharing`](crate::shm::Sharing)): another
    /// user may have made it first under the name, or may keep write access to it.
    #[error(
        "the queue segment at {path} is owned by uid {owner} with mode {mode:o}: a segment \
         is opened only if this user owns it and it grants nothing to others (and to its \
         group only when opened with Sharing::Group); remove it if it is not yours"
    )]
    NotOwned {
        /// The segment's path.
        path: PathBuf,
        /// Its owner's uid.
        owner: u32,
        /// Its permission bits.
        mode: u32,
    },
    /// The name cannot name a segment.
    #[error(
        "invalid segment name {name:?}: use 1 to 200 bytes of UTF-8, no '/' or NUL, and not \
         '.' or '..'"
    )]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// The segment was made by an ackring with another format version.
    #[error("segment format version {found}, this build reads version {expected}")]
    Version {
        /// The segment's version.
        found: u64,
        /// This build's version.
        expected: u64,
    },
    /// The segment was made for another machine or engine layout.
    #[error("incompatible queue segment: {what}")]
    Incompatible {
        /// What differs.
        what: &'static str,
    },
    /// The segment's contents are not a valid queue.
    #[error("corrupt queue segment: {what}")]
    Corrupt {
        /// What is wrong.
        what: &'static str,
    },
    /// The file system has no room to back the segment's memory (creating it, or opening
    /// one whose file has holes): touching a page without backing would raise `SIGBUS`.
    #[error("no space left on the file system to back the queue segment at {path}")]
    NoSpace {
        /// The segment's path.
        path: PathBuf,
    },
    /// The segment's header names another boot of the host, yet processes registered in
    /// it still run: not a reboot (a corrupt or forged boot id), so nothing was reset.
    #[error(
        "the queue segment at {path} says it is from another boot, yet processes registered          in it still run (pids {pids:?}): refused, and nothing was reset"
    )]
    NotRebooted {
        /// The segment's path.
        path: PathBuf,
        /// The registered processes found running.
        pids: Vec<u32>,
    },
    /// Another process held the segment's file lock for longer than an opener waits for
    /// it (a process rebasing a segment after a reboot holds it for moments).
    #[error("the queue segment at {path} stayed locked by another process for {waited:?}")]
    Locked {
        /// The segment's path.
        path: PathBuf,
        /// How long the opener waited.
        waited: std::time::Duration,
    },
    /// Every entry of the segment's participant table is held by a live handle.
    #[error("the queue segment already has the most attached handles it can hold")]
    TooManyParticipants,
    /// The configuration for a new segment is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Any other I/O error.
    #[error("segment I/O at {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

#[cfg(not(loom))]
impl ShmError {
    pub(crate) fn from_io(source: io::Error, path: &std::path::Path) -> Self {
        let path = path.to_path_buf();
        match source.kind() {
            io::ErrorKind::NotFound => Self::NotFound { path },
            io::ErrorKind::AlreadyExists => Self::AlreadyExists { path },
            io::ErrorKind::PermissionDenied => Self::PermissionDenied { path },
            io::ErrorKind::StorageFull => Self::NoSpace { path },
            _ => Self::Io { path, source },
        }
    }
}

/// Why a publish was refused. Nothing was enqueued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
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
    /// A live process has held the lock of the id's part of the dedup window for longer
    /// than a publish waits ([`DedupError::Locked`]): it is stopped or stuck.
    #[error(
        "process {pid} has held a lock of the dedup window for over {waited:?} (stopped or \
         stuck?); nothing was published"
    )]
    DedupLocked {
        /// The holder's pid (0 if it could not be told).
        pid: u32,
        /// How long the publish waited.
        waited: Duration,
    },
}

/// Why settling a delivery failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SettleError {
    /// The queue took the lease back before this call: it ran out and the timing wheel
    /// made the message ready again (to be delivered again), so this delivery may no
    /// longer settle it: a message is acked at most once. (A settle after the deadline but
    /// before the wheel's next run still counts: the lease is lost when it is taken back,
    /// not at the deadline.)
    #[error(
        "the lease on message {id} was lost: it ran out and the message goes to another \
         delivery; finish work within the visibility timeout, or extend the lease"
    )]
    LeaseLost {
        /// The message.
        id: MessageId,
    },
}

/// Why a batch publish stopped before the end of its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("published the first {published} messages of the batch, then: {error}")]
pub struct BatchPublishError {
    /// How many messages, from the front of the batch, were published (and stay queued).
    pub published: usize,
    /// Why the next message was not; the messages after it were not tried.
    pub error: PublishError,
}

/// Why some deliveries of a batch ack were not acked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} of the batch's leases ran out before the ack: those messages were not acked and go \
     to another delivery; the rest were acked",
    lost.len()
)]
pub struct BatchAckError {
    /// The messages whose lease was lost, in batch order.
    pub lost: Vec<MessageId>,
}

/// Why an id was not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DedupError {
    /// The id was accepted less than one window ago.
    #[error("message id {id} was already published within the dedup window")]
    Duplicate {
        /// The repeated id.
        id: MessageId,
    },
    /// The id's stripe holds only ids younger than the window.
    #[error(
        "the dedup window is full ({capacity} ids remembered); \
         create the queue with a larger dedup capacity or a shorter window"
    )]
    Full {
        /// How many ids the window can remember.
        capacity: usize,
    },
    /// A live process has held the lock of the id's part of the window for longer than a
    /// record waits: it is stopped (SIGSTOP, a debugger) or stuck. Nothing was recorded.
    #[error(
        "process {pid} has held a lock of the dedup window for over {waited:?} (stopped or \
         stuck?); nothing was recorded"
    )]
    Locked {
        /// The holder's pid (0 if it could not be told).
        pid: u32,
        /// How long the record waited.
        waited: Duration,
    },
}

/// A dedup window that cannot remember anything, or cannot be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a dedup window needs a non-zero duration and a capacity from 1 to 2^32 ids that \
     fits in memory, got {window:?} and {capacity}"
)]
pub struct DedupConfigError {
    /// The window asked for.
    pub window: Duration,
    /// The capacity asked for.
    pub capacity: usize,
}

/// A push into a full ring: the item is handed back, nothing in the ring was overwritten.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Full<T>(pub T);

impl<T> Full<T> {
    /// The item that did not fit.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::fmt::Debug for Full<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Full(..)")
    }
}

impl<T> std::fmt::Display for Full<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the ring is full; retry after a consumer pops, or use a larger capacity")
    }
}

impl<T> std::error::Error for Full<T> {}

/// A ring capacity outside `1..=`[`MAX_CAPACITY`](crate::ring::MAX_CAPACITY).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ring capacity must be between 1 and {max}, got {requested}", max = u32::MAX)]
pub struct CapacityError {
    /// The capacity that was asked for.
    pub requested: usize,
}

/// Why a token-ring operation did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRingError {
    /// The ring holds `capacity` tokens; pop some first.
    #[error("the token ring is full")]
    Full,
    /// The ring holds no token.
    #[error("the token ring is empty")]
    Empty,
    /// A cursor in the ring's memory points outside its slots: the memory was overwritten.
    #[error("the token ring's memory is corrupt: a cursor points outside its slots")]
    Corrupt,
}

/// Why memory could not hold a token ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingMemoryError {
    /// The capacity is 0 or too large.
    #[error(transparent)]
    Capacity(#[from] CapacityError),
    /// The memory does not start at a multiple of [`TokenRing::ALIGN`](crate::TokenRing::ALIGN).
    #[error("ring memory at {address:#x} is not aligned to {required} bytes")]
    Misaligned {
        /// Where the memory starts.
        address: usize,
        /// The alignment it needs.
        required: usize,
    },
    /// The memory is shorter than [`TokenRing::bytes_needed`](crate::TokenRing::bytes_needed).
    #[error("ring memory of {provided} bytes is too small: {needed} bytes are needed")]
    TooSmall {
        /// Bytes needed for the capacity.
        needed: usize,
        /// Bytes given.
        provided: usize,
    },
}
