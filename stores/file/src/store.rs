//! [`FileStore`]: the handle, its threads, and the [`Store`] implementation.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;

use async_trait::async_trait;
use cnerium_core::{
    ClaimOutcome, ClaimRequest, CompleteError, Completion, Event, Fence, PendingEvents, Record,
    RecordKey, RecordState, Store, StoreError, Timestamp,
};
use futures_channel::oneshot;
use tracing::{debug, trace};

use crate::compactor::{CompactOp, Compactor};
use crate::error::OpenError;
use crate::format::{self, ClaimEntry, Entry, RecordEntry};
use crate::index::{Claim, Committed, Slot};
use crate::lock::DirLock;
use crate::options::FileStoreOptions;
use crate::queue::{CommitMeta, Control, QueueError, WriteQueue};
use crate::reader::{self, Read, ReadJob};
use crate::recent::RecentRecords;
use crate::recovery;
use crate::shared::{Counters, FENCE_BLOCK, Shared};
use crate::writer::Writer;

/// The directory services use when the configuration names none.
pub const DEFAULT_DIR: &str = "data/cnerium";

/// Records removed per index lock hold while purging.
const PURGE_BATCH: usize = 1024;

/// The durable embedded store: records in append-only, checksummed log segments in one
/// directory, an index of them in memory.
///
/// # Driving it
///
/// [`open`](FileStore::open) a directory once per process, hand the store to the engine (it
/// implements [`Store`]), and [`close`](FileStore::close) it on shutdown; dropping it closes
/// it too, blocking briefly. The store runs its own threads (one writer, one compactor,
/// [readers](FileStoreOptions::reader_threads)) and answers through channels, so it works
/// under any async runtime.
///
/// # What survives what
///
/// - A completion is on disk (`fdatasync`) before [`complete`](Store::complete) returns
///   `Ok` (with the default [`SyncMode::Always`](crate::SyncMode::Always)). Concurrent
///   completions share one sync.
/// - Claims are written to the log without waiting for a sync: an in-progress claim
///   survives [`close`](FileStore::close) and a crash of the process (the kernel still
///   holds the bytes), and is taken over once its lease runs out, as the contract says. A
///   power cut can drop the claims made since the last sync; their keys are then claimable
///   immediately after the restart. Fences stay above every fence granted before any
///   crash, because the store reserves them in blocks in a small `FENCE` file before
///   granting them.
/// - Published markers and releases are not synced on their own; after a power cut a few
///   events may be listed as pending again (they keep their ids, so receivers can drop the
///   repeats), and a released claim may be back in progress until its lease runs out.
/// - After a failed `fdatasync` the store refuses every later write (the page cache may no
///   longer match the disk) and logs a warning; reopen it once the disk is healthy. A
///   failed write is cut off the segment and later writes go on.
/// - A torn or corrupted frame is detected by its checksum, logged once and skipped;
///   every record around it is recovered.
/// - Keys never become file names: they live only inside frames, so any scope or key bytes
///   are safe.
///
/// # Space
///
/// Expired records stay (and their unpublished events stay listed, as in the reference
/// store) until [`purge_expired`](Store::purge_expired) removes them; the purge is recorded
/// in the log, so a restart does not bring them back. Their bytes go when their segment is
/// compacted: in the background once a sealed segment is mostly dead (see
/// [`FileStoreOptions::compaction_live_ratio`]), or on [`compact`](FileStore::compact).
/// Segments rotate at [`FileStoreOptions::segment_size`].
///
/// # Memory
///
/// The index keeps about 250 bytes per record, key included, never a response: bodies are
/// read from the segment files on demand. A million records open in one to two seconds.
#[derive(Debug)]
pub struct FileStore {
    shared: Arc<Shared>,
    writer: Arc<WriteQueue>,
    compactor: Sender<CompactOp>,
    readers: Sender<ReadJob>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    lock: Mutex<Option<DirLock>>,
    recent: Mutex<RecentRecords>,
}

