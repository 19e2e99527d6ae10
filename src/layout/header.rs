//! The segment header: what a process must learn, and check, before it touches a region
//! another process laid out.
//!
//! # Layout
//!
//! One `repr(C)` block of 64-bit words at offset 0 of the segment; the region follows at
//! [`HEADER_BYTES`]. Every field is written once, by the creator, before `initialized`;
//! only the host words (boot id, pid namespace) are written again, by the first opener
//! after a reboot, holding the file's lock (see `queue::recovery::reboot`). Words are atomics only
//! because other processes map them: any value may be read, and every one is checked on
//! open.
//!
//! | words   | field           | checked on open against                          |
//! |---------|-----------------|--------------------------------------------------|
//! | 0       | magic           | `b"ACKRING\0"`                                   |
//! | 1       | version         | `FORMAT_VERSION` (`layout`)                      |
//! | 2       | byte order      | `0x0102_0304_0506_0708` as this process writes it|
//! | 3       | initialized     | [`INITIALIZED`] (written last, release)          |
//! | 4..8    | engine constants| this build's header size, wheel geometry, stripes|
//! | 8..12   | shape           | must be what the config implies                  |
//! | 12..23  | section offsets | must equal the layout this build computes        |
//! | 23      | total bytes     | the layout's size; the file must be at least that|
//! | 24..39  | configuration   | must pass `QueueConfig::validate`                |
//! | 39..41  | hash algorithm, seed | this build's                                |
//! | 41..44  | created (Unix ns), boot id (2 words) |                             |
//! | 44      | participant entries | this build's                                 |
//! | 45      | pid namespace   | the opener's (its `/proc/self/ns/pid` inode), unless rebooted since |
//! | 46      | checksum        | XXH3-64 of the header's 384 bytes read as little-endian words, with words 3, 42, 43, 45 and 46 as zero |
//! | 47      | instance        | random, not zero: with `created`, the queue's identity |
//!
//! The checksum makes any change to a header's fixed words after they were written (a bit
//! flipped by a buggy neighbour) a typed error on open, rather than a segment that opens
//! with, say, a different dead-letter capacity that rounds to the same layout. The host
//! words are not in it: a rebase after a reboot rewrites them one by one, and one cut short
//! must be redone by the next opener, not refused for good. It is no seal: a process with
//! write access can recompute it.

use std::time::Duration;

use crate::base::clock::nanos;
use crate::base::sync::{AtomicU64, Ordering};
use crate::engine::counters::STRIPES;
use crate::engine::dedup::ENTRIES_PER_STRIPE;
use crate::engine::wheel::{BUCKETS, LEVELS};
use crate::layout::config::{ExpiryPolicy, QueueConfig, RetryBackoff};
use crate::layout::region::{Layout, Shape, Span, SECTION_ALIGN};
use crate::liveness::PARTICIPANTS;

use crate::error::ShmError;
use crate::layout::FORMAT_VERSION;
use crate::liveness::host::Host;

/// `b"ACKRING\0"` read as a little-endian word.
const MAGIC: u64 = u64::from_le_bytes(*b"ACKRING\0");
const BYTE_ORDER: u64 = 0x0102_0304_0506_0708;
/// The `initialized` word once the creator has finished.
const INITIALIZED: u64 = 0x494e_4954_4445_4f4e; // "INITDEON"
/// The hash of ids shared through the segment: xxh3-64 for keys, splitmix64 for stripes.
const HASH_ALGORITHM: u64 = 1;
pub(crate) const WORDS: usize = 48;
/// Bytes of the header; the region starts here.
pub(crate) const HEADER_BYTES: usize = (WORDS * 8).next_multiple_of(SECTION_ALIGN);

/// The header word where the boot id starts (tests fake a reboot by patching it).
#[cfg(test)]
pub(crate) const BOOT_ID_WORD: usize = at::BOOT_ID;

