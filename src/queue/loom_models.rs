//! Loom models of the queue's own code: each races one pair of operations (a receive,
//! an ack, a timer run) and asserts one invariant.

use super::*;
use crate::base::clock::ManualClock;
use loom::sync::Arc;
use loom::thread;

/// One nanosecond: the wheel's tick in the models that run it, and a short TTL.
const NS: Duration = Duration::from_nanos(1);

/// A queue of `capacity` one-byte messages on a manual clock, with dedup off (its
/// stripes add nothing to these races), as `adjust` changes that configuration.
fn model_queue(
    capacity: u32,
    adjust: impl FnOnce(QueueConfig) -> QueueConfig,
) -> (Arc<Queue<ManualClock>>, ManualClock) {
    let clock = ManualClock::new();
    let config = adjust(QueueConfig {
        dedup_window: None,
        ..QueueConfig::new(capacity, 1)
    });
    (
        Arc::new(Queue::with_clock(config, clock.clone()).unwrap()),
        clock,
    )
}

/// The wheel ticking every nanosecond.
fn ticking(config: QueueConfig) -> QueueConfig {
    QueueConfig {
        timer_tick: NS,
        ..config
    }
}

/// A message that lives a nanosecond.
fn short_lived() -> PublishOptions {
    PublishOptions {
        ttl: Some(NS),
        ..PublishOptions::default()
    }
}

/// A wheel insert racing the ticker, end to end: a lease taken while the
/// wheel runs must not lose its timer, or the message would stay in flight for ever
/// after its consumer vanished. (`wheel::loom_models` races the wheel on its own.)
#[test]
fn a_lease_taken_during_a_wheel_run_still_expires() {
    crate::base::sync::model::check(|| {
        let (queue, clock) = model_queue(2, ticking);
        queue.try_publish(b"m").unwrap();
        let delayed = PublishOptions {
            delay: Some(NS),
            ..PublishOptions::default()
        };
        queue.try_publish_with(b"d", delayed).unwrap();
        clock.advance(NS); // the delayed message is due: a run fires it
        let receiver = {
            let queue = queue.clone();
            // Lease "m" and walk away without settling (a vanished consumer).
            thread::spawn(move || std::mem::forget(queue.try_receive()))
        };
        let ticker = {
            let queue = queue.clone();
            thread::spawn(move || queue.tick())
        };
        receiver.join().unwrap();
        ticker.join().unwrap();
        // Past every lease: whatever was leased must come back.
        clock.advance(queue.config().visibility_timeout * 2);
        let mut seen = Vec::new();
        while let Some(delivery) = queue.try_receive() {
            seen.push(delivery.payload().to_vec());
            delivery.ack().unwrap();
        }
        seen.sort();
        assert_eq!(
            seen,
            [b"d".to_vec(), b"m".to_vec()],
            "both messages delivered again"
        );
    });
}

/// The "ack racing lease expiry", on the queue's own receive, ack and ticker:
/// the lease has run out and a tick runs while the consumer acks. Exactly one outcome:
/// the ack counts and the message is gone, or the ack fails with `LeaseLost` and the
/// message is delivered again, as attempt 2.
#[test]
fn an_ack_racing_its_lease_running_out_has_exactly_one_outcome() {
    crate::base::sync::model::check(|| {
        let (queue, clock) = model_queue(1, |config| QueueConfig {
            // A few ticks: the wheel catches up tick by tick.
            visibility_timeout: 2 * NS,
            ..ticking(config)
        });
        let lease = queue.config().visibility_timeout;
        queue.try_publish(b"a").unwrap();
        let delivery = queue.try_receive().expect("a is ready");
        clock.advance(lease); // the lease has run out: the next tick takes it back
        let ticker = {
            let queue = queue.clone();
            thread::spawn(move || queue.tick())
        };
        let acked = delivery.ack();
        ticker.join().unwrap();
        queue.tick();
        let again = queue.try_receive();
        match acked {
            Ok(()) => {
                assert!(again.is_none(), "an acked message is not delivered again");
            }
            Err(SettleError::LeaseLost { .. }) => {
                let again = again.expect("a message whose ack failed comes back");
                assert_eq!((again.payload(), again.attempt()), (&b"a"[..], 2));
                again.ack().unwrap();
            }
        }
    });
}

/// A timer run taking an expired message off the head of the ready queue while a
/// receive pops: the expired message dies exactly once, and the live one behind it is
/// delivered, never taken by the run.
#[test]
fn a_timer_run_expiring_the_head_races_a_receive() {
    crate::base::sync::model::check(|| {
        let (queue, clock) = model_queue(2, ticking);
        queue.try_publish_with(b"a", short_lived()).unwrap();
        queue.try_publish(b"b").unwrap();
        clock.advance(NS); // "a" has expired
        let ticker = {
            let queue = queue.clone();
            thread::spawn(move || queue.tick())
        };
        let delivery = queue.try_receive().expect("b is ready");
        assert_eq!(delivery.payload(), b"b");
        delivery.ack().unwrap();
        ticker.join().unwrap();
        assert!(queue.try_receive().is_none());
        let letters: Vec<_> = queue
            .dead_letters()
            .into_iter()
            .map(|letter| (letter.payload, letter.reason))
            .collect();
        assert_eq!(letters, [(b"a".to_vec(), DeadReason::Expired)]);
    });
}

