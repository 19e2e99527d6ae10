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
//! | 0    | `pid`        | the registering process: CAS from 0 or from a dead registration's word to its pid with bit 32 (`REGISTERING`) set, cleared once its start time is stored; CAS back to 0 when it leaves; a reaper CASes a dead registration's word to 0 |
//! | 1    | `start_time` | the winner of the pid CAS: its start time (`/proc/PID/stat` field 22, clock ticks after boot), which tells a live process from a later one that reused the pid; always read after `pid`, so a pid without the flag is never judged by an earlier occupant's start time |
//! | 2    | `epoch`      | the registering process: bumped at each registration |
//! | 3    | `scheduling` | the participant: timers it is between marking due and linking into the wheel (see `queue::recovery`) |
//! | 4    | `sleeping`   | the registering process sets the top 16 bits to its epoch's low 16 bits; the participant counts its threads asleep on the ready signal in bits 0..24 and those asleep on the room signal in bits 24..48 (see `wait`); whoever reaps its death takes those counts back off the signals, only while the epoch bits are still its |
//! | 8..  | `pin_marks`  | the participant: [`PIN_MARKS`] counters; `pin_marks[slot % PIN_MARKS]` counts the payload pins it holds or is about to take on such slots (see `queue::recovery`) |
//!
//! A participant is alive when its pid names a running process with the recorded start
//! time. Values are checked like any other segment data: an id out of range or a zero pid
//! is simply not alive.
//!
//! # Owner tags
//!
//! A slot in a state only its owner may leave (`Writing`, `Settling`) carries a 16-bit
//! [`OwnerTag`] of the owner's registration in its state word, so recovery can tell an owner
//! that died there from one still at work.

use crate::sync::{AtomicU64, Ordering};

/// Entries in a region's table: the most handles attached at once.
pub(crate) const PARTICIPANTS: usize = 64;

/// Pin counters per participant (see the entry layout).
pub(crate) const PIN_MARKS: usize = 256;

/// One table entry.
#[repr(C, align(64))]
pub(crate) struct Participant {
    pid: AtomicU64,
    start_time: AtomicU64,
    epoch: AtomicU64,
    scheduling: AtomicU64,
    sleeping: AtomicU64,
    _reserved: [AtomicU64; 3],
    pin_marks: [AtomicU64; PIN_MARKS],
}

impl Default for Participant {
    fn default() -> Self {
        Self {
            pid: AtomicU64::default(),
            start_time: AtomicU64::default(),
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

/// What a sleeping thread waits for; each has its own signal and its own count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SleepsOn {
    /// A message to receive (the ready signal).
    Ready,
    /// A free slot to publish into (the room signal).
    Room,
}

impl SleepsOn {
    /// One sleeper in a `sleeping` word's count.
    fn unit(self) -> u64 {
        match self {
            Self::Ready => 1,
            Self::Room => 1 << COUNT_BITS,
        }
    }
}

/// Threads counted asleep, by what they wait for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sleepers {
    /// Asleep on the ready signal (receivers).
    pub(crate) ready: u64,
    /// Asleep on the room signal (publishers waiting for a free slot).
    pub(crate) room: u64,
}

impl Sleepers {
    /// The two counts of a `sleeping` word's low [`SLEEPER_BITS`].
    fn of(counts: u64) -> Self {
        let count = |shift: u32| (counts >> shift) & ((1 << COUNT_BITS) - 1);
        Self {
            ready: count(0),
            room: count(COUNT_BITS),
        }
    }

    /// Both counts added (saturating: the words they came from are segment data).
    pub(crate) fn plus(self, other: Self) -> Self {
        Self {
            ready: self.ready.saturating_add(other.ready),
            room: self.room.saturating_add(other.room),
        }
    }
}

/// A sleeping thread's count of itself in its registration's `sleeping` word (see `wait`).
#[derive(Clone, Copy)]
pub(crate) struct OwnSleeper<'r> {
    word: &'r AtomicU64,
    unit: u64,
}

impl OwnSleeper<'_> {
    /// Counts the thread in, after its increment of the signal's count: release, so that
    /// whoever takes this count off the signal has seen that increment.
    pub(crate) fn count_in(&self) {
        self.word.fetch_add(self.unit, Ordering::Release);
    }

    /// Undoes [`count_in`](Self::count_in), before the signal's decrement.
    pub(crate) fn count_out(&self) {
        self.word.fetch_sub(self.unit, Ordering::Release);
    }
}

/// A `sleeping` word of the registration of `epoch`, with no sleeper counted.
fn no_sleepers(epoch: u64) -> u64 {
    (epoch & 0xffff) << SLEEPER_BITS
}

