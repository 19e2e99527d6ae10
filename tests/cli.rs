//! The `ackring` tool against a real segment.
#![cfg(feature = "cli")]

use std::process::Command;

use ackring::{Queue, QueueConfig};

fn ackring(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ackring"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn stat_peek_dlq_and_redrive_show_and_change_a_live_queue() {
    let name = format!("test-{}-cli", std::process::id());
    let queue = Queue::create_shm(&name, QueueConfig::new(16, 64)).unwrap();
    queue.publish(b"order 17").unwrap();
    queue.publish(b"order 18").unwrap();
    queue
        .try_receive()
        .unwrap()
        .reject("card declined")
        .unwrap();

    let (ok, stat, _) = ackring(&["stat", &name]);
    assert!(ok);
    assert!(stat.contains("ready        1"), "{stat}");
    assert!(stat.contains("dead         1"), "{stat}");
    assert!(stat.contains("published    2"), "{stat}");
    assert!(stat.contains("attached     1 process"), "{stat}");

    let (ok, peek, _) = ackring(&["peek", &name]);
    assert!(ok && peek.contains("\"order 18\""), "{peek}");

    let (ok, dlq, _) = ackring(&["dlq", &name]);
    assert!(ok, "{dlq}");
    assert!(
        dlq.contains("1 dead letter") && dlq.contains("Rejected"),
        "{dlq}"
    );
    assert!(
        dlq.contains("card declined") && dlq.contains("\"order 17\""),
        "{dlq}"
    );

    let (ok, peek, _) = ackring(&["peek", &name, "--limit", "0"]);
    assert!(
        ok && peek.contains("1 ready message(s), the first 0 shown"),
        "{peek}"
    );
    assert!(!peek.contains("order 18"), "{peek}");
    let (ok, dlq, _) = ackring(&["dlq", &name, "-n", "0"]);
    assert!(
        ok && dlq.contains("1 dead letter(s), the first 0 shown"),
        "{dlq}"
    );
    assert!(!dlq.contains("order 17"), "{dlq}");

    let (ok, redrive, _) = ackring(&["redrive", &name]);
    assert!(ok && redrive.contains("redrove 1"), "{redrive}");
    assert_eq!(
        queue.stats().ready,
        2,
        "the tool's redrive reached this process's queue"
    );

    Queue::unlink_shm(&name).unwrap();
    let (ok, _, error) = ackring(&["stat", &name]);
    assert!(!ok && error.contains("no queue segment"), "{error}");
    let (ok, _, _) = ackring(&["stat"]);
    assert!(!ok, "a name or --file is required");
}

/// A creation file named as a creator that has exited would name it (pid, start time,
/// nanoseconds), in `dir`, for the final name `for_name`.
fn left_by_a_killed_creator(dir: &std::path::Path, for_name: &str) -> std::path::PathBuf {
    let mut creator = Command::new("true").spawn().unwrap();
    let pid = creator.id();
    creator.wait().unwrap();
    use std::os::unix::fs::MetadataExt;
    let namespace = std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino());
    let path = dir.join(format!(".{for_name}.{namespace}.{pid}.4242.17.creating"));
    std::fs::write(&path, vec![0u8; 4096]).unwrap();
    path
}

#[test]
fn reclaim_lists_and_removes_what_killed_creators_left() {
    let dir = std::env::temp_dir().join(format!("ackring-reclaim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stale = left_by_a_killed_creator(&dir, "queue");
    let unrelated = dir.join(".queue.notes");
    std::fs::write(&unrelated, b"kept").unwrap();
    let dir_arg = dir.to_str().unwrap();

    let (ok, listed, _) = ackring(&["reclaim", "--dir", dir_arg, "--dry-run"]);
    assert!(ok, "{listed}");
    assert!(listed.contains(stale.to_str().unwrap()), "{listed}");
    assert!(
        listed.contains("1 stale creation file(s) found"),
        "{listed}"
    );
    assert!(stale.exists(), "a dry run removes nothing");

    let (ok, removed, _) = ackring(&["reclaim", "--dir", dir_arg]);
    assert!(
        ok && removed.contains("1 stale creation file(s) removed"),
        "{removed}"
    );
    assert!(!stale.exists() && unrelated.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
