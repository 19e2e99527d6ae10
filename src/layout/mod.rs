//! The segment format: the configuration a queue is made with, the region it lays out
//! (sections at 128-byte offsets), the memory that holds it, the single shared words and
//! the header a shared segment starts with.

pub(crate) mod config;
#[cfg(not(loom))]
pub(crate) mod header;
#[cfg(not(loom))]
pub(crate) mod memory;
pub(crate) mod region;
pub(crate) mod shared;
