//! Times `FileStore::open` on a directory holding 1,000,000 small completed records.
//!
//! ```text
//! cargo run --release -p cnerium-store-file --example open_bench [-- RECORDS [DIR]]
//! ```
//!
//! With `DIR`, the records are written there (and kept); a `DIR` that already holds a store
//! is only reopened, which makes repeated timings and profiles cheap.

use std::time::Instant;

use bytes::Bytes;
use cnerium_core::{
    ClaimOutcome, ClaimRequest, Completion, Fingerprint, IdempotencyKey, RecordKey, Scope, Store,
    StoredResponse, Timestamp,
};
use cnerium_store_file::{FileStore, FileStoreOptions, SyncMode};
use futures_executor::block_on;
use futures_util::future::join_all;
use http::{HeaderValue, StatusCode};

const BATCH: usize = 1_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let records: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 1_000_000,
    };
    let temporary = tempfile::tempdir()?;
    let dir = match std::env::args().nth(2) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => temporary.path().to_path_buf(),
    };
    if !dir.join("FENCE").exists() {
        load(&dir, records)?;
    }

    let started = Instant::now();
    let store = FileStore::open(&dir)?;
    let elapsed = started.elapsed();
    let stats = store.stats();
    println!(
        "open: {} records in {} segments in {:.3} s",
        stats.records,
        stats.segments,
        elapsed.as_secs_f64()
    );

    let probe = RecordKey::new(Scope::new("orders.create"), key(records / 2));
    let record = block_on(store.lookup(&probe, now()))?.ok_or("probe record missing")?;
    println!("probe {probe} replays fence {}", record.fence());
    block_on(store.close())?;
    Ok(())
}

fn now() -> Timestamp {
    Timestamp::from_millis(1_764_788_709_000)
}

/// Writes `records` completed records into `dir`, printing progress.
fn load(dir: &std::path::Path, records: usize) -> Result<(), Box<dyn std::error::Error>> {
    let now = now();
    let day = std::time::Duration::from_secs(24 * 3600);

    // Loading runs without per-batch fsync: the figure of interest is the reopen.
    let load = FileStoreOptions::default().sync(SyncMode::Never);
    let store = FileStore::open_with(dir, load)?;
    let started = Instant::now();
    let scope = Scope::new("orders.create");
    for chunk in (0..records).collect::<Vec<_>>().chunks(BATCH) {
        let keys: Vec<RecordKey> = chunk
            .iter()
            .map(|i| RecordKey::new(scope.clone(), key(*i)))
            .collect();
        let mut fences = Vec::with_capacity(keys.len());
        for key in &keys {
            let request = ClaimRequest {
                key: key.clone(),
                fingerprint: Fingerprint::from_parts(1, [7; 32]),
                now,
                lease_until: now.saturating_add(std::time::Duration::from_secs(30)),
                expires_at: now.saturating_add(day),
            };
            match block_on(store.claim(request))? {
                ClaimOutcome::Claimed { fence, .. } => fences.push(fence),
                ClaimOutcome::Existing(_) => return Err("key already stored".into()),
            }
        }
        let completions = keys.iter().zip(&fences).map(|(key, fence)| {
            let body = format!(
                r#"{{"ok":true,"order_id":"ord_{}","quantity":1}}"#,
                key.key()
            );
            store.complete(key, *fence, completion(body, now, day))
        });
        for result in block_on(join_all(completions)) {
            result?;
        }
        let done = chunk[chunk.len() - 1] + 1;
        if done % 100_000 == 0 || done == records {
            println!(
                "wrote {done} records in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    block_on(store.close())?;
    drop(store);

    let size: u64 = std::fs::read_dir(dir)?
        .map(|e| {
            e.map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .unwrap_or(0)
        })
        .sum();
    println!("directory holds {:.1} MiB", size as f64 / (1024.0 * 1024.0));
    Ok(())
}

fn key(i: usize) -> IdempotencyKey {
    // Keys chosen by the caller, built like the ones clients send.
    IdempotencyKey::new(format!("order-{i:08}-3f9c2a")).expect("a valid key")
}

fn completion(body: String, now: Timestamp, retention: std::time::Duration) -> Completion {
    Completion {
        response: StoredResponse {
            status: StatusCode::CREATED,
            headers: vec![(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body: Bytes::from(body),
        },
        events: Vec::new(),
        completed_at: now,
        expires_at: now.saturating_add(retention),
    }
}
