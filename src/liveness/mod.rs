//! Who is attached to a queue, and whether they are still alive.
//!
//! A region holds a table of [`PARTICIPANTS`] entries. Each queue handle registers in one
//! and leaves it when dropped; a process killed with SIGKILL leaves its entry behind, which
//! any later registration may reclaim once its owner is dead. Registering bumps the entry's
//! epoch, and a handle's *token* is `epoch << 16 | entry index + 1`: a token names one
//! registration, so a token of a dead registration never comes alive again when its entry
//! is reused.
//!
//! Locks in the region (a dedup stripe, the wheel's ticker) hold their holder's token, so a
//! process that finds a lock held too long can ask [`Participants::is_alive`] and break the
//! lock of a dead holder instead of waiting for ever.
//!
//! # Entry layout (one 64-byte line each)
//!
//! | word | field        | written by                                         |
//! |------|--------------|----------------------------------------------------|
//! | 0    | `occupant`   | the registering process: its identity ([`Occupant`]): pid in bits 0..22, the registration's incarnation (low 10 bits of its epoch) in bits 22..32, start time (`/proc/PID/stat` field 22, clock ticks after boot) modulo 2^32 above, which tells a live process from a later one that reused the pid; CAS from 0 or from a dead registration's identity, CAS back to 0 when it leaves; a reaper CASes a dead registration's identity to 0 |
//! | 1    | `epoch`      | the winner of the `occupant` CAS: bumped at each registration |
//! | 2    | `scheduling` | the participant: timers it is between marking due and linking into the wheel (see `queue::recovery`) |
//! | 3    | `sleeping`   | the registering process sets the top 16 bits to its epoch's low 16 bits; the participant counts its threads asleep on the ready signal in bits 0..24 and those asleep on the room signal in bits 24..48 (see `wait`); whoever reaps its death clears them (a CAS, only while the epoch bits are still its), as does the liveness check for counts left in a free entry (a CAS from the word it read between two looks that found the entry free); a registration starts them at zero; only `Queue::stats` reads them (waking does not: see `wait`) |
//! | 8..  | `pin_marks`  | the participant: [`PIN_MARKS`] counters; `pin_marks[slot % PIN_MARKS]` counts the payload pins it holds or is about to take on such slots (see `queue::recovery`) |
//!
//! A participant is alive when its pid names a running process with the recorded start
//! time (one word, so a reaper's CAS frees an entry only from the very process it judged
//! dead); a start time not known when it registered (0) matches any. A zombie is dead
//! unless only its main thread has ended (`pthread_exit`) and another of its threads still
//! runs. A pid that `/proc` does not list is dead only if `kill(pid, 0)` finds no process
//! either (a `/proc` mounted with `hidepid` hides other users' processes; a hidden process
//! that reuses a dead registration's pid then keeps its entry until it exits too).
//! Whatever cannot be told counts as alive. Values are checked like any other segment
//! data: an id out of range or a zero pid is simply not alive.
//!
//! # Owner tags
//!
//! A slot in a state only its owner may leave (`Writing`, `Taken`, `Settling`) carries a 16-bit
//! [`OwnerTag`] of the owner's registration in its state word, so recovery can tell an owner
//! that died there from one still at work.

#[cfg(not(loom))]
pub(crate) mod host;
mod process;

use crate::base::sync::{AtomicU64, Ordering};
use crate::base::table::Table;
use process::{this_process, Occupant};

/// Entries in a region's table: the most handles attached at once.
pub(crate) const PARTICIPANTS: usize = 64;

/// Pin counters per participant (see the entry layout).
pub(crate) const PIN_MARKS: usize = 256;

/// One table entry.
#[repr(C, align(64))]
pub(crate) struct Participant {
    occupant: AtomicU64,
    epoch: AtomicU64,
    scheduling: AtomicU64,
    sleeping: AtomicU64,
    _reserved: [AtomicU64; 4],
    pin_marks: [AtomicU64; PIN_MARKS],
}

