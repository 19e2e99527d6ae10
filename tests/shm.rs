//! Shared-memory segments: creation, opening, validation of what is found there, and real
//! processes publishing and consuming through one segment.
//!
//! Child processes are this test binary run again with `ACKRING_CHILD` set: the `child`
//! test then plays the role the variable names and exits (non-zero if it panicked).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ackring::shm::segment_path;
use ackring::ShmError;
use ackring::{Queue, QueueConfig, Sharing};

/// A segment name unique to this process and test.
fn name(test: &str) -> String {
    format!("test-{}-{test}", std::process::id())
}

/// Removes the named segment when dropped (also when the test fails).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Queue::unlink_shm(&self.0);
    }
}

fn small_config() -> QueueConfig {
    Queue::builder(64, 64).dedup_capacity(256).into_config()
}

#[test]
fn two_handles_on_one_segment_share_the_queue() {
    let name = name("share");
    let _cleanup = Cleanup(name.clone());
    let creator = Queue::create_shm(&name, small_config()).unwrap();
    let opener = Queue::open_shm(&name).unwrap();
    assert_eq!(opener.config(), creator.config());
    creator.publish(b"across").unwrap();
    let delivery = opener
        .try_receive()
        .expect("published through the other handle");
    assert_eq!(delivery.payload(), b"across");
    delivery.ack().unwrap();
    assert_eq!((creator.stats().acked, creator.stats().published), (1, 1));
    // The dedup window is shared too.
    let id = ackring::MessageId(7);
    let options = ackring::PublishOptions {
        id: Some(id),
        ..Default::default()
    };
    creator.publish_with(b"once", options).unwrap();
    assert!(matches!(
        opener.publish_with(b"twice", options),
        Err(ackring::PublishError::Duplicate { .. })
    ));
}

#[test]
fn a_queue_has_one_identity_in_every_handle_and_its_own() {
    let (first, second) = (name("identity-1"), name("identity-2"));
    let _cleanup = (Cleanup(first.clone()), Cleanup(second.clone()));
    let creator = Queue::create_shm(&first, small_config()).unwrap();
    let identity = creator.identity();
    assert_eq!(Queue::open_shm(&first).unwrap().identity(), identity);
    drop(creator);
    assert_eq!(
        Queue::open_shm(&first).unwrap().identity(),
        identity,
        "reopened"
    );
    let other = Queue::create_shm(&second, small_config()).unwrap();
    let heap = (
        Queue::new(small_config()).unwrap(),
        Queue::new(small_config()).unwrap(),
    );
    let all = [
        identity,
        other.identity(),
        heap.0.identity(),
        heap.1.identity(),
    ];
    for (i, a) in all.iter().enumerate() {
        assert_ne!(*a as u64, 0, "the random half is never zero");
        for b in &all[i + 1..] {
            assert_ne!(a, b, "two queues, one identity");
        }
    }
}

#[test]
fn a_window_and_ttl_of_584_years_or_more_survive_the_header() {
    // Such durations saturate to u64::MAX nanoseconds, once the header's word for "none":
    // the segment was made, and then no one could open it.
    let name = name("forever");
    let _cleanup = Cleanup(name.clone());
    let mut config = small_config();
    config.dedup_window = Some(Duration::MAX);
    config.default_ttl = Some(Duration::MAX);
    let creator = Queue::create_shm(&name, config).unwrap();
    let opener = Queue::open_shm(&name).expect("opens");
    assert!(opener.config().dedup_window.is_some());
    assert!(opener.config().default_ttl.is_some());
    let options = ackring::PublishOptions {
        id: Some(ackring::MessageId(9)),
        ..Default::default()
    };
    creator.publish_with(b"once", options).unwrap();
    assert!(matches!(
        opener.publish_with(b"twice", options),
        Err(ackring::PublishError::Duplicate { .. })
    ));
}

