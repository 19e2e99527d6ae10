//! Process identity: who holds a participant entry (pid, start time and incarnation in
//! one word) and what `/proc` says of a pid, so that a dead holder is told from a live one
//! and a reused pid from the process that had it.

use crate::base::sync::Ordering;
use crate::liveness::Participant;

/// A registration's process in one word, as an entry's `occupant` word holds it: the pid
/// in bits 0..22 (Linux pids stay below 2^22, `PID_MAX_LIMIT`), the registration's
/// *incarnation* in bits 22..32 (the low 10 bits of the epoch it takes the entry at), and
/// the start time (clock ticks after boot, `/proc/PID/stat` field 22) modulo 2^32 above,
/// with 0 there when it could not be read. A word of 0 is a free entry (no process has
/// pid 0).
///
/// One word, so that taking, leaving and reaping an entry are each one CAS of the whole
/// identity: a reaper that judged an occupant dead frees the entry only while that very
/// registration holds it, never a later one by a process that reused its pid. (With the
/// pid and the start time in two words, a reaper could read a dead process's pid, and
/// free the entry after a process with the same pid had taken it.) The incarnation keeps
/// two registrations of one pid apart even when neither start time was known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Occupant(pub(super) u64);

/// Bits of an occupant word that hold the pid.
pub(super) const PID_BITS: u32 = 22;

impl Occupant {
    pub(super) const FREE: Self = Self(0);

    /// The identity of the process `pid` started at `start_time` (`None`: not known), in
    /// no registration yet (incarnation 0).
    pub(super) fn new(pid: u32, start_time: Option<u64>) -> Self {
        // A start time whose low 32 bits are 0 reads as 1: 0 means "not known".
        let started = start_time.map_or(0, |ticks| ((ticks & 0xffff_ffff) as u32).max(1));
        Self(u64::from(started) << 32 | u64::from(pid) & ((1 << PID_BITS) - 1))
    }

    /// The same process in the registration that takes its entry at `epoch`.
    pub(super) fn in_registration(self, epoch: u64) -> Self {
        let incarnation = (epoch & 0x3ff) << PID_BITS;
        Self(self.0 & !(0x3ff << PID_BITS) | incarnation)
    }

    pub(super) fn read(entry: &Participant) -> Self {
        Self(entry.occupant.load(Ordering::Acquire))
    }

    pub(super) fn pid(self) -> u32 {
        (self.0 & ((1 << PID_BITS) - 1)) as u32
    }

    /// The start time modulo 2^32, or 0 when it was not known.
    pub(super) fn started(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// Whether this process runs: its pid names a running process that started at its
    /// start time. A free entry, a garbage pid, a later process with the pid, or a start
    /// time that was not known (0) while `/proc` knows the pid's does not: else one word
    /// naming pid 1 with start time 0, written into a segment, would hold whatever it
    /// claims (a lock, a lease) for ever. (One forged with a live process's true start time
    /// still passes: waits on locks are bounded for that.) When `/proc` cannot tell, it is
    /// taken to run:
    /// a live process judged dead would lose its entry, leases and locks, while a dead one
    /// judged alive is only reaped at a later look.
    pub(super) fn runs(self) -> bool {
        let pid = self.pid();
        if pid == 0 {
            return false;
        }
        match look_up(pid) {
            Seen::Running { start_time } => {
                self.started() != 0 && self.started() == Self::new(pid, Some(start_time)).started()
            }
            Seen::Gone => false,
            Seen::Unknown => true,
        }
    }
}

#[cfg(not(loom))]
impl Occupant {
    /// Whether `/proc` shows this process running, with its start time: unlike
    /// [`runs`](Self::runs), "cannot tell" is no.
    pub(super) fn seen_running(self) -> bool {
        let started = self.started();
        matches!(look_up(self.pid()), Seen::Running { start_time }
            if started != 0 && started == Self::new(self.pid(), Some(start_time)).started())
    }
}

/// This process's identity, read afresh (never cached: a forked child has its own pid and
/// start time, and a failed read must not stick).
/// A start time it cannot read (a `/proc` failing now, as with no file descriptors left)
/// is asked again a few times: others would judge a registration without one dead.
pub(super) fn this_process() -> Occupant {
    let pid = std::process::id();
    let start_time = (0..3).find_map(|_| look_up(pid).start_time());
    Occupant::new(pid, start_time)
}

/// What `/proc` says of a pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    not(all(target_os = "linux", not(miri), not(loom))),
    allow(dead_code, reason = "without /proc every process is seen running")
)]
pub(super) enum Seen {
    /// A process runs with this pid, started `start_time` clock ticks after boot.
    Running { start_time: u64 },
    /// No process has this pid, or a zombie (exited or killed, and not yet reaped by its
    /// parent: none of its threads runs any more code).
    Gone,
    /// `/proc` could not tell (out of file descriptors, say, or an unexpected format), or
    /// a process has the pid that `/proc` hides from us.
    Unknown,
}

