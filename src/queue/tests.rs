//! One deterministic test per semantic point, on a manual clock (no test sleeps).

use std::time::Duration;

use super::*;
use crate::base::clock::ManualClock;
use crate::base::id::MessageId;

const LEASE: Duration = Duration::from_secs(30);

fn queue_with(config: QueueConfig) -> (Queue<ManualClock>, ManualClock) {
    let clock = ManualClock::new();
    (Queue::with_clock(config, clock.clone()).unwrap(), clock)
}

fn queue(capacity: u32) -> (Queue<ManualClock>, ManualClock) {
    queue_with(QueueConfig::new(capacity, 32))
}

fn id(n: u64) -> PublishOptions {
    PublishOptions {
        id: Some(MessageId(n)),
        ..PublishOptions::default()
    }
}

#[test]
fn publish_receive_ack_in_fifo_order() {
    let (queue, _) = queue(8);
    for text in ["a", "b", "c"] {
        queue.try_publish(text.as_bytes()).unwrap();
    }
    for text in ["a", "b", "c"] {
        let delivery = queue.try_receive().unwrap();
        assert_eq!(delivery.payload(), text.as_bytes());
        assert_eq!(delivery.attempt(), 1);
        delivery.ack().unwrap();
    }
    assert!(queue.try_receive().is_none());
    let stats = queue.stats();
    assert_eq!((stats.published, stats.delivered, stats.acked), (3, 3, 3));
    assert_eq!((stats.ready, stats.in_flight), (0, 0));
}

#[test]
fn bad_publishes_are_typed_errors_and_queue_nothing() {
    let (queue, _) = queue(2);
    assert_eq!(
        queue.try_publish(&[0; 33]),
        Err(PublishError::PayloadTooLarge { len: 33, max: 32 })
    );
    let zero_ttl = PublishOptions {
        ttl: Some(Duration::ZERO),
        ..PublishOptions::default()
    };
    assert_eq!(
        queue.try_publish_with(b"x", zero_ttl),
        Err(PublishError::AlreadyExpired)
    );
    assert_eq!(queue.stats().published, 0);
}

#[test]
fn a_full_queue_refuses_without_overwriting_and_the_id_can_be_retried() {
    let (queue, _) = queue(2);
    queue.try_publish_with(b"1", id(1)).unwrap();
    queue.try_publish_with(b"2", id(2)).unwrap();
    assert_eq!(
        queue.try_publish_with(b"3", id(3)),
        Err(PublishError::Full { capacity: 2 })
    );
    queue.try_receive().unwrap().ack().unwrap();
    // The refused id was not remembered: publishing it again is not a duplicate.
    queue.try_publish_with(b"3", id(3)).unwrap();
    let rest: Vec<Vec<u8>> = std::iter::from_fn(|| queue.try_receive())
        .map(|d| {
            let payload = d.payload().to_vec();
            d.ack().unwrap();
            payload
        })
        .collect();
    assert_eq!(rest, [b"2".to_vec(), b"3".to_vec()]);
}

#[test]
fn duplicate_ids_are_rejected_within_the_window_and_accepted_after() {
    let (queue, clock) = queue(8);
    queue.try_publish_with(b"x", id(7)).unwrap();
    assert_eq!(
        queue.try_publish_with(b"x", id(7)),
        Err(PublishError::Duplicate { id: MessageId(7) })
    );
    clock.advance(Duration::from_secs(119));
    assert!(queue.try_publish_with(b"x", id(7)).is_err());
    clock.advance(Duration::from_secs(1));
    queue.try_publish_with(b"x", id(7)).unwrap();
    assert_eq!(queue.stats().duplicates, 2);
}

#[test]
fn generated_ids_do_not_use_up_the_dedup_window() {
    // A window for 8 ids (one stripe of 32 entries) and far more generated-id messages
    // within it: generated ids are unique, so the window keeps room for the caller's own.
    let (queue, _) = queue(4);
    assert_eq!(queue.config().dedup_capacity, 8);
    // More than the window's 32 entries (Miri is slow: just past them there).
    for _ in 0..if cfg!(miri) { 33 } else { 1_000 } {
        queue.try_publish(b"generated").unwrap();
        queue.try_receive().unwrap().ack().unwrap();
    }
    queue.try_publish_with(b"mine", id(7)).unwrap();
    assert_eq!(
        queue.try_publish_with(b"mine", id(7)),
        Err(PublishError::Duplicate { id: MessageId(7) })
    );
    // A generated id given back explicitly is a new id to the window: accepted, once.
    let generated = queue.try_publish(b"generated").unwrap();
    let again = PublishOptions {
        id: Some(generated),
        ..PublishOptions::default()
    };
    queue.try_publish_with(b"again", again).unwrap();
    assert_eq!(
        queue.try_publish_with(b"again", again),
        Err(PublishError::Duplicate { id: generated })
    );
}

#[test]
fn generated_ids_are_unique() {
    // Miri takes about a tenth of a second a publish.
    let count = if cfg!(miri) { 8 } else { 64 };
    let (queue, _) = queue(count);
    let mut ids: Vec<MessageId> = (0..count)
        .map(|_| queue.try_publish(b"").unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count as usize);
}

#[test]
fn an_expired_lease_redelivers_and_the_stale_receipt_cannot_ack() {
    let (queue, clock) = queue(4);
    queue.try_publish(b"job").unwrap();
    let first = queue.try_receive().unwrap();
    assert_eq!(first.lease_deadline(), 30_000_000_000);
    clock.advance(LEASE - Duration::from_nanos(1));
    assert!(queue.try_receive().is_none(), "still leased");
    clock.advance(Duration::from_nanos(1));
    let second = queue
        .try_receive()
        .expect("redelivered when the lease ran out");
    assert_eq!(second.attempt(), 2);
    assert_eq!(second.payload(), b"job");
    let id = first.id();
    assert_eq!(first.ack(), Err(SettleError::LeaseLost { id }));
    second.ack().unwrap();
    let stats = queue.stats();
    assert_eq!((stats.acked, stats.redelivered, stats.delivered), (1, 1, 2));
}

#[test]
fn a_message_whose_every_lease_ran_out_is_dead_lettered_not_delivered_again() {
    // Consumers that never settle (too slow, or killed by the message): after its last
    // allowed delivery's lease runs out, the message dies instead of coming back.
    let (queue, clock) = queue_with(QueueConfig {
        max_attempts: 2,
        ..QueueConfig::new(4, 32)
    });
    let id = queue.try_publish(b"poison").unwrap();
    let mut stalled = Vec::new(); // held, never settled
    for attempt in 1..=2 {
        let delivery = queue
            .try_receive()
            .expect("delivered while attempts are left");
        assert_eq!(delivery.attempt(), attempt);
        stalled.push(delivery);
        clock.advance(LEASE);
    }
    assert!(queue.try_receive().is_none(), "not delivered a third time");
    let dead = queue.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (
            dead[0].id,
            dead[0].reason,
            dead[0].attempts,
            dead[0].error.as_str()
        ),
        (id, DeadReason::AttemptsExhausted, 2, LEASE_RAN_OUT)
    );
    let stats = queue.stats();
    assert_eq!(
        (stats.delivered, stats.dead_lettered, stats.dead),
        (2, 1, 1)
    );
    // Redriven, it has its attempts again.
    assert_eq!(queue.redrive(), 1);
    assert_eq!(queue.try_receive().expect("redriven").attempt(), 1);
}

