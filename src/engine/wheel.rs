//! The timing wheel: hands each timer back to its owner once its deadline has come.
//!
//! # What it holds
//!
//! *Nodes*, numbered `0..nodes`: the queue gives every slot two, its lease timer and its
//! delay timer (see [`node`]). A node is in at most one list at a time (its owner decides
//! who may schedule it: see `queue`), so the wheel's memory is fixed, one link word per
//! node, however many timers come and go. Nothing is ever cancelled: a node fires, and
//! its owner re-checks the slot header and either acts, or hands back the slot's current
//! deadline to be scheduled again, or drops it (the slot moved on). So a timer may fire
//! *early*, never late.
//!
//! # Shape
//!
//! Hierarchical, [`LEVELS`] levels of 64 buckets; a level-`l` bucket spans `64^l` ticks.
//! Every bucket is an intrusive singly linked list threaded through `next`, its head one
//! word packing `tag << 32 | first node`, where `tag` is the (low 32 bits of the) tick at
//! which the ticker detaches the bucket. A timer goes into the finest level whose bucket
//! starts at or before its deadline and after the cursor; when that bucket is detached
//! early (a higher level), the owner asks again and the timer drops a level (cascading).
//!
//! - **Insert** is lock-free: one CAS on the bucket head that *expects the tag the insert
//!   computed*, so a timer never lands in a bucket that was already detached for its tick.
//!   An insert that finds no bucket with that tag (its deadline has passed, or the ticker
//!   moved under it) pushes onto the `overflow` list instead, which every run drains.
//! - **Ticking**: one ticker at a time (a try-lock). A run detaches every bucket whose tag
//!   has come, re-tags it for its next lap, detaches `overflow`, then publishes the new
//!   cursor and walks what it detached. Detached lists are push-only stacks taken whole by
//!   a swap, so there is no ABA.
//!
//! # Order
//!
//! Lists are stacks and a run walks many, so a walk meets nodes in no useful order; yet
//! what a run hands on should come out oldest first, as a queue promises. So the owner
//! gives each node it finds due an [`Order`] key (the queue: its deadline, then the ticket
//! it took when it set that deadline), and the run sorts by it before handing them on.
//! (The wheel could not keep such a ticket itself: a node stays linked across its slot's
//! reuse, see `queue::timers`.)
//!
//! Memory ordering: a pusher writes its node's `next` and then releases it with the head
//! CAS; the ticker's swap acquires every push before it (the pushes are RMWs, so they form
//! one release sequence), after which the `next` words are plain reads.

use crate::base::sync::{AtomicU64, Ordering};
use crate::base::table::Padded;
use crate::liveness::Participants;

/// The timing wheel's single words.
#[repr(C)]
#[derive(Default)]
pub(crate) struct WheelWords {
    /// The first tick not yet processed.
    pub(crate) cursor: Padded,
    /// 1 while a ticker runs.
    pub(crate) ticking: Padded,
    /// The overflow list's first node.
    pub(crate) overflow: Padded,
}

/// log2 of the buckets per level.
#[cfg(not(loom))]
const BITS: u32 = 6;
/// Levels: at 1 ms ticks the wheel spans 64^5 ms = 12.4 days; later deadlines are parked
/// in the last bucket and re-asked when it fires. (`LEVELS * BITS` must stay below 32: tags
/// keep 32 bits of a tick.)
#[cfg(not(loom))]
pub(crate) const LEVELS: usize = 5;
// The same code in miniature for loom, whose state space grows with every atomic a run
// reads: 2 levels of 2 buckets still has cascading, parking and re-tagging.
#[cfg(loom)]
const BITS: u32 = 1;
#[cfg(loom)]
pub(crate) const LEVELS: usize = 2;
pub(crate) const BUCKETS: usize = 1 << BITS;
/// The end of a list.
const NIL: u32 = u32::MAX;

/// Nanoseconds past which a run lock's holder is not running a wheel any more: a run takes
/// micro- to milliseconds.
const LONG_RUN: u64 = 100_000_000;

/// Which of a slot's two timers a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    /// Runs out the slot's lease.
    Lease = 0,
    /// Ends the slot's delay or retry backoff.
    Delay = 1,
}

