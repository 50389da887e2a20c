//! The compactor thread: rewrites the live records of sealed segments into new segments and
//! deletes the old files, so that disk use follows live records.
//!
//! It never touches the active segment, and it holds the index lock only briefly, for a
//! bounded batch of frames at a time. A record moves only if the index still points at its
//! old frame when the move is published; anything that changed meanwhile keeps its newer
//! place. Old files are deleted only after the new segment is synced and renamed into place,
//! so a crash at any step leaves every live record on disk at least once; recovery keeps the
//! copy with the highest fence and merges duplicates of one completion.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;

use cnerium_core::StoreError;
use futures_channel::oneshot;
use tracing::{debug, warn};

use crate::format::{self, SEGMENT_HEADER_LEN, Summary};
use crate::index::{Key, Location};
use crate::segment::{self, Found};
use crate::shared::Shared;

/// Frames checked against the index per lock hold.
const CHECK_BATCH: usize = 1024;

/// What the compactor is asked to do.
pub(crate) enum CompactOp {
    /// Something changed; compact the segments that crossed the threshold.
    Nudge,
    /// Compact every sealed segment holding dead bytes; reply with the bytes freed.
    Compact {
        done: oneshot::Sender<Result<u64, StoreError>>,
    },
    Shutdown {
        done: Option<oneshot::Sender<()>>,
    },
}

pub(crate) struct Compactor {
    shared: Arc<Shared>,
    ops: Receiver<CompactOp>,
}

/// A frame of an old segment that was live when checked.
struct Move {
    key: Key,
    from: Location,
    to: Location,
}

/// A new segment being written under its temporary name.
struct Output {
    id: u32,
    file: File,
    len: u64,
    buf: Vec<u8>,
    moves: Vec<Move>,
}

impl Compactor {
    pub(crate) fn new(shared: Arc<Shared>, ops: Receiver<CompactOp>) -> Self {
        Self { shared, ops }
    }

