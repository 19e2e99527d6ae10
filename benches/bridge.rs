//! The outbound bridge against async-nats publishing straight to JetStream, in one run,
//! on a `nats-server` this bench starts (JetStream, a temporary store, a free port).
//!
//! - Throughput: 64-byte messages, local publish -> outbound bridge -> JetStream publish
//!   ack, against async-nats publishing the same messages (the same headers, with a
//!   `Nats-Msg-Id` the server remembers) to the same stream with the same window of
//!   unacked publishes, and, for scale, the payload alone. Rounds alternate (bridge,
//!   direct, plain, ...), each on a fresh stream; the median rate of each.
//! - Latency of a local publish (the call, paced one every 20 µs) while the bridge drains
//!   the queue, against the same with no bridge (the queue holds them all): p50 and p99.
//!
//! `cargo bench --features nats --bench bridge` (needs `nats-server` on PATH).

use std::collections::VecDeque;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ackring::bridge::{Outbound, OutboundConfig};
use ackring::Queue;
use async_nats::jetstream;
use hdrhistogram::Histogram;

const MESSAGES: u64 = 50_000;
const WINDOW: usize = 256;
const ROUNDS: usize = 3;
const LATENCY_MESSAGES: u64 = 20_000;
const PACE: Duration = Duration::from_micros(20);

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = !std::env::args().any(|arg| arg == "--bench");
    let Some((mut server, url)) = start_nats() else {
        println!("bridge bench: nats-server is not on PATH (apt-get install nats-server); skipped");
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = runtime.block_on(async_nats::connect(&url)).unwrap();
    let (rounds, messages) = if quick {
        (1, 2_000)
    } else {
        (ROUNDS, MESSAGES)
    };
    let (mut bridged, mut direct, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        bridged.push(runtime.block_on(through_bridge(&client, round, messages)));
        direct.push(runtime.block_on(straight(&client, round, messages, true)));
        plain.push(runtime.block_on(straight(&client, round, messages, false)));
    }
    let (b, d, p) = (median(bridged), median(direct), median(plain));
    println!(
        "{messages} messages of 64 bytes to JetStream, window {WINDOW}, median of {rounds} \
         alternating rounds:"
    );
    println!("  local publish -> outbound bridge -> JetStream ack: {b:>8.0} msg/s");
    println!("  async-nats publish, the same headers -> ack:        {d:>8.0} msg/s");
    println!("  async-nats publish, payload alone -> ack:          {p:>8.0} msg/s");
    println!(
        "  bridge / direct with the same headers: {:.2}x (goal >= 0.8x); / payload alone: {:.2}x",
        b / d,
        b / p
    );

    let latency_messages = if quick { 2_000 } else { LATENCY_MESSAGES };
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        with.push(publish_latency(
            &runtime,
            &client,
            round,
            latency_messages,
            true,
        ));
        without.push(publish_latency(
            &runtime,
            &client,
            round,
            latency_messages,
            false,
        ));
    }
    let p =
        |runs: &[(u64, u64)], i: usize| median(runs.iter().map(|r| [r.0, r.1][i] as f64).collect());
    println!(
        "\nlocal publish call, one every {PACE:?} ({latency_messages} per round), median of \
         {rounds} alternating rounds:"
    );
    println!(
        "  while the bridge drains the queue:    p50 {:>6.0} ns  p99 {:>7.0} ns",
        p(&with, 0),
        p(&with, 1)
    );
    println!(
        "  with no bridge (the queue holds them): p50 {:>6.0} ns  p99 {:>7.0} ns",
        p(&without, 0),
        p(&without, 1)
    );
    println!(
        "  p50 with / without: {:.2}x (goal <= 1.2x)",
        p(&with, 0) / p(&without, 0)
    );
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(store_dir());
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A fresh stream for one round, with a duplicate window that covers the bridge's queue.
async fn fresh_stream(client: &async_nats::Client, what: &str, round: usize) -> String {
    let name = format!("BENCH_{what}_{round}");
    let jetstream = jetstream::new(client.clone());
    let _ = jetstream.delete_stream(&name).await;
    jetstream
        .create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            duplicate_window: Duration::from_secs(3600),
            ..Default::default()
        })
        .await
        .unwrap();
    name
}

fn queue() -> Arc<Queue> {
    Arc::new(Queue::builder(4096, 64).build().unwrap())
}

/// What the queue still holds.
fn holds(queue: &Queue) -> u64 {
    let s = queue.stats();
    s.ready + s.delayed + s.in_flight
}

