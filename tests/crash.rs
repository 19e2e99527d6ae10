//! Crash tests with real processes: consumers and producers killed with SIGKILL at random
//! moments while others keep using the segment.
//!
//! Child processes are this test binary run again with `ACKRING_CRASH_CHILD` set: the
//! `child` test then plays that role until it is killed. Each child appends what it does
//! to a log of its own ("D id attempt time" on a delivery, "P id time" just before an ack,
//! "A id time" once the ack returned Ok, "C id time" once a publish returned Ok; times on
//! the host's monotonic clock, which all processes share), and the parent checks the logs
//! against what the queue promises.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ackring::clock::{Clock, MonotonicClock};
use ackring::{MessageId, PublishError, PublishOptions, Queue, QueueConfig};

const ROLE: &str = "ACKRING_CRASH_CHILD";
const SEGMENT: &str = "ACKRING_CRASH_SEGMENT";
const LOG: &str = "ACKRING_CRASH_LOG";
const SEED: &str = "ACKRING_CRASH_SEED";

const VISIBILITY: Duration = Duration::from_millis(200);
/// How late past its lease a killed consumer's message may come back: the wheel's tick,
/// a liveness check, stealing a dead ticker's lock and the scheduler on a busy 2-core host.
const SLACK: Duration = Duration::from_millis(1500);

fn config(visibility_timeout: Duration, dedup_window: Duration) -> QueueConfig {
    Queue::builder(1024, 32)
        .visibility_timeout(visibility_timeout)
        .dedup_window(dedup_window)
        .max_attempts(1000) // kills are not the messages' fault: no dead-lettering here
        .dedup_capacity(1 << 20) // room for every id published within the window
        .into_config()
}

fn now() -> u64 {
    MonotonicClock.now_nanos()
}

/// xorshift64*: random kill timing and consumer behaviour, reproducible from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn seed() -> u64 {
    std::env::var(SEED)
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| now() | 1)
}

/// Removes the segment and the logs when dropped (also when the test fails).
struct Scratch {
    name: String,
    dir: PathBuf,
}