/// Counters of a [`FileStore`], for tests, benchmarks and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileStoreStats {
    /// `fdatasync` calls made for batches of writes.
    pub syncs: u64,
    /// Batches written: each is one write and at most one sync.
    pub batches: u64,
    /// Completions committed.
    pub commits: u64,
    /// Compaction runs that rewrote at least one segment.
    pub compactions: u64,
    /// Segment files in the directory.
    pub segments: usize,
    /// Records in the index: claims and completions, expired ones until purged.
    pub records: usize,
}

/// What a claim decided while holding the index lock.
enum Decision {
    Granted(ClaimOutcome),
    Existing(Record),
    /// A live completed record: its frame is read after the lock is released.
    Stored(Read, Committed),
    /// Every reserved fence is used; wait for the writer to reserve more.
    NeedFences,
    /// The claim could be taken over, but its completion is being written: the answer
    /// depends on whether that commit succeeds.
    AwaitCommit(oneshot::Receiver<()>),
}

impl FileStore {
    /// Opens (creating if needed) the data directory `dir` with default options.
    ///
    /// Blocks while it reads the segments: call it before serving, or on a blocking
    /// thread. Fails when another store holds the directory, naming the holder's pid.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, OpenError> {
        Self::open_with(dir, FileStoreOptions::default())
    }

    /// Opens (creating if needed) the data directory `dir` with `options`.
    pub fn open_with(dir: impl AsRef<Path>, options: FileStoreOptions) -> Result<Self, OpenError> {
        let dir = dir.as_ref();
        if let Some(problem) = options.problem() {
            return Err(OpenError::InvalidOptions(problem));
        }
        if dir.exists() && !dir.is_dir() {
            let e = std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "it is not a directory; name a directory, or a path that does not exist yet",
            );
            return Err(OpenError::io("use", dir, e));
        }
        fs::create_dir_all(dir).map_err(|e| OpenError::io("create", dir, e))?;
        let lock = DirLock::acquire(dir)?;
        let recovered = recovery::recover(dir, &options)?;
        let recent_bytes = options.recent_records_bytes_budget();

        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            options,
            index: Mutex::new(recovered.index),
            files: RwLock::new(recovered.files),
            reserved: AtomicU64::new(recovered.reserved),
            reserve_requested: AtomicBool::new(false),
            purged_upto: AtomicU64::new(recovered.purged_upto),
            active_segment: AtomicU32::new(recovered.active_id),
            next_segment: AtomicU32::new(recovered.next_segment),
            failure: Mutex::new(None),
            closed: AtomicBool::new(false),
            counters: Counters::default(),
            #[cfg(test)]
            faults: Default::default(),
        });

        let spawn_error = |e| OpenError::io("start a thread for", dir, e);
        let (readers, mut threads) =
            reader::spawn(shared.options.readers()).map_err(spawn_error)?;
        let (compactor_tx, compactor_rx) = mpsc::channel();
        let compactor = Compactor::new(shared.clone(), compactor_rx);
        threads.push(
            std::thread::Builder::new()
                .name("cnerium-file-compact".into())
                .spawn(move || compactor.run())
                .map_err(spawn_error)?,
        );
        let queue = Arc::new(WriteQueue::default());
        let writer = Writer::new(
            shared.clone(),
            queue.clone(),
            compactor_tx.clone(),
            recovered.active,
            recovered.active_id,
            recovered.active_len,
        );
        threads.push(
            std::thread::Builder::new()
                .name("cnerium-file-write".into())
                .spawn(move || writer.run())
                .map_err(spawn_error)?,
        );
        // Old segments may already be mostly dead.
        let _ = compactor_tx.send(CompactOp::Nudge);

        debug!(dir = %dir.display(), "opened file store");
        Ok(Self {
            shared,
            writer: queue,
            compactor: compactor_tx,
            readers,
            threads: Mutex::new(threads),
            lock: Mutex::new(Some(lock)),
            recent: Mutex::new(RecentRecords::new(recent_bytes)),
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Current counters.
    pub fn stats(&self) -> FileStoreStats {
        let counters = &self.shared.counters;
        FileStoreStats {
            syncs: counters.syncs.load(Ordering::Relaxed),
            batches: counters.batches.load(Ordering::Relaxed),
            commits: counters.commits.load(Ordering::Relaxed),
            compactions: counters.compactions.load(Ordering::Relaxed),
            segments: self.shared.segment_count(),
            records: self.shared.index().len(),
        }
    }

    /// Seals the active segment and rewrites every sealed segment that holds bytes of
    /// purged, replaced or published-over entries, then deletes the old files. Returns the
    /// bytes freed. Claims, lookups and completions continue meanwhile.
    pub async fn compact(&self) -> Result<u64, StoreError> {
        self.ensure_open()?;
        let (done, seal) = oneshot::channel();
        self.writer
            .control(Control::Seal { done })
            .map_err(|_| closed())?;
        seal.await.map_err(|_| closed())??;
        let (done, compacted) = oneshot::channel();
        self.compactor
            .send(CompactOp::Compact { done })
            .map_err(|_| closed())?;
        compacted.await.map_err(|_| closed())?
    }

    /// Flushes and syncs what is written, stops the store's threads and releases the
    /// directory lock. Later calls on the store fail; closing twice does nothing.
    pub async fn close(&self) -> Result<(), StoreError> {
        if self.shared.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let (done, stopped) = oneshot::channel();
        if self
            .compactor
            .send(CompactOp::Shutdown { done: Some(done) })
            .is_ok()
        {
            let _ = stopped.await;
        }
        let (done, flushed) = oneshot::channel();
        let result = match self.writer.control(Control::Shutdown { done: Some(done) }) {
            Ok(()) => flushed.await.unwrap_or_else(|_| Ok(())),
            Err(_) => Ok(()),
        };
        self.stop_threads();
        debug!(dir = %self.shared.dir.display(), "closed file store");
        result
    }

    /// Stops every thread (they have been told to, or are told here) and drops the lock.
    fn stop_threads(&self) {
        let _ = self.compactor.send(CompactOp::Shutdown { done: None });
        let _ = self.writer.control(Control::Shutdown { done: None });
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for _ in 0..threads.len() {
            let _ = self.readers.send(ReadJob::Stop);
        }
        for thread in threads {
            // A thread that panicked has nothing left to clean up.
            let _ = thread.join();
        }
        self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn ensure_open(&self) -> Result<(), StoreError> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(closed());
        }
        Ok(())
    }

    /// Reads frames on the reader threads.
    async fn read(&self, reads: Vec<Read>) -> Result<Vec<Vec<u8>>, StoreError> {
        let (done, results) = oneshot::channel();
        self.readers
            .send(ReadJob::Frames { reads, done })
            .map_err(|_| closed())?;
        let results = results.await.map_err(|_| closed())?;
        results
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(|e| StoreError::with_source("cannot read a stored record", e))
    }

    /// Decodes a stored record frame and checks it is the one the index named.
    fn decode_stored(
        &self,
        frame: &[u8],
        key: &[u8],
        committed: &Committed,
    ) -> Result<RecordEntry, StoreError> {
        let location = committed.location;
        let unreadable = |what: String| {
            StoreError::new(format!(
                "stored record at offset {} of segment {} is unreadable: {what}",
                location.offset,
                crate::segment::segment_path(&self.shared.dir, location.segment).display(),
            ))
        };
        match format::decode_frame(frame) {
            Ok(Entry::Record(mut record))
                if record.fence.0 == committed.fence && record.key.encode() == key =>
            {
                record.events_published = committed.published;
                Ok(*record)
            }
            Ok(_) => Err(unreadable("it belongs to another record".into())),
            Err(e) => Err(unreadable(e.to_string())),
        }
    }

    async fn read_stored(
        &self,
        read: Read,
        key: &[u8],
        c: Committed,
    ) -> Result<Record, StoreError> {
        let held = self.recent().get(key, c.fence);
        let record = match held {
            Some(record) => record,
            None => {
                let frames = self.read(vec![read]).await?;
                let frame = frames.first().map(Vec::as_slice).unwrap_or_default();
                let record = Arc::new(self.decode_stored(frame, key, &c)?.into_record());
                let shared_key = self.shared.index().shared_key(key);
                self.recent().insert(shared_key, c.fence, record.clone());
                record
            }
        };
        let mut record = Record::clone(&record);
        if let RecordState::Completed {
            events_published, ..
        } = &mut record.state
        {
            *events_published = c.published;
        }
        Ok(record)
    }

    fn recent(&self) -> MutexGuard<'_, RecentRecords> {
        // The cache is only read and filled under the lock, never left half-changed.
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn frame_read(&self, committed: &Committed) -> Result<Read, StoreError> {
        let location = committed.location;
        let file = self.shared.file(location.segment).ok_or_else(|| {
            StoreError::new(format!(
                "segment {} of a stored record is missing",
                location.segment
            ))
        })?;
        Ok(Read {
            file,
            offset: location.offset,
            len: location.len,
        })
    }

    /// Queues the claim's frame without waiting for it: a claim survives a close or a
    /// process crash, and only a power cut before the next sync can lose it.
    fn log_claim(&self, request: &ClaimRequest, fence: Fence) {
        let entry = Entry::Claim(Box::new(ClaimEntry {
            key: request.key.clone(),
            fingerprint: request.fingerprint,
            fence,
            created_at: request.now,
            lease_until: request.lease_until,
            expires_at: request.expires_at,
        }));
        // A claim frame holds a key and fixed fields, far below the frame limit, and a
        // stopped writer means the store is closing.
        let _ = self.writer.append(&entry);
    }

    fn decide(&self, request: &ClaimRequest, key: &[u8]) -> Result<Decision, StoreError> {
        let now = request.now.as_millis();
        let mut index = self.shared.index();

        let takeover = match index.slot(key) {
            None => false,
            Some(Slot::Claimed(claim)) => {
                let record = claim.record();
                if !record.is_claimable(request.now) {
                    return Ok(Decision::Existing(record));
                }
                if claim.committing {
                    // Answering "in progress" now would fit neither order of this claim
                    // and that completion; wait for the commit to end either way.
                    let (done, ended) = oneshot::channel();
                    if let Some(claim) = index.claim_mut(key) {
                        claim.waiters.push(done);
                    }
                    return Ok(Decision::AwaitCommit(ended));
                }
                // An expired record is replaced like a missing one; only a live claim whose
                // lease ran out is taken over.
                record.is_live(request.now)
            }
            Some(Slot::Committed(committed)) => {
                if now >= committed.expires_at {
                    false
                } else {
                    let committed = *committed;
                    return Ok(Decision::Stored(self.frame_read(&committed)?, committed));
                }
            }
        };

        let reserved = self.shared.reserved.load(Ordering::SeqCst);
        let Some(fence) = index.take_fence(reserved) else {
            return Ok(Decision::NeedFences);
        };
        if reserved - index.next_fence < FENCE_BLOCK / 2
            && !self.shared.reserve_requested.swap(true, Ordering::SeqCst)
        {
            // Reserve ahead so that claims rarely wait; a failure shows on a later claim.
            let _ = self.writer.control(Control::Reserve { done: None });
        }
        let shared_key = index.shared_key(key);
        index.insert(
            shared_key,
            Slot::Claimed(Box::new(Claim {
                fingerprint: request.fingerprint,
                fence,
                created_at: now,
                lease_until: request.lease_until.as_millis(),
                expires_at: request.expires_at.as_millis(),
                committing: false,
                waiters: Vec::new(),
            })),
        );
        Ok(Decision::Granted(ClaimOutcome::Claimed {
            fence: Fence(fence),
            takeover,
        }))
    }
}

