//! A hostile neighbour: one process writes random values to random words of a live
//! segment while honest processes publish, receive, settle, read stats and dead letters,
//! open the segment afresh and run the `ackring` tool on it. The honest ones may see typed
//! errors and garbled payloads, never a crash, a panic or a call that returns long after
//! its own timeout.
//!
//! Children are this test binary run again with `ACKRING_HOSTILE` set to their role: the
//! `child` test then plays it and exits (non-zero if it panicked, or if a call overran).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ackring::{MessageId, PublishOptions, Queue};

/// How long the honest processes work while the scribbler scribbles.
const RUN: Duration = Duration::from_secs(3);
/// The timeout an honest call is given.
const TIMEOUT: Duration = Duration::from_millis(20);
/// How far past its own timeout a call may return: a publish waits up to 1 s for a dedup
/// stripe whose lock word now names a live process, and this machine may be loaded.
const SLACK: Duration = Duration::from_secs(4);
/// The exit code of a child one of whose calls overran.
const OVERRAN: i32 = 3;

/// Runs `call`, and ends this child with [`OVERRAN`] if it took past `timeout` plus the
/// slack.
fn timed<R>(what: &str, timeout: Duration, call: impl FnOnce() -> R) -> R {
    let started = Instant::now();
    let result = call();
    let took = started.elapsed();
    if took > timeout + SLACK {
        eprintln!("OVERRAN: {what} took {took:?} with a timeout of {timeout:?}");
        std::process::exit(OVERRAN);
    }
    result
}

/// A small xorshift: the scribbler's values and offsets.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn scribble(name: &str) {
    let path = ackring::shm::segment_path(name).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    // SAFETY: the file stays open and is never truncated while mapped; its bytes are only
    // touched through atomic word views below, as the honest processes touch them.
    let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
    let words = map.len() / 8;
    let base = map.as_mut_ptr().cast::<AtomicU64>();
    let mut random = Random(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let until = Instant::now() + RUN;
    let mut written = 0u64;
    while Instant::now() < until {
        let index = (random.next() % words as u64) as usize;
        // Small values and indexes as often as wild ones: they pass more checks.
        let value = match random.next() % 4 {
            0 => random.next(),
            1 => random.next() % 256,
            2 => (random.next() % 4096) | ((random.next() % 16) << 32),
            _ => 0,
        };
        // SAFETY: `index < words`, so the word lies within the mapping, which is 8-byte
        // aligned (page aligned); an atomic store races no non-atomic access.
        unsafe { (*base.add(index)).store(value, Ordering::Relaxed) };
        written += 1;
        // Pacing, not synchronisation: a word every ~50 µs leaves the queue usable
        // between hits, so the honest processes get far into their paths.
        std::thread::sleep(Duration::from_micros(50));
    }
    println!("SCRIBBLED {written} words");
}

fn produce(queue: &Queue) {
    let until = Instant::now() + RUN;
    let (mut n, mut refused) = (0u64, 0u64);
    while Instant::now() < until {
        n += 1;
        let options = PublishOptions {
            id: (n % 3 != 0).then_some(MessageId(n % 97)),
            ..PublishOptions::default()
        };
        let payload = n.to_le_bytes();
        let published = timed("publish_timeout", TIMEOUT, || {
            queue.publish_timeout(&payload, options, TIMEOUT)
        });
        refused += u64::from(published.is_err());
        if n % 16 == 0 {
            let batch = [&payload[..], &payload[..4]];
            let _ = timed("try_publish_batch", Duration::ZERO, || {
                queue.try_publish_batch(&batch)
            });
        }
    }
    println!("PUBLISHED {n}, {refused} refused");
}

fn consume(queue: &Queue) {
    let until = Instant::now() + RUN;
    let (mut n, mut received) = (0u64, 0u64);
    while Instant::now() < until {
        n += 1;
        let delivery = timed("receive_timeout", TIMEOUT, || {
            queue.receive_timeout(TIMEOUT)
        });
        if let Some(mut delivery) = delivery {
            received += 1;
            let _ = delivery.payload().len();
            let _ = timed("settle", Duration::ZERO, || match n % 5 {
                0 => delivery.nack("hostile"),
                1 => delivery.release(),
                2 => delivery.reject("hostile"),
                3 => delivery.extend(TIMEOUT).and_then(|()| delivery.ack()),
                _ => delivery.ack(),
            });
        }
        if n % 8 == 0 {
            let mut batch = Vec::new();
            timed("try_receive_batch", Duration::ZERO, || {
                queue.try_receive_batch(&mut batch, 4)
            });
            let _ = timed("ack_batch", Duration::ZERO, || queue.ack_batch(batch));
        }
    }
    println!("RECEIVED {received} in {n} tries");
}

