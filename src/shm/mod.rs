//! Queues in shared memory: a named segment (under `/dev/shm`) or a regular file that
//! sibling processes map, holding the segment header (`header`) and the queue's region.
//!
//! # Creating, atomically
//!
//! The creator makes a private temporary file next to the final name (mode 0600, created
//! exclusively), sizes it, lays out the region, writes the header, and sets the header's
//! `initialized` word last. Only then does it hard-link the file under its final name, which
//! fails if the name exists. So no process can ever open a half-made segment, and of two
//! processes creating one name at once exactly one succeeds (the other gets
//! [`ShmError::AlreadyExists`]). The file's name carries its creator's pid and start time,
//! so one left by a creator killed halfway is reclaimed: by the next create of the name,
//! or by [`reclaim_stale_creations`] (`ackring reclaim`).
//!
//! # Opening, untrusted
//!
//! Whatever another process left in a segment is untrusted input. Opening checks every
//! header field (magic, byte order, version, engine constants, configuration, shape, every
//! section offset, total size against the file's size) before any region memory is used;
//! afterwards every index or length read from the region is checked where it is used (see
//! the ring, store, wheel and dedup modules). A bad segment is an [`ShmError`], never
//! undefined behaviour, a panic or a hang.
//!
//! Before mapping, opening makes sure every page of the file has backing store (create
//! reserves it; a file copied sparse or with holes punched may have lost it): a page
//! without it, touched on a full file system, raises `SIGBUS`. Full, it is
//! [`ShmError::NoSpace`] instead.
//!
//! One thing no check can catch: a process with write access that shrinks the file after
//! it was mapped (`ftruncate`). Touching the pages past the new end then raises `SIGBUS`
//! in every process that maps it, as with any shared mapping of a file. The segment's
//! mode (0600) limits that to processes of the same user.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::base::clock::MonotonicClock;
use crate::error::ShmError;
use crate::layout::header;
use crate::layout::memory::Mapping;
use crate::layout::region::{Layout, Region};
use crate::liveness::host::Host;
use crate::liveness::Participants;
use creating::temporary_path;
pub use creating::{reclaim_stale_creations, stale_creations, StaleCreation};

mod creating;
use crate::queue::{Attach, ConfigError, Queue, QueueBuilder, QueueConfig};

/// Where named segments live.
pub const SHM_DIR: &str = "/dev/shm";
/// Prefix of a named segment's file.
const PREFIX: &str = "ackring.";

/// The longest segment name, in bytes (UTF-8), so that the file name with its prefix
/// stays well within a file system's 255.
const MAX_NAME_BYTES: usize = 200;

/// The path of the named segment `name`.
///
/// # Errors
/// [`ShmError::InvalidName`] for an empty name, one over 200 bytes (UTF-8), one with `/`
/// or NUL, and `.` or `..`.
pub fn segment_path(name: &str) -> Result<PathBuf, ShmError> {
    if name.is_empty()
        || name.len() > MAX_NAME_BYTES
        || name.contains(['/', '\0'])
        || name == "."
        || name == ".."
    {
        return Err(ShmError::InvalidName {
            name: name.to_owned(),
        });
    }
    Ok(Path::new(SHM_DIR).join(format!("{PREFIX}{name}")))
}

/// Who besides its owner may use a segment: checked when a process opens one, so that a
/// segment another user made first under the name (any local user can create a file in
/// `/dev/shm`), or one that lets another user write, is refused rather than used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Sharing {
    /// This user's alone (the default): created with mode 0600; opened only if this
    /// process's effective user owns it and it grants nothing to group or others.
    #[default]
    Private,
    /// Also the file's group, for processes of several users: created with mode 0660;
    /// opened if this process's effective user owns it or its group is this process's
    /// effective group, and it grants nothing to others.
    Group,
}

impl Sharing {
    fn mode(self) -> u32 {
        match self {
            Sharing::Private => 0o600,
            Sharing::Group => 0o660,
        }
    }

