//! Opening a file-backed queue after the host rebooted.
//!
//! Every deadline in a region (delays, backoffs, leases, TTLs, dedup expiries) is a time
//! on the queue's clock: the host's `CLOCK_MONOTONIC` plus the region's `clock_base` (0
//! until a reboot). The monotonic clock restarts near zero at boot, but a queue in a
//! regular file outlives a reboot, so its first opener afterwards (holding the file's
//! lock; every registration in the table belonged to the ended boot) carries the queue's
//! clock over instead of touching the deadlines:
//!
//! - the new `clock_base` makes the queue's clock read, now, what it read at the last
//!   clock witness (`RecoveryWords::clock_queue`, written with each liveness check while
//!   the queue was in use) plus the wall-clock time since that witness. So TTLs, delays,
//!   backoffs and dedup windows keep their remaining wall-clock time: the downtime counts
//!   against them. A wall clock that went backwards counts as no time passed (a deadline
//!   never grows); a suspend the monotonic clock did not count is not seen;
//! - leases run out at once: their consumers are gone;
//! - the participant table (with its counts of sleepers), the wheel and the lock words are
//!   reset (all of them describe processes of the ended boot);
//! - a recovery sweep finds every owner dead: half-done publishes are freed (their ids
//!   forgotten), half-done settles undone, pins dropped, lost tokens pushed again, and
//!   every timer a slot word marks is linked again into the fresh wheel, due at once (each
//!   re-reads its slot's deadline when it fires and waits again if it is not due).
//!
//! Every step can be run again: an opener killed halfway leaves the boot id of the ended
//! boot in the header, and the next opener redoes the rebase from the same witness (or
//! from the one the killed opener wrote, which lines up with the same clock).

use crate::base::clock::Clock;
use crate::base::sync::Ordering;
use crate::engine::slots::State;
use crate::engine::wheel::Wheel;
use crate::layout::shared::RecoveryWords;
use crate::queue::recovery::Sweep;
use crate::queue::Queue;

/// Sets `words.clock_base` so that the queue's clock reads, at monotonic time
/// `monotonic_now`, the last witness's queue time plus the wall-clock time since it.
pub(in crate::queue) fn carry_the_clock_over(words: &RecoveryWords, monotonic_now: u64) {
    let (witness_queue, witness_unix) = (
        words.clock_queue.0.load(Ordering::Relaxed),
        words.clock_unix.0.load(Ordering::Relaxed),
    );
    let downtime = crate::queue::unix_nanos().saturating_sub(witness_unix);
    let queue_now = witness_queue.saturating_add(downtime);
    words
        .clock_base
        .0
        .store(queue_now.wrapping_sub(monotonic_now), Ordering::Relaxed);
}

impl<C: Clock> Queue<C> {
    /// Records the queue's clock `now` and the wall clock beside it (see the module docs).
    pub(in crate::queue) fn note_clock(&self, now: u64) {
        let words = self.recovery_words();
        words
            .clock_unix
            .0
            .store(crate::queue::unix_nanos(), Ordering::Relaxed);
        words.clock_queue.0.store(now, Ordering::Relaxed);
    }

    /// Puts right what the ended boot left (see the module docs), on a clock already
    /// carried over. Only with no other process attached: the caller holds the segment's
    /// file lock.
    pub(in crate::queue) fn rebase_after_reboot(&self) {
        let now = self.now();
        let sections = self.region.sections();
        let shared = sections.shared;
        Wheel::init(
            self.tick_nanos,
            now,
            &shared.wheel,
            sections.wheel_heads,
            sections.wheel_next,
        );
        shared.recovery.next_check.0.store(0, Ordering::Relaxed);
        if let Some(dedup) = self.dedup() {
            dedup.free_locks();
        }
        let store = self.store();
        for slot in 0..store.capacity() {
            let (Ok(word), Ok(meta)) = (store.load(slot), store.meta(slot)) else {
                continue;
            };
            if matches!(word.state, State::Leased | State::Settling | State::Taken) {
                meta.due_at.store(now, Ordering::Relaxed); // the consumer is gone
            }
        }
        self.note_clock(now);
        // Every owner is of the ended boot (a tag of ours could alias an old one's).
        self.release_dead_owners(&mut Sweep::default(), true);
        // Should the sweep not finish, the deaths noted make the next ticker sweep again.
        self.note_deaths(1);
        let deaths = shared.recovery.deaths.0.load(Ordering::Acquire);
        if let Some(sweep) = self.wheel().with_run_lock(now, || self.sweep(now)) {
            self.note_swept(deaths, &sweep);
        }
    }
}

#[cfg(all(test, not(loom), not(miri)))]
mod tests {
    use std::io::{Seek, SeekFrom, Write};
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::base::id::MessageId;
    use crate::error::ShmError;
    use crate::layout::header;
    use crate::queue::{DeadReason, PublishError, PublishOptions, QueueConfig};

    const HOUR: u64 = 3_600_000_000_000;
    const MINUTE: u64 = 60_000_000_000;

    fn with(id: u64, ttl: Option<u64>, delay: Option<u64>) -> PublishOptions {
        PublishOptions {
            id: Some(MessageId(id)),
            ttl: ttl.map(Duration::from_nanos),
            delay: delay.map(Duration::from_nanos),
        }
    }

    /// Another boot id in the segment's header: the host "rebooted". Written as a rebase
    /// cut short after its first word would leave it too (half the boot id this host's):
    /// the host words are outside the header's checksum, so the next opener rebases.
    fn fake_reboot(path: &Path) {
        let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.seek(SeekFrom::Start(header::BOOT_ID_WORD as u64 * 8))
            .unwrap();
        file.write_all(&[0xab; 16]).unwrap();
    }

