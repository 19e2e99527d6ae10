//! A tour of ackring between processes: the failures a message queue exists for, injected
//! on purpose into a queue that producer and consumer processes share through a segment
//! in `/dev/shm`.
//!
//! 1. An order published with a 20 ms TTL sits in the queue until it expires: it is
//!    dead-lettered as expired, never delivered.
//! 2. A consumer takes five orders and stalls; it is killed with SIGKILL while it holds
//!    their leases. Once the leases run out (300 ms), the five are delivered again.
//! 3. Two producer processes publish 10,000 orders each, paced; one order is published a
//!    second time and the dedup window refuses the copy.
//! 4. Three consumer processes handle the orders. Every tenth fails its first attempt
//!    ("inventory service timed out") and succeeds when retried after the backoff; one in
//!    fifty always fails ("card declined") and is dead-lettered after its third attempt.
//!
//! It prints progress while it runs and a summary at the end: what became of every order
//! (nothing lost), and the publish-to-delivery latency between processes.
//!
//! Run: `cargo run --release --example tour`. With `-- --keep`, the segment stays (named
//! `tour`, replacing an earlier kept one) for a look with the `ackring` tool:
//! `cargo run --release -- dlq tour`.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ackring::clock::{Clock, MonotonicClock};
use ackring::queue::{DeadReason, RetryBackoff};
use ackring::{MessageId, PublishError, PublishOptions, Queue, QueueBuilder};
use hdrhistogram::Histogram;

const PRODUCERS: u64 = 2;
const ORDERS_PER_PRODUCER: u64 = 10_000;
/// Each producer's pace.
const ORDERS_PER_SECOND: u64 = 10_000;
const CONSUMERS: usize = 3;
const STALLED_HOLDS: usize = 5;
/// The order number of the short-lived order (outside the producers' range).
const EXPIRING_ORDER: u64 = 1_000_000;
const LEASE: Duration = Duration::from_millis(300);

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn config() -> QueueBuilder {
    Queue::builder(4096, 64)
        .visibility_timeout(LEASE)
        .max_attempts(3)
        .backoff(RetryBackoff::Exponential {
            initial: Duration::from_millis(10),
            multiplier: 2.0,
            max: Duration::from_millis(100),
            jitter: true,
        })
        .dead_letter_capacity(1024)
        // Every order id stays in the dedup window (2 minutes) for the whole tour.
        .dedup_capacity(32 * 1024)
}

fn order_id(order: u64) -> MessageId {
    MessageId::from_key(format!("order-{order}").as_bytes())
}

fn now() -> u64 {
    MonotonicClock.now_nanos()
}

/// The business logic: Ok, or the error a failing handler reports.
fn handle(order: u64, attempt: u32) -> std::result::Result<(), &'static str> {
    if order % 50 == 7 {
        Err("payment gateway: card declined")
    } else if order % 10 == 3 && attempt == 1 {
        Err("inventory service timed out")
    } else {
        Ok(())
    }
}

/// Payload: the order number and its publish time (monotonic nanoseconds, which every
/// process on the host shares), for the latency figures.
fn payload(order: u64) -> [u8; 16] {
    let mut bytes = [0; 16];
    bytes[..8].copy_from_slice(&order.to_le_bytes());
    bytes[8..].copy_from_slice(&now().to_le_bytes());
    bytes
}

fn parse(payload: &[u8]) -> (u64, u64) {
    let word = |range: std::ops::Range<usize>| {
        payload
            .get(range)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    };
    (word(0..8), word(8..16))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        None => tour(false),
        Some("--keep") => tour(true),
        Some("producer") => producer(&args[2], args[3].parse()?),
        Some("consumer") => consumer(&args[2], Path::new(&args[3])),
        Some("stalled") => stalled(&args[2], Path::new(&args[3])),
        Some(other) => Err(format!("unknown role {other}").into()),
    }
}

/// Publishes its orders at a steady pace (so latency is the queue's, not a backlog's).
fn producer(name: &str, first: u64) -> Result<()> {
    let queue = Queue::open_shm(name)?;
    let started = Instant::now();
    for n in 0..ORDERS_PER_PRODUCER {
        let due = started + Duration::from_nanos(n * 1_000_000_000 / ORDERS_PER_SECOND);
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        let order = first + n;
        let options = PublishOptions {
            id: Some(order_id(order)),
            ..PublishOptions::default()
        };
        // A full queue is waited on, asleep on the segment's futex until a slot frees up.
        queue.publish_with(&payload(order), options)?;
    }
    Ok(())
}