impl Seen {
    pub(super) fn start_time(self) -> Option<u64> {
        match self {
            Self::Running { start_time } => Some(start_time),
            Self::Gone | Self::Unknown => None,
        }
    }
}

/// Looks `pid` up in `/proc` (field 22 of its `stat`, and its state).
pub(super) fn look_up(pid: u32) -> Seen {
    #[cfg(all(target_os = "linux", not(miri), not(loom)))]
    {
        let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat,
            Err(error) if vanished(&error) => return unlisted(pid),
            Err(_) => return Seen::Unknown,
        };
        let Some(mut fields) = fields_from_state(&stat) else {
            return Seen::Unknown;
        };
        let state = fields.next();
        // Field 22, the 20th after the state.
        let start_time = match fields.nth(18).map(str::parse) {
            Some(Ok(start_time)) => start_time,
            _ => return Seen::Unknown,
        };
        match state {
            // State (field 3): dead, or a zombie: exited and not yet reaped by its parent,
            // unless only its main thread ended (`pthread_exit`) and others still run.
            Some("X" | "x") => Seen::Gone,
            Some("Z") => match other_threads_run(pid) {
                Some(true) => Seen::Running { start_time },
                Some(false) => Seen::Gone,
                None => Seen::Unknown,
            },
            _ => Seen::Running { start_time },
        }
    }
    #[cfg(not(all(target_os = "linux", not(miri), not(loom))))]
    {
        let _ = pid;
        Seen::Running { start_time: 0 }
    }
}

/// `pid` has no entry in `/proc` that we can see: gone, unless a signal can still reach it
/// (`kill(pid, 0)`). A `/proc` mounted with `hidepid` hides the processes we may not trace
/// (other users'), and a process we may not signal (`EPERM`) exists all the same:
/// `Unknown`, which counts as alive. Its start time cannot be checked, so a hidden process
/// that reused a dead registration's pid keeps that entry until it exits too.
#[cfg(all(target_os = "linux", not(miri), not(loom)))]
pub(super) fn unlisted(pid: u32) -> Seen {
    use rustix::io::Errno;
    use rustix::process::{test_kill_process, Pid};
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return Seen::Gone;
    };
    match test_kill_process(pid) {
        Err(Errno::SRCH) => Seen::Gone,
        Ok(()) | Err(_) => Seen::Unknown,
    }
}

/// Whether a thread of the zombie `pid` other than its main one still runs (the main
/// thread's `pthread_exit` leaves a process that shows as a zombie while the rest of it
/// runs); `None` when `/proc` cannot tell. A thread that is itself a zombie does not count:
/// one a tracer (`strace -f`, a debugger) has yet to collect stays listed after the
/// process died.
#[cfg(all(target_os = "linux", not(miri), not(loom)))]
pub(super) fn other_threads_run(pid: u32) -> Option<bool> {
    let threads = match std::fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(threads) => threads,
        Err(error) if vanished(&error) => return Some(false),
        Err(_) => return None,
    };
    let main = pid.to_string();
    for thread in threads {
        let thread = thread.ok()?;
        if thread.file_name() == main.as_str() {
            continue;
        }
        match std::fs::read_to_string(thread.path().join("stat")) {
            Ok(stat) if !matches!(fields_from_state(&stat)?.next()?, "Z" | "X" | "x") => {
                return Some(true);
            }
            Ok(_) => {}
            Err(error) if vanished(&error) => {} // it ended while we looked
            Err(_) => return None,
        }
    }
    Some(false)
}

/// The fields of a `/proc` `stat` line from the state (field 3) on. The command name
/// (field 2) before it is in parentheses and may hold anything: fields resume after the
/// last ')'.
#[cfg(all(target_os = "linux", not(miri), not(loom)))]
pub(super) fn fields_from_state(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace())
}

/// Whether a `/proc` read failed because the process (or thread) is gone: `ENOENT`, or
/// `ESRCH` when it exited while its file was being read.
#[cfg(all(target_os = "linux", not(miri), not(loom)))]
pub(super) fn vanished(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::NotFound || error.raw_os_error() == Some(3)
}
