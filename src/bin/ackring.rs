//! `ackring`: look into and operate on a queue in shared memory.
//!
//! ```text
//! ackring stat NAME        depths, in flight, dead, counters, attached processes
//! ackring dlq NAME         dead letters with their reasons
//! ackring redrive NAME     put every dead letter back on the ready queue
//! ackring peek NAME        ready messages, left in the queue
//! ackring bridge out|in    forward to / take from NATS JetStream (feature `nats`)
//! ```
//! NAME is a segment under /dev/shm (as given to `Queue::create_shm`); `--file PATH`
//! names a file-backed queue instead.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use ackring::Queue;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ackring",
    version,
    about = "Inspect and operate ackring shared-memory queues"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Depths, in flight, dead letters, counters and attached processes.
    Stat(Target),
    /// Dead letters, oldest first, with reason, error text and attempts.
    Dlq {
        #[command(flatten)]
        target: Target,
        /// Show at most this many.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
    },
    /// Moves every dead letter back to the ready queue (attempts reset).
    Redrive(Target),
    /// Ready messages, oldest first, without taking them.
    Peek {
        #[command(flatten)]
        target: Target,
        /// Show at most this many.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
    },
    /// Removes the files that creators killed mid-create left (hidden, full size), in
    /// /dev/shm or the directory given, and lists them.
    Reclaim {
        /// The directory of file-backed queues to look in, instead of /dev/shm.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Only list them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Bridges the queue to NATS JetStream until Ctrl-C, printing counts each second.
    #[cfg(feature = "nats")]
    Bridge {
        #[command(subcommand)]
        direction: Direction,
    },
}

#[cfg(feature = "nats")]
#[derive(Subcommand)]
enum Direction {
    /// Forwards the queue's messages to a subject of a stream (acked once stored).
    Out {
        #[command(flatten)]
        target: Target,
        /// The stream that captures the subject.
        #[arg(long)]
        stream: String,
        /// The subject to publish to.
        #[arg(long)]
        subject: String,
        /// The NATS server.
        #[arg(long, default_value = "127.0.0.1:4222")]
        nats: String,
        /// Publishes awaiting JetStream's ack at once.
        #[arg(long, default_value_t = 256)]
        window: usize,
        /// How long a publish waits for JetStream's ack before the message is nacked.
        #[arg(long, default_value_t = 5000)]
        ack_timeout_ms: u64,
        /// Named in each message's Ackring-Origin header [default: the host's name].
        #[arg(long)]
        origin: Option<String>,
    },
    /// Publishes a stream's messages into the queue, through a durable consumer.
    In {
        #[command(flatten)]
        target: Target,
        /// The stream to read.
        #[arg(long)]
        stream: String,
        /// The durable consumer's name (created if missing).
        #[arg(long)]
        consumer: String,
        /// The NATS server.
        #[arg(long, default_value = "127.0.0.1:4222")]
        nats: String,
        /// Only messages on subjects matching this (when the consumer is created).
        #[arg(long, default_value = "")]
        filter: String,
        /// How long the broker waits for an ack before delivering again, in seconds.
        #[arg(long, default_value_t = 30)]
        ack_wait_secs: u64,
        /// While the queue is full: how long a message waits for room, then is held back.
        #[arg(long, default_value_t = 100)]
        full_delay_ms: u64,
    },
}

#[derive(clap::Args)]
struct Target {
    /// The segment name (under /dev/shm).
    #[arg(required_unless_present = "file")]
    name: Option<String>,
    /// A file-backed queue's path instead of a name.
    #[arg(long, conflicts_with = "name")]
    file: Option<PathBuf>,
}

impl Target {
    fn open(&self) -> Result<Queue, ackring::ShmError> {
        match (&self.name, &self.file) {
            (_, Some(path)) => Queue::open_file(path),
            (Some(name), None) => Queue::open_shm(name),
            (None, None) => unreachable!("clap requires one"),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ackring: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        Command::Stat(target) => {
            let queue = target.open()?;
            let s = queue.stats();
            let config = queue.config();
            println!(
                "capacity     {} messages of up to {} bytes",
                config.capacity, config.max_payload
            );
            println!("ready        {}", s.ready);
            println!("delayed      {}", s.delayed);
            println!("in flight    {}", s.in_flight);
            println!("dead         {}", s.dead);
            println!(
                "published    {}   duplicates {}   expired {}",
                s.published, s.duplicates, s.expired
            );
            println!(
                "delivered    {}   redelivered {}   released {}",
                s.delivered, s.redelivered, s.released
            );
            println!(
                "acked        {}   nacked {}   dead-lettered {}   discarded {}",
                s.acked, s.nacked, s.dead_lettered, s.dead_discarded
            );
            println!(
                "recoveries   {}   (crashed processes cleaned up after)",
                s.recoveries
            );
            if let Some(stalled) = s.timers_stalled {
                println!(
                    "timers       STALLED: pid {} has held the timer run for {:.1?} (stopped or \
                     stuck?); delays, retries, leases and TTLs wait for it",
                    stalled.pid, stalled.held_for
                );
            }
            let others: Vec<String> = queue
                .attached_pids()
                .into_iter()
                .filter(|&pid| pid != std::process::id())
                .map(|pid| pid.to_string())
                .collect();
            println!(
                "attached     {} process(es){}{}",
                others.len(),
                if others.is_empty() { "" } else { ": pid " },
                others.join(", ")
            );
        }
        Command::Dlq { target, limit } => {
            let letters = target.open()?.dead_letters();
            println!("{}", shown(letters.len(), limit, "dead letter(s)"));
            for letter in letters.into_iter().take(limit) {
                println!(
                    "{}  {:?}  attempts {}  died {}  error {:?}  payload {}",
                    letter.id,
                    letter.reason,
                    letter.attempts,
                    age(letter.dead_at),
                    letter.error,
                    preview(&letter.payload)
                );
            }
        }
        Command::Redrive(target) => {
            let moved = target.open()?.redrive();
            println!("redrove {moved} dead letter(s) to the ready queue");
        }
        Command::Peek { target, limit } => {
            let queue = target.open()?;
            let total = queue.stats().ready;
            let ready = queue.peek(limit);
            let total = usize::try_from(total)
                .unwrap_or(usize::MAX)
                .max(ready.len());
            println!("{}", shown(total, limit, "ready message(s)"));
            for message in ready {
                println!(
                    "{}  attempts {}  published {}  payload {}",
                    message.id,
                    message.attempts,
                    age(message.published_at),
                    preview(&message.payload)
                );
            }
        }
        Command::Reclaim { dir, dry_run } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(ackring::shm::SHM_DIR));
            let stale = if dry_run {
                ackring::shm::stale_creations(&dir, None)?
            } else {
                ackring::shm::reclaim_stale_creations(&dir, None)?
            };
            for file in &stale {
                println!(
                    "{} {}  {} bytes, for {}, its creator (pid {}) gone",
                    if dry_run { "stale" } else { "removed" },
                    file.path.display(),
                    file.bytes,
                    file.for_name,
                    file.pid
                );
            }
            let how = if dry_run {
                "found (--dry-run: kept)"
            } else {
                "removed"
            };
            println!("{} stale creation file(s) {how}", stale.len());
        }
        #[cfg(feature = "nats")]
        Command::Bridge { direction } => bridge::run(direction)?,
    }
    Ok(())
}