/// Word indices (see the table in the module docs).
pub(super) mod at {
    pub(in crate::layout) const MAGIC: usize = 0;
    pub(in crate::layout) const VERSION: usize = 1;
    pub(in crate::layout) const BYTE_ORDER: usize = 2;
    pub(in crate::layout) const INITIALIZED: usize = 3;
    pub(in crate::layout) const HEADER_BYTES: usize = 4;
    pub(in crate::layout) const WHEEL: usize = 5;
    pub(in crate::layout) const COUNTER_STRIPES: usize = 6;
    pub(in crate::layout) const DEDUP_ENTRIES: usize = 7;
    pub(in crate::layout) const SHAPE: usize = 8;
    pub(in crate::layout) const OFFSETS: usize = 12;
    pub(in crate::layout) const TOTAL_BYTES: usize = 23;
    pub(in crate::layout) const CONFIG: usize = 24;
    pub(in crate::layout) const HASH: usize = 39;
    pub(in crate::layout) const CREATED: usize = 41;
    pub(in crate::layout) const BOOT_ID: usize = 42;
    pub(in crate::layout) const PARTICIPANTS: usize = 44;
    pub(in crate::layout) const PID_NAMESPACE: usize = 45;
    pub(in crate::layout) const CHECKSUM: usize = 46;
    pub(in crate::layout) const INSTANCE: usize = 47;
}

/// The header's words in a mapped segment.
pub(crate) struct Header<'s> {
    words: &'s [AtomicU64; WORDS],
}

fn corrupt(what: &'static str) -> ShmError {
    ShmError::Corrupt { what }
}

fn incompatible(what: &'static str) -> ShmError {
    ShmError::Incompatible { what }
}

fn spans(layout: &Layout) -> [Span; 11] {
    [
        layout.shared,
        layout.counters,
        layout.participants,
        layout.slot_headers,
        layout.payloads,
        layout.free_ring,
        layout.ready_ring,
        layout.dead_ring,
        layout.wheel_heads,
        layout.wheel_next,
        layout.dedup,
    ]
}

