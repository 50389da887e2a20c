//! Compares concurrent completion throughput (64 tasks, group commit) with the raw rate of
//! single fsyncs on the same disk, measured in the same run.
//!
//! ```text
//! cargo run --release -p cnerium-store-file --example commit_bench [-- SECONDS]
//! ```

use std::fs::File;
use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cnerium_core::{
    ClaimOutcome, ClaimRequest, Completion, Fingerprint, IdempotencyKey, RecordKey, Scope, Store,
    StoredResponse, Timestamp,
};
use cnerium_store_file::FileStore;
use futures_executor::block_on;
use futures_util::future::join_all;
use http::StatusCode;

const TASKS: usize = 64;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 3,
    };
    let phase = Duration::from_secs(seconds);
    let dir = tempfile::tempdir()?;

    println!("measuring single fsyncs for {seconds} s ...");
    let fsyncs_per_sec = raw_fsync_rate(&dir.path().join("fsync-probe"), phase)?;
    println!("raw: {fsyncs_per_sec:.0} write+fdatasync per second");

    println!("measuring {TASKS} concurrent tasks completing for {seconds} s ...");
    let store = FileStore::open(dir.path().join("store"))?;
    let started = Instant::now();
    let tasks = (0..TASKS).map(|task| run_task(&store, task, started + phase));
    let results = block_on(join_all(tasks));
    let elapsed = started.elapsed().as_secs_f64();
    let completed: u64 = results.into_iter().sum::<Result<u64, _>>()?;
    let stats = store.stats();
    let rate = completed as f64 / elapsed;
    println!(
        "store: {rate:.0} completions per second ({completed} in {elapsed:.2} s), \
         {} fsyncs, {:.1} completions per fsync",
        stats.syncs,
        completed as f64 / stats.syncs.max(1) as f64
    );
    println!(
        "ratio: {:.1}x the raw single-fsync rate",
        rate / fsyncs_per_sec
    );
    block_on(store.close())?;
    Ok(())
}

/// Appends 200 bytes and syncs, one at a time, like a store without group commit.
fn raw_fsync_rate(path: &std::path::Path, phase: Duration) -> std::io::Result<f64> {
    let mut file = File::create(path)?;
    let record = [b'x'; 200];
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < phase {
        file.write_all(&record)?;
        file.sync_data()?;
        count += 1;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// One client: claims and completes fresh keys until `until`; returns how many.
async fn run_task(
    store: &FileStore,
    task: usize,
    until: Instant,
) -> Result<u64, Box<dyn std::error::Error>> {
    let scope = Scope::new("orders.create");
    let now = Timestamp::from_millis(1_764_788_709_000);
    let mut done = 0;
    while Instant::now() < until {
        let key = RecordKey::new(
            scope.clone(),
            IdempotencyKey::new(format!("t{task}-{done}"))?,
        );
        let request = ClaimRequest {
            key: key.clone(),
            fingerprint: Fingerprint::from_parts(1, [1; 32]),
            now,
            lease_until: now.saturating_add(Duration::from_secs(30)),
            expires_at: now.saturating_add(Duration::from_secs(3600)),
        };
        let ClaimOutcome::Claimed { fence, .. } = store.claim(request).await? else {
            return Err("fresh key was not granted".into());
        };
        let completion = Completion {
            response: StoredResponse {
                status: StatusCode::CREATED,
                headers: Vec::new(),
                body: Bytes::from_static(br#"{"ok":true}"#),
            },
            events: Vec::new(),
            completed_at: now,
            expires_at: now.saturating_add(Duration::from_secs(3600)),
        };
        store.complete(&key, fence, completion).await?;
        done += 1;
    }
    Ok(done)
}
