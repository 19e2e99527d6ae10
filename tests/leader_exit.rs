//! A process whose main thread has ended while its other threads run shows in `/proc` as a
//! zombie. Its registration on a shared queue must still count as alive: judged dead, its
//! leases, pins and locks would be taken back from under its running threads.
//!
//! The child is this binary run again with `ACKRING_LEADER_EXIT_SEGMENT` set (a test of its
//! own, without libtest's harness: the child's main thread has to be ours to end). It opens
//! the queue, starts a thread that ends the process once its stdin closes, says so on
//! stdout, and ends its main thread alone.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ackring::{Queue, QueueConfig};

const SEGMENT: &str = "ACKRING_LEADER_EXIT_SEGMENT";

fn main() {
    if cfg!(miri) {
        return; // no processes, no /proc under Miri
    }
    // Without libtest's harness, answer a listing (`cargo test -- --list`) with this one test.
    if std::env::args().any(|arg| arg == "--list") {
        println!("leader_exit: test");
        return;
    }
    match std::env::var(SEGMENT) {
        Ok(segment) => child(&segment),
        Err(_) => parent(),
    }
}

fn child(segment: &str) {
    let queue = Queue::open_shm(segment).expect("open the parent's segment");
    std::thread::spawn(|| {
        // Until the parent closes our stdin (or dies).
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    println!("registered");
    std::io::stdout().flush().unwrap();
    // The handle stays registered: nothing of this thread's runs after the call below.
    std::mem::forget(queue);
    // SAFETY: `SYS_exit` ends only the calling thread, at once, without unwinding or
    // running destructors; the other thread holds no reference into this one's stack.
    // (Not `pthread_exit`: glibc's forced unwinding through Rust frames is undefined.)
    unsafe {
        libc::syscall(libc::SYS_exit, 0);
    }
    unreachable!("SYS_exit returned");
}

/// Removes the named segment when dropped (also when the test fails).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Queue::unlink_shm(&self.0);
    }
}

fn parent() {
    let name = format!("test-{}-leader-exit", std::process::id());
    let _cleanup = Cleanup(name.clone());
    let queue = Queue::create_shm(&name, QueueConfig::new(8, 8)).expect("create the segment");
    judge_the_child(&queue, &name);
    println!("leader_exit: ok");
}

fn judge_the_child(queue: &Queue, name: &str) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(SEGMENT, name)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    let pid = child.id();
    // Read on another thread, so that a child stuck before it speaks fails the test.
    let stdout = child.stdout.take().unwrap();
    let (said, heard) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = said.send(line);
    });
    let said = heard
        .recv_timeout(Duration::from_secs(30))
        .expect("the child registers within 30 s");
    assert_eq!(said.trim(), "registered");
    wait_for(|| main_thread_ended(pid), "the child's main thread to end");
    assert!(
        queue.attached_pids().contains(&pid),
        "a process whose main thread ended but whose other thread runs counts as attached"
    );
    drop(child.stdin.take()); // its other thread then ends the process
    assert!(child.wait().unwrap().success());
    assert!(
        !queue.attached_pids().contains(&pid),
        "a process that has ended does not"
    );
}

/// Whether `pid`'s main thread shows as a zombie while another of its threads is listed.
fn main_thread_ended(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .next();
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count);
    state == Some("Z") && threads > 1
}

/// Polls `condition` until it holds, failing after a generous bound.
fn wait_for(condition: impl Fn() -> bool, what: &str) {
    let give_up = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < give_up, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}
