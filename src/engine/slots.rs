//! The message store: `capacity` slots, each a header that is the source of truth for one
//! message, plus `max_payload` bytes inline.
//!
//! # The state word
//!
//! Each slot's state is one `u64`, changed only by CAS:
//!
//! | bits   | field      | meaning |
//! |--------|------------|---------|
//! | 0..7   | state      | [`State`] |
//! | 7      | lease timer| the slot's lease timer is in the timing wheel |
//! | 8..16  | pins       | live `Delivery`s borrowing the payload |
//! | 16..32 | version    | `Leased`: bumped by changes of the lease's deadline (extend); `Writing`, `Taken`, `Settling`: the owner's tag (see `participants::OwnerTag`), so recovery can tell a dead owner |
//! | 32..64 | generation | fences stale tokens and receipts |
//!
//! The transitions, one function per arrow of the state diagram, are in `lifecycle`; this
//! module holds the word, the header and the payload bytes.
//!
//! The generation grows on every delivery and every free, so a token or receipt names one
//! incarnation of a slot: whoever holds a stale one fails its CAS and drops it.
//!
//! **Pins** keep a payload alive while a `Delivery` borrows it: a consumer whose lease ran
//! out may still be reading when the message is redelivered, acked and its slot freed. A
//! freed slot returns to the free ring only when its pins reach zero, decided by the same
//! CAS that drops the last pin, so a payload is never rewritten under a reader.
//!
//! The **lease timer** bit says the slot's lease node is in the [wheel](crate::wheel). It
//! outlives leases: an ack leaves the node where it is (lazy cancel), and the next lease of
//! the slot, whose deadline is later, finds the bit set and schedules nothing. Only the
//! ticker clears it, when the node fires for a slot that is no longer leased; whoever sets
//! it schedules the node. Both are decided by CASes on this word, so the node is in the
//! wheel exactly while the bit is set.

use std::cell::UnsafeCell;
use std::sync::atomic::AtomicU64 as StdAtomicU64;

use crate::base::sync::{prefetch_write, AtomicU64, Ordering};

/// What a slot holds now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum State {
    /// In the free ring (or on its way there): holds nothing.
    Free = 0,
    /// A publisher is filling it.
    Writing = 1,
    /// Deliverable: its token is in the ready ring.
    Ready = 2,
    /// Waiting for a delay or a retry backoff: its token is in the timing wheel.
    Delayed = 3,
    /// Delivered to a consumer whose lease has not been settled.
    Leased = 4,
    /// Dead-lettered: kept for inspection and redrive.
    Dead = 5,
    /// Its leaseholder is changing it (nack, reject, extend): while here, the holder alone
    /// writes the slot's fields, and the lease cannot run out under it.
    Settling = 6,
    /// Someone took it out of the queue to write its fields (a receive writing its lease, a
    /// receive or timer dead-lettering it, a redrive resetting it): while here, the taker
    /// alone writes them (see `lifecycle`).
    Taken = 7,
}

impl State {
    #[inline]
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0 => Self::Free,
            1 => Self::Writing,
            2 => Self::Ready,
            3 => Self::Delayed,
            4 => Self::Leased,
            5 => Self::Dead,
            6 => Self::Settling,
            7 => Self::Taken,
            _ => return None,
        })
    }
}

/// A decoded state word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Word {
    pub(crate) state: State,
    pub(crate) pins: u8,
    /// Changes whenever a deadline that others act on changes, so a ticker that read the old
    /// deadline fails its CAS instead of expiring a lease that was just extended.
    pub(crate) version: u16,
    pub(crate) generation: u32,
    /// The slot's lease node is in the timing wheel (see the module docs).
    pub(crate) lease_timer: bool,
}

const LEASE_TIMER_BIT: u64 = 1 << 7;

impl Word {
    #[cfg(test)]
    pub(crate) fn new(state: State, generation: u32) -> Self {
        Self {
            state,
            pins: 0,
            version: 0,
            generation,
            lease_timer: false,
        }
    }

    /// The slot freed: next generation (which fences every old token and receipt), no
    /// lease version, pins and lease timer kept (the last unpin returns the slot to the
    /// free ring; the timer stays in the wheel until it fires).
    #[inline]
    pub(crate) fn freed(self) -> Self {
        Self {
            state: State::Free,
            version: 0,
            generation: self.generation.wrapping_add(1),
            ..self
        }
    }