/// Takes the sleepers counted for the dead registration of `epoch` out of its entry's
/// `sleeping` word. The pid CAS that reaped it has freed the entry already, so a new
/// registration may have taken them (then the word carries the new epoch and nothing is
/// taken here) or may count sleepers of its own (never taken: they carry its epoch).
fn take_sleepers(word: &AtomicU64, epoch: u64) -> Sleepers {
    // A dead registration's word no longer changes; only a process writing garbage would
    // keep it moving, so a few tries are enough.
    for _ in 0..8 {
        let seen = word.load(Ordering::Acquire);
        let sleepers = sleepers_of(seen, epoch);
        if sleepers == Sleepers::default() {
            return sleepers;
        }
        if word
            .compare_exchange(
                seen,
                no_sleepers(epoch),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            return sleepers;
        }
    }
    Sleepers::default()
}

/// The sleepers a `sleeping` word counts for the registration of `epoch` (none if the word
/// belongs to another registration).
fn sleepers_of(word: u64, epoch: u64) -> Sleepers {
    if word >> SLEEPER_BITS == epoch & 0xffff {
        Sleepers::of(word & ((1 << SLEEPER_BITS) - 1))
    } else {
        Sleepers::default()
    }
}

/// Set in a `pid` word while its registration is in progress (see `take`): the start time
/// beside it is not yet the registrant's.
const REGISTERING: u64 = 1 << 32;

/// An entry's pid word and start time, read in that order: beside a pid without
/// [`REGISTERING`], the start time its registration stored (or a later registration's),
/// never an earlier one's, since a registration stores its start time before it clears
/// the flag.
fn occupant(entry: &Participant) -> (u64, u64) {
    let pid = entry.pid.load(Ordering::Acquire);
    (pid, entry.start_time.load(Ordering::Acquire))
}

/// Whether the process that registered as the `pid` word with start time `recorded` runs
/// (not a later one with its pid). A registration in progress is alive while a process
/// with its pid is; a recorded start time of 0 (not readable when it registered) too.
fn runs(pid: u64, recorded: u64) -> bool {
    let registering = pid & REGISTERING != 0;
    let Ok(pid) = u32::try_from(pid & !REGISTERING) else {
        return false;
    };
    if pid == 0 {
        return false;
    }
    if pid == std::process::id() {
        return true;
    }
    match start_time(pid) {
        Some(started) => registering || recorded == 0 || started == recorded,
        None => false,
    }
}

fn token(id: u64, epoch: u64) -> u64 {
    (epoch & 0xffff) << ID_BITS | id
}

/// A process's identity: pid and start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Process {
    pid: u32,
    start_time: u64,
}

/// This process.
fn this_process() -> Process {
    let pid = std::process::id();
    Process {
        pid,
        start_time: start_time(pid).unwrap_or(0),
    }
}

/// A process's start time, if it exists and still runs (a zombie, killed and not yet
/// reaped by its parent, runs no more code: it counts as gone) and its `/proc` entry can be
/// read.
fn start_time(pid: u32) -> Option<u64> {
    #[cfg(all(target_os = "linux", not(miri), not(loom)))]
    {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) is in parentheses and may hold anything: fields
        // resume after the last ')'. Field 22 is then the 20th after it.
        let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
        if matches!(fields.next(), Some("Z" | "X" | "x")) {
            return None; // state (field 3): zombie or dead
        }
        fields.nth(18)?.parse().ok()
    }
    #[cfg(not(all(target_os = "linux", not(miri), not(loom))))]
    {
        let _ = pid;
        Some(0)
    }
}

/// A new registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Registration {
    /// Names it in locks and liveness questions.
    pub(crate) token: u64,
    /// It took over the entry of a dead registration (so something may need recovering).
    pub(crate) replaced_dead: bool,
    /// Threads of that dead registration still counted asleep (killed in their sleep):
    /// for the new registrant to take off the signals' counts.
    pub(crate) dead_sleepers: Sleepers,
}

/// What [`Participants::reap_dead`] freed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Reaped {
    /// Dead registrations freed.
    pub(crate) registrations: usize,
    /// Their threads still counted asleep: for the reaper to take off the signals' counts.
    pub(crate) sleepers: Sleepers,
}

/// The participant table of a region.
#[derive(Clone, Copy)]
pub(crate) struct Participants<'r> {
    entries: &'r [Participant],
}

impl<'r> Participants<'r> {
    pub(crate) fn new(entries: &'r [Participant]) -> Self {
        Self { entries }
    }

