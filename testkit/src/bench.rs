//! What a store costs, next to others measured in the same run (feature `tokio`).
//!
//! For each store: the store calls the engine makes for a first execution that emits an
//! event and for its replay (each call is one round-trip for a store behind a server), then
//! the wall time of claims and completions, replays and lookups from concurrent tasks. It
//! prints figures and asserts nothing but that the store answers as the contract says.
//!
//! ```no_run
//! # async fn run(mine: std::sync::Arc<dyn cnerium_core::Store>) {
//! use std::sync::Arc;
//! let memory: Arc<dyn cnerium_core::Store> = Arc::new(cnerium_store_memory::MemoryStore::new());
//! cnerium_testkit::bench::compare(&[("memory", memory), ("mine", mine)], 2000, 16).await;
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cnerium_core::{
    ClaimOutcome, ClaimRequest, Completion, DiscardEvents, DurableRequest, DurableResponse,
    EmitError, Engine, EngineConfig, Fingerprint, IdempotencyKey, ManualClock, RecordKey, Scope,
    Store, StoredResponse, Timestamp,
};
use http::{HeaderName, HeaderValue, Request, StatusCode};

use crate::faulty::{FaultyStore, StoreMethod};

const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);

/// The command line of a store benchmark: `[OPS] [CONCURRENCY] [URL]`, each optional.
#[derive(Clone, Debug)]
pub struct Args {
    /// Operations of each kind; 2,000 when not given.
    pub ops: usize,
    /// Concurrent tasks; 16 when not given.
    pub concurrency: usize,
    /// Where the store's server is; `default_url` when not given.
    pub url: String,
}

impl Args {
    /// Reads the process's arguments.
    pub fn from_env(default_url: &str) -> Result<Self, std::num::ParseIntError> {
        let mut args = std::env::args().skip(1);
        Ok(Self {
            ops: args.next().map_or(Ok(2000), |a| a.parse())?,
            concurrency: args.next().map_or(Ok(16), |a| a.parse())?,
            url: args.next().unwrap_or_else(|| default_url.to_owned()),
        })
    }
}

/// Prints the calls per request and the throughput of each named store, `ops` operations
/// of each kind from `concurrency` tokio tasks. Call it on a tokio runtime; the stores must
/// be empty of the keys `bench.create`/`<name>-<n>`.
pub async fn compare(stores: &[(&str, Arc<dyn Store>)], ops: usize, concurrency: usize) {
    println!("store calls through the engine (each call is one round-trip to the server):");
    for (name, store) in stores {
        let (first, replay) = calls_per_request(store.clone()).await;
        println!("  {name:<9} first execution {first}, replay {replay}");
    }

    println!("throughput, {ops} operations, {concurrency} concurrent tasks:");
    for (name, store) in stores {
        let keys = unique_keys(name, ops);
        let elapsed = run_concurrently(store, &keys, concurrency, claim_and_complete).await;
        report(name, "claim + complete", ops, elapsed);
        let elapsed = run_concurrently(store, &keys, concurrency, replay_claim).await;
        report(name, "replay (claim finds record)", ops, elapsed);
        let elapsed = run_concurrently(store, &keys, concurrency, lookup).await;
        report(name, "lookup", ops, elapsed);
    }
}

fn report(store: &str, what: &str, ops: usize, elapsed: Duration) {
    let per_second = ops as f64 / elapsed.as_secs_f64();
    let micros = elapsed.as_micros() as f64 / ops as f64;
    println!("  {store:<9} {what:<28} {per_second:>10.0} ops/s  {micros:>8.1} µs/op wall");
}

/// Counts the store calls the engine makes for a first execution that emits an event, and
/// for its replay.
async fn calls_per_request(store: Arc<dyn Store>) -> (u64, u64) {
    let counting = Arc::new(FaultyStore::from_arc(store));
    let calls = || {
        StoreMethod::ALL
            .iter()
            .map(|&method| counting.plan().calls(method))
            .sum::<u64>()
    };
    let engine = Engine::with_parts(
        counting.clone(),
        Arc::new(DiscardEvents),
        Arc::new(ManualClock::new(T0)),
        EngineConfig::default(),
    );
    let route = engine.route("bench.create", |request: DurableRequest| async move {
        request.emit("bench.created", 1)?;
        Ok::<_, EmitError>(DurableResponse::created(serde_json::json!({"ok": 1})))
    });
    let post = || {
        Request::post("/bench")
            .header("idempotency-key", "calls")
            .header("content-type", "application/json")
            .body(Bytes::from_static(b"{}"))
            .expect("a valid request")
    };

    route.handle(post()).await;
    let first = calls();
    route.handle(post()).await;
    (first, calls() - first)
}

fn unique_keys(store: &str, ops: usize) -> Vec<RecordKey> {
    (0..ops)
        .map(|i| {
            let key = IdempotencyKey::new(format!("{store}-{i}")).expect("a valid key");
            RecordKey::new(Scope::new("bench.create"), key)
        })
        .collect()
}

fn request(key: &RecordKey) -> ClaimRequest {
    ClaimRequest {
        key: key.clone(),
        fingerprint: Fingerprint::from_parts(1, [7; 32]),
        now: T0,
        lease_until: T0.saturating_add(Duration::from_secs(30)),
        expires_at: T0.saturating_add(Duration::from_secs(86_400)),
    }
}

async fn claim_and_complete(store: Arc<dyn Store>, key: RecordKey) {
    let ClaimOutcome::Claimed { fence, .. } = store.claim(request(&key)).await.expect("claim")
    else {
        panic!("{key} was claimed before");
    };
    let completion = Completion {
        response: StoredResponse {
            status: StatusCode::CREATED,
            headers: vec![(
                HeaderName::from_static("content-type"),
                HeaderValue::from_static("application/json"),
            )],
            body: Bytes::from(format!("{{\"ok\":true,\"id\":\"{key}\"}}")),
        },
        events: Vec::new(),
        completed_at: T0,
        expires_at: T0.saturating_add(Duration::from_secs(86_400)),
    };
    store
        .complete(&key, fence, completion)
        .await
        .expect("complete");
}

async fn replay_claim(store: Arc<dyn Store>, key: RecordKey) {
    let outcome = store.claim(request(&key)).await.expect("claim");
    assert!(matches!(outcome, ClaimOutcome::Existing(_)));
}

async fn lookup(store: Arc<dyn Store>, key: RecordKey) {
    assert!(store.lookup(&key, T0).await.expect("lookup").is_some());
}

/// Runs `op` once per key from `concurrency` tasks and returns the wall time.
async fn run_concurrently<F, Fut>(
    store: &Arc<dyn Store>,
    keys: &[RecordKey],
    concurrency: usize,
    op: F,
) -> Duration
where
    F: Fn(Arc<dyn Store>, RecordKey) -> Fut + Copy + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let chunk = keys.len().div_ceil(concurrency.max(1)).max(1);
    let start = Instant::now();
    let tasks: Vec<_> = keys
        .chunks(chunk)
        .map(|chunk| {
            let store = store.clone();
            let chunk = chunk.to_vec();
            tokio::spawn(async move {
                for key in chunk {
                    op(store.clone(), key).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a benchmark task");
    }
    start.elapsed()
}