    pub(crate) fn run(self) {
        while let Ok(op) = self.ops.recv() {
            match op {
                CompactOp::Nudge => {
                    if let Err(e) = self.compact(false) {
                        warn!(
                            dir = %self.shared.dir.display(),
                            error = %e,
                            "background compaction failed; disk use will grow until it succeeds"
                        );
                    }
                }
                CompactOp::Compact { done } => {
                    let result = self
                        .compact(true)
                        .map_err(|e| StoreError::with_source("compaction failed", e));
                    let _ = done.send(result);
                }
                CompactOp::Shutdown { done } => {
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
            }
        }
    }

    /// Compacts sealed segments: all with dead bytes when `force`, else those whose live
    /// share fell below the configured ratio. Returns the bytes freed.
    fn compact(&self, force: bool) -> io::Result<u64> {
        let candidates = self.candidates(force);
        if candidates.is_empty() {
            return Ok(0);
        }
        let old_bytes: u64 = {
            let index = self.shared.index();
            candidates
                .iter()
                .filter_map(|id| index.usage().get(id))
                .map(|usage| usage.total)
                .sum()
        };

        let mut outputs = Vec::new();
        let mut current: Option<Output> = None;
        let mut buf = Vec::new();
        for &id in &candidates {
            let Some(file) = self.shared.file(id) else {
                continue;
            };
            let len = file.metadata()?.len();
            segment::read_all(&file, len, &mut buf)?;
            self.copy_live(id, &buf, &candidates, &mut current, &mut outputs)?;
        }
        if let Some(output) = current.take() {
            outputs.push(self.seal(output)?);
        }
        if self.shared.sync_enabled() && !outputs.is_empty() {
            segment::sync_dir(&self.shared.dir)?;
        }

        // Publish the moves, then retire the old segments.
        let mut new_bytes = 0;
        for output in outputs {
            new_bytes += output.len;
            let file = Arc::new(output.file);
            self.shared.add_file(output.id, file);
            for moves in output.moves.chunks(CHECK_BATCH) {
                let mut index = self.shared.index();
                for m in moves {
                    index.relocate(&m.key, m.from, m.to);
                }
            }
            self.shared.index().add_segment_bytes(output.id, output.len);
        }
        for &id in &candidates {
            self.shared.remove_file(id);
            self.shared.index().forget_segment(id);
            fs::remove_file(segment::segment_path(&self.shared.dir, id))?;
        }
        if self.shared.sync_enabled() {
            segment::sync_dir(&self.shared.dir)?;
        }

        self.shared
            .counters
            .compactions
            .fetch_add(1, Ordering::Relaxed);
        let freed = old_bytes.saturating_sub(new_bytes);
        debug!(
            segments = ?candidates,
            old_bytes,
            new_bytes,
            freed,
            "compacted segments"
        );
        Ok(freed)
    }

    fn candidates(&self, force: bool) -> Vec<u32> {
        let ratio = self.shared.options.live_ratio();
        let active = self.shared.active_segment.load(Ordering::SeqCst);
        let index = self.shared.index();
        let mut candidates: Vec<u32> = index
            .usage()
            .iter()
            .filter(|&(&id, usage)| {
                let body = usage.total.saturating_sub(SEGMENT_HEADER_LEN as u64);
                let dead = body.saturating_sub(usage.live);
                id != active && dead > 0 && (force || (usage.live as f64) < ratio * body as f64)
            })
            .map(|(&id, _)| id)
            .collect();
        candidates.sort_unstable();
        candidates
    }

    /// Copies the frames of segment `id` that the index still points at (and published
    /// markers whose records live elsewhere) into the output.
    fn copy_live(
        &self,
        id: u32,
        bytes: &[u8],
        candidates: &[u32],
        current: &mut Option<Output>,
        outputs: &mut Vec<Output>,
    ) -> io::Result<()> {
        let mut frames = Vec::new();
        segment::scan(bytes, SEGMENT_HEADER_LEN.min(bytes.len()), |found| {
            if let Found::Frame {
                offset,
                len,
                payload,
            } = found
            {
                if let Ok(summary) = format::summarize(payload) {
                    frames.push((offset, len, summary));
                }
            }
        });

        let purged_upto = self.shared.purged_upto.load(Ordering::SeqCst);
        for chunk in frames.chunks(CHECK_BATCH) {
            let mut keep = Vec::new();
            {
                let index = self.shared.index();
                for &(offset, len, summary) in chunk {
                    match summary {
                        Summary::Record(record) => {
                            let from = Location {
                                segment: id,
                                len: u32::try_from(len).unwrap_or(u32::MAX),
                                offset: offset as u64,
                            };
                            if let Some(published) = index.is_at(record.key, from) {
                                let key = index.shared_key(record.key);
                                keep.push((offset, len, Some((key, from, published))));
                            }
                        }
                        Summary::Published { key, fence } => {
                            if index.published_elsewhere(key, fence, candidates) {
                                keep.push((offset, len, None));
                            }
                        }
                        // The active segment holds the latest watermark.
                        Summary::Purged { .. } => {}
                        Summary::Claim(claim) => {
                            if index.is_claimed(claim.key, claim.fence) {
                                keep.push((offset, len, None));
                            }
                        }
                        // A release must outlive every copy of its claim frame; after the
                        // claim's expiry the purge watermark covers it.
                        Summary::Released { expires_at, .. } => {
                            if expires_at > purged_upto {
                                keep.push((offset, len, None));
                            }
                        }
                    }
                }
            }

            for (offset, len, record) in keep {
                if current
                    .as_ref()
                    .is_some_and(|out| out.len + out.buf.len() as u64 + len as u64 > self.limit())
                {
                    if let Some(full) = current.take() {
                        outputs.push(self.seal(full)?);
                    }
                }
                if current.is_none() {
                    *current = Some(self.start_output()?);
                }
                let Some(out) = current.as_mut() else {
                    unreachable!("an output was just started")
                };
                let at = out.len + out.buf.len() as u64;
                let start = out.buf.len();
                out.buf.extend_from_slice(&bytes[offset..offset + len]);
                if let Some((key, from, published)) = record {
                    format::set_published_flag(&mut out.buf[start..], published);
                    out.moves.push(Move {
                        key,
                        from,
                        to: Location {
                            segment: out.id,
                            len: from.len,
                            offset: at,
                        },
                    });
                }
                if out.buf.len() >= 4 * 1024 * 1024 {
                    out.file.write_all_at(&out.buf, out.len)?;
                    out.len += out.buf.len() as u64;
                    out.buf.clear();
                }
            }
        }
        Ok(())
    }

    fn limit(&self) -> u64 {
        self.shared.options.segment_size_bytes()
    }

    fn start_output(&self) -> io::Result<Output> {
        let id = self.shared.allocate_segment();
        let path = segment::temporary_path(&self.shared.dir, id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        file.write_all_at(&format::segment_header(), 0)?;
        Ok(Output {
            id,
            file,
            len: SEGMENT_HEADER_LEN as u64,
            buf: Vec::new(),
            moves: Vec::new(),
        })
    }

    /// Writes what is buffered, syncs, and gives the output its final name.
    fn seal(&self, mut out: Output) -> io::Result<Output> {
        out.file.write_all_at(&out.buf, out.len)?;
        out.len += out.buf.len() as u64;
        out.buf = Vec::new();
        if self.shared.sync_enabled() {
            out.file.sync_data()?;
        }
        fs::rename(
            segment::temporary_path(&self.shared.dir, out.id),
            segment::segment_path(&self.shared.dir, out.id),
        )?;
        Ok(out)
    }
}