fn inspect(name: &str) {
    let until = Instant::now() + RUN;
    let (mut opened, mut refused) = (0u64, 0u64);
    while Instant::now() < until {
        // A fresh open each time: a scribbled header must be a typed error.
        let Ok(queue) = timed("open_shm", Duration::ZERO, || Queue::open_shm(name)) else {
            refused += 1;
            run_cli(name);
            continue;
        };
        opened += 1;
        timed("stats", Duration::ZERO, || queue.stats());
        timed("peek", Duration::ZERO, || queue.peek(8));
        timed("dead_letters", Duration::ZERO, || queue.dead_letters());
        timed("pop_dead_letter", Duration::ZERO, || {
            queue.pop_dead_letter()
        });
        timed("redrive", Duration::ZERO, || queue.redrive());
        timed("tick", Duration::ZERO, || queue.tick());
        drop(queue);
        run_cli(name);
    }
    println!("OPENED {opened}, {refused} refused");
}

/// Runs `ackring stat NAME`: it may fail with a message, never die of a signal or hang.
fn run_cli(name: &str) {
    let Some(tool) = option_env!("CARGO_BIN_EXE_ackring") else {
        return; // built without the `cli` feature
    };
    let mut stat = Command::new(tool)
        .args(["stat", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = wait_bounded(&mut stat, Duration::from_secs(1) + SLACK, "ackring stat");
    use std::os::unix::process::ExitStatusExt;
    if let Some(signal) = status.signal() {
        eprintln!("CRASHED: ackring stat died of signal {signal}");
        std::process::exit(OVERRAN);
    }
}

/// Waits for `child` at most `bound` (polling: a child has no timed wait), killing it and
/// ending this process with [`OVERRAN`] past that.
fn wait_bounded(child: &mut Child, bound: Duration, what: &str) -> std::process::ExitStatus {
    let give_up = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= give_up {
            let _ = child.kill();
            eprintln!("OVERRAN: {what} still running after {bound:?}");
            std::process::exit(OVERRAN);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn child() {
    let Ok(role) = std::env::var("ACKRING_HOSTILE") else {
        return; // not a child: nothing to do
    };
    let (role, name) = role.split_once(':').unwrap();
    if role == "scribble" {
        return scribble(name);
    }
    let queue = Queue::open_shm(name).unwrap();
    println!("OPEN"); // the parent starts the scribbler once every honest child is in
    match role {
        "produce" => produce(&queue),
        "consume" => consume(&queue),
        "inspect" => {
            drop(queue);
            inspect(name);
        }
        other => panic!("unknown role {other}"),
    }
}

fn spawn(role: &str, name: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env("ACKRING_HOSTILE", format!("{role}:{name}"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn honest_processes_survive_a_neighbour_scribbling_on_their_segment() {
    let name = format!("test-{}-hostile", std::process::id());
    let creator = Queue::builder(64, 64)
        .dedup_capacity(256)
        .visibility_timeout(Duration::from_millis(50))
        .create_shm(&name)
        .unwrap();
    for n in 0u64..32 {
        creator.try_publish(&n.to_le_bytes()).unwrap();
    }
    let mut honest: Vec<(&str, Child)> = ["produce", "produce", "consume", "consume", "inspect"]
        .into_iter()
        .map(|role| (role, spawn(role, &name)))
        .collect();
    for (role, child) in &mut honest {
        // The test harness prints its own lines first.
        let opened = BufReader::new(child.stdout.as_mut().unwrap())
            .lines()
            .map_while(Result::ok)
            .any(|line| line.ends_with("OPEN"));
        assert!(opened, "{role} did not open the segment");
    }
    honest.push(("scribble", spawn("scribble", &name)));
    let bound = RUN + SLACK * 4;
    let mut failures = Vec::new();
    for (role, child) in &mut honest {
        let status = bounded_status(child, bound);
        let mut said = String::new();
        if let Some(mut out) = child.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut out, &mut said);
        }
        let said: Vec<&str> = said
            .lines()
            .filter(|l| l.contains(char::is_uppercase))
            .collect();
        println!("{role}: {status:?} {said:?}");
        if !status.is_some_and(|status| status.success()) {
            failures.push(format!("{role}: {status:?}"));
        }
    }
    drop(creator);
    let _ = Queue::unlink_shm(&name);
    assert!(failures.is_empty(), "honest processes failed: {failures:?}");
}

/// The child's exit status, or `None` if it ran past `bound` (then killed).
fn bounded_status(child: &mut Child, bound: Duration) -> Option<std::process::ExitStatus> {
    let give_up = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= give_up {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