#[test]
fn names_that_exist_do_not_exist_or_are_invalid_are_typed_errors() {
    let name = name("errors");
    let _cleanup = Cleanup(name.clone());
    Queue::create_shm(&name, small_config()).unwrap();
    assert!(matches!(
        Queue::create_shm(&name, small_config()),
        Err(ShmError::AlreadyExists { .. })
    ));
    assert!(matches!(
        Queue::open_shm(&format!("{name}-missing")),
        Err(ShmError::NotFound { .. })
    ));
    // `.` and `..` would name /dev/shm/ackring.. and ackring..., files any user can make;
    // the limit counts bytes: 100 two-byte characters fit, 101 do not.
    for bad in [
        "",
        "a/b",
        "nul\0",
        ".",
        "..",
        &"x".repeat(201),
        &"é".repeat(101),
    ] {
        assert!(
            matches!(Queue::open_shm(bad), Err(ShmError::InvalidName { .. })),
            "{bad:?}"
        );
    }
    assert!(segment_path(&"é".repeat(100)).is_ok());
    assert!(
        segment_path("...").is_ok(),
        "only the two special names are refused"
    );
    let mut bad_config = small_config();
    bad_config.max_attempts = 0;
    assert!(matches!(
        Queue::create_shm(&format!("{name}-bad"), bad_config),
        Err(ShmError::Config(_))
    ));
    // The segment is private to its owner (mode 0600).
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(segment_path(&name).unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    Queue::unlink_shm(&name).unwrap();
    assert!(matches!(
        Queue::unlink_shm(&name),
        Err(ShmError::NotFound { .. })
    ));
}

#[test]
fn racing_creators_of_one_name_exactly_one_succeeds() {
    let name = name("race");
    let _cleanup = Cleanup(name.clone());
    let results: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| Queue::create_shm(&name, small_config()).is_ok()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|ok| **ok).count(), 1, "{results:?}");
    Queue::open_shm(&name).expect("the winner's segment is complete");
}

#[test]
fn a_file_backed_queue_keeps_its_messages_across_close_and_open() {
    let dir = std::env::temp_dir().join(format!("ackring-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("queue");
    {
        let queue = Queue::create_file(&path, small_config()).unwrap();
        queue.publish(b"kept").unwrap();
    }
    let queue = Queue::open_file(&path).unwrap();
    let delivery = queue.try_receive().expect("the message survived the close");
    assert_eq!(delivery.payload(), b"kept");
    delivery.ack().unwrap();
    drop(queue);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Punches a hole over all of `path` past its first page (its blocks go; it reads zeros).
fn punch_past_first_page(path: &std::path::Path) {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = file.metadata().unwrap().len() as libc::off_t;
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: a valid open descriptor and a range within the file; no memory is passed.
    let punched = unsafe { libc::fallocate(file.as_raw_fd(), mode, 4096, len - 4096) };
    assert_eq!(punched, 0, "{}", std::io::Error::last_os_error());
}

/// Bytes of backing store the file at `path` has, and its size.
fn backed_and_size(path: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).unwrap();
    (metadata.blocks() * 512, metadata.len())
}

#[test]
fn opening_a_file_with_holes_backs_them_first() {
    let name = name("holes");
    let _cleanup = Cleanup(name.clone());
    drop(Queue::create_shm(&name, small_config()).unwrap());
    let path = segment_path(&name).unwrap();
    punch_past_first_page(&path);
    let (backed, size) = backed_and_size(&path);
    assert!(
        backed < size,
        "the hole is there: {backed} of {size} bytes backed"
    );
    drop(Queue::open_shm(&name).unwrap());
    let (backed, size) = backed_and_size(&path);
    assert!(backed >= size, "backed on open: {backed} of {size} bytes");
}

/// Unmounts (and removes) a scratch mount point when dropped.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn opening_a_file_with_holes_on_a_full_file_system_is_a_typed_error_not_sigbus() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs takes root");
        return;
    }
    let dir = std::env::temp_dir().join(format!("ackring-full-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&dir)
        .status();
    if !mounted.is_ok_and(|status| status.success()) {
        let _ = std::fs::remove_dir(&dir);
        eprintln!("skipped: cannot mount a tmpfs here (a container without CAP_SYS_ADMIN?)");
        return;
    }
    let _unmount = Mounted(dir.clone());
    let path = dir.join("queue");
    drop(Queue::create_file(&path, small_config()).unwrap());
    punch_past_first_page(&path);
    // Fill the file system: a write past the end fails once it is full.
    let mut filler = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![1u8; 64 * 1024];
    while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
    drop(filler);
    // Without the check, registering in the participant table (a page in the hole)
    // raised SIGBUS and this test process died.
    match Queue::open_file(&path) {
        Err(ShmError::NoSpace { path: at }) => assert_eq!(at, path),
        other => panic!("expected NoSpace, got {:?}", other.map(|_| "a queue")),
    }
    std::fs::remove_file(dir.join("filler")).unwrap();
    drop(Queue::open_file(&path).expect("room again: opens"));
}

/// This process's pid namespace (the inode of `/proc/self/ns/pid`).
fn pid_namespace() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino())
}

