//! Crash recovery: what a process killed at any instruction leaves in a shared segment, and
//! how the survivors put it right.
//!
//! Every operation on the region is a sequence of single-word CASes, so a process stopped
//! between two of them leaves each word valid, and only these things half done:
//!
//! | left behind                                         | repaired by                               |
//! |-----------------------------------------------------|-------------------------------------------|
//! | a slot in `Writing` (publish never returned `Ok`)   | freed; its id forgotten by dedup if it was recorded |
//! | a slot in `Settling` (a nack, release, reject or extend) | back to `Leased`: its lease runs out as if never settled |
//! | a slot in `Taken` (a lease being taken, a message being dead-lettered by a receive or a timer run, or redriven) | back to `Leased`, its lease timer linked: its lease runs out at the deadline written, or, if none was, at the deadline this message's last lease, delay or backoff left (at once if that has passed), and the message comes back (or, past its TTL, is dead-lettered then) |
//! | a token popped and never acted on, or a slot moved and its token never pushed (`Ready`, `Free`, `Dead`) | the token pushed again |
//! | a timer marked in a slot word and never linked, or linked in a list a dying ticker had detached | the node linked again |
//! | payload pins of its `Delivery`s                      | dropped                                   |
//! | the ticker's run lock, a dedup stripe lock           | broken by the next taker after a bound (see `wheel`, `dedup`) |
//! | a leased message                                    | nothing: its lease runs out as usual      |
//!
//! # When
//!
//! Whoever runs the wheel checks the participant table every [`LIVENESS_INTERVAL`]
//! ([`Participants::reap_dead`]); every dead registration found there, or replaced by a
//! new one, bumps `deaths`. While `deaths` is ahead of `recovered`, the ticker runs a sweep
//! under the wheel's run lock and then records the `deaths` it started from. A sweep that
//! had to keep a dead participant's pin (a live one may pin the same slot, and pins are
//! one count) records them with a flag, and the sweep runs again at each liveness check
//! until it keeps none.
//!
//! # Why a sweep cannot do harm to the living
//!
//! - **Owners** are told by the tag in the state word ([`OwnerTag`]), so only a slot whose
//!   owner is certainly dead is taken from it, by a CAS on the exact word read.
//! - **Tokens** are pushed again for slots whose token is not in their ring. A live thread
//!   may hold that token (popped, not yet acted on): of the two copies, the one used second
//!   is then stale, and its holder's CAS fails (a token is checked against the slot's full
//!   state word; see `Queue::resolve`). Fields are written only by whoever took the slot
//!   (see `slots::Meta`), so the loser writes nothing. The free and ready rings have room for a full queue's tokens twice
//!   over, so copies never crowd out real tokens.
//! - **Timer nodes** are a different matter: linking a node that is already in a list would
//!   corrupt both lists. The sweep holds the run lock (no list is detached meanwhile), reads
//!   the slot words (which nodes should be in the wheel), waits until no live participant is
//!   between marking a timer due in a slot word and linking it (`scheduling` counts those
//!   stretches), then walks every list. A node marked before the wait and not found by the
//!   walk is in no list: its linker is dead, or it was in a dead ticker's detached list.
//! - **Pins** are dropped only from a slot no live participant marked (`pin_marks`: a
//!   holder counts the pin before taking it and uncounts it after dropping it), by a CAS
//!   on the exact word read: every pin change is a CAS on that word, so a live holder's
//!   pin can only be in the word the CAS replaced if its mark was seen.

pub(super) mod reboot;

use std::time::{Duration, Instant};

use crate::base::clock::Clock;
use crate::base::sync::Ordering;
use crate::engine::slots::State;
use crate::engine::wheel::{node, Timer};
use crate::layout::shared::RecoveryWords;
use crate::liveness::OwnerTag;
use crate::queue::slot_moves::token;
use crate::queue::waiting::Change;
use crate::queue::Queue;

/// How often the ticker asks whether participants are still alive (each question reads a
/// `/proc` entry per participant).
pub(crate) const LIVENESS_INTERVAL: Duration = Duration::from_millis(100);

/// How long a sweep waits for live participants to finish linking timers before it leaves
/// the timers for a later sweep: a stretch takes nanoseconds, and the sweep holds the
/// wheel's run lock, so a stopped process must not make every timer run wait.
const SCHEDULERS_WAIT: Duration = Duration::from_micros(200);