fn closed() -> StoreError {
    StoreError::new("the file store is closed")
}

impl Drop for FileStore {
    fn drop(&mut self) {
        if !self.shared.closed.swap(true, Ordering::SeqCst) {
            self.stop_threads();
        }
    }
}

#[async_trait]
impl Store for FileStore {
    async fn claim(&self, request: ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        self.ensure_open()?;
        let key = request.key.encode();
        loop {
            match self.decide(&request, &key)? {
                Decision::Granted(outcome) => {
                    trace!(key = %request.key, ?outcome, "claim granted");
                    if let ClaimOutcome::Claimed { fence, .. } = outcome {
                        self.log_claim(&request, fence);
                    }
                    return Ok(outcome);
                }
                Decision::Existing(record) => return Ok(ClaimOutcome::Existing(record)),
                Decision::Stored(read, committed) => {
                    let record = self.read_stored(read, &key, committed).await?;
                    return Ok(ClaimOutcome::Existing(record));
                }
                Decision::AwaitCommit(ended) => {
                    // Either outcome wakes us (the sender is dropped); decide again.
                    let _ = ended.await;
                }
                Decision::NeedFences => {
                    let (done, reserved) = oneshot::channel();
                    self.writer
                        .control(Control::Reserve { done: Some(done) })
                        .map_err(|_| closed())?;
                    reserved.await.map_err(|_| closed())??;
                }
            }
        }
    }

