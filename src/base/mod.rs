//! The foundation: what every layer above may use and what imports nothing else of the
//! crate. The loom facade, the clock, message ids, and views of shared memory.

pub mod clock;
pub(crate) mod id;
pub(crate) mod sync;
pub(crate) mod table;