/// What one sweep did (for tests and the counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sweep {
    pub(crate) writing_freed: usize,
    pub(crate) settling_undone: usize,
    pub(crate) tokens_restored: usize,
    pub(crate) timers_relinked: usize,
    pub(crate) pins_dropped: usize,
    /// Slots whose pins a dead participant and a live one may both hold: the pins are one
    /// count, so none is dropped, and the sweep is tried again (see `LEFT_SOME`).
    pub(crate) pins_kept: usize,
    /// Repairs left for a later sweep because a live process was in the way: a publish
    /// cut short whose id's dedup stripe it holds, or the timers, while it was linking one
    /// (see `LEFT_SOME`).
    pub(crate) deferred: usize,
}

/// Set in `recovered` by a sweep that left something (`Sweep::pins_kept`,
/// `Sweep::deferred`): the deaths it counts are recovered but for those, and the sweep is
/// tried again at each liveness check (not at each tick: a live delivery may keep a slot
/// ambiguous for as long as its lease, and a stopped process may keep a lock for good).
const LEFT_SOME: u64 = 1 << 63;

impl<C: Clock> Queue<C> {
    pub(super) fn recovery_words(&self) -> &RecoveryWords {
        &self.region.sections().shared.recovery
    }

    /// Notes a dead registration (found by a check or replaced by a registration).
    pub(super) fn note_deaths(&self, deaths: usize) {
        if deaths > 0 {
            self.recovery_words()
                .deaths
                .0
                .fetch_add(deaths as u64, Ordering::AcqRel);
        }
    }