    /// Whether a file of `owner`, `group` and `mode` may be opened under this sharing.
    fn allows(self, owner: u32, group: u32, mode: u32) -> bool {
        let user = rustix::process::geteuid().as_raw();
        match self {
            Sharing::Private => owner == user && mode & 0o077 == 0,
            Sharing::Group => {
                let in_group = group == rustix::process::getegid().as_raw();
                (owner == user || in_group) && mode & 0o007 == 0
            }
        }
    }
}

impl Queue<MonotonicClock> {
    /// Creates a queue in the named shared-memory segment `/dev/shm/ackring.NAME` (mode
    /// 0600), for this and other processes to [`open_shm`](Self::open_shm).
    ///
    /// # Errors
    /// [`ShmError::AlreadyExists`] if the name is taken, [`ShmError::Config`] for an
    /// invalid configuration, and I/O errors.
    pub fn create_shm(name: &str, config: QueueConfig) -> Result<Self, ShmError> {
        Self::create_file(&segment_path(name)?, config)
    }

    /// Opens the queue in the named segment `NAME`, if this process's effective user owns
    /// it and it grants nothing to group or others ([`Sharing::Private`]; see
    /// [`open_shm_with`](Self::open_shm_with) to share one with a group).
    ///
    /// # Errors
    /// [`ShmError::NotFound`], [`ShmError::PermissionDenied`], [`ShmError::NotOwned`], and,
    /// for a segment that is not a valid queue of this build's format,
    /// [`ShmError::Version`], [`ShmError::Incompatible`] or [`ShmError::Corrupt`] saying
    /// what is wrong.
    pub fn open_shm(name: &str) -> Result<Self, ShmError> {
        Self::open_file(&segment_path(name)?)
    }

    /// [`open_shm`](Self::open_shm) of a segment shared as `sharing` says.
    ///
    /// # Errors
    /// As [`open_shm`](Self::open_shm); [`ShmError::NotOwned`] if the segment's owner or
    /// mode is not what `sharing` allows.
    pub fn open_shm_with(name: &str, sharing: Sharing) -> Result<Self, ShmError> {
        Self::open_file_with(&segment_path(name)?, sharing)
    }

    /// Removes the named segment. Processes that have it open keep using it until they drop
    /// their queue; the memory goes when the last one does.
    ///
    /// # Errors
    /// [`ShmError::NotFound`] and I/O errors.
    pub fn unlink_shm(name: &str) -> Result<(), ShmError> {
        let path = segment_path(name)?;
        std::fs::remove_file(&path).map_err(|e| ShmError::from_io(e, &path))
    }

    /// Like [`create_shm`](Self::create_shm), in a regular file at `path` (a queue that
    /// outlives a reboot, on a disk-backed file system).
    ///
    /// # Errors
    /// As [`create_shm`](Self::create_shm).
    pub fn create_file(path: &Path, config: QueueConfig) -> Result<Self, ShmError> {
        Self::create_file_with(path, config, Sharing::Private)
    }

    /// [`create_file`](Self::create_file), shared as `sharing` says (its mode).
    pub(crate) fn create_file_with(
        path: &Path,
        config: QueueConfig,
        sharing: Sharing,
    ) -> Result<Self, ShmError> {
        config.validate()?;
        let layout =
            Layout::new(config.shape(), header::HEADER_BYTES).map_err(|_| ConfigError::TooLarge)?;
        // What creators of this name killed mid-create left (best effort: a directory we
        // cannot list fails the create below anyway).
        if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            let _ = reclaim_stale_creations(dir, name.to_str());
        }
        let temporary = temporary_path(path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(|e| ShmError::from_io(e, &temporary))?;
        let made = (|| {
            // The exact mode, whatever the umask (it may only take bits away, and a group
            // segment needs its group's).
            rustix::fs::fchmod(&file, rustix::fs::Mode::from_raw_mode(sharing.mode()))
                .map_err(|e| ShmError::from_io(e.into(), &temporary))?;
            reserve(&file, layout.size as u64, &temporary)?;
            let mapping = Mapping::map(&file, &temporary)?;
            let head = mapping.header()?;
            head.write(&config, &layout, &Host::current());
            let identity = head.identity();
            let region = Region::in_mapping(mapping, &layout).map_err(|_| ShmError::Corrupt {
                what: "the new segment is smaller than its layout",
            })?;
            own_identity_readable()?;
            let queue = Queue::on_region(config, region, MonotonicClock, Attach::Fresh, identity)
                .ok_or(ShmError::TooManyParticipants)?;
            queue.finish_segment();
            // The name appears only now, fully made; `hard_link` never replaces a file.
            std::fs::hard_link(&temporary, path).map_err(|e| ShmError::from_io(e, path))?;
            Ok(queue)
        })();
        let _ = std::fs::remove_file(&temporary);
        made
    }