impl Scratch {
    fn new(test: &str) -> Self {
        let name = format!("crash-{}-{test}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        Self { name, dir }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Queue::unlink_shm(&self.name);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A child process playing `role`, logging to `log`.
fn spawn(role: &str, segment: &str, log: &Path, seed: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(SEGMENT, segment)
        .env(LOG, log)
        .env(SEED, seed.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// SIGKILL, and reap.
fn kill(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Appends one line per call: one `write` of a whole line, so a kill leaves at most a cut
/// last line (which the parser skips).
struct Log(File);

impl Log {
    fn open() -> Self {
        let path = std::env::var(LOG).unwrap();
        Self(
            File::options()
                .create(true)
                .append(true)
                .open(path)
                .unwrap(),
        )
    }

    fn line(&mut self, kind: char, id: u64, extra: u64) {
        let line = format!("{kind} {id} {extra} {}\n", now());
        self.0.write_all(line.as_bytes()).unwrap();
    }
}

/// The child roles. Without `ACKRING_CRASH_CHILD` this test does nothing (it is the entry
/// point of the child processes the other tests start).
#[test]
fn child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let queue = Queue::open_shm(&std::env::var(SEGMENT).unwrap()).unwrap();
    let mut rng = Rng(seed());
    let mut log = Log::open();
    match role.as_str() {
        // Takes 1 to 4 messages, works on them a while (so a kill finds leases held),
        // acks them.
        "consumer" => loop {
            let mut held = Vec::new();
            for _ in 0..=rng.below(4) {
                let Some(delivery) = queue.receive_timeout(Duration::from_millis(20)) else {
                    break;
                };
                log.line('D', delivery.id().0, u64::from(delivery.attempt()));
                held.push(delivery);
            }
            let work = Instant::now() + Duration::from_micros(rng.below(300));
            while Instant::now() < work {
                std::hint::spin_loop();
            }
            for delivery in held {
                let id = delivery.id().0;
                log.line('P', id, 0);
                match delivery.ack() {
                    Ok(()) => log.line('A', id, 0),
                    Err(_) => log.line('L', id, 0), // the lease ran out first
                }
            }
        },
        // Publishes ids `base + n` for ever, logging each confirmed one.
        "producer" => {
            let base = rng.next() >> 16 << 16; // a fresh block of ids per process
            for n in 1.. {
                let id = base + n;
                let options = PublishOptions {
                    id: Some(MessageId(id)),
                    ..PublishOptions::default()
                };
                loop {
                    // Waits in the queue (asleep on its futex) for room, a while at a time.
                    let wait = Duration::from_millis(300);
                    match queue.publish_timeout(b"crash test payload", options, wait) {
                        Ok(_) => break,
                        Err(PublishError::Full { .. }) => std::thread::yield_now(),
                        Err(error) => panic!("publish {id}: {error}"),
                    }
                }
                log.line('C', id, 0);
            }
        }
        other => panic!("unknown role {other}"),
    }
}

/// One log line.
#[derive(Clone, Copy, Debug)]
struct Event {
    kind: char,
    id: u64,
    /// The attempt number on a delivery, 0 otherwise.
    extra: u64,
    at: u64,
    /// Which child process wrote it.
    process: usize,
}

/// Every whole line of every log (a line cut by a kill is skipped), in time order.
fn read_logs(logs: &[PathBuf]) -> Vec<Event> {
    let mut events = Vec::new();
    for (process, path) in logs.iter().enumerate() {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let [kind, id, extra, at] = fields[..] else {
                continue;
            };
            let (Some(kind), Ok(id), Ok(extra), Ok(at)) =
                (kind.chars().next(), id.parse(), extra.parse(), at.parse())
            else {
                continue;
            };
            events.push(Event {
                kind,
                id,
                extra,
                at,
                process,
            });
        }
    }
    events.sort_by_key(|event| event.at);
    events
}

/// Publishes `id` from the parent, waiting out a full queue (bounded: a queue that stays
/// full for seconds has lost slots).
fn publish(queue: &Queue, id: u64) {
    let options = PublishOptions {
        id: Some(MessageId(id)),
        ..PublishOptions::default()
    };
    let give_up = Instant::now() + Duration::from_secs(20);
    loop {
        match queue.try_publish_with(b"crash test payload", options) {
            Ok(_) => return,
            Err(PublishError::Full { .. }) if Instant::now() < give_up => {
                queue.tick();
                std::thread::yield_now();
            }
            Err(error) => panic!("publish {id}: {error}"),
        }
    }
}

/// After a crash test: no slot is lost. Dead letters hold theirs; every other slot takes a
/// publish (recovery may still be returning the last killed processes' slots: bounded
/// wait), and the queue then refuses one more.
fn assert_every_slot_comes_back(queue: &Queue) {
    let capacity = u64::from(queue.config().capacity);
    let free = capacity - queue.stats().dead;
    for n in 0..free {
        publish(queue, u64::MAX - n);
    }
    assert!(
        matches!(
            queue.try_publish(b"one too many"),
            Err(PublishError::Full { .. })
        ),
        "more slots than the capacity"
    );
}

/// Consumers are killed at random moments, 200 times, while the parent publishes: every
/// message is acked exactly once (an ack that a kill cut from the log shows as a `P` with
/// no later delivery), none is delivered after its ack, a killed consumer's messages come
/// back within the visibility timeout plus a small slack, and no slot is lost.
#[test]
fn consumers_killed_at_random_lose_and_duplicate_nothing() {
    const KILLS: usize = 200;
    const CONSUMERS: usize = 3;
    const PER_KILL: u64 = 100;
    let seed = seed();
    println!("seed {seed} (set {SEED} to replay the kill timing)");
    let mut rng = Rng(seed);
    let scratch = Scratch::new("consumers");
    let queue =
        Queue::create_shm(&scratch.name, config(VISIBILITY, Duration::from_secs(120))).unwrap();
    let mut logs = Vec::new();
    let mut killed_at: HashMap<usize, u64> = HashMap::new();
    let start = |logs: &mut Vec<PathBuf>, rng: &mut Rng| -> (usize, Child) {
        let log = scratch.dir.join(format!("consumer-{}.log", logs.len()));
        let child = spawn("consumer", &scratch.name, &log, rng.next() | 1);
        logs.push(log);
        (logs.len() - 1, child)
    };
    let mut consumers: Vec<(usize, Child)> =
        (0..CONSUMERS).map(|_| start(&mut logs, &mut rng)).collect();
    let mut next_id = 1;
    for _ in 0..KILLS {
        for _ in 0..PER_KILL {
            publish(&queue, next_id);
            next_id += 1;
        }
        std::thread::sleep(Duration::from_micros(rng.below(4_000)));
        let victim = rng.below(CONSUMERS as u64) as usize;
        let (process, mut child) = consumers.swap_remove(victim);
        kill(&mut child);
        killed_at.insert(process, now());
        consumers.push(start(&mut logs, &mut rng));
    }
    let published = next_id - 1;

    // Every message settles: nothing ready, delayed or leased any more.
    let give_up = Instant::now() + VISIBILITY + SLACK + Duration::from_secs(30);
    loop {
        let stats = queue.stats();
        if stats.ready + stats.delayed + stats.in_flight == 0 {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "messages never settled: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    for (process, mut child) in consumers {
        kill(&mut child);
        killed_at.insert(process, now());
    }

    let events = read_logs(&logs);
    let dead: Vec<u64> = queue.dead_letters().iter().map(|d| d.id.0).collect();
    assert!(dead.is_empty(), "no message used 1000 attempts: {dead:?}");
    let mut by_id: HashMap<u64, Vec<Event>> = HashMap::new();
    for event in &events {
        by_id.entry(event.id).or_default().push(*event);
    }
    let mut redeliveries_after_kills = 0;
    for id in 1..=published {
        let history = by_id.get(&id).map(Vec::as_slice).unwrap_or_default();
        let acks: Vec<&Event> = history.iter().filter(|e| e.kind == 'A').collect();
        assert!(acks.len() <= 1, "message {id} acked twice: {history:?}");
        let last_delivery = history.iter().rposition(|e| e.kind == 'D');
        // Acked: by a logged ack, or by an ack its process was killed before logging (a
        // `P` after the last delivery, from its process, with no refusal logged).
        let acked = match last_delivery {
            None => false,
            Some(last) => {
                let settles = || {
                    history[last..]
                        .iter()
                        .filter(|e| e.process == history[last].process)
                };
                settles().any(|e| e.kind == 'A')
                    || (settles().any(|e| e.kind == 'P') && !settles().any(|e| e.kind == 'L'))
            }
        };
        assert!(acked, "message {id} was never acked: {history:?}");
        if let Some(ack) = acks.first() {
            assert!(
                !history.iter().any(|e| e.kind == 'D' && e.at > ack.at),
                "message {id} delivered after its ack: {history:?}"
            );
        }
        // A delivery its consumer did not settle (it was killed) comes back in time.
        for pair in history
            .iter()
            .filter(|e| e.kind == 'D')
            .collect::<Vec<_>>()
            .windows(2)
        {
            let (before, after) = (pair[0], pair[1]);
            let waited = Duration::from_nanos(after.at - before.at);
            assert!(
                after.extra > before.extra,
                "message {id}: a redelivery's attempt number grows: {history:?}"
            );
            // A lease runs out at its delivery plus the visibility timeout, whether its
            // consumer was killed or was too slow (then its ack was refused: `L`).
            assert!(
                waited <= VISIBILITY + SLACK,
                "message {id} came back {waited:?} after its delivery: {history:?}"
            );
            if killed_at
                .get(&before.process)
                .is_some_and(|&killed| killed < after.at)
            {
                redeliveries_after_kills += 1;
            }
        }
    }
    println!(
        "{KILLS} kills, {published} messages, {redeliveries_after_kills} redelivered after a \
         kill, {} recoveries",
        queue.stats().recoveries
    );
    assert!(
        redeliveries_after_kills > 0,
        "kills found consumers holding leases"
    );
    assert_every_slot_comes_back(&queue);
    assert_no_sleeper_left_counted(&queue);
}

/// Once every other process is dead and the liveness check has seen it (every 100 ms, in
/// whoever runs the timers), receivers and publishers killed in their sleep are no longer
/// counted asleep (`Stats`). Before receivers were uncounted, 36 stayed counted after 200
/// kills; while a sleeper counted itself in two shared words, a kill between the two left
/// one counted in about one CI run in a dozen. Now none may stay. And what the killed
/// sleepers armed costs at most one wake-up call per signal: publishes and acks with no
/// one asleep make none after that.
fn assert_no_sleeper_left_counted(queue: &Queue) {
    let give_up = Instant::now() + Duration::from_secs(5);
    loop {
        queue.tick(); // runs the timers, and with them the liveness check
        let stats = queue.stats();
        let (receivers, publishers) = (stats.sleeping_receivers, stats.sleeping_publishers);
        if receivers + publishers == 0 {
            let before = queue.wake_up_calls();
            // The queue is full (`assert_every_slot_comes_back`): each ack makes room.
            for _ in 0..3 {
                let delivery = queue.try_receive().expect("a full queue");
                delivery.ack().expect("acked within the lease");
                queue.try_publish(b"no one asleep").expect("room just made");
            }
            let after = queue.wake_up_calls();
            let calls = (
                after.0.wrapping_sub(before.0),
                after.1.wrapping_sub(before.1),
            );
            assert!(
                calls.0 <= 1 && calls.1 <= 1,
                "3 publishes and acks with no one asleep made {calls:?} wake-up calls"
            );
            return;
        }
        assert!(
            Instant::now() < give_up,
            "{receivers} receivers and {publishers} publishers of dead processes still \
             counted asleep"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Producers are killed at random moments, mid-publish, while the parent consumes: every
/// publish that returned Ok is delivered (once), the segment stays usable, and the slots
/// of publishes cut short come back. The producers' publishes wait in the queue for room
/// (`Queue::publish_timeout`), so kills also find producers asleep waiting for room, and they
/// must stop being counted asleep: with that uncounting switched off, this test saw 27
/// left counted. (How many slept before a kill is printed, not asserted: it depends on
/// the timing.)
#[test]
fn producers_killed_mid_publish_leave_the_segment_consistent() {
    const KILLS: usize = 60;
    const PRODUCERS: usize = 2;
    let seed = seed();
    println!("seed {seed} (set {SEED} to replay the kill timing)");
    let mut rng = Rng(seed);
    let scratch = Scratch::new("producers");
    // A lease long enough that the parent, draining, never loses one; a dedup window short
    // enough for the producers' rate.
    let config = config(Duration::from_secs(30), Duration::from_millis(250));
    let queue = Queue::create_shm(&scratch.name, config).unwrap();
    let mut most_publishers_asleep = 0;
    let mut logs = Vec::new();
    let start = |logs: &mut Vec<PathBuf>, rng: &mut Rng| -> Child {
        let log = scratch.dir.join(format!("producer-{}.log", logs.len()));
        let child = spawn("producer", &scratch.name, &log, rng.next() | 1);
        logs.push(log);
        child
    };
    let mut producers: Vec<Child> = (0..PRODUCERS).map(|_| start(&mut logs, &mut rng)).collect();
    let mut delivered: HashMap<u64, u32> = HashMap::new();
    let mut drain = |queue: &Queue, for_at_least: Duration| {
        let until = Instant::now() + for_at_least;
        // Drains for at least the given time and until the queue is empty, but also stops
        // while producers keep it busy: they would otherwise never let go.
        let give_up = until + Duration::from_millis(50);
        loop {
            match queue.receive_timeout(Duration::from_millis(1)) {
                Some(delivery) => {
                    *delivered.entry(delivery.id().0).or_default() += 1;
                    delivery.ack().expect("acked within the lease");
                    if Instant::now() >= give_up {
                        return;
                    }
                }
                None if Instant::now() >= until => return,
                None => {}
            }
        }
    };
    for _ in 0..KILLS {
        drain(&queue, Duration::from_micros(rng.below(10_000)));
        most_publishers_asleep = most_publishers_asleep.max(queue.stats().sleeping_publishers);
        let victim = rng.below(PRODUCERS as u64) as usize;
        let mut child = producers.swap_remove(victim);
        kill(&mut child);
        producers.push(start(&mut logs, &mut rng));
    }
    for mut child in producers {
        kill(&mut child);
    }
    // Drain what is left; recovery returns cut publishes' slots meanwhile.
    drain(&queue, VISIBILITY + SLACK);

    let confirmed: Vec<u64> = read_logs(&logs)
        .iter()
        .filter(|e| e.kind == 'C')
        .map(|e| e.id)
        .collect();
    assert!(confirmed.len() > 1000, "producers got going between kills");
    for id in &confirmed {
        assert_eq!(
            delivered.get(id),
            Some(&1),
            "confirmed message {id} delivered once"
        );
    }
    let stats = queue.stats();
    assert_eq!(
        stats.ready + stats.delayed + stats.in_flight,
        0,
        "{stats:?}"
    );
    println!(
        "{KILLS} kills, {} confirmed publishes, {} delivered (a publish killed after its \
         message was queued is delivered though never confirmed), {} recoveries, up to \
         {most_publishers_asleep} producers seen asleep waiting for room before a kill",
        confirmed.len(),
        delivered.len(),
        stats.recoveries
    );
    assert_every_slot_comes_back(&queue);
    assert_no_sleeper_left_counted(&queue);
}