impl Default for Participant {
    fn default() -> Self {
        Self {
            occupant: AtomicU64::default(),
            epoch: AtomicU64::default(),
            scheduling: AtomicU64::default(),
            sleeping: AtomicU64::default(),
            _reserved: std::array::from_fn(|_| AtomicU64::default()),
            pin_marks: std::array::from_fn(|_| AtomicU64::default()),
        }
    }
}

/// A registration in 16 bits, for a slot's state word: entry index + 1 in the low 7 bits,
/// the low 9 bits of the epoch above. (A registration's epoch bits repeat every 512
/// registrations of one entry; a tag is only asked about while its slot is stuck, so a
/// repeat would only postpone recovery of that slot to the next registration.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OwnerTag(pub(crate) u16);

impl OwnerTag {
    /// The tag of the registration `token`.
    pub(crate) fn of(token: u64) -> Self {
        Self(((token >> ID_BITS) as u16 & 0x1ff) << 7 | (token & 0x7f) as u16)
    }
}

/// Bits of a token that hold the entry index + 1.
const ID_BITS: u32 = 16;

/// Bits of a `sleeping` word that count sleepers; the epoch's low 16 bits sit above them.
const SLEEPER_BITS: u32 = 48;

/// Bits of each of the two counts in those (ready below, room above): 16 million threads
/// of one process asleep on one signal at once.
const COUNT_BITS: u32 = 24;

/// One count, shifted down.
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// What a sleeping thread waits for; each has its own signal and its own count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SleepsOn {
    /// A message to receive (the ready signal).
    Ready,
    /// A free slot to publish into (the room signal).
    Room,
}

impl SleepsOn {
    /// Where its count sits in a `sleeping` word.
    fn shift(self) -> u32 {
        match self {
            Self::Ready => 0,
            Self::Room => COUNT_BITS,
        }
    }
}

/// An entry's count of its threads asleep on one signal (in its `sleeping` word; see
/// `wait`).
#[derive(Clone, Copy)]
pub(crate) struct SleeperCount<'r> {
    word: &'r AtomicU64,
    shift: u32,
}

impl<'r> SleeperCount<'r> {
    fn of(word: &'r AtomicU64, on: SleepsOn) -> Self {
        Self {
            word,
            shift: on.shift(),
        }
    }

    /// A count in a word of the caller's (for tests of `wait` alone).
    #[cfg(test)]
    pub(crate) fn standalone(word: &'r AtomicU64) -> Self {
        Self::of(word, SleepsOn::Ready)
    }

    /// Counts a thread in. SeqCst, as every access to the count while processes use it
    /// (a reboot's reset aside), so a reaper's clearing CAS and the sleepers' counting are
    /// in one order.
    pub(crate) fn count_in(&self) {
        self.word.fetch_add(1 << self.shift, Ordering::SeqCst);
    }

    /// Undoes [`count_in`](Self::count_in). A count already at zero (cleared under a live
    /// thread, which only a wrong verdict of death could do) stays at zero rather than
    /// borrow from the bits above it.
    pub(crate) fn count_out(&self) {
        let _ = self
            .word
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |word| {
                ((word >> self.shift) & COUNT_MASK != 0).then(|| word - (1 << self.shift))
            });
    }

    /// Threads counted now (whichever registration's: a dead one's until it is cleared).
    pub(crate) fn count(&self) -> u64 {
        (self.word.load(Ordering::SeqCst) >> self.shift) & COUNT_MASK
    }
}

/// A `sleeping` word of the registration of `epoch`, with no sleeper counted.
fn no_sleepers(epoch: u64) -> u64 {
    (epoch & 0xffff) << SLEEPER_BITS
}

/// Clears the sleepers counted for the dead registration of `epoch` in its entry's
/// `sleeping` word. The occupant CAS that reaped it has freed the entry already, so a new
/// registration may have cleared them (then the word carries the new epoch) and may count
/// sleepers of its own: never cleared here, they carry its epoch.
fn clear_sleepers(word: &AtomicU64, epoch: u64) {
    // A dead registration's word no longer changes; only a process writing garbage would
    // keep it moving, so a few tries are enough.
    for _ in 0..8 {
        let seen = word.load(Ordering::SeqCst);
        if seen >> SLEEPER_BITS != epoch & 0xffff || seen == no_sleepers(epoch) {
            return;
        }
        if word
            .compare_exchange(seen, no_sleepers(epoch), Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return;
        }
    }
}

