//! Loom models of the ring: each races one pair of operations and checks one invariant,
//! over every interleaving loom reaches (see `base::sync::model`).
//!
//! Every raced operation runs in a spawned thread; the model's main thread only sets up,
//! joins and checks. Each model also records which outcomes it saw and asserts that the
//! interesting ones occurred, so a model that stops exploring the race fails.

use std::collections::BTreeSet;

use super::{Full, Ring, TokenRing};
use crate::base::sync::model::explore;
use loom::sync::Arc;
use loom::thread;

/// Pops everything left, in order.
fn drain(ring: &Ring<u32>) -> Vec<u32> {
    std::iter::from_fn(|| ring.try_pop()).collect()
}

/// Pushes, yielding to the model while the ring is full.
fn push_until_accepted(ring: &Ring<u32>, mut value: u32) {
    while let Err(Full(back)) = ring.try_push(value) {
        value = back;
        thread::yield_now();
    }
}

#[test]
fn two_producers_one_consumer_every_value_exactly_once() {
    let seen = explore(|| {
        let ring = Arc::new(Ring::new(2).unwrap());
        let producers: Vec<_> = [1u32, 2]
            .into_iter()
            .map(|value| {
                let ring = ring.clone();
                thread::spawn(move || push_until_accepted(&ring, value))
            })
            .collect();
        let consumer = {
            let ring = ring.clone();
            thread::spawn(move || (ring.try_pop(), ring.try_pop()))
        };
        for producer in producers {
            producer.join().unwrap();
        }
        let (first, second) = consumer.join().unwrap();
        let raced: Vec<u32> = first.into_iter().chain(second).collect();
        let mut all = raced.clone();
        all.extend(drain(&ring));
        all.sort_unstable();
        assert_eq!(all, [1, 2], "each value exactly once");
        raced
    });
    // The consumer ran before, between and after the producers, in both producer orders.
    for expected in [vec![], vec![1], vec![2], vec![1, 2], vec![2, 1]] {
        assert!(
            seen.contains(&expected),
            "never saw {expected:?} in {seen:?}"
        );
    }
}

#[test]
fn one_producer_two_consumers_each_value_once_in_fifo_order() {
    let seen = explore(|| {
        let ring = Arc::new(Ring::new(2).unwrap());
        ring.try_push(1).unwrap();
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let ring = ring.clone();
                thread::spawn(move || ring.try_pop())
            })
            .collect();
        // The push of 2 races both pops.
        let producer = {
            let ring = ring.clone();
            thread::spawn(move || ring.try_push(2).unwrap())
        };
        producer.join().unwrap();
        let taken: Vec<Option<u32>> = consumers.into_iter().map(|c| c.join().unwrap()).collect();
        // 1 was queued before the race, so someone took it; FIFO: no one took 2 before it.
        assert!(
            taken.contains(&Some(1)),
            "a pop missed the queued value: {taken:?}"
        );
        let mut all: Vec<u32> = taken.iter().flatten().copied().collect();
        all.extend(drain(&ring));
        all.sort_unstable();
        assert_eq!(all, [1, 2], "each value exactly once");
        taken
    });
    for expected in [
        [Some(1), None],
        [None, Some(1)],
        [Some(1), Some(2)],
        [Some(2), Some(1)],
    ] {
        assert!(
            seen.contains(&expected.to_vec()),
            "never saw {expected:?} in {seen:?}"
        );
    }
}

#[test]
fn full_ring_of_two_push_races_pop() {
    let seen = explore(|| {
        let ring = Arc::new(Ring::new(2).unwrap());
        // Go round once so the race happens across a lap boundary.
        ring.try_push(0).unwrap();
        assert_eq!(ring.try_pop(), Some(0));
        ring.try_push(1).unwrap();
        ring.try_push(2).unwrap();
        let pusher = {
            let ring = ring.clone();
            thread::spawn(move || ring.try_push(3))
        };
        let popper = {
            let ring = ring.clone();
            thread::spawn(move || ring.try_pop())
        };
        let pushed = pusher.join().unwrap();
        // The pop always finds the oldest value; the push either found room or was refused
        // with its value handed back, never overwriting.
        assert_eq!(popper.join().unwrap(), Some(1));
        match pushed {
            Ok(()) => assert_eq!(drain(&ring), [2, 3]),
            Err(full) => {
                assert_eq!(full.into_inner(), 3);
                assert_eq!(drain(&ring), [2]);
            }
        }
        pushed.is_ok()
    });
    assert_eq!(
        seen,
        BTreeSet::from([false, true]),
        "both refused and accepted pushes"
    );
}

