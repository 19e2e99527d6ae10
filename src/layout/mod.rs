//! The segment format, on one page.
//!
//! A queue's state is one block of memory, the *region*: on the heap for a queue of one
//! process, or in a *segment* (a file under `/dev/shm`, or any file) that processes map,
//! where a *header* comes first. This page draws the whole segment, names every word
//! another process may read and who writes it, and carries [`FORMAT_VERSION`] with the
//! rule for bumping it. The modules below hold the details: `config` (what a queue is made
//! with), `region` (where each section lies), `memory` (the memory a region lives in),
//! `shared` (the queue's single shared words) and `header` (the header, word by word).
//!
//! # The segment
//!
//! ```text
//!  0          HEADER_BYTES (384)
//!  ┌──────────┬────────┬──────────┬──────────────┬──────────────┬──────────┬───────────
//!  │ header   │ shared │ counters │ participants │ slot headers │ payloads │ free ring
//!  │ 48 words │ 1      │ 16       │ 64           │ capacity     │ lines    │ 2×capacity
//!  └──────────┴────────┴──────────┴──────────────┴──────────────┴──────────┴───────────
//!   ──────────┬───────────┬────────────────┬─────────────┬────────────┬──────────────┐
//!   ready ring│ dead ring │ wheel heads    │ wheel next  │ dedup      │ (end: total  │
//!   2×capacity│ dead cap. │ levels × 64    │ 2×capacity  │ stripes    │  bytes)      │
//!   ──────────┴───────────┴────────────────┴─────────────┴────────────┴──────────────┘
//! ```
//!
//! Each section starts at the first multiple of 128 bytes (a cache-line pair, which x86's
//! adjacent-line prefetcher fetches together) at or after the previous one's end, so no two
//! sections share a line pair; its element count follows from the configuration's shape
//! (`region::Shape`): `lines` is capacity × payload lines per slot. The header records every
//! section's offset and the total, and an opener refuses a segment whose offsets differ
//! from the ones its own build computes. All bytes start as zero, every section's empty
//! state except the rings' and the wheel's words, which the creator writes before it
//! publishes the header. Sections hold offsets and indices, never pointers.
//!
//! | section        | element (bytes)          | written by                                   |
//! |----------------|--------------------------|----------------------------------------------|
//! | header         | 48 words (384)           | the creator, once, checksum last but for `initialized`; the first opener after a reboot rewrites the boot id and pid namespace (outside the checksum) under the file's lock |
//! | `shared`       | `SharedWords` (2176)     | see below                                    |
//! | `counters`     | `CounterStripe` (128)    | every participant, on the stripe its thread hashes to (add only) |
//! | `participants` | `Participant` (2112)     | `occupant`: a registrant's or reaper's CAS; `epoch`, `scheduling`, `sleeping`, `pin_marks`: the registered process only |
//! | `slot_headers` | `SlotHeader` (256)       | the word: CASes through `engine::lifecycle`; the fields (`Meta`): only whoever holds the slot (`Writing`, `Taken`, `Settling`) |
//! | `payloads`     | `PayloadLine` (64)       | the publisher holding the slot in `Writing`  |
//! | `free_ring`, `ready_ring`, `dead_ring` | `u64` (8) | pushers and poppers, one CAS per slot word |
//! | `wheel_heads`  | `u64` (8)                | inserters (CAS that expects the bucket's tag) and the ticker (detaches a bucket) |
//! | `wheel_next`   | `u64` (8)                | a node's linker, and the ticker               |
//! | `dedup`        | `Stripe` (576)           | the stripe lock's holder; the lock word: lockers' CAS, and a breaker of a dead holder's lock |
//!
//! `shared` holds, each word on its own 128 bytes: the three rings' `head` and `tail`
//! (hints anyone helps forward); the wheel's `cursor` (the ticker), `ticking` (the run
//! lock: its holder's registration) and `overflow` (inserters and the ticker); the
//! `ready_signal` and `room_signal` futex words (sleepers arm them, the first waker after
//! an arming bumps the epoch); and recovery's words: `deaths` (reapers add), `recovered`
//! (the sweeper), `next_check`, `clock_queue`, `clock_unix` (the ticker, at each liveness
//! check) and `clock_base` (the first opener after a reboot).
//!
//! Everything in a segment is untrusted input: another process may write any word at any
//! time. Every index, length and count read from it is checked where it is used, and
//! every loop over its words is bounded; a bad value is a typed error, never undefined
//! behaviour, a panic or a hang.
//!
//! # When to bump [`FORMAT_VERSION`]
//!
//! Two builds that disagree on any of these must not open one segment, so bump the version
//! for a change of:
//! - the size, alignment or field order of a type laid in a section (the `const` asserts
//!   below fail until they are updated);
//! - the sections: one added, removed or reordered, or a count rule changed (the test
//!   `the_layout_of_a_reference_shape_is_pinned_to_the_format_version` fails);
//! - the header: a word added, moved, or read differently;
//! - the meaning of a value: a slot state or a bit of the state word (`engine::slots`), a
//!   token's bits, a lock word's holder, the futex protocol (`engine::wait`), the hash of
//!   message ids;
//! - how processes cooperate, wherever an old and a new build on one segment would break
//!   each other's invariants (version 8: sleepers arm the futex word, and a waker of 7
//!   would not wake a sleeper of 8).
//!
//! Then append the new version's layout fingerprint to `PINNED` in this module's tests
//! (the test prints it).

