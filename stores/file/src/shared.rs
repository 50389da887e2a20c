//! State shared by the store handle and its threads.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use cnerium_core::StoreError;

use crate::index::Index;
use crate::options::FileStoreOptions;

/// How many fences one reservation covers. A restart skips at most this many.
pub(crate) const FENCE_BLOCK: u64 = 1 << 16;

/// Counters the store keeps for tests, benchmarks and operators.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) syncs: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) compactions: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) options: FileStoreOptions,
    pub(crate) index: Mutex<Index>,
    /// Open segment files by id; readers clone the handle, so a segment that compaction
    /// deletes stays readable for whoever already holds it.
    pub(crate) files: RwLock<HashMap<u32, Arc<File>>>,
    /// Every fence below this number is covered by the durable fence file.
    pub(crate) reserved: AtomicU64,
    /// A reservation was asked of the writer and has not been made yet.
    pub(crate) reserve_requested: AtomicBool,
    /// The segment the writer appends to; compaction leaves it alone.
    pub(crate) active_segment: AtomicU32,
    pub(crate) next_segment: AtomicU32,
    /// Records expiring at or before this time were purged (milliseconds).
    pub(crate) purged_upto: AtomicU64,
    /// Set once a sync failed: the writer refuses every later write.
    pub(crate) failure: Mutex<Option<String>>,
    pub(crate) closed: AtomicBool,
    pub(crate) counters: Counters,
    /// Faults the unit tests inject into the writer.
    #[cfg(test)]
    pub(crate) faults: Faults,
}

/// Write and sync failures the unit tests ask for.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub(crate) fail_writes: AtomicBool,
    pub(crate) fail_syncs: AtomicBool,
}

impl Shared {
    pub(crate) fn index(&self) -> MutexGuard<'_, Index> {
        // Index updates never run user code and keep the index consistent at every step
        // that can panic, so a poisoned lock still guards a usable index.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn file(&self, segment: u32) -> Option<Arc<File>> {
        let files = self.files.read().unwrap_or_else(|e| e.into_inner());
        files.get(&segment).cloned()
    }

    pub(crate) fn add_file(&self, segment: u32, file: Arc<File>) {
        let mut files = self.files.write().unwrap_or_else(|e| e.into_inner());
        files.insert(segment, file);
    }

    pub(crate) fn remove_file(&self, segment: u32) {
        let mut files = self.files.write().unwrap_or_else(|e| e.into_inner());
        files.remove(&segment);
    }

    pub(crate) fn segment_count(&self) -> usize {
        self.files.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub(crate) fn allocate_segment(&self) -> u32 {
        self.next_segment.fetch_add(1, Ordering::SeqCst)
    }

    /// Why the store refuses writes, if it does.
    pub(crate) fn failed(&self) -> Option<StoreError> {
        let failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        failure
            .as_ref()
            .map(|reason| StoreError::new(reason.clone()))
    }

    pub(crate) fn fail(&self, reason: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        failure.get_or_insert(reason);
    }

    /// A frame recording the purge watermark, or nothing before the first purge.
    pub(crate) fn watermark_frame(&self) -> Vec<u8> {
        match self.purged_upto.load(Ordering::SeqCst) {
            0 => Vec::new(),
            upto => watermark_frame(upto),
        }
    }

    pub(crate) fn sync_enabled(&self) -> bool {
        self.options.sync_mode() == crate::options::SyncMode::Always
    }
}

/// A frame saying that records expiring at or before `upto` were purged.
pub(crate) fn watermark_frame(upto: u64) -> Vec<u8> {
    let entry = crate::format::Entry::Purged {
        upto: cnerium_core::Timestamp::from_millis(upto),
    };
    // A fixed-size entry always fits a frame.
    crate::format::encode_frame(&entry).expect("a purge watermark fits a frame")
}