/// This process's start time (`/proc/self/stat` field 22).
fn own_start_time() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name.split(' ').nth(19).unwrap().parse().unwrap()
}

#[test]
fn a_creation_file_of_a_killed_creator_is_reclaimed_by_the_next_create_of_its_name() {
    let name = name("reclaim");
    let _cleanup = Cleanup(name.clone());
    let dir = std::path::Path::new(ackring::shm::SHM_DIR);
    let mut creator = Command::new("true").spawn().unwrap();
    let dead_pid = creator.id();
    creator.wait().unwrap();
    let ns = pid_namespace();
    let left = dir.join(format!(".ackring.{name}.{ns}.{dead_pid}.4242.17.creating"));
    std::fs::write(&left, vec![0u8; 8192]).unwrap();
    // One of a creator still at work (this process) is not touched, nor one of a creator
    // in another pid namespace (its pid means another process here).
    let me = std::process::id();
    let busy = dir.join(format!(
        ".ackring.{name}.{ns}.{me}.{}.18.creating",
        own_start_time()
    ));
    std::fs::write(&busy, b"in the making").unwrap();
    let foreign = dir.join(format!(
        ".ackring.{name}.{}.{dead_pid}.1.19.creating",
        ns + 1
    ));
    std::fs::write(&foreign, b"not ours to judge").unwrap();

    drop(Queue::create_shm(&name, small_config()).unwrap());
    assert!(!left.exists(), "reclaimed");
    assert!(busy.exists(), "its creator runs");
    assert!(foreign.exists(), "another pid namespace's");
    std::fs::remove_file(&busy).unwrap();
    std::fs::remove_file(&foreign).unwrap();
}

