//! Message ids.

/// A message's identity: what the dedup window remembers and dead letters are listed by.
///
/// Give one explicitly (`MessageId(order_number)`), derive one from an application key with
/// [`MessageId::from_key`], or let the queue generate one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct MessageId(pub u64);

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
pub(crate) fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
