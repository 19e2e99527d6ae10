//! Two queues standing for two hosts, and a real `nats-server` between them.
//!
//! Producers publish orders on "host A"'s queue; an outbound bridge process forwards them
//! to a JetStream stream; an inbound bridge process publishes them into "host B"'s queue,
//! where tokio workers handle them: some fail and are retried, one never succeeds and ends
//! as a dead letter. Midway the outbound bridge is killed with SIGKILL and restarted: the
//! messages it held come back when their leases run out, and JetStream absorbs the
//! re-sends. At the end, a table: published, forwarded, duplicates absorbed, acked, dead,
//! lost.
//!
//! ```text
//! cargo run --release --features nats --example two_hosts
//! ```
//! It starts `nats-server` (JetStream, a temporary store, a free port on 127.0.0.1) if it
//! is on PATH; otherwise it says how to install it.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ackring::bridge::{Inbound, InboundConfig, Outbound, OutboundConfig};
use ackring::{Queue, RetryBackoff};
use futures_util::StreamExt;

const ORDERS: u32 = 10_000;
const PRODUCERS: u32 = 2;
const POISON: u32 = 4_242;
const ROLE: &str = "TWO_HOSTS_ROLE";
const STREAM: &str = "TWO_HOSTS";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Ok(role) = std::env::var(ROLE) {
        return bridge(&role);
    }
    let Some((mut server, url)) = start_nats()? else {
        eprintln!(
            "two_hosts needs nats-server on PATH: `apt-get install nats-server` (Debian, \
             2.9 or later), or see https://docs.nats.io/running-a-nats-service/introduction/installation"
        );
        std::process::exit(2);
    };
    let result = run(&url);
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(store_dir());
    result
}

/// The segments of "host A" and "host B".
fn names() -> (String, String) {
    let pid = std::process::id();
    (format!("two-hosts-a-{pid}"), format!("two-hosts-b-{pid}"))
}

/// A bridge process, killed if still running when dropped (an early return).
struct Bridge(Option<Child>);

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The two segments, removed when dropped.
struct Segments(String, String);

impl Drop for Segments {
    fn drop(&mut self) {
        let _ = (Queue::unlink_shm(&self.0), Queue::unlink_shm(&self.1));
    }
}