/// A valid segment's bytes, written by `create_shm` and read back.
fn valid_segment_bytes(name: &str) -> (PathBuf, Vec<u8>) {
    Queue::create_shm(name, small_config()).unwrap();
    let path = segment_path(name).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

/// Sets the header's checksum (word 46) for its other words, as a creator does: XXH3-64 of
/// the header's 384 bytes with words 3 (`initialized`), 42, 43 and 45 (the host words) and
/// 46 as zero (the table in `src/layout/header.rs`).
fn reseal(bytes: &mut [u8]) {
    let mut header = bytes[..384].to_vec();
    for word in [3, 42, 43, 45, 46] {
        header[word * 8..word * 8 + 8].fill(0);
    }
    let checksum = xxhash_rust::xxh3::xxh3_64(&header);
    bytes[46 * 8..47 * 8].copy_from_slice(&checksum.to_le_bytes());
}

/// Writes `bytes` as the segment and opens it.
fn open_bytes(path: &PathBuf, bytes: &[u8]) -> Result<(), ShmError> {
    std::fs::write(path, bytes).unwrap();
    let name = path
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .strip_prefix("ackring.")
        .unwrap()
        .to_owned();
    Queue::open_shm(&name).map(|_| ())
}

#[test]
fn corrupt_segments_are_refused_with_what_is_wrong() {
    let name = name("corrupt");
    let _cleanup = Cleanup(name.clone());
    let (path, good) = valid_segment_bytes(&name);
    assert!(open_bytes(&path, &good).is_ok());
    let word = |bytes: &mut Vec<u8>, index: usize, value: u64| {
        bytes[index * 8..index * 8 + 8].copy_from_slice(&value.to_ne_bytes());
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("truncated header", good[..100].to_vec()),
        ("truncated region", good[..good.len() / 2].to_vec()),
        ("magic", {
            let mut b = good.clone();
            b[0] ^= 0xff;
            b
        }),
        ("byte order", {
            let mut b = good.clone();
            word(&mut b, 2, 0x0807_0605_0403_0201);
            b
        }),
        ("version", {
            let mut b = good.clone();
            word(&mut b, 1, 99);
            b
        }),
        ("not initialized", {
            let mut b = good.clone();
            word(&mut b, 3, 0);
            b
        }),
        ("capacity", {
            let mut b = good.clone();
            word(&mut b, 8, 1 << 40);
            b
        }),
        ("shape against config", {
            let mut b = good.clone();
            word(&mut b, 9, 7);
            b
        }),
        ("an offset", {
            let mut b = good.clone();
            word(&mut b, 15, 12_345);
            b
        }),
        ("total size", {
            let mut b = good.clone();
            word(&mut b, 23, 1 << 50);
            b
        }),
        ("visibility timeout zero", {
            let mut b = good.clone();
            word(&mut b, 25, 0);
            b
        }),
        ("backoff kind", {
            let mut b = good.clone();
            word(&mut b, 27, 9);
            b
        }),
    ];
    for (what, bytes) in cases {
        let result = open_bytes(&path, &bytes);
        assert!(result.is_err(), "{what}: opened a bad segment");
        let message = result.unwrap_err().to_string();
        assert!(!message.is_empty(), "{what}");
    }
    assert!(matches!(
        open_bytes(&path, &{
            let mut b = good.clone();
            word(&mut b, 1, 99);
            b
        }),
        Err(ShmError::Version { found: 99, .. })
    ));
    // Another boot id: the first opener moves the segment onto this boot's clock (see
    // src/queue/recovery/reboot.rs) and opens it.
    let rebooted = open_bytes(&path, &{
        let mut b = good.clone();
        word(&mut b, 42, 0x1234);
        b
    });
    assert!(rebooted.is_ok(), "{rebooted:?}");
    // Another pid namespace on this boot: its processes' pids mean nothing here.
    let elsewhere = open_bytes(&path, &{
        let mut b = good.clone();
        word(&mut b, 45, 0x1234);
        b
    });
    assert!(
        matches!(&elsewhere, Err(ShmError::Incompatible { what }) if what.contains("pid namespace")),
        "{elsewhere:?}"
    );
}

#[test]
fn a_segment_another_user_owns_or_can_write_is_refused() {
    // Any local user can create /dev/shm/ackring.NAME first (name squatting), or leave a
    // segment others can write: opening one would consume forged messages.
    let name = name("owner");
    let _cleanup = Cleanup(name.clone());
    Queue::create_shm(&name, small_config()).unwrap();
    let path = segment_path(&name).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(
        meta.mode() & 0o777,
        0o600,
        "created private whatever the umask"
    );
    let chmod = |mode: u32| {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    for mode in [0o644, 0o606, 0o660, 0o666] {
        chmod(mode);
        let opened = Queue::open_shm(&name);
        assert!(
            matches!(&opened, Err(ShmError::NotOwned { mode: m, .. }) if *m == mode),
            "mode {mode:o}: {opened:?}"
        );
    }
    // Opted in: the group may share it, others still may not.
    chmod(0o660);
    assert!(Queue::open_shm_with(&name, Sharing::Group).is_ok());
    chmod(0o664);
    assert!(matches!(
        Queue::open_shm_with(&name, Sharing::Group),
        Err(ShmError::NotOwned { .. })
    ));
    chmod(0o600);
    assert!(Queue::open_shm(&name).is_ok());
    // Another owner: only root can hand a file to another user, so only root tries it.
    if is_root() {
        std::os::unix::fs::chown(&path, Some(54_321), Some(54_321)).unwrap();
        let opened = Queue::open_shm(&name);
        assert!(
            matches!(&opened, Err(ShmError::NotOwned { owner: 54_321, .. })),
            "{opened:?}"
        );
        assert!(
            Queue::open_shm_with(&name, Sharing::Group).is_err(),
            "not our group"
        );
    } else {
        println!("not root: the other-owner case is skipped");
    }
}

#[test]
fn a_group_segment_is_created_0660_and_opens_shared() {
    let name = name("group");
    let _cleanup = Cleanup(name.clone());
    let queue = Queue::builder(8, 16)
        .create_shm_with(&name, Sharing::Group)
        .unwrap();
    queue.publish(b"for the group").unwrap();
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(segment_path(&name).unwrap()).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert!(matches!(
        Queue::open_shm(&name),
        Err(ShmError::NotOwned { .. })
    ));
    let opened = Queue::open_shm_with(&name, Sharing::Group).unwrap();
    assert_eq!(opened.try_receive().unwrap().payload(), b"for the group");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn every_single_bit_flip_of_a_header_is_refused_with_a_typed_error() {
    // Before the checksum, a flip of the dead-letter capacity's low bit (4 -> 5) opened:
    // section rounding gave the same offsets, and every dead letter was then discarded.
    // The host words (boot id, pid namespace: words 42, 43 and 45) are left out: they are
    // checked against the host, and another boot id is how a reboot looks.
    let name = name("bitflips");
    let _cleanup = Cleanup(name.clone());
    let (path, good) = valid_segment_bytes(&name);
    let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let mut opened = Vec::new();
    for (byte, &original) in good.iter().enumerate().take(384) {
        if [42, 43, 45].contains(&(byte / 8)) {
            continue;
        }
        for bit in 0..8 {
            use std::io::{Seek, SeekFrom, Write};
            let mut flip = |value: u8| {
                file.seek(SeekFrom::Start(byte as u64)).unwrap();
                file.write_all(&[value]).unwrap();
            };
            flip(original ^ (1 << bit));
            if Queue::open_shm(&name).is_ok() {
                opened.push((byte, bit));
            }
            flip(original);
        }
    }
    assert!(
        opened.is_empty(),
        "opened with (byte, bit) flipped: {opened:?}"
    );
    assert!(
        Queue::open_shm(&name).is_ok(),
        "the unflipped header still opens"
    );
    // And a resealed header whose instance word is zero is refused too.
    let mut no_instance = good.clone();
    no_instance[47 * 8..48 * 8].fill(0);
    reseal(&mut no_instance);
    assert!(matches!(
        open_bytes(&path, &no_instance),
        Err(ShmError::Corrupt { .. })
    ));
}

#[test]
fn random_bytes_in_the_region_never_panic_or_hang() {
    // Past the header: the segment opens, and every operation on garbage either works or
    // reports nothing found / an error, without panicking or spinning for ever.
    let name = name("garbage");
    let _cleanup = Cleanup(name.clone());
    let (path, good) = valid_segment_bytes(&name);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for round in 0..20 {
        let mut bytes = good.clone();
        // Past the header (384 bytes): the region, cursors included.
        for byte in bytes.iter_mut().skip(384) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if round % 2 == 0 || x.is_multiple_of(7) {
                *byte = x as u8;
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        let Ok(queue) = Queue::open_shm(&name) else {
            continue;
        };
        for _ in 0..50 {
            let _ = queue.try_publish(b"probe");
            if let Some(delivery) = queue.try_receive() {
                let _ = delivery.payload().len();
                let _ = delivery.nack("probe");
            }
            queue.tick();
        }
        let _ = queue.receive_timeout(Duration::from_millis(1));
        let _ = queue.stats();
        let _ = queue.peek(8);
        let _ = queue.dead_letters();
        let _ = queue.redrive();
    }
}

/// What a child process does, by `ACKRING_CHILD`: `produce:NAME:FROM:COUNT` publishes
/// COUNT messages carrying FROM.. as 8-byte ids; `consume:NAME:COUNT` receives and acks
/// until the queue's acked counter reaches COUNT, printing each payload it acked.
#[test]
fn child() {
    let Ok(role) = std::env::var("ACKRING_CHILD") else {
        return; // not a child: nothing to do
    };
    let parts: Vec<&str> = role.split(':').collect();
    if let ["squat" | "trespass", name] = parts[..] {
        return as_another_user(parts[0], name);
    }
    let queue = Queue::open_shm(parts[1]).unwrap();
    match parts[0] {
        "produce" => {
            let from: u64 = parts[2].parse().unwrap();
            let count: u64 = parts[3].parse().unwrap();
            for n in from..from + count {
                while queue.try_publish(&n.to_le_bytes()).is_err() {
                    std::thread::yield_now();
                }
            }
        }
        "consume" => {
            let total: u64 = parts[2].parse().unwrap();
            let mut mine = Vec::new();
            while queue.stats().acked < total {
                if let Some(delivery) = queue.receive_timeout(Duration::from_millis(10)) {
                    let n = u64::from_le_bytes(delivery.payload().try_into().unwrap());
                    delivery.ack().unwrap();
                    mine.push(n);
                }
            }
            let listed: Vec<String> = mine.iter().map(u64::to_string).collect();
            println!("ACKED {}", listed.join(","));
        }
        other => panic!("unknown child role {other}"),
    }
}

/// The uid and gid another user's process runs as (`nobody`'s).
const OTHER_USER: u32 = 65_534;

/// Becomes another user, then squats the name (creates it first, readable and writable
/// by anyone, as a squatter would) or trespasses (opens the owner's segment). Prints what
/// happened.
fn as_another_user(role: &str, name: &str) {
    // SAFETY: plain system calls on this process's credentials; the only memory passed
    // is a null list of no supplementary groups (root's are dropped too).
    let dropped = unsafe {
        libc::setgroups(0, std::ptr::null()) == 0
            && libc::setgid(OTHER_USER) == 0
            && libc::setuid(OTHER_USER) == 0
    };
    assert!(dropped, "{}", std::io::Error::last_os_error());
    if role == "squat" {
        let queue = Queue::create_shm(name, small_config()).unwrap();
        let path = segment_path(name).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::mem::forget(queue);
        println!("SQUATTED");
    } else {
        println!("OPENED {:?}", Queue::open_shm(name).map(|_| ()));
    }
}

/// Runs a child as another user (root only) and returns what it printed.
fn run_as_another_user(role: &str, name: &str) -> String {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env("ACKRING_CHILD", format!("{role}:{name}"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn a_process_of_another_user_can_neither_squat_a_name_nor_open_a_private_segment() {
    if !is_root() {
        println!("skipped: becoming another user takes root");
        return;
    }
    // Another user's process made the name first, open to all.
    let squatted = name("squatted");
    let _cleanup = Cleanup(squatted.clone());
    assert!(run_as_another_user("squat", &squatted).contains("SQUATTED"));
    assert!(matches!(
        Queue::create_shm(&squatted, small_config()),
        Err(ShmError::AlreadyExists { .. })
    ));
    let opened = Queue::open_shm(&squatted);
    assert!(
        matches!(
            &opened,
            Err(ShmError::NotOwned {
                owner: OTHER_USER,
                mode: 0o666,
                ..
            })
        ),
        "{opened:?}"
    );
    // Ours, private: the other user's process cannot open it.
    let ours = name("ours");
    let _cleanup_ours = Cleanup(ours.clone());
    let queue = Queue::create_shm(&ours, small_config()).unwrap();
    let tried = run_as_another_user("trespass", &ours);
    assert!(tried.contains("OPENED Err(PermissionDenied"), "{tried}");
    drop(queue);
}

fn spawn_child(role: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env("ACKRING_CHILD", role)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn producer_and_consumer_processes_ack_every_message_exactly_once() {
    let name = name("procs");
    let _cleanup = Cleanup(name.clone());
    // Generated ids: not remembered by the dedup window, so its small default is no limit.
    Queue::create_shm(&name, small_config()).unwrap();
    let (producers, consumers, per_producer) = (3u64, 2, 2_000u64);
    let total = producers * per_producer;
    let children: Vec<_> = (0..producers)
        .map(|p| {
            spawn_child(&format!(
                "produce:{name}:{}:{per_producer}",
                p * per_producer
            ))
        })
        .chain((0..consumers).map(|_| spawn_child(&format!("consume:{name}:{total}"))))
        .collect();
    let mut acked = Vec::new();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "a child failed: {output:?}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        // libtest prints "test child ... " on the same line, before ours.
        for line in stdout
            .lines()
            .filter_map(|l| l.split_once("ACKED ").map(|(_, rest)| rest))
        {
            acked.extend(
                line.split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse::<u64>().unwrap()),
            );
        }
    }
    acked.sort_unstable();
    let expected: Vec<u64> = (0..total).collect();
    assert!(
        acked == expected,
        "every message acked exactly once: {} acked, first difference at {:?}",
        acked.len(),
        acked.iter().zip(&expected).position(|(a, e)| a != e)
    );
    let queue = Queue::open_shm(&name).unwrap();
    let stats = queue.stats();
    assert_eq!(
        (stats.published, stats.acked, stats.in_flight),
        (total, total, 0)
    );
}