    /// Called after a wheel run: checks liveness when that is due, and sweeps while deaths
    /// are unrecovered. Only for a shared region (a private one dies with its process).
    pub(super) fn recover_if_needed(&self, now: u64) {
        if self.trusted {
            return;
        }
        let words = self.recovery_words();
        let next_check = words.next_check.0.load(Ordering::Relaxed);
        let checked = now >= next_check
            && words
                .next_check
                .0
                .compare_exchange(
                    next_check,
                    now.saturating_add(super::nanos(LIVENESS_INTERVAL)),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        if checked {
            let participants = self.participants();
            let reaped = participants.reap_dead();
            // Also after a reaper that died before it cleared them (cheap: a few loads per
            // entry, every LIVENESS_INTERVAL).
            participants.clear_sleepers_of_free_entries();
            self.note_deaths(reaped);
            self.note_clock(now);
        }
        let deaths = words.deaths.0.load(Ordering::Acquire);
        let recovered = words.recovered.0.load(Ordering::Acquire);
        let left_some = recovered & LEFT_SOME != 0;
        if deaths != recovered & !LEFT_SOME || (left_some && checked) {
            if let Some(sweep) = self.wheel().with_run_lock(now, || self.sweep(now)) {
                self.note_swept(deaths, &sweep);
            }
        }
    }

    /// Records a sweep that started from `deaths` (see `LEFT_SOME`).
    pub(super) fn note_swept(&self, deaths: u64, sweep: &Sweep) {
        let left = sweep.pins_kept > 0 || sweep.deferred > 0;
        let mark = if left { LEFT_SOME } else { 0 };
        let recovered = &self.recovery_words().recovered.0;
        recovered.store(deaths | mark, Ordering::Release);
        // A sweep that only left things for later (tried again every liveness check while
        // a stopped process is in the way) repaired nothing: not counted.
        let repaired = Sweep {
            pins_kept: 0,
            deferred: 0,
            ..*sweep
        };
        if repaired != Sweep::default() {
            self.counters()
                .bump(crate::engine::counters::Counter::Recoveries);
        }
    }

    /// Repairs what dead participants left (see the module docs). Call it holding the
    /// wheel's run lock. What live processes were in the way of is counted in
    /// `Sweep::deferred`, to be tried again.
    pub(crate) fn sweep(&self, now: u64) -> Sweep {
        let mut sweep = Sweep::default();
        self.release_dead_owners(&mut sweep, false);
        self.drop_dead_pins(&mut sweep);
        self.relink_timers(now, &mut sweep);
        self.restore_tokens(&mut sweep);
        sweep
    }

    /// Slots in `Writing` or `Settling` whose owner is dead (all of them with
    /// `everyone_dead`: after a reboot, see `reboot`).
    pub(super) fn release_dead_owners(&self, sweep: &mut Sweep, everyone_dead: bool) {
        let store = self.store();
        let participants = self.participants();
        for slot in 0..store.capacity() {
            let Ok(word) = store.load(slot) else {
                continue;
            };
            let owner = OwnerTag(word.version);
            let dead = everyone_dead || !participants.tag_alive(owner);
            match word.state {
                State::Writing if dead => {
                    // Its id was recorded for dedup only after `written_at_generation`
                    // was set for this generation: forget it, so a retry is not refused.
                    // (A generated id was never recorded: nothing is found to forget.)
                    let meta = store.meta(slot).expect("slot in range");
                    let written = meta.written_at_generation.load(Ordering::Acquire);
                    let (id, published_at) = (
                        meta.id.load(Ordering::Relaxed),
                        meta.published_at.load(Ordering::Relaxed),
                    );
                    // Forgotten first, without waiting: this runs under the wheel's run lock,
                    // and a live process stopped holding the id's stripe would stop every
                    // timer with us. Locked, the slot waits for a later sweep.
                    let forgotten = written != u64::from(word.generation)
                        || self.dedup().is_none_or(|dedup| {
                            let id = crate::base::id::MessageId(id);
                            dedup.forget(id, published_at, Some(Duration::ZERO))
                        });
                    if !forgotten {
                        sweep.deferred += 1;
                        continue;
                    }
                    if let Ok(freed) = store.free_abandoned(slot, word) {
                        self.release_if_unpinned(slot, freed);
                        sweep.writing_freed += 1;
                    }
                }
                State::Settling | State::Taken if dead => {
                    // A slot taken from Ready or Dead (a kill, a redrive) may have no lease
                    // timer: the undo sets the bit and the timer is linked below
                    // (`relink_timers`), so the lease runs out and the message comes back.
                    let undone = store.undo(slot, word);
                    if undone.is_ok() {
                        sweep.settling_undone += 1;
                    }
                }
                _ => {}
            }
        }
    }

    /// Pins that no live participant may hold.
    fn drop_dead_pins(&self, sweep: &mut Sweep) {
        let registrations = self.registrations_now();
        self.drop_pins_none_of_these_hold(&registrations, sweep);
    }

    /// Every participant entry's registration token, and whether it is alive, now.
    fn registrations_now(&self) -> Vec<(u64, bool)> {
        let participants = self.participants();
        participants
            .tokens()
            .map(|token| (token, participants.is_alive(token)))
            .collect()
    }

    /// Drops the pins of slots that no participant may hold: neither a registration that
    /// `looked` found alive, nor one made since `looked` (its entry's token changed). A
    /// process that registers after the look may pin a slot before the walk reaches it: its
    /// pin then shows in the slot word, loaded after its registration, so its new token
    /// shows too.
    fn drop_pins_none_of_these_hold(&self, looked: &[(u64, bool)], sweep: &mut Sweep) {
        let store = self.store();
        let participants = self.participants();
        for slot in 0..store.capacity() {
            let Ok(word) = store.load(slot) else {
                continue;
            };
            if word.pins == 0 {
                continue;
            }
            let may_hold = participants
                .tokens()
                .zip(looked)
                .any(|(token, &(then, alive))| {
                    (alive || token != then) && participants.may_pin(token, slot)
                });
            if may_hold {
                // A dead participant's pin beside a live one's cannot be told apart: the
                // next sweep looks again, once the live one may have let go.
                let dead_may_hold =
                    participants
                        .tokens()
                        .zip(looked)
                        .any(|(token, &(then, alive))| {
                            !alive && token == then && participants.may_pin(token, slot)
                        });
                if dead_may_hold {
                    sweep.pins_kept += 1;
                }
                continue;
            }
            if let Ok(unpinned) = store.drop_pins(slot, word) {
                sweep.pins_dropped += usize::from(word.pins);
                self.release_if_unpinned(slot, unpinned);
            }
        }
    }

    /// Timer nodes a slot word says are in the wheel but no list holds.
    fn relink_timers(&self, now: u64, sweep: &mut Sweep) {
        let store = self.store();
        let mut marked = Vec::new();
        for slot in 0..store.capacity() {
            let Ok(word) = store.load(slot) else {
                continue;
            };
            if word.lease_timer {
                marked.push(node(slot, Timer::Lease));
            }
            if word.state == State::Delayed {
                marked.push(node(slot, Timer::Delay));
            }
        }
        // Live participants' linking in progress finishes (or their marks postdate ours).
        let participants = self.participants();
        let give_up = Instant::now() + SCHEDULERS_WAIT;
        for token in participants.live() {
            while !participants.scheduling_idle(token) {
                if Instant::now() >= give_up {
                    sweep.deferred += 1;
                    return;
                }
                std::thread::yield_now();
            }
        }
        let wheel = self.wheel();
        let linked = wheel.linked_nodes();
        for node in marked {
            if !linked.get(node as usize).copied().unwrap_or(true) {
                // Due now: when it fires, the slot's own deadline decides (it may refire).
                wheel.schedule(node, now);
                sweep.timers_relinked += 1;
            }
        }
        if sweep.timers_relinked > 0 {
            self.notify(Change::TimersMoved); // sleepers decided their naps without these
        }
    }

    /// Tokens missing from their ring.
    fn restore_tokens(&self, sweep: &mut Sweep) {
        use std::collections::HashSet;
        let held = |ring: crate::engine::index_ring::IndexRing<'_>| -> HashSet<u32> {
            ring.held_values().collect()
        };
        let (free, ready, dead) = (held(self.free()), held(self.ready()), held(self.dead()));
        let store = self.store();
        for slot in 0..store.capacity() {
            let Ok(word) = store.load(slot) else {
                continue;
            };
            let filed = token(slot, word.generation);
            let restored = match word.state {
                State::Ready if !ready.contains(&filed) => {
                    self.push_ready(slot, word.generation);
                    true
                }
                State::Free if word.pins == 0 && !free.contains(&filed) => {
                    self.push_free(filed); // and wakes a publisher waiting for room
                    true
                }
                State::Dead if !dead.contains(&filed) => {
                    self.file_dead(filed);
                    true
                }
                _ => false,
            };
            sweep.tokens_restored += usize::from(restored);
        }
    }
}

