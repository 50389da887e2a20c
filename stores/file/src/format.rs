//! The on-disk format: segment headers and checksummed frames.
//!
//! A segment file starts with a 16-byte header ([`SEGMENT_MAGIC`], the format version as a
//! little-endian `u32`, and a CRC-32 of those twelve bytes) followed by frames. A frame is
//!
//! ```text
//! magic (4 bytes) | payload length (u32 LE) | CRC-32 of length and payload (u32 LE) | payload
//! ```
//!
//! and its payload is one [`Entry`]. Every field is fixed-width little endian or
//! length-prefixed (`bytes` below: a `u32` length, then the bytes), so a reader never
//! guesses:
//!
//! ```text
//! record     1 | flags u8 (bit 0: events published) | fence u64 | created_at u64
//!              | expires_at u64 | completed_at u64 | fingerprint version u8 | digest [32]
//!              | event count u32 | key bytes (RecordKey::encode) | status u16
//!              | header count u32 | (name bytes, value bytes)* | body bytes
//!              | (id bytes, type bytes, room tag u8 [room bytes], payload JSON bytes, ts u64)*
//! published  2 | fence u64 | key bytes
//! purged     3 | upto u64 (records expiring at or before it were purged)
//! claim      4 | fence u64 | created_at u64 | lease_until u64 | expires_at u64
//!              | fingerprint version u8 | digest [32] | key bytes
//! released   5 | fence u64 | expires_at u64 (of the claim) | key bytes
//! ```
//!
//! Times are milliseconds since the Unix epoch. The checksum covers the length as well as
//! the payload: a torn write or a flipped bit anywhere in a frame makes it fail, and recovery
//! skips to the next frame magic instead of replaying it.
//!
//! Decoding never panics, whatever the input: [`decode_frame`] and [`decode_payload`] are
//! what a fuzzer should drive.

use std::fmt;

use bytes::Bytes;
use cnerium_core::{
    Event, Fence, Fingerprint, Payload, Record, RecordKey, RecordState, StoredResponse, Timestamp,
};
use http::{HeaderName, HeaderValue, StatusCode};

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"CNRMSEG\0";

/// The segment format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Length of a segment header: magic, version, checksum.
pub const SEGMENT_HEADER_LEN: usize = 16;

/// First bytes of every frame.
pub const FRAME_MAGIC: [u8; 4] = [0xC7, 0x4E, 0x52, 0x1F];

/// Length of a frame header: magic, payload length, checksum.
pub const FRAME_HEADER_LEN: usize = 12;

/// Largest payload a frame may carry; longer lengths are treated as corruption.
pub const MAX_PAYLOAD_LEN: usize = 256 * 1024 * 1024;

const KIND_RECORD: u8 = 1;
const KIND_PUBLISHED: u8 = 2;
const KIND_PURGED: u8 = 3;
const KIND_CLAIM: u8 = 4;
const KIND_RELEASED: u8 = 5;

const FLAG_EVENTS_PUBLISHED: u8 = 1;

/// Byte offset of the flags byte inside a record payload.
pub(crate) const RECORD_FLAGS_OFFSET: usize = 1;

/// Why bytes are not a valid frame or payload.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// Fewer bytes than the header or the declared length require.
    Truncated,
    /// The frame does not start with [`FRAME_MAGIC`].
    BadMagic,
    /// The declared payload length exceeds [`MAX_PAYLOAD_LEN`].
    TooLarge {
        /// The declared length.
        len: u64,
    },
    /// The checksum does not match: a torn write or corrupted bytes.
    ChecksumMismatch,
    /// The checksum matches but the payload is not a valid entry.
    Malformed(&'static str),
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("frame is truncated"),
            Self::BadMagic => f.write_str("frame does not start with the frame magic"),
            Self::TooLarge { len } => write!(
                f,
                "frame declares a payload of {len} bytes, more than the {MAX_PAYLOAD_LEN} allowed"
            ),
            Self::ChecksumMismatch => f.write_str("frame checksum does not match its contents"),
            Self::Malformed(what) => write!(f, "frame payload is malformed: {what}"),
        }
    }
}

impl std::error::Error for FormatError {}