#[cfg(feature = "nats")]
mod bridge {
    use std::future::Future;
    use std::io::Write;
    use std::sync::Arc;
    use std::time::Duration;

    use ackring::bridge::{Inbound, InboundConfig, Outbound, OutboundConfig};
    use tokio::signal::unix::{signal, SignalKind};

    use super::Direction;

    /// Runs a bridge until Ctrl-C or SIGTERM, printing its counts every second. Prints
    /// "ready" once connected and checked.
    pub(super) fn run(direction: Direction) -> Result<(), Box<dyn std::error::Error>> {
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(async {
            // First, so that a stop that comes while connecting stops it cleanly.
            let stopped = stopped()?;
            match direction {
                Direction::Out {
                    target,
                    stream,
                    subject,
                    nats,
                    window,
                    ack_timeout_ms,
                    origin,
                } => {
                    let queue = Arc::new(target.open()?);
                    let client = async_nats::connect(nats).await?;
                    let mut config = OutboundConfig::new(stream, subject);
                    config.window = window;
                    config.ack_timeout = Duration::from_millis(ack_timeout_ms);
                    if let Some(origin) = origin {
                        config.origin = origin;
                    }
                    let bridge = Outbound::start(queue, client, config).await?;
                    ready();
                    let show = || format!("{:?}", bridge.counts());
                    let counts = report(show, bridge.run(stopped)).await;
                    println!("stopped: {counts:?}");
                }
                Direction::In {
                    target,
                    stream,
                    consumer,
                    nats,
                    filter,
                    ack_wait_secs,
                    full_delay_ms,
                } => {
                    let queue = Arc::new(target.open()?);
                    let client = async_nats::connect(nats).await?;
                    let mut config = InboundConfig::new(stream, consumer);
                    config.filter_subject = filter;
                    config.ack_wait = Duration::from_secs(ack_wait_secs);
                    config.full_delay = Duration::from_millis(full_delay_ms);
                    let bridge = Inbound::start(queue, client, config).await?;
                    ready();
                    let show = || format!("{:?}", bridge.counts());
                    let counts = report(show, bridge.run(stopped)).await?;
                    println!("stopped: {counts:?}");
                }
            }
            Ok(())
        })
    }

    fn ready() {
        println!("ready");
        let _ = std::io::stdout().flush();
    }

    /// Resolves at Ctrl-C or SIGTERM; the handlers are set up at once.
    fn stopped() -> std::io::Result<impl Future<Output = ()>> {
        let (mut interrupt, mut terminate) = (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        );
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }

    /// Awaits `bridge`, printing `show()` every second meanwhile.
    async fn report<T>(show: impl Fn() -> String, bridge: impl Future<Output = T>) -> T {
        let mut bridge = std::pin::pin!(bridge);
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.tick().await; // the first tick is now
        loop {
            tokio::select! {
                done = &mut bridge => return done,
                _ = every.tick() => println!("{}", show()),
            }
        }
    }
}

/// "401 dead letter(s), the first 20 shown" (or just the count when all are shown).
fn shown(total: usize, limit: usize, what: &str) -> String {
    if total > limit {
        format!("{total} {what}, the first {limit} shown")
    } else {
        format!("{total} {what}")
    }
}

/// "3.2 s ago".
fn age(at: SystemTime) -> String {
    match SystemTime::now().duration_since(at) {
        Ok(ago) => format!("{:.1} s ago", ago.as_secs_f64()),
        Err(_) => "just now".to_owned(),
    }
}

/// A payload as text if it is printable UTF-8, else as hex, cut to 48 characters.
fn preview(payload: &[u8]) -> String {
    let text = match std::str::from_utf8(payload) {
        Ok(text) if !text.chars().any(char::is_control) => format!("{text:?}"),
        _ => payload.iter().map(|b| format!("{b:02x}")).collect(),
    };
    if text.chars().count() > 48 {
        let cut: String = text.chars().take(45).collect();
        format!("{cut}... ({} bytes)", payload.len())
    } else {
        text
    }
}
