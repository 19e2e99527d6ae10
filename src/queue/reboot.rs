//! Opening a file-backed queue after the host rebooted.
//!
//! Every deadline in a region (delays, backoffs, leases, TTLs, dedup expiries) is a reading
//! of `CLOCK_MONOTONIC`, which restarts near zero at boot. A queue in a regular file
//! outlives a reboot, so its first opener afterwards (holding the file's lock: no other
//! process is attached, every registration in it belonged to the ended boot) moves the
//! region onto the new boot's clock:
//!
//! - every stored monotonic time moves by one shift, the change in `monotonic - wall
//!   clock` between the old boot's last clock witness ([`RecoveryWords`]'s `clock_mono`
//!   and `clock_unix`, written with each liveness check) and now. So TTLs, delays and
//!   backoffs keep their remaining wall-clock time (the downtime counts against them, up
//!   to the witness's age, at most a liveness interval or so), and dedup entries too;
//! - leases run out at once: their consumers are gone;
//! - the participant table, the wheel, the lock words and the sleeper count are reset
//!   (all of them describe processes of the ended boot);
//! - then a recovery sweep, which finds every owner dead: half-done publishes are freed,
//!   half-done settles undone, pins dropped, lost tokens pushed again, and every timer a
//!   slot word marks is linked again into the fresh wheel, due at once (each re-reads its
//!   slot's rebased deadline when it fires and waits again if it is not due).
//!
//! [`RecoveryWords`]: super::recovery::RecoveryWords

use super::Queue;
use crate::clock::Clock;
use crate::slots::State;
use crate::sync::Ordering;
use crate::wheel::Wheel;

/// Moves a stored monotonic time by `shift` nanoseconds, keeping "never" (`u64::MAX`) and
/// staying within `0..u64::MAX`.
fn shifted(stamp: u64, shift: i128) -> u64 {
    if stamp == u64::MAX {
        return stamp;
    }
    (i128::from(stamp) + shift).clamp(0, i128::from(u64::MAX - 1)) as u64
}

impl<C: Clock> Queue<C> {
    /// Records the monotonic clock `now` and the wall clock beside it (see the module docs).
    pub(super) fn note_clock(&self, now: u64) {
        let words = self.recovery_words();
        words
            .clock_unix
            .0
            .store(super::unix_nanos(), Ordering::Relaxed);
        words.clock_mono.0.store(now, Ordering::Relaxed);
    }

    /// How far the stored times move: the change in `monotonic - wall` since the witness.
    /// (Without a witness, everything is due at once.)
    fn clock_shift(&self, now: u64) -> i128 {
        let words = self.recovery_words();
        let (then_mono, then_unix) = (
            words.clock_mono.0.load(Ordering::Relaxed),
            words.clock_unix.0.load(Ordering::Relaxed),
        );
        let offset = |mono: u64, unix: u64| i128::from(mono) - i128::from(unix);
        offset(now, super::unix_nanos()) - offset(then_mono, then_unix)
    }

    /// Moves the region onto this boot's clock (see the module docs). Only with no other
    /// process attached: the caller holds the segment's file lock.
    pub(super) fn rebase_after_reboot(&self) {
        let now = self.clock.now_nanos();
        let shift = self.clock_shift(now);
        let rebase = |stamp| shifted(stamp, shift);
        let sections = self.region.sections();
        let shared = sections.shared;
        Wheel::init(
            self.tick_nanos,
            now,
            &shared.wheel,
            sections.wheel_heads,
            sections.wheel_next,
        );
        shared.ready_signal.forget_sleepers();
        shared.recovery.next_check.0.store(0, Ordering::Relaxed);
        if let Some(dedup) = self.dedup() {
            dedup.rebase(rebase);
        }
        let store = self.store();
        for slot in 0..store.capacity() {
            let (Ok(word), Ok(meta)) = (store.load(slot), store.meta(slot)) else {
                continue;
            };
            for stamp in [&meta.published_at, &meta.expires_at] {
                stamp.store(rebase(stamp.load(Ordering::Relaxed)), Ordering::Relaxed);
            }
            let due_at = match word.state {
                State::Leased | State::Settling => now, // the consumer is gone
                _ => rebase(meta.due_at.load(Ordering::Relaxed)),
            };
            meta.due_at.store(due_at, Ordering::Relaxed);
        }
        self.note_clock(now);
        // Nobody else is attached, so no scheduler keeps the sweep waiting.
        let swept = self.wheel().with_run_lock(now, || self.sweep(now));
        self.invariant(
            matches!(swept, Some(Some(_))),
            "a sweep with no one else attached completes",
        );
    }
}

#[cfg(all(test, not(loom), not(miri)))]
mod tests {
    use std::io::{Seek, SeekFrom, Write};
    use std::time::Duration;

