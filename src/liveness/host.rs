//! The host a queue's processes share: its boot (deadlines on the monotonic clock and
//! liveness by pid mean something only within one boot) and its pid namespace.

/// Where the processes sharing a segment run: liveness (pid + start time) and deadlines
/// (the monotonic clock) mean something only within one boot and one pid namespace.
pub(crate) struct Host {
    pub(crate) boot_id: [u64; 2],
    /// The inode of `/proc/self/ns/pid` (0 if unknown): processes in another pid namespace
    /// have other pids, so none could tell whether the others are alive.
    pub(crate) pid_namespace: u64,
}

impl Host {
    pub(crate) fn current() -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            boot_id: boot_id(),
            pid_namespace: std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino()),
        }
    }
}

/// The host's boot id (`/proc/sys/kernel/random/boot_id`) as two words, zero if unknown.
pub(crate) fn boot_id() -> [u64; 2] {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let hex: String = text.chars().filter(char::is_ascii_hexdigit).collect();
    let word = |range: std::ops::Range<usize>| {
        hex.get(range)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .unwrap_or(0)
    };
    [word(0..16), word(16..32)]
}