/// Handles orders until the tour says stop; writes the orders it acked (with the attempt
/// that succeeded) and the latency of every first delivery to files of its own.
fn consumer(name: &str, dir: &Path) -> Result<()> {
    let queue = Queue::open_shm(name)?;
    let me = std::process::id();
    let mut acked = Vec::new();
    let mut latencies = Vec::new();
    loop {
        let Some(delivery) = queue.receive_timeout(Duration::from_millis(20)) else {
            if dir.join("stop").exists() {
                break;
            }
            continue;
        };
        let (order, published) = parse(delivery.payload());
        let attempt = delivery.attempt();
        if attempt == 1 {
            latencies.push(now().saturating_sub(published));
        }
        match handle(order, attempt) {
            Ok(()) => {
                if delivery.ack().is_ok() {
                    acked.extend([order, u64::from(attempt)]);
                }
            }
            Err(error) => {
                let _ = delivery.nack(error);
            }
        }
    }
    let words = |values: &[u64]| {
        values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>()
    };
    std::fs::write(dir.join(format!("acked-{me}")), words(&acked))?;
    std::fs::write(dir.join(format!("latency-{me}")), words(&latencies))?;
    Ok(())
}

/// Takes a few orders, writes down which, and hangs on to their leases until killed.
fn stalled(name: &str, dir: &Path) -> Result<()> {
    let queue = Queue::open_shm(name)?;
    let mut held = Vec::new();
    let mut list = String::new();
    while held.len() < STALLED_HOLDS {
        let delivery = queue.receive();
        list.push_str(&format!("{}\n", parse(delivery.payload()).0));
        held.push(delivery);
    }
    std::fs::write(dir.join("stalled.tmp"), list)?;
    std::fs::rename(dir.join("stalled.tmp"), dir.join("stalled"))?;
    loop {
        std::thread::park(); // until SIGKILL
    }
}