    /// A boot id rewritten under a live queue (a corrupt or forged header) is no reboot:
    /// the opener is refused, naming the process still running, and the live consumer's
    /// lease is untouched.
    #[test]
    fn a_rewritten_boot_id_under_a_live_process_resets_nothing() {
        let path = std::env::temp_dir().join(format!("ackring-noboot-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let live = Queue::create_file(&path, QueueConfig::new(8, 32)).unwrap();
        live.try_publish(b"held").unwrap();
        let delivery = live.try_receive().unwrap();
        fake_reboot(&path);
        match Queue::open_file(&path) {
            Err(ShmError::NotRebooted { pids, .. }) => {
                assert_eq!(pids, [std::process::id()]);
            }
            other => panic!("expected NotRebooted, got {:?}", other.map(|_| "a queue")),
        }
        delivery.ack().expect("the lease was not taken back");
        assert_eq!(live.attached_pids(), [std::process::id()]);
        drop(live);
        let _ = std::fs::remove_file(&path);
    }

    /// The file lock a rebasing opener takes, held by some other process for good: the
    /// next opener gives up after its bound, with the typed error.
    #[test]
    fn an_opener_waits_a_bounded_time_for_a_held_file_lock() {
        let path = std::env::temp_dir().join(format!("ackring-locked-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        drop(Queue::create_file(&path, QueueConfig::new(8, 32)).unwrap());
        fake_reboot(&path);
        // Its own open file description: `flock` conflicts with another one in this process.
        let holder = std::fs::File::open(&path).unwrap();
        rustix::fs::flock(&holder, rustix::fs::FlockOperation::LockExclusive).unwrap();
        let started = std::time::Instant::now();
        match Queue::open_file(&path) {
            Err(ShmError::Locked { waited, .. }) => assert!(started.elapsed() >= waited),
            other => panic!("expected Locked, got {:?}", other.map(|_| "a queue")),
        }
        drop(holder);
        drop(Queue::open_file(&path).expect("the lock is free: rebased and opened"));
        let _ = std::fs::remove_file(&path);
    }

    /// A queue left by a "previous boot" (boot id patched; its clock witness an hour
    /// older in wall time, as if the host was down for an hour) opens with its queue clock
    /// an hour on: the held lease runs out at once, a delay and a short TTL have run out
    /// meanwhile, a long TTL and the dedup window have not, a publish cut short is undone
    /// (its id accepted again), and a second rebase does not move the clock again.
    #[test]
    fn a_queue_opened_after_a_reboot_carries_its_clock_over_the_downtime() {
        let path = std::env::temp_dir().join(format!("ackring-reboot-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let config = QueueConfig {
            visibility_timeout: Duration::from_secs(30),
            dedup_window: Some(Duration::from_secs(3 * 3600)),
            ..QueueConfig::new(8, 32)
        };
        let queue_time_before = {
            let before = Queue::create_file(&path, config).unwrap();
            before
                .try_publish_with(b"held", with(1, None, None))
                .unwrap();
            std::mem::forget(before.try_receive().unwrap()); // its consumer dies
            before
                .try_publish_with(b"long ttl", with(2, Some(2 * HOUR), None))
                .unwrap();
            before
                .try_publish_with(b"delayed", with(3, None, Some(MINUTE)))
                .unwrap();
            before
                .try_publish_with(b"short ttl", with(4, Some(30 * MINUTE), None))
                .unwrap();
            before.cut_publish_short(MessageId(5));
            let now = before.now();
            before.note_clock(now);
            let witness_unix = &before.recovery_words().clock_unix.0;
            witness_unix.fetch_sub(HOUR, Ordering::Relaxed);
            now
        };
        fake_reboot(&path);

        let after = Queue::open_file(&path).unwrap();
        let head = after.region.segment_header().unwrap();
        assert_eq!(
            head.boot_id(),
            crate::liveness::host::boot_id(),
            "the segment is this boot's now"
        );
        let queue_time_after = after.now();
        let carried = queue_time_after - queue_time_before;
        assert!(
            (HOUR..HOUR + MINUTE).contains(&carried),
            "clock moved {carried} ns"
        );

        let mut got = Vec::new();
        for _ in 0..3 {
            let delivery = after.receive_timeout(Duration::from_secs(10)).unwrap();
            got.push((delivery.id().0, delivery.attempt()));
            delivery.ack().unwrap();
        }
        got.sort_unstable();
        assert_eq!(
            got,
            [(1, 2), (2, 1), (3, 1)],
            "lease out, long TTL kept, delay over"
        );
        assert!(after.try_receive().is_none());
        let dead: Vec<(u64, DeadReason)> = after
            .dead_letters()
            .iter()
            .map(|d| (d.id.0, d.reason))
            .collect();
        assert_eq!(dead, [(4, DeadReason::Expired)]);
        let stats = after.stats();
        assert_eq!((stats.ready, stats.delayed, stats.in_flight), (0, 0, 0));
        assert!(matches!(
            after.try_publish_with(b"again", with(2, None, None)),
            Err(PublishError::Duplicate { .. })
        ));
        after
            .try_publish_with(b"retried", with(5, None, None))
            .unwrap();

        // A second opener on this boot attaches as usual.
        let other = Queue::open_file(&path).unwrap();
        assert_eq!(other.attached_pids().len(), 2);
        drop((after, other));

        // Rebasing again (as after an opener killed mid-rebase) does not move the clock
        // again: the witness the first rebase wrote lines up with the same clock.
        fake_reboot(&path);
        let again = Queue::open_file(&path).unwrap();
        let moved = again.now() - queue_time_after;
        assert!(moved < MINUTE, "a second rebase moved the clock {moved} ns");
        drop(again);
        let _ = std::fs::remove_file(&path);
    }
}