    use super::*;
    use crate::id::MessageId;
    use crate::queue::{PublishError, PublishOptions, QueueConfig};
    use crate::shm::header;

    const HOUR: u64 = 3_600_000_000_000;

    #[test]
    fn shifting_keeps_never_and_stays_in_range() {
        assert_eq!(shifted(u64::MAX, -5), u64::MAX);
        assert_eq!(shifted(10, -20), 0);
        assert_eq!(shifted(10, 5), 15);
        assert_eq!(shifted(u64::MAX - 3, 10), u64::MAX - 1);
    }

    /// A segment from a "previous boot" (its boot id patched, and its clock witness's wall
    /// time moved an hour on, as if the old boot's monotonic clock had read an hour less
    /// than ours at the same wall time) is rebased when opened: deadlines move an hour later, the
    /// held lease runs out at once, dedup still remembers, and the segment is this boot's.
    #[test]
    fn a_queue_opened_after_a_reboot_keeps_its_messages_and_their_remaining_time() {
        let path = std::env::temp_dir().join(format!("ackring-reboot-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let config = QueueConfig {
            visibility_timeout: Duration::from_secs(30),
            ..QueueConfig::new(8, 32)
        };
        let with = |id, ttl, delay| PublishOptions {
            id: Some(MessageId(id)),
            ttl,
            delay,
        };
        let (delayed_slot, delayed_due, ttl_expiry) = {
            let before = Queue::create_file(&path, config).unwrap();
            before.publish_with(b"held", with(1, None, None)).unwrap();
            let held = before.try_receive().unwrap();
            assert_eq!(held.id(), MessageId(1));
            std::mem::forget(held); // its consumer dies with the boot
            let hour = Some(Duration::from_secs(3600));
            before.publish_with(b"ttl", with(2, hour, None)).unwrap();
            let minute = Some(Duration::from_secs(60));
            before
                .publish_with(b"delayed", with(3, None, minute))
                .unwrap();
            let slots: Vec<u32> = (0..8)
                .filter(|&s| before.store().load(s).unwrap().state == State::Delayed)
                .collect();
            let ttl_slot = (0..8)
                .find(|&s| before.store().meta(s).unwrap().id.load(Ordering::Relaxed) == 2)
                .unwrap();
            let meta = |s| before.store().meta(s).unwrap();
            // The witness's wall clock an hour on: at the same wall time, the old boot's
            // monotonic clock read an hour less than this one does.
            let words = before.recovery_words();
            words.clock_unix.0.fetch_add(HOUR, Ordering::Relaxed);
            (
                slots[0],
                meta(slots[0]).due_at.load(Ordering::Relaxed),
                meta(ttl_slot).expires_at.load(Ordering::Relaxed),
            )
        };
        // Another boot id in the header.
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(SeekFrom::Start(header::BOOT_ID_WORD as u64 * 8))
            .unwrap();
        file.write_all(&[0xab; 16]).unwrap();
        drop(file);

        let after = Queue::open_file(&path).unwrap();
        let head = after.region.segment_header().unwrap();
        assert_eq!(
            head.boot_id(),
            crate::shm::boot_id(),
            "the segment is this boot's now"
        );
        let meta = |s| after.store().meta(s).unwrap();
        let delayed_now = meta(delayed_slot).due_at.load(Ordering::Relaxed);
        let drift = |a: u64, b: u64| a.abs_diff(b + HOUR);
        assert!(
            drift(delayed_now, delayed_due) < 1_000_000_000,
            "delay moved an hour"
        );
        let ttl_slot = (0..8)
            .find(|&s| meta(s).id.load(Ordering::Relaxed) == 2)
            .unwrap();
        let ttl_now = meta(ttl_slot).expires_at.load(Ordering::Relaxed);
        assert!(
            drift(ttl_now, ttl_expiry) < 1_000_000_000,
            "TTL moved an hour"
        );

        // The ready message, then the lease that ran out at once (attempt 2: on the next
        // wheel tick, a millisecond on); the delayed one stays delayed.
        let mut got = Vec::new();
        for _ in 0..2 {
            let delivery = after.receive_timeout(Duration::from_secs(10)).unwrap();
            got.push((delivery.id().0, delivery.attempt()));
            delivery.ack().unwrap();
        }
        got.sort_unstable();
        assert_eq!(got, [(1, 2), (2, 1)]);
        let stats = after.stats();
        assert_eq!((stats.delayed, stats.in_flight), (1, 0), "{stats:?}");
        // Dedup remembers across the reboot.
        assert!(matches!(
            after.publish_with(b"again", with(2, None, None)),
            Err(PublishError::Duplicate { .. })
        ));
        // A second opener finds this boot's segment and attaches as usual.
        let other = Queue::open_file(&path).unwrap();
        assert_eq!(other.attached_pids().len(), 2);
        drop((after, other));
        let _ = std::fs::remove_file(&path);
    }
}
