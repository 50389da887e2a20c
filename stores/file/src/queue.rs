//! The queue between the store's callers and its writer thread.
//!
//! Callers encode their frames straight into one shared buffer, in the order they queue
//! them, and the writer swaps the whole buffer out at once. No frame is allocated on its
//! own, no memory allocated by a caller's thread is freed by the writer's, and the writer
//! is woken only when it is waiting: under load, a caller queues with one short lock.

use std::sync::{Condvar, Mutex, MutexGuard};

use cnerium_core::StoreError;
use futures_channel::oneshot;

use crate::format::{self, Entry, FormatError};
use crate::index::Key;

/// A reply the writer sends once an operation is durable, or failed.
pub(crate) type Ack = oneshot::Sender<Result<(), StoreError>>;

/// Operations that are not frames; the writer handles them after the frames of their
/// batch.
pub(crate) enum Control {
    /// Append the current purge watermark; nobody waits for it.
    Purged,
    /// Extend the fence reservation.
    Reserve { done: Option<Ack> },
    /// Seal the active segment so that compaction may rewrite it.
    Seal { done: Ack },
    /// Flush, sync and stop.
    Shutdown { done: Option<Ack> },
}

/// A completion whose frame is in the batch, waiting for its sync.
pub(crate) struct PendingCommit {
    pub(crate) key: Key,
    pub(crate) fence: u64,
    /// Where its frame starts in the batch's bytes, and its length.
    pub(crate) at: usize,
    pub(crate) len: usize,
    pub(crate) expires_at: u64,
    pub(crate) completed_at: u64,
    pub(crate) has_events: bool,
    pub(crate) done: Ack,
}

/// What the writer takes at once.
#[derive(Default)]
pub(crate) struct Batch {
    /// Frames, in the order they were queued.
    pub(crate) bytes: Vec<u8>,
    /// The completions among them.
    pub(crate) commits: Vec<PendingCommit>,
    pub(crate) control: Vec<Control>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.commits.is_empty() && self.control.is_empty()
    }

    /// Empties the batch, keeping its buffers for the next one.
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.commits.clear();
        self.control.clear();
    }
}

/// Why an operation could not be queued.
#[derive(Debug)]
pub(crate) enum QueueError {
    /// The writer has stopped.
    Stopped,
    /// The entry cannot be encoded; nothing was queued.
    Format(FormatError),
}

#[derive(Default)]
struct State {
    batch: Batch,
    /// The writer is blocked waiting for work.
    writer_waiting: bool,
    /// The writer has taken a shutdown: later operations are refused.
    stopped: bool,
}

/// Operations queued for the writer.
#[derive(Default)]
pub(crate) struct WriteQueue {
    state: Mutex<State>,
    work: Condvar,
}

impl std::fmt::Debug for WriteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteQueue").finish_non_exhaustive()
    }
}

/// Completion details the writer needs besides the frame.
pub(crate) struct CommitMeta {
    pub(crate) key: Key,
    pub(crate) fence: u64,
    pub(crate) expires_at: u64,
    pub(crate) completed_at: u64,
    pub(crate) has_events: bool,
}

impl WriteQueue {
    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held but the encoder, which leaves the buffer
        // cut back to a frame boundary first.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `entry`'s frame; nobody waits for it.
    pub(crate) fn append(&self, entry: &Entry) -> Result<(), QueueError> {
        let mut state = self.state();
        if state.stopped {
            return Err(QueueError::Stopped);
        }
        format::encode_frame_into(entry, &mut state.batch.bytes).map_err(QueueError::Format)?;
        self.wake(state);
        Ok(())
    }

    /// Queues a completion's frame; the receiver hears once it is durable, or failed.
    pub(crate) fn commit(
        &self,
        entry: &Entry,
        meta: CommitMeta,
    ) -> Result<oneshot::Receiver<Result<(), StoreError>>, QueueError> {
        let (done, committed) = oneshot::channel();
        let mut state = self.state();
        if state.stopped {
            return Err(QueueError::Stopped);
        }
        let at = state.batch.bytes.len();
        format::encode_frame_into(entry, &mut state.batch.bytes).map_err(QueueError::Format)?;
        let len = state.batch.bytes.len() - at;
        state.batch.commits.push(PendingCommit {
            key: meta.key,
            fence: meta.fence,
            at,
            len,
            expires_at: meta.expires_at,
            completed_at: meta.completed_at,
            has_events: meta.has_events,
            done,
        });
        self.wake(state);
        Ok(committed)
    }

    /// Queues an operation that is not a frame.
    pub(crate) fn control(&self, op: Control) -> Result<(), QueueError> {
        let mut state = self.state();
        if state.stopped {
            return Err(QueueError::Stopped);
        }
        state.batch.control.push(op);
        self.wake(state);
        Ok(())
    }

    fn wake(&self, state: MutexGuard<'_, State>) {
        let waiting = state.writer_waiting;
        drop(state);
        if waiting {
            self.work.notify_one();
        }
    }

    /// Blocks until something is queued, then swaps it with `spare` (which must be
    /// empty) and returns it. Once the batch holds a shutdown, later operations are
    /// refused.
    pub(crate) fn take(&self, spare: Batch) -> Batch {
        let mut state = self.state();
        while state.batch.is_empty() {
            state.writer_waiting = true;
            state = self.work.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.writer_waiting = false;
        if state
            .batch
            .control
            .iter()
            .any(|op| matches!(op, Control::Shutdown { .. }))
        {
            state.stopped = true;
        }
        std::mem::replace(&mut state.batch, spare)
    }

    /// Refuses every later operation and returns what is still queued, whose waiters
    /// hear that the writer is gone once it is dropped.
    pub(crate) fn stop(&self) -> Batch {
        let mut state = self.state();
        state.stopped = true;
        std::mem::take(&mut state.batch)
    }
}