/// Removes the segment and the scratch directory, and kills leftover children, on the way
/// out (also on an error).
struct Cleanup {
    name: String,
    /// Leave the segment in place.
    keep: bool,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.keep {
            let _ = Queue::unlink_shm(&self.name);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cleanup {
    fn spawn(&mut self, args: &[&str]) -> Result<u32> {
        let child = Command::new(std::env::current_exe()?).args(args).spawn()?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }
}

fn read_words(path: &Path) -> Result<Vec<u64>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

fn tour(keep: bool) -> Result<()> {
    let name = if keep {
        let _ = Queue::unlink_shm("tour"); // an earlier kept tour's
        "tour".to_owned()
    } else {
        format!("tour-{}", std::process::id())
    };
    let dir = std::env::temp_dir().join(format!("ackring-tour-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut run = Cleanup {
        keep,
        name: name.clone(),
        dir: dir.clone(),
        children: Vec::new(),
    };
    let queue = config().create_shm(&name)?;
    let dir_arg = dir.to_str().ok_or("temp dir is not UTF-8")?;
    println!("segment /dev/shm/ackring.{name}: 4096 slots, leases of {LEASE:?}, 3 attempts\n");
    let started = Instant::now();

    // 1. A short-lived order that nobody is there to receive in time.
    let short_lived = PublishOptions {
        id: Some(order_id(EXPIRING_ORDER)),
        ttl: Some(Duration::from_millis(20)),
        ..PublishOptions::default()
    };
    queue.publish_with(&payload(EXPIRING_ORDER), short_lived)?;
    std::thread::sleep(Duration::from_millis(30)); // (a demo waiting out the TTL)
    println!("published order {EXPIRING_ORDER} with a 20 ms TTL, 30 ms before any consumer");

    // 2 and 3. Producers start; a consumer takes five orders and stalls; SIGKILL.
    for p in 0..PRODUCERS {
        let first = (1 + p * ORDERS_PER_PRODUCER).to_string();
        let pid = run.spawn(&["producer", &name, &first])?;
        println!("producer  pid {pid}: orders {first}.. at {ORDERS_PER_SECOND}/s");
    }
    let stalled_pid = run.spawn(&["stalled", &name, dir_arg])?;
    while !dir.join("stalled").exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let held: Vec<u64> = std::fs::read_to_string(dir.join("stalled"))?
        .lines()
        .filter_map(|line| line.parse().ok())
        .collect();
    let stalled = run
        .children
        .iter_mut()
        .find(|c| c.id() == stalled_pid)
        .ok_or("stalled child")?;
    stalled.kill()?; // SIGKILL
    stalled.wait()?;
    run.children.retain(|c| c.id() != stalled_pid);
    println!("consumer  pid {stalled_pid}: took orders {held:?} and stalled; killed with SIGKILL");
    match queue.publish_with(
        &payload(1),
        PublishOptions {
            id: Some(order_id(1)),
            ..PublishOptions::default()
        },
    ) {
        Err(PublishError::Duplicate { id }) => {
            println!("duplicate publish of order 1 (id {id}): refused by the dedup window")
        }
        other => return Err(format!("a duplicate was not refused: {other:?}").into()),
    }

    // 4. The consumers.
    for _ in 0..CONSUMERS {
        let pid = run.spawn(&["consumer", &name, dir_arg])?;
        println!("consumer  pid {pid}: started");
    }
    println!();

    let total = PRODUCERS * ORDERS_PER_PRODUCER + 1;
    let mut last_report = Instant::now();
    loop {
        let stats = queue.stats();
        let settled =
            stats.published == total && stats.ready + stats.delayed + stats.in_flight == 0;
        if settled || last_report.elapsed() >= Duration::from_millis(250) {
            last_report = Instant::now();
            println!(
                "{:>6.0?}  published {:>5}  ready {:>4}  in flight {:>3}  retrying {:>3}  \
                 acked {:>5}  dead {:>3}",
                started.elapsed(),
                stats.published,
                stats.ready,
                stats.in_flight,
                stats.delayed,
                stats.acked,
                stats.dead
            );
        }
        if settled {
            break;
        }
        for child in &mut run.children {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    return Err(format!("child {} failed: {status}", child.id()).into());
                }
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!("the orders did not settle: {stats:?}").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    File::create(dir.join("stop"))?.flush()?;
    for child in &mut run.children {
        child.wait()?;
    }
    run.children.clear();

    // What became of every order.
    let mut acked = HashSet::new();
    let mut acked_twice = 0;
    let mut acked_on_retry = 0;
    let mut latency = Histogram::<u64>::new_with_bounds(100, 60_000_000_000, 3)?;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
        if file.starts_with("acked-") {
            for pair in read_words(&path)?.chunks_exact(2) {
                acked_twice += usize::from(!acked.insert(pair[0]));
                acked_on_retry += usize::from(pair[1] > 1);
            }
        } else if file.starts_with("latency-") {
            for nanos in read_words(&path)? {
                latency.saturating_record(nanos.max(100));
            }
        }
    }
    let dead = queue.dead_letters();
    let dead_orders: HashSet<u64> = dead.iter().map(|d| parse(&d.payload).0).collect();
    let orders = (1..=PRODUCERS * ORDERS_PER_PRODUCER).chain([EXPIRING_ORDER]);
    let lost: Vec<u64> = orders
        .filter(|o| !acked.contains(o) && !dead_orders.contains(o))
        .collect();
    let stats = queue.stats();
    let count = |reason| dead.iter().filter(|d| d.reason == reason).count();
    let held_back = held.iter().filter(|o| acked.contains(o)).count();

    println!("\n{total} orders in {:.1?}\n", started.elapsed());
    println!("  outcome                                        orders");
    println!("  ---------------------------------------------  ------");
    println!(
        "  acked                                          {:>6}",
        acked.len()
    );
    println!("    of them on a later attempt                   {acked_on_retry:>6}  (retries, the killed consumer's)");
    println!(
        "    of them held by the killed consumer          {held_back:>6}  (of {})",
        held.len()
    );
    println!(
        "  dead-lettered: attempts exhausted (declined)   {:>6}",
        count(DeadReason::AttemptsExhausted)
    );
    println!(
        "  dead-lettered: expired (20 ms TTL)             {:>6}",
        count(DeadReason::Expired)
    );
    println!(
        "  duplicate publishes refused                    {:>6}",
        stats.duplicates
    );
    println!("  acked twice                                    {acked_twice:>6}");
    println!(
        "  lost                                           {:>6}",
        lost.len()
    );
    println!(
        "\n  deliveries {}, redeliveries {} (retries and the killed consumer's leases)",
        stats.delivered, stats.redelivered
    );
    if let Some(letter) = dead
        .iter()
        .find(|d| d.reason == DeadReason::AttemptsExhausted)
    {
        println!(
            "  a dead letter: order {} after {} attempts, last error {:?}",
            parse(&letter.payload).0,
            letter.attempts,
            letter.error
        );
    }
    let us = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "\n  publish -> first delivery, across processes ({} samples, consumers blocking):\n  \
         p50 {:.1} µs   p99 {:.1} µs   p99.9 {:.1} µs   max {:.1} µs",
        latency.len(),
        us(0.5),
        us(0.99),
        us(0.999),
        latency.max() as f64 / 1000.0
    );
    if !lost.is_empty() || acked_twice > 0 || held_back != held.len() {
        return Err(format!("lost {lost:?}, acked twice {acked_twice}").into());
    }
    println!("\n  nothing lost, nothing acked twice.");
    if keep {
        println!("\n  segment kept: try `cargo run --release -- stat {name}` (or dlq, peek)");
    }
    Ok(())
}
