//! Message ids.

use std::cell::Cell;

use crate::base::sync::{AtomicU64, Ordering};

/// A message's identity: what the dedup window remembers and dead letters are listed by.
///
/// Give one explicitly (`MessageId(order_number)`), derive one from an application key with
/// [`MessageId::from_key`], or let the queue generate one.
///
/// Shown in hexadecimal by `Display` and `Debug` alike, so that an error's message and
/// its `Debug` form name an id the same way:
///
/// ```
/// use ackring::MessageId;
/// assert_eq!(MessageId(255).to_string(), "00000000000000ff");
/// assert_eq!(format!("{:?}", MessageId(255)), "MessageId(0x00000000000000ff)");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MessageId(0x{self})")
    }
}

impl MessageId {
    /// Derives an id from an application key (an idempotency key, an order number as text...)
    /// with XXH3-64 and seed 0: a fixed, portable algorithm, so the same key gives the same id
    /// in every process, build and machine.
    ///
    /// ```
    /// use ackring::MessageId;
    /// assert_eq!(MessageId::from_key(b"order-17"), MessageId::from_key(b"order-17"));
    /// assert_ne!(MessageId::from_key(b"order-17"), MessageId::from_key(b"order-18"));
    /// ```
    pub fn from_key(key: &[u8]) -> Self {
        Self(xxhash_rust::xxh3::xxh3_64(key))
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Spreads an id's bits (the splitmix64 finalizer, a bijection): sequential ids land in
/// unrelated places of a hash table. Fixed and portable, like everything hashed in a region.
#[inline]
pub(crate) fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A random word, distinct per call and per process (not for cryptography).
pub(crate) fn random_word() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState's keys are random per process and distinct per call.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    mix64(random ^ time ^ u64::from(std::process::id()).rotate_left(32))
}

/// Sequence numbers a thread takes from an [`IdSource`] at a time.
const ID_BLOCK: u64 = 1 << 12;

thread_local! {
    /// This thread's block of an [`IdSource`]'s sequence numbers: (seed of the source, next
    /// number, end of the block).
    static BLOCK: Cell<(u64, u64, u64)> = const { Cell::new((0, 0, 0)) };
}

/// Generates one queue's ids: `mix64(seed + n)` for sequence numbers `n` that this source
/// never hands out twice, so generated ids never repeat (mix64 is a bijection).
///
/// Threads take sequence numbers in blocks from the shared counter and hand them out from
/// a thread-local cache, so producers do not move a shared cache line per message. The
/// cache is keyed by the source's seed, which is random per source, so a thread switching
/// between queues (or meeting a new queue at a dead one's address) never reuses a block.
pub(crate) struct IdSource {
    seed: u64,
    next_block: AtomicU64,
}

impl IdSource {
    /// A source with a fresh random seed.
    pub(crate) fn new() -> Self {
        Self {
            seed: random_word(),
            next_block: AtomicU64::new(0),
        }
    }

    /// A sequence number no other call on this source returns.
    #[inline]
    pub(crate) fn next(&self) -> u64 {
        BLOCK.with(|block| {
            let (seed, next, end) = block.get();
            if seed == self.seed && next < end {
                block.set((seed, next + 1, end));
                return next;
            }
            let start = self.next_block.fetch_add(ID_BLOCK, Ordering::Relaxed);
            block.set((self.seed, start + 1, start + ID_BLOCK));
            start
        })
    }

    /// A fresh id.
    #[inline]
    pub(crate) fn id(&self) -> MessageId {
        MessageId(mix64(self.seed.wrapping_add(self.next())))
    }

    /// A uniform number in `[0, 1)` (retry jitter).
    pub(crate) fn unit(&self) -> f64 {
        let bits = mix64(self.seed ^ mix64(self.next()));
        (bits >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn ids_never_repeat_across_threads_and_sources() {
        let sources = [IdSource::new(), IdSource::new()];
        let mut ids: Vec<MessageId> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|t| {
                    let sources = &sources;
                    s.spawn(move || {
                        // Alternate sources so the thread-local block is swapped often.
                        (0..3 * ID_BLOCK)
                            .map(|i| sources[(i as usize + t) % 2].id())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let total = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), total, "a generated id repeated");
    }

    #[test]
    fn jitter_units_lie_in_zero_to_one() {
        let source = IdSource::new();
        assert!((0..1000)
            .map(|_| source.unit())
            .all(|u| (0.0..1.0).contains(&u)));
    }
}
