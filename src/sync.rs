//! The loom facade: every atomic, cell, spin hint and thread the engine uses comes from here.
//!
//! Built normally, these are the `std` (and crossbeam) types. Built with `--cfg loom`, they are
//! loom's model-checked versions, so the loom tests in `loom-tests/` explore the interleavings
//! of the very code that ships. Nothing in the crate may import `std::sync::atomic`,
//! `std::cell::UnsafeCell` or `std::thread` directly.

#[cfg(not(loom))]
mod imp {
    pub(crate) use crossbeam_utils::Backoff;
    pub(crate) use std::sync::atomic::{fence, AtomicU64, Ordering};

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
    pub(crate) use loom::sync::atomic::{fence, AtomicU64, Ordering};

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