/// A completed record as one frame stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordEntry {
    /// Which record this is.
    pub key: RecordKey,
    /// Fingerprint of the request that claimed it.
    pub fingerprint: Fingerprint,
    /// The fence of the claim that completed.
    pub fence: Fence,
    /// When the claim was first granted.
    pub created_at: Timestamp,
    /// When the record expires.
    pub expires_at: Timestamp,
    /// When the completion was committed.
    pub completed_at: Timestamp,
    /// The stored response.
    pub response: StoredResponse,
    /// Events staged by the handler, in order.
    pub events: Vec<Event>,
    /// Whether the events were already published when this frame was written.
    pub events_published: bool,
}

impl RecordEntry {
    /// The record a store hands to the engine.
    pub fn into_record(self) -> Record {
        Record {
            fingerprint: self.fingerprint,
            state: RecordState::Completed {
                fence: self.fence,
                response: self.response,
                events: self.events,
                events_published: self.events_published,
                completed_at: self.completed_at,
            },
            created_at: self.created_at,
            expires_at: self.expires_at,
        }
    }
}

/// An in-progress claim as one frame stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimEntry {
    /// Which record is claimed.
    pub key: RecordKey,
    /// Fingerprint of the claiming request.
    pub fingerprint: Fingerprint,
    /// The claim's fence.
    pub fence: Fence,
    /// When the claim was granted.
    pub created_at: Timestamp,
    /// When a retry may take the claim over.
    pub lease_until: Timestamp,
    /// When the record expires.
    pub expires_at: Timestamp,
}

/// One decoded frame payload.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Entry {
    /// A completed record.
    Record(Box<RecordEntry>),
    /// The events of the completion of `key` under `fence` reached the event sink.
    Published {
        /// Which record.
        key: RecordKey,
        /// Which completion of it.
        fence: Fence,
    },
    /// A claim was granted.
    Claim(Box<ClaimEntry>),
    /// The claim of `key` under `fence` was released.
    Released {
        /// Which record.
        key: RecordKey,
        /// Which claim of it.
        fence: Fence,
        /// When the released claim would have expired; the marker is needed until then.
        expires_at: Timestamp,
    },
    /// Records expiring at or before `upto` were purged; recovery does not bring them back.
    Purged {
        /// The purge's `now`.
        upto: Timestamp,
    },
}

/// The fixed part of a record payload, read without decoding the response: what recovery
/// needs to rebuild the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordSummary<'a> {
    pub(crate) key: &'a [u8],
    pub(crate) fence: u64,
    pub(crate) expires_at: u64,
    pub(crate) completed_at: u64,
    pub(crate) has_events: bool,
    pub(crate) events_published: bool,
}

/// What recovery sees in a payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Summary<'a> {
    Record(RecordSummary<'a>),
    Published {
        key: &'a [u8],
        fence: u64,
    },
    Purged {
        upto: u64,
    },
    Claim(ClaimSummary<'a>),
    Released {
        key: &'a [u8],
        fence: u64,
        expires_at: u64,
    },
}

/// A claim frame, as recovery reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ClaimSummary<'a> {
    pub(crate) key: &'a [u8],
    pub(crate) fingerprint: Fingerprint,
    pub(crate) fence: u64,
    pub(crate) created_at: u64,
    pub(crate) lease_until: u64,
    pub(crate) expires_at: u64,
}