    #[inline]
    fn pack(self) -> u64 {
        u64::from(self.state as u8)
            | if self.lease_timer { LEASE_TIMER_BIT } else { 0 }
            | u64::from(self.pins) << 8
            | u64::from(self.version) << 16
            | u64::from(self.generation) << 32
    }

    /// `None` for bits no transition ever writes (another writer corrupted the word).
    #[inline]
    fn unpack(bits: u64) -> Option<Self> {
        Some(Self {
            state: State::from_bits(bits as u8 & 0x7f)?,
            pins: (bits >> 8) as u8,
            version: (bits >> 16) as u16,
            generation: (bits >> 32) as u32,
            lease_timer: bits & LEASE_TIMER_BIT != 0,
        })
    }
}

/// A slot's state word held a value no transition writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("slot {slot} has a corrupt state word {bits:#018x}")]
pub(crate) struct CorruptSlot {
    pub(crate) slot: u32,
    pub(crate) bits: u64,
}

/// Why a transition did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransitionError {
    /// The slot was not in the expected state and generation; here is what it was.
    Stale(Word),
    /// The state word is corrupt.
    Corrupt(CorruptSlot),
    /// The slot has the most pins a word can count.
    TooManyPins,
    /// The lease timer is not linked and the caller is not ready to link it (see
    /// `MessageStore::take_to_lease`).
    Unbracketed,
}

/// One slot's header. The word and the fields every message uses fill its first 64-byte
/// line, so a publish and a delivery touch one header line; dead-letter fields follow.
#[repr(C, align(64))]
#[derive(Default)]
pub(crate) struct SlotHeader {
    /// The state word (see the module docs); every transition is one CAS on it.
    word: AtomicU64,
    /// The message's fields.
    meta: Meta,
}

/// Each field of a slot header with its byte offset and, where a word packs two values,
/// how (the layout's fingerprint covers this list: `layout::tests`).
#[cfg(all(test, not(loom)))]
pub(crate) const HEADER_FIELDS: [(&str, usize); 11] = {
    use std::mem::offset_of;
    [
        ("state word", offset_of!(SlotHeader, word)),
        ("id", offset_of!(SlotHeader, meta.id)),
        ("payload_len", offset_of!(SlotHeader, meta.payload_len)),
        (
            "attempts (low 32) | ticket (high 32)",
            offset_of!(SlotHeader, meta.attempts_ticket),
        ),
        ("published_at", offset_of!(SlotHeader, meta.published_at)),
        ("expires_at", offset_of!(SlotHeader, meta.expires_at)),
        ("due_at", offset_of!(SlotHeader, meta.due_at)),
        (
            "written_at_generation",
            offset_of!(SlotHeader, meta.written_at_generation),
        ),
        ("dead_unix", offset_of!(SlotHeader, meta.dead_unix)),
        ("dead_reason", offset_of!(SlotHeader, meta.dead_reason)),
        (
            "reason_len, then the reason",
            offset_of!(SlotHeader, meta.reason_len),
        ),
    ]
};

// The fields every message uses share the first line with the word (see `SlotHeader`).
#[cfg(not(loom))]
const _: () = assert!(std::mem::offset_of!(SlotHeader, meta.written_at_generation) < 64);

/// Bytes of consumer error text a slot keeps (longer text is cut at a char boundary).
pub(crate) const REASON_BYTES: usize = 120;
const REASON_WORDS: usize = REASON_BYTES / 8;