#[test]
fn batch_push_races_batch_pop_without_loss_or_reorder() {
    let seen = explore(|| {
        let ring = Arc::new(Ring::new(3).unwrap());
        ring.try_push(10).unwrap();
        let pusher = {
            let ring = ring.clone();
            thread::spawn(move || {
                let mut batch = vec![11, 12, 13];
                let pushed = ring.push_batch(&mut batch);
                (pushed, batch)
            })
        };
        let popper = {
            let ring = ring.clone();
            thread::spawn(move || {
                let mut out = Vec::new();
                ring.pop_batch(&mut out, 2);
                out
            })
        };
        let (pushed, left) = pusher.join().unwrap();
        let mut out = popper.join().unwrap();
        let popped_in_race = out.len();
        assert_eq!(pushed + left.len(), 3);
        assert_eq!(left, (11 + pushed as u32..14).collect::<Vec<_>>());
        out.extend(drain(&ring));
        let expected: Vec<u32> = (10..11 + pushed as u32).collect();
        assert_eq!(out, expected, "FIFO, each pushed value exactly once");
        (pushed, popped_in_race)
    });
    // Pop first (room for 3), push first (room for 2, pop takes 2), and in between.
    for expected in [(3, 1), (2, 2), (2, 1)] {
        assert!(
            seen.contains(&expected),
            "never saw {expected:?} in {seen:?}"
        );
    }
}

#[test]
fn token_ring_in_caller_memory_two_producers_one_consumer() {
    let seen = explore(|| {
        let bytes = TokenRing::bytes_needed(2).unwrap();
        let layout = std::alloc::Layout::from_size_align(bytes, TokenRing::ALIGN).unwrap();
        // SAFETY: non-zero size; the memory is leaked on purpose so threads can borrow it for
        // 'static (a few hundred bytes per explored interleaving).
        let memory: &'static mut [u8] = unsafe {
            let ptr = std::alloc::alloc_zeroed(layout);
            assert!(!ptr.is_null());
            std::slice::from_raw_parts_mut(ptr, bytes)
        };
        let ring = TokenRing::init(memory, 2).unwrap();
        let producers: Vec<_> = [7u64, 8]
            .into_iter()
            .map(|token| thread::spawn(move || ring.try_push(token)))
            .collect();
        let consumer = thread::spawn(move || ring.try_pop().ok());
        for producer in producers {
            producer.join().unwrap().unwrap();
        }
        let raced = consumer.join().unwrap();
        let mut all: Vec<u64> = raced.into_iter().collect();
        all.extend(std::iter::from_fn(|| ring.try_pop().ok()));
        all.sort_unstable();
        assert_eq!(all, [7, 8]);
        raced
    });
    assert_eq!(seen, BTreeSet::from([None, Some(7), Some(8)]));
}

#[test]
fn two_batch_pushers_race_on_the_tail() {
    let seen = explore(|| {
        let ring = Arc::new(Ring::new(3).unwrap());
        let pushers: Vec<_> = [[1u32, 2], [11, 12]]
            .into_iter()
            .map(|values| {
                let ring = ring.clone();
                thread::spawn(move || ring.push_batch(&mut values.to_vec()))
            })
            .collect();
        let pushed: Vec<usize> = pushers.into_iter().map(|p| p.join().unwrap()).collect();
        // Three free slots, four values: whoever claims first takes two, the other one.
        assert_eq!(pushed.iter().sum::<usize>(), 3);
        let all = drain(&ring);
        for (values, count) in [([1u32, 2], pushed[0]), ([11, 12], pushed[1])] {
            let mine: Vec<u32> = all.iter().copied().filter(|v| values.contains(v)).collect();
            assert_eq!(
                mine,
                values[..count],
                "each pusher's prefix, in order, once"
            );
        }
        (pushed[0], pushed[1])
    });
    assert_eq!(seen, BTreeSet::from([(1, 2), (2, 1)]));
}

#[test]
fn two_batch_poppers_race_on_the_head() {
    let seen = explore(|| {
        let ring = Arc::new(Ring::new(3).unwrap());
        for value in 1..=3 {
            ring.try_push(value).unwrap();
        }
        let poppers: Vec<_> = (0..2)
            .map(|_| {
                let ring = ring.clone();
                thread::spawn(move || {
                    let mut out = Vec::new();
                    ring.pop_batch(&mut out, 2);
                    out
                })
            })
            .collect();
        let taken: Vec<Vec<u32>> = poppers.into_iter().map(|p| p.join().unwrap()).collect();
        // Each popper got a run of consecutive values; together, every value exactly once.
        for run in &taken {
            assert!(
                run.windows(2).all(|w| w[1] == w[0] + 1),
                "not a FIFO run: {run:?}"
            );
        }
        let mut all: Vec<u32> = taken.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, [1, 2, 3]);
        (taken[0].len(), taken[1].len())
    });
    assert_eq!(seen, BTreeSet::from([(1, 2), (2, 1)]));
}