fn token(id: u64, epoch: u64) -> u64 {
    (epoch & 0xffff) << ID_BITS | id
}

/// A new registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Registration {
    /// Names it in locks and liveness questions.
    pub(crate) token: u64,
    /// It took over the entry of a dead registration (so something may need recovering).
    pub(crate) replaced_dead: bool,
}

/// An entry's registration, judged dead by a reaper: the process that held the entry and
/// the registration's epoch.
#[derive(Clone, Copy, Debug)]
struct Dead {
    occupant: Occupant,
    epoch: u64,
}

/// The registration in `entry`, if it is dead.
fn judge(entry: &Participant) -> Option<Dead> {
    let occupant = Occupant::read(entry);
    if occupant == Occupant::FREE || occupant.runs() {
        return None;
    }
    // Read after the occupant: its epoch, unless the entry changed hands since, and then
    // the CAS in `free_dead` fails.
    let epoch = entry.epoch.load(Ordering::Acquire);
    Some(Dead { occupant, epoch })
}

/// Frees `entry` of the registration judged `dead`, if that process still holds it, and
/// clears its threads still counted asleep. `false` when someone took the entry first (a
/// registration, or another reaper: each dead registration is reaped once).
fn free_dead(entry: &Participant, dead: Dead) -> bool {
    let freed = entry
        .occupant
        .compare_exchange(dead.occupant.0, 0, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok();
    if freed {
        clear_sleepers(&entry.sleeping, dead.epoch);
    }
    freed
}

/// The participant table of a region.
#[derive(Clone, Copy)]
pub(crate) struct Participants<'r> {
    entries: Table<'r, Participant>,
}

impl<'r> Participants<'r> {
    pub(crate) fn new(entries: Table<'r, Participant>) -> Self {
        Self { entries }
    }

    /// Registers this process; its token is never 0 and at most 32 bits. `None` when every
    /// entry is held by a live process.
    pub(crate) fn register(&self) -> Option<Registration> {
        let me = this_process();
        self.entries.iter().enumerate().find_map(|(index, entry)| {
            let replaced = Self::take(entry, me)?;
            Some(Self::complete(index, entry, replaced))
        })
    }