/// Messages per second through the bridge: from the first local publish until JetStream
/// acked the last (the queue holds nothing).
async fn through_bridge(client: &async_nats::Client, round: usize, messages: u64) -> f64 {
    let name = fresh_stream(client, "BRIDGE", round).await;
    let queue = queue();
    let mut config = OutboundConfig::new(&name, format!("{name}.x"));
    config.window = WINDOW;
    let bridge = Arc::new(
        Outbound::start(Arc::clone(&queue), client.clone(), config)
            .await
            .unwrap(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = {
        let bridge = Arc::clone(&bridge);
        tokio::spawn(async move {
            bridge
                .run(async {
                    stopped.await.ok();
                })
                .await
        })
    };
    let started = Instant::now();
    let producer = {
        let queue = Arc::clone(&queue);
        std::thread::spawn(move || {
            for _ in 0..messages {
                queue.publish(&[7u8; 64]).unwrap();
            }
        })
    };
    while queue.stats().published < messages || holds(&queue) > 0 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let elapsed = started.elapsed();
    producer.join().unwrap();
    stop.send(()).unwrap();
    let counts = running.await.unwrap();
    assert_eq!(
        (counts.forwarded, counts.failed),
        (messages, 0),
        "{counts:?}"
    );
    messages as f64 / elapsed.as_secs_f64()
}

/// Messages per second published straight to JetStream with the same window of
/// unacked publishes; `headers`: with the headers the bridge sends (a `Nats-Msg-Id` the
/// server remembers, the attempt, the publish time, the origin), else the payload alone.
async fn straight(client: &async_nats::Client, round: usize, messages: u64, headers: bool) -> f64 {
    let name = fresh_stream(client, if headers { "DIRECT_H" } else { "DIRECT" }, round).await;
    let jetstream = jetstream::new(client.clone());
    let subject = format!("{name}.x");
    let started = Instant::now();
    let mut acks = VecDeque::with_capacity(WINDOW);
    let published = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    for n in 0..messages {
        if acks.len() == WINDOW {
            let ack: jetstream::context::PublishAckFuture = acks.pop_front().unwrap();
            ack.await.unwrap();
        }
        let payload = bytes::Bytes::copy_from_slice(&[7u8; 64]);
        let sent = if headers {
            let mut map = async_nats::HeaderMap::new();
            map.insert(
                "Nats-Msg-Id",
                format!("{:032x}-{n:016x}-{published:x}", u128::MAX),
            );
            map.insert("Ackring-Attempt", "1");
            map.insert("Ackring-Published", published.to_string());
            map.insert("Ackring-Origin", "bench");
            jetstream
                .publish_with_headers(subject.clone(), map, payload)
                .await
        } else {
            jetstream.publish(subject.clone(), payload).await
        };
        acks.push_back(sent.unwrap());
    }
    for ack in acks {
        ack.await.unwrap();
    }
    messages as f64 / started.elapsed().as_secs_f64()
}

/// (p50, p99) of a local publish call, paced, while the bridge drains the queue
/// (`bridged`) or with none (the queue is large enough to hold them all).
fn publish_latency(
    runtime: &tokio::runtime::Runtime,
    client: &async_nats::Client,
    round: usize,
    messages: u64,
    bridged: bool,
) -> (u64, u64) {
    let queue = Arc::new(Queue::builder(32_768, 64).build().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let drain = if bridged {
        let name = runtime.block_on(fresh_stream(client, "LATENCY", round));
        let mut config = OutboundConfig::new(&name, format!("{name}.x"));
        config.window = WINDOW;
        let bridge = runtime
            .block_on(Outbound::start(Arc::clone(&queue), client.clone(), config))
            .unwrap();
        runtime.spawn(async move {
            bridge
                .run(async {
                    stopped.await.ok();
                })
                .await;
        })
    } else {
        runtime.spawn(async move {
            stopped.await.ok();
        })
    };
    let mut histogram = Histogram::<u64>::new(3).unwrap();
    let start = Instant::now();
    for n in 0..messages {
        let due = start + PACE * n as u32;
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        let before = Instant::now();
        queue.publish(&[7u8; 64]).unwrap();
        let _ = histogram.record(before.elapsed().as_nanos() as u64);
    }
    while bridged && holds(&queue) > 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.send(()).unwrap();
    runtime.block_on(drain).unwrap();
    (
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
    )
}

fn store_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ackring-bench-nats-{}", std::process::id()))
}

/// Starts `nats-server` with JetStream on a free port of 127.0.0.1; `None` if it is not on
/// PATH.
fn start_nats() -> Option<(Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let server = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let url = format!("127.0.0.1:{port}");
    let give_up = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&url).is_err() {
        assert!(Instant::now() < give_up, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((server, url))
}