/// The node of `slot`'s `timer`.
pub(crate) fn node(slot: u32, timer: Timer) -> u32 {
    slot * 2 + timer as u32
}

/// The slot and timer of a node.
pub(crate) fn split_node(node: u32) -> (u32, Timer) {
    let timer = if node.is_multiple_of(2) {
        Timer::Lease
    } else {
        Timer::Delay
    };
    (node / 2, timer)
}

/// Ticks one bucket of `level` spans.
fn span(level: usize) -> u64 {
    1 << (BITS as usize * level)
}

/// Ticks one turn of `level` spans (all its buckets).
fn turn(level: usize) -> u64 {
    span(level + 1)
}

/// The first tick at or after `from` at which bucket `index` of `level` is detached.
fn next_tag(level: usize, index: usize, from: u64) -> u64 {
    let start = from - from % turn(level) + index as u64 * span(level);
    if start >= from {
        start
    } else {
        start.saturating_add(turn(level))
    }
}

fn pack(tag: u64, first: u32) -> u64 {
    (tag as u32 as u64) << 32 | u64::from(first)
}

fn unpack(head: u64) -> (u32, u32) {
    ((head >> 32) as u32, head as u32)
}

/// Where a due node goes among those one run hands on: the lowest first.
pub(crate) type Order = (u64, u64);

/// What the owner of a fired node makes of it.
pub(crate) enum Fired<T> {
    /// Not due yet (a coarse bucket, or a deadline moved on): asked again at this deadline.
    Again(u64),
    /// Due: `T` is handed on once the run has walked every list, in [`Order`].
    Due(Order, T),
    /// Out of the wheel, nothing to hand on.
    Done,
}

/// A hierarchical timing wheel of nodes (see the module docs): a view of region words.
#[derive(Clone, Copy)]
pub(crate) struct Wheel<'r> {
    tick_nanos: u64,
    /// Written into the run lock (with the tick it was taken at) while we run the wheel.
    holder: u64,
    /// Who can hold the run lock (`None`: only this process).
    participants: Option<Participants<'r>>,
    /// The first tick not yet processed (every bucket's tag is at or after it), the run
    /// lock, and the overflow list (timers whose bucket could not be found; the next run
    /// takes them all).
    words: &'r WheelWords,
    /// `LEVELS * 64` bucket heads, level-major: `tag << 32 | first`.
    heads: &'r [AtomicU64],
    /// Each node's successor in its list.
    next: &'r [AtomicU64],
}

impl<'r> Wheel<'r> {
    /// Lays out an empty wheel ticking every `tick_nanos` (at least 1), starting at `now`,
    /// in these words: `heads` has `LEVELS * 64` words, `next` one per node.
    pub(crate) fn init(
        tick_nanos: u64,
        now: u64,
        words: &'r WheelWords,
        heads: &'r [AtomicU64],
        next: &'r [AtomicU64],
    ) -> Self {
        let wheel = Self::attach(tick_nanos, words, heads, next);
        let cursor = now / wheel.tick_nanos;
        words.cursor.0.store(cursor, Ordering::Relaxed);
        words.ticking.0.store(0, Ordering::Relaxed);
        words.overflow.0.store(u64::from(NIL), Ordering::Relaxed);
        for (index, head) in heads.iter().enumerate() {
            let (level, bucket) = (index / BUCKETS, index % BUCKETS);
            head.store(
                pack(next_tag(level, bucket, cursor), NIL),
                Ordering::Relaxed,
            );
        }
        for link in next {
            link.store(u64::from(NIL), Ordering::Relaxed);
        }
        wheel
    }

    /// A wheel already laid out in these words (by [`init`](Self::init)).
    #[inline]
    pub(crate) fn attach(
        tick_nanos: u64,
        words: &'r WheelWords,
        heads: &'r [AtomicU64],
        next: &'r [AtomicU64],
    ) -> Self {
        Self {
            tick_nanos: tick_nanos.max(1),
            holder: 1,
            participants: None,
            words,
            heads,
            next,
        }
    }

