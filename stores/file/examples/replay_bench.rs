//! Replay throughput of the file store next to the in-memory store, measured in the same
//! run: the same engine, route and requests, 64 concurrent tasks, rounds alternating
//! between the two stores so that drift on a shared machine hits both alike.
//!
//! ```text
//! cargo run --release -p cnerium-store-file --example replay_bench [-- SECONDS_PER_ROUND]
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cnerium_core::{DurableRequest, DurableResponse, Engine, ManualClock, Store, Timestamp};
use cnerium_store_file::{FileStore, FileStoreOptions};
use cnerium_store_memory::MemoryStore;
use futures_executor::block_on;
use futures_util::future::join_all;

const TASKS: usize = 64;
const KEYS: usize = 10_000;
const ROUNDS: usize = 3;

fn request(key: usize) -> http::Request<Bytes> {
    http::Request::post("/orders")
        .header("idempotency-key", format!("replay-{key}"))
        .header("content-type", "application/json")
        .body(Bytes::from(format!(
            r#"{{"product_id":"p{key}","quantity":1}}"#
        )))
        .expect("a valid request")
}

fn engine(store: Arc<dyn Store>) -> Engine {
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_800_000_000_000)));
    Engine::new(store, clock)
}

/// Stores `KEYS` records of about 200 response bytes each.
fn fill(engine: &Engine) {
    let route = engine.route("orders.create", |request: DurableRequest| async move {
        let padding = "x".repeat(130);
        DurableResponse::created(serde_json::json!({
            "ok": true,
            "order_id": format!("ord_{}", request.idempotency_key()),
            "padding": padding,
        }))
    });
    block_on(async {
        for key in 0..KEYS {
            assert_eq!(route.handle(request(key)).await.status(), 201);
        }
    });
}

/// Replays for `phase` from `TASKS` tasks; returns replays per second.
fn replay_rate(engine: &Engine, phase: Duration) -> f64 {
    // Every request replays, which the loop checks; this handler never runs.
    let route = engine.route("orders.create", |_request: DurableRequest| async move {
        DurableResponse::internal_error("a replay ran the handler")
    });
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + phase;
    let tasks = (0..TASKS).map(|task| {
        let route = route.clone();
        let done = done.clone();
        async move {
            let mut key = task * 7919 % KEYS;
            while Instant::now() < deadline {
                let response = route.handle(request(key)).await;
                assert_eq!(response.headers()["idempotent-replayed"], "true");
                done.fetch_add(1, Ordering::Relaxed);
                key = (key + TASKS) % KEYS;
            }
        }
    });
    block_on(join_all(tasks));
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: f64 = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 2.0,
    };
    let phase = Duration::from_secs_f64(seconds);
    let dir = tempfile::tempdir()?;

    println!("storing {KEYS} records in each store ...");
    let memory = engine(Arc::new(MemoryStore::new()));
    let file_store = Arc::new(FileStore::open(dir.path().join("recent"))?);
    let file = engine(file_store.clone());
    // The same store with the recent-records cache off: every replay reads its segment.
    let cold_options = FileStoreOptions::default().recent_records_bytes(0);
    let cold_store = Arc::new(FileStore::open_with(dir.path().join("cold"), cold_options)?);
    let cold = engine(cold_store.clone());
    fill(&memory);
    fill(&file);
    fill(&cold);

    let mut totals = [0.0; 3];
    for round in 1..=ROUNDS {
        let rates = [
            replay_rate(&memory, phase),
            replay_rate(&file, phase),
            replay_rate(&cold, phase),
        ];
        println!(
            "round {round}/{ROUNDS}: memory {:.0}/s, file {:.0}/s, file without cache {:.0}/s",
            rates[0], rates[1], rates[2]
        );
        for (total, rate) in totals.iter_mut().zip(rates) {
            *total += rate;
        }
    }
    let [memory_rate, file_rate, cold_rate] = totals.map(|t| t / ROUNDS as f64);
    let ratio = file_rate / memory_rate;
    println!(
        "replays through the engine, {TASKS} tasks: memory {memory_rate:.0}/s, file \
         {file_rate:.0}/s, file/memory {ratio:.2} (target >= 0.90: {}); with every replay \
         read from its segment: {cold_rate:.0}/s, {:.2} of memory",
        if ratio >= 0.90 { "met" } else { "MISSED" },
        cold_rate / memory_rate
    );
    block_on(file_store.close())?;
    block_on(cold_store.close())?;
    Ok(())
}
