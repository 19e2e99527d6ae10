//! The private files segments are made in (see the parent's *Creating, atomically*): their
//! names, and reclaiming those whose creator died before it finished.
//!
//! A creator killed mid-create leaves its full-size file behind, under a hidden name that
//! nothing else refers to, for ever. So the name carries the creator's pid namespace, pid
//! and start time, which tell whether it still runs: the next create of the same name
//! removes the files of dead creators, and [`reclaim_stale_creations`] (`ackring reclaim`)
//! removes them all. A file of a creator in another pid namespace (a container sharing the
//! directory) is never judged: its pid means another process here.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::ShmError;
use crate::liveness::host::Host;
use crate::liveness::{may_run, this_process_identity};

/// The end of every creation file's name.
const SUFFIX: &str = ".creating";

/// A private name next to `path` for a segment this process is making.
pub(super) fn temporary_path(path: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = path
        .file_name()
        .map_or_else(|| "segment".into(), |n| n.to_string_lossy().into_owned());
    let namespace = Host::current().pid_namespace;
    let (pid, start_time) = this_process_identity();
    path.with_file_name(format!(
        ".{name}.{namespace}.{pid}.{start_time}.{nanos}{SUFFIX}"
    ))
}

/// What a creation file's name says: the final name it was made for, and its creator's
/// pid namespace, pid and start time (`None` for any other name).
fn parse(file_name: &str) -> Option<(&str, u64, u32, u64)> {
    let rest = file_name.strip_prefix('.')?.strip_suffix(SUFFIX)?;
    let mut fields = rest.rsplitn(5, '.');
    let _nanos: u32 = fields.next()?.parse().ok()?;
    let start_time = fields.next()?.parse().ok()?;
    let pid = fields.next()?.parse().ok()?;
    let namespace = fields.next()?.parse().ok()?;
    Some((fields.next()?, namespace, pid, start_time))
}

/// A creation file whose creator no longer runs (killed while it made a segment).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StaleCreation {
    /// The file.
    pub path: PathBuf,
    /// The file name the segment was to have (`ackring.NAME` for a named segment).
    pub for_name: String,
    /// The creator's pid.
    pub pid: u32,
    /// The file's size in bytes.
    pub bytes: u64,
    /// Which file it was when judged (device, inode): removed only if still that one.
    identity: (u64, u64),
}

/// The creation files in `dir` (of every name, or only of the final file name `only`)
/// that this user owns and whose creator, in this pid namespace, no longer runs. A creator
/// whose start time was not recorded counts as running while any process has its pid.
///
/// # Errors
/// [`ShmError::NotFound`] and I/O errors reading `dir`.
pub fn stale_creations(dir: &Path, only: Option<&str>) -> Result<Vec<StaleCreation>, ShmError> {
    let user = rustix::process::geteuid().as_raw();
    let here = Host::current().pid_namespace;
    let entries = std::fs::read_dir(dir).map_err(|e| ShmError::from_io(e, dir))?;
    let mut stale = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some((name, namespace, pid, start_time)) = file_name.to_str().and_then(parse) else {
            continue;
        };
        // Not followed: a link is never ours to judge.
        let Ok(metadata) = entry.metadata() else {
            continue;
        };
        if only.is_some_and(|only| only != name)
            || namespace != here
            || !metadata.is_file()
            || metadata.uid() != user
            || may_run(pid, start_time)
        {
            continue;
        }
        stale.push(StaleCreation {
            path: entry.path(),
            for_name: name.to_owned(),
            pid,
            bytes: metadata.len(),
            identity: (metadata.dev(), metadata.ino()),
        });
    }
    stale.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(stale)
}

/// Removes the creation files [`stale_creations`] finds in `dir` (`only` as there), and
/// returns those removed.
///
/// # Errors
/// As [`stale_creations`].
pub fn reclaim_stale_creations(
    dir: &Path,
    only: Option<&str>,
) -> Result<Vec<StaleCreation>, ShmError> {
    let mut stale = stale_creations(dir, only)?;
    // Still the file judged (not one put in its place since), and still there: one that
    // vanished meanwhile was removed by another reclaimer, not ours to report.
    stale.retain(|file| {
        let now = std::fs::symlink_metadata(&file.path).map(|m| (m.dev(), m.ino()));
        now.is_ok_and(|now| now == file.identity) && std::fs::remove_file(&file.path).is_ok()
    });
    Ok(stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_creation_name_says_what_it_was_for_and_who_made_it() {
        let path = temporary_path(Path::new("/dev/shm/ackring.orders.v2"));
        let file_name = path.file_name().unwrap().to_str().unwrap();
        let (name, namespace, pid, start_time) = parse(file_name).expect("parses");
        assert_eq!((name, pid), ("ackring.orders.v2", std::process::id()));
        assert_eq!(namespace, Host::current().pid_namespace);
        assert_eq!(start_time, this_process_identity().1);
        assert!(may_run(pid, start_time), "this process runs");
        for other in [
            "ackring.orders",
            ".x.1.2.3.creating",
            ".x.1.a.2.3.creating",
            "..creating",
        ] {
            assert_eq!(parse(other), None, "{other}");
        }
    }
}
