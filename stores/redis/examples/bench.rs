//! Round-trips and throughput of the Redis store, next to the in-memory store.
//!
//! ```text
//! cargo run --release -p cnerium-store-redis --example bench -- [OPS] [CONCURRENCY] [URL]
//! ```
//!
//! Uses (and deletes) the keys under `cnerium-bench:`. Prints figures only; nothing is
//! asserted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cnerium_core::async_trait;
use cnerium_core::{
    ClaimOutcome, ClaimRequest, CompleteError, Completion, DurableRequest, DurableResponse, Engine,
    EngineConfig, Fence, Fingerprint, IdempotencyKey, ManualClock, PendingEvents, Record,
    RecordKey, Scope, Store, StoreError, StoredResponse, Timestamp,
};
use cnerium_store_memory::MemoryStore;
use cnerium_store_redis::{RedisOptions, RedisStore};
use http::{HeaderName, HeaderValue, Request, StatusCode};

const PREFIX: &str = "cnerium-bench:";
const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let ops: usize = args.next().map_or(Ok(2000), |a| a.parse())?;
    let concurrency: usize = args.next().map_or(Ok(16), |a| a.parse())?;
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".to_owned());

    delete_keys(&url).await?;
    let options = RedisOptions::new().key_prefix(PREFIX);
    let redis: Arc<dyn Store> = Arc::new(RedisStore::connect(&url, options).await?);
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());

    println!("store calls through the engine (each call is one round-trip to the server):");
    for (name, store) in [("memory", &memory), ("redis", &redis)] {
        let (first, replay) = calls_per_request(store.clone()).await;
        println!("  {name:<9} first execution {first}, replay {replay}");
    }

    println!("throughput, {ops} operations, {concurrency} concurrent tasks:");
    for (name, store) in [("memory", &memory), ("redis", &redis)] {
        let keys = unique_keys(name, ops);
        let elapsed = run_concurrently(store, &keys, concurrency, claim_and_complete).await;
        report(name, "claim + complete", ops, elapsed);
        let elapsed = run_concurrently(store, &keys, concurrency, replay_claim).await;
        report(name, "replay (claim finds record)", ops, elapsed);
        let elapsed = run_concurrently(store, &keys, concurrency, lookup).await;
        report(name, "lookup", ops, elapsed);
    }

    drop(redis);
    delete_keys(&url).await?;
    Ok(())
}

fn report(store: &str, what: &str, ops: usize, elapsed: Duration) {
    let per_second = ops as f64 / elapsed.as_secs_f64();
    let micros = elapsed.as_micros() as f64 / ops as f64;
    println!("  {store:<9} {what:<28} {per_second:>10.0} ops/s  {micros:>8.1} µs/op wall");
}

/// Counts the store calls the engine makes for a first execution that emits an event, and
/// for its replay.
async fn calls_per_request(store: Arc<dyn Store>) -> (u64, u64) {
    let counting = Arc::new(Counting {
        inner: store,
        calls: AtomicU64::new(0),
    });
    let engine = Engine::with_parts(
        counting.clone(),
        Arc::new(cnerium_core::DiscardEvents),
        Arc::new(ManualClock::new(T0)),
        EngineConfig::default(),
    );
    let route = engine.route("bench.create", |request: DurableRequest| async move {
        request.emit("bench.created", 1)?;
        Ok::<_, cnerium_core::EmitError>(DurableResponse::created(serde_json::json!({"ok": 1})))
    });
    let post = || {
        Request::post("/bench")
            .header("idempotency-key", "calls")
            .header("content-type", "application/json")
            .body(Bytes::from_static(b"{}"))
            .expect("a valid request")
    };

    route.handle(post()).await;
    let first = counting.calls.swap(0, Ordering::SeqCst);
    route.handle(post()).await;
    let replay = counting.calls.swap(0, Ordering::SeqCst);
    (first, replay)
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

async fn delete_keys(url: &str) -> redis::RedisResult<()> {
    let mut connection = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{PREFIX}*"))
        .query_async(&mut connection)
        .await?;
    if !keys.is_empty() {
        redis::cmd("DEL")
            .arg(keys)
            .query_async::<()>(&mut connection)
            .await?;
    }
    Ok(())
}

/// A store that counts the calls made to it.
struct Counting {
    inner: Arc<dyn Store>,
    calls: AtomicU64,
}

impl Counting {
    fn count(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Store for Counting {
    async fn claim(&self, request: ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        self.count();
        self.inner.claim(request).await
    }

    async fn complete(
        &self,
        key: &RecordKey,
        fence: Fence,
        completion: Completion,
    ) -> Result<(), CompleteError> {
        self.count();
        self.inner.complete(key, fence, completion).await
    }

    async fn release(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError> {
        self.count();
        self.inner.release(key, fence).await
    }

    async fn mark_published(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError> {
        self.count();
        self.inner.mark_published(key, fence).await
    }

    async fn pending_events(&self, limit: usize) -> Result<Vec<PendingEvents>, StoreError> {
        self.count();
        self.inner.pending_events(limit).await
    }

    async fn lookup(&self, key: &RecordKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        self.count();
        self.inner.lookup(key, now).await
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.count();
        self.inner.purge_expired(now).await
    }
}
