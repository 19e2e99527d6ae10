//! A mapped segment file: memory of unknown origin, whose header is read only through
//! atomics and checked field by field before any section is used.

use std::fs::File;
use std::path::Path;

use crate::error::ShmError;
use crate::layout::header;

/// A mapped segment file.
pub(crate) struct Mapping {
    map: memmap2::MmapRaw,
}

impl Mapping {
    pub(crate) fn map(file: &File, path: &Path) -> Result<Self, ShmError> {
        let map = memmap2::MmapRaw::map_raw(file).map_err(|e| ShmError::from_io(e, path))?;
        Ok(Self { map })
    }

    /// The segment's header words.
    pub(crate) fn header(&self) -> Result<header::Header<'_>, ShmError> {
        if self.map.len() < header::HEADER_BYTES {
            return Err(ShmError::Corrupt {
                what: "the segment is shorter than a header (truncated)",
            });
        }
        // SAFETY: the mapping is page-aligned and at least HEADER_BYTES long (checked), so
        // the first WORDS words are in bounds and aligned; they are only accessed as atomics,
        // and the mapping lives as long as the returned borrow of `self`.
        let words = unsafe {
            &*self
                .map
                .as_ptr()
                .cast::<[crate::base::sync::AtomicU64; header::WORDS]>()
        };
        Ok(header::Header::new(words))
    }

    pub(crate) fn start(&self) -> std::ptr::NonNull<u8> {
        std::ptr::NonNull::new(self.map.as_mut_ptr()).expect("a mapping is never at null")
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}
