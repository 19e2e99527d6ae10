//! Multi-threaded stress of `Ring`: P producers push unique increasing sequences, C consumers
//! pop with single and batch operations. Checked at the end: every value arrived exactly once,
//! and each consumer saw each producer's values in increasing order (FIFO per producer).

use std::sync::atomic::{AtomicU64, Ordering};

use ackring::Ring;

fn stress(capacity: usize, producers: u64, consumers: usize, per_producer: u64) {
    let ring = Ring::new(capacity).unwrap();
    let popped = AtomicU64::new(0);
    let total = producers * per_producer;
    let received: Vec<Vec<u64>> = std::thread::scope(|s| {
        for producer in 0..producers {
            let ring = &ring;
            s.spawn(move || {
                let mut seq = 0;
                let mut pending = Vec::new();
                while seq < per_producer || !pending.is_empty() {
                    // Alternate single pushes and batches of varying size.
                    if seq % 3 == 0 && pending.is_empty() {
                        let end = (seq + 1 + seq % 5).min(per_producer);
                        pending.extend((seq..end).map(|s| producer << 40 | s));
                        seq = end;
                    }
                    if pending.is_empty() {
                        let mut value = producer << 40 | seq;
                        while let Err(full) = ring.try_push(value) {
                            value = full.into_inner();
                            std::thread::yield_now();
                        }
                        seq += 1;
                    } else if ring.push_batch(&mut pending) == 0 {
                        std::thread::yield_now();
                    }
                }
            });
        }
        let handles: Vec<_> = (0..consumers)
            .map(|consumer| {
                let (ring, popped) = (&ring, &popped);
                s.spawn(move || {
                    let mut got = Vec::new();
                    let mut last_seen = vec![None::<u64>; producers as usize];
                    let mut batch = Vec::new();
                    while popped.load(Ordering::Relaxed) < total {
                        batch.clear();
                        if consumer % 2 == 0 {
                            batch.extend(ring.try_pop());
                        } else {
                            ring.pop_batch(&mut batch, 1 + got.len() % 7);
                        }
                        if batch.is_empty() {
                            std::thread::yield_now();
                            continue;
                        }
                        popped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        for &value in &batch {
                            let (producer, seq) = ((value >> 40) as usize, value & ((1 << 40) - 1));
                            assert!(
                                last_seen[producer] < Some(seq),
                                "consumer {consumer} saw producer {producer} go from {:?} to {seq}",
                                last_seen[producer]
                            );
                            last_seen[producer] = Some(seq);
                        }
                        got.extend_from_slice(&batch);
                    }
                    got
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<u64> = received.into_iter().flatten().collect();
    assert_eq!(
        all.len() as u64,
        total,
        "no value lost or duplicated in count"
    );
    all.sort_unstable();
    let expected: Vec<u64> = (0..producers)
        .flat_map(|p| (0..per_producer).map(move |s| p << 40 | s))
        .collect();
    assert!(all == expected, "every value exactly once");
    assert!(ring.is_empty());
}

#[test]
fn four_producers_four_consumers_small_ring() {
    stress(4, 4, 4, 50_000);
}

#[test]
fn three_producers_two_consumers_odd_capacity() {
    stress(7, 3, 2, 50_000);
}

#[test]
fn capacity_one_under_contention() {
    stress(1, 2, 2, 20_000);
}

#[test]
fn large_ring_many_threads() {
    stress(1024, 6, 3, 30_000);
}