    /// Registers this process; its token is never 0 and at most 32 bits. `None` when every
    /// entry is held by a live process.
    pub(crate) fn register(&self) -> Option<Registration> {
        let me = this_process();
        self.entries.iter().enumerate().find_map(|(index, entry)| {
            let replaced = self.take(entry, &me)?;
            Some(self.complete(index, entry, &me, replaced))
        })
    }

    /// Takes `entry` for `me` if it is free or its registration is dead: its pid word is
    /// then `me`'s with [`REGISTERING`] set. Returns the pid word replaced (0 for a free
    /// entry).
    fn take(&self, entry: &Participant, me: &Process) -> Option<u64> {
        let (pid, recorded) = occupant(entry);
        // Judged by pid and start time, not by a token: the epoch moves on only after the
        // pid CAS below, so a token read beside a new pid would name the previous
        // registration, and read as dead.
        let free = pid == 0 || !runs(pid, recorded);
        // With the flag, whoever reads our pid before we store our start time judges us by
        // the pid alone, never by the previous occupant's start time, by which it would
        // judge us dead and free the entry under us. Only the winner of this CAS writes
        // the start time.
        let registering = u64::from(me.pid) | REGISTERING;
        let taken = free
            && entry
                .pid
                .compare_exchange(pid, registering, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        taken.then_some(pid)
    }

    /// Finishes the registration of `me` in the entry at `index`, which [`take`](Self::take)
    /// took from the registration of pid `replaced`.
    fn complete(
        &self,
        index: usize,
        entry: &Participant,
        me: &Process,
        replaced: u64,
    ) -> Registration {
        entry.start_time.store(me.start_time, Ordering::Release);
        // Release: whoever reads the pid without the flag reads the start time above.
        entry.pid.store(u64::from(me.pid), Ordering::Release);
        // Only the winner of the pid CAS moves the epoch.
        let replaced_epoch = entry.epoch.load(Ordering::Acquire);
        let epoch = replaced_epoch.wrapping_add(1);
        // The replaced registration's sleepers, unless a reaper took them already (it
        // leaves the word with no count): one of us takes them, once. Acquire: the dead's
        // increments of the signal's count precede its own count's (see `wait`), so they
        // are in what the caller takes off.
        let left = entry.sleeping.swap(no_sleepers(epoch), Ordering::AcqRel);
        let dead_sleepers = sleepers_of(left, replaced_epoch);
        // A dead registration's counts are garbage: start from zero (nothing of ours is
        // scheduled or pinned yet).
        entry.scheduling.store(0, Ordering::Relaxed);
        for mark in &entry.pin_marks {
            mark.store(0, Ordering::Relaxed);
        }
        // Release: the counts cleared above come before the new token appears.
        entry.epoch.store(epoch, Ordering::Release);
        Registration {
            token: token(index as u64 + 1, epoch),
            replaced_dead: replaced != 0,
            dead_sleepers,
        }
    }

    /// Frees the entries of dead registrations; returns what it freed. (Each dead registration
    /// is reaped once: by this CAS or by a [`register`](Self::register) that reclaims it.)
    pub(crate) fn reap_dead(&self) -> Reaped {
        let mut reaped = Reaped::default();
        for entry in self.entries {
            // Judged by pid and start time, as in `take` (a token read beside them
            // could name a registration that has just moved on, and read as dead).
            let (pid, recorded) = occupant(entry);
            if pid == 0 || runs(pid, recorded) {
                continue;
            }
            // The dead registration's epoch: only a pid CAS winner moves it, and the CAS
            // below wins only if no one took the entry since.
            let epoch = entry.epoch.load(Ordering::Acquire);
            if entry
                .pid
                .compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                reaped.registrations += 1;
                let sleepers = take_sleepers(&entry.sleeping, epoch);
                reaped.sleepers = reaped.sleepers.plus(sleepers);
            }
        }
        reaped
    }

