//! Cross-process latency and throughput: a queue in shared memory against a Unix-domain
//! socket carrying the same 64-byte messages, in the same run.
//!
//! This process (pinned to core 0) sends; a child process (this binary again, pinned to
//! core 1) receives. Latency: one message every 5 µs, stamped with `CLOCK_MONOTONIC` (one
//! clock for the whole host), the child records `now - stamp` in an HDR histogram.
//! Throughput: messages sent back to back, timed from the child's first receive to its
//! last. The queue is measured with a busy-polling receiver (`try_receive`) and a blocking
//! one (`receive`: spin, then futex); the socket's receiver blocks in `read`.
//!
//! `cargo bench --bench shm_latency`

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use ackring::clock::{Clock, MonotonicClock};
use ackring::{MessageId, PublishOptions, Queue};
use hdrhistogram::Histogram;

const LATENCY_MESSAGES: u64 = 100_000;
const WARM_UP: u64 = 10_000;
const INTERVAL_NANOS: u64 = 5_000;
const THROUGHPUT_MESSAGES: u64 = 500_000;
const ROLE: &str = "ACKRING_BENCH_ROLE";

/// Pins the calling thread to CPU `core` by number. (Not via `get_core_ids`: it lists
/// only the CPUs the caller may use now, and a child inherits its parent's pinning, so a
/// receiver spawned by the pinned sender would see only the sender's core.)
fn pin(core: usize) {
    // (Nor `available_parallelism`: it too counts only the inherited CPUs.) Pinning to a
    // CPU that does not exist fails harmlessly.
    core_affinity::set_for_current(core_affinity::CoreId { id: core });
}

fn now() -> u64 {
    MonotonicClock.now_nanos()
}

/// A 64-byte message: the stamp, then filler.
fn message(stamp: u64) -> [u8; 64] {
    let mut bytes = [7u8; 64];
    bytes[..8].copy_from_slice(&stamp.to_le_bytes());
    bytes
}

fn stamp_of(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
}

/// How a child receives: from the named queue, or from the socket at a path.
#[derive(Clone, Copy)]
enum Transport {
    QueueBusy,
    QueueBlocking,
    Socket,
}

/// The child's side: receive `count` messages, print "p50 p99 p999 max" (latency, with
/// `paced`) or "nanos" (throughput, first to last receive).
fn child(role: &str) {
    pin(1);
    let parts: Vec<&str> = role.split(':').collect();
    let (transport, target, count, paced) = (
        parts[0],
        parts[1],
        parts[2].parse::<u64>().expect("count"),
        parts[3] == "paced",
    );
    let mut histogram = Histogram::<u64>::new(3).expect("precision");
    let mut first = 0;
    let mut record = |i: u64, stamp: u64| {
        let at = now();
        if i == 0 {
            first = at;
        }
        if paced && i >= WARM_UP {
            let _ = histogram.record(at.saturating_sub(stamp));
        }
        at
    };
    let mut last = 0;
    match transport {
        "socket" => {
            let mut stream = UnixStream::connect(target).expect("connect");
            let mut buffer = [0u8; 64];
            for i in 0..count {
                stream.read_exact(&mut buffer).expect("read");
                last = record(i, stamp_of(&buffer));
            }
        }
        mode => {
            let queue = Queue::open_shm(target).expect("open");
            println!("READY");
            for i in 0..count {
                let delivery = if mode == "busy" {
                    loop {
                        if let Some(d) = queue.try_receive() {
                            break d;
                        }
                        std::hint::spin_loop();
                    }
                } else {
                    queue.receive()
                };
                last = record(i, stamp_of(delivery.payload()));
                delivery.ack().expect("acked within the lease");
            }
        }
    }
    if paced {
        println!(
            "{} {} {} {}",
            histogram.value_at_quantile(0.5),
            histogram.value_at_quantile(0.99),
            histogram.value_at_quantile(0.999),
            histogram.max()
        );
    } else {
        println!("{}", last - first);
    }
}

