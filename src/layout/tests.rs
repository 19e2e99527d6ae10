//! The segment format pinned to its version: a change of the layout fails here until
//! `FORMAT_VERSION` is bumped and the new fingerprint appended to `PINNED`.

use std::fmt::Write;
use std::mem::{align_of, size_of};

use super::header::{self, at};
use super::region::{Layout, Shape};
use super::shared::SharedWords;
use super::FORMAT_VERSION;
use crate::base::sync::AtomicU64;
use crate::engine::counters::{CounterStripe, COUNTERS, STRIPES};
use crate::engine::dedup::{Stripe, ENTRIES_PER_STRIPE};
use crate::engine::slots::{PayloadLine, SlotHeader, State, HEADER_FIELDS, REASON_BYTES};
use crate::engine::wheel::{BUCKETS, LEVELS};
use crate::liveness::{Participant, PARTICIPANTS, PIN_MARKS};

/// Each format version's layout fingerprint. Append a line for a new version; never edit
/// one: a segment of that version exists somewhere with exactly that layout.
const PINNED: &[(u64, u64)] = &[
    (10, 0xe732_b4d1_6d1d_50ec),
    (11, 0x8be1_ee39_f119_c744),
    (12, 0xfd70_7107_a5de_f289),
];

/// Everything two builds must agree on to share a segment, as text: the header's word
/// indices, the engine's constants, the size and alignment of every section's element,
/// the slot states' values, and the sections of a reference shape.
fn description() -> String {
    let mut text = String::new();
    let header_words = [
        ("magic", at::MAGIC),
        ("version", at::VERSION),
        ("byte order", at::BYTE_ORDER),
        ("initialized", at::INITIALIZED),
        ("header bytes", at::HEADER_BYTES),
        ("wheel", at::WHEEL),
        ("counter stripes", at::COUNTER_STRIPES),
        ("dedup entries", at::DEDUP_ENTRIES),
        ("shape", at::SHAPE),
        ("offsets", at::OFFSETS),
        ("total bytes", at::TOTAL_BYTES),
        ("config", at::CONFIG),
        ("hash", at::HASH),
        ("created", at::CREATED),
        ("boot id", at::BOOT_ID),
        ("participants", at::PARTICIPANTS),
        ("pid namespace", at::PID_NAMESPACE),
        ("checksum", at::CHECKSUM),
        ("instance", at::INSTANCE),
    ];
    for (name, index) in header_words {
        writeln!(text, "header word {name}: {index}").unwrap();
    }
    writeln!(
        text,
        "header: {} words, {} bytes",
        header::WORDS,
        header::HEADER_BYTES
    )
    .unwrap();
    let constants = [
        ("participants", PARTICIPANTS),
        ("pin marks", PIN_MARKS),
        ("counter stripes", STRIPES),
        ("counters", COUNTERS),
        ("dedup entries per stripe", ENTRIES_PER_STRIPE),
        ("wheel levels", LEVELS),
        ("wheel buckets", BUCKETS),
        ("reason bytes", REASON_BYTES),
    ];
    for (name, value) in constants {
        writeln!(text, "constant {name}: {value}").unwrap();
    }
    let types = [
        (
            "SharedWords",
            size_of::<SharedWords>(),
            align_of::<SharedWords>(),
        ),
        (
            "CounterStripe",
            size_of::<CounterStripe>(),
            align_of::<CounterStripe>(),
        ),
        (
            "Participant",
            size_of::<Participant>(),
            align_of::<Participant>(),
        ),
        (
            "SlotHeader",
            size_of::<SlotHeader>(),
            align_of::<SlotHeader>(),
        ),
        (
            "PayloadLine",
            size_of::<PayloadLine>(),
            align_of::<PayloadLine>(),
        ),
        ("AtomicU64", size_of::<AtomicU64>(), align_of::<AtomicU64>()),
        ("Stripe", size_of::<Stripe>(), align_of::<Stripe>()),
    ];
    for (name, size, align) in types {
        writeln!(text, "type {name}: {size} bytes, align {align}").unwrap();
    }
    let states = [
        State::Free,
        State::Writing,
        State::Ready,
        State::Delayed,
        State::Leased,
        State::Dead,
        State::Settling,
        State::Taken,
    ];
    for state in states {
        writeln!(text, "state {state:?}: {}", state as u8).unwrap();
    }
    for (field, offset) in HEADER_FIELDS {
        writeln!(text, "slot header field {field}: at {offset}").unwrap();
    }
    let shape = Shape {
        capacity: 1000,
        lines_per_slot: 3,
        dead_capacity: 250,
        dedup_stripes: 256,
    };
    let layout = Layout::new(shape, header::HEADER_BYTES).unwrap();
    let sections = [
        ("shared", layout.shared),
        ("counters", layout.counters),
        ("participants", layout.participants),
        ("slot headers", layout.slot_headers),
        ("payloads", layout.payloads),
        ("free ring", layout.free_ring),
        ("ready ring", layout.ready_ring),
        ("dead ring", layout.dead_ring),
        ("wheel heads", layout.wheel_heads),
        ("wheel next", layout.wheel_next),
        ("dedup", layout.dedup),
    ];
    writeln!(
        text,
        "reference shape: 1000 slots of 3 lines, 250 dead, 256 stripes"
    )
    .unwrap();
    for (name, span) in sections {
        writeln!(
            text,
            "section {name}: offset {}, count {}",
            span.offset, span.count
        )
        .unwrap();
    }
    writeln!(text, "total: {} bytes", layout.size).unwrap();
    text
}

fn fingerprint(text: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

#[test]
fn the_layout_of_a_reference_shape_is_pinned_to_the_format_version() {
    let text = description();
    let now = fingerprint(&text);
    let (last_version, last_fingerprint) = *PINNED.last().unwrap();
    assert_eq!(
        (last_version, last_fingerprint),
        (FORMAT_VERSION, now),
        "the segment format changed (or FORMAT_VERSION did without it): bump FORMAT_VERSION \
         in src/layout/mod.rs, follow that page's checklist, and append \
         ({}, {now:#x}) to PINNED. The layout now:\n{text}",
        FORMAT_VERSION + u64::from(last_fingerprint != now && last_version == FORMAT_VERSION),
    );
}

#[test]
fn pinned_versions_only_grow_and_never_share_a_layout() {
    for pair in PINNED.windows(2) {
        assert!(pair[0].0 < pair[1].0, "versions in order: {pair:?}");
    }
    for (i, a) in PINNED.iter().enumerate() {
        for b in &PINNED[i + 1..] {
            assert_ne!(a.1, b.1, "two versions with one layout: {a:?} {b:?}");
        }
    }
}

#[test]
fn a_changed_layout_changes_the_fingerprint() {
    let text = description();
    let moved = text.replacen("header word magic: 0", "header word magic: 1", 1);
    assert_ne!(text, moved);
    assert_ne!(fingerprint(&text), fingerprint(&moved));
}