/// The 16-byte header that starts every segment file.
pub fn segment_header() -> [u8; SEGMENT_HEADER_LEN] {
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    header[..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let crc = crc32fast::hash(&header[..12]);
    header[12..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// The format version in a segment header, or `None` when `bytes` does not start with an
/// intact one (missing, truncated or corrupted).
pub fn segment_version(bytes: &[u8]) -> Option<u32> {
    let header = bytes.get(..SEGMENT_HEADER_LEN)?;
    let crc = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    if header[..8] != SEGMENT_MAGIC || crc32fast::hash(&header[..12]) != crc {
        return None;
    }
    Some(u32::from_le_bytes([
        header[8], header[9], header[10], header[11],
    ]))
}

/// Wraps `payload` into a frame: magic, length, checksum, payload.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    push_frame(&mut out, payload);
    out
}

fn push_frame(out: &mut Vec<u8>, payload: &[u8]) {
    // Payloads are built by this crate and checked against MAX_PAYLOAD_LEN before framing.
    let len = u32::try_from(payload.len()).expect("payload length checked against the maximum");
    out.extend_from_slice(&FRAME_MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(len, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

fn checksum(len: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Encodes `entry` as a complete frame, or fails when its payload would exceed
/// [`MAX_PAYLOAD_LEN`] or a field its `u32` length prefix.
pub fn encode_frame(entry: &Entry) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::new();
    encode_frame_into(entry, &mut out)?;
    Ok(out)
}

/// Appends `entry` as a complete frame to `out`, the same bytes [`encode_frame`] returns.
/// On failure `out` is left as it was.
pub fn encode_frame_into(entry: &Entry, out: &mut Vec<u8>) -> Result<(), FormatError> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    let encoded = encode_payload_into(entry, out).and_then(|()| {
        let len = out.len() - start - FRAME_HEADER_LEN;
        if len > MAX_PAYLOAD_LEN {
            return Err(FormatError::TooLarge { len: len as u64 });
        }
        // Checked against MAX_PAYLOAD_LEN, which is below u32::MAX.
        u32::try_from(len).map_err(|_| FormatError::TooLarge { len: len as u64 })
    });
    let len = match encoded {
        Ok(len) => len,
        Err(e) => {
            out.truncate(start);
            return Err(e);
        }
    };
    let crc = checksum(len, &out[start + FRAME_HEADER_LEN..]);
    let header = &mut out[start..start + FRAME_HEADER_LEN];
    header[..4].copy_from_slice(&FRAME_MAGIC);
    header[4..8].copy_from_slice(&len.to_le_bytes());
    header[8..12].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Encodes `entry` as a frame payload.
pub fn encode_payload(entry: &Entry) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::new();
    encode_payload_into(entry, &mut out)?;
    if out.len() > MAX_PAYLOAD_LEN {
        return Err(FormatError::TooLarge {
            len: out.len() as u64,
        });
    }
    Ok(out)
}

/// Appends `entry`'s payload to `out`, without checking its length.
fn encode_payload_into(entry: &Entry, out: &mut Vec<u8>) -> Result<(), FormatError> {
    match entry {
        Entry::Record(record) => encode_record(out, record)?,
        Entry::Published { key, fence } => {
            out.push(KIND_PUBLISHED);
            out.extend_from_slice(&fence.0.to_le_bytes());
            push_bytes(out, &key.encode())?;
        }
        Entry::Purged { upto } => {
            out.push(KIND_PURGED);
            out.extend_from_slice(&upto.as_millis().to_le_bytes());
        }
        Entry::Claim(claim) => {
            out.push(KIND_CLAIM);
            out.extend_from_slice(&claim.fence.0.to_le_bytes());
            out.extend_from_slice(&claim.created_at.as_millis().to_le_bytes());
            out.extend_from_slice(&claim.lease_until.as_millis().to_le_bytes());
            out.extend_from_slice(&claim.expires_at.as_millis().to_le_bytes());
            out.push(claim.fingerprint.version());
            out.extend_from_slice(claim.fingerprint.digest());
            push_bytes(out, &claim.key.encode())?;
        }
        Entry::Released {
            key,
            fence,
            expires_at,
        } => {
            out.push(KIND_RELEASED);
            out.extend_from_slice(&fence.0.to_le_bytes());
            out.extend_from_slice(&expires_at.as_millis().to_le_bytes());
            push_bytes(out, &key.encode())?;
        }
    }
    Ok(())
}

fn encode_record(out: &mut Vec<u8>, record: &RecordEntry) -> Result<(), FormatError> {
    let event_count = u32::try_from(record.events.len())
        .map_err(|_| FormatError::Malformed("too many events"))?;
    out.push(KIND_RECORD);
    out.push(if record.events_published {
        FLAG_EVENTS_PUBLISHED
    } else {
        0
    });
    out.extend_from_slice(&record.fence.0.to_le_bytes());
    out.extend_from_slice(&record.created_at.as_millis().to_le_bytes());
    out.extend_from_slice(&record.expires_at.as_millis().to_le_bytes());
    out.extend_from_slice(&record.completed_at.as_millis().to_le_bytes());
    out.push(record.fingerprint.version());
    out.extend_from_slice(record.fingerprint.digest());
    out.extend_from_slice(&event_count.to_le_bytes());
    push_bytes(out, &record.key.encode())?;

    let response = &record.response;
    out.extend_from_slice(&response.status.as_u16().to_le_bytes());
    let header_count = u32::try_from(response.headers.len())
        .map_err(|_| FormatError::Malformed("too many headers"))?;
    out.extend_from_slice(&header_count.to_le_bytes());
    for (name, value) in &response.headers {
        push_bytes(out, name.as_str().as_bytes())?;
        push_bytes(out, value.as_bytes())?;
    }
    push_bytes(out, &response.body)?;

    for event in &record.events {
        push_bytes(out, event.id.as_bytes())?;
        push_bytes(out, event.kind.as_bytes())?;
        match &event.room {
            Some(room) => {
                out.push(1);
                push_bytes(out, room.as_bytes())?;
            }
            None => out.push(0),
        }
        push_bytes(out, event.payload.as_json().as_bytes())?;
        out.extend_from_slice(&event.ts.as_millis().to_le_bytes());
    }
    Ok(())
}

fn push_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), FormatError> {
    let len = u32::try_from(bytes.len()).map_err(|_| FormatError::TooLarge {
        len: bytes.len() as u64,
    })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Checks the frame at the start of `bytes` and returns its payload and its total length
/// (header included). Bytes after the frame are ignored.
pub fn check_frame(bytes: &[u8]) -> Result<(&[u8], usize), FormatError> {
    let Some((header, rest)) = bytes.split_first_chunk::<FRAME_HEADER_LEN>() else {
        return Err(FormatError::Truncated);
    };
    if header[..4] != FRAME_MAGIC {
        return Err(FormatError::BadMagic);
    }
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    let payload_len = len as usize;
    if payload_len > MAX_PAYLOAD_LEN {
        return Err(FormatError::TooLarge { len: len.into() });
    }
    let Some(payload) = rest.get(..payload_len) else {
        return Err(FormatError::Truncated);
    };
    if checksum(len, payload) != crc {
        return Err(FormatError::ChecksumMismatch);
    }
    Ok((payload, FRAME_HEADER_LEN + payload_len))
}

/// Decodes one whole frame: checks magic, length and checksum, then decodes the payload.
/// `bytes` must hold exactly one frame.
pub fn decode_frame(bytes: &[u8]) -> Result<Entry, FormatError> {
    let (payload, len) = check_frame(bytes)?;
    if len != bytes.len() {
        return Err(FormatError::Malformed("trailing bytes after the frame"));
    }
    decode_payload(payload)
}

/// Decodes a frame payload (the bytes after the frame header).
pub fn decode_payload(payload: &[u8]) -> Result<Entry, FormatError> {
    let mut r = Reader::new(payload);
    let entry = match r.u8()? {
        KIND_RECORD => Entry::Record(Box::new(decode_record(&mut r)?)),
        KIND_PUBLISHED => {
            let fence = Fence(r.u64()?);
            let key = decode_key(r.bytes()?)?;
            Entry::Published { key, fence }
        }
        KIND_PURGED => Entry::Purged {
            upto: Timestamp::from_millis(r.u64()?),
        },
        KIND_CLAIM => {
            let claim = read_claim(&mut r)?;
            Entry::Claim(Box::new(ClaimEntry {
                key: decode_key(claim.key)?,
                fingerprint: claim.fingerprint,
                fence: Fence(claim.fence),
                created_at: Timestamp::from_millis(claim.created_at),
                lease_until: Timestamp::from_millis(claim.lease_until),
                expires_at: Timestamp::from_millis(claim.expires_at),
            }))
        }
        KIND_RELEASED => {
            let fence = Fence(r.u64()?);
            let expires_at = Timestamp::from_millis(r.u64()?);
            let key = decode_key(r.bytes()?)?;
            Entry::Released {
                key,
                fence,
                expires_at,
            }
        }
        _ => return Err(FormatError::Malformed("unknown entry kind")),
    };
    r.finish()?;
    Ok(entry)
}

fn decode_record(r: &mut Reader<'_>) -> Result<RecordEntry, FormatError> {
    let flags = r.u8()?;
    let fence = Fence(r.u64()?);
    let created_at = Timestamp::from_millis(r.u64()?);
    let expires_at = Timestamp::from_millis(r.u64()?);
    let completed_at = Timestamp::from_millis(r.u64()?);
    let version = r.u8()?;
    let digest: [u8; 32] = r.array()?;
    let event_count = r.u32()?;
    let key = decode_key(r.bytes()?)?;

    let status = StatusCode::from_u16(r.u16()?)
        .map_err(|_| FormatError::Malformed("invalid status code"))?;
    let header_count = r.u32()?;
    // Each header takes at least eight bytes, so a count beyond that is a lie; checking it
    // first keeps a corrupt count from reserving memory it cannot fill.
    let mut headers = Vec::with_capacity(r.bounded_count(header_count, 8)?);
    for _ in 0..header_count {
        let name = HeaderName::from_bytes(r.bytes()?)
            .map_err(|_| FormatError::Malformed("invalid header name"))?;
        let value = HeaderValue::from_bytes(r.bytes()?)
            .map_err(|_| FormatError::Malformed("invalid header value"))?;
        headers.push((name, value));
    }
    let body = Bytes::copy_from_slice(r.bytes()?);

    let mut events = Vec::with_capacity(r.bounded_count(event_count, 21)?);
    for _ in 0..event_count {
        let id = r.string()?;
        let kind = r.string()?;
        let room = match r.u8()? {
            0 => None,
            1 => Some(r.string()?),
            _ => return Err(FormatError::Malformed("invalid room tag")),
        };
        let payload = std::str::from_utf8(r.bytes()?)
            .ok()
            .and_then(|text| Payload::from_json(text).ok())
            .ok_or(FormatError::Malformed("event payload is not json"))?;
        let ts = Timestamp::from_millis(r.u64()?);
        events.push(Event {
            id,
            kind,
            room,
            payload,
            ts,
        });
    }

    Ok(RecordEntry {
        key,
        fingerprint: Fingerprint::from_parts(version, digest),
        fence,
        created_at,
        expires_at,
        completed_at,
        response: StoredResponse {
            status,
            headers,
            body,
        },
        events,
        events_published: flags & FLAG_EVENTS_PUBLISHED != 0,
    })
}

fn decode_key(bytes: &[u8]) -> Result<RecordKey, FormatError> {
    RecordKey::decode(bytes).ok_or(FormatError::Malformed("invalid record key"))
}

/// Reads what recovery needs from a payload without decoding responses or events.
pub(crate) fn summarize(payload: &[u8]) -> Result<Summary<'_>, FormatError> {
    let mut r = Reader::new(payload);
    match r.u8()? {
        KIND_RECORD => {
            let flags = r.u8()?;
            let fence = r.u64()?;
            let _created_at = r.u64()?;
            let expires_at = r.u64()?;
            let completed_at = r.u64()?;
            let _version = r.u8()?;
            let _digest: [u8; 32] = r.array()?;
            let event_count = r.u32()?;
            let key = r.bytes()?;
            Ok(Summary::Record(RecordSummary {
                key,
                fence,
                expires_at,
                completed_at,
                has_events: event_count > 0,
                events_published: flags & FLAG_EVENTS_PUBLISHED != 0,
            }))
        }
        KIND_PUBLISHED => {
            let fence = r.u64()?;
            let key = r.bytes()?;
            r.finish()?;
            Ok(Summary::Published { key, fence })
        }
        KIND_PURGED => {
            let upto = r.u64()?;
            r.finish()?;
            Ok(Summary::Purged { upto })
        }
        KIND_CLAIM => {
            let claim = read_claim(&mut r)?;
            r.finish()?;
            Ok(Summary::Claim(claim))
        }
        KIND_RELEASED => {
            let fence = r.u64()?;
            let expires_at = r.u64()?;
            let key = r.bytes()?;
            r.finish()?;
            Ok(Summary::Released {
                key,
                fence,
                expires_at,
            })
        }
        _ => Err(FormatError::Malformed("unknown entry kind")),
    }
}

fn read_claim<'a>(r: &mut Reader<'a>) -> Result<ClaimSummary<'a>, FormatError> {
    let fence = r.u64()?;
    let created_at = r.u64()?;
    let lease_until = r.u64()?;
    let expires_at = r.u64()?;
    let version = r.u8()?;
    let digest: [u8; 32] = r.array()?;
    let key = r.bytes()?;
    Ok(ClaimSummary {
        key,
        fingerprint: Fingerprint::from_parts(version, digest),
        fence,
        created_at,
        lease_until,
        expires_at,
    })
}

/// Rewrites the events-published flag of a record frame in place and fixes its checksum.
/// Returns false (and changes nothing) when `frame` is not a valid record frame.
pub(crate) fn set_published_flag(frame: &mut [u8], published: bool) -> bool {
    let Ok((payload, len)) = check_frame(frame) else {
        return false;
    };
    if len != frame.len() || payload.first() != Some(&KIND_RECORD) || payload.len() < 2 {
        return false;
    }
    let flags_at = FRAME_HEADER_LEN + RECORD_FLAGS_OFFSET;
    if published {
        frame[flags_at] |= FLAG_EVENTS_PUBLISHED;
    } else {
        frame[flags_at] &= !FLAG_EVENTS_PUBLISHED;
    }
    let payload_len = u32::try_from(len - FRAME_HEADER_LEN).unwrap_or(u32::MAX);
    let crc = checksum(payload_len, &frame[FRAME_HEADER_LEN..]);
    frame[8..12].copy_from_slice(&crc.to_le_bytes());
    true
}

/// The offset of the first plausible frame start at or after `from`: where recovery resumes
/// after corrupted bytes.
pub(crate) fn find_magic(bytes: &[u8], from: usize) -> Option<usize> {
    let tail = bytes.get(from..)?;
    tail.windows(FRAME_MAGIC.len())
        .position(|window| window == FRAME_MAGIC)
        .map(|at| from + at)
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if self.bytes.len() < n {
            return Err(FormatError::Malformed(
                "field runs past the end of the payload",
            ));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn bytes(&mut self) -> Result<&'a [u8], FormatError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn string(&mut self) -> Result<String, FormatError> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| FormatError::Malformed("invalid utf-8"))
    }

    /// `count` items of at least `min_len` bytes each, checked against what is left.
    fn bounded_count(&self, count: u32, min_len: usize) -> Result<usize, FormatError> {
        let count = count as usize;
        if count.saturating_mul(min_len) > self.bytes.len() {
            return Err(FormatError::Malformed("item count exceeds the payload"));
        }
        Ok(count)
    }

    fn finish(&self) -> Result<(), FormatError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(FormatError::Malformed("trailing bytes in the payload"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnerium_core::{IdempotencyKey, Scope};

    fn sample() -> RecordEntry {
        RecordEntry {
            key: RecordKey::new(
                Scope::with_caller("orders.create", "tenant/../x"),
                IdempotencyKey::new("../../etc/passwd").unwrap(),
            ),
            fingerprint: Fingerprint::from_parts(1, [7; 32]),
            fence: Fence(42),
            created_at: Timestamp::from_millis(1_000),
            expires_at: Timestamp::from_millis(9_000),
            completed_at: Timestamp::from_millis(2_000),
            response: StoredResponse {
                status: StatusCode::CREATED,
                headers: vec![(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body: Bytes::from_static(b"{\"ok\":true}\x00\xff"),
            },
            events: vec![Event {
                id: "evt_1".into(),
                kind: "order.created".into(),
                room: Some("orders".into()),
                payload: Payload::from_json(r#"{"n":12345678901234567890123,"a":[1.50]}"#).unwrap(),
                ts: Timestamp::from_millis(2_000),
            }],
            events_published: false,
        }
    }

    #[test]
    fn record_frames_round_trip() {
        let entry = Entry::Record(Box::new(sample()));
        let bytes = encode_frame(&entry).unwrap();
        assert_eq!(decode_frame(&bytes).unwrap(), entry);
    }

    #[test]
    fn event_payloads_are_kept_as_their_json_text() {
        let record = sample();
        let text = record.events[0].payload.as_json().to_owned();
        let mut payload = encode_payload(&Entry::Record(Box::new(record))).unwrap();
        let at = payload
            .windows(text.len())
            .position(|w| w == text.as_bytes())
            .expect("the payload text is written as it is");
        let Entry::Record(decoded) = decode_payload(&payload).unwrap() else {
            panic!("not a record");
        };
        assert_eq!(decoded.events[0].payload.as_json(), text);

        // Same length, no longer one JSON value, then no longer UTF-8.
        for byte in [b' ', 0xff] {
            payload[at + text.len() - 1] = byte;
            assert_eq!(
                decode_payload(&payload),
                Err(FormatError::Malformed("event payload is not json"))
            );
        }
    }

    #[test]
    fn published_markers_round_trip() {
        let entry = Entry::Published {
            key: sample().key,
            fence: Fence(9),
        };
        let bytes = encode_frame(&entry).unwrap();
        assert_eq!(decode_frame(&bytes).unwrap(), entry);
    }

    #[test]
    fn claims_and_releases_round_trip() {
        let record = sample();
        let claim = Entry::Claim(Box::new(ClaimEntry {
            key: record.key.clone(),
            fingerprint: record.fingerprint,
            fence: Fence(3),
            created_at: Timestamp::from_millis(1),
            lease_until: Timestamp::from_millis(2),
            expires_at: Timestamp::from_millis(3),
        }));
        let released = Entry::Released {
            key: record.key,
            fence: Fence(3),
            expires_at: Timestamp::from_millis(3),
        };
        for entry in [claim, released] {
            let bytes = encode_frame(&entry).unwrap();
            assert_eq!(decode_frame(&bytes).unwrap(), entry);
        }
    }

    #[test]
    fn purge_watermarks_round_trip() {
        let entry = Entry::Purged {
            upto: Timestamp::from_millis(77),
        };
        let bytes = encode_frame(&entry).unwrap();
        assert_eq!(decode_frame(&bytes).unwrap(), entry);
        assert_eq!(
            summarize(&bytes[FRAME_HEADER_LEN..]),
            Ok(Summary::Purged { upto: 77 })
        );
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = encode_frame(&Entry::Record(Box::new(sample()))).unwrap();
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut corrupt = bytes.clone();
                corrupt[at] ^= 1 << bit;
                assert!(
                    decode_frame(&corrupt).is_err(),
                    "flip at byte {at} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = encode_frame(&Entry::Record(Box::new(sample()))).unwrap();
        for len in 0..bytes.len() {
            assert!(decode_frame(&bytes[..len]).is_err(), "truncated to {len}");
        }
    }

    #[test]
    fn garbage_payloads_with_valid_checksums_are_rejected_without_panicking() {
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let valid = encode_payload(&Entry::Record(Box::new(sample()))).unwrap();
        for _ in 0..20_000 {
            let mut payload = valid.clone();
            let flips = 1 + next() % 4;
            for _ in 0..flips {
                let at = (next() % payload.len() as u64) as usize;
                payload[at] = next() as u8;
            }
            let cut = (next() % (payload.len() as u64 + 1)) as usize;
            let payload = &payload[..cut];
            let _ = decode_frame(&frame(payload));
            let _ = summarize(payload);
        }
    }

    #[test]
    fn huge_declared_counts_are_rejected_before_allocating() {
        let mut payload = encode_payload(&Entry::Record(Box::new(sample()))).unwrap();
        // The event count sits right before the key, at a fixed offset.
        let count_at = 1 + 1 + 8 * 4 + 1 + 32;
        payload[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode_payload(&payload),
            Err(FormatError::Malformed("item count exceeds the payload"))
        );
    }

    #[test]
    fn the_published_flag_can_be_rewritten_in_place() {
        let mut bytes = encode_frame(&Entry::Record(Box::new(sample()))).unwrap();
        assert!(set_published_flag(&mut bytes, true));
        let Entry::Record(record) = decode_frame(&bytes).unwrap() else {
            panic!("expected a record");
        };
        assert!(record.events_published);
    }

    #[test]
    fn summaries_match_full_decoding() {
        let payload = encode_payload(&Entry::Record(Box::new(sample()))).unwrap();
        let Summary::Record(summary) = summarize(&payload).unwrap() else {
            panic!("expected a record");
        };
        assert_eq!(summary.key, sample().key.encode().as_slice());
        assert_eq!(summary.fence, 42);
        assert_eq!(summary.expires_at, 9_000);
        assert!(summary.has_events);
        assert!(!summary.events_published);
    }
}
