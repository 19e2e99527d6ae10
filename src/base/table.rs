//! Views of memory shared with other threads and processes: a section lent one element
//! at a time ([`Table`]), and a word alone on its cache lines ([`Padded`]).

use std::marker::PhantomData;
use std::ptr::NonNull;

use crate::base::sync::AtomicU64;

/// A word alone on its pair of cache lines.
#[repr(C, align(128))]
#[derive(Default)]
pub(crate) struct Padded(pub(crate) AtomicU64);

/// A section lent one element at a time: what `&'r [T]` offers (`len`, `get`, `iter`),
/// except that no reference to the whole section is ever made.
///
/// Why: Miri retags a reference over every byte it covers, each time one is made. The
/// participants section is 132 KiB (64 entries of 264 words, mostly pin marks), and the
/// reference to it that every queue operation made slowed each operation under Miri so
/// much that CI's run of the queue's unit tests took far too long (figures:
/// benches/README.md, *Measurements behind the code's choices*). Compiled, this is the
/// same code as a slice.
pub(crate) struct Table<'r, T> {
    elements: NonNull<[T]>,
    lent: PhantomData<&'r [T]>,
}

impl<T> Clone for Table<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Table<'_, T> {}

// SAFETY: a `Table` lends only shared references to its elements, as `&[T]` does, so it
// may cross and be shared between threads exactly when `&[T]` may.
unsafe impl<T: Sync> Send for Table<'_, T> {}
// SAFETY: as for `Send` above.
unsafe impl<T: Sync> Sync for Table<'_, T> {}

impl<'r, T> Table<'r, T> {
    /// The elements of a slice (for tests).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn new(elements: &'r [T]) -> Self {
        Self {
            elements: NonNull::from(elements),
            lent: PhantomData,
        }
    }

    /// # Safety
    /// `elements` is aligned for `T`, its `len` elements lie in one live allocation, and
    /// they are initialized values that stay valid, unmoved and only ever shared (no
    /// `&mut`; other threads and processes write them through atomics) for `'r`.
    pub(crate) unsafe fn from_raw(elements: NonNull<[T]>) -> Self {
        Self {
            elements,
            lent: PhantomData,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.elements.len()
    }

    /// The element at `index`, if `index < len`.
    #[inline]
    pub(crate) fn get(&self, index: usize) -> Option<&'r T> {
        if index >= self.len() {
            return None;
        }
        // SAFETY: `index` is in bounds (checked above), so the element lies inside the
        // elements, which `from_raw`'s caller (or `new`'s borrow) keeps valid and shared
        // for `'r`.
        Some(unsafe { self.elements.cast::<T>().add(index).as_ref() })
    }

    /// The elements in order.
    pub(crate) fn iter(self) -> impl Iterator<Item = &'r T> + Clone {
        (0..self.len()).filter_map(move |index| self.get(index))
    }
}