#[cfg(all(test, not(loom)))]
mod tests;

pub(crate) mod config;
#[cfg(not(loom))]
pub(crate) mod header;
#[cfg(not(loom))]
pub(crate) mod memory;
pub(crate) mod region;
pub(crate) mod shared;

/// The segment format's version, in the header's second word. History: 8, sleepers arm
/// the futex word; 9, a receive takes its slot before writing the lease, and recovery's
/// `recovered` word carries a flag; 10, a slot taken to write its fields is in the new
/// state `Taken` (`Settling` is only a lease being changed), the full policy's header
/// words are reserved, and the header carries a checksum; 11, a slot's attempts word carries the
/// ticket of its latest deadline in its high half; 12, the header's last word, reserved
/// before, is a random instance word, part of the queue's identity.
#[cfg_attr(loom, allow(dead_code))] // read by `header`, which loom builds leave out
pub(crate) const FORMAT_VERSION: u64 = 12;

/// The size and alignment of every type laid in a section, as the table above gives them:
/// a change fails here, at compile time, until this page (and the version) follow it.
/// (Loom's atomics are larger: its builds lay sections out as typed allocations.)
#[cfg(not(loom))]
const _: () = {
    use std::mem::{align_of, size_of};

    use crate::base::sync::AtomicU64;
    use crate::base::table::Padded;
    use crate::engine::counters::CounterStripe;
    use crate::engine::dedup::Stripe;
    use crate::engine::slots::{PayloadLine, SlotHeader};
    use crate::engine::wait::Signal;
    use crate::engine::wheel::WheelWords;
    use crate::liveness::Participant;
    use shared::{RecoveryWords, RingCursors, SharedWords};

    assert!(size_of::<Padded>() == 128 && align_of::<Padded>() == 128);
    assert!(size_of::<RingCursors>() == 256 && align_of::<RingCursors>() == 128);
    assert!(size_of::<WheelWords>() == 384 && align_of::<WheelWords>() == 128);
    assert!(size_of::<Signal>() == 128 && align_of::<Signal>() == 128);
    assert!(size_of::<RecoveryWords>() == 768 && align_of::<RecoveryWords>() == 128);
    assert!(size_of::<SharedWords>() == 2176 && align_of::<SharedWords>() == 128);
    assert!(size_of::<CounterStripe>() == 128 && align_of::<CounterStripe>() == 128);
    assert!(size_of::<Participant>() == 2112 && align_of::<Participant>() == 64);
    assert!(size_of::<SlotHeader>() == 256 && align_of::<SlotHeader>() == 64);
    assert!(size_of::<PayloadLine>() == 64 && align_of::<PayloadLine>() == 64);
    assert!(size_of::<AtomicU64>() == 8 && align_of::<AtomicU64>() == 8);
    assert!(size_of::<Stripe>() == 576 && align_of::<Stripe>() == 64);
    assert!(header::HEADER_BYTES == 384 && header::WORDS == 48);
    // No section type may need more alignment than a section start gives it.
    assert!(region::SECTION_ALIGN == 128);
};
