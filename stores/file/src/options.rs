//! How a [`FileStore`](crate::FileStore) behaves: segment size, durability, compaction.

/// When the store forces written data to stable storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncMode {
    /// Every completion is on stable storage (`fdatasync`) before `complete` returns. The
    /// default; concurrent completions share one sync.
    #[default]
    Always,
    /// Data is handed to the operating system and synced only when a segment is sealed or
    /// the store closes. A completion acknowledged shortly before a power cut or a kernel
    /// crash may be lost; a crash of the process alone loses nothing. For tests and
    /// benchmarks, or data that may be lost.
    Never,
}

/// Options for [`FileStore::open_with`](crate::FileStore::open_with).
///
/// ```
/// use cnerium_store_file::{FileStoreOptions, SyncMode};
///
/// let options = FileStoreOptions::default()
///     .segment_size(16 * 1024 * 1024)
///     .sync(SyncMode::Always);
/// assert_eq!(options.segment_size_bytes(), 16 * 1024 * 1024);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FileStoreOptions {
    segment_size: u64,
    sync: SyncMode,
    compaction_live_ratio: f64,
    reader_threads: usize,
    recent_bytes: usize,
}

impl Default for FileStoreOptions {
    fn default() -> Self {
        Self {
            segment_size: 64 * 1024 * 1024,
            sync: SyncMode::Always,
            compaction_live_ratio: 0.5,
            reader_threads: 2,
            recent_bytes: 16 * 1024 * 1024,
        }
    }
}

impl FileStoreOptions {
    /// The size at which the active segment is sealed and a new one started (default
    /// 64 MiB). A single large write may overshoot it.
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// When data is forced to stable storage (default [`SyncMode::Always`]).
    pub fn sync(mut self, mode: SyncMode) -> Self {
        self.sync = mode;
        self
    }

    /// A sealed segment is compacted in the background once the share of its bytes that
    /// still belong to live records drops below `ratio` (default 0.5). `0.0` turns
    /// background compaction off; [`FileStore::compact`](crate::FileStore::compact) still
    /// works.
    pub fn compaction_live_ratio(mut self, ratio: f64) -> Self {
        self.compaction_live_ratio = ratio;
        self
    }

    /// Bytes of recently committed or read records kept in memory, so that retries soon
    /// after a request replay without reading a segment file (default 16 MiB; 0 turns it
    /// off). Older records are read from disk as before.
    pub fn recent_records_bytes(mut self, bytes: usize) -> Self {
        self.recent_bytes = bytes;
        self
    }

    /// The budget of [`recent_records_bytes`](Self::recent_records_bytes).
    pub fn recent_records_bytes_budget(&self) -> usize {
        self.recent_bytes
    }

    /// Threads that read stored responses from segment files (default 2).
    pub fn reader_threads(mut self, threads: usize) -> Self {
        self.reader_threads = threads;
        self
    }

    /// The configured segment size in bytes.
    pub fn segment_size_bytes(&self) -> u64 {
        self.segment_size
    }

    /// The configured sync mode.
    pub fn sync_mode(&self) -> SyncMode {
        self.sync
    }

    pub(crate) fn live_ratio(&self) -> f64 {
        self.compaction_live_ratio
    }

    pub(crate) fn readers(&self) -> usize {
        self.reader_threads
    }

    /// Why these options cannot work, if they cannot.
    pub(crate) fn problem(&self) -> Option<&'static str> {
        if self.segment_size < 4096 {
            return Some("segment size must be at least 4096 bytes");
        }
        if !(0.0..=1.0).contains(&self.compaction_live_ratio) {
            return Some("compaction live ratio must be between 0.0 and 1.0");
        }
        if self.reader_threads == 0 {
            return Some("at least one reader thread is needed");
        }
        None
    }
}
