//! The writer thread: appends frames to the active segment with group commit.
//!
//! Every write goes through one thread. It takes everything queued since its last batch
//! (see [`WriteQueue`]), writes all frames with one positioned write, syncs once, then
//! makes the completions visible in the index and acknowledges them together. Concurrent
//! completions therefore share one `fdatasync`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;

use cnerium_core::StoreError;
use tracing::{debug, trace, warn};

use crate::compactor::CompactOp;
use crate::format::SEGMENT_HEADER_LEN;
use crate::index::{Committed, Location};
use crate::queue::{Ack, Batch, Control, PendingCommit, WriteQueue};
use crate::segment;
use crate::shared::{FENCE_BLOCK, Shared};

pub(crate) struct Writer {
    shared: Arc<Shared>,
    queue: Arc<WriteQueue>,
    compactor: Sender<CompactOp>,
    active: Arc<File>,
    active_id: u32,
    active_len: u64,
    /// Bytes were written since the last sync.
    unsynced: bool,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        queue: Arc<WriteQueue>,
        compactor: Sender<CompactOp>,
        active: Arc<File>,
        active_id: u32,
        active_len: u64,
    ) -> Self {
        Self {
            shared,
            queue,
            compactor,
            active,
            active_id,
            active_len,
            unsynced: false,
        }
    }

    pub(crate) fn run(mut self) {
        // However the thread ends, later operations are refused and the waiting ones hear
        // that the writer is gone.
        let _stop = StopOnExit(self.queue.clone());
        let mut spare = Batch::default();
        loop {
            let mut batch = self.queue.take(spare);
            let shutdown = self.process(&mut batch);
            batch.clear();
            spare = batch;
            if let Some(done) = shutdown {
                let result = self.finish();
                if let Some(done) = done {
                    let _ = done.send(result);
                }
                return;
            }
        }
    }

    /// Handles one batch; returns the shutdown acknowledgement when the batch asked to stop.
    fn process(&mut self, batch: &mut Batch) -> Option<Option<Ack>> {
        let mut reserves = Vec::new();
        let mut reserve = false;
        let mut seals = Vec::new();
        let mut shutdown = None;
        let mut watermark = false;

        for op in batch.control.drain(..) {
            match op {
                Control::Purged => watermark = true,
                Control::Reserve { done } => {
                    reserve = true;
                    reserves.extend(done);
                }
                Control::Seal { done } => seals.push(done),
                Control::Shutdown { done } => shutdown = Some(done),
            }
        }

        if let Some(e) = self.shared.failed() {
            // Nothing more is written once a sync failed; completions hear why.
            self.fail_commits(batch.commits.drain(..), &e);
            batch.bytes.clear();
        } else {
            if watermark {
                batch
                    .bytes
                    .extend_from_slice(&self.shared.watermark_frame());
            }
            if !batch.bytes.is_empty() {
                self.append(&batch.bytes, batch.commits.drain(..));
            }
        }
        if reserve {
            let result = self.reserve();
            for done in reserves {
                let _ = done.send(copy_result(&result));
            }
        }
        if !seals.is_empty() {
            let result = if self.active_len > SEGMENT_HEADER_LEN as u64 {
                self.rotate()
            } else {
                Ok(())
            };
            for done in seals {
                let _ = done.send(copy_result(&result));
            }
        }
        shutdown
    }

    /// Writes `buf` (the frames of `commits` and published markers), syncs if the mode asks
    /// for it, then makes the commits visible and acknowledges them.
    fn append(&mut self, buf: &[u8], commits: std::vec::Drain<'_, PendingCommit>) {
        let segment_size = self.shared.options.segment_size_bytes();
        if self.active_len > SEGMENT_HEADER_LEN as u64
            && self.active_len + buf.len() as u64 > segment_size
        {
            if let Err(e) = self.rotate() {
                self.fail_commits(commits, &e);
                return;
            }
        }

        let start = self.active_len;
        if let Err(e) = self.write_at(buf, start) {
            let error = self.undo_write(start, "write", e);
            self.fail_commits(commits, &error);
            return;
        }
        self.unsynced = true;

        if commits.len() > 0 && self.shared.sync_enabled() {
            if let Err(e) = self.sync() {
                let error = self.undo_write(start, "sync", e);
                self.fail_commits(commits, &error);
                return;
            }
        }

        self.active_len += buf.len() as u64;
        let counters = &self.shared.counters;
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters
            .commits
            .fetch_add(commits.len() as u64, Ordering::Relaxed);
        trace!(
            segment = self.active_id,
            offset = start,
            bytes = buf.len(),
            commits = commits.len(),
            "appended a batch"
        );

        let mut index = self.shared.index();
        index.add_segment_bytes(self.active_id, buf.len() as u64);
        let mut acks = Vec::with_capacity(commits.len());
        for commit in commits {
            let committed = Committed {
                location: Location {
                    segment: self.active_id,
                    // Frames are at most MAX_PAYLOAD_LEN plus a header, far below u32::MAX.
                    len: u32::try_from(commit.len).unwrap_or(u32::MAX),
                    offset: start + commit.at as u64,
                },
                fence: commit.fence,
                expires_at: commit.expires_at,
                completed_at: commit.completed_at,
                has_events: commit.has_events,
                published: false,
            };
            // A claim purged while its completion was written stays purged; the completion
            // is durable either way, so the caller still hears success.
            index.commit(&commit.key, commit.fence, committed);
            acks.push(commit.done);
        }
        drop(index);
        for done in acks {
            let _ = done.send(Ok(()));
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        #[cfg(test)]
        if self.shared.faults.fail_writes.load(Ordering::SeqCst) {
            // Half of the bytes reach the file, as when a disk fills up mid-write.
            self.active.write_all_at(&buf[..buf.len() / 2], offset)?;
            return Err(io::Error::other("injected write failure"));
        }
        self.active.write_all_at(buf, offset)
    }

    fn sync(&mut self) -> io::Result<()> {
        #[cfg(test)]
        if self.shared.faults.fail_syncs.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected sync failure"));
        }
        self.active.sync_data()?;
        self.unsynced = false;
        self.shared.counters.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Cuts a failed write off the segment so it can never be recovered. After a failed
    /// sync the page cache may no longer match the disk, so the store stops writing.
    fn undo_write(&mut self, start: u64, action: &str, error: io::Error) -> StoreError {
        let path = segment::segment_path(&self.shared.dir, self.active_id);
        let truncated = self
            .active
            .set_len(start)
            .and_then(|()| self.active.sync_data());
        if action == "sync" || truncated.is_err() {
            warn!(
                path = %path.display(),
                error = %error,
                "a segment could not be synced; the store refuses writes until it is reopened"
            );
            self.shared.fail(format!(
                "the file store stopped writing after a failed {action} of {}: {error}; \
                 restart the process once the disk is healthy",
                path.display()
            ));
        }
        StoreError::with_source(format!("cannot {action} segment {}", path.display()), error)
    }

    fn fail_commits(&self, commits: impl Iterator<Item = PendingCommit>, error: &StoreError) {
        let commits: Vec<PendingCommit> = commits.collect();
        let mut index = self.shared.index();
        for commit in &commits {
            index.abort_commit(&commit.key, commit.fence);
        }
        drop(index);
        for commit in commits {
            let _ = commit.done.send(Err(StoreError::new(error.to_string())));
        }
    }

    /// Seals the active segment and starts a new one.
    fn rotate(&mut self) -> Result<(), StoreError> {
        if self.unsynced {
            if let Err(e) = self.sync() {
                return Err(self.undo_write(self.active_len, "sync", e));
            }
        }
        let id = self.shared.allocate_segment();
        let path = segment::segment_path(&self.shared.dir, id);
        let sync = self.shared.sync_enabled();
        // The new segment repeats the purge watermark, so that compacting the old ones
        // never loses it.
        let frames = self.shared.watermark_frame();
        let created = segment::create(&path, &frames, sync).and_then(|file| {
            if sync {
                segment::sync_dir(&self.shared.dir)?;
            }
            Ok(file)
        });
        let file = created.map_err(|e| {
            StoreError::with_source(format!("cannot create segment {}", path.display()), e)
        })?;
        let file = Arc::new(file);
        self.shared.add_file(id, file.clone());
        let len = (SEGMENT_HEADER_LEN + frames.len()) as u64;
        self.shared.index().add_segment_bytes(id, len);
        self.shared.active_segment.store(id, Ordering::SeqCst);
        debug!(
            sealed = self.active_id,
            active = id,
            "started a new segment"
        );
        self.active = file;
        self.active_id = id;
        self.active_len = len;
        // The compactor may be stopping; a lost nudge only delays compaction.
        let _ = self.compactor.send(CompactOp::Nudge);
        Ok(())
    }

    /// Raises the fence reservation by a block and makes it durable.
    fn reserve(&mut self) -> Result<(), StoreError> {
        let next = self.shared.index().next_fence;
        let current = self.shared.reserved.load(Ordering::SeqCst);
        let upto = current.max(next).saturating_add(FENCE_BLOCK);
        let result = segment::write_fence(&self.shared.dir, upto, self.shared.sync_enabled());
        self.shared.reserve_requested.store(false, Ordering::SeqCst);
        match result {
            Ok(()) => {
                self.shared.reserved.store(upto, Ordering::SeqCst);
                debug!(upto, "reserved fences");
                Ok(())
            }
            Err(e) => {
                warn!(dir = %self.shared.dir.display(), error = %e, "cannot reserve fences");
                Err(StoreError::with_source("cannot write the fence file", e))
            }
        }
    }

    fn finish(&mut self) -> Result<(), StoreError> {
        if self.unsynced {
            self.sync()
                .map_err(|e| StoreError::with_source("cannot sync the active segment", e))?;
        }
        debug!(segment = self.active_id, "writer stopped");
        Ok(())
    }
}

/// Stops the queue when the writer thread ends, by return or by panic.
struct StopOnExit(Arc<WriteQueue>);

impl Drop for StopOnExit {
    fn drop(&mut self) {
        drop(self.0.stop());
    }
}

/// A second copy of a result for another waiter; store errors are not `Clone`.
fn copy_result(result: &Result<(), StoreError>) -> Result<(), StoreError> {
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(StoreError::new(e.to_string())),
    }
}
