//! The loom facade: every atomic, cell, spin hint and thread the engine uses comes from here.
//!
//! Built normally, these are the `std` (and crossbeam) types. Built with `--cfg loom`, they are
//! loom's model-checked versions, so the loom tests in `loom-tests/` explore the interleavings
//! of the very code that ships. Nothing in the crate may import `std::sync::atomic`,
//! `std::cell::UnsafeCell` or `std::thread` directly.

#[cfg(not(loom))]
mod imp {
    pub(crate) use crossbeam_utils::Backoff;
    pub(crate) use std::hint::spin_loop as spin_hint;
    pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

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

/// Like [`prefetch_read`], for a line about to be written (fetched exclusive, where the CPU
/// can).
#[inline(always)]
pub(crate) fn prefetch_write<T>(place: &T) {
    prefetch::<T, { PREFETCH_WRITE }>(place);
}

#[cfg(all(target_arch = "x86_64", not(loom), not(miri)))]
const PREFETCH_READ: i32 = core::arch::x86_64::_MM_HINT_T0;
#[cfg(all(target_arch = "x86_64", not(loom), not(miri)))]
const PREFETCH_WRITE: i32 = core::arch::x86_64::_MM_HINT_ET0;
#[cfg(not(all(target_arch = "x86_64", not(loom), not(miri))))]
const PREFETCH_READ: i32 = 0;
#[cfg(not(all(target_arch = "x86_64", not(loom), not(miri))))]
const PREFETCH_WRITE: i32 = 1;

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