#[test]
fn a_payload_stays_readable_after_its_lease_is_lost_and_the_slot_is_not_reused() {
    let (queue, clock) = queue(1);
    queue.try_publish(b"old").unwrap();
    let slow = queue.try_receive().unwrap();
    clock.advance(LEASE);
    let fast = queue.try_receive().unwrap();
    fast.ack().unwrap();
    // The only slot is freed but still pinned by `slow`: a publish cannot take it.
    assert_eq!(
        queue.try_publish(b"new"),
        Err(PublishError::Full { capacity: 1 })
    );
    assert_eq!(slow.payload(), b"old");
    drop(slow);
    queue.try_publish(b"new").unwrap();
}

/// The defaults the issue names, by behaviour: five deliveries, the fifth nack kills; the
/// backoff between them is 100, 200, 400 and 800 ms; no TTL (a message waits a year).
#[test]
fn by_default_five_deliveries_with_doubling_backoff_and_no_ttl() {
    let (queue, clock) = queue(4);
    queue.try_publish(b"flaky").unwrap();
    let mut backoff = Duration::from_millis(100);
    for attempt in 1..=5 {
        let delivery = queue.try_receive().expect("retried after its backoff");
        assert_eq!(delivery.attempt(), attempt);
        delivery.nack(&format!("failure {attempt}")).unwrap();
        if attempt == 5 {
            break;
        }
        clock.advance(backoff - Duration::from_nanos(1));
        assert!(
            queue.try_receive().is_none(),
            "attempt {attempt}: backing off"
        );
        clock.advance(Duration::from_nanos(1));
        backoff *= 2;
    }
    let letters = queue.dead_letters();
    assert_eq!(letters.len(), 1, "dead after its fifth delivery");
    assert_eq!(
        (letters[0].attempts, &letters[0].error[..]),
        (5, "failure 5")
    );
    queue.try_publish(b"patient").unwrap();
    clock.advance(Duration::from_secs(365 * 24 * 3600));
    let patient = queue
        .try_receive()
        .expect("no TTL: still deliverable a year on");
    assert_eq!(patient.payload(), b"patient");
}

#[test]
fn nack_retries_after_the_backoff_then_dead_letters_with_the_error() {
    let config = QueueConfig {
        max_attempts: 3,
        ..QueueConfig::new(4, 32)
    };
    let (queue, clock) = queue_with(config);
    queue.try_publish(b"flaky").unwrap();
    queue.try_receive().unwrap().nack("timeout 1").unwrap();
    assert!(queue.try_receive().is_none(), "backing off");
    assert_eq!(queue.stats().delayed, 1);
    clock.advance(Duration::from_millis(100));
    let second = queue.try_receive().expect("retried after 100 ms");
    assert_eq!(second.attempt(), 2);
    second.nack("timeout 2").unwrap();
    clock.advance(Duration::from_millis(199));
    assert!(queue.try_receive().is_none(), "second backoff is 200 ms");
    clock.advance(Duration::from_millis(1));
    queue.try_receive().unwrap().nack("timeout 3").unwrap();
    assert!(queue.try_receive().is_none());
    let dead = queue.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, DeadReason::AttemptsExhausted);
    assert_eq!(dead[0].error, "timeout 3");
    assert_eq!(
        (dead[0].attempts, dead[0].payload.as_slice()),
        (3, &b"flaky"[..])
    );
    let stats = queue.stats();
    assert_eq!((stats.nacked, stats.dead_lettered, stats.dead), (3, 1, 1));
}

#[test]
fn nack_with_delay_retries_after_its_delay_not_the_backoff() {
    let config = QueueConfig {
        max_attempts: 2,
        ..QueueConfig::new(4, 32)
    };
    let (queue, clock) = queue_with(config);
    queue.try_publish(b"later").unwrap();
    let first = queue.try_receive().unwrap();
    first
        .nack_with_delay("not yet", Duration::from_secs(5))
        .unwrap();
    clock.advance(Duration::from_millis(100));
    assert!(
        queue.try_receive().is_none(),
        "the backoff (100 ms) is not used"
    );
    clock.advance(Duration::from_millis(4899));
    assert!(queue.try_receive().is_none(), "before its delay");
    clock.advance(Duration::from_millis(1));
    let second = queue.try_receive().expect("after its delay");
    assert_eq!(
        second.attempt(),
        2,
        "a nack with a delay uses up an attempt"
    );
    // The last allowed attempt: dead-lettered, whatever the delay.
    second
        .nack_with_delay("still not", Duration::from_secs(5))
        .unwrap();
    let dead = queue.dead_letters();
    assert_eq!(
        (dead.len(), dead[0].reason, dead[0].error.as_str()),
        (1, DeadReason::AttemptsExhausted, "still not")
    );
    assert_eq!(queue.stats().nacked, 2);
}

/// Receives every ready message (acking it), returning their payloads in order.
fn drain(queue: &Queue<ManualClock>) -> Vec<String> {
    std::iter::from_fn(|| queue.try_receive())
        .map(|delivery| {
            let text = String::from_utf8(delivery.payload().to_vec()).unwrap();
            delivery.ack().unwrap();
            text
        })
        .collect()
}

const ABCD: [&str; 4] = ["a", "b", "c", "d"];

#[test]
fn equal_delays_come_out_oldest_first_and_so_do_their_dead_letters() {
    let (queue, clock) = queue(8);
    let delay = Duration::from_millis(10);
    for (text, ttl) in ABCD.iter().zip([None, Some(5), None, Some(5)]) {
        let options = PublishOptions {
            delay: Some(delay),
            ttl: ttl.map(Duration::from_millis),
            ..PublishOptions::default()
        };
        queue.try_publish_with(text.as_bytes(), options).unwrap();
    }
    for text in ["e", "f"] {
        let options = PublishOptions {
            delay: Some(delay),
            ..PublishOptions::default()
        };
        queue.try_publish_with(text.as_bytes(), options).unwrap();
    }
    clock.advance(delay);
    queue.tick();
    assert_eq!(drain(&queue), ["a", "c", "e", "f"]);
    let dead: Vec<_> = std::iter::from_fn(|| queue.pop_dead_letter())
        .map(|letter| letter.payload)
        .collect();
    assert_eq!(dead, [b"b".to_vec(), b"d".to_vec()]);
}

#[test]
fn equal_backoffs_after_nacks_in_order_come_out_in_that_order() {
    let (queue, clock) = queue(8);
    for text in ABCD {
        queue.try_publish(text.as_bytes()).unwrap();
    }
    let held: Vec<_> = std::iter::from_fn(|| queue.try_receive()).collect();
    for delivery in held {
        delivery.nack("later").unwrap();
    }
    clock.advance(queue.retry_wait(1));
    assert_eq!(drain(&queue), ABCD);
}

#[test]
fn leases_running_out_in_one_tick_come_back_oldest_first() {
    let (queue, clock) = queue(8);
    for text in ABCD {
        queue.try_publish(text.as_bytes()).unwrap();
    }
    // Received at the same instant, then in a later tick, out of step: ordered by
    // deadline, ties by when each was received.
    let first: Vec<_> = std::iter::from_fn(|| queue.try_receive()).take(2).collect();
    clock.advance(Duration::from_micros(100)); // the same 1 ms tick
    let second: Vec<_> = std::iter::from_fn(|| queue.try_receive()).collect();
    let lease = queue.config().visibility_timeout;
    clock.advance(lease);
    first.into_iter().chain(second).for_each(std::mem::forget); // their consumers went quiet
    assert_eq!(drain(&queue), ABCD);
}