#[cfg(all(test, not(loom), not(miri)))]
impl<C: Clock> Queue<C> {
    /// Leaves what a publisher killed mid-publish leaves: a slot in `Writing` (tagged as
    /// ours) whose id is already recorded for dedup.
    pub(crate) fn cut_publish_short(&self, id: crate::base::id::MessageId) {
        let (slot, generation) = self.claim_free_slot().expect("a free slot");
        let meta = self.store().meta(slot).expect("slot in range");
        let now = self.now();
        meta.id.store(id.0, Ordering::Relaxed);
        meta.published_at.store(now, Ordering::Relaxed);
        meta.written_at_generation
            .store(u64::from(generation), Ordering::Release);
        self.dedup()
            .expect("dedup on")
            .record(id, now, None)
            .expect("a new id");
    }
}

#[cfg(all(test, not(loom), not(miri)))]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::base::id::MessageId;
    use crate::engine::slots::Word;
    use crate::liveness::SleepsOn;
    use crate::queue::slot_moves::{pop, split};
    use crate::queue::{PublishOptions, QueueConfig};

    /// A file-backed segment that is removed when dropped.
    struct TempSegment(std::path::PathBuf);

    impl TempSegment {
        fn new(test: &str) -> Self {
            Self(
                std::env::temp_dir()
                    .join(format!("ackring-recovery-{}-{test}", std::process::id())),
            )
        }
    }

    impl Drop for TempSegment {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A survivor that creates the segment (`capacity` slots, leases of `lease`) and a
    /// victim attached to it.
    fn survivor_and_victim(
        segment: &TempSegment,
        lease: Duration,
        capacity: u32,
    ) -> (Queue, Queue) {
        let config = QueueConfig {
            visibility_timeout: lease,
            dedup_capacity: 64,
            ..QueueConfig::new(capacity, 32)
        };
        let survivor = Queue::create_file(&segment.0, config).unwrap();
        let victim = Queue::open_file(&segment.0).unwrap();
        (survivor, victim)
    }

    fn with_id(id: u64) -> PublishOptions {
        PublishOptions {
            id: Some(MessageId(id)),
            ..PublishOptions::default()
        }
    }

    /// The sleepers counted now: (receivers, publishers).
    fn asleep(queue: &Queue) -> (u64, u64) {
        let stats = queue.stats();
        (stats.sleeping_receivers, stats.sleeping_publishers)
    }

    /// Threads of killed processes that were asleep on a signal stay counted until their
    /// deaths are reaped (by the liveness check, or by a registration that takes over the
    /// dead entry), which uncounts them. What they armed costs one wake-up call each
    /// signal, not one per publish (or ack).
    #[test]
    fn sleepers_killed_in_their_sleep_are_uncounted_when_their_deaths_are_reaped() {
        let segment = TempSegment::new("dead-sleepers");
        let survivor = Queue::create_file(&segment.0, QueueConfig::new(8, 32)).unwrap();
        let (ready, room) = (survivor.ready_signal(), survivor.room_signal());
        let victims = [(); 2].map(|()| Queue::open_file(&segment.0).unwrap());
        for victim in victims {
            // One of its threads went to sleep in a receive, one in a publish waiting for
            // room, and SIGKILL took the process.
            let participants = victim.participants();
            ready.count_a_sleeper(participants.sleeping(victim.participant, SleepsOn::Ready));
            room.count_a_sleeper(participants.sleeping(victim.participant, SleepsOn::Room));
            let token = victim.participant;
            std::mem::forget(victim);
            survivor.participants().forge_dead(token);
        }
        assert_eq!(asleep(&survivor), (2, 2));

        // A new handle takes over one dead entry, and the sleepers counted there.
        let newcomer = Queue::open_file(&segment.0).unwrap();
        assert_eq!(asleep(&survivor), (1, 1));
        // The liveness check reaps the other.
        survivor
            .recovery_words()
            .next_check
            .0
            .store(0, Ordering::Relaxed);
        survivor.recover_if_needed(survivor.now());
        assert_eq!(asleep(&survivor), (0, 0));

        let (woken_ready, woken_room) = (ready.wake_ups(), room.wake_ups());
        for _ in 0..3 {
            newcomer.try_publish(b"no one to wake").unwrap();
            newcomer.try_receive().unwrap().ack().unwrap();
        }
        assert_eq!(
            ready.wake_ups(),
            woken_ready + 1,
            "the first publish woke what the dead armed; the others made no call"
        );
        assert_eq!(room.wake_ups(), woken_room + 1, "so did the first ack");
    }

    /// A reaper killed between freeing a dead entry (its occupant CAS) and clearing the
    /// sleepers counted there leaves them in the entry: the next registration there clears
    /// them, and so does the liveness check while the entry stays free.
    #[test]
    fn sleepers_left_in_a_freed_entry_are_uncounted() {
        let segment = TempSegment::new("freed-sleepers");
        let survivor = Queue::create_file(&segment.0, QueueConfig::new(8, 32)).unwrap();
        let signal = survivor.ready_signal();
        let victims = [(); 2].map(|()| Queue::open_file(&segment.0).unwrap());
        for victim in victims {
            let participants = victim.participants();
            signal.count_a_sleeper(participants.sleeping(victim.participant, SleepsOn::Ready));
            let token = victim.participant;
            std::mem::forget(victim); // SIGKILL in its sleep
            survivor.participants().leave(token); // a reaper's occupant CAS, then it died
        }
        assert_eq!(asleep(&survivor).0, 2);

        let _newcomer = Queue::open_file(&segment.0).unwrap(); // takes one freed entry
        assert_eq!(asleep(&survivor).0, 1);
        survivor
            .recovery_words()
            .next_check
            .0
            .store(0, Ordering::Relaxed);
        survivor.recover_if_needed(survivor.now()); // the liveness check: the other
        assert_eq!(asleep(&survivor).0, 0);
    }

    /// A process that registers while a sweep runs, after the sweep looked at who is
    /// alive, keeps the pins it takes: the sweep must not count it among the dead.
    #[test]
    fn a_sweep_spares_the_pins_of_a_process_that_registered_during_it() {
        let segment = TempSegment::new("late-pin");
        let config = QueueConfig {
            dedup_capacity: 64,
            ..QueueConfig::new(8, 32)
        };
        let survivor = Queue::create_file(&segment.0, config).unwrap();
        let victim = Queue::open_file(&segment.0).unwrap();
        let token = victim.participant;
        std::mem::forget(victim); // SIGKILL: no destructor runs
        survivor.participants().forge_dead(token);

        let looked = survivor.registrations_now(); // the sweep's look at who is alive
        let newcomer = Queue::open_file(&segment.0).unwrap();
        newcomer.try_publish(b"held").unwrap();
        let delivery = newcomer.try_receive().unwrap(); // pins its slot
        let mut sweep = Sweep::default();
        survivor.drop_pins_none_of_these_hold(&looked, &mut sweep);
        assert_eq!(
            sweep.pins_dropped, 0,
            "the newcomer's pin was taken for dead"
        );
        delivery.ack().expect("the lease and its pin are intact");
    }

    /// A dead consumer's pin on a slot that a live consumer pins too (the message came
    /// back when the dead one's lease ran out, and was received again) cannot be told
    /// from the live one's: the sweep keeps both, and must look again later. Once the
    /// live delivery is acked, the next liveness check's sweep drops the dead pin and
    /// the slot is free again; a sweep that took the death as recovered would have left
    /// the slot out of use until some other process died.
    #[test]
    fn a_dead_pin_beside_a_live_one_is_dropped_once_the_live_one_is_gone() {
        let segment = TempSegment::new("kept-pin");
        let (survivor, victim) = survivor_and_victim(&segment, Duration::from_millis(20), 4);
        survivor.try_publish_with(b"m", with_id(1)).unwrap();
        std::mem::forget(victim.try_receive().unwrap()); // killed holding it
        let again = survivor
            .receive_timeout(Duration::from_secs(5))
            .expect("back when the dead lease ran out");
        assert_eq!(again.attempt(), 2);
        let token = victim.participant;
        std::mem::forget(victim); // SIGKILL: no destructor runs
        survivor.participants().forge_dead(token);

        let check_liveness_now = || {
            let next_check = &survivor.recovery_words().next_check.0;
            next_check.store(0, Ordering::Relaxed);
            survivor.recover_if_needed(survivor.now());
        };
        check_liveness_now(); // finds the death; the sweep keeps both pins
        let recovered = survivor
            .recovery_words()
            .recovered
            .0
            .load(Ordering::Acquire);
        assert_ne!(recovered & LEFT_SOME, 0, "the sweep kept a pin");
        again.ack().unwrap(); // the live pin goes; the dead one holds the freed slot
        survivor.recover_if_needed(survivor.now()); // not a liveness check: no sweep
        let full = (0..4).all(|n| survivor.try_publish_with(b"f", with_id(10 + n)).is_ok());
        assert!(!full, "the dead pin still holds its slot");
        while let Some(delivery) = survivor.try_receive() {
            delivery.ack().unwrap();
        }
        check_liveness_now(); // sweeps again: drops the dead pin
        let recovered = survivor
            .recovery_words()
            .recovered
            .0
            .load(Ordering::Acquire);
        assert_eq!(recovered & LEFT_SOME, 0, "recovered for good");
        for n in 0..4 {
            survivor.try_publish_with(b"f", with_id(20 + n)).unwrap();
        }
        assert!(survivor.try_publish(b"x").is_err(), "exactly the capacity");
    }

    /// A live process stopped between marking a timer due and linking it: a sweep waits
    /// for it only briefly, leaves the timers for later, and is not run again at every
    /// tick (it made every timer run wait), only at each liveness check, until it can
    /// finish.
    #[test]
    fn a_stuck_scheduling_mark_defers_the_timers_to_the_liveness_checks() {
        let segment = TempSegment::new("marks");
        let (survivor, victim) = survivor_and_victim(&segment, Duration::from_secs(30), 8);
        victim.cut_publish_short(MessageId(5));
        let token = victim.participant;
        std::mem::forget(victim);
        survivor.participants().forge_dead(token);
        survivor.begin_scheduling(); // and stopped there
        let check_liveness_now = || {
            let next_check = &survivor.recovery_words().next_check.0;
            next_check.store(0, Ordering::Relaxed);
            survivor.recover_if_needed(survivor.now());
        };
        let recovered = || {
            survivor
                .recovery_words()
                .recovered
                .0
                .load(Ordering::Acquire)
        };
        check_liveness_now();
        assert_ne!(recovered() & LEFT_SOME, 0, "the timers were left for later");
        let recoveries = survivor.stats().recoveries;
        // A tick, not a check (however slowly this test runs): no sweep.
        let next_check = &survivor.recovery_words().next_check.0;
        next_check.store(u64::MAX, Ordering::Relaxed);
        survivor.recover_if_needed(survivor.now());
        assert_eq!(survivor.stats().recoveries, recoveries);
        survivor.end_scheduling();
        check_liveness_now();
        assert_eq!(recovered() & LEFT_SOME, 0, "recovered for good");
    }

    /// A publish cut short whose id's dedup stripe a live process holds (stopped
    /// mid-record): the sweep, under the run lock, does not wait for it. It leaves that
    /// slot for a later sweep, which frees it and forgets the id once the holder lets go.
    #[test]
    fn a_sweep_leaves_a_stripe_a_live_process_holds_for_a_later_sweep() {
        let segment = TempSegment::new("stripe");
        let (survivor, victim) = survivor_and_victim(&segment, Duration::from_secs(30), 8);
        let id = MessageId(100);
        victim.cut_publish_short(id);
        let dedup = survivor.dedup().unwrap();
        dedup.hold_stripe_of(id, survivor.participant); // live, and stopped mid-record
        let token = victim.participant;
        std::mem::forget(victim);
        survivor.participants().forge_dead(token);
        assert_eq!(survivor.participants().reap_dead(), 1);
        let now = survivor.now();
        let started = Instant::now();
        let sweep = survivor.wheel().with_run_lock(now, || survivor.sweep(now));
        let sweep = sweep.expect("the run lock is free");
        assert!(started.elapsed() < crate::engine::dedup::LOCK_PATIENCE);
        assert_eq!((sweep.writing_freed, sweep.deferred), (0, 1));
        dedup.hold_stripe_of(id, 0); // it lets go
        let sweep = survivor.wheel().with_run_lock(now, || survivor.sweep(now));
        let sweep = sweep.expect("the run lock is free");
        assert_eq!((sweep.writing_freed, sweep.deferred), (1, 0));
        survivor
            .try_publish_with(b"retried", with_id(100))
            .expect("the id of the publish cut short was forgotten");
    }

    /// A process killed in the middle of each operation leaves each of the things recovery
    /// repairs; one sweep by a survivor repairs them all, and afterwards every message is
    /// delivered and every slot is usable again.
    #[test]
    fn a_sweep_repairs_everything_a_killed_process_left_half_done() {
        let segment = TempSegment::new("sweep");
        let (survivor, victim) = survivor_and_victim(&segment, Duration::from_millis(50), 8);

        // 1. Killed mid-publish, after recording its id for dedup.
        victim.cut_publish_short(MessageId(100));

        // 2. Killed between popping a ready token and leasing its message.
        survivor
            .try_publish_with(b"token lost", with_id(1))
            .unwrap();
        pop(victim.ready()).expect("the token of message 1");

        // 3. Killed holding a delivery (leased, payload pinned).
        survivor.try_publish_with(b"held", with_id(2)).unwrap();
        std::mem::forget(victim.try_receive().unwrap());

        // 4. Killed mid-nack (Settling).
        survivor.try_publish_with(b"settling", with_id(3)).unwrap();
        let delivery = victim.try_receive().unwrap();
        let settling = delivery.slot;
        let leased = victim.store().load(settling).unwrap();
        std::mem::forget(delivery);
        victim
            .store()
            .begin_settle(settling, leased.generation, victim.owner_tag.0)
            .unwrap();

        // 5. Killed between marking a lease timer due and linking it.
        survivor
            .try_publish_with(b"timer lost", with_id(4))
            .unwrap();
        let (slot, _) = split(pop(victim.ready()).unwrap());
        let ready = victim.store().load(slot).unwrap();
        assert!(!ready.lease_timer, "a fresh slot has no timer yet");
        let meta = victim.store().meta(slot).unwrap();
        meta.set_attempts(1);
        meta.due_at.store(victim.now(), Ordering::Relaxed);
        let leased = Word {
            state: State::Leased,
            generation: ready.generation.wrapping_add(1),
            lease_timer: true,
            ..ready
        };
        victim.store().force(slot, ready, leased).unwrap();

        // 6. Killed taking a lease: the slot moved to Taken with the lease's pin and
        //    timer bit, its deadline and attempt count not yet written, its timer unlinked.
        //    Its slot held an earlier message whose lease was extended far ahead: that
        //    deadline must not become this lease's (a publish clears it).
        for slot in 0..victim.store().capacity() {
            if victim.store().load(slot).unwrap().state == State::Free {
                let meta = victim.store().meta(slot).unwrap();
                meta.due_at.store(u64::MAX / 2, Ordering::Relaxed);
            }
        }
        survivor.try_publish_with(b"taking", with_id(5)).unwrap();
        let (slot, _) = split(pop(victim.ready()).unwrap());
        let ready = victim.store().load(slot).unwrap();
        victim.mark_pin(slot);
        victim.begin_scheduling();
        victim
            .store()
            .take_to_lease(slot, ready, ready.generation, victim.owner_tag.0, true)
            .unwrap();

        // 7. Killed dead-lettering an expired message found on receive: taken from Ready
        //    into Taken, with no lease timer (a fresh slot has none).
        survivor.try_publish_with(b"dying", with_id(6)).unwrap();
        let (slot, generation_bits) = split(pop(victim.ready()).unwrap());
        let ready = victim.store().load(slot).unwrap();
        assert_eq!(ready.generation as u8, generation_bits);
        assert!(!ready.lease_timer);
        victim
            .take(slot, State::Ready, ready.generation)
            .expect("ours to take");

        // 8. Killed by a timer run taking an expired message off the head of the queue:
        //    taken from Ready into Taken. It must die as expired, not be delivered.
        let dying_now = PublishOptions {
            ttl: Some(Duration::from_nanos(1)),
            ..with_id(7)
        };
        survivor.try_publish_with(b"expired", dying_now).unwrap();
        let (slot, _) = split(pop(victim.ready()).unwrap());
        let ready = victim.store().load(slot).unwrap();
        victim
            .take(slot, State::Ready, ready.generation)
            .expect("ours to take");

        // SIGKILL: no destructor runs.
        let token = victim.participant;
        std::mem::forget(victim);
        survivor.participants().forge_dead(token);

        assert_eq!(survivor.participants().reap_dead(), 1);
        let now = survivor.now();
        let sweep = survivor
            .wheel()
            .with_run_lock(now, || survivor.sweep(now))
            .expect("the run lock is free");
        assert_eq!(
            sweep,
            Sweep {
                writing_freed: 1,
                settling_undone: 4,
                tokens_restored: 1,
                timers_relinked: 4,
                pins_dropped: 3,
                pins_kept: 0,
                deferred: 0,
            }
        );

        // Every message comes back (2 to 6 once their leases run out), once each.
        let mut received = Vec::new();
        while received.len() < 6 {
            let delivery = survivor
                .receive_timeout(Duration::from_secs(5))
                .expect("every message comes back within its lease");
            received.push(delivery.id().0);
            delivery.ack().unwrap();
        }
        received.sort_unstable();
        assert_eq!(received, [1, 2, 3, 4, 5, 6]);
        assert!(survivor.try_receive().is_none());
        // 8 came back only to die: its lease ran out past its TTL.
        let letter = survivor.pop_dead_letter().expect("the expired message");
        assert_eq!(
            (letter.id, letter.reason),
            (MessageId(7), crate::queue::DeadReason::Expired)
        );

        // The killed publish never returned Ok: its id may be published again.
        survivor.try_publish_with(b"retried", with_id(100)).unwrap();
        survivor.try_receive().unwrap().ack().unwrap();
        // And no slot leaked: the queue fills to its capacity.
        for n in 0..8 {
            survivor
                .try_publish_with(b"fill", with_id(200 + n))
                .unwrap();
        }
        assert!(survivor.try_publish(b"one too many").is_err());
    }
}