fn run(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let (name_a, name_b) = names();
    let _segments = Segments(name_a.clone(), name_b.clone());
    let a = Queue::builder(4096, 64)
        .visibility_timeout(Duration::from_secs(1))
        .max_attempts(50)
        .backoff(RetryBackoff::Fixed(Duration::from_millis(50)))
        .create_shm(&name_a)?;
    let b = Arc::new(
        Queue::builder(4096, 64)
            .visibility_timeout(Duration::from_secs(2))
            .max_attempts(3)
            .backoff(RetryBackoff::Fixed(Duration::from_millis(20)))
            .dedup_window(Duration::from_secs(120))
            .dedup_capacity(32_768)
            .create_shm(&name_b)?,
    );
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let jetstream = async_nats::jetstream::new(async_nats::connect(url).await?);
        jetstream
            .create_stream(async_nats::jetstream::stream::Config {
                name: STREAM.into(),
                subjects: vec![format!("{STREAM}.>")],
                duplicate_window: Duration::from_secs(600),
                ..Default::default()
            })
            .await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    let started = Instant::now();
    let mut outbound = spawn_bridge("out", url, &name_a)?;
    let inbound = spawn_bridge("in", url, &name_b)?;

    // Host B: tokio workers; every 97th order fails once, the poison one always.
    let handled = Arc::new(Mutex::new(HashSet::new()));
    let acked_twice = Arc::new(Mutex::new(0u32));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (b, handled, acked_twice) = (
                Arc::clone(&b),
                Arc::clone(&handled),
                Arc::clone(&acked_twice),
            );
            runtime.spawn(async move {
                let mut deliveries = b.deliveries();
                while let Some(delivery) = deliveries.next().await {
                    let order = u32::from_le_bytes(delivery.payload()[..4].try_into().unwrap());
                    if order == POISON {
                        let _ = delivery.nack("cannot price order 4242");
                    } else if order % 97 == 0 && delivery.attempt() == 1 {
                        let _ = delivery.nack("inventory service busy");
                    } else if delivery.ack().is_ok() && !handled.lock().unwrap().insert(order) {
                        *acked_twice.lock().unwrap() += 1;
                    }
                }
            })
        })
        .collect();

    // Host A: producers, paced; the outbound bridge killed halfway.
    std::thread::scope(|scope| -> Result<(), Box<dyn std::error::Error>> {
        for producer in 0..PRODUCERS {
            let a = &a;
            scope.spawn(move || {
                for n in (producer..ORDERS).step_by(PRODUCERS as usize) {
                    let mut order = [0u8; 64];
                    order[..4].copy_from_slice(&n.to_le_bytes());
                    a.publish(&order).expect("published on host A");
                    if n % 100 == 0 {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            });
        }
        while a.stats().published < u64::from(ORDERS / 2) {
            std::thread::sleep(Duration::from_millis(1));
        }
        // SIGKILL, leases held (the old `Bridge` is dropped by the assignment below).
        outbound.0.as_mut().expect("running").kill()?;
        println!(
            "killed the outbound bridge with SIGKILL after {} orders",
            a.stats().acked
        );
        outbound = spawn_bridge("out", url, &name_a)?;
        Ok(())
    })?;

    // Done when every order but the poison one was handled on B, and it is dead, and A
    // holds none: those the killed bridge held come back when their leases run out, are
    // sent again, and JetStream absorbs them. (A's gauges, not its `acked` counter, which
    // the kill may have left one short: an ack done, not yet counted.)
    let give_up = Instant::now() + Duration::from_secs(60);
    let a_holds = |s: ackring::Stats| s.ready + s.delayed + s.in_flight + s.dead;
    while handled.lock().unwrap().len() < ORDERS as usize - 1
        || b.stats().dead < 1
        || a_holds(a.stats()) > 0
    {
        if Instant::now() > give_up {
            return Err(format!(
                "not finished within 60 s: A {:?}, B {:?}",
                a.stats(),
                b.stats()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = started.elapsed();
    for worker in workers {
        worker.abort();
    }
    let (out_said, in_said) = (stop(outbound)?, stop(inbound)?);
    let (sa, sb) = (a.stats(), b.stats());
    let handled = handled.lock().unwrap();
    let lost = (0..ORDERS)
        .filter(|n| *n != POISON && !handled.contains(n))
        .count();
    let dead = b.dead_letters();
    println!("\n{ORDERS} orders from host A to host B through JetStream in {elapsed:.2?}");
    println!("| published on A | forwarded (left A) | duplicates absorbed | acked on B | dead on B | acked twice | lost |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} by JetStream, {} by B | {} | {} | {} | {lost} |",
        sa.published,
        sa.published - a_holds(sa),
        field(&out_said, "duplicates"),
        sb.duplicates,
        sb.acked,
        sb.dead,
        acked_twice.lock().unwrap()
    );
    println!(
        "redelivered on A after the kill: {}; retried on B: {}",
        sa.redelivered, sb.nacked
    );
    if let Some(letter) = dead.first() {
        println!(
            "dead letter on B: {:?} after {} attempts: {:?}",
            letter.reason, letter.attempts, letter.error
        );
    }
    println!("outbound bridge: {out_said}\ninbound bridge: {in_said}");
    if lost != 0 || *acked_twice.lock().unwrap() != 0 {
        return Err("lost or acked twice".into());
    }
    Ok(())
}

/// A count from a bridge's last line, `... duplicates: 12, ...`.
fn field(said: &str, name: &str) -> String {
    said.split(&format!("{name}: "))
        .nth(1)
        .and_then(|rest| rest.split([',', ' ', '}']).next())
        .unwrap_or("?")
        .to_owned()
}

/// This example again, as a bridge process.
fn spawn_bridge(direction: &str, url: &str, name: &str) -> std::io::Result<Bridge> {
    let child = Command::new(std::env::current_exe()?)
        .env(ROLE, format!("{direction} {url} {name}"))
        .stdout(Stdio::piped())
        .spawn()?;
    Ok(Bridge(Some(child)))
}

/// Stops a bridge process with SIGTERM; returns its last line (its counts).
fn stop(mut bridge: Bridge) -> Result<String, Box<dyn std::error::Error>> {
    let child = bridge.0.take().expect("running");
    // SAFETY: kill has no memory preconditions; the pid is our child's, not yet waited.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let output = child.wait_with_output()?;
    let said = String::from_utf8_lossy(&output.stdout);
    Ok(said.lines().last().unwrap_or("").to_owned())
}

/// A bridge process: `out URL NAME` or `in URL NAME`, until SIGTERM.
fn bridge(role: &str) -> Result<(), Box<dyn std::error::Error>> {
    let parts: Vec<&str> = role.split(' ').collect();
    let (direction, url, name) = (parts[0], parts[1], parts[2]);
    let queue = Arc::new(Queue::open_shm(name)?);
    tokio::runtime::Runtime::new()?.block_on(async {
        let client = async_nats::connect(url).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let stopped = async move {
            term.recv().await;
        };
        if direction == "out" {
            let config = OutboundConfig::new(STREAM, format!("{STREAM}.orders"));
            let bridge = Outbound::start(queue, client, config).await?;
            println!("{:?}", bridge.run(stopped).await);
        } else {
            let mut config = InboundConfig::new(STREAM, "host-b");
            config.ack_wait = Duration::from_secs(5);
            let bridge = Inbound::start(queue, client, config).await?;
            println!("{:?}", bridge.run(stopped).await?);
        }
        Ok(())
    })
}

fn store_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("two-hosts-nats-{}", std::process::id()))
}

/// Starts `nats-server` with JetStream on a free port of 127.0.0.1 and a temporary store;
/// `None` if it is not on PATH.
fn start_nats() -> Result<Option<(Child, String)>, Box<dyn std::error::Error>> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let store = store_dir();
    let spawned = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(&store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let server = match spawned {
        Ok(server) => server,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let url = format!("127.0.0.1:{port}");
    let give_up = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&url).is_err() {
        if Instant::now() > give_up {
            return Err("nats-server did not start within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Some((server, url)))
}