/// Crash recovery may leave a message two ready tokens (it re-queues what a slot's
/// header says is ready without proving the token missing). Two receivers race with
/// them; the winner acks and publishes the next message into the same slot. The loser
/// must write nothing to the slot: by then it may hold that next message, whose
/// attempt count it would overwrite (first delivered as attempt 2).
#[test]
fn a_receiver_that_loses_the_race_for_a_twin_token_writes_nothing() {
    crate::base::sync::model::check(|| {
        let (queue, _) = model_queue(1, |config| config);
        queue.try_publish(b"a").unwrap();
        let ready = queue.store().load(0).unwrap();
        queue.push_ready(0, ready.generation); // the twin
        let receiver = |queue: Arc<Queue<ManualClock>>| {
            thread::spawn(move || {
                if let Some(delivery) = queue.try_receive() {
                    let first = delivery.payload() == b"a";
                    assert_eq!(delivery.attempt(), 1, "nothing failed or ran out");
                    delivery.ack().unwrap();
                    if first {
                        queue.try_publish(b"b").unwrap();
                    }
                }
            })
        };
        let one = receiver(queue.clone());
        let two = receiver(queue.clone());
        one.join().unwrap();
        two.join().unwrap();
        if let Some(delivery) = queue.try_receive() {
            assert_eq!(
                (delivery.payload(), delivery.attempt()),
                (&b"b"[..], 1),
                "the next message's first delivery"
            );
        };
    });
}

/// The same twin tokens when the message has expired: both holders would dead-letter
/// it. The winner's dead letter is popped, and the next message published into the
/// same slot and rejected. The loser must write nothing: its "expired" reason, empty
/// error text and time would otherwise land on that next message's dead letter.
#[test]
fn a_twin_token_holder_that_loses_the_race_to_dead_letter_writes_nothing() {
    // Two preemptions: the losing write needs only one (after the loser read the slot
    // as ready), and three make CI's loom step far too long (figures:
    // benches/README.md, *Measurements behind the code's choices*).
    crate::base::sync::model::check_bounded(2, || {
        let (queue, clock) = model_queue(1, |config| QueueConfig {
            dead_letter_capacity: 1,
            ..config
        });
        queue.try_publish_with(b"a", short_lived()).unwrap();
        let ready = queue.store().load(0).unwrap();
        queue.push_ready(0, ready.generation); // the twin
        clock.advance(NS); // "a" has expired
        let reject = |delivery: Delivery<'_, ManualClock>| {
            assert_eq!(
                delivery.payload(),
                b"b",
                "an expired message is never delivered"
            );
            delivery.reject("bad").unwrap();
        };
        // One receiver only receives; the other also pops the dead letter and reuses
        // the slot for "b", which it receives and rejects.
        let plain = {
            let queue = queue.clone();
            thread::spawn(move || {
                if let Some(delivery) = queue.try_receive() {
                    reject(delivery);
                }
            })
        };
        let reusing = {
            let queue = queue.clone();
            thread::spawn(move || {
                if let Some(delivery) = queue.try_receive() {
                    reject(delivery);
                }
                let Some(letter) = queue.pop_dead_letter() else {
                    return; // "a" not dead-lettered yet: the other receiver will
                };
                assert_eq!(
                    (&letter.payload[..], letter.reason),
                    (&b"a"[..], DeadReason::Expired)
                );
                queue.try_publish(b"b").unwrap();
                if let Some(delivery) = queue.try_receive() {
                    reject(delivery);
                }
            })
        };
        plain.join().unwrap();
        reusing.join().unwrap();
        if let Some(delivery) = queue.try_receive() {
            reject(delivery);
        }
        let letters: Vec<_> = queue
            .dead_letters()
            .into_iter()
            .map(|letter| (letter.payload, letter.reason, letter.error))
            .collect();
        let a = (b"a".to_vec(), DeadReason::Expired, String::new());
        let b = (b"b".to_vec(), DeadReason::Rejected, "bad".to_string());
        assert!(
            letters == [a] || letters == [b],
            "each message's own dead letter, got {letters:?}"
        );
    });
}

/// The lease-timer bit under a race: a slot's old lease node fires (its lease was
/// acked) while the slot is published and leased again. Whichever CAS wins, exactly one
/// timer must stay behind for the new lease, so it still runs out.
#[test]
fn an_old_lease_timer_firing_while_the_slot_is_leased_again_keeps_the_new_lease_timed() {
    crate::base::sync::model::check(|| {
        let (queue, clock) = model_queue(1, ticking);
        let lease = queue.config().visibility_timeout;
        queue.try_publish(b"a").unwrap();
        queue.try_receive().unwrap().ack().unwrap(); // its lease node stays in the wheel
        clock.advance(lease); // ... and is due now
        let ticker = {
            let queue = queue.clone();
            thread::spawn(move || queue.tick())
        };
        let consumer = {
            let queue = queue.clone();
            thread::spawn(move || {
                queue.try_publish(b"b").unwrap();
                // Lease "b" and vanish without settling.
                std::mem::forget(queue.try_receive().expect("b is ready"));
            })
        };
        ticker.join().unwrap();
        consumer.join().unwrap();
        clock.advance(lease);
        let again = queue.try_receive().expect("b's lease ran out");
        assert_eq!((again.payload(), again.attempt()), (&b"b"[..], 2));
        again.ack().unwrap();
    });
}