/// The checksum of a header given as its bytes (little-endian words): XXH3-64 of them
/// with `initialized`, the host words and the checksum itself as zero. The host words
/// (boot id, pid namespace) are left out because the first opener after a reboot rewrites
/// them, word by word: a rebase cut short must stay a header the next opener can rebase,
/// not one it refuses for good. They are checked against the host instead.
fn checksum_of(mut bytes: [u8; WORDS * 8]) -> u64 {
    for word in [
        at::INITIALIZED,
        at::BOOT_ID,
        at::BOOT_ID + 1,
        at::PID_NAMESPACE,
        at::CHECKSUM,
    ] {
        bytes[word * 8..][..8].fill(0);
    }
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

const NONE: u64 = u64::MAX;

/// An optional duration as stored: `NONE` for none, and a duration of 584 years or more
/// (which `nanos` saturates to `u64::MAX`) one nanosecond short of it, so that it does not
/// read back as none.
fn optional_nanos(duration: Option<Duration>) -> u64 {
    duration.map_or(NONE, |duration| nanos(duration).min(NONE - 1))
}

fn duration(word: u64) -> Duration {
    Duration::from_nanos(word)
}

impl<'s> Header<'s> {
    /// The header at the start of `words` (the first [`HEADER_BYTES`] of a segment).
    pub(crate) fn new(words: &'s [AtomicU64; WORDS]) -> Self {
        Self { words }
    }

    fn get(&self, index: usize) -> u64 {
        self.words[index].load(Ordering::Relaxed)
    }

    fn set(&self, index: usize, value: u64) {
        self.words[index].store(value, Ordering::Relaxed);
    }

    /// Writes every field but `initialized` for a queue of `config` laid out as `layout`.
    pub(crate) fn write(&self, config: &QueueConfig, layout: &Layout, host: &Host) {
        self.set(at::MAGIC, MAGIC);
        self.set(at::VERSION, FORMAT_VERSION);
        self.set(at::BYTE_ORDER, BYTE_ORDER);
        self.set(at::HEADER_BYTES, HEADER_BYTES as u64);
        self.set(at::WHEEL, (LEVELS as u64) << 32 | BUCKETS as u64);
        self.set(at::COUNTER_STRIPES, STRIPES as u64);
        self.set(at::DEDUP_ENTRIES, ENTRIES_PER_STRIPE as u64);
        self.set(at::PARTICIPANTS, PARTICIPANTS as u64);
        let shape = config.shape();
        for (i, value) in [
            shape.capacity,
            shape.lines_per_slot,
            shape.dead_capacity,
            shape.dedup_stripes,
        ]
        .into_iter()
        .enumerate()
        {
            self.set(at::SHAPE + i, u64::from(value));
        }
        for (i, span) in spans(layout).into_iter().enumerate() {
            self.set(at::OFFSETS + i, span.offset as u64);
        }
        self.set(at::TOTAL_BYTES, layout.size as u64);
        for (i, value) in encode_config(config).into_iter().enumerate() {
            self.set(at::CONFIG + i, value);
        }
        self.set(at::HASH, HASH_ALGORITHM);
        self.set(at::HASH + 1, 0);
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, nanos);
        self.set(at::CREATED, created);
        self.set(at::INSTANCE, crate::base::id::random_word().max(1));
        self.set(at::BOOT_ID, host.boot_id[0]);
        self.set(at::BOOT_ID + 1, host.boot_id[1]);
        self.set(at::PID_NAMESPACE, host.pid_namespace);
        self.set(at::CHECKSUM, self.checksum());
    }

    /// Marks the segment ready: the last store of its creation (release: whoever sees it
    /// with acquire sees everything written before).
    pub(crate) fn publish(&self) {
        self.words[at::INITIALIZED].store(INITIALIZED, Ordering::Release);
    }

    /// Marks the segment as this host's (after rebasing it; release, boot id last: an
    /// opener that reads the new id with acquire sees the rebased segment).
    pub(crate) fn adopt(&self, host: &Host) {
        self.words[at::PID_NAMESPACE].store(host.pid_namespace, Ordering::Release);
        self.words[at::BOOT_ID].store(host.boot_id[0], Ordering::Release);
        self.words[at::BOOT_ID + 1].store(host.boot_id[1], Ordering::Release);
    }

    /// What the checksum word should hold for the other words (see the table).
    pub(crate) fn checksum(&self) -> u64 {
        let mut bytes = [0u8; WORDS * 8];
        for (index, chunk) in bytes.chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&self.get(index).to_le_bytes());
        }
        checksum_of(bytes)
    }

    /// The boot id the segment was created under (or last rebased to).
    pub(crate) fn boot_id(&self) -> [u64; 2] {
        [
            self.words[at::BOOT_ID].load(Ordering::Acquire),
            self.words[at::BOOT_ID + 1].load(Ordering::Acquire),
        ]
    }

    /// The queue's identity: the time it was created and its random instance word.
    pub(crate) fn identity(&self) -> u128 {
        let word = |at: usize| u128::from(self.words[at].load(Ordering::Acquire));
        word(at::CREATED) << 64 | word(at::INSTANCE)
    }

    /// The pid namespace of the segment's processes (0: unknown).
    pub(crate) fn pid_namespace(&self) -> u64 {
        self.words[at::PID_NAMESPACE].load(Ordering::Acquire)
    }

    /// Checks every field against this build and against each other, and returns the
    /// queue's configuration and layout. `segment_bytes` is the mapped length.
    pub(crate) fn read(&self, segment_bytes: usize) -> Result<(QueueConfig, Layout), ShmError> {
        if self.get(at::MAGIC) != MAGIC {
            return Err(corrupt(
                "no ackring magic at the start (not a queue segment)",
            ));
        }
        if self.get(at::BYTE_ORDER) != BYTE_ORDER {
            return Err(incompatible("byte order differs from this machine's"));
        }
        if self.get(at::VERSION) != FORMAT_VERSION {
            return Err(ShmError::Version {
                found: self.get(at::VERSION),
                expected: FORMAT_VERSION,
            });
        }
        if self.words[at::INITIALIZED].load(Ordering::Acquire) != INITIALIZED {
            return Err(corrupt("the segment was never completely initialized"));
        }
        if self.get(at::INSTANCE) == 0 {
            return Err(corrupt("the header's instance word is zero"));
        }
        if self.get(at::CHECKSUM) != self.checksum() {
            return Err(corrupt(
                "the header's checksum does not match its words (a header changed after it \
                 was written)",
            ));
        }
        if self.get(at::HEADER_BYTES) != HEADER_BYTES as u64
            || self.get(at::WHEEL) != ((LEVELS as u64) << 32 | BUCKETS as u64)
            || self.get(at::COUNTER_STRIPES) != STRIPES as u64
            || self.get(at::DEDUP_ENTRIES) != ENTRIES_PER_STRIPE as u64
            || self.get(at::PARTICIPANTS) != PARTICIPANTS as u64
        {
            return Err(incompatible(
                "engine layout constants differ from this build's",
            ));
        }
        if self.get(at::HASH) != HASH_ALGORITHM || self.get(at::HASH + 1) != 0 {
            return Err(incompatible(
                "id hash algorithm or seed differs from this build's",
            ));
        }
        let stored_shape = Shape {
            capacity: self.small(at::SHAPE)?,
            lines_per_slot: self.small(at::SHAPE + 1)?,
            dead_capacity: self.small(at::SHAPE + 2)?,
            dedup_stripes: self.small(at::SHAPE + 3)?,
        };
        let config = decode_config(
            &std::array::from_fn(|i| self.get(at::CONFIG + i)),
            stored_shape.capacity,
            stored_shape.dead_capacity,
        )?;
        config
            .validate()
            .map_err(|_| corrupt("the stored configuration is invalid"))?;
        let shape = config.shape();
        if stored_shape != shape {
            return Err(corrupt(
                "the stored shape does not follow from the configuration",
            ));
        }
        let layout = Layout::new(shape, HEADER_BYTES)
            .map_err(|_| corrupt("the stored shape is larger than memory"))?;
        let offsets_match = spans(&layout)
            .into_iter()
            .enumerate()
            .all(|(i, span)| self.get(at::OFFSETS + i) == span.offset as u64);
        if !offsets_match || self.get(at::TOTAL_BYTES) != layout.size as u64 {
            return Err(corrupt(
                "section offsets or total size differ from the layout",
            ));
        }
        if segment_bytes < layout.size {
            return Err(corrupt(
                "the segment is shorter than its layout (truncated)",
            ));
        }
        Ok((config, layout))
    }

    /// A header word that must fit in 32 bits.
    fn small(&self, index: usize) -> Result<u32, ShmError> {
        u32::try_from(self.get(index)).map_err(|_| corrupt("a shape field is out of range"))
    }
}