    /// Like [`open_shm`](Self::open_shm), for a queue in a regular file at `path`.
    ///
    /// # Errors
    /// As [`open_shm`](Self::open_shm).
    pub fn open_file(path: &Path) -> Result<Self, ShmError> {
        Self::open_file_with(path, Sharing::Private)
    }

    /// [`open_file`](Self::open_file) of a file shared as `sharing` says.
    ///
    /// # Errors
    /// As [`open_shm_with`](Self::open_shm_with).
    pub fn open_file_with(path: &Path, sharing: Sharing) -> Result<Self, ShmError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .map_err(|e| ShmError::from_io(e, path))?;
        let metadata = file.metadata().map_err(|e| ShmError::from_io(e, path))?;
        if !metadata.is_file() {
            return Err(ShmError::Corrupt {
                what: "not a regular file",
            });
        }
        // Before anything is read from it: the file is as private as it should be.
        let (owner, group, mode) = {
            use std::os::unix::fs::MetadataExt;
            (metadata.uid(), metadata.gid(), metadata.mode() & 0o7777)
        };
        if !sharing.allows(owner, group, mode) {
            return Err(ShmError::NotOwned {
                path: path.to_path_buf(),
                owner,
                mode,
            });
        }
        // Holes: the header's page is backed before it is read, the rest once the header
        // has said how large the segment is (so a sparse file of any size under the name
        // is refused before it can fill the file system).
        let sparse = {
            use std::os::unix::fs::MetadataExt;
            metadata.blocks().saturating_mul(512) < metadata.len()
        };
        if sparse {
            reserve(&file, metadata.len().min(header::HEADER_BYTES as u64), path)?;
        }
        let mapping = Mapping::map(&file, path)?;
        let head = mapping.header()?;
        let (config, layout) = head.read(mapping.len())?;
        let identity = head.identity();
        if sparse {
            reserve(&file, layout.size as u64, path)?;
        }
        let host = Host::current();
        let host_boot = host.boot_id;
        if host_boot == [0, 0] && head.boot_id() != [0, 0] {
            // Without the host's boot id, a segment from before a reboot cannot be told
            // from one of this boot, and attaching to one unrebased would be wrong.
            return Err(ShmError::Incompatible {
                what: "the host's boot id (/proc/sys/kernel/random/boot_id) cannot be read",
            });
        }
        let before_reboot = |head: &header::Header<'_>| {
            let created_under = head.boot_id();
            created_under != [0, 0] && created_under != host_boot
        };
        // Every deadline in a segment from an earlier boot is on that boot's clock: the
        // first opener carries the queue's clock over (see `queue::reboot`), holding the
        // file's lock so that no other opener attaches meanwhile (those wait here, then
        // find the new boot id).
        let locked = before_reboot(&head) && {
            lock_exclusive(&file, path)?;
            // Unlocked below once attached; on an error return, when the last reference
            // to the open file goes (the descriptor, and the mapping if made).
            true
        };
        let attach = if locked && before_reboot(&head) {
            Attach::AfterReboot
        } else {
            Attach::Existing
        };
        let their_namespace = head.pid_namespace();
        if attach == Attach::Existing
            && their_namespace != 0
            && host.pid_namespace != 0
            && their_namespace != host.pid_namespace
        {
            // Its participants' pids mean other processes here: every one would look dead,
            // and recovery would take their messages from under them.
            return Err(ShmError::Incompatible {
                what: "the segment's processes run in another pid namespace (container), \
                       where their liveness cannot be checked",
            });
        }
        let region = Region::in_mapping(mapping, &layout).map_err(|_| ShmError::Corrupt {
            what: "the segment is smaller than its layout",
        })?;
        if attach == Attach::AfterReboot {
            // A reboot ended every process of the old boot. One that `/proc` shows running
            // with the identity it registered means the boot id lies: resetting would take
            // its leases and registration from under it. (One `/proc` cannot tell of, as
            // under `hidepid`, does not stop a real reboot.)
            let pids = Participants::new(region.sections().participants).seen_running_pids();
            if !pids.is_empty() {
                return Err(ShmError::NotRebooted {
                    path: path.to_path_buf(),
                    pids,
                });
            }
        }
        own_identity_readable()?;
        let queue = Queue::on_region(config, region, MonotonicClock, attach, identity)
            .ok_or(ShmError::TooManyParticipants)?;
        if attach == Attach::AfterReboot {
            queue.adopt_host(&host); // last: the segment is this boot's now
        }
        if locked {
            // Now, not when `file` closes: the mapping keeps the open file (and so its
            // `flock`) for as long as this queue lives, and the openers waiting on the lock
            // would wait as long.
            let _ = rustix::fs::flock(&file, rustix::fs::FlockOperation::Unlock);
        }
        Ok(queue)
    }
}

