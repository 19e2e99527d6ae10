//! The NATS JetStream bridge against a real `nats-server` (feature `nats`): `.ci/run`
//! starts one on 127.0.0.1 with JetStream and a temporary store, and names it in
//! `ACKRING_NATS_URL` (default `127.0.0.1:4222`). Each test makes its own stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ackring::bridge::{
    BridgeError, Inbound, InboundConfig, InboundCounts, Outbound, OutboundConfig, OutboundCounts,
};
use ackring::{PublishOptions, Queue, RetryBackoff};
use async_nats::jetstream;
use tokio::task::JoinHandle;

fn url() -> String {
    std::env::var("ACKRING_NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".into())
}

async fn connect() -> async_nats::Client {
    async_nats::connect(url())
        .await
        .unwrap_or_else(|e| panic!("no nats-server at {} ({e}): see tests/bridge.rs", url()))
}

/// A fresh stream named for the test, capturing `<name>.>`.
async fn stream(client: &async_nats::Client, name: &str, window: Duration) -> String {
    let name = format!("{name}_{}", std::process::id());
    let jetstream = jetstream::new(client.clone());
    let _ = jetstream.delete_stream(&name).await;
    jetstream
        .create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            duplicate_window: window,
            ..Default::default()
        })
        .await
        .unwrap();
    name
}

