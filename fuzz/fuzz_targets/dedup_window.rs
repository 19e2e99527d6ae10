//! Differential fuzzing of the dedup window against a map of id -> expiry: a live id is
//! always a duplicate, an expired or unknown id is accepted (or, only when some stripe's
//! worth of ids are live, refused as full), and `forget` undoes exactly one recording.
#![no_main]

use std::collections::HashMap;
use std::time::Duration;

use ackring::dedup::{DedupError, DedupWindow, ENTRIES_PER_STRIPE};
use ackring::MessageId;
use libfuzzer_sys::fuzz_target;

const WINDOW: u64 = 1_000;

fuzz_target!(|data: &[u8]| {
    let dedup = DedupWindow::new(Duration::from_nanos(WINDOW), 64).unwrap();
    let mut model: HashMap<u64, u64> = HashMap::new(); // id -> recorded at
    let mut now = 0u64;
    for chunk in data.chunks(2) {
        let (op, arg) = (chunk[0], u64::from(*chunk.get(1).unwrap_or(&0)));
        let id = arg % 97; // few ids, so repeats are common
        match op % 4 {
            0 | 1 => {
                let live = model.get(&id).is_some_and(|&at| now < at + WINDOW);
                match dedup.record(MessageId(id), now) {
                    Ok(()) => {
                        assert!(!live, "live id {id} accepted at {now}");
                        model.insert(id, now);
                    }
                    Err(DedupError::Duplicate { .. }) => {
                        assert!(live, "id {id} called a duplicate at {now}")
                    }
                    Err(DedupError::Full { .. }) => {
                        assert!(!live, "live id {id} must be a duplicate, not full");
                        let live_ids = model.values().filter(|&&at| now < at + WINDOW).count();
                        assert!(live_ids >= ENTRIES_PER_STRIPE, "full with {live_ids} live");
                    }
                    // `Locked` needs a stripe another process holds: not a standalone window.
                    Err(other) => panic!("unexpected {other:?}"),
                }
            }
            2 => now += arg * 10,
            _ => {
                if let Some(&at) = model.get(&id) {
                    dedup.forget(MessageId(id), at);
                    model.remove(&id);
                }
            }
        }
    }
});