#[test]
fn lease_timers_left_linked_from_the_slots_last_messages_keep_the_new_leases_in_order() {
    let (queue, clock) = queue(2);
    // Each slot's lease node stays linked after its ack: slot 0's pushed first, then 1's.
    for text in ["w", "x"] {
        queue.try_publish(text.as_bytes()).unwrap();
        queue.try_receive().unwrap().ack().unwrap();
    }
    // Slot 0 and then slot 1 again, leased in that order, at the same instant: their nodes
    // are not linked anew, and a walk of the stack meets slot 1's first.
    queue.try_publish(b"y").unwrap();
    queue.try_publish(b"z").unwrap();
    let held: Vec<_> = std::iter::from_fn(|| queue.try_receive()).collect();
    clock.advance(queue.config().visibility_timeout);
    held.into_iter().for_each(std::mem::forget);
    assert_eq!(drain(&queue), ["y", "z"]);
}

/// A real process stopped (SIGSTOP), as a debugger or a job-control stop leaves one:
/// alive, and not letting go of anything it holds. Killed when dropped.
#[cfg(not(miri))]
struct Stopped(std::process::Child);

#[cfg(not(miri))]
impl Stopped {
    fn new() -> Self {
        let child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        // SAFETY: kill takes no memory; the pid is our own child's, not yet waited for.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        Self(child)
    }

    /// Registers it in `queue`'s participant table, as if it had opened the queue.
    fn register_in(&self, queue: &Queue<ManualClock>) -> u64 {
        queue.participants().register_other(self.0.id())
    }
}

#[cfg(not(miri))]
impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[cfg(not(miri))]
fn a_publish_gives_up_on_a_dedup_stripe_a_stopped_process_holds_and_names_it() {
    let (queue, _) = queue(4);
    let stopped = Stopped::new();
    let holder = stopped.register_in(&queue);
    let dedup = queue.dedup().unwrap();
    dedup.hold_stripe_of(MessageId(7), holder); // stopped mid-record
                                                // A call that never waits does not wait for it either; a timed one, its time.
    assert_eq!(
        queue.try_publish_with(b"x", id(7)),
        Err(PublishError::DedupLocked {
            pid: stopped.0.id(),
            waited: Duration::ZERO,
        })
    );
    let timeout = Duration::from_millis(30);
    match queue.publish_timeout(b"x", id(7), timeout) {
        Err(PublishError::DedupLocked { pid, waited }) => {
            assert_eq!(pid, stopped.0.id());
            assert!(waited <= timeout, "{waited:?}");
        }
        other => panic!("expected DedupLocked, got {other:?}"),
    }
    assert_eq!(queue.stats().published, 0);
    dedup.hold_stripe_of(MessageId(7), 0);
    queue
        .try_publish_with(b"x", id(7))
        .expect("let go: published");
}

#[test]
#[cfg(not(miri))]
fn a_timer_run_a_stopped_process_holds_shows_in_stats_and_ready_messages_still_go() {
    let (queue, clock) = queue(4);
    queue.try_publish(b"ready").unwrap();
    let delayed = PublishOptions {
        delay: Some(Duration::from_millis(10)),
        ..PublishOptions::default()
    };
    queue.try_publish_with(b"delayed", delayed).unwrap();
    assert_eq!(queue.stats().timers_stalled, None);
    let stopped = Stopped::new();
    let holder = stopped.register_in(&queue);
    // It took the run lock at this tick, then stopped.
    let ticking = &queue.region.sections().shared.wheel.ticking.0;
    let tick = queue.now() / queue.tick_nanos;
    ticking.store(holder << 32 | (tick & 0xffff_ffff), Ordering::Relaxed);
    clock.advance(Duration::from_millis(250));
    let stalled = queue.stats().timers_stalled.expect("shown as stalled");
    assert_eq!(stalled.pid, stopped.0.id());
    assert!(stalled.held_for >= Duration::from_millis(250));
    let delivered = queue.try_receive().expect("a ready message still goes");
    assert_eq!(delivered.payload(), b"ready");
    delivered.ack().unwrap();
    assert!(
        queue.try_receive().is_none(),
        "no timer runs: the delay never ends"
    );
    drop(stopped); // killed: the next run breaks its lock
    queue.tick();
    assert_eq!(queue.stats().timers_stalled, None);
    assert_eq!(queue.try_receive().unwrap().payload(), b"delayed");
}

#[test]
fn nack_with_no_delay_queues_at_the_back_at_once() {
    let (queue, _) = queue(4);
    queue.try_publish(b"a").unwrap();
    queue.try_publish(b"b").unwrap();
    let a = queue.try_receive().unwrap();
    a.nack_with_delay("again", Duration::ZERO).unwrap();
    assert_eq!(queue.try_receive().unwrap().payload(), b"b");
    let again = queue.try_receive().expect("a, behind b, at once");
    assert_eq!((again.payload(), again.attempt()), (&b"a"[..], 2));
}

#[test]
fn release_hands_a_message_back_at_once_without_using_an_attempt() {
    let config = QueueConfig {
        max_attempts: 1,
        ..QueueConfig::new(4, 32)
    };
    let (queue, _) = queue_with(config);
    queue.try_publish(b"a").unwrap();
    queue.try_publish(b"b").unwrap();
    // With one attempt allowed, any use of an attempt would dead-letter it.
    for _ in 0..5 {
        let a = queue.try_receive().unwrap();
        assert_eq!((a.payload(), a.attempt()), (&b"a"[..], 1));
        a.release().unwrap();
        let b = queue.try_receive().expect("b: a went to the back");
        assert_eq!((b.payload(), b.attempt()), (&b"b"[..], 1));
        b.release().unwrap();
    }
    let stats = queue.stats();
    assert_eq!(
        (stats.released, stats.redelivered, stats.nacked, stats.dead),
        (10, 0, 0, 0)
    );
    assert_eq!(stats.ready, 2);
    queue.try_receive().unwrap().ack().unwrap();
    assert!(queue.dead_letters().is_empty());
}

#[test]
fn release_after_the_lease_ran_out_fails_and_a_release_past_the_ttl_dead_letters() {
    let (queue, clock) = queue(4);
    queue.try_publish(b"slow").unwrap();
    let late = queue.try_receive().unwrap();
    clock.advance(LEASE);
    queue.tick();
    assert!(matches!(late.release(), Err(SettleError::LeaseLost { .. })));

    let short = PublishOptions {
        ttl: Some(Duration::from_secs(1)),
        ..PublishOptions::default()
    };
    queue.try_publish_with(b"short-lived", short).unwrap();
    let _slow = queue.try_receive().unwrap(); // the first message's second delivery
    let delivery = queue.try_receive().unwrap();
    clock.advance(Duration::from_secs(1));
    delivery.release().unwrap();
    assert!(
        queue.try_receive().is_none(),
        "never delivered past its TTL"
    );
    let dead = queue.dead_letters();
    assert_eq!(
        (dead.len(), dead[0].reason, dead[0].payload.as_slice()),
        (1, DeadReason::Expired, &b"short-lived"[..])
    );
}

