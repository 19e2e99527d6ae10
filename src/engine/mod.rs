//! The lock-free blocks a queue is built from, each over memory it is handed (a section of
//! a region) and knowing nothing of `Queue`: the index ring, the slot store, the timing
//! wheel, the dedup table, the futex signal and the striped counters.

pub(crate) mod counters;
pub mod dedup;
pub(crate) mod index_ring;
mod lifecycle;
pub(crate) mod slots;
pub(crate) mod wait;
#[cfg(any(feature = "async", loom))]
pub(crate) mod wakers;
pub(crate) mod wheel;