/// The configuration as 15 words.
fn encode_config(config: &QueueConfig) -> [u64; 15] {
    let (kind, initial, multiplier, max, jitter) = match config.backoff {
        RetryBackoff::Fixed(wait) => (0, nanos(wait), 1.0f64.to_bits(), nanos(wait), 0),
        RetryBackoff::Exponential {
            initial,
            multiplier,
            max,
            jitter,
        } => (
            1,
            nanos(initial),
            multiplier.to_bits(),
            nanos(max),
            u64::from(jitter),
        ),
    };
    [
        config.max_payload as u64,
        nanos(config.visibility_timeout),
        u64::from(config.max_attempts),
        kind,
        initial,
        multiplier,
        max,
        jitter,
        optional_nanos(config.default_ttl),
        optional_nanos(config.dedup_window),
        config.dedup_capacity as u64,
        match config.on_expiry {
            ExpiryPolicy::DeadLetter => 0,
            ExpiryPolicy::Drop => 1,
        },
        0, // reserved (was the full policy, before 10)
        0, // reserved
        nanos(config.timer_tick),
    ]
}

/// The configuration back from its words (the capacities are shape words); values no
/// encoding produces are corrupt.
fn decode_config(
    words: &[u64; 15],
    capacity: u32,
    dead_letter_capacity: u32,
) -> Result<QueueConfig, ShmError> {
    let [max_payload, visibility, max_attempts, kind, initial, multiplier, max, jitter, ttl, window, dedup_capacity, on_expiry, reserved, reserved_too, tick] =
        *words;
    let flag = |word: u64| match word {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(corrupt("a configuration flag is neither 0 nor 1")),
    };
    let backoff = match kind {
        0 => RetryBackoff::Fixed(duration(initial)),
        1 => RetryBackoff::Exponential {
            initial: duration(initial),
            multiplier: f64::from_bits(multiplier),
            max: duration(max),
            jitter: flag(jitter)?,
        },
        _ => return Err(corrupt("unknown retry backoff kind")),
    };
    if (reserved, reserved_too) != (0, 0) {
        return Err(corrupt("a reserved configuration word is not zero"));
    }
    Ok(QueueConfig {
        capacity,
        dead_letter_capacity,
        max_payload: usize::try_from(max_payload)
            .map_err(|_| corrupt("max_payload out of range"))?,
        visibility_timeout: duration(visibility),
        max_attempts: u32::try_from(max_attempts)
            .map_err(|_| corrupt("max_attempts out of range"))?,
        backoff,
        default_ttl: (ttl != NONE).then(|| duration(ttl)),
        dedup_window: (window != NONE).then(|| duration(window)),
        dedup_capacity: usize::try_from(dedup_capacity)
            .map_err(|_| corrupt("dedup_capacity out of range"))?,
        on_expiry: if flag(on_expiry)? {
            ExpiryPolicy::Drop
        } else {
            ExpiryPolicy::DeadLetter
        },
        timer_tick: duration(tick),
    })
}