#[test]
fn reject_dead_letters_at_once() {
    let (queue, _) = queue(4);
    queue.try_publish_with(b"poison", id(5)).unwrap();
    queue.try_receive().unwrap().reject("unparseable").unwrap();
    let letter = queue.pop_dead_letter().unwrap();
    assert_eq!(
        (letter.id, letter.reason),
        (MessageId(5), DeadReason::Rejected)
    );
    assert_eq!(letter.error, "unparseable");
    assert!(queue.pop_dead_letter().is_none());
    assert_eq!(queue.stats().dead, 0, "popped dead letters are gone");
}

#[test]
fn extend_pushes_the_lease_deadline() {
    let (queue, clock) = queue(4);
    queue.try_publish(b"long job").unwrap();
    let mut delivery = queue.try_receive().unwrap();
    clock.advance(Duration::from_secs(20));
    delivery.extend(Duration::from_secs(30)).unwrap();
    assert_eq!(delivery.lease_deadline(), 50_000_000_000);
    clock.advance(Duration::from_secs(29));
    assert!(queue.try_receive().is_none(), "extended lease still held");
    delivery.ack().unwrap();
    assert_eq!(queue.stats().acked, 1);
}

#[test]
fn extend_after_the_lease_ran_out_fails() {
    let (queue, clock) = queue(4);
    queue.try_publish(b"x").unwrap();
    let mut delivery = queue.try_receive().unwrap();
    clock.advance(LEASE);
    queue.tick();
    let id = delivery.id();
    assert_eq!(delivery.extend(LEASE), Err(SettleError::LeaseLost { id }));
}

#[test]
fn an_expired_message_is_never_delivered_and_is_dead_lettered() {
    let (queue, clock) = queue(4);
    let ttl = PublishOptions {
        ttl: Some(Duration::from_secs(5)),
        ..PublishOptions::default()
    };
    queue.try_publish_with(b"stale soon", ttl).unwrap();
    queue.try_publish(b"fresh").unwrap();
    clock.advance(Duration::from_secs(5));
    let delivery = queue.try_receive().unwrap();
    assert_eq!(
        delivery.payload(),
        b"fresh",
        "the expired message was skipped"
    );
    delivery.ack().unwrap();
    let dead = queue.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].reason, dead[0].payload.as_slice()),
        (DeadReason::Expired, &b"stale soon"[..])
    );
    assert_eq!(queue.stats().expired, 1);
}

#[test]
fn the_drop_policy_discards_expired_messages_and_counts_them() {
    let config = QueueConfig {
        default_ttl: Some(Duration::from_secs(1)),
        on_expiry: ExpiryPolicy::Drop,
        ..QueueConfig::new(1, 8)
    };
    let (queue, clock) = queue_with(config);
    queue.try_publish(b"x").unwrap();
    clock.advance(Duration::from_secs(1));
    assert!(queue.try_receive().is_none());
    let stats = queue.stats();
    assert_eq!((stats.expired, stats.dead), (1, 0));
    queue.try_publish(b"y").unwrap(); // its slot was freed
}

#[test]
fn expired_messages_leave_the_head_of_the_queue_on_time_with_no_receiver() {
    let config = QueueConfig {
        default_ttl: Some(Duration::from_secs(1)),
        on_expiry: ExpiryPolicy::Drop,
        ..QueueConfig::new(3, 8)
    };
    let (queue, clock) = queue_with(config);
    for payload in [b"a", b"b", b"c"] {
        queue.try_publish(payload).unwrap();
    }
    clock.advance(Duration::from_secs(1) - Duration::from_nanos(1));
    queue.tick();
    assert_eq!((queue.stats().ready, queue.stats().expired), (3, 0));
    clock.advance(Duration::from_nanos(1));
    queue.tick();
    let stats = queue.stats();
    assert_eq!((stats.ready, stats.expired, stats.delivered), (0, 3, 0));
    for payload in [b"d", b"e", b"f"] {
        queue.try_publish(payload).unwrap(); // their slots were freed without a receive
    }
    assert_eq!(queue.try_receive().unwrap().payload(), b"d");
}

#[test]
fn an_expired_message_behind_a_longer_lived_one_leaves_when_it_reaches_the_head() {
    let (queue, clock) = queue(4);
    let ttl = |secs| PublishOptions {
        ttl: Some(Duration::from_secs(secs)),
        ..PublishOptions::default()
    };
    queue.try_publish_with(b"long", ttl(10)).unwrap();
    queue.try_publish_with(b"short", ttl(1)).unwrap();
    clock.advance(Duration::from_secs(1));
    queue.tick();
    let stats = queue.stats();
    assert_eq!(
        (stats.ready, stats.dead),
        (2, 0),
        "only the head is looked at"
    );
    let long = queue.try_receive().unwrap();
    assert_eq!(long.payload(), b"long");
    assert_eq!(
        queue.stats().ready,
        1,
        "the receive stopped at a live message"
    );
    clock.advance(Duration::from_millis(1));
    queue.tick();
    let letters = queue.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (&letters[0].payload[..], letters[0].reason),
        (&b"short"[..], DeadReason::Expired)
    );
    let stats = queue.stats();
    assert_eq!((stats.ready, stats.expired, stats.dead), (0, 1, 1));
    long.ack().unwrap();
}

#[test]
fn a_message_whose_ttl_runs_out_during_its_lease_or_backoff_dies_when_that_ends() {
    let (queue, clock) = queue_with(QueueConfig {
        dead_letter_capacity: 4,
        ..QueueConfig::new(4, 32)
    });
    let ttl = PublishOptions {
        ttl: Some(Duration::from_millis(50)),
        ..PublishOptions::default()
    };
    queue.try_publish_with(b"leased", ttl).unwrap();
    queue.try_publish_with(b"backing off", ttl).unwrap();
    let leased = queue.try_receive().unwrap();
    queue.try_receive().unwrap().nack("busy").unwrap(); // back in 100 ms
    queue.try_publish(b"immortal").unwrap(); // at the head, where a run's head expiry stops
    clock.advance(Duration::from_millis(100));
    queue.tick();
    let stats = queue.stats();
    assert_eq!(
        (stats.ready, stats.delayed, stats.in_flight, stats.expired),
        (1, 0, 1, 1),
        "the backoff ended past the TTL: dead-lettered, not queued behind the head"
    );
    clock.advance(LEASE);
    queue.tick();
    let stats = queue.stats();
    assert_eq!(
        (stats.ready, stats.in_flight, stats.expired, stats.dead),
        (1, 0, 2, 2),
        "the lease ended past the TTL: dead-lettered, not queued"
    );
    let id = leased.id();
    assert_eq!(leased.ack(), Err(SettleError::LeaseLost { id }));
    assert!(queue
        .dead_letters()
        .iter()
        .all(|letter| letter.reason == DeadReason::Expired));
}

#[test]
#[cfg_attr(miri, ignore = "300 publishes take Miri minutes")]
fn a_timer_run_takes_at_most_256_expired_messages_off_the_head() {
    let config = QueueConfig {
        default_ttl: Some(Duration::from_secs(1)),
        on_expiry: ExpiryPolicy::Drop,
        ..QueueConfig::new(300, 8)
    };
    let (queue, clock) = queue_with(config);
    for _ in 0..300 {
        queue.try_publish(b"x").unwrap();
    }
    clock.advance(Duration::from_secs(1));
    queue.tick();
    assert_eq!((queue.stats().expired, queue.stats().ready), (256, 44));
    clock.advance(Duration::from_millis(1));
    queue.tick();
    assert_eq!((queue.stats().expired, queue.stats().ready), (300, 0));
}