    /// After a reboot (see `queue::reboot`): every registration belonged to the ended boot,
    /// and a pid and start time from then may name an unrelated process now, so every entry
    /// is freed outright. Epochs stay, so the next registration of an entry gets a token
    /// (and owner tag) that no slot or lock of the old boot carries.
    pub(crate) fn forget_previous_boot(&self) {
        for entry in self.entries {
            entry.start_time.store(0, Ordering::Relaxed);
            entry.scheduling.store(0, Ordering::Relaxed);
            entry.sleeping.store(0, Ordering::Relaxed);
            for mark in &entry.pin_marks {
                mark.store(0, Ordering::Relaxed);
            }
            entry.pid.store(0, Ordering::Release);
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
        let entries: &'r [Participant] = self.entries;
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

    /// The count of the registration `token`'s threads asleep on the signal `on`, if
    /// `token` is its entry's current registration.
    pub(crate) fn sleeping(&self, token: u64, on: SleepsOn) -> Option<OwnSleeper<'r>> {
        self.entry(token).map(|entry| OwnSleeper {
            word: &entry.sleeping,
            unit: on.unit(),
        })
    }

    /// Whether the registration `token` may hold a pin on `slot`.
    pub(crate) fn may_pin(&self, token: u64, slot: u32) -> bool {
        self.entry(token).is_some_and(|entry| {
            entry.pin_marks[slot as usize % PIN_MARKS].load(Ordering::Acquire) != 0
        })
    }

    /// Gives up the registration `token` (this process's). A CAS from this process's pid,
    /// so that a registration that a reaper wrongly freed meanwhile (a pid reused within
    /// the reaper's few instructions) cannot free the entry's next registration.
    pub(crate) fn leave(&self, token: u64) {
        if let Some(entry) = self.entry(token) {
            let _ = entry.pid.compare_exchange(
                u64::from(std::process::id()),
                0,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    /// The entry a token names, if the token is of the entry's current registration.
    fn entry(&self, token: u64) -> Option<&'r Participant> {
        let entries: &'r [Participant] = self.entries;
        let index = usize::try_from((token & 0xffff).checked_sub(1)?).ok()?;
        let entry = entries.get(index)?;
        let current = entry.epoch.load(Ordering::Acquire) & 0xffff;
        (token >> ID_BITS == current).then_some(entry)
    }

    /// Whether the registration `token` belongs to a running process (the one that
    /// registered, not a later one with its pid).
    pub(crate) fn is_alive(&self, token: u64) -> bool {
        self.entry(token).is_some_and(|entry| {
            let (pid, recorded) = occupant(entry);
            runs(pid, recorded)
        })
    }

    /// Makes the registration `token` look like a process killed with SIGKILL: its entry
    /// names a process that has exited.
    #[cfg(all(test, not(loom), not(miri)))]
    pub(crate) fn forge_dead(&self, token: u64) {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        let started = start_time(pid).unwrap_or(1);
        child.wait().expect("wait for true");
        let entry = self.entry(token).expect("a live registration");
        entry.start_time.store(started, Ordering::Release);
        entry.pid.store(u64::from(pid), Ordering::Release);
    }

    /// The pids of the live participants.
    pub(crate) fn live_pids(&self) -> Vec<u32> {
        self.entries
            .iter()
            .enumerate()
            .map(|(index, entry)| token(index as u64 + 1, entry.epoch.load(Ordering::Acquire)))
            .filter(|&token| self.is_alive(token))
            .filter_map(|token| {
                let pid = self.entry(token)?.pid.load(Ordering::Relaxed) & !REGISTERING;
                u32::try_from(pid).ok()
            })
            .collect()
    }
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
            super::start_time(pid).is_some(),
            "a running process has a start time"
        );
        child.kill().unwrap();
        // Not reaped yet: a zombie, which the kernel marks so once the signal is handled.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while super::start_time(pid).is_some() {
            assert!(
                std::time::Instant::now() < give_up,
                "a zombie counted as alive"
            );
            std::thread::yield_now();
        }
        child.wait().unwrap();
    }

    use super::*;

    fn table(n: usize) -> Vec<Participant> {
        (0..n).map(|_| Participant::default()).collect()
    }

