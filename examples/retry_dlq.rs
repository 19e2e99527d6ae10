//! The reliable queue at work: order messages handled by worker threads, some of which fail.
//!
//! - Orders divisible by 5 fail once (a flaky dependency) and succeed when retried.
//! - Orders divisible by 7 always fail: retried with exponential backoff, then dead-lettered
//!   with their last error once `max_attempts` is used up.
//! - Orders divisible by 11 are rejected as invalid: dead-lettered at once.
//! - Every 67th order is published twice (two of them): the dedup window rejects the copies.
//! - One order has a 20 ms TTL and sits in the queue too long: dead-lettered as expired,
//!   never delivered.
//!
//! At the end it prints what happened to every message, the waits between one failing
//! order's deliveries (the backoff), and checks nothing was lost and no retry came early.
//!
//! Run: `cargo run --release --example retry_dlq`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ackring::queue::{DeadReason, RetryBackoff};
use ackring::{MessageId, PublishError, PublishOptions, Queue};

const ORDERS: u64 = 200;
const WORKERS: usize = 3;
/// The order whose deliveries are timed, to show the backoff between them (it always fails).
const TRACED: u64 = 7;
/// The first backoff; each later one doubles, with jitter taking up to half off.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);

fn order_options(order: u64) -> PublishOptions {
    PublishOptions {
        id: Some(MessageId::from_key(format!("order-{order}").as_bytes())),
        ..PublishOptions::default()
    }
}

/// The business logic: Ok, or the error text a failing handler would report.
fn handle(order: u64, attempt: u32) -> Result<(), &'static str> {
    if order.is_multiple_of(11) {
        Err("invalid: unknown customer")
    } else if order.is_multiple_of(7) {
        Err("payment gateway: card declined")
    } else if order.is_multiple_of(5) && attempt == 1 {
        Err("inventory service timed out")
    } else {
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let queue = Queue::builder(256, 64)
        .visibility_timeout(Duration::from_millis(500))
        .max_attempts(3)
        .backoff(RetryBackoff::Exponential {
            initial: FIRST_BACKOFF,
            multiplier: 2.0,
            max: Duration::from_millis(50),
            jitter: true,
        })
        .dead_letter_capacity(128)
        .build()?;
    let started = Instant::now();

    // An order with a short TTL, published while no worker runs: it expires in the queue.
    let short_lived = PublishOptions {
        ttl: Some(Duration::from_millis(20)),
        ..order_options(1_000_000)
    };
    queue.publish_with(b"order 1000000", short_lived)?;
    std::thread::sleep(Duration::from_millis(30)); // (a demo waiting for the TTL, not a test)

    let publishing_done = AtomicBool::new(false);
    let traced_deliveries = Mutex::new(Vec::new()); // when order TRACED was delivered
    let mut duplicates = 0;
    std::thread::scope(|s| -> Result<(), PublishError> {
        for worker in 0..WORKERS {
            let (queue, publishing_done) = (&queue, &publishing_done);
            let traced_deliveries = &traced_deliveries;
            s.spawn(move || loop {
                let Some(delivery) = queue.receive_timeout(Duration::from_millis(20)) else {
                    let stats = queue.stats();
                    if publishing_done.load(Ordering::Acquire)
                        && stats.ready + stats.delayed + stats.in_flight == 0
                    {
                        return;
                    }
                    continue;
                };
                let text = String::from_utf8_lossy(delivery.payload()).into_owned();
                let order: u64 = text.trim_start_matches("order ").parse().unwrap_or(0);
                let attempt = delivery.attempt();
                if order == TRACED {
                    traced_deliveries.lock().unwrap().push(Instant::now());
                }
                let settled = match handle(order, attempt) {
                    Ok(()) => delivery.ack(),
                    Err(error) if error.starts_with("invalid") => delivery.reject(error),
                    Err(error) => delivery.nack(error),
                };
                if let Err(lost) = settled {
                    println!("  worker {worker}: {lost}");
                }
            });
        }
        for order in 1..=ORDERS {
            let payload = format!("order {order}");
            queue.publish_with(payload.as_bytes(), order_options(order))?;
            // A client that retries its publish after a timeout: the copy is refused.
            if order % 67 == 0 {
                match queue.publish_with(payload.as_bytes(), order_options(order)) {
                    Err(PublishError::Duplicate { id }) => {
                        println!("  publisher: duplicate of {payload} (id {id}) rejected");
                        duplicates += 1;
                    }
                    other => panic!("a duplicate publish was not rejected: {other:?}"),
                }
            }
        }
        publishing_done.store(true, Ordering::Release);
        Ok(())
    })?;

    let stats = queue.stats();
    let dead = queue.dead_letters();
    let count = |reason| dead.iter().filter(|d| d.reason == reason).count();
    println!(
        "\n{} orders (+1 short-lived) in {:.0?}\n",
        ORDERS,
        started.elapsed()
    );
    println!("  published            {:>5}", stats.published);
    println!("  duplicates rejected  {:>5}", duplicates);
    println!(
        "  deliveries           {:>5}  ({} of them retries)",
        stats.delivered, stats.redelivered
    );
    println!("  acked                {:>5}", stats.acked);
    println!("  dead-lettered        {:>5}", stats.dead_lettered);
    println!(
        "    attempts exhausted {:>5}",
        count(DeadReason::AttemptsExhausted)
    );
    println!("    rejected           {:>5}", count(DeadReason::Rejected));
    println!("    expired            {:>5}", count(DeadReason::Expired));
    for reason in [
        DeadReason::AttemptsExhausted,
        DeadReason::Rejected,
        DeadReason::Expired,
    ] {
        if let Some(letter) = dead.iter().find(|d| d.reason == reason) {
            println!(
                "  e.g. {:?}: {:?} after {} attempt(s): {:?}",
                reason,
                String::from_utf8_lossy(&letter.payload),
                letter.attempts,
                letter.error
            );
        }
    }
    let traced = traced_deliveries.into_inner().unwrap();
    let gaps: Vec<Duration> = traced.windows(2).map(|w| w[1] - w[0]).collect();
    println!(
        "  order {TRACED}'s retries came after {gaps:.1?} (backoff 5 ms, then 10 ms, less jitter)"
    );
    // Never before its backoff (jitter takes at most half off).
    for (retry, gap) in gaps.iter().enumerate() {
        assert!(
            *gap >= FIRST_BACKOFF * (1 << retry) / 2,
            "retry {retry} came early: {gap:?}"
        );
    }
    let nothing_lost = stats.acked + stats.dead_lettered == stats.published;
    println!(
        "\n  nothing lost (acked + dead-lettered = published): {}",
        if nothing_lost { "yes" } else { "NO" }
    );
    assert!(nothing_lost, "{stats:?}");
    assert_eq!(stats.duplicates, duplicates);
    Ok(())
}