#[test]
fn a_nack_without_backoff_dead_letters_a_message_past_its_ttl() {
    let (queue, clock) = queue_with(QueueConfig {
        backoff: RetryBackoff::Fixed(Duration::ZERO),
        ..QueueConfig::new(4, 32)
    });
    let ttl = PublishOptions {
        ttl: Some(Duration::from_millis(50)),
        ..PublishOptions::default()
    };
    queue.try_publish_with(b"slow work", ttl).unwrap();
    let delivery = queue.try_receive().unwrap();
    clock.advance(Duration::from_millis(50)); // the lease (30 s) still holds
    delivery.nack("gave up").unwrap();
    let stats = queue.stats();
    assert_eq!((stats.ready, stats.expired, stats.dead), (0, 1, 1));
    assert_eq!(queue.dead_letters()[0].reason, DeadReason::Expired);
}

#[test]
fn a_delayed_message_is_not_delivered_before_its_delay() {
    let (queue, clock) = queue(4);
    let delayed = PublishOptions {
        delay: Some(Duration::from_secs(10)),
        ..PublishOptions::default()
    };
    queue.try_publish_with(b"later", delayed).unwrap();
    clock.advance(Duration::from_secs(9));
    assert!(queue.try_receive().is_none());
    clock.advance(Duration::from_secs(1));
    assert_eq!(queue.try_receive().unwrap().payload(), b"later");
}

#[test]
fn redrive_puts_dead_letters_back_with_attempts_reset() {
    let config = QueueConfig {
        max_attempts: 1,
        dead_letter_capacity: 4,
        ..QueueConfig::new(4, 8)
    };
    let (queue, _) = queue_with(config);
    queue.try_publish(b"a").unwrap();
    queue.try_publish(b"b").unwrap();
    queue.try_receive().unwrap().nack("boom").unwrap();
    queue.try_receive().unwrap().reject("bad").unwrap();
    assert_eq!(queue.redrive(), 2);
    let again = queue.try_receive().unwrap();
    assert_eq!((again.payload(), again.attempt()), (&b"a"[..], 1));
    again.ack().unwrap();
    queue.try_receive().unwrap().ack().unwrap();
    assert_eq!(queue.stats().dead, 0);
}

#[test]
fn a_redriven_expired_message_expires_again_and_is_never_delivered() {
    let (queue, clock) = queue(4);
    let ttl = PublishOptions {
        ttl: Some(Duration::from_secs(5)),
        ..id(7)
    };
    queue.try_publish_with(b"stale soon", ttl).unwrap();
    clock.advance(Duration::from_secs(5));
    assert!(queue.try_receive().is_none());
    assert_eq!(queue.redrive(), 1);
    assert_eq!(queue.stats().ready, 1, "back on the ready queue");
    assert!(
        queue.try_receive().is_none(),
        "an expired message is never delivered"
    );
    let dead = queue.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].id, dead[0].reason),
        (MessageId(7), DeadReason::Expired)
    );
    let stats = queue.stats();
    assert_eq!((stats.expired, stats.delivered), (2, 0));
}

#[test]
fn a_full_dead_letter_queue_discards_its_oldest_and_counts_it() {
    let config = QueueConfig {
        dead_letter_capacity: 1,
        ..QueueConfig::new(4, 8)
    };
    let (queue, _) = queue_with(config);
    queue.try_publish_with(b"first", id(1)).unwrap();
    queue.try_publish_with(b"second", id(2)).unwrap();
    queue.try_receive().unwrap().reject("1").unwrap();
    queue.try_receive().unwrap().reject("2").unwrap();
    let dead = queue.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, MessageId(2));
    assert_eq!(queue.stats().dead_discarded, 1);
    // The discarded letter's slot is free again: all 4 slots can be used.
    for n in 10..13 {
        queue.try_publish_with(b"more", id(n)).unwrap();
    }
}

#[test]
fn a_dropped_delivery_is_a_nack_with_reason_dropped() {
    let config = QueueConfig {
        max_attempts: 1,
        ..QueueConfig::new(4, 8)
    };
    let (queue, _) = queue_with(config);
    queue.try_publish(b"x").unwrap();
    drop(queue.try_receive().unwrap());
    let dead = queue.dead_letters();
    assert_eq!(
        (dead[0].reason, dead[0].error.as_str()),
        (DeadReason::AttemptsExhausted, "dropped")
    );
}

#[test]
fn redelivered_messages_go_to_the_tail() {
    let (queue, clock) = queue(4);
    queue.try_publish(b"first").unwrap();
    let lost = queue.try_receive().unwrap();
    queue.try_publish(b"second").unwrap();
    clock.advance(LEASE);
    queue.tick();
    assert_eq!(queue.try_receive().unwrap().payload(), b"second");
    assert_eq!(queue.try_receive().unwrap().payload(), b"first");
    drop(lost);
}

#[test]
fn invalid_configs_are_refused() {
    let config = QueueConfig {
        visibility_timeout: Duration::ZERO,
        ..QueueConfig::new(4, 8)
    };
    let error = Queue::new(config).unwrap_err();
    assert!(error.to_string().contains("visibility_timeout"));
    // A dedup window too large for its stripes to count in 32 bits was once accepted,
    // and built with no stripes at all: dedup silently off.
    let config = QueueConfig {
        dedup_capacity: 1 << 35,
        ..QueueConfig::new(4, 8)
    };
    let error = Queue::new(config).unwrap_err();
    assert!(error.to_string().contains("dedup_capacity"));
    // A tick longer than the host's uptime would never come round.
    let config = QueueConfig {
        timer_tick: Duration::from_secs(3600 * 24 * 365),
        ..QueueConfig::new(4, 8)
    };
    let error = Queue::new(config).unwrap_err();
    assert!(error.to_string().contains("timer_tick"));
}

#[test]
fn dead_lettering_from_many_threads_into_a_full_dead_letter_queue_loses_no_slot() {
    const THREADS: usize = 4;
    const ROUNDS: usize = if cfg!(miri) { 20 } else { 2_000 };
    let config = QueueConfig {
        dead_letter_capacity: 1,
        ..QueueConfig::new(THREADS as u32 * 2, 8)
    };
    let (queue, _) = queue_with(config);
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..ROUNDS {
                    queue.try_publish(b"doomed").unwrap();
                    queue.try_receive().unwrap().reject("no").unwrap();
                }
            });
        }
    });
    let stats = queue.stats();
    // Every letter is filed or discarded (counted); the one filed is the only dead slot.
    let letters = (THREADS * ROUNDS) as u64;
    assert_eq!(stats.dead_lettered, letters);
    assert_eq!(stats.dead + stats.dead_discarded, letters);
    assert_eq!(queue.dead_letters().len() as u64, stats.dead);
    // And every other slot is free: none was left dead with no token in the dead ring.
    let free = THREADS * 2 - stats.dead as usize;
    for n in 0..free {
        queue.try_publish_with(b"room", id(n as u64)).unwrap();
    }
    assert!(matches!(
        queue.try_publish(b"no room"),
        Err(PublishError::Full { .. })
    ));
}

#[test]
fn an_extended_message_frees_its_slot_for_reuse() {
    let (queue, _) = queue(1);
    for round in 0..3u8 {
        queue.try_publish(&[round]).unwrap();
        let mut delivery = queue.try_receive().unwrap();
        delivery.extend(LEASE).unwrap();
        delivery.ack().unwrap();
    }
    assert_eq!(
        queue.stats().acked,
        3,
        "the one slot was reused after each extend + ack"
    );
}