    /// Registrations of live processes are never reaped, whenever the reaper looks: not
    /// while a registration is half done (pid taken, epoch not yet moved on), nor while
    /// the entry changes hands under the reaper.
    #[test]
    #[cfg_attr(miri, ignore = "threads racing for many rounds")]
    fn a_reaper_racing_registrations_never_reaps_a_live_one() {
        let entries = table(2);
        let participants = Participants::new(&entries);
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
                    reaped += participants.reap_dead().registrations;
                }
                reaped
            });
            let reaped = reaper.join().unwrap();
            stop.store(true, Ordering::Relaxed);
            reaped
        });
        assert_eq!(reaped, 0, "registrations of this live process were reaped");
    }

    /// A reaper that looks while another process is between taking an entry from a dead
    /// registration and completing its own sees that process alive: its pid with start
    /// time 0, not with the dead one's start time, which would make it look dead and free
    /// the entry under it (then a third process could take the entry, and recovery would
    /// treat the live one's leases, pins and locks as a dead process's).
    #[test]
    #[cfg(not(miri))]
    fn a_registration_half_done_over_a_dead_one_is_not_reaped() {
        let entries = table(1);
        let participants = Participants::new(&entries);
        let dead = participants.register().unwrap().token;
        participants.forge_dead(dead);
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let other_process = Process {
            pid: other.id(),
            start_time: start_time(other.id()).unwrap(),
        };
        let replaced = participants.take(&entries[0], &other_process).unwrap();
        assert_ne!(replaced, 0, "taken from the dead registration");
        assert_eq!(
            participants.reap_dead().registrations,
            0,
            "a registration in progress was reaped"
        );
        let registration = participants.complete(0, &entries[0], &other_process, replaced);
        assert!(participants.is_alive(registration.token));
        assert_eq!(participants.reap_dead().registrations, 0);
        other.kill().unwrap();
        other.wait().unwrap();
        assert!(!participants.is_alive(registration.token));
        assert_eq!(
            participants.reap_dead().registrations,
            1,
            "reaped once dead"
        );
    }

    #[test]
    fn this_process_registers_is_alive_and_leaves() {
        let entries = table(2);
        let participants = Participants::new(&entries);
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

    /// The sleepers a dead registration left counted are taken once, by the reaper or by
    /// the registration that takes over its entry, whichever comes first; and a reaper that
    /// comes late never takes the new registration's own sleepers.
    #[test]
    fn a_dead_registrations_sleepers_are_taken_once_and_never_a_live_ones() {
        fn exited_process() -> (u64, u64) {
            let mut child = std::process::Command::new("true").spawn().unwrap();
            let pid = child.id();
            let started = start_time(pid).unwrap_or(1);
            child.wait().unwrap();
            (u64::from(pid), started)
        }
        for reaper_first in [true, false] {
            let entries = table(1);
            let participants = Participants::new(&entries);
            let dead = participants.register().unwrap().token;
            let dead_epoch = dead >> ID_BITS;
            // Two of its threads asleep on the ready signal, one on the room signal, then
            // SIGKILL.
            let receivers = participants.sleeping(dead, SleepsOn::Ready).unwrap();
            receivers.count_in();
            receivers.count_in();
            participants
                .sleeping(dead, SleepsOn::Room)
                .unwrap()
                .count_in();
            let left = Sleepers { ready: 2, room: 1 };
            let (pid, started) = exited_process();
            entries[0].pid.store(pid, Ordering::Relaxed);
            entries[0].start_time.store(started, Ordering::Relaxed);

            // A reaper's pid CAS frees the entry; it takes the sleepers right after, or
            // only once a new registration has taken the entry and counted a sleeper.
            entries[0].pid.store(0, Ordering::Release);
            let taken_first = if reaper_first {
                take_sleepers(&entries[0].sleeping, dead_epoch)
            } else {
                Sleepers::default()
            };
            let newcomer = participants.register().unwrap();
            participants
                .sleeping(newcomer.token, SleepsOn::Room)
                .unwrap()
                .count_in();
            let taken_late = take_sleepers(&entries[0].sleeping, dead_epoch);
            assert_eq!(
                taken_first.plus(taken_late).plus(newcomer.dead_sleepers),
                left,
                "the dead's sleepers, once"
            );
            let expected_by_newcomer = if reaper_first {
                Sleepers::default()
            } else {
                left
            };
            assert_eq!(newcomer.dead_sleepers, expected_by_newcomer);
            let word = entries[0].sleeping.load(Ordering::Relaxed);
            assert_eq!(
                sleepers_of(word, newcomer.token >> ID_BITS),
                Sleepers { ready: 0, room: 1 },
                "its own sleeper"
            );
        }
    }

    #[test]
    fn dead_or_garbage_entries_are_not_alive_and_are_reclaimed() {
        let entries = table(3);
        let participants = Participants::new(&entries);
        // A process that exited: spawn one, wait for it, and forge its entry.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let started = start_time(pid).unwrap_or(1);
        child.wait().unwrap();
        entries[0].pid.store(u64::from(pid), Ordering::Relaxed);
        entries[0].start_time.store(started, Ordering::Relaxed);
        assert!(!participants.is_alive(1), "exited process");
        // pid 1 exists, but not with this start time: a reused pid.
        entries[1].pid.store(1, Ordering::Relaxed);
        entries[1].start_time.store(u64::MAX, Ordering::Relaxed);
        assert!(!participants.is_alive(2), "reused pid");
        entries[2].pid.store(u64::MAX, Ordering::Relaxed);
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
