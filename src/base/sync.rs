//! The loom facade: every atomic, cell, spin hint and thread the engine uses comes from here.
//!
//! Built normally, these are the `std` (and crossbeam) types. Built with `--cfg loom`, they are
//! loom's model-checked versions, so the `loom_models` modules explore the interleavings
//! of the very code that ships. Nothing in the crate may import `std::sync::atomic`,
//! `std::cell::UnsafeCell` or `std::thread` directly.

#[cfg(not(loom))]
mod imp {
    pub(crate) use crossbeam_utils::Backoff;
    pub(crate) use std::hint::spin_loop as spin_hint;
    pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
    #[cfg(feature = "async")]
    pub(crate) use std::sync::{Mutex, MutexGuard};

    /// `std::cell::UnsafeCell` behind loom's closure API, so call sites read the same under both.
    #[derive(Debug)]
    #[repr(transparent)]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        pub(crate) const fn new(value: T) -> Self {
            Self(std::cell::UnsafeCell::new(value))
        }

        /// Runs `f` with a raw pointer to the contents; the caller upholds aliasing rules.
        #[inline(always)]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}

#[cfg(loom)]
mod imp {
    pub(crate) use loom::cell::UnsafeCell;
    pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
    pub(crate) use loom::sync::{Mutex, MutexGuard};
    /// Under loom a spin hint is a yield, so the model checker can schedule the thread we
    /// wait for.
    pub(crate) use loom::thread::yield_now as spin_hint;

    /// Under loom a spin is a yield, so the model checker can schedule the thread we wait for.
    #[derive(Debug, Default)]
    pub(crate) struct Backoff;

    impl Backoff {
        pub(crate) fn new() -> Self {
            Self
        }
        pub(crate) fn spin(&self) {
            loom::thread::yield_now();
        }
        pub(crate) fn snooze(&self) {
            loom::thread::yield_now();
        }
    }
}

pub(crate) use imp::*;

/// Starts loading the cache line of `place` for reading: a hint that lets a miss overlap
/// other work. Does nothing where there is no prefetch instruction (and under loom/Miri).
#[inline(always)]
pub(crate) fn prefetch_read<T>(place: &T) {
    prefetch::<T, { PREFETCH_READ }>(place);
}

/// Like [`prefetch_read`], for a line about to be written: fetched exclusive, so that the
/// write (often a CAS) does not wait for the line again to own it.
///
/// On x86-64 that is `PREFETCHW`, which `_mm_prefetch` emits only when the crate is built
/// for a CPU that has it (`-C target-feature=+prfchw`, unstable): a default build silently
/// gets a read prefetch instead. So it is issued here directly, where the CPU reports it
/// (every x86-64 CPU since Intel Broadwell and AMD K8); elsewhere a read prefetch it is.
/// With it, publish -> receive -> ack moves more messages (figures: benches/README.md,
/// *Measurements behind the code's choices*).
#[inline(always)]
pub(crate) fn prefetch_write<T>(place: &T) {
    #[cfg(all(target_arch = "x86_64", not(loom), not(miri)))]
    if prefetchw::available() {
        prefetchw::issue(std::ptr::from_ref(place).cast::<u8>());
        return;
    }
    prefetch_read(place);
}

#[cfg(all(target_arch = "x86_64", not(loom), not(miri)))]
mod prefetchw {
    use std::sync::atomic::{AtomicU8, Ordering};

    const UNKNOWN: u8 = 0;
    const ABSENT: u8 = 1;
    const PRESENT: u8 = 2;

    /// Whether this CPU has `PREFETCHW`, once asked.
    static SUPPORT: AtomicU8 = AtomicU8::new(UNKNOWN);

    #[inline(always)]
    pub(super) fn available() -> bool {
        match SUPPORT.load(Ordering::Relaxed) {
            PRESENT => true,
            ABSENT => false,
            _ => detect(),
        }
    }

    /// Asks CPUID: leaf 0x8000_0001, ECX bit 8 ("3DNowPrefetch", which is `PREFETCHW`).
    #[cold]
    fn detect() -> bool {
        use core::arch::x86_64::__cpuid;
        // SAFETY: CPUID exists on every x86-64 CPU and only reads identification registers
        // (older toolchains declare `__cpuid` unsafe, newer ones safe).
        #[allow(unused_unsafe)]
        let present = unsafe {
            __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 8) != 0
        };
        SUPPORT.store(if present { PRESENT } else { ABSENT }, Ordering::Relaxed);
        present
    }

    #[inline(always)]
    pub(super) fn issue(address: *const u8) {
        // SAFETY: `available` said the CPU has PREFETCHW. A prefetch never faults, whatever
        // the address (this one comes from a live reference anyway), and changes no
        // register, flag or memory the program can observe.
        unsafe {
            core::arch::asm!(
                "prefetchw byte ptr [{0}]",
                in(reg) address,
                options(nostack, preserves_flags, readonly)
            );
        }
    }
}

#[cfg(all(target_arch = "x86_64", not(loom), not(miri)))]
const PREFETCH_READ: i32 = core::arch::x86_64::_MM_HINT_T0;
#[cfg(not(all(target_arch = "x86_64", not(loom), not(miri))))]
const PREFETCH_READ: i32 = 0;

#[inline(always)]
fn prefetch<T, const HINT: i32>(place: &T) {
    #[cfg(all(target_arch = "x86_64", not(loom), not(miri)))]
    // SAFETY: a prefetch never faults and makes nothing observable to the program; the
    // address comes from a live reference anyway.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<HINT>(std::ptr::from_ref(place).cast::<i8>());
    }
    #[cfg(not(all(target_arch = "x86_64", not(loom), not(miri))))]
    let _ = place;
}

/// How every loom model in the crate runs (as tokio's `loom::model` wrapper): one place that
/// sets loom up, so each model is a small story beside the code it checks (a `loom_models`
/// module): spawn two or three threads, race one pair of operations, assert one invariant.
/// `LOOM_MAX_PREEMPTIONS` (CI: 3) bounds the interleavings, as loom reads it.
#[cfg(all(test, loom))]
pub(crate) mod model {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    /// Room for the spins of a consumer that waits out a ring slot claimed but not yet
    /// published: they take more branches than loom's default allows.
    const MAX_BRANCHES: usize = 100_000;

    fn builder(preemptions: Option<usize>) -> loom::model::Builder {
        let mut builder = loom::model::Builder::new();
        builder.max_branches = MAX_BRANCHES;
        if preemptions.is_some() {
            builder.preemption_bound = preemptions;
        }
        builder
    }

    /// Runs `story` over every interleaving loom reaches.
    pub(crate) fn check(story: impl Fn() + Sync + Send + 'static) {
        builder(None).check(story);
    }

    /// [`check`] with at most `preemptions` preemptions, for a model too large for the
    /// bound the others run at (its docs say why fewer still find the race).
    pub(crate) fn check_bounded(preemptions: usize, story: impl Fn() + Sync + Send + 'static) {
        builder(Some(preemptions)).check(story);
    }

    /// [`check`], returning every outcome `story` reported, so that a model can assert the
    /// interesting ones occurred: one that stops exploring its race then fails.
    pub(crate) fn explore<T: Ord + Send + 'static>(
        story: impl Fn() -> T + Sync + Send + 'static,
    ) -> BTreeSet<T> {
        let outcomes = std::sync::Arc::new(Mutex::new(BTreeSet::new()));
        let sink = outcomes.clone();
        builder(None).check(move || {
            let outcome = story();
            sink.lock().unwrap().insert(outcome);
        });
        let seen = std::mem::take(&mut *outcomes.lock().unwrap());
        seen
    }
}