    /// Takes `entry` for `me` if it is free or its registration is dead. Returns the
    /// occupant replaced ([`Occupant::FREE`] for a free entry).
    fn take(entry: &Participant, me: Occupant) -> Option<Occupant> {
        let seen = Occupant::read(entry);
        let free = seen == Occupant::FREE || !seen.runs();
        // The epoch this registration will most likely get (a registration between this
        // read and our CAS moves it on, and then tags itself with a later one): a later
        // registration of our pid in this entry reads at least our epoch, so its tag
        // differs from ours (for the next 1023 registrations of the entry).
        let incarnation = entry.epoch.load(Ordering::Acquire).wrapping_add(1);
        let taken = free
            && entry
                .occupant
                .compare_exchange(
                    seen.0,
                    me.in_registration(incarnation).0,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok();
        taken.then_some(seen)
    }

    /// Finishes the registration in the entry at `index`, which [`take`](Self::take) took
    /// from `replaced`.
    fn complete(index: usize, entry: &Participant, replaced: Occupant) -> Registration {
        // Only the winner of the occupant CAS moves the epoch. A reaper that reads the
        // epoch before it moves cannot free the entry: its CAS expects the dead occupant.
        let replaced_epoch = entry.epoch.load(Ordering::Acquire);
        let epoch = replaced_epoch.wrapping_add(1);
        // A dead registration's counts are garbage: start from zero (nothing of ours is
        // asleep, scheduled or pinned yet).
        entry.sleeping.store(no_sleepers(epoch), Ordering::SeqCst);
        entry.scheduling.store(0, Ordering::Relaxed);
        for mark in &entry.pin_marks {
            mark.store(0, Ordering::Relaxed);
        }
        // Release: the counts cleared above come before the new token appears.
        entry.epoch.store(epoch, Ordering::Release);
        Registration {
            token: token(index as u64 + 1, epoch),
            replaced_dead: replaced != Occupant::FREE,
        }
    }

    /// Frees the entries of dead registrations and clears their sleeper counts; returns how
    /// many it freed. (Each dead registration is reaped once: by this CAS or by a
    /// [`register`](Self::register) that reclaims it.)
    pub(crate) fn reap_dead(&self) -> usize {
        self.entries
            .iter()
            .filter(|entry| judge(entry).is_some_and(|dead| free_dead(entry, dead)))
            .count()
    }

    /// Clears the sleeper counts left in free entries: a reaper killed between freeing an
    /// entry and clearing its counts leaves them there. The word is cleared only if it has
    /// not changed since it was read between two looks that found the entry free: a
    /// registration in between moved its epoch bits, and a live registration leaves only
    /// once its sleepers are gone.
    pub(crate) fn clear_sleepers_of_free_entries(&self) {
        for entry in self.entries.iter() {
            if Occupant::read(entry) != Occupant::FREE {
                continue;
            }
            let word = entry.sleeping.load(Ordering::SeqCst);
            let cleared = no_sleepers(word >> SLEEPER_BITS);
            if word != cleared && Occupant::read(entry) == Occupant::FREE {
                let _ = entry.sleeping.compare_exchange(
                    word,
                    cleared,
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                );
            }
        }
    }

    /// After a reboot (see `queue::reboot`): every registration belonged to the ended boot,
    /// and a pid and start time from then may name an unrelated process now, so every entry
    /// is freed outright. Epochs stay, so the next registration of an entry gets a token
    /// (and owner tag) that no slot or lock of the old boot carries.
    pub(crate) fn forget_previous_boot(&self) {
        for entry in self.entries.iter() {
            entry.scheduling.store(0, Ordering::Relaxed);
            entry.sleeping.store(0, Ordering::Relaxed);
            for mark in &entry.pin_marks {
                mark.store(0, Ordering::Relaxed);
            }
            entry.occupant.store(0, Ordering::Release);
        }
    }

    /// Whether the registration tagged `tag` may still be running (false only when it is
    /// certainly dead: its entry was reused, left, or names a dead process).
    pub(crate) fn tag_alive(&self, tag: OwnerTag) -> bool {
        let index = usize::from(tag.0 & 0x7f);
        let Some(entry) = index.checked_sub(1).and_then(|i| self.entries.get(i)) else {
            return false;
        };
        let epoch = entry.epoch.load(Ordering::Acquire);
        if (epoch & 0x1ff) as u16 != tag.0 >> 7 {
            return false;
        }
        self.is_alive(token(index as u64, epoch))
    }

    /// Marks that the registration `token` is about to schedule a timer (see
    /// `queue::recovery`); [`end_scheduling`](Self::end_scheduling) once it is linked.
    pub(crate) fn begin_scheduling(&self, token: u64) {
        if let Some(entry) = self.entry(token) {
            entry.scheduling.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub(crate) fn end_scheduling(&self, token: u64) {
        if let Some(entry) = self.entry(token) {
            entry.scheduling.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Counts a pin the registration `token` is about to take on `slot` (before the CAS
    /// that takes it).
    pub(crate) fn mark_pin(&self, token: u64, slot: u32) {
        if let Some(entry) = self.entry(token) {
            entry.pin_marks[slot as usize % PIN_MARKS].fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Uncounts a pin on `slot` (after the CAS that dropped it, or that failed to take it).
    pub(crate) fn unmark_pin(&self, token: u64, slot: u32) {
        if let Some(entry) = self.entry(token) {
            entry.pin_marks[slot as usize % PIN_MARKS].fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Every entry's current registration token, in entry order, whoever holds it (a live
    /// process, a dead one, or none).
    pub(crate) fn tokens(&self) -> impl Iterator<Item = u64> + 'r {
        let entries = self.entries;
        entries
            .iter()
            .enumerate()
            .map(|(index, entry)| token(index as u64 + 1, entry.epoch.load(Ordering::Acquire)))
    }

    /// The live registrations' tokens.
    pub(crate) fn live(&self) -> Vec<u64> {
        self.tokens()
            .filter(|&token| self.is_alive(token))
            .collect()
    }

    /// Whether the registration `token` has nothing between marking and linking a timer.
    pub(crate) fn scheduling_idle(&self, token: u64) -> bool {
        self.entry(token)
            .is_none_or(|entry| entry.scheduling.load(Ordering::Acquire) == 0)
    }

    /// The count of threads asleep on the signal `on` in the entry of the registration
    /// `token` (this process's: its entry is in range; out of range would read as the last).
    pub(crate) fn sleeping(&self, token: u64, on: SleepsOn) -> SleeperCount<'r> {
        let index = ((token & 0xffff).max(1) - 1) as usize;
        self.sleepers_in(index.min(self.entries.len().saturating_sub(1)), on)
            .expect("a region has participant entries")
    }

    /// The count of threads asleep on the signal `on` in the entry at `index`.
    pub(crate) fn sleepers_in(&self, index: usize, on: SleepsOn) -> Option<SleeperCount<'r>> {
        let entries = self.entries;
        let entry = entries.get(index)?;
        Some(SleeperCount::of(&entry.sleeping, on))
    }

    /// Threads counted asleep on the signal `on`, over every entry.
    pub(crate) fn sleepers(&self, on: SleepsOn) -> u64 {
        self.entries
            .iter()
            .map(|entry| SleeperCount::of(&entry.sleeping, on).count())
            .sum()
    }

    /// Whether the registration `token` may hold a pin on `slot`.
    pub(crate) fn may_pin(&self, token: u64, slot: u32) -> bool {
        self.entry(token).is_some_and(|entry| {
            entry.pin_marks[slot as usize % PIN_MARKS].load(Ordering::Acquire) != 0
        })
    }

    /// Gives up the registration `token` (this process's): a CAS from the identity its
    /// entry holds, only if that has this process's pid (as stored when it registered,
    /// whatever a fresh read of its start time would say).
    pub(crate) fn leave(&self, token: u64) {
        if let Some(entry) = self.entry(token) {
            let held = Occupant::read(entry);
            if held.pid() == std::process::id() {
                let _ =
                    entry
                        .occupant
                        .compare_exchange(held.0, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }

    /// The entry a token names, if the token is of the entry's current registration.
    fn entry(&self, token: u64) -> Option<&'r Participant> {
        let entries = self.entries;
        let index = usize::try_from((token & 0xffff).checked_sub(1)?).ok()?;
        let entry = entries.get(index)?;
        let current = entry.epoch.load(Ordering::Acquire) & 0xffff;
        (token >> ID_BITS == current).then_some(entry)
    }

    /// Whether the registration `token` belongs to a running process (the one that
    /// registered, not a later one with its pid).
    pub(crate) fn is_alive(&self, token: u64) -> bool {
        self.entry(token)
            .is_some_and(|entry| Occupant::read(entry).runs())
    }

    /// Makes the registration `token` look like a process killed with SIGKILL: its entry
    /// names a process that has exited.
    #[cfg(all(test, not(loom), not(miri)))]
    pub(crate) fn forge_dead(&self, token: u64) {
        let entry = self.entry(token).expect("a live registration");
        entry.occupant.store(exited_process().0, Ordering::Release);
    }

    /// Registers the process `pid` (not this one) as if it had opened the queue; returns
    /// its token.
    #[cfg(all(test, not(miri)))]
    pub(crate) fn register_other(&self, pid: u32) -> u64 {
        let who = Occupant::new(pid, process::look_up(pid).start_time());
        let mut entries = self.entries.iter().enumerate();
        entries
            .find_map(|(index, entry)| {
                let replaced = Self::take(entry, who)?;
                Some(Self::complete(index, entry, replaced).token)
            })
            .expect("a free entry")
    }

    /// The pid of the registration `token`'s process, while it holds its entry.
    pub(crate) fn pid_of(&self, token: u64) -> Option<u32> {
        self.entry(token).map(|entry| Occupant::read(entry).pid())
    }

    /// The pids of the participants `/proc` shows running with the identity they
    /// registered ([`live_pids`](Self::live_pids) also counts those it cannot tell of).
    #[cfg(not(loom))]
    pub(crate) fn seen_running_pids(&self) -> Vec<u32> {
        self.tokens()
            .filter_map(|token| self.entry(token).map(Occupant::read))
            .filter(|occupant| *occupant != Occupant::FREE && occupant.seen_running())
            .map(Occupant::pid)
            .collect()
    }

    /// The pids of the live participants.
    pub(crate) fn live_pids(&self) -> Vec<u32> {
        self.entries
            .iter()
            .enumerate()
            .map(|(index, entry)| token(index as u64 + 1, entry.epoch.load(Ordering::Acquire)))
            .filter(|&token| self.is_alive(token))
            .filter_map(|token| Some(Occupant::read(self.entry(token)?).pid()))
            .collect()
    }
}

#[cfg(not(loom))]
/// This process's pid and start time (clock ticks after boot; 0 if it could not be read),
/// for names that say who made a file.
pub(crate) fn this_process_identity() -> (u32, u64) {
    let pid = std::process::id();
    (pid, process::look_up(pid).start_time().unwrap_or(0))
}

#[cfg(not(loom))]
/// Whether the process `pid` that started at `start_time` may still run (for a start time
/// of 0, not known: whether any process has the pid). When `/proc` cannot tell: yes.
pub(crate) fn may_run(pid: u32, start_time: u64) -> bool {
    match process::look_up(pid) {
        process::Seen::Running { start_time: now } => start_time == 0 || now == start_time,
        process::Seen::Gone => false,
        process::Seen::Unknown => true,
    }
}

/// The identity of a process that has exited: one spawned and waited for.
#[cfg(all(test, not(loom), not(miri)))]
fn exited_process() -> Occupant {
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let pid = child.id();
    let started = process::look_up(pid).start_time();
    child.wait().expect("wait for true");
    Occupant::new(pid, Some(started.unwrap_or(1)))
}

#[cfg(all(test, not(loom)))]
mod tests {
    #[cfg(not(miri))]
    #[test]
    fn a_killed_process_is_gone_before_its_parent_reaps_it() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(
            matches!(
                super::process::look_up(pid),
                super::process::Seen::Running { .. }
            ),
            "a running process has a start time"
        );
        child.kill().unwrap();
        // Not reaped yet: a zombie, which the kernel marks so once the signal is handled.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while super::process::look_up(pid) != super::process::Seen::Gone {
            assert!(
                std::time::Instant::now() < give_up,
                "a zombie counted as alive"
            );
            std::thread::yield_now();
        }
        child.wait().unwrap();
    }

    /// What `/proc` does not list (as under `hidepid`, for another user's process) is gone
    /// only if no signal can reach it either.
    #[cfg(not(miri))]
    #[test]
    fn a_process_missing_from_proc_is_gone_only_if_no_signal_reaches_it() {
        assert_eq!(
            super::process::unlisted(std::process::id()),
            super::process::Seen::Unknown
        );
        assert_eq!(
            super::process::unlisted(1),
            super::process::Seen::Unknown,
            "init always runs"
        );
        let exited = super::exited_process();
        assert_eq!(
            super::process::unlisted(exited.pid()),
            super::process::Seen::Gone
        );
    }

    use super::*;

    fn table(n: usize) -> Vec<Participant> {
        (0..n).map(|_| Participant::default()).collect()
    }

    /// Registrations of live processes are never reaped, whenever the reaper looks: not
    /// while a registration is half done (occupant taken, epoch not yet moved on), nor while
    /// the entry changes hands under the reaper.
    #[test]
    #[cfg_attr(miri, ignore = "threads racing for many rounds")]
    fn a_reaper_racing_registrations_never_reaps_a_live_one() {
        let entries = table(2);
        let participants = Participants::new(Table::new(&entries));
        let stop = std::sync::atomic::AtomicBool::new(false);
        let reaped = std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(registration) = participants.register() {
                            participants.leave(registration.token);
                        }
                    }
                });
            }
            let reaper = s.spawn(|| {
                let mut reaped = 0;
                for _ in 0..1_000_000 {
                    reaped += participants.reap_dead();
                }
                reaped
            });
            let reaped = reaper.join().unwrap();
            stop.store(true, Ordering::Relaxed);
            reaped
        });
        assert_eq!(reaped, 0, "registrations of this live process were reaped");
    }

    /// A reaper frees an entry only while the very process it judged dead holds it, not
    /// once a later process with the same pid has registered there: with the pid alone in
    /// the word the reaper compares, that live registration would be freed under it (and
    /// recovery would then treat its leases, pins and locks as a dead process's).
    #[test]
    #[cfg(not(miri))]
    fn a_reaper_never_frees_a_later_registration_of_a_reused_pid() {
        let entries = table(1);
        let participants = Participants::new(Table::new(&entries));
        // An earlier process with this process's pid, now gone: another start time.
        let me = this_process();
        let earlier = Occupant::new(me.pid(), Some(u64::from(me.started()) + 1));
        entries[0].occupant.store(earlier.0, Ordering::Relaxed);
        let dead = judge(&entries[0]).expect("the earlier process is dead");
        // Between the reaper's judgement and its CAS, this process takes the entry.
        let registration = participants.register().unwrap();
        assert!(registration.replaced_dead);
        assert!(participants.is_alive(registration.token));
        assert!(
            !free_dead(&entries[0], dead),
            "a live registration was freed"
        );
        assert!(participants.is_alive(registration.token));
        assert_eq!(participants.reap_dead(), 0);
    }

    /// The same when neither process's start time was known (a `/proc` it could not
    /// read): the registrations' incarnations tell them apart (the test fails when the
    /// reaper's CAS compares pid and start time alone).
    #[test]
    #[cfg(not(miri))]
    fn a_reaper_never_frees_a_later_registration_of_a_reused_pid_with_unknown_start_times() {
        let entries = table(1);
        let unknown = Occupant::new(exited_process().pid(), None);
        let (earlier, epoch) = (unknown.in_registration(1), 1);
        entries[0].occupant.store(earlier.0, Ordering::Relaxed);
        entries[0].epoch.store(epoch, Ordering::Relaxed);
        let dead = judge(&entries[0]).expect("the earlier process is gone");
        // Before the reaper's CAS, a new process with that pid registers there.
        let replaced = Participants::take(&entries[0], unknown).expect("a dead entry");
        assert_eq!(replaced, earlier);
        Participants::complete(0, &entries[0], replaced);
        assert_ne!(Occupant::read(&entries[0]), earlier, "told apart");
        assert!(
            !free_dead(&entries[0], dead),
            "a later registration of the pid was freed"
        );
    }

    /// A forged entry naming a running process (this one) with start time 0 ("not
    /// known") does not pass for it: it would hold its locks and leases for ever.
    #[test]
    #[cfg(not(miri))]
    fn a_start_time_of_zero_never_matches_a_running_process() {
        let forged = Occupant::new(std::process::id(), None).in_registration(1);
        assert_eq!(forged.started(), 0);
        assert!(!forged.runs());
        assert!(process::this_process().runs(), "the real identity does");
    }

    #[test]
    fn this_process_registers_is_alive_and_leaves() {
        let entries = table(2);
        let participants = Participants::new(Table::new(&entries));
        let a = participants.register().unwrap().token;
        let b = participants.register().unwrap().token;
        assert_ne!(a, b);
        assert!(participants.is_alive(a) && participants.is_alive(b));
        assert_eq!(participants.register(), None, "all held");
        participants.leave(a);
        assert!(!participants.is_alive(a));
        let again = participants.register().unwrap().token;
        assert_eq!(again & 0xffff, a & 0xffff, "a left entry is reused");
        assert_ne!(again, a, "by a new registration: the old token stays dead");
        assert!(participants.is_alive(again) && !participants.is_alive(a));
        assert_eq!(participants.live_pids(), vec![std::process::id(); 2]);
    }

    /// The sleepers a dead registration left counted are cleared: by its reaper, or (the
    /// reaper killed between freeing the entry and clearing them) by the next look at free
    /// entries, or by the registration that takes the entry over; and a clearing that
    /// comes late never clears the new registration's own sleepers.
    #[test]
    #[cfg(not(miri))]
    fn a_dead_registrations_sleepers_are_cleared_and_never_a_live_ones() {
        let counts = |participants: &Participants<'_>| {
            [SleepsOn::Ready, SleepsOn::Room]
                .map(|on| participants.sleepers_in(0, on).unwrap().count())
        };
        for reaper in [
            "completes",
            "dies before clearing, free entries looked at",
            "dies before clearing",
        ] {
            let entries = table(1);
            let participants = Participants::new(Table::new(&entries));
            let dead = participants.register().unwrap().token;
            let dead_epoch = dead >> ID_BITS;
            // Two of its threads asleep on the ready signal, one on the room signal, then
            // SIGKILL.
            let receivers = participants.sleeping(dead, SleepsOn::Ready);
            receivers.count_in();
            receivers.count_in();
            participants.sleeping(dead, SleepsOn::Room).count_in();
            entries[0]
                .occupant
                .store(exited_process().0, Ordering::Relaxed);
            assert_eq!(counts(&participants), [2, 1]);
            match reaper {
                "completes" => assert_eq!(participants.reap_dead(), 1),
                _ => entries[0].occupant.store(0, Ordering::Release), // freed, then killed
            }
            if reaper != "dies before clearing" {
                participants.clear_sleepers_of_free_entries();
                assert_eq!(counts(&participants), [0, 0], "{reaper}");
            }
            let newcomer = participants.register().unwrap().token;
            assert_eq!(counts(&participants), [0, 0], "{reaper}");
            participants.sleeping(newcomer, SleepsOn::Room).count_in();
            clear_sleepers(&entries[0].sleeping, dead_epoch); // a late reaper
            participants.clear_sleepers_of_free_entries();
            assert_eq!(counts(&participants), [0, 1], "{reaper}: its own sleeper");
        }
    }