/// A message's fields. Written by whoever holds the slot (the publisher in `Writing`,
/// whoever took it into `Taken` or `Settling`) *before* the word CAS that hands the slot on, and read
/// after acquiring the word. They are relaxed atomics, so a reader racing a writer sees an
/// old or new value, never undefined behaviour; readers that must be consistent re-check
/// the word afterwards. No one writes them without holding the slot: a token can have a
/// twin (crash recovery re-queues tokens without proving them missing), and the twin's
/// holder, losing the CAS that takes the slot, must write nothing.
#[derive(Default)]
#[repr(C)]
pub(crate) struct Meta {
    pub(crate) id: AtomicU64,
    pub(crate) payload_len: AtomicU64,
    /// Low half: deliveries so far (the attempt number of the latest one). High half: the
    /// ticket taken when `due_at` was last set afresh, which orders timers of one deadline
    /// (see `queue::timers`). One word, so both stay on the first line. Use the methods.
    attempts_ticket: AtomicU64,
    /// Publish time on the queue's clock (nanoseconds). Readers show it as Unix time
    /// (`Queue::unix_time`), rather than the publisher storing both: a field more would
    /// spill the hot fields onto a second line.
    pub(crate) published_at: AtomicU64,
    /// TTL deadline on the queue's clock; `u64::MAX` when the message never expires.
    pub(crate) expires_at: AtomicU64,
    /// The lease deadline while `Leased`; the delay or backoff end while `Delayed`.
    pub(crate) due_at: AtomicU64,
    /// The generation at which the publisher stored `id` and `published_at` (released after
    /// them, before the id is recorded for dedup): tells crash recovery whether a slot left
    /// in `Writing` has its id recorded under `published_at`. On the first line with the
    /// word: on the second, the consumers' cores took that line away (adjacent-line
    /// prefetch pairs it with the first) and every publish waited to get it back
    /// (figures: benches/README.md, *Measurements behind the code's choices*).
    pub(crate) written_at_generation: AtomicU64,
    /// Dead-letter time as Unix nanoseconds.
    pub(crate) dead_unix: AtomicU64,
    /// Why it died (a `DeadReason` code).
    pub(crate) dead_reason: AtomicU64,
    reason_len: AtomicU64,
    reason: [AtomicU64; REASON_WORDS],
}

impl Meta {
    /// Deliveries so far (the attempt number of the latest one).
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts_ticket.load(Ordering::Relaxed) as u32
    }

    /// Sets the attempts, keeping the ticket.
    pub(crate) fn set_attempts(&self, attempts: u32) {
        let word = self.attempts_ticket.load(Ordering::Relaxed);
        let word = word & !u64::from(u32::MAX) | u64::from(attempts);
        self.attempts_ticket.store(word, Ordering::Relaxed);
    }

    /// The ticket taken with the latest deadline set afresh.
    pub(crate) fn ticket(&self) -> u32 {
        (self.attempts_ticket.load(Ordering::Relaxed) >> 32) as u32
    }

    /// Sets the attempts and a new deadline with its ticket (a lease taken): one store each.
    pub(crate) fn set_attempts_and_due(&self, attempts: u32, due: u64, ticket: u32) {
        let word = u64::from(ticket) << 32 | u64::from(attempts);
        self.attempts_ticket.store(word, Ordering::Relaxed);
        self.due_at.store(due, Ordering::Relaxed);
    }

    /// Sets a new deadline (a lease taken, a delay or a backoff begun), with its ticket.
    pub(crate) fn set_due(&self, due: u64, ticket: u32) {
        let word = self.attempts_ticket.load(Ordering::Relaxed);
        let word = u64::from(ticket) << 32 | word & u64::from(u32::MAX);
        self.attempts_ticket.store(word, Ordering::Relaxed);
        self.due_at.store(due, Ordering::Relaxed);
    }

    /// Stores error text, cut to `REASON_BYTES` at a char boundary.
    pub(crate) fn set_reason(&self, text: &str) {
        let mut len = text.len().min(REASON_BYTES);
        while !text.is_char_boundary(len) {
            len -= 1;
        }
        let mut bytes = [0u8; REASON_BYTES];
        bytes[..len].copy_from_slice(&text.as_bytes()[..len]);
        for (word, chunk) in self.reason.iter().zip(bytes.chunks_exact(8)) {
            let chunk: [u8; 8] = chunk.try_into().expect("chunks of 8");
            word.store(u64::from_le_bytes(chunk), Ordering::Relaxed);
        }
        self.reason_len.store(len as u64, Ordering::Relaxed);
    }

    /// The stored error text (lossy if a racing writer tore it; callers re-check the word).
    pub(crate) fn reason(&self) -> String {
        let mut bytes = [0u8; REASON_BYTES];
        for (word, chunk) in self.reason.iter().zip(bytes.chunks_exact_mut(8)) {
            chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
        }
        let len = (self.reason_len.load(Ordering::Relaxed) as usize).min(REASON_BYTES);
        String::from_utf8_lossy(&bytes[..len]).into_owned()
    }
}

