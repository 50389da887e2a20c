//! Files of a data directory: segment names, the fence file, scanning a segment's frames.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::format::{self, FRAME_HEADER_LEN};

const SEGMENT_PREFIX: &str = "segment-";
const SEGMENT_SUFFIX: &str = ".log";
const TMP_SUFFIX: &str = ".tmp";

/// Name of the file that holds the fence reservation.
pub(crate) const FENCE_FILE: &str = "FENCE";
const FENCE_MAGIC: [u8; 8] = *b"CNRMFNC\0";

/// The path of segment `id` in `dir`.
pub(crate) fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{SEGMENT_PREFIX}{id:010}{SEGMENT_SUFFIX}"))
}

/// The path a segment is written under before it is complete.
pub(crate) fn temporary_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!(
        "{SEGMENT_PREFIX}{id:010}{SEGMENT_SUFFIX}{TMP_SUFFIX}"
    ))
}

/// What a data directory holds: segment ids in ascending order, and leftover temporary
/// files of an interrupted compaction.
pub(crate) fn list(dir: &Path) -> io::Result<(Vec<u32>, Vec<PathBuf>)> {
    let mut segments = Vec::new();
    let mut leftovers = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(SEGMENT_PREFIX) && name.ends_with(TMP_SUFFIX) {
            leftovers.push(entry.path());
            continue;
        }
        let id = name
            .strip_prefix(SEGMENT_PREFIX)
            .and_then(|rest| rest.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|id| id.parse::<u32>().ok());
        if let Some(id) = id {
            segments.push(id);
        }
    }
    segments.sort_unstable();
    Ok((segments, leftovers))
}

/// Creates a segment (which must not exist) with its header and `frames` written.
pub(crate) fn create(path: &Path, frames: &[u8], sync: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    let mut start = format::segment_header().to_vec();
    start.extend_from_slice(frames);
    file.write_all_at(&start, 0)?;
    if sync {
        file.sync_data()?;
    }
    Ok(file)
}

/// Makes renames, creations and deletions in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads all of `file`, `len` bytes, into `buf`.
pub(crate) fn read_all(file: &File, len: u64, buf: &mut Vec<u8>) -> io::Result<()> {
    let len = usize::try_from(len).map_err(|_| io::Error::other("segment too large"))?;
    buf.clear();
    buf.resize(len, 0);
    file.read_exact_at(buf, 0)
}

/// The fence reservation: every fence granted so far is below this number.
pub(crate) fn read_fence(dir: &Path) -> io::Result<Option<u64>> {
    let bytes = match fs::read(dir.join(FENCE_FILE)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let valid = bytes.len() == 20 && bytes[..8] == FENCE_MAGIC;
    let value: [u8; 8] = bytes
        .get(8..16)
        .and_then(|b| b.try_into().ok())
        .unwrap_or([0; 8]);
    let crc: [u8; 4] = bytes
        .get(16..20)
        .and_then(|b| b.try_into().ok())
        .unwrap_or([0; 4]);
    if !valid || crc32fast::hash(&value) != u32::from_le_bytes(crc) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "fence file is corrupt",
        ));
    }
    Ok(Some(u64::from_le_bytes(value)))
}

/// Replaces the fence reservation with `upto`, atomically (write, sync, rename, sync dir).
pub(crate) fn write_fence(dir: &Path, upto: u64, sync: bool) -> io::Result<()> {
    let value = upto.to_le_bytes();
    let mut bytes = Vec::with_capacity(20);
    bytes.extend_from_slice(&FENCE_MAGIC);
    bytes.extend_from_slice(&value);
    bytes.extend_from_slice(&crc32fast::hash(&value).to_le_bytes());

    let tmp = dir.join(format!("{FENCE_FILE}{TMP_SUFFIX}"));
    let mut file = File::create(&tmp)?;
    file.write_all(&bytes)?;
    if sync {
        file.sync_all()?;
    }
    drop(file);
    fs::rename(&tmp, dir.join(FENCE_FILE))?;
    if sync {
        sync_dir(dir)?;
    }
    Ok(())
}

/// What a scan finds in a segment.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found<'a> {
    /// A frame whose checksum holds.
    Frame {
        offset: usize,
        len: usize,
        payload: &'a [u8],
    },
    /// Bytes that are no frame, up to the next valid frame or the end of the file.
    Corrupt {
        offset: usize,
        len: usize,
        to_end: bool,
    },
}

/// Walks the frames of a segment's bytes from `start`, reporting valid frames and each
/// stretch of corrupted bytes once. After corruption it resumes at the next offset where a
/// whole valid frame starts.
pub(crate) fn scan<'a>(bytes: &'a [u8], start: usize, mut found: impl FnMut(Found<'a>)) {
    let mut pos = start;
    while pos < bytes.len() {
        if let Ok((payload, len)) = format::check_frame(&bytes[pos..]) {
            found(Found::Frame {
                offset: pos,
                len,
                payload,
            });
            pos += len;
            continue;
        }
        let next = next_valid_frame(bytes, pos + 1);
        let end = next.unwrap_or(bytes.len());
        found(Found::Corrupt {
            offset: pos,
            len: end - pos,
            to_end: next.is_none(),
        });
        pos = end;
    }
}

fn next_valid_frame(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    loop {
        let candidate = format::find_magic(bytes, at)?;
        if bytes.len() - candidate >= FRAME_HEADER_LEN
            && format::check_frame(&bytes[candidate..]).is_ok()
        {
            return Some(candidate);
        }
        at = candidate + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_skips_garbage_between_frames_and_reports_it_once() {
        let mut bytes = format::frame(b"one");
        bytes.extend_from_slice(&[0xC7, 0x4E, 0x52, 0x1F, 9, 9, 9]);
        let second_at = bytes.len();
        bytes.extend_from_slice(&format::frame(b"two"));
        let mut seen = Vec::new();
        scan(&bytes, 0, |found| seen.push(found));
        assert_eq!(seen.len(), 3);
        assert_eq!(
            seen[1],
            Found::Corrupt {
                offset: 15,
                len: 7,
                to_end: false
            }
        );
        assert!(
            matches!(seen[2], Found::Frame { offset, payload: b"two", .. } if offset == second_at)
        );
    }

    #[test]
    fn scan_reports_a_torn_tail_as_reaching_the_end() {
        let mut bytes = format::frame(b"one");
        let torn = format::frame(b"two");
        bytes.extend_from_slice(&torn[..torn.len() - 1]);
        let mut seen = Vec::new();
        scan(&bytes, 0, |found| seen.push(found));
        assert!(matches!(
            seen[1],
            Found::Corrupt {
                offset: 15,
                to_end: true,
                ..
            }
        ));
    }

    #[test]
    fn the_fence_file_round_trips_and_detects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_fence(dir.path()).unwrap(), None);
        write_fence(dir.path(), 12345, true).unwrap();
        assert_eq!(read_fence(dir.path()).unwrap(), Some(12345));
        let path = dir.path().join(FENCE_FILE);
        let mut bytes = fs::read(&path).unwrap();
        bytes[9] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert!(read_fence(dir.path()).is_err());
    }
}