    async fn complete(
        &self,
        key: &RecordKey,
        fence: Fence,
        completion: Completion,
    ) -> Result<(), CompleteError> {
        self.ensure_open()?;
        let encoded = key.encode();
        let (claim, shared_key) = {
            let mut index = self.shared.index();
            let claim = match index.claim_mut(&encoded) {
                Some(claim) if claim.fence == fence.0 && !claim.committing => {
                    claim.committing = true;
                    (claim.fingerprint, claim.created_at)
                }
                _ => {
                    trace!(key = %key, fence = fence.0, "completion fenced off");
                    return Err(CompleteError::Fenced);
                }
            };
            (claim, index.shared_key(&encoded))
        };

        let has_events = !completion.events.is_empty();
        let entry = Entry::Record(Box::new(RecordEntry {
            key: key.clone(),
            fingerprint: claim.0,
            fence,
            created_at: Timestamp::from_millis(claim.1),
            expires_at: completion.expires_at,
            completed_at: completion.completed_at,
            response: completion.response,
            events: completion.events,
            events_published: false,
        }));
        let meta = CommitMeta {
            key: shared_key.clone(),
            fence: fence.0,
            expires_at: completion.expires_at.as_millis(),
            completed_at: completion.completed_at.as_millis(),
            has_events,
        };
        let committed = match self.writer.commit(&entry, meta) {
            Ok(committed) => committed,
            Err(e) => {
                self.shared.index().abort_commit(&encoded, fence.0);
                return Err(match e {
                    QueueError::Format(e) => {
                        StoreError::with_source("cannot encode the completion", e).into()
                    }
                    QueueError::Stopped => closed().into(),
                });
            }
        };
        match committed.await {
            Ok(result) => {
                result?;
                if let Entry::Record(record) = entry {
                    let record = Arc::new(record.into_record());
                    self.recent().insert(shared_key, fence.0, record);
                }
                Ok(())
            }
            Err(_) => {
                // The writer stopped without answering; nothing was acknowledged.
                self.shared.index().abort_commit(&encoded, fence.0);
                Err(closed().into())
            }
        }
    }