    /// A count cleared under a live thread (only a wrong verdict of death could do that)
    /// stays at zero when the thread counts itself out: it does not borrow from the other
    /// count or the epoch bits above.
    #[test]
    fn counting_out_of_a_cleared_count_leaves_the_word_alone() {
        let entries = table(1);
        let participants = Participants::new(Table::new(&entries));
        let token = participants.register().unwrap().token;
        let receivers = participants.sleeping(token, SleepsOn::Ready);
        receivers.count_in();
        receivers.count_in();
        assert_eq!(receivers.count(), 2);
        let cleared = no_sleepers(token >> ID_BITS);
        entries[0].sleeping.store(cleared, Ordering::SeqCst);
        receivers.count_out();
        assert_eq!(entries[0].sleeping.load(Ordering::SeqCst), cleared);
    }

    #[test]
    #[cfg(not(miri))]
    fn dead_or_garbage_entries_are_not_alive_and_are_reclaimed() {
        let entries = table(3);
        let participants = Participants::new(Table::new(&entries));
        entries[0]
            .occupant
            .store(exited_process().0, Ordering::Relaxed);
        assert!(!participants.is_alive(1), "exited process");
        // pid 1 exists, but not with this start time: a reused pid.
        let reused = Occupant::new(1, Some(u64::from(u32::MAX)));
        entries[1].occupant.store(reused.0, Ordering::Relaxed);
        assert!(!participants.is_alive(2), "reused pid");
        entries[2].occupant.store(u64::MAX, Ordering::Relaxed);
        assert!(!participants.is_alive(3), "garbage pid");
        for token in [0, 4, 1 << 16 | 1, u64::MAX] {
            assert!(
                !participants.is_alive(token),
                "token {token:#x}: no such registration"
            );
        }
        let reclaimed = participants.register().unwrap().token;
        assert_eq!(reclaimed & 0xffff, 1, "the dead entry is reclaimed");
        assert!(
            !participants.is_alive(1),
            "the dead registration stays dead"
        );
    }
}
