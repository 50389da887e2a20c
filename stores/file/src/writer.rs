//! The writer thread: appends frames to the active segment with group commit.
//!
//! Every write goes through one thread. It takes the first queued operation, drains
//! whatever else is queued (up to the batch size), writes all frames with one positioned
//! write, syncs once, then makes the completions visible in the index and acknowledges
//! them together. Concurrent completions therefore share one `fdatasync`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};

use cnerium_core::StoreError;
use futures_channel::oneshot;
use tracing::{debug, trace, warn};

use crate::compactor::CompactOp;
use crate::format::SEGMENT_HEADER_LEN;
use crate::index::{Committed, Key, Location};
use crate::segment;
use crate::shared::{FENCE_BLOCK, Shared};

/// A reply the writer sends once an operation is durable, or failed.
pub(crate) type Ack = oneshot::Sender<Result<(), StoreError>>;

/// What the writer is asked to do.
pub(crate) enum WriteOp {
    /// Append a completed record; make it visible once durable.
    Commit {
        key: Key,
        fence: u64,
        frame: Vec<u8>,
        expires_at: u64,
        completed_at: u64,
        has_events: bool,
        done: Ack,
    },
    /// Append a claim, release or published marker; nobody waits for it.
    Append { frame: Vec<u8> },
    /// Append the current purge watermark; nobody waits for it.
    Purged,
    /// Extend the fence reservation.
    Reserve { done: Option<Ack> },
    /// Seal the active segment so that compaction may rewrite it.
    Seal { done: Ack },
    /// Flush, sync and stop.
    Shutdown { done: Option<Ack> },
}

impl WriteOp {
    fn len(&self) -> usize {
        match self {
            Self::Commit { frame, .. } | Self::Append { frame } => frame.len(),
            _ => 0,
        }
    }
}

struct PendingCommit {
    key: Key,
    fence: u64,
    at: usize,
    len: usize,
    expires_at: u64,
    completed_at: u64,
    has_events: bool,
    done: Ack,
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    ops: Receiver<WriteOp>,
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
        ops: Receiver<WriteOp>,
        compactor: Sender<CompactOp>,
        active: Arc<File>,
        active_id: u32,
        active_len: u64,
    ) -> Self {
        Self {
            shared,
            ops,
            compactor,
            active,
            active_id,
            active_len,
            unsynced: false,
        }
    }

    pub(crate) fn run(mut self) {
        let max_batch = self.shared.options.batch_bytes();
        while let Ok(first) = self.ops.recv() {
            let mut bytes = first.len();
            let mut batch = vec![first];
            while bytes < max_batch {
                match self.ops.try_recv() {
                    Ok(op) => {
                        bytes += op.len();
                        batch.push(op);
                    }
                    Err(_) => break,
                }
            }
            if let Some(done) = self.process(batch) {
                let result = self.finish();
                if let Some(done) = done {
                    let _ = done.send(result);
                }
                return;
            }
        }
        // Every sender is gone without a shutdown; still leave the data synced.
        let _ = self.finish();
    }

    /// Handles one batch; returns the shutdown acknowledgement when the batch asked to stop.
    fn process(&mut self, batch: Vec<WriteOp>) -> Option<Option<Ack>> {
        let mut buf = Vec::new();
        let mut commits = Vec::new();
        let mut reserves = Vec::new();
        let mut reserve = false;
        let mut seals = Vec::new();
        let mut shutdown = None;
        let mut watermark = false;
        let failure = self.shared.failed();

        for op in batch {
            match op {
                WriteOp::Commit {
                    key,
                    fence,
                    frame,
                    expires_at,
                    completed_at,
                    has_events,
                    done,
                } => {
                    if let Some(e) = &failure {
                        self.shared.index().abort_commit(&key, fence);
                        let _ = done.send(Err(StoreError::new(e.to_string())));
                        continue;
                    }
                    commits.push(PendingCommit {
                        key,
                        fence,
                        at: buf.len(),
                        len: frame.len(),
                        expires_at,
                        completed_at,
                        has_events,
                        done,
                    });
                    buf.extend_from_slice(&frame);
                }
                WriteOp::Append { frame } => {
                    if failure.is_none() {
                        buf.extend_from_slice(&frame);
                    }
                }
                WriteOp::Purged => watermark = true,
                WriteOp::Reserve { done } => {
                    reserve = true;
                    reserves.extend(done);
                }
                WriteOp::Seal { done } => seals.push(done),
                WriteOp::Shutdown { done } => shutdown = Some(done),
            }
        }

        if watermark && failure.is_none() {
            buf.extend_from_slice(&self.shared.watermark_frame());
        }
        if !buf.is_empty() {
            self.append(&buf, commits);
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
    fn append(&mut self, buf: &[u8], commits: Vec<PendingCommit>) {
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

        if !commits.is_empty() && self.shared.sync_enabled() {
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

    fn fail_commits(&self, commits: Vec<PendingCommit>, error: &StoreError) {
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

/// A second copy of a result for another waiter; store errors are not `Clone`.
fn copy_result(result: &Result<(), StoreError>) -> Result<(), StoreError> {
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(StoreError::new(e.to_string())),
    }
}
