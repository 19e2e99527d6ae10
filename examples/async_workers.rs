//! A tokio worker pool consuming a shared-memory queue that a synchronous producer process
//! feeds: async receive across processes, with nacks, retries and a dead letter.
//!
//! The producer process (this example run again as a child) publishes 20,000 jobs, paced,
//! with a synchronous `publish`. Eight tokio tasks take them from `queue.deliveries()`
//! and hand each to a spawned task that settles it: every tenth job fails its first
//! attempt and succeeds when retried after the backoff; one job always fails and is
//! dead-lettered after its third attempt.
//!
//! Run: `cargo run --release --features async --example async_workers`.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ackring::queue::{DeadReason, RetryBackoff};
use ackring::{Deliveries, Queue};

const JOBS: u64 = 20_000;
const JOBS_PER_SECOND: u64 = 20_000;
const WORKERS: usize = 8;
/// The job that always fails.
const POISON: u64 = 4_242;
const MAX_ATTEMPTS: u32 = 3;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    if let Ok(name) = std::env::var("ACKRING_ASYNC_PRODUCER") {
        return produce(&name);
    }
    let name = format!("async-workers-{}", std::process::id());
    let queue = Arc::new(
        Queue::builder(4096, 64)
            .max_attempts(MAX_ATTEMPTS)
            .dedup_capacity(32 * 1024) // every job id stays in the window (2 minutes)
            .backoff(RetryBackoff::Exponential {
                initial: Duration::from_millis(5),
                multiplier: 2.0,
                max: Duration::from_millis(50),
                jitter: true,
            })
            .create_shm(&name)?,
    );
    let started = Instant::now();
    let mut producer = std::process::Command::new(std::env::current_exe()?)
        .env("ACKRING_ASYNC_PRODUCER", &name)
        .spawn()?;
    // Should the producer fail, the workers stop rather than wait for jobs that never come.
    let done = Arc::new(AtomicU64::new(0)); // jobs acked or dead-lettered
    let watcher = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let status = producer.wait();
            if !status.as_ref().is_ok_and(|s| s.success()) {
                done.store(u64::MAX, Ordering::SeqCst);
            }
            status
        })
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_time()
        .build()?;
    let acked = runtime.block_on(async {
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                let (queue, done) = (Arc::clone(&queue), Arc::clone(&done));
                tokio::spawn(async move { work(&queue, &done).await })
            })
            .collect();
        let mut acked = Vec::new();
        for worker in workers {
            acked.extend(worker.await.expect("a worker panicked"));
        }
        acked
    });
    let status = watcher.join().expect("the watcher panicked")?;
    if !status.success() {
        Queue::unlink_shm(&name)?;
        return Err(format!("the producer process failed: {status}").into());
    }
    let elapsed = started.elapsed();

    let stats = queue.stats();
    let distinct: HashSet<u64> = acked.iter().copied().collect();
    let dead = queue.dead_letters();
    println!("{JOBS} jobs from a producer process, {WORKERS} tokio workers, in {elapsed:.2?}");
    println!(
        "  acked {} (distinct {}), retried {}, dead-lettered {}: {:?} after {} attempts",
        acked.len(),
        distinct.len(),
        stats.redelivered,
        dead.len(),
        dead.iter().map(|d| d.reason).collect::<Vec<_>>(),
        dead.first().map_or(0, |d| d.attempts),
    );
    let lost = JOBS - distinct.len() as u64 - dead.len() as u64;
    println!(
        "  lost {lost}, in flight {}, ready {}",
        stats.in_flight, stats.ready
    );
    assert_eq!(lost, 0, "nothing lost");
    assert_eq!(acked.len(), distinct.len(), "nothing acked twice");
    assert!(dead
        .iter()
        .all(|d| d.reason == DeadReason::AttemptsExhausted));
    drop(queue);
    Queue::unlink_shm(&name)?;
    Ok(())
}

/// One worker: takes deliveries from the stream until every job is settled for good.
async fn work(queue: &Arc<Queue>, done: &Arc<AtomicU64>) -> Vec<u64> {
    let mut deliveries = queue.deliveries();
    let mut acked = Vec::new();
    while done.load(Ordering::SeqCst) < JOBS {
        // A timeout, so a worker notices when the others settled the last jobs.
        let next = tokio::time::timeout(Duration::from_millis(20), next(&mut deliveries));
        let Ok(delivery) = next.await else {
            continue;
        };
        let job = u64::from_le_bytes(delivery.payload().try_into().expect("8 bytes"));
        // Settled in a task of its own: an owned delivery moves.
        let settled = tokio::spawn(async move {
            let last = delivery.attempt() >= MAX_ATTEMPTS;
            if job == POISON {
                delivery.nack("card declined")?;
                return Ok(if last {
                    Outcome::Dead
                } else {
                    Outcome::Retried
                });
            }
            if job % 10 == 0 && delivery.attempt() == 1 {
                delivery.nack("inventory service timed out")?;
                return Ok(Outcome::Retried);
            }
            delivery.ack()?;
            Ok::<_, ackring::SettleError>(Outcome::Acked)
        });
        match settled.await.expect("a settle task panicked") {
            Ok(Outcome::Acked) => {
                acked.push(job);
                done.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Outcome::Dead) => {
                done.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Outcome::Retried) => {}
            Err(error) => eprintln!("job {job}: {error}"),
        }
    }
    acked
}

/// What became of one delivery.
enum Outcome {
    Acked,
    /// Nacked: delivered again after the backoff.
    Retried,
    /// Nacked on its last attempt: dead-lettered.
    Dead,
}

/// The next item of the stream (what `StreamExt::next` does, without a dependency).
async fn next(deliveries: &mut Deliveries) -> ackring::OwnedDelivery {
    std::future::poll_fn(|cx: &mut Context<'_>| {
        match futures_core::Stream::poll_next(Pin::new(&mut *deliveries), cx) {
            Poll::Ready(item) => Poll::Ready(item.expect("the stream never ends")),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// The producer process: publishes the jobs, paced, with ids job + 1.
fn produce(name: &str) -> Result<()> {
    let queue = Queue::open_shm(name)?;
    let started = Instant::now();
    for job in 0..JOBS {
        let due = started + Duration::from_secs_f64(job as f64 / JOBS_PER_SECOND as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let options = ackring::PublishOptions {
            id: Some(ackring::MessageId(job + 1)),
            ..ackring::PublishOptions::default()
        };
        queue.publish_with(&job.to_le_bytes(), options)?;
    }
    Ok(())
}