    async fn release(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError> {
        self.ensure_open()?;
        let encoded = key.encode();
        let mut index = self.shared.index();
        let held = matches!(
            index.slot(&encoded),
            Some(Slot::Claimed(claim)) if claim.fence == fence.0 && !claim.committing
        );
        if !held {
            return Ok(());
        }
        let expires_at = match index.remove(&encoded) {
            Some(Slot::Claimed(claim)) => claim.expires_at,
            _ => u64::MAX,
        };
        drop(index);
        trace!(key = %key, fence = fence.0, "claim released");
        let marker = Entry::Released {
            key: key.clone(),
            fence,
            expires_at: Timestamp::from_millis(expires_at),
        };
        // Without the marker, a reopen would bring the claim back until its lease ends.
        let _ = self.writer.append(&marker);
        Ok(())
    }

    async fn mark_published(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError> {
        self.ensure_open()?;
        let encoded = key.encode();
        if !self.shared.index().set_published(&encoded, fence.0) {
            return Ok(());
        }
        let marker = Entry::Published {
            key: key.clone(),
            fence,
        };
        // A marker lost to a stopping writer only means the events may be listed again
        // after a restart, which their stable ids allow.
        if let Err(QueueError::Format(e)) = self.writer.append(&marker) {
            return Err(StoreError::with_source(
                "cannot encode a published marker",
                e,
            ));
        }
        Ok(())
    }

    async fn pending_events(&self, limit: usize) -> Result<Vec<PendingEvents>, StoreError> {
        self.ensure_open()?;
        let pending = self.shared.index().pending(limit);
        let reads = pending
            .iter()
            .map(|(_, committed)| self.frame_read(committed))
            .collect::<Result<Vec<_>, _>>()?;
        let frames = self.read(reads).await?;
        pending
            .iter()
            .zip(frames)
            .map(|((key, committed), frame)| {
                let record = self.decode_stored(&frame, key, committed)?;
                Ok(PendingEvents {
                    key: record.key,
                    fence: record.fence,
                    events: record.events,
                })
            })
            .collect()
    }

    async fn events_since(&self, since: Timestamp, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.ensure_open()?;
        let completed = self
            .shared
            .index()
            .completed_since(since.as_millis(), limit);
        let reads = completed
            .iter()
            .map(|(_, committed)| self.frame_read(committed))
            .collect::<Result<Vec<_>, _>>()?;
        let frames = self.read(reads).await?;
        let mut events = Vec::new();
        for ((key, committed), frame) in completed.iter().zip(frames) {
            let record = self.decode_stored(&frame, key, committed)?;
            events.extend(record.events);
            if events.len() >= limit {
                events.truncate(limit);
                break;
            }
        }
        Ok(events)
    }

    async fn lookup(&self, key: &RecordKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        self.ensure_open()?;
        let encoded = key.encode();
        let stored = {
            let index = self.shared.index();
            match index.slot(&encoded) {
                None => return Ok(None),
                Some(Slot::Claimed(claim)) => {
                    let record = claim.record();
                    return Ok(record.is_live(now).then_some(record));
                }
                Some(Slot::Committed(committed)) => {
                    if now.as_millis() >= committed.expires_at {
                        return Ok(None);
                    }
                    let committed = *committed;
                    (self.frame_read(&committed)?, committed)
                }
            }
        };
        let (read, committed) = stored;
        self.read_stored(read, &encoded, committed).await.map(Some)
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.ensure_open()?;
        let mut removed = 0;
        loop {
            let (count, more) = {
                let mut index = self.shared.index();
                index.purge_some(now.as_millis(), PURGE_BATCH)
            };
            removed += count;
            if !more {
                break;
            }
        }
        let previous = self
            .shared
            .purged_upto
            .fetch_max(now.as_millis(), Ordering::SeqCst);
        if now.as_millis() > previous {
            // Without the watermark, a restart would bring back purged records whose
            // frames compaction has not dropped yet. Losing it to a crash only means that.
            let _ = self.writer.control(Control::Purged);
        }
        if removed > 0 {
            debug!(removed, now = %now, "purged expired records");
            let _ = self.compactor.send(CompactOp::Nudge);
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use cnerium_core::{Fingerprint, IdempotencyKey, RecordState, Scope, StoredResponse};
    use futures_executor::block_on;

    use super::*;

    fn key(name: &str) -> RecordKey {
        RecordKey::new(Scope::new("op"), IdempotencyKey::new(name).unwrap())
    }

    fn claim(store: &FileStore, key: &RecordKey) -> Fence {
        let now = Timestamp::from_millis(1_000);
        let request = ClaimRequest {
            key: key.clone(),
            fingerprint: Fingerprint::from_parts(1, [1; 32]),
            now,
            lease_until: now.saturating_add(Duration::from_secs(30)),
            expires_at: now.saturating_add(Duration::from_secs(3600)),
        };
        match block_on(store.claim(request)).unwrap() {
            ClaimOutcome::Claimed { fence, .. } => fence,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    fn completion(body: &'static [u8]) -> Completion {
        let now = Timestamp::from_millis(1_000);
        Completion {
            response: StoredResponse {
                status: http::StatusCode::OK,
                headers: Vec::new(),
                body: Bytes::from_static(body),
            },
            events: Vec::new(),
            completed_at: now,
            expires_at: now.saturating_add(Duration::from_secs(3600)),
        }
    }

    fn lookup(store: &FileStore, key: &RecordKey) -> Option<Record> {
        block_on(store.lookup(key, Timestamp::from_millis(2_000))).unwrap()
    }

    #[test]
    fn a_failed_sync_hides_the_completion_and_stops_writes_until_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let (a, b) = (key("a"), key("b"));
        let fence = claim(&store, &a);
        store.shared.faults.fail_syncs.store(true, Ordering::SeqCst);

        let result = block_on(store.complete(&a, fence, completion(b"lost")));
        assert!(matches!(result, Err(CompleteError::Store(_))), "{result:?}");
        let record = lookup(&store, &a).expect("the claim is still held");
        assert!(matches!(record.state, RecordState::InProgress { .. }));
        block_on(store.release(&a, fence)).unwrap();
        assert_eq!(lookup(&store, &a), None);

        // Even with syncs working again, the store refuses writes: the page cache may no
        // longer match the disk.
        store
            .shared
            .faults
            .fail_syncs
            .store(false, Ordering::SeqCst);
        let fence = claim(&store, &b);
        let Err(CompleteError::Store(e)) = block_on(store.complete(&b, fence, completion(b"b")))
        else {
            panic!("writes must stay refused");
        };
        assert!(e.to_string().contains("restart"), "{e}");
        block_on(store.release(&b, fence)).unwrap();
        block_on(store.close()).unwrap();

        // The completion never shows. The release could not be written either, so the
        // claim of "a" may be back in progress (if its frame was written before the failed
        // batch) until its lease runs out.
        let store = FileStore::open(dir.path()).unwrap();
        let a_state = lookup(&store, &a).map(|record| record.state);
        assert!(
            matches!(a_state, None | Some(RecordState::InProgress { .. })),
            "{a_state:?}"
        );
        let fence = claim(&store, &b);
        block_on(store.complete(&b, fence, completion(b"b"))).unwrap();
        assert!(lookup(&store, &b).is_some());
    }

    #[test]
    fn a_failed_write_is_cut_off_and_later_writes_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let (a, b) = (key("a"), key("b"));
        let fence = claim(&store, &a);
        store
            .shared
            .faults
            .fail_writes
            .store(true, Ordering::SeqCst);
        let result = block_on(store.complete(&a, fence, completion(b"half")));
        assert!(matches!(result, Err(CompleteError::Store(_))), "{result:?}");

        // The release goes through the writer too, so it is sent once writes work again.
        store
            .shared
            .faults
            .fail_writes
            .store(false, Ordering::SeqCst);
        block_on(store.release(&a, fence)).unwrap();
        let fence = claim(&store, &b);
        block_on(store.complete(&b, fence, completion(b"whole"))).unwrap();
        block_on(store.close()).unwrap();

        let store = FileStore::open(dir.path()).unwrap();
        assert_eq!(lookup(&store, &a), None);
        let Some(Record {
            state: RecordState::Completed { response, .. },
            ..
        }) = lookup(&store, &b)
        else {
            panic!("b was committed");
        };
        assert_eq!(response.body, Bytes::from_static(b"whole"));
    }
}
