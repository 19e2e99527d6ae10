//! Loom model of the dedup window: publishers racing with one id, exactly one accepted.
#![cfg(loom)]

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use ackring::dedup::{DedupError, DedupWindow};
use ackring::MessageId;
use loom::sync::Arc;
use loom::thread;

#[test]
fn two_publishers_with_the_same_id_exactly_one_is_accepted() {
    let outcomes = std::sync::Arc::new(Mutex::new(BTreeSet::new()));
    let sink = outcomes.clone();
    let mut builder = loom::model::Builder::new();
    builder.max_branches = 100_000;
    builder.check(move || {
        let dedup = Arc::new(DedupWindow::new(Duration::from_secs(1), 32).unwrap());
        let id = MessageId(77);
        let publishers: Vec<_> = (0..2)
            .map(|_| {
                let dedup = dedup.clone();
                thread::spawn(move || dedup.record(id, 10))
            })
            .collect();
        let results: Vec<_> = publishers.into_iter().map(|p| p.join().unwrap()).collect();
        let accepted = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(accepted, 1, "exactly one publish of the id: {results:?}");
        assert!(results.contains(&Err(DedupError::Duplicate { id })));
        // And the id stays remembered for the rest of the window.
        assert!(dedup.record(id, 11).is_err());
        sink.lock().unwrap().insert(results[0].is_ok());
    });
    // Either publisher may be the one accepted.
    assert_eq!(*outcomes.lock().unwrap(), BTreeSet::from([false, true]));
}
