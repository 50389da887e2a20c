//! Helpers shared by the file store's integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cnerium_core::{
    ClaimOutcome, ClaimRequest, Completion, Event, Fence, Fingerprint, IdempotencyKey, Payload,
    RecordKey, Scope, Store, StoredResponse, Timestamp,
};
use cnerium_store_file::{FileStore, FileStoreOptions};
use futures_executor::block_on;
use http::{HeaderValue, StatusCode};

pub const LEASE: Duration = Duration::from_secs(30);
pub const RETENTION: Duration = Duration::from_secs(3600);

pub fn at(millis: u64) -> Timestamp {
    Timestamp::from_millis(millis)
}

pub fn key(name: &str) -> RecordKey {
    RecordKey::new(
        Scope::new("orders.create"),
        IdempotencyKey::new(name).unwrap(),
    )
}

pub fn fingerprint(seed: u8) -> Fingerprint {
    Fingerprint::from_parts(1, [seed; 32])
}

pub fn claim_request(key: &RecordKey, now: Timestamp) -> ClaimRequest {
    ClaimRequest {
        key: key.clone(),
        fingerprint: fingerprint(1),
        now,
        lease_until: now.saturating_add(LEASE),
        expires_at: now.saturating_add(RETENTION),
    }
}

pub fn response(body: &[u8]) -> StoredResponse {
    StoredResponse {
        status: StatusCode::CREATED,
        headers: vec![
            (
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                http::header::LOCATION,
                HeaderValue::from_static("/orders/1"),
            ),
        ],
        body: Bytes::copy_from_slice(body),
    }
}

pub fn event(id: &str, now: Timestamp) -> Event {
    Event {
        id: id.into(),
        kind: "order.created".into(),
        room: Some("orders".into()),
        payload: Payload::new(serde_json::json!({
            "order": {"id": id, "amount": 12345678901234567890_u64}
        }))
        .unwrap(),
        ts: now,
    }
}

pub fn completion(body: &[u8], events: Vec<Event>, now: Timestamp) -> Completion {
    Completion {
        response: response(body),
        events,
        completed_at: now,
        expires_at: now.saturating_add(RETENTION),
    }
}

/// Options that keep tests fast and deterministic: background compaction off.
pub fn options() -> FileStoreOptions {
    FileStoreOptions::default().compaction_live_ratio(0.0)
}

pub fn open(dir: &Path) -> FileStore {
    FileStore::open_with(dir, options()).unwrap()
}

/// Claims `key` at `now` and returns the fence; panics when the claim is not granted.
pub fn claim(store: &FileStore, key: &RecordKey, now: Timestamp) -> Fence {
    match block_on(store.claim(claim_request(key, now))).unwrap() {
        ClaimOutcome::Claimed { fence, .. } => fence,
        ClaimOutcome::Existing(record) => panic!("expected a grant, found {record:?}"),
    }
}

/// Claims and completes `key` with `body` and `events`; returns the fence.
pub fn store_record(
    store: &FileStore,
    key: &RecordKey,
    body: &[u8],
    events: Vec<Event>,
    now: Timestamp,
) -> Fence {
    let fence = claim(store, key, now);
    block_on(store.complete(key, fence, completion(body, events, now))).unwrap();
    fence
}

/// The stored body of `key` at `now`, if it has a completed record.
pub fn replay(store: &FileStore, key: &RecordKey, now: Timestamp) -> Option<Bytes> {
    let record = block_on(store.lookup(key, now)).unwrap()?;
    match record.state {
        cnerium_core::RecordState::Completed { response, .. } => Some(response.body),
        cnerium_core::RecordState::InProgress { .. } => None,
    }
}

/// Bytes of all segment files in `dir`.
pub fn segment_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("segment-"))
        .map(|entry| entry.metadata().unwrap().len())
        .sum()
}

/// Segment files of `dir`, oldest first.
pub fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("segment-")
        })
        .collect();
    paths.sort();
    paths
}

/// Warnings logged while `f` runs on this thread, as text.
pub fn capture_warnings<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let result = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    (result, text)
}