    /// The wheel as run by participant `holder` of a queue with these `participants`.
    #[inline]
    pub(crate) fn held_by(self, holder: u64, participants: Participants<'r>) -> Self {
        Self {
            holder,
            participants: Some(participants),
            ..self
        }
    }

    /// The run lock's holder and for how many nanoseconds it has held it at `now`, if that
    /// is over [`LONG_RUN`] (a stopped or stuck process, or a dead one not yet replaced).
    pub(crate) fn stalled(&self, now: u64) -> Option<(u64, u64)> {
        let current = self.words.ticking.0.load(Ordering::Relaxed);
        let taken_at = current & 0xffff_ffff;
        let now_tick = (now / self.tick_nanos) & 0xffff_ffff;
        let held = now_tick.wrapping_sub(taken_at) & 0xffff_ffff;
        let held_nanos = held.saturating_mul(self.tick_nanos);
        (current != 0 && held_nanos > LONG_RUN).then_some((current >> 32, held_nanos))
    }

    /// Takes the run lock at `now_tick`: free, or held for over 100 ms by a holder that is
    /// no longer alive (a ticker killed mid-run; the timers it had detached are linked again
    /// by crash recovery, see `queue::recovery`).
    fn try_lock(&self, now_tick: u64) -> bool {
        let mine = self.holder << 32 | (now_tick & 0xffff_ffff);
        let lock = &self.words.ticking.0;
        match lock.compare_exchange(0, mine, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => true,
            Err(current) => {
                let taken_at = current & 0xffff_ffff;
                let held_ticks = (now_tick & 0xffff_ffff).wrapping_sub(taken_at) & 0xffff_ffff;
                let long = (LONG_RUN / self.tick_nanos).max(2);
                let holder = current >> 32;
                // Only a lock held long is worth asking about: liveness reads `/proc`.
                let dead = || match self.participants {
                    Some(participants) => !participants.is_alive(holder),
                    None => holder != self.holder,
                };
                held_ticks > long
                    && dead()
                    && lock
                        .compare_exchange(current, mine, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
            }
        }
    }

    /// Runs `f` holding the run lock (taken as a run at `now` would take it; `None` if
    /// another holds it), so no list is detached while `f` runs: lists only grow.
    pub(crate) fn with_run_lock<R>(&self, now: u64, f: impl FnOnce() -> R) -> Option<R> {
        if !self.try_lock(now / self.tick_nanos) {
            return None;
        }
        let result = f();
        self.words.ticking.0.store(0, Ordering::Release);
        Some(result)
    }

    /// Which nodes are in a list of the wheel (its buckets and overflow), by a walk of every
    /// list. Call it under [`with_run_lock`](Self::with_run_lock): then lists only grow at
    /// their heads, so every node linked before the walk began is found. (A node in a list
    /// detached by a ticker that died mid-run is not in the wheel any more: not found.)
    pub(crate) fn linked_nodes(&self) -> Vec<bool> {
        let mut linked = vec![false; self.next.len()];
        let firsts = self
            .heads
            .iter()
            .map(|head| unpack(head.load(Ordering::Acquire)).1)
            .chain([self.words.overflow.0.load(Ordering::Acquire) as u32]);
        for first in firsts {
            let mut node = first;
            // A list is at most as long as there are nodes; a longer one is corrupt (cut).
            for _ in 0..self.next.len() {
                let Some(link) = self.next.get(node as usize) else {
                    break; // NIL, or a corrupt index
                };
                if std::mem::replace(&mut linked[node as usize], true) {
                    break; // met before: a cycle, or a list joining another (corrupt)
                }
                node = link.load(Ordering::Relaxed) as u32;
            }
        }
        linked
    }

    /// The tick a deadline is due at: the first tick that starts at or after it, so a node
    /// is never handed back before its deadline.
    fn tick_of(&self, deadline: u64) -> u64 {
        deadline / self.tick_nanos + u64::from(!deadline.is_multiple_of(self.tick_nanos))
    }

    /// Whether a run at `now` would have ticks to process.
    #[inline]
    pub(crate) fn is_due(&self, now: u64) -> bool {
        // `now / tick >= cursor`, as a multiply and a compare: this runs on every publish
        // and receive, and a division costs tens of cycles. (A cursor whose start overflows
        // lies beyond every `now`.)
        let cursor = self.words.cursor.0.load(Ordering::Relaxed);
        cursor
            .checked_mul(self.tick_nanos)
            .is_some_and(|start| now >= start)
    }

    /// When the earliest scheduled timer may fire (queue-clock nanoseconds), if any: the
    /// earliest tag of a non-empty bucket (the next tick if anything overflowed). Used to
    /// bound how long a receiver sleeps, since timers are what make delayed messages ready.
    pub(crate) fn next_due(&self) -> Option<u64> {
        let cursor = self.words.cursor.0.load(Ordering::Relaxed);
        let overflowed = self.words.overflow.0.load(Ordering::Relaxed) as u32 != NIL;
        let earliest_tag = self
            .heads
            .iter()
            .map(|head| unpack(head.load(Ordering::Relaxed)))
            .filter(|&(_, first)| first != NIL)
            .map(|(tag, _)| cursor.saturating_add(u64::from(tag.wrapping_sub(cursor as u32))))
            .min();
        let earliest = if overflowed {
            Some(cursor)
        } else {
            earliest_tag
        };
        earliest.map(|tick| tick.saturating_mul(self.tick_nanos))
    }

    /// Schedules `node` (which its owner holds out of every list) to be handed back at
    /// `deadline` or a little before. Lock-free.
    pub(crate) fn schedule(&self, node: u32, deadline: u64) {
        let Some(link) = self.next.get(node as usize) else {
            debug_assert!(false, "node {node} out of range");
            return;
        };
        let cursor = self.words.cursor.0.load(Ordering::Acquire);
        let due = self.tick_of(deadline);
        if due >= cursor {
            // Park deadlines beyond the wheel's reach in its last reachable tick.
            let due = due.min(cursor.saturating_add(turn(LEVELS - 1) - 1));
            let level = (0..LEVELS)
                .find(|&level| due - cursor < turn(level))
                .unwrap_or(LEVELS - 1);
            // The bucket start at or before `due`; at or after `cursor` by the level choice.
            let tag = due & !(span(level) - 1);
            let index =
                level * BUCKETS + ((tag >> (BITS as usize * level)) as usize & (BUCKETS - 1));
            let head = &self.heads[index];
            let mut current = head.load(Ordering::Relaxed);
            while unpack(current).0 == tag as u32 {
                link.store(u64::from(unpack(current).1), Ordering::Relaxed);
                match head.compare_exchange_weak(
                    current,
                    pack(tag, node),
                    Ordering::Release,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return,
                    Err(actual) => current = actual,
                }
            }
            // The ticker re-tagged the bucket under us: its tick has been processed.
        }
        let mut current = self.words.overflow.0.load(Ordering::Relaxed);
        loop {
            link.store(current, Ordering::Relaxed);
            match self.words.overflow.0.compare_exchange_weak(
                current,
                u64::from(node),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Runs the wheel up to `now` unless it is not due or another thread is running it:
    /// every node whose bucket has come (or that overflowed) is passed to `fire` with
    /// `now`, and scheduled again if it says [`Fired::Again`]. What it says is
    /// [`Fired::Due`] goes to `due` afterwards, in [`Order`], still within the run (so no
    /// later run overtakes it).
    /// Returns whether this call ran the wheel.
    #[inline]
    pub(crate) fn advance<T>(
        &self,
        now: u64,
        fire: impl FnMut(u32, u64) -> Fired<T>,
        due: impl FnMut(T),
    ) -> bool {
        // Inlined up to here: most calls come between two ticks and stop at this compare.
        self.is_due(now) && self.run(now, fire, due)
    }

    /// [`advance`](Self::advance) once a tick has passed: takes the run lock and runs.
    #[inline(never)]
    fn run<T>(
        &self,
        now: u64,
        mut fire: impl FnMut(u32, u64) -> Fired<T>,
        mut due: impl FnMut(T),
    ) -> bool {
        let now_tick = now / self.tick_nanos;
        if !self.try_lock(now_tick) {
            return false;
        }
        let cursor = self.words.cursor.0.load(Ordering::Relaxed);
        if now_tick < cursor {
            self.words.ticking.0.store(0, Ordering::Release);
            return false; // another run got here first
        }
        // Detach first, walk after the cursor moves, so the timers fired below that ask to
        // be scheduled again find a wheel already re-tagged for `now_tick + 1`.
        let mut detached = [NIL; LEVELS * BUCKETS + 1];
        for (index, head) in self.heads.iter().enumerate() {
            let (level, bucket) = (index / BUCKETS, index % BUCKETS);
            let (tag, _) = unpack(head.load(Ordering::Relaxed));
            // Tags lie within 2^32 ticks at or after the cursor: rebuild the full tick.
            let tag = cursor.saturating_add(u64::from(tag.wrapping_sub(cursor as u32)));
            if tag <= now_tick {
                let retagged = pack(next_tag(level, bucket, now_tick.saturating_add(1)), NIL);
                detached[index] = unpack(head.swap(retagged, Ordering::AcqRel)).1;
            }
        }
        detached[LEVELS * BUCKETS] =
            self.words.overflow.0.swap(u64::from(NIL), Ordering::AcqRel) as u32;
        self.words
            .cursor
            .0
            .store(now_tick.saturating_add(1), Ordering::Release);
        let mut handed = Vec::new();
        for first in detached {
            self.walk(first, now, &mut fire, &mut handed);
        }
        handed.sort_by_key(|&(order, _)| order);
        for (_, item) in handed {
            due(item);
        }
        self.words.ticking.0.store(0, Ordering::Release);
        true
    }

    /// Fires every node of a detached list. A corrupt link ends the walk (and a list longer
    /// than the node count is cut there), so bad memory cannot make it run wild.
    fn walk<T>(
        &self,
        first: u32,
        now: u64,
        fire: &mut impl FnMut(u32, u64) -> Fired<T>,
        handed: &mut Vec<(Order, T)>,
    ) {
        let mut node = first;
        for _ in 0..self.next.len() {
            let Some(link) = self.next.get(node as usize) else {
                return; // NIL, or a corrupt index
            };
            // Read the link before firing: once fired, the node's owner may schedule it
            // again, rewriting its link.
            let following = link.load(Ordering::Relaxed) as u32;
            match fire(node, now) {
                Fired::Again(deadline) => self.schedule(node, deadline),
                Fired::Due(order, item) => handed.push((order, item)),
                Fired::Done => {}
            }
            node = following;
        }
    }
}

/// A wheel in memory of its own (tests and loom models).
#[cfg(test)]
pub(crate) struct OwnedWheel {
    tick_nanos: u64,
    words: WheelWords,
    heads: Box<[AtomicU64]>,
    next: Box<[AtomicU64]>,
}

#[cfg(test)]
impl OwnedWheel {
    pub(crate) fn new(nodes: u32, tick_nanos: u64, now: u64) -> Self {
        let owned = Self {
            tick_nanos,
            words: WheelWords::default(),
            heads: (0..LEVELS * BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            next: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
        };
        Wheel::init(tick_nanos, now, &owned.words, &owned.heads, &owned.next);
        owned
    }

    pub(crate) fn wheel(&self) -> Wheel<'_> {
        Wheel::attach(self.tick_nanos, &self.words, &self.heads, &self.next)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs the wheel at `now`, recording which nodes fired, in the order handed on
    /// (by deadline, ties by node); fired nodes are done.
    fn fire_at(wheel: &Wheel, now: u64, deadlines: &[u64], fired: &mut Vec<(u32, u64)>) {
        wheel.advance(
            now,
            |node, now| {
                let deadline = deadlines[node as usize];
                if deadline > now {
                    return Fired::Again(deadline); // early (a coarse bucket): ask again
                }
                Fired::Due((deadline, u64::from(node)), node)
            },
            |node| fired.push((node, now)),
        );
    }

    #[test]
    fn a_timer_fires_at_the_first_tick_at_or_after_its_deadline() {
        let owned = OwnedWheel::new(4, 10, 0);
        let wheel = owned.wheel();
        let deadlines = [25, 30, 0, 1_000];
        for (node, &deadline) in deadlines.iter().enumerate() {
            wheel.schedule(node as u32, deadline);
        }
        let mut fired = Vec::new();
        for now in (0..=1_000).step_by(10) {
            fire_at(&wheel, now, &deadlines, &mut fired);
        }
        assert_eq!(fired, [(2, 0), (0, 30), (1, 30), (3, 1_000)]);
    }

    #[test]
    fn what_one_run_hands_on_comes_in_the_owners_order_from_every_list() {
        let owned = OwnedWheel::new(6, 1, 0);
        let wheel = owned.wheel();
        // 0 is filed at level 1 (70 ticks out), 1 and 2 at level 0 once the cursor has
        // moved on, 1 before 0 is cascaded down onto the same bucket, 2 after it; 3 goes
        // to overflow (scheduled for a tick already run); 4 and 5 at 69. The owner's order
        // is its deadline, then the order of these calls (as the queue's tickets).
        let deadlines = [70, 70, 70, 70, 69, 69];
        let mut fired = Vec::new();
        let mut run = |now| {
            wheel.advance(
                now,
                |node, now| match deadlines[node as usize] {
                    deadline if deadline > now => Fired::Again(deadline),
                    deadline => Fired::Due((deadline, [0, 1, 2, 5, 4, 3][node as usize]), node),
                },
                |node| fired.push(node),
            )
        };
        wheel.schedule(0, 70);
        run(10);
        wheel.schedule(1, 70);
        run(64); // cascades 0 onto 1's bucket
        wheel.schedule(2, 70);
        wheel.schedule(5, 69);
        wheel.schedule(4, 69);
        run(65);
        wheel.schedule(3, 0);
        run(70);
        assert_eq!(fired, [5, 4, 0, 1, 2, 3]);
    }

    #[test]
    fn a_timer_beyond_the_wheel_is_parked_and_fires_on_time() {
        let owned = OwnedWheel::new(1, 1, 0);
        let wheel = owned.wheel();
        let far = turn(LEVELS - 1) * 3 + 12_345;
        wheel.schedule(0, far);
        let mut fired = Vec::new();
        let mut now = 0;
        while fired.is_empty() && now <= far {
            // Big steps, but never past the deadline by more than one step.
            now = (now + turn(LEVELS - 2)).min(far);
            fire_at(&wheel, now, &[far], &mut fired);
        }
        assert_eq!(fired, [(0, far)]);
    }

    #[test]
    fn a_long_idle_gap_is_crossed_in_one_run() {
        let owned = OwnedWheel::new(2, 1_000_000, 0);
        let wheel = owned.wheel();
        wheel.schedule(0, 5_000_000);
        let deadlines = [5_000_000, 40 * 86_400 * 1_000_000_000];
        wheel.schedule(1, deadlines[1]);
        let mut fired = Vec::new();
        fire_at(&wheel, 30 * 86_400 * 1_000_000_000, &deadlines, &mut fired);
        assert_eq!(fired, [(0, 30 * 86_400 * 1_000_000_000)]);
        fire_at(&wheel, deadlines[1], &deadlines, &mut fired);
        assert_eq!(fired.len(), 2, "the 40-day timer fired at its deadline");
        assert_eq!(fired[1], (1, deadlines[1]));
    }

    #[test]
    fn a_run_is_not_due_again_within_its_tick() {
        let owned = OwnedWheel::new(1, 10, 0);
        let wheel = owned.wheel();
        assert!(wheel.advance(5, |_, _| Fired::<()>::Done, |_| {}));
        assert!(!wheel.is_due(9));
        let unscheduled = |_, _| -> Fired<()> { unreachable!("nothing scheduled") };
        assert!(!wheel.advance(9, unscheduled, |_| {}));
        assert!(wheel.is_due(10));
    }

    #[test]
    fn corrupt_links_end_the_walk() {
        let owned = OwnedWheel::new(2, 1, 0);
        let wheel = owned.wheel();
        wheel.schedule(0, 1);
        wheel.schedule(1, 1);
        // Make a cycle: 1 -> 0 -> 1 ...
        wheel.next[0].store(1, Ordering::Relaxed);
        let mut fired = 0;
        wheel.advance(1, |_, _| Fired::Due((0, 0), ()), |()| fired += 1);
        assert_eq!(fired, 2, "the walk stops after as many nodes as exist");
        wheel.next[0].store(77, Ordering::Relaxed); // out of range
        wheel.schedule(0, 2);
        wheel.next[0].store(77, Ordering::Relaxed);
        let mut fired = 0;
        wheel.advance(2, |_, _| Fired::Due((0, 0), ()), |()| fired += 1);
        assert_eq!(fired, 1);
    }

    proptest! {
        // Miri is ~1000x slower: a few cases still check the code for undefined behaviour.
        #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 3 } else { 256 }))]

        /// Against a reference: every timer fires exactly once, at the first run at or after
        /// its deadline, whatever the deadlines, steps and re-schedules.
        #[test]
        fn every_timer_fires_once_at_its_first_run_past_its_deadline(
            tick in 1u64..5,
            deadlines in proptest::collection::vec(0u64..200_000, 1..40),
            steps in proptest::collection::vec(1u64..20_000, 1..60),
        ) {
            let owned = OwnedWheel::new(deadlines.len() as u32, tick, 0);
        let wheel = owned.wheel();
            for (node, &deadline) in deadlines.iter().enumerate() {
                wheel.schedule(node as u32, deadline);
            }
            let mut fired = Vec::new();
            let mut now = 0;
            let mut runs = Vec::new();
            for step in steps.iter().chain(std::iter::once(&200_000)) {
                now += step;
                fire_at(&wheel, now, &deadlines, &mut fired);
                runs.push(now);
            }
            // Each run hands back by deadline, ties in the order scheduled (node order).
            for run in fired.chunk_by(|a, b| a.1 == b.1) {
                let keys: Vec<(u64, u32)> =
                    run.iter().map(|&(node, _)| (deadlines[node as usize], node)).collect();
                prop_assert!(keys.is_sorted(), "out of order in one run: {:?}", keys);
            }
            fired.sort_unstable();
            prop_assert_eq!(fired.len(), deadlines.len(), "every timer fired once");
            for (node, at) in fired {
                let deadline = deadlines[node as usize];
                let due_run = runs
                    .iter()
                    .copied()
                    .find(|&run| run / tick >= deadline.div_ceil(tick))
                    .unwrap();
                prop_assert!(
                    deadline <= at && at <= due_run,
                    "node {} (deadline {}) fired at {}, due by the run at {}",
                    node, deadline, at, due_run
                );
            }
        }
    }
}

/// Loom model of a wheel insert racing the ticker (no timer lost). Run from the
/// repo root: `RUSTFLAGS="--cfg loom" cargo test --lib --release loom_models`.
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    #[test]
    fn an_insert_racing_a_run_is_not_lost() {
        crate::base::sync::model::check(|| {
            // Timers due at ticks 2 and 1 are inserted while a run at tick 2 goes on; a
            // third timer, far out, sits in a coarse bucket the run detaches and re-files.
            // One more run then picks up whatever overflowed.
            let owned = Arc::new(OwnedWheel::new(3, 1, 0));
            let wheel = owned.wheel();
            wheel.schedule(2, 70);
            let inserter = {
                let owned = owned.clone();
                thread::spawn(move || {
                    let wheel = owned.wheel();
                    wheel.schedule(0, 2);
                    wheel.schedule(1, 1);
                })
            };
            let ticker = {
                let owned = owned.clone();
                thread::spawn(move || {
                    let mut fired = Vec::new();
                    owned.wheel().advance(
                        2,
                        |node, now| {
                            let deadline = [2, 1, 70][node as usize];
                            if deadline > now {
                                return Fired::Again(deadline);
                            }
                            Fired::Due((deadline, 0), node)
                        },
                        |node| fired.push(node),
                    );
                    fired
                })
            };
            inserter.join().unwrap();
            let mut fired = ticker.join().unwrap();
            wheel.advance(
                3,
                |node, _| {
                    assert_ne!(node, 2, "the far timer is not due");
                    Fired::Due((0, 0), node)
                },
                |node| fired.push(node),
            );
            fired.sort_unstable();
            assert_eq!(fired, [0, 1], "both inserted timers fired, exactly once");
        });
    }
}