/// Runs one measurement: starts the child, sends, returns the child's report line.
fn run(transport: Transport, paced: bool) -> String {
    let count = if paced {
        LATENCY_MESSAGES
    } else {
        THROUGHPUT_MESSAGES
    };
    let name = format!("bench-{}", std::process::id());
    let socket_path =
        std::env::temp_dir().join(format!("ackring-bench-{}.sock", std::process::id()));
    let (kind, target) = match transport {
        Transport::QueueBusy => ("busy", name.clone()),
        Transport::QueueBlocking => ("blocking", name.clone()),
        Transport::Socket => ("socket", socket_path.to_string_lossy().into_owned()),
    };
    let role = format!(
        "{kind}:{target}:{count}:{}",
        if paced { "paced" } else { "flat" }
    );
    let spawn = || {
        Command::new(std::env::current_exe().expect("this binary"))
            .env(ROLE, &role)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the receiver")
    };
    pin(0);
    let pace = |i: u64, start: u64| {
        if paced {
            let due = start + i * INTERVAL_NANOS;
            while now() < due {
                std::hint::spin_loop();
            }
        }
    };
    let output = match transport {
        Transport::Socket => {
            let _ = std::fs::remove_file(&socket_path);
            let listener = UnixListener::bind(&socket_path).expect("bind");
            let receiver = spawn();
            let (mut stream, _) = listener.accept().expect("accept");
            let start = now();
            for i in 0..count {
                pace(i, start);
                stream.write_all(&message(now())).expect("write");
            }
            let output = receiver.wait_with_output().expect("receiver");
            let _ = std::fs::remove_file(&socket_path);
            output
        }
        Transport::QueueBusy | Transport::QueueBlocking => {
            let queue = Queue::builder(4096, 64)
                .dedup_window(Duration::from_millis(100))
                .dedup_capacity(1 << 20)
                .create_shm(&name)
                .expect("create");
            let mut receiver = spawn();
            // Wait for the receiver to have opened the queue.
            let mut ready = [0u8; 6];
            receiver
                .stdout
                .as_mut()
                .expect("piped")
                .read_exact(&mut ready)
                .expect("READY");
            let start = now();
            for i in 0..count {
                pace(i, start);
                // Ids given, so that every publish goes through the dedup window.
                let options = PublishOptions {
                    id: Some(MessageId(i)),
                    ..PublishOptions::default()
                };
                while queue.try_publish_with(&message(now()), options).is_err() {
                    std::hint::spin_loop();
                }
            }
            let output = receiver.wait_with_output().expect("receiver");
            let _ = Queue::unlink_shm(&name);
            output
        }
    };
    assert!(output.status.success(), "receiver failed: {output:?}");
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        child(&role);
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and the like
    }
    println!(
        "64-byte messages, sender pinned to core 0, receiver process pinned to core 1;\n\
         latency: one message every 5 µs ({LATENCY_MESSAGES}, first {WARM_UP} not counted); \
         throughput: {THROUGHPUT_MESSAGES} back to back\n"
    );
    let mut p50s = Vec::new();
    for (label, transport) in [
        (
            "ackring shm queue, busy-polling receive",
            Transport::QueueBusy,
        ),
        (
            "ackring shm queue, blocking receive    ",
            Transport::QueueBlocking,
        ),
        ("Unix-domain socket, blocking read      ", Transport::Socket),
    ] {
        let latency = run(transport, true);
        let numbers: Vec<u64> = latency
            .split_whitespace()
            .map(|n| n.parse().expect("number"))
            .collect();
        let nanos: u64 = run(transport, false).parse().expect("nanos");
        let rate = THROUGHPUT_MESSAGES as f64 / (nanos as f64 / 1e9) / 1e6;
        println!(
            "{label}  p50 {:>7} ns  p99 {:>8} ns  p99.9 {:>9} ns  max {:>9} ns  throughput {rate:.2} M msg/s",
            numbers[0], numbers[1], numbers[2], numbers[3]
        );
        p50s.push(numbers[0]);
    }
    println!(
        "\nsocket p50 / shm busy-polling p50 = {:.1}x",
        p50s[2] as f64 / p50s[0].max(1) as f64
    );
}