/// Gives every page of the file's first `len` bytes backing store now: on a full file
/// system, a page without it fails at its first touch, with `SIGBUS`, rather than here.
fn reserve(file: &File, len: u64, path: &Path) -> Result<(), ShmError> {
    rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len)
        .map_err(|e| ShmError::from_io(e.into(), path))
}

/// The processes of a segment tell a live registration from a dead one by pid and start
/// time (`/proc/PID/stat`), and one registered without its start time would be judged dead
/// by the others, losing its leases and locks. So a process that cannot read its own (out
/// of file descriptors, say) does not attach. (Without `/proc` at all, every process is
/// taken to run, and it may.)
fn own_identity_readable() -> Result<(), ShmError> {
    if crate::liveness::this_process_identity().1 != 0 {
        return Ok(());
    }
    let stat = Path::new("/proc/self/stat");
    match std::fs::read_to_string(stat) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(ShmError::from_io(error, stat))
        }
        _ => Ok(()),
    }
}

/// How long an opener waits for the file lock: its holder rebases the segment after a
/// reboot, a sweep of every slot (well under a second for a million slots); a process that
/// holds it longer is stuck or hostile.
/// (This crate's own tests wait less: one waits it out.)
const LOCK_WAIT: Duration = Duration::from_secs(if cfg!(test) { 1 } else { 10 });

/// Takes the exclusive `flock` on `file`, waiting at most [`LOCK_WAIT`] (`flock` has no
/// timed wait: it is tried without blocking, with naps growing to 10 ms).
fn lock_exclusive(file: &File, path: &Path) -> Result<(), ShmError> {
    let give_up = Instant::now() + LOCK_WAIT;
    let mut nap = Duration::from_micros(50);
    loop {
        match rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < give_up => {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(10));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(ShmError::Locked {
                    path: path.to_path_buf(),
                    waited: LOCK_WAIT,
                })
            }
            Err(error) => return Err(ShmError::from_io(error.into(), path)),
        }
    }
}

impl QueueBuilder {
    /// A queue in the new shared-memory segment `name` (see [`Queue::create_shm`]).
    ///
    /// # Errors
    /// As [`Queue::create_shm`].
    pub fn create_shm(self, name: &str) -> Result<Queue, ShmError> {
        self.create_shm_with(name, Sharing::Private)
    }

    /// [`create_shm`](Self::create_shm), shared as `sharing` says (mode 0600, or 0660 for
    /// [`Sharing::Group`]).
    ///
    /// # Errors
    /// As [`Queue::create_shm`].
    pub fn create_shm_with(self, name: &str, sharing: Sharing) -> Result<Queue, ShmError> {
        Queue::create_file_with(&segment_path(name)?, self.into_config(), sharing)
    }

    /// A queue in the new file `path`, which outlives a reboot (see [`Queue::create_file`]).
    ///
    /// # Errors
    /// As [`Queue::create_file`].
    pub fn create_file(self, path: &Path) -> Result<Queue, ShmError> {
        Queue::create_file_with(path, self.into_config(), Sharing::Private)
    }
}