/// The slots and their payload bytes: a view of two region sections. All bytes zero is a
/// store of free slots at generation 0.
#[derive(Clone, Copy)]
pub(crate) struct MessageStore<'r> {
    headers: &'r [SlotHeader],
    /// `capacity * lines_per_slot` lines. A slot's bytes are written only by the publisher
    /// holding it in `Writing` and read only under a pin, which the state word orders.
    /// (Payload bytes are plain memory, not modelled by loom; the word that orders them is.)
    payloads: &'r [PayloadLine],
    /// Cache lines of payload per slot: each slot's payload starts on a line of its own.
    lines_per_slot: usize,
}

impl<'r> MessageStore<'r> {
    /// The store over these sections; `payloads` holds `lines_per_slot` lines per header.
    /// (Always: the layout is computed by this build from the checked configuration, never
    /// read from a segment, so [`Self::payload_start`] can slice without a fallback.)
    #[inline]
    pub(crate) fn new(
        headers: &'r [SlotHeader],
        payloads: &'r [PayloadLine],
        lines_per_slot: usize,
    ) -> Self {
        debug_assert_eq!(payloads.len(), headers.len() * lines_per_slot);
        Self {
            headers,
            payloads,
            lines_per_slot,
        }
    }

    #[inline]
    fn header(&self, slot: u32) -> Result<&'r SlotHeader, CorruptSlot> {
        self.headers
            .get(slot as usize)
            .ok_or(CorruptSlot { slot, bits: 0 })
    }

    /// The slot's fields (see [`Meta`] for who may write them when).
    #[inline]
    pub(crate) fn meta(&self, slot: u32) -> Result<&'r Meta, CorruptSlot> {
        Ok(&self.header(slot)?.meta)
    }

    /// Number of slots.
    pub(crate) fn capacity(&self) -> u32 {
        self.headers.len() as u32
    }

    /// The slot's current word.
    #[inline]
    pub(crate) fn load(&self, slot: u32) -> Result<Word, CorruptSlot> {
        let bits = self.header(slot)?.word.load(Ordering::Acquire);
        Word::unpack(bits).ok_or(CorruptSlot { slot, bits })
    }

    /// Moves the slot from exactly `expected` to whatever `change` makes of it, with one CAS
    /// that acquires what the previous owner wrote and releases what this one wrote.
    #[inline]
    pub(super) fn transition(
        &self,
        slot: u32,
        expected: Word,
        change: impl FnOnce(Word) -> Option<Word>,
    ) -> Result<Word, TransitionError> {
        let header = self.header(slot).map_err(TransitionError::Corrupt)?;
        let new = change(expected).ok_or(TransitionError::TooManyPins)?;
        match header.word.compare_exchange(
            expected.pack(),
            new.pack(),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => Ok(new),
            Err(bits) => Err(match Word::unpack(bits) {
                Some(actual) => TransitionError::Stale(actual),
                None => TransitionError::Corrupt(CorruptSlot { slot, bits }),
            }),
        }
    }

    /// Moves the slot from `from` at `generation` (with whatever pins it has) via `change`,
    /// retrying while only the pins differ. The common form: "if it is still Leased(g)...".
    #[inline]
    pub(super) fn transition_from(
        &self,
        slot: u32,
        from: State,
        generation: u32,
        change: impl Fn(Word) -> Option<Word>,
    ) -> Result<Word, TransitionError> {
        let current = self.load(slot).map_err(TransitionError::Corrupt)?;
        self.transition_from_seen(slot, current, from, generation, change)
    }

    /// [`transition_from`](Self::transition_from) starting from a word the caller just
    /// loaded (one load fewer on a hot path).
    #[inline]
    pub(super) fn transition_from_seen(
        &self,
        slot: u32,
        seen: Word,
        from: State,
        generation: u32,
        change: impl Fn(Word) -> Option<Word>,
    ) -> Result<Word, TransitionError> {
        let mut current = seen;
        loop {
            if current.state != from || current.generation != generation {
                return Err(TransitionError::Stale(current));
            }
            match self.transition(slot, current, &change) {
                Err(TransitionError::Stale(actual)) => current = actual,
                other => return other,
            }
        }
    }

    /// Sets the slot's word from exactly `seen` to `new`: for tests that build the states
    /// a process killed mid-way leaves (the queue moves slots through `lifecycle` alone).
    #[cfg(all(test, not(loom), not(miri)))]
    pub(crate) fn force(&self, slot: u32, seen: Word, new: Word) -> Result<Word, TransitionError> {
        self.transition(slot, seen, |_| Some(new))
    }

    /// Drops one pin. Returns the slot's generation if this was the last pin of a freed
    /// slot: the caller then owns returning it to the free ring.
    pub(crate) fn unpin(&self, slot: u32) -> Result<Option<u32>, CorruptSlot> {
        let mut current = self.load(slot)?;
        loop {
            let Some(pins) = current.pins.checked_sub(1) else {
                return Ok(None); // nothing pinned: a corrupt or repeated unpin, ignore it
            };
            let new = Word { pins, ..current };
            match self.transition(slot, current, |_| Some(new)) {
                Ok(_) => {
                    return Ok((new.state == State::Free && pins == 0).then_some(new.generation))
                }
                Err(TransitionError::Stale(actual)) => current = actual,
                Err(TransitionError::Corrupt(corrupt)) => return Err(corrupt),
                Err(TransitionError::TooManyPins | TransitionError::Unbracketed) => {
                    unreachable!("unpin adds no pin and links no timer")
                }
            }
        }
    }

    /// The start of the slot's payload lines, with provenance over all of them.
    #[inline]
    fn payload_start(&self, slot: u32) -> *mut u8 {
        let first = slot as usize * self.lines_per_slot;
        let lines = &self.payloads[first..first + self.lines_per_slot];
        // `PayloadLine` is `repr(C)` around the cell, and lines are 64 bytes apart with no
        // gaps, so the slot's bytes are one run of `lines_per_slot * 64`.
        UnsafeCell::raw_get(lines.as_ptr().cast::<UnsafeCell<[u8; 64]>>()).cast::<u8>()
    }

    /// Starts loading the slot's header line and first payload line, so that the miss on
    /// the word and the miss on the payload overlap instead of following each other.
    #[inline]
    pub(crate) fn prefetch(&self, slot: u32) {
        if let Some(header) = self.headers.get(slot as usize) {
            prefetch_write(&header.word);
        }
        if let Some(line) = self.payloads.get(slot as usize * self.lines_per_slot) {
            prefetch_write(line);
        }
    }

    /// The slot's payload lines as words, for atomic access: in a shared segment another
    /// process may write these bytes at any time (only a broken or hostile one would, but
    /// it could), and an atomic access racing with a write is no undefined behaviour.
    /// (`std`'s atomics even under loom, which does not model payload bytes.)
    #[inline]
    fn payload_words(&self, slot: u32) -> &'r [StdAtomicU64] {
        let first = slot as usize * self.lines_per_slot;
        let lines: &'r [PayloadLine] = &self.payloads[first..first + self.lines_per_slot];
        // SAFETY: the lines are one run of `lines_per_slot * 64` bytes (`PayloadLine` is
        // `repr(C, align(64))` around the cell, no gaps), 8-aligned, borrowed for 'r, and
        // inside `UnsafeCell`s, so shared mutation through atomics is allowed; `AtomicU64`
        // has the size and alignment of `u64`, and any bit pattern is a valid one.
        unsafe {
            std::slice::from_raw_parts(
                UnsafeCell::raw_get(lines.as_ptr().cast::<UnsafeCell<[u8; 64]>>())
                    .cast::<StdAtomicU64>()
                    .cast_const(),
                self.lines_per_slot * 8,
            )
        }
    }

    /// Copies `bytes` into the slot's payload area (the caller holds the slot in
    /// `Writing`; `bytes` longer than the slot's lines are cut short, which `publish`
    /// rules out beforehand). The tail of the last word is zero-filled.
    #[inline]
    pub(crate) fn write_payload(&self, slot: u32, bytes: &[u8]) {
        let words = self.payload_words(slot);
        let whole = bytes.chunks_exact(8);
        let tail = whole.remainder();
        let mut words = words.iter();
        // The chunks first: `zip` stops at their end without taking a word for it.
        for (chunk, word) in whole.zip(words.by_ref()) {
            let chunk: [u8; 8] = chunk.try_into().expect("chunks_exact(8) yields 8 bytes");
            word.store(
                u64::from_ne_bytes(chunk),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        if let (Some(word), false) = (words.next(), tail.is_empty()) {
            let mut padded = [0u8; 8];
            padded[..tail.len()].copy_from_slice(tail);
            word.store(
                u64::from_ne_bytes(padded),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    /// Copies the slot's first `out.len()` payload bytes (at most the slot's lines) into
    /// `out` with atomic loads: sound whatever another process does to the bytes meanwhile.
    #[inline]
    pub(crate) fn copy_payload(&self, slot: u32, out: &mut [u8]) {
        let mut words = self.payload_words(slot).iter();
        let mut whole = out.chunks_exact_mut(8);
        // The chunks first: `zip` stops at their end without taking a word for it.
        for (chunk, word) in whole.by_ref().zip(words.by_ref()) {
            let bytes = word
                .load(std::sync::atomic::Ordering::Relaxed)
                .to_ne_bytes();
            chunk.copy_from_slice(&bytes);
        }
        let tail = whole.into_remainder();
        if let (Some(word), false) = (words.next(), tail.is_empty()) {
            let bytes = word
                .load(std::sync::atomic::Ordering::Relaxed)
                .to_ne_bytes();
            tail.copy_from_slice(&bytes[..tail.len()]);
        }
    }

    /// The slot's first `len` payload bytes, borrowed.
    ///
    /// # Safety
    /// The region is this process's alone (a shared segment's bytes may be written by a
    /// process that breaks the protocol: use [`copy_payload`](Self::copy_payload)). The
    /// caller holds a pin on the slot, taken by a transition that acquired the word after
    /// the publisher's `Writing -> Ready | Delayed`, and `len <= max_payload`. While pinned
    /// the slot is not freed to the free ring, so no publisher writes these bytes.
    #[inline]
    pub(crate) unsafe fn payload(&self, slot: u32, len: usize) -> &'r [u8] {
        debug_assert!(len <= self.lines_per_slot * 64);
        // SAFETY: no writer while pinned (see above); the bytes are initialized (zeroed at
        // creation) and `len <= max_payload` of them lie behind the start.
        unsafe { std::slice::from_raw_parts(self.payload_start(slot).cast_const(), len) }
    }
}

/// 64 payload bytes on a cache line of their own.
#[repr(C, align(64))]
pub(crate) struct PayloadLine(UnsafeCell<[u8; 64]>);

impl Default for PayloadLine {
    fn default() -> Self {
        Self(UnsafeCell::new([0; 64]))
    }
}

// SAFETY: payload bytes are only accessed under the slot protocol (an exclusive writer in
// `Writing`, readers pinned after acquiring the word), which the state word's CASes order.
unsafe impl Sync for PayloadLine {}

/// A store in memory of its own (tests and loom models).
#[cfg(test)]
pub(crate) struct OwnedStore {
    headers: Box<[SlotHeader]>,
    payloads: Box<[PayloadLine]>,
    lines_per_slot: usize,
}

#[cfg(test)]
impl OwnedStore {
    /// `capacity` free slots of `max_payload` bytes.
    pub(crate) fn new(capacity: u32, max_payload: usize) -> Self {
        let lines_per_slot = max_payload.div_ceil(64);
        Self {
            headers: (0..capacity).map(|_| SlotHeader::default()).collect(),
            payloads: (0..capacity as usize * lines_per_slot)
                .map(|_| PayloadLine::default())
                .collect(),
            lines_per_slot,
        }
    }

    pub(crate) fn store(&self) -> MessageStore<'_> {
        MessageStore::new(&self.headers, &self.payloads, self.lines_per_slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn lease(
        store: &MessageStore,
        slot: u32,
        ready_generation: u32,
    ) -> Result<Word, TransitionError> {
        store.transition_from(slot, State::Ready, ready_generation, |w| {
            Some(Word {
                state: State::Leased,
                pins: w.pins.checked_add(1)?,
                generation: w.generation.wrapping_add(1),
                ..w
            })
        })
    }

    pub(super) fn ack(
        store: &MessageStore,
        slot: u32,
        receipt: u32,
    ) -> Result<Word, TransitionError> {
        store.transition_from(slot, State::Leased, receipt, |w| Some(w.freed()))
    }

    pub(super) fn expire(
        store: &MessageStore,
        slot: u32,
        receipt: u32,
    ) -> Result<Word, TransitionError> {
        store.transition_from(slot, State::Leased, receipt, |w| {
            Some(Word {
                state: State::Ready,
                ..w
            })
        })
    }

    pub(super) fn publish(store: &MessageStore, slot: u32, generation: u32, payload: &[u8]) {
        store
            .transition(slot, Word::new(State::Free, generation), |w| {
                Some(Word {
                    state: State::Writing,
                    ..w
                })
            })
            .unwrap();
        store.write_payload(slot, payload); // we hold the slot in Writing; it fits
        store
            .transition(slot, Word::new(State::Writing, generation), |w| {
                Some(Word {
                    state: State::Ready,
                    ..w
                })
            })
            .unwrap();
    }

    #[test]
    fn words_round_trip_and_reject_garbage() {
        let word = Word {
            state: State::Dead,
            pins: 3,
            version: 0xbeef,
            generation: u32::MAX,
            lease_timer: true,
        };
        assert_eq!(Word::unpack(word.pack()), Some(word));
        let no_timer = Word {
            lease_timer: false,
            ..word
        };
        assert_eq!(Word::unpack(no_timer.pack()), Some(no_timer));
        assert_eq!(Word::unpack(8), None, "no state 8");
        assert_eq!(Word::unpack(0x7f), None, "no state 127");
    }

    #[test]
    fn payloads_of_every_length_copy_back_whole_and_alone() {
        // Two slots of two lines: a payload's words never reach into the next slot's.
        let owned = OwnedStore::new(2, 128);
        let store = owned.store();
        for len in 0..=128 {
            let pattern: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            store.write_payload(1, &[0xee; 128]);
            store.write_payload(0, &pattern);
            let mut back = vec![0xaa; len];
            store.copy_payload(0, &mut back);
            assert_eq!(back, pattern, "length {len}");
            let mut neighbour = [0; 128];
            store.copy_payload(1, &mut neighbour);
            assert_eq!(neighbour, [0xee; 128], "length {len} wrote past its slot");
            // SAFETY: this test's store is its alone; nothing writes meanwhile.
            assert_eq!(unsafe { store.payload(0, len) }, &pattern[..]);
        }
    }

    #[test]
    fn a_message_goes_round_and_a_stale_receipt_fails() {
        let owned = OwnedStore::new(2, 16);
        let store = owned.store();
        publish(&store, 1, 0, b"hello");
        let leased = lease(&store, 1, 0).unwrap();
        assert_eq!(
            (leased.state, leased.pins, leased.generation),
            (State::Leased, 1, 1)
        );
        // SAFETY: pinned by the lease above; 5 <= max_payload.
        assert_eq!(unsafe { store.payload(1, 5) }, b"hello");

        // The lease runs out and the message is delivered again: the first receipt is stale.
        expire(&store, 1, 1).unwrap();
        let again = lease(&store, 1, 1).unwrap();
        assert_eq!((again.pins, again.generation), (2, 2));
        assert!(matches!(ack(&store, 1, 1), Err(TransitionError::Stale(_))));
        let freed = ack(&store, 1, 2).unwrap();
        assert_eq!((freed.state, freed.generation), (State::Free, 3));

        // Freed, but the first consumer still reads: not reclaimable until both pins go.
        assert_eq!(store.unpin(1), Ok(None));
        assert_eq!(
            store.unpin(1),
            Ok(Some(3)),
            "last pin of a freed slot reclaims it"
        );
        assert_eq!(store.unpin(1), Ok(None), "an extra unpin is ignored");
        publish(&store, 1, 3, b"next");
    }

    #[test]
    fn reasons_are_kept_and_cut_at_a_char_boundary() {
        let meta = Meta::default();
        meta.set_reason("timeout talking to db");
        assert_eq!(meta.reason(), "timeout talking to db");
        // "a" then 2-byte chars: byte 120 falls inside a char, so the cut moves to 119.
        let long = format!("a{}", "é".repeat(REASON_BYTES));
        meta.set_reason(&long);
        assert_eq!(
            meta.reason(),
            format!("a{}", "é".repeat((REASON_BYTES - 2) / 2))
        );
        meta.set_reason("");
        assert_eq!(meta.reason(), "");
    }

    #[test]
    fn corrupt_words_and_slots_are_errors() {
        let owned = OwnedStore::new(1, 8);
        let store = owned.store();
        assert!(store.load(1).is_err(), "slot out of range");
        store.headers[0].word.store(0xff, Ordering::Relaxed);
        assert_eq!(
            store.load(0),
            Err(CorruptSlot {
                slot: 0,
                bits: 0xff
            })
        );
        assert!(matches!(
            lease(&store, 0, 0),
            Err(TransitionError::Corrupt(_))
        ));
        assert!(store.unpin(0).is_err());
    }

    #[test]
    fn pins_saturate_with_an_error() {
        let owned = OwnedStore::new(1, 0);
        let store = owned.store();
        let full = Word {
            pins: u8::MAX,
            ..Word::new(State::Ready, 0)
        };
        store.headers[0].word.store(full.pack(), Ordering::Relaxed);
        assert_eq!(lease(&store, 0, 0), Err(TransitionError::TooManyPins));
    }

    #[test]
    fn racing_receivers_lease_once_and_racing_acks_settle_once() {
        let owned = OwnedStore::new(1, 8);
        let store = owned.store();
        let rounds = if cfg!(miri) { 20 } else { 2_000 };
        let mut generation = 0;
        for _ in 0..rounds {
            publish(&store, 0, generation, b"x");
            let receipts: Vec<Option<u32>> = std::thread::scope(|s| {
                let racers: Vec<_> = (0..2)
                    .map(|_| s.spawn(|| lease(&store, 0, generation).ok().map(|w| w.generation)))
                    .collect();
                racers.into_iter().map(|r| r.join().unwrap()).collect()
            });
            let receipt = receipts.iter().flatten().copied().collect::<Vec<_>>();
            assert_eq!(receipt.len(), 1, "exactly one receiver leased it");
            let acks: Vec<bool> = std::thread::scope(|s| {
                let racers: Vec<_> = (0..2)
                    .map(|_| s.spawn(|| ack(&store, 0, receipt[0]).is_ok()))
                    .collect();
                racers.into_iter().map(|r| r.join().unwrap()).collect()
            });
            assert_eq!(acks.iter().filter(|a| **a).count(), 1, "acked exactly once");
            generation = store.unpin(0).unwrap().expect("freed and unpinned");
        }
    }
}

/// Loom models of the state word's races. Run from the repo root:
/// `RUSTFLAGS="--cfg loom" cargo test --lib --release loom_models`.
#[cfg(all(test, loom))]
mod loom_models {
    use super::tests::{ack, expire, lease, publish};
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    #[test]
    fn ack_races_lease_expiry_exactly_one_outcome() {
        let outcomes =
            std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
        let sink = outcomes.clone();
        crate::base::sync::model::check(move || {
            let owned = Arc::new(OwnedStore::new(1, 0));
            let store = owned.store();
            publish(&store, 0, 0, b"");
            let receipt = lease(&store, 0, 0).unwrap().generation;
            let acker = {
                let owned = owned.clone();
                thread::spawn(move || ack(&owned.store(), 0, receipt).is_ok())
            };
            let expirer = {
                let owned = owned.clone();
                thread::spawn(move || expire(&owned.store(), 0, receipt).is_ok())
            };
            let (acked, expired) = (acker.join().unwrap(), expirer.join().unwrap());
            assert!(acked != expired, "exactly one of ack and expiry wins");
            let word = store.load(0).unwrap();
            if acked {
                assert_eq!((word.state, word.generation), (State::Free, receipt + 1));
            } else {
                // Redelivered: ready again at the lease's generation; the late ack failed.
                assert_eq!((word.state, word.generation), (State::Ready, receipt));
                assert!(ack(&store, 0, receipt).is_err());
            }
            sink.lock().unwrap().insert(acked);
        });
        assert_eq!(outcomes.lock().unwrap().len(), 2, "both outcomes explored");
    }

    #[test]
    fn two_receivers_race_for_one_message() {
        crate::base::sync::model::check(|| {
            let owned = Arc::new(OwnedStore::new(1, 0));
            let store = owned.store();
            publish(&store, 0, 0, b"");
            let receivers: Vec<_> = (0..2)
                .map(|_| {
                    let owned = owned.clone();
                    thread::spawn(move || lease(&owned.store(), 0, 0).is_ok())
                })
                .collect();
            let leased = receivers
                .into_iter()
                .map(|r| r.join().unwrap())
                .filter(|won| *won)
                .count();
            // Exactly one got it (a CAS that lost to a pin change retries, so never zero).
            assert_eq!(leased, 1);
            assert_eq!(store.load(0).unwrap().pins, 1);
        });
    }
}
