//! Opening a data directory: rebuilding the index from the segments.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use tracing::{debug, warn};

use crate::error::OpenError;
use crate::format::{self, FORMAT_VERSION, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN, Summary};
use crate::index::{Claim, Committed, Index, Location};
use crate::options::FileStoreOptions;
use crate::segment::{self, Found};
use crate::shared::FENCE_BLOCK;

/// How far past the highest fence in the log the store starts when the fence file is
/// missing or unreadable: far enough that no fence granted since the last reservation can
/// be reached again.
const LOST_RESERVATION_MARGIN: u64 = 1 << 32;

/// What opening found.
pub(crate) struct Recovered {
    pub(crate) index: Index,
    pub(crate) files: HashMap<u32, Arc<File>>,
    pub(crate) active_id: u32,
    pub(crate) active: Arc<File>,
    pub(crate) active_len: u64,
    pub(crate) next_segment: u32,
    pub(crate) reserved: u64,
    pub(crate) purged_upto: u64,
}

/// Reads every segment of `dir` into a fresh index, cuts torn tails, reserves fences and
/// picks the segment to append to.
pub(crate) fn recover(dir: &Path, options: &FileStoreOptions) -> Result<Recovered, OpenError> {
    let started = Instant::now();
    let sync = options.sync_mode() == crate::options::SyncMode::Always;
    let (ids, leftovers) = segment::list(dir).map_err(|e| OpenError::io("list", dir, e))?;
    for path in leftovers {
        // An interrupted compaction's output: its records are still in the old segments.
        match fs::remove_file(&path) {
            Ok(()) => debug!(path = %path.display(), "removed an unfinished segment"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(OpenError::io("remove", path, e)),
        }
    }

    let mut index = Index::default();
    let mut files = HashMap::new();
    let mut lengths = HashMap::new();
    let mut pending_markers = Markers::default();
    index.reserve(estimate_records(dir, &ids));

    // One thread reads and checks segments (checksums are most of the scanning) while this
    // one rebuilds the index from the previous segment.
    let (loaded_tx, loaded_rx) = mpsc::sync_channel::<Result<Loaded, OpenError>>(1);
    let (spare_tx, spare_rx) = mpsc::channel::<Vec<u8>>();
    let ids_to_load = &ids;
    std::thread::scope(|scope| -> Result<(), OpenError> {
        scope.spawn(move || {
            for &id in ids_to_load {
                let buf = spare_rx.try_recv().unwrap_or_default();
                let loaded = load(dir, id, buf);
                let failed = loaded.is_err();
                if loaded_tx.send(loaded).is_err() || failed {
                    return;
                }
            }
        });

        for loaded in loaded_rx {
            let Loaded {
                id,
                path,
                file,
                mut len,
                buf,
                spans,
                header_corrupt,
            } = loaded?;
            if header_corrupt {
                // Frames start after the header whatever it holds, so rewriting it loses
                // nothing.
                warn!(path = %path.display(), "segment header is corrupt; rewriting it");
                file.write_all_at(&format::segment_header(), 0)
                    .map_err(|e| OpenError::io("repair", &path, e))?;
            }

            let mut torn_at = None;
            for span in spans {
                match span {
                    Span::Frame { offset, len } => {
                        let payload = &buf[offset + FRAME_HEADER_LEN..offset + len];
                        match format::summarize(payload) {
                            Ok(summary) => {
                                let location = Location {
                                    segment: id,
                                    len: u32::try_from(len).unwrap_or(u32::MAX),
                                    offset: offset as u64,
                                };
                                apply(&mut index, summary, location, &mut pending_markers);
                            }
                            Err(e) => warn!(
                                path = %path.display(),
                                offset,
                                error = %e,
                                "skipped an entry this build cannot read"
                            ),
                        }
                    }
                    Span::Corrupt {
                        offset,
                        len,
                        to_end,
                    } => {
                        let after = if to_end {
                            "nothing: a torn last write, as a crash mid-write leaves; it is \
                             cut off and new writes follow the last whole record"
                        } else {
                            "more records, which were recovered"
                        };
                        warn!(
                            path = %path.display(),
                            offset,
                            skipped = len,
                            torn_tail = to_end,
                            after,
                            "skipped corrupt bytes in a segment"
                        );
                        if to_end {
                            torn_at = Some(offset as u64);
                        }
                    }
                }
            }

            if len < SEGMENT_HEADER_LEN as u64 {
                // Created but never written: give it its header so appends land after one.
                file.set_len(0)
                    .and_then(|()| file.write_all_at(&format::segment_header(), 0))
                    .map_err(|e| OpenError::io("repair", &path, e))?;
                len = SEGMENT_HEADER_LEN as u64;
            } else if let Some(at) = torn_at {
                // Nothing valid follows: a write that never finished. Cut it so appends do
                // not leave it in the middle of the segment.
                file.set_len(at)
                    .and_then(|()| if sync { file.sync_all() } else { Ok(()) })
                    .map_err(|e| OpenError::io("truncate", &path, e))?;
                len = at;
            }
            index.add_segment_bytes(id, len);
            lengths.insert(id, len);
            files.insert(id, Arc::new(file));
            // The reader may reuse the buffer; it is gone when the reader is done.
            let _ = spare_tx.send(buf);
        }
        Ok(())
    })?;
    let purged_upto = pending_markers.purged_upto;
    // Markers met before their frames (compaction moves frames to newer segments) apply
    // now; fences are never reused, so order does not matter.
    for (key, fence) in pending_markers.published {
        index.recover_published(&key, fence);
    }
    for (key, fence) in pending_markers.released {
        index.recover_released(&key, fence);
    }
    index.finish_recovery();
    // Purged records stay purged, even where compaction has not dropped their frames yet.
    let mut purged = 0;
    loop {
        let (count, more) = index.purge_some(purged_upto, 64 * 1024);
        purged += count;
        if !more {
            break;
        }
    }

    let reserved_before = match segment::read_fence(dir) {
        Ok(Some(upto)) => Some(upto),
        Ok(None) if ids.is_empty() => Some(1),
        Ok(None) => {
            warn!(
                dir = %dir.display(),
                "the fence file is missing; fences restart far above the highest one stored"
            );
            None
        }
        Err(e) => {
            warn!(
                dir = %dir.display(),
                error = %e,
                "the fence file is unreadable; fences restart far above the highest one stored"
            );
            None
        }
    };
    let next_fence = match reserved_before {
        Some(upto) => index.next_fence.max(upto).max(1),
        None => index.next_fence.saturating_add(LOST_RESERVATION_MARGIN),
    };
    index.next_fence = next_fence;
    let reserved = next_fence.saturating_add(FENCE_BLOCK);
    segment::write_fence(dir, reserved, sync)
        .map_err(|e| OpenError::io("write", dir.join(segment::FENCE_FILE), e))?;

    let last = ids.last().copied();
    let mut next_segment = last.map_or(1, |id| id + 1);
    let reuse = last.filter(|id| lengths[id] < options.segment_size_bytes());
    // The active segment always holds the latest purge watermark: compaction may drop the
    // sealed segments that hold older copies.
    let watermark = match purged_upto {
        0 => Vec::new(),
        upto => crate::shared::watermark_frame(upto),
    };
    let (active_id, active, active_len) = match reuse {
        Some(id) => {
            let path = segment::segment_path(dir, id);
            let file = files[&id].clone();
            let len = lengths[&id];
            file.write_all_at(&watermark, len)
                .and_then(|()| if sync { file.sync_data() } else { Ok(()) })
                .map_err(|e| OpenError::io("write", &path, e))?;
            let len = len + watermark.len() as u64;
            index.add_segment_bytes(id, watermark.len() as u64);
            (id, file, len)
        }
        None => {
            let id = next_segment;
            next_segment += 1;
            let path = segment::segment_path(dir, id);
            let file = segment::create(&path, &watermark, sync)
                .and_then(|file| {
                    if sync {
                        segment::sync_dir(dir)?;
                    }
                    Ok(file)
                })
                .map_err(|e| OpenError::io("create", &path, e))?;
            let file = Arc::new(file);
            files.insert(id, file.clone());
            let len = (SEGMENT_HEADER_LEN + watermark.len()) as u64;
            index.add_segment_bytes(id, len);
            (id, file, len)
        }
    };

    debug!(
        dir = %dir.display(),
        records = index.len(),
        segments = files.len(),
        next_fence,
        purged,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovered file store"
    );
    Ok(Recovered {
        index,
        files,
        active_id,
        active,
        active_len,
        next_segment,
        reserved,
        purged_upto,
    })
}

/// A guess at the records in `ids` from their sizes, so the index is sized once instead of
/// rehashing its way up. Small records take about 200 bytes on disk.
fn estimate_records(dir: &Path, ids: &[u32]) -> usize {
    let bytes: u64 = ids
        .iter()
        .filter_map(|&id| fs::metadata(segment::segment_path(dir, id)).ok())
        .map(|meta| meta.len())
        .sum();
    usize::try_from(bytes / 256).unwrap_or(0)
}

/// Markers met before the frames they name, and the highest purge watermark seen.
#[derive(Default)]
struct Markers {
    published: Vec<(Vec<u8>, u64)>,
    released: Vec<(Vec<u8>, u64)>,
    purged_upto: u64,
}

/// A segment read into memory, with its frames found and checked.
struct Loaded {
    id: u32,
    path: PathBuf,
    file: File,
    len: u64,
    buf: Vec<u8>,
    spans: Vec<Span>,
    header_corrupt: bool,
}

/// A checked frame, or a stretch of corrupted bytes, by offset into a segment.
enum Span {
    Frame {
        offset: usize,
        len: usize,
    },
    Corrupt {
        offset: usize,
        len: usize,
        to_end: bool,
    },
}

/// Reads segment `id` into `buf` and finds its frames.
fn load(dir: &Path, id: u32, mut buf: Vec<u8>) -> Result<Loaded, OpenError> {
    let path = segment::segment_path(dir, id);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| OpenError::io("open", &path, e))?;
    let len = file
        .metadata()
        .map_err(|e| OpenError::io("inspect", &path, e))?
        .len();
    segment::read_all(&file, len, &mut buf).map_err(|e| OpenError::io("read", &path, e))?;

    let header_corrupt = match format::segment_version(&buf) {
        Some(FORMAT_VERSION) => false,
        Some(version) => return Err(OpenError::UnsupportedFormat { path, version }),
        None => buf.len() >= SEGMENT_HEADER_LEN,
    };
    let mut spans = Vec::new();
    segment::scan(&buf, SEGMENT_HEADER_LEN, |found| {
        spans.push(match found {
            Found::Frame { offset, len, .. } => Span::Frame { offset, len },
            Found::Corrupt {
                offset,
                len,
                to_end,
            } => Span::Corrupt {
                offset,
                len,
                to_end,
            },
        });
    });
    Ok(Loaded {
        id,
        path,
        file,
        len,
        buf,
        spans,
        header_corrupt,
    })
}

/// Applies one recovered entry to the index.
fn apply(index: &mut Index, summary: Summary<'_>, location: Location, markers: &mut Markers) {
    match summary {
        Summary::Record(record) => index.recover_record(
            record.key,
            Committed {
                location,
                fence: record.fence,
                expires_at: record.expires_at,
                completed_at: record.completed_at,
                has_events: record.has_events,
                published: record.events_published,
            },
        ),
        Summary::Published { key, fence } => {
            if !index.recover_published(key, fence) {
                markers.published.push((key.to_vec(), fence));
            }
        }
        Summary::Purged { upto } => markers.purged_upto = markers.purged_upto.max(upto),
        Summary::Claim(claim) => index.recover_claim(
            claim.key,
            Claim {
                fingerprint: claim.fingerprint,
                fence: claim.fence,
                created_at: claim.created_at,
                lease_until: claim.lease_until,
                expires_at: claim.expires_at,
                committing: false,
                waiters: Vec::new(),
            },
        ),
        Summary::Released { key, fence, .. } => {
            if !index.recover_released(key, fence) {
                markers.released.push((key.to_vec(), fence));
            }
        }
    }
}