#[test]
fn refused_duplicates_do_not_use_up_slots() {
    let (queue, _) = queue(2);
    queue.try_publish_with(b"x", id(1)).unwrap();
    for _ in 0..5 {
        assert!(matches!(
            queue.try_publish_with(b"x", id(1)),
            Err(PublishError::Duplicate { .. })
        ));
    }
    queue.try_publish_with(b"y", id(2)).unwrap();
    assert_eq!(
        queue.try_publish_with(b"z", id(3)),
        Err(PublishError::Full { capacity: 2 })
    );
}

#[test]
fn a_full_queue_is_reported_before_the_id_is_remembered() {
    let (queue, _) = queue(1);
    queue.try_publish_with(b"a", id(1)).unwrap();
    // Full: the id is not recorded, so a later publish of it is no duplicate.
    assert_eq!(
        queue.try_publish_with(b"b", id(2)),
        Err(PublishError::Full { capacity: 1 })
    );
    queue.try_receive().unwrap().ack().unwrap();
    queue.try_publish_with(b"b", id(2)).unwrap();
}

#[test]
fn a_blocking_publish_waits_for_a_free_slot() {
    let (queue, _) = queue(1);
    queue.try_publish(b"first").unwrap();
    std::thread::scope(|s| {
        let consumer = s.spawn(|| {
            let delivery = queue.receive();
            let payload = delivery.payload().to_vec();
            delivery.ack().unwrap();
            payload
        });
        // Blocks until the consumer acks "first" and its slot is free again.
        queue.publish(b"second").unwrap();
        assert_eq!(consumer.join().unwrap(), b"first");
    });
    assert_eq!(queue.try_receive().unwrap().payload(), b"second");
}

/// A queue of one slot, full.
#[cfg(not(loom))]
fn full_with_blocking_publishes<C: Clock>(
    with_clock: impl FnOnce(QueueConfig) -> Queue<C>,
) -> Queue<C> {
    let queue = with_clock(QueueConfig::new(1, 8));
    queue.try_publish(b"first").unwrap();
    queue
}

#[cfg(not(loom))]
fn until_a_publisher_sleeps<C: Clock>(queue: &Queue<C>) {
    while queue.stats().sleeping_publishers == 0 {
        std::thread::yield_now();
    }
}

#[test]
#[cfg(not(loom))]
#[cfg_attr(miri, ignore = "real time and futexes")]
fn a_publisher_asleep_on_a_full_queue_is_woken_by_the_ack_that_frees_a_slot() {
    // On the real clock: the publisher sleeps with no timer due, so without a wake-up it
    // would sleep until its minute is up. Both ways of acking free slots must wake it.
    for ack_as_batch in [false, true] {
        let queue = full_with_blocking_publishes(|config| Queue::new(config).unwrap());
        std::thread::scope(|s| {
            let publisher = s.spawn(|| {
                let outcome = queue.publish_timeout(
                    b"second",
                    PublishOptions::default(),
                    Duration::from_secs(60),
                );
                (outcome, std::time::Instant::now())
            });
            until_a_publisher_sleeps(&queue);
            let delivery = queue.try_receive().unwrap();
            let acked = std::time::Instant::now();
            if ack_as_batch {
                queue.ack_batch([delivery]).unwrap();
            } else {
                delivery.ack().unwrap();
            }
            let (outcome, published) = publisher.join().unwrap();
            assert!(outcome.is_ok(), "{outcome:?}");
            let waited = published - acked;
            assert!(
                waited < Duration::from_secs(30),
                "the sleeping publisher was not woken: published {waited:?} after the ack"
            );
        });
        assert_eq!(queue.stats().sleeping_publishers, 0);
        assert_eq!(queue.try_receive().unwrap().payload(), b"second");
    }
}

#[test]
#[cfg(not(loom))]
#[cfg_attr(miri, ignore = "real time and futexes")]
fn a_publish_that_waited_for_room_counts_its_ttl_from_when_it_went_in() {
    for as_batch in [false, true] {
        let clock = ManualClock::new();
        let queue = full_with_blocking_publishes(|config| {
            Queue::with_clock(config, clock.clone()).unwrap()
        });
        std::thread::scope(|s| {
            let publisher = s.spawn(|| {
                let options = PublishOptions {
                    ttl: Some(Duration::from_millis(10)),
                    ..PublishOptions::default()
                };
                if as_batch {
                    queue
                        .publish_batch_with(&[(*b"second", options)])
                        .map_err(|error| error.error)
                } else {
                    queue.publish_with(b"second", options).map(drop)
                }
            });
            until_a_publisher_sleeps(&queue);
            clock.advance(Duration::from_secs(1)); // it waits a second, by the queue's clock
            queue.try_receive().unwrap().ack().unwrap();
            publisher.join().unwrap().unwrap();
        });
        let second = queue
            .try_receive()
            .expect("not expired: its TTL counts from when it went in");
        assert_eq!(second.payload(), b"second");
    }
}

#[test]
fn a_blocking_publish_gives_up_after_its_timeout_or_deadline() {
    let (queue, _) = queue(1);
    queue.try_publish(b"first").unwrap();
    let full = Err(PublishError::Full { capacity: 1 });
    let options = PublishOptions::default();
    assert_eq!(queue.try_publish(b"second"), full, "never waits");
    let timeout = Duration::from_millis(1);
    assert_eq!(queue.publish_timeout(b"second", options, timeout), full);
    let deadline = std::time::Instant::now() + timeout;
    assert_eq!(queue.publish_deadline(b"second", options, deadline), full);
    assert_eq!(queue.stats().published, 1);
}

#[test]
fn a_lease_timer_left_by_an_early_ack_still_runs_out_the_next_lease_on_time() {
    // One slot: its first lease is acked at once, so its lease node stays in the wheel for
    // the first deadline; the second lease (later deadline) must not run out at the first.
    let (queue, clock) = queue(1);
    queue.try_publish(b"one").unwrap();
    queue.try_receive().unwrap().ack().unwrap();
    clock.advance(LEASE / 2);
    queue.try_publish(b"two").unwrap();
    let held = queue.try_receive().unwrap();
    clock.advance(LEASE / 2); // the first lease's deadline
    assert!(
        queue.try_receive().is_none(),
        "the second lease is still held"
    );
    clock.advance(LEASE / 2 - Duration::from_nanos(1));
    assert!(
        queue.try_receive().is_none(),
        "a nanosecond before its deadline"
    );
    clock.advance(Duration::from_nanos(1));
    let again = queue
        .try_receive()
        .expect("the second lease ran out on time");
    assert_eq!((again.payload(), again.attempt()), (&b"two"[..], 2));
    assert_eq!(held.ack(), Err(SettleError::LeaseLost { id: again.id() }));
    again.ack().unwrap();
}

#[test]
fn a_backoff_shorter_than_the_lease_ends_on_time() {
    // The nacked slot's lease node sits in the wheel for the lease deadline (30 s); the
    // backoff (100 ms) has its own node, so the retry does not wait for the lease's.
    let (queue, clock) = queue(2);
    queue.try_publish(b"job").unwrap();
    queue.try_receive().unwrap().nack("busy").unwrap();
    clock.advance(Duration::from_millis(99));
    assert!(queue.try_receive().is_none(), "still backing off");
    clock.advance(Duration::from_millis(1));
    let retry = queue.try_receive().expect("retried after 100 ms");
    assert_eq!(retry.attempt(), 2);
    retry.ack().unwrap();
    clock.advance(LEASE * 2);
    queue.tick();
    assert!(
        queue.try_receive().is_none(),
        "the stale lease timer redelivered nothing"
    );
    assert_eq!(queue.stats().acked, 1);
}

