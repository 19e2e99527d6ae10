//! The queue's single shared words: the rings' cursors, the wheel's words, the two
//! futex signals and recovery's bookkeeping, each on its own cache-line pair.

use crate::base::sync::AtomicU64;
use crate::base::table::Padded;
use crate::engine::index_ring::IndexRing;
use crate::engine::wait::Signal;
use crate::engine::wheel::WheelWords;

/// The queue's single shared words.
#[repr(C)]
#[derive(Default)]
pub(crate) struct SharedWords {
    pub(crate) free: RingCursors,
    pub(crate) ready: RingCursors,
    pub(crate) dead: RingCursors,
    pub(crate) wheel: WheelWords,
    /// Receivers sleep on it; whoever makes a message ready wakes them.
    pub(crate) ready_signal: Signal,
    /// Publishers of a full queue sleep on it (`Queue::publish`); whoever frees a slot
    /// wakes them.
    pub(crate) room_signal: Signal,
    /// Crash recovery's bookkeeping.
    pub(crate) recovery: RecoveryWords,
}

/// A ring's cursors, each on its own lines (pushers and poppers do not share one).
#[repr(C)]
#[derive(Default)]
pub(crate) struct RingCursors {
    pub(crate) head: Padded,
    pub(crate) tail: Padded,
}

impl RingCursors {
    /// The index ring of these cursors over `slots` (laid out already).
    #[inline]
    pub(crate) fn ring<'r>(&'r self, slots: &'r [AtomicU64]) -> IndexRing<'r> {
        IndexRing::attach(&self.head.0, &self.tail.0, slots)
    }
}

/// The shared words of recovery (in `SharedWords`).
#[repr(C)]
#[derive(Default)]
pub(crate) struct RecoveryWords {
    /// Dead registrations found so far.
    pub(crate) deaths: Padded,
    /// The `deaths` count the last complete sweep started from.
    pub(crate) recovered: Padded,
    /// Queue-clock time of the next liveness check.
    pub(crate) next_check: Padded,
    /// A recent reading of the queue's clock and, in `clock_unix`, of the wall clock at
    /// the same moment (updated with each liveness check): how the queue's clock carries
    /// over a reboot (see `queue::recovery::reboot`).
    pub(crate) clock_queue: Padded,
    pub(crate) clock_unix: Padded,
    /// The queue's clock minus the host's monotonic clock (wrapping; 0 until a reboot).
    pub(crate) clock_base: Padded,
}