/// Publishes `count` test payloads straight into JetStream on `subject`, with ids `m-<n>`,
/// each acked by it, pausing `pause` after every tenth.
async fn publish_paced(client: &async_nats::Client, subject: &str, count: u32, pause: Duration) {
    let jetstream = jetstream::new(client.clone());
    for n in 0..count {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("m-{n}"));
        jetstream
            .publish_with_headers(subject.to_owned(), headers, payload(0, n).into())
            .await
            .unwrap()
            .await
            .unwrap();
        if n % 10 == 0 && !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// "Host A"'s queue: few attempts, short leases and backoff (the stream's window must
/// cover them).
fn queue_a(capacity: u32) -> Arc<Queue> {
    Arc::new(
        Queue::builder(capacity, 256)
            .visibility_timeout(Duration::from_secs(2))
            .max_attempts(3)
            .backoff(RetryBackoff::Fixed(Duration::from_millis(100)))
            .build()
            .unwrap(),
    )
}

/// "Host B"'s queue: a dedup window that covers twice the inbound ack wait.
fn queue_b(capacity: u32) -> Arc<Queue> {
    Arc::new(
        Queue::builder(capacity, 256)
            .visibility_timeout(Duration::from_secs(2))
            .max_attempts(3)
            .backoff(RetryBackoff::Fixed(Duration::from_millis(50)))
            .dedup_window(Duration::from_secs(60))
            .dedup_capacity(4096)
            .build()
            .unwrap(),
    )
}

fn inbound_config(stream: &str) -> InboundConfig {
    let mut config = InboundConfig::new(stream, format!("{stream}_in"));
    config.ack_wait = Duration::from_secs(5);
    config.full_delay = Duration::from_millis(20);
    config
}

/// `(producer, sequence)` of a test payload.
fn payload(producer: u8, n: u32) -> Vec<u8> {
    let mut bytes = vec![producer];
    bytes.extend_from_slice(&n.to_le_bytes());
    bytes
}

fn parse(bytes: &[u8]) -> (u8, u32) {
    (
        bytes[0],
        u32::from_le_bytes(bytes[1..5].try_into().unwrap()),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Receives from `queue` until `count` messages were acked, each checked by `check`.
async fn drain(queue: &Arc<Queue>, count: usize, mut check: impl FnMut(&[u8])) {
    for _ in 0..count {
        let delivery = tokio::time::timeout(Duration::from_secs(20), queue.receive_async())
            .await
            .expect("a message within 20 s");
        check(delivery.payload());
        delivery.ack().unwrap();
    }
}

/// An outbound bridge from `a` to `subject` of stream `name`, with the default settings.
async fn outbound(
    a: &Arc<Queue>,
    client: &async_nats::Client,
    name: &str,
    subject: &str,
) -> Arc<Outbound> {
    let config = OutboundConfig::new(name, format!("{name}.{subject}"));
    Arc::new(
        Outbound::start(Arc::clone(a), client.clone(), config)
            .await
            .unwrap(),
    )
}

/// An inbound bridge from stream `name` to `b` (see `inbound_config`).
async fn inbound(b: &Arc<Queue>, client: &async_nats::Client, name: &str) -> Arc<Inbound> {
    let config = inbound_config(name);
    Arc::new(
        Inbound::start(Arc::clone(b), client.clone(), config)
            .await
            .unwrap(),
    )
}

/// A bridge's run, stopped once the sender says `true` (or is dropped).
type Stop = tokio::sync::watch::Sender<bool>;

async fn until_stopped(mut stopped: tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Runs `out` in a task (of the runtime entered) until `stop` says so.
fn spawn_outbound(out: &Arc<Outbound>, stop: &Stop) -> JoinHandle<OutboundCounts> {
    let (out, stopped) = (Arc::clone(out), stop.subscribe());
    tokio::spawn(async move { out.run(until_stopped(stopped)).await })
}

/// Runs `inb` in a task (of the runtime entered) until `stop` says so.
fn spawn_inbound(
    inb: &Arc<Inbound>,
    stop: &Stop,
) -> JoinHandle<Result<InboundCounts, BridgeError>> {
    let (inb, stopped) = (Arc::clone(inb), stop.subscribe());
    tokio::spawn(async move { inb.run(until_stopped(stopped)).await })
}

fn stopper() -> Stop {
    tokio::sync::watch::channel(false).0
}

#[test]
fn every_message_crosses_once_in_order_per_producer() {
    const PER_PRODUCER: u32 = 1_000;
    runtime().block_on(async {
        let client = connect().await;
        let name = stream(&client, "round_trip", Duration::from_secs(120)).await;
        let (a, b) = (queue_a(4096), queue_b(4096));
        for n in 0..PER_PRODUCER {
            for producer in 0..2 {
                a.publish(&payload(producer, n)).unwrap();
            }
        }
        let out = outbound(&a, &client, &name, "orders").await;
        let inb = inbound(&b, &client, &name).await;
        let stop = stopper();
        let out_task = spawn_outbound(&out, &stop);
        let in_task = spawn_inbound(&inb, &stop);
        let mut next = HashMap::new();
        drain(&b, 2 * PER_PRODUCER as usize, |bytes| {
            let (producer, n) = parse(bytes);
            let expected = next.entry(producer).or_insert(0u32);
            assert_eq!(n, *expected, "producer {producer} out of order");
            *expected += 1;
        })
        .await;
        stop.send_replace(true);
        let out_counts = out_task.await.unwrap();
        let in_counts = in_task.await.unwrap().unwrap();
        assert_eq!(
            (
                out_counts.forwarded,
                out_counts.failed,
                out_counts.duplicates
            ),
            (u64::from(2 * PER_PRODUCER), 0, 0)
        );
        assert_eq!(
            (
                in_counts.published,
                in_counts.duplicates,
                in_counts.pushed_back
            ),
            (u64::from(2 * PER_PRODUCER), 0, 0)
        );
        assert!(b.try_receive().is_none(), "nothing more on B");
        let (sa, sb) = (a.stats(), b.stats());
        assert_eq!((sa.acked, sa.in_flight), (u64::from(2 * PER_PRODUCER), 0));
        assert_eq!((sb.acked, sb.in_flight), (u64::from(2 * PER_PRODUCER), 0));
    });
}

#[test]
fn a_full_inbox_pushes_back_and_drains_once_consumed() {
    const MESSAGES: u32 = 200;
    runtime().block_on(async {
        let client = connect().await;
        let name = stream(&client, "back_pressure", Duration::from_secs(120)).await;
        publish_paced(&client, &format!("{name}.x"), MESSAGES, Duration::ZERO).await;
        let b = queue_b(16);
        let inb = inbound(&b, &client, &name).await;
        let stop = stopper();
        let task = spawn_inbound(&inb, &stop);
        // B holds 16 and is full: the bridge pushes back.
        let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
        while inb.counts().pushed_back == 0 {
            assert!(tokio::time::Instant::now() < give_up, "{:?}", inb.counts());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(b.stats().ready, 16);
        let mut seen = vec![0u32; MESSAGES as usize];
        drain(&b, MESSAGES as usize, |bytes| {
            seen[parse(bytes).1 as usize] += 1
        })
        .await;
        assert!(seen.iter().all(|&times| times == 1), "{seen:?}");
        stop.send_replace(true);
        let counts = task.await.unwrap().unwrap();
        assert_eq!(counts.published, u64::from(MESSAGES));
        assert!(counts.pushed_back > 0);
        assert!(b.try_receive().is_none());
    });
}

#[test]
fn a_message_rejected_on_b_ends_in_its_dead_letters_not_redelivered() {
    runtime().block_on(async {
        let client = connect().await;
        let name = stream(&client, "dead_letter", Duration::from_secs(120)).await;
        let (a, b) = (queue_a(64), queue_b(64));
        a.publish(b"poison").unwrap();
        a.publish(b"fine").unwrap();
        let out = outbound(&a, &client, &name, "jobs").await;
        let inb = inbound(&b, &client, &name).await;
        let stop = stopper();
        let out_task = spawn_outbound(&out, &stop);
        let in_task = spawn_inbound(&inb, &stop);
        for _ in 0..2 {
            let delivery = tokio::time::timeout(Duration::from_secs(20), b.receive_async())
                .await
                .unwrap();
            if delivery.payload() == b"poison" {
                delivery.reject("cannot parse").unwrap();
            } else {
                delivery.ack().unwrap();
            }
        }
        let dead = b.dead_letters();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(
            (dead[0].payload.as_slice(), dead[0].error.as_str()),
            (&b"poison"[..], "cannot parse")
        );
        // The broker has both acks: it will deliver neither again.
        let mut consumer: jetstream::consumer::PullConsumer = jetstream::new(client)
            .get_stream(&name)
            .await
            .unwrap()
            .get_consumer(&format!("{name}_in"))
            .await
            .unwrap();
        let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let info = consumer.info().await.unwrap().clone();
            if info.num_ack_pending == 0 && info.num_pending == 0 {
                assert_eq!(info.num_redelivered, 0);
                break;
            }
            assert!(tokio::time::Instant::now() < give_up, "{info:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.send_replace(true);
        let _ = out_task.await.unwrap();
        let counts = in_task.await.unwrap().unwrap();
        assert_eq!((counts.published, counts.duplicates), (2, 0), "{counts:?}");
    });
}

#[test]
fn windows_too_short_for_the_retries_are_refused() {
    runtime().block_on(async {
        let client = connect().await;
        // A's queue re-sends up to 2 x (max(2 s lease, 2 x 5 s ack timeout) + 100 ms
        // backoff) after the first attempt.
        let name = stream(&client, "short_window", Duration::from_secs(2)).await;
        let refused = Outbound::start(
            queue_a(8),
            client.clone(),
            OutboundConfig::new(&name, format!("{name}.x")),
        )
        .await;
        match refused {
            Err(BridgeError::WindowTooShort {
                window,
                needed,
                attempts: 3,
                ..
            }) => {
                assert_eq!(window, Duration::from_secs(2));
                assert_eq!(needed, Duration::from_millis(20_200));
            }
            other => panic!("{:?}", other.err()),
        }
        // A queue without dedup cannot absorb the broker's redeliveries.
        let no_dedup = Arc::new(Queue::builder(8, 64).no_dedup().build().unwrap());
        let refused = Inbound::start(no_dedup, client.clone(), inbound_config(&name)).await;
        assert!(
            matches!(refused, Err(BridgeError::LocalWindowTooShort { .. })),
            "{:?}",
            refused.err()
        );
        // No such stream: a typed error, not a hang.
        let missing = Outbound::start(
            queue_a(8),
            client,
            OutboundConfig::new("NO_SUCH_STREAM", "nowhere"),
        )
        .await;
        assert!(
            matches!(missing, Err(BridgeError::Stream { .. })),
            "{:?}",
            missing.err()
        );
    });
}

#[test]
fn ttl_travels_and_an_expired_message_is_not_published() {
    runtime().block_on(async {
        let client = connect().await;
        let name = stream(&client, "ttl", Duration::from_secs(120)).await;
        let (a, b) = (queue_a(16), queue_b(16));
        let ttl = |ms| PublishOptions {
            ttl: Some(Duration::from_millis(ms)),
            ..PublishOptions::default()
        };
        a.publish_with(b"lives", ttl(60_000)).unwrap();
        let out = outbound(&a, &client, &name, "t").await;
        let forwarded = out
            .run(async {
                while a.stats().acked < 1 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
            .await;
        assert_eq!(forwarded.forwarded, 1);
        // One more straight into the stream, its expiry already past.
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Ackring-Expires", "1000");
        jetstream::new(client.clone())
            .publish_with_headers(format!("{name}.t"), headers, "stale".into())
            .await
            .unwrap()
            .await
            .unwrap();
        let inb = inbound(&b, &client, &name).await;
        let counts = inb
            .run(async {
                while inb.counts().published + inb.counts().expired < 2 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
            .await
            .unwrap();
        assert_eq!((counts.published, counts.expired), (1, 1));
        let delivery = b.try_receive().expect("the live one");
        assert_eq!(delivery.payload(), b"lives");
        let left = delivery
            .expires_at()
            .expect("its TTL travelled")
            .duration_since(std::time::SystemTime::now())
            .unwrap();
        assert!(
            left > Duration::from_secs(50) && left <= Duration::from_secs(60),
            "{left:?}"
        );
        delivery.ack().unwrap();
    });
}

/// A tiny xorshift generator for kill timings (the seed is printed, to replay a failure).
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        println!("kill timings seed {seed}");
        Self(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Starts `ackring bridge <args>` (the CLI, built with the feature).
fn bridge_process(args: &[&str]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_ackring"))
        .arg("bridge")
        .args(args)
        .args(["--nats", &url()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for the bridge to say "ready" (connected, checked, its signal handlers set).
fn wait_ready(bridge: &mut std::process::Child) {
    use std::io::BufRead;
    let stdout = bridge.stdout.as_mut().unwrap();
    let mut line = String::new();
    while line.trim() != "ready" {
        line.clear();
        let read = std::io::BufReader::new(&mut *stdout)
            .read_line(&mut line)
            .unwrap();
        assert!(read > 0, "the bridge ended before it was ready");
    }
}

/// Runs the bridge `args` names `KILLS` times, each killed with SIGKILL at a random
/// moment (one in five while it starts, the others 0-150 ms after it is ready), then once
/// more until `done`, stopped with SIGTERM, which must end it cleanly.
fn kill_and_restart(args: &[&str], done: impl Fn() -> bool) {
    const KILLS: usize = 50;
    let mut rng = Rng::seeded();
    for _ in 0..KILLS {
        let mut bridge = bridge_process(args);
        if rng.below(5) != 0 {
            wait_ready(&mut bridge);
        }
        std::thread::sleep(Duration::from_millis(rng.below(150)));
        bridge.kill().unwrap(); // SIGKILL
        bridge.wait().unwrap();
    }
    let mut bridge = bridge_process(args);
    wait_ready(&mut bridge);
    let give_up = std::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(
            std::time::Instant::now() < give_up,
            "the last bridge did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill has no memory preconditions; the pid is our child's, not yet waited.
    unsafe { libc::kill(bridge.id() as i32, libc::SIGTERM) };
    let output = bridge.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every message of the stream, by sequence: payloads.
async fn stored(client: &async_nats::Client, stream: &str) -> Vec<Vec<u8>> {
    let mut stream = jetstream::new(client.clone())
        .get_stream(stream)
        .await
        .unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut all = Vec::new();
    for sequence in 1..=last {
        if let Ok(message) = stream.get_raw_message(sequence).await {
            all.push(message.payload.to_vec());
        }
    }
    all
}

#[test]
fn outbound_bridge_killed_50_times_forwards_every_message_once() {
    const MESSAGES: u32 = 2_000;
    let segment = format!("test-{}-bridge-out", std::process::id());
    let a = Queue::builder(4096, 64)
        .visibility_timeout(Duration::from_secs(1))
        .max_attempts(100)
        .backoff(RetryBackoff::Fixed(Duration::from_millis(10)))
        .create_shm(&segment)
        .unwrap();
    let runtime = runtime();
    let client = runtime.block_on(connect());
    // 99 retries of up to 10 s (twice the CLI's 5 s ack timeout) and 10 ms.
    let name = runtime.block_on(stream(&client, "kill_out", Duration::from_secs(1200)));
    let subject = format!("{name}.out");
    let producer = std::thread::scope(|scope| {
        let producer = scope.spawn(|| {
            // Paced over about 4 s, so that kills land while the bridges hold leases.
            for n in 0..MESSAGES {
                a.publish(&payload(0, n)).unwrap(); // confirmed on A
                if n % 10 == 0 {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        kill_and_restart(
            &["out", &segment, "--stream", &name, "--subject", &subject],
            || {
                // The gauges, exact after kills (a killed bridge may have acked a message
                // and not yet counted it).
                let stats = a.stats();
                stats.published == u64::from(MESSAGES)
                    && stats.ready + stats.delayed + stats.in_flight == 0
            },
        );
        producer.join()
    });
    producer.unwrap();
    let _ = Queue::unlink_shm(&segment);
    let stats = a.stats();
    assert_eq!(
        (stats.in_flight, stats.ready, stats.dead),
        (0, 0, 0),
        "{stats:?}"
    );
    let stored = runtime.block_on(stored(&client, &name));
    println!(
        "{} deliveries came back to A after kills; JetStream stored {} messages",
        stats.redelivered,
        stored.len()
    );
    let mut times = vec![0u32; MESSAGES as usize];
    for bytes in stored {
        times[parse(&bytes).1 as usize] += 1;
    }
    let wrong: Vec<_> = times.iter().enumerate().filter(|(_, &t)| t != 1).collect();
    assert!(wrong.is_empty(), "(message, times stored): {wrong:?}");
}

#[test]
fn inbound_bridge_killed_50_times_delivers_every_message_once() {
    const MESSAGES: u32 = 2_000;
    let segment = format!("test-{}-bridge-in", std::process::id());
    let b = Queue::builder(4096, 64)
        .dedup_window(Duration::from_secs(600))
        .dedup_capacity(8192)
        .create_shm(&segment)
        .unwrap();
    let runtime = runtime();
    let client = runtime.block_on(connect());
    let name = runtime.block_on(stream(&client, "kill_in", Duration::from_secs(120)));
    // Published into the stream over about 4 s, while the bridges are killed.
    let publisher = runtime.spawn({
        let (client, subject) = (client.clone(), format!("{name}.in"));
        async move {
            publish_paced(&client, &subject, MESSAGES, Duration::from_millis(20)).await;
        }
    });
    let consumer = format!("{name}_in");
    let pending = || {
        runtime.block_on(async {
            let stream = jetstream::new(client.clone())
                .get_stream(&name)
                .await
                .unwrap();
            // Not there yet: the last bridge has not created it.
            let Ok(mut consumer) = stream
                .get_consumer::<jetstream::consumer::pull::Config>(&consumer)
                .await
            else {
                return u64::MAX;
            };
            let info = consumer.info().await.unwrap();
            info.num_pending + info.num_ack_pending as u64
        })
    };
    kill_and_restart(
        &[
            "in",
            &segment,
            "--stream",
            &name,
            "--consumer",
            &consumer,
            "--ack-wait-secs",
            "1",
        ],
        // B's gauge, exact after kills (its `published` counter may be short of a publish
        // a killed bridge made and did not count).
        || b.stats().ready >= u64::from(MESSAGES) && pending() == 0,
    );
    runtime.block_on(publisher).unwrap();
    let _ = Queue::unlink_shm(&segment);
    println!(
        "B's dedup window absorbed {} redeliveries after kills",
        b.stats().duplicates
    );
    let mut times = vec![0u32; MESSAGES as usize];
    while let Some(delivery) = b.try_receive() {
        times[parse(delivery.payload()).1 as usize] += 1;
        delivery.ack().unwrap();
    }
    let wrong: Vec<_> = times.iter().enumerate().filter(|(_, &t)| t != 1).collect();
    assert!(wrong.is_empty(), "(message, times delivered): {wrong:?}");
}

/// A `nats-server` of the test's own (JetStream, a store that survives its restarts), on
/// `port`; the CI's server cannot be restarted under the other tests.
fn own_server(port: u16, store: &std::path::Path) -> std::process::Child {
    let server = std::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nats-server on PATH (.ci/run installs it)");
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < give_up,
            "nats-server did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    server
}

#[test]
fn both_bridges_ride_out_a_server_restart() {
    const MESSAGES: u32 = 3_000;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = std::env::temp_dir().join(format!("ackring-nats-restart-{}", std::process::id()));
    let mut server = own_server(port, &store);
    let a = Arc::new(
        Queue::builder(4096, 64)
            .visibility_timeout(Duration::from_secs(2))
            .max_attempts(500)
            .backoff(RetryBackoff::Fixed(Duration::from_millis(50)))
            .build()
            .unwrap(),
    );
    let runtime = runtime();
    let client = runtime
        .block_on(async_nats::connect(format!("127.0.0.1:{port}")))
        .unwrap();
    let name = runtime.block_on(stream(&client, "restart", Duration::from_secs(3600)));
    let mut config = OutboundConfig::new(&name, format!("{name}.r"));
    config.ack_timeout = Duration::from_secs(2);
    let out = Arc::new(
        runtime
            .block_on(Outbound::start(Arc::clone(&a), client.clone(), config))
            .unwrap(),
    );
    let b = queue_b(4096);
    let inb = Arc::new(
        runtime
            .block_on(Inbound::start(
                Arc::clone(&b),
                client.clone(),
                inbound_config(&name),
            ))
            .unwrap(),
    );
    let stop = stopper();
    let (task, in_task) = {
        let _entered = runtime.enter();
        (spawn_outbound(&out, &stop), spawn_inbound(&inb, &stop))
    };
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for n in 0..MESSAGES {
                a.publish(&payload(0, n)).unwrap();
                std::thread::sleep(Duration::from_micros(500));
            }
        });
        while a.stats().acked < u64::from(MESSAGES / 3) {
            std::thread::sleep(Duration::from_millis(1));
        }
        server.kill().unwrap(); // SIGKILL, mid-flight
        server.wait().unwrap();
        std::thread::sleep(Duration::from_millis(500)); // down a while: publishes fail
        server = own_server(port, &store);
    });
    let give_up = std::time::Instant::now() + Duration::from_secs(60);
    while a.stats().acked < u64::from(MESSAGES) || b.stats().ready < u64::from(MESSAGES) {
        assert!(
            std::time::Instant::now() < give_up,
            "A {:?} {:?}; B {:?} {:?}",
            a.stats(),
            out.counts(),
            b.stats(),
            inb.counts()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.send_replace(true);
    let counts = runtime.block_on(task).unwrap();
    let in_counts = runtime.block_on(in_task).unwrap().unwrap();
    let mut on_b = vec![0u32; MESSAGES as usize];
    while let Some(delivery) = b.try_receive() {
        on_b[parse(delivery.payload()).1 as usize] += 1;
        delivery.ack().unwrap();
    }
    let wrong: Vec<_> = on_b.iter().enumerate().filter(|(_, &t)| t != 1).collect();
    assert!(
        wrong.is_empty(),
        "(message, times on B): {wrong:?}; {in_counts:?}"
    );
    let mut times = vec![0u32; MESSAGES as usize];
    for bytes in runtime.block_on(stored(&client, &name)) {
        times[parse(&bytes).1 as usize] += 1;
    }
    server.kill().unwrap();
    server.wait().unwrap();
    let _ = std::fs::remove_dir_all(&store);
    let wrong: Vec<_> = times.iter().enumerate().filter(|(_, &t)| t != 1).collect();
    assert!(
        wrong.is_empty(),
        "(message, times stored): {wrong:?}; {counts:?}"
    );
    let stats = a.stats();
    assert_eq!((stats.in_flight, stats.dead), (0, 0), "{stats:?}");
}