#[test]
fn an_extend_never_shortens_a_lease() {
    let (queue, clock) = queue(2);
    queue.try_publish(b"job").unwrap();
    let mut held = queue.try_receive().unwrap();
    held.extend(Duration::from_secs(1)).unwrap();
    assert_eq!(held.lease_deadline(), nanos(LEASE));
    clock.advance(LEASE - Duration::from_secs(1));
    held.extend(Duration::from_secs(5)).unwrap();
    assert_eq!(
        held.lease_deadline(),
        nanos(LEASE) + nanos(Duration::from_secs(4))
    );
    clock.advance(Duration::from_secs(2)); // past the first deadline
    assert!(queue.try_receive().is_none(), "extended");
    clock.advance(Duration::from_secs(3));
    assert!(
        queue.try_receive().is_some(),
        "ran out at the extended deadline"
    );
}

#[test]
fn peek_copies_ready_messages_oldest_first_and_leaves_them() {
    let (queue, clock) = queue(4);
    queue.try_publish(b"first").unwrap();
    clock.advance(Duration::from_millis(1));
    queue.try_publish(b"second").unwrap();
    let held = queue.try_receive().unwrap(); // "first" is in flight: not ready
    let peeked = queue.peek(10);
    assert_eq!(peeked.len(), 1);
    assert_eq!(
        (peeked[0].payload.as_slice(), peeked[0].attempts),
        (&b"second"[..], 0)
    );
    held.nack("again").unwrap();
    clock.advance(Duration::from_millis(100)); // the backoff ends: "first" is ready again
    queue.tick();
    let peeked: Vec<Vec<u8>> = queue.peek(10).into_iter().map(|m| m.payload).collect();
    assert_eq!(
        peeked,
        [b"first".to_vec(), b"second".to_vec()],
        "oldest publish first"
    );
    let first: Vec<Vec<u8>> = queue.peek(1).into_iter().map(|m| m.payload).collect();
    assert_eq!(first, [b"first".to_vec()], "limited, oldest first");
    assert_eq!(queue.stats().ready, 2, "peeking took nothing");
    // Delivery order is the ready ring's: the retried message went to the tail.
    assert_eq!(queue.try_receive().unwrap().payload(), b"second");
}

#[test]
fn receive_timeout_on_an_empty_queue_gives_up_and_one_without_limit_is_accepted() {
    let (queue, _) = queue(2);
    assert!(queue.receive_timeout(Duration::from_millis(2)).is_none());
    queue.try_publish(b"now").unwrap();
    // Duration::MAX must not overflow the deadline arithmetic.
    let delivery = queue.receive_timeout(Duration::MAX).expect("ready at once");
    assert_eq!(delivery.payload(), b"now");
}

#[test]
#[cfg(not(loom))]
#[cfg_attr(miri, ignore = "real time and futexes")]
fn a_delayed_publish_wakes_a_receiver_asleep_on_an_empty_queue() {
    // On the real clock: the receiver went to sleep with no timer due, so without a wake-up
    // it would sleep its whole minute before noticing the delayed message.
    let queue = Queue::new(QueueConfig::new(4, 8)).unwrap();
    std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            let delivery = queue.receive_timeout(Duration::from_secs(60));
            (
                delivery.map(|d| d.payload().to_vec()),
                std::time::Instant::now(),
            )
        });
        while queue.stats().sleeping_receivers == 0 {
            std::thread::yield_now(); // until the receiver sleeps
        }
        let delay = Duration::from_millis(20);
        let published = std::time::Instant::now();
        let options = PublishOptions {
            delay: Some(delay),
            ..PublishOptions::default()
        };
        queue.try_publish_with(b"later", options).unwrap();
        let (payload, received) = receiver.join().unwrap();
        assert_eq!(payload.as_deref(), Some(b"later".as_slice()));
        let waited = received - published;
        assert!(
            waited >= delay,
            "delivered {waited:?} after publish, before its delay"
        );
        assert!(
            waited < Duration::from_secs(30),
            "the sleeping receiver was not woken: delivered {waited:?} after publish"
        );
    });
}

/// A sleeper decides how long to sleep from the timers it sees linked, so whoever links a
/// timer after its look must wake it: the first lease of a slot (which links the slot's
/// lease timer) and a timer run that links timers again (here a lease timer that came due
/// for a lease since renewed) both wake the sleepers.
#[test]
#[cfg(not(loom))]
fn linking_a_timer_wakes_the_sleepers() {
    let (queue, clock) = queue_with(QueueConfig {
        visibility_timeout: Duration::from_millis(10),
        ..QueueConfig::new(1, 8)
    });
    let signal = queue.ready_signal();
    queue.try_publish(b"first").unwrap();
    signal.arm(); // a sleeper went to sleep
    let woken = signal.wake_ups();
    let first = queue.try_receive().unwrap();
    assert!(
        signal.wake_ups() > woken,
        "the lease timer's link woke them"
    );
    first.ack().unwrap();

    clock.advance(Duration::from_millis(5));
    queue.try_publish(b"second").unwrap(); // the same slot: its lease timer is still linked
    let second = queue.try_receive().unwrap();
    clock.advance(Duration::from_millis(7)); // past the first lease's end, not the second's
    signal.arm(); // a sleeper went to sleep again
    let woken = signal.wake_ups();
    assert!(queue.try_receive().is_none());
    assert!(
        signal.wake_ups() > woken,
        "the timer linked again woke them"
    );
    second.ack().unwrap();
}

/// A receiver whose timer is due while another thread holds the timer run (here: this
/// thread, around the receive) naps a tick at a time instead of looking again at once.
#[test]
#[cfg(not(loom))]
#[cfg_attr(miri, ignore = "real time and futexes")]
fn a_receiver_naps_while_a_due_timer_run_is_held_elsewhere() {
    /// A manual clock that counts its readings: every look reads it.
    #[derive(Clone, Default)]
    struct CountingClock {
        clock: ManualClock,
        readings: std::sync::Arc<std::sync::atomic::AtomicU64>,
    }
    impl Clock for CountingClock {
        fn now_nanos(&self) -> u64 {
            self.readings
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.clock.now_nanos()
        }
    }
    let clock = CountingClock::default();
    let queue = Queue::with_clock(QueueConfig::new(4, 8), clock.clone()).unwrap();
    let delayed = PublishOptions {
        delay: Some(Duration::from_millis(2)),
        ..PublishOptions::default()
    };
    queue.try_publish_with(b"later", delayed).unwrap();
    clock.clock.advance(Duration::from_millis(5));
    let held = queue.wheel().with_run_lock(queue.now(), || {
        let before = clock.readings.load(std::sync::atomic::Ordering::Relaxed);
        assert!(queue.receive_timeout(Duration::from_millis(50)).is_none());
        clock.readings.load(std::sync::atomic::Ordering::Relaxed) - before
    });
    let readings = held.expect("the run lock was free");
    // 20 µs of looks every half microsecond, then about 50 naps of a tick: under 200
    // readings. Looking again at once made it many times that here, where a futex wait
    // of zero still takes the kernel's timer slack (50 µs); more on a faster machine
    // (figures: benches/README.md, *Measurements behind the code's choices*).
    assert!(readings < 600, "{readings} clock readings in 50 ms");
    // Once the run is free, the timer runs and the message comes.
    assert_eq!(queue.try_receive().unwrap().payload(), b"later");
}

#[test]
fn a_message_shows_its_publish_time_whenever_and_by_whom_it_is_read() {
    let clock = ManualClock::new();
    clock.advance(Duration::from_secs(100));
    let queue = Queue::with_clock(QueueConfig::new(4, 8), clock.clone()).unwrap();
    let opened = queue.now();
    // Times from before this handle opened (published through another handle of a shared
    // queue) lie before its anchor, and show as such.
    let second = 1_000_000_000;
    assert_eq!(
        queue.unix_time(opened - 60 * second) + 60 * second,
        queue.unix_time(opened)
    );
    assert_eq!(queue.unix_time(opened + 5), queue.unix_time(opened) + 5);
    queue.try_publish(b"m").unwrap();
    clock.advance(Duration::from_secs(3));
    let delivery = queue.try_receive().unwrap();
    assert_eq!(
        delivery.published_at() + Duration::from_secs(3),
        system_time(queue.unix_time(queue.now()))
    );
    delivery.reject("for the dead-letter view").unwrap();
    let dead = queue.dead_letters();
    assert_eq!(
        dead[0].published_at + Duration::from_secs(3),
        dead[0].dead_at
    );
}

#[test]
fn an_owned_delivery_keeps_its_queue_alive_and_settles_from_another_thread() {
    let clock = ManualClock::new();
    let queue = std::sync::Arc::new(Queue::with_clock(QueueConfig::new(4, 16), clock).unwrap());
    queue.try_publish(b"a").unwrap();
    queue.try_publish(b"b").unwrap();
    queue.try_publish(b"c").unwrap();
    let a = queue.try_receive_owned().unwrap();
    let b = queue.try_receive_owned().unwrap();
    let c = queue.try_receive_owned().unwrap();
    let watcher = std::sync::Arc::downgrade(&queue);
    drop(queue); // the deliveries hold the queue now
    let worker = std::thread::spawn(move || {
        assert_eq!((a.payload(), b.payload()), (&b"a"[..], &b"b"[..]));
        a.ack().unwrap();
        b.nack("later").unwrap();
        c // dropped unsettled below: a nack
    });
    let c = worker.join().unwrap();
    let queue = watcher.upgrade().expect("alive while a delivery holds it");
    drop(c);
    let stats = queue.stats();
    assert_eq!((stats.acked, stats.nacked, stats.delayed), (1, 2, 2));
}

#[test]
fn owned_deliveries_ack_in_a_batch_and_a_lost_lease_is_named() {
    let (queue, clock) = queue(4);
    let queue = std::sync::Arc::new(queue);
    queue.try_publish_with(b"kept", id(1)).unwrap();
    let lost = queue.try_receive_owned().unwrap();
    clock.advance(LEASE);
    queue.tick();
    let kept = queue.try_receive_owned().expect("delivered again");
    assert_eq!(
        queue.ack_batch([lost]),
        Err(BatchAckError {
            lost: vec![MessageId(1)]
        })
    );
    queue.ack_batch([kept]).unwrap();
    assert_eq!(queue.stats().acked, 1);
}

#[test]
fn the_builder_sets_what_it_is_told_and_refuses_what_is_invalid() {
    let backoff = RetryBackoff::Fixed(Duration::from_millis(7));
    let built = Queue::builder(64, 100)
        .visibility_timeout(Duration::from_secs(2))
        .max_attempts(9)
        .backoff(backoff)
        .default_ttl(Duration::from_secs(3))
        .dedup_window(Duration::from_secs(4))
        .dedup_capacity(500)
        .on_expiry(ExpiryPolicy::Drop)
        .dead_letter_capacity(5)
        .timer_tick(Duration::from_millis(2));
    let mut expected = QueueConfig::new(64, 100);
    expected.visibility_timeout = Duration::from_secs(2);
    expected.max_attempts = 9;
    expected.backoff = backoff;
    expected.default_ttl = Some(Duration::from_secs(3));
    expected.dedup_window = Some(Duration::from_secs(4));
    expected.dedup_capacity = 500;
    expected.on_expiry = ExpiryPolicy::Drop;
    expected.dead_letter_capacity = 5;
    expected.timer_tick = Duration::from_millis(2);
    assert_eq!(built.config(), &expected);
    assert_eq!(built.build().unwrap().config(), &expected);
    assert_eq!(
        Queue::builder(64, 100)
            .no_dedup()
            .into_config()
            .dedup_window,
        None
    );
    let refused = [
        (
            Queue::builder(0, 8),
            ConfigError::Capacity { max: (1 << 24) - 1 },
        ),
        (
            Queue::builder(8, 8).dead_letter_capacity(9),
            ConfigError::DeadLetterCapacity,
        ),
        (
            Queue::builder(8, 8).dedup_window(Duration::ZERO),
            ConfigError::DedupWindow,
        ),
        (
            Queue::builder(8, 8).visibility_timeout(Duration::ZERO),
            ConfigError::VisibilityTimeout,
        ),
        (
            Queue::builder(8, 8).timer_tick(Duration::from_secs(2)),
            ConfigError::TimerTick {
                max: Duration::from_secs(1),
            },
        ),
    ];
    for (builder, error) in refused {
        assert_eq!(builder.build().unwrap_err(), error);
    }
}

#[test]
#[cfg(not(loom))]
#[cfg_attr(miri, ignore = "real time and futexes")]
fn waiting_receives_find_what_comes_and_deadlines_give_up() {
    let queue = Queue::new(QueueConfig::new(8, 8)).unwrap();
    let soon = std::time::Instant::now() + Duration::from_millis(5);
    assert!(queue.receive_deadline(soon).is_none());
    let mut batch = Vec::new();
    assert_eq!(queue.receive_batch_deadline(&mut batch, 4, soon), 0);
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            queue.publish_batch(&[b"a".as_slice(), b"b"]).unwrap();
        });
        // Waits as long as it takes for the first, then takes what is ready.
        let received = queue.receive_batch(&mut batch, 4);
        assert!((1..=2).contains(&received));
    });
    let far = std::time::Instant::now() + Duration::from_secs(60);
    while batch.len() < 2 {
        let delivery = queue.receive_deadline(far).expect("b is ready");
        batch.push(delivery);
    }
    queue.ack_batch(batch.drain(..)).unwrap();
    assert_eq!(queue.stats().acked, 2);
}

#[test]
#[cfg(all(not(loom), not(miri)))]
fn a_stale_free_token_does_not_claim_a_slot_a_delivery_still_pins() {
    // A free slot's token goes to the free ring only with its last pin dropped, so a token
    // that finds the slot pinned is a stale copy (crash recovery pushes copies, and 8
    // generation bits come round again): claiming would rewrite a payload still read.
    let (queue, _) = queue(1);
    let free = queue.store().load(0).unwrap();
    let pinned = crate::engine::slots::Word { pins: 1, ..free };
    queue.store().force(0, free, pinned).unwrap();
    assert_eq!(queue.claim_token(token(0, free.generation)), None);
    queue.store().force(0, pinned, free).unwrap();
    assert!(queue.claim_token(token(0, free.generation)).is_some());
}
