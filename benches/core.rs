//! What the engine costs per request without HTTP: claim, handler, complete and replay on
//! the in-memory store, for 1 KiB and 64 KiB JSON bodies (and the orders example's small
//! body), and the fingerprint's part of it.
//!
//! ```text
//! cargo bench --bench core
//! cargo bench --bench core -- 'engine/replay'      # one group
//! ```
//!
//! Groups:
//!
//! - `engine/first/<size>`: `DurableRoute::handle` with a new key each time: key parsing,
//!   fingerprint, claim, a handler that stages one event and echoes the body, commit,
//!   publication to a sink that discards.
//! - `engine/replay/<size>`: the same request again: fingerprint, claim finds the record,
//!   the stored response is rebuilt.
//! - `fingerprint/json/<size>` and `fingerprint/raw/<size>`: `Fingerprint::compute` alone,
//!   on a JSON body (canonicalized) and on the same bytes sent as non-JSON.
//! - `store/claim`, `store/complete`, `store/claim_existing`: the in-memory store's calls
//!   alone, with a body of the given size stored.
//! - `orders/plain`, `orders/first`, `orders/replay`: the orders example's handler
//!   (`examples/shared/orders.rs`) with its event published to a realtime hub that has
//!   no client: its steps run without the engine, as the HTTP benchmark's plain route runs
//!   them; through a durable route with a new key each time; and replaying one of 1,024
//!   stored requests. The same comparison as the HTTP benchmark's, without HTTP.
//!
//! `scripts/bench.sh` reads criterion's estimates afterwards and prints the fingerprint's
//! share of each engine figure.

#[path = "../examples/shared/orders.rs"]
mod orders;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cnerium::realtime::{Hub, RealtimeConfig};
use cnerium::stores::MemoryStore;
use cnerium::{
    ClaimOutcome, ClaimRequest, Completion, DiscardEvents, DurableRequest, DurableRoute, Engine,
    EngineConfig, Fingerprint, IdempotencyKey, RecordKey, ReplayHeaders, Scope, Store, Timestamp,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_executor::block_on;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};

/// Body sizes: the orders example's request (about 40 bytes), 1 KiB and 64 KiB.
const SIZES: [(&str, usize); 3] = [("orders", 0), ("1KiB", 1024), ("64KiB", 64 * 1024)];

/// A fixed instant: the clock never moves during a benchmark.
fn clock() -> Timestamp {
    Timestamp::from_millis(1_800_000_000_000)
}

/// A JSON order of about `size` bytes: a few fields and a list of line items; size 0 is
/// the orders example's body.
fn json_body(size: usize) -> Bytes {
    if size == 0 {
        return Bytes::from_static(br#"{"product_id":"p1","quantity":2}"#);
    }
    let mut body = String::from(r#"{"product_id":"p1","quantity":2,"items":["#);
    let mut i = 0;
    while body.len() + 64 < size {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"sku":"sku-{i:06}","qty":{},"note":"gift wrap"}}"#,
            i % 7 + 1
        ));
        i += 1;
    }
    body.push_str("]}");
    while body.len() < size {
        body.insert(body.len() - 1, ' ');
    }
    Bytes::from(body)
}

fn request(key: &str, body: &Bytes) -> Request<Bytes> {
    Request::post("/orders")
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body.clone())
        // Static method, path and valid header values: building cannot fail.
        .expect("a valid request")
}

/// A route over a fresh in-memory store whose handler stages one event and echoes the
/// body back as a 201.
fn route() -> DurableRoute {
    let engine = Engine::with_parts(
        Arc::new(MemoryStore::new()),
        Arc::new(DiscardEvents),
        Arc::new(clock),
        EngineConfig::default(),
    );
    engine.route("orders.create", |request: DurableRequest| async move {
        let order_id = format!("ord_{}", request.idempotency_key());
        request.emit("order.created", serde_json::json!({ "order_id": order_id }))?;
        let mut response = Response::new(request.body().clone());
        *response.status_mut() = StatusCode::CREATED;
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        Ok::<_, cnerium::BoxError>(response)
    })
}

/// Runs `iters` first requests through `route`, each with a new key.
fn first_requests(iters: u64, route: &DurableRoute, body: &Bytes) -> Duration {
    let requests: Vec<_> = (0..iters)
        .map(|i| request(&format!("key-{i:012}"), body))
        .collect();
    block_on(async {
        let start = Instant::now();
        for request in requests {
            black_box(route.handle(request).await);
        }
        start.elapsed()
    })
}

/// Runs `iters` retries of requests stored under `keys`, taking the keys in turn.
fn replays(iters: u64, route: &DurableRoute, keys: &[String], body: &Bytes) -> Duration {
    let requests: Vec<_> = (0..iters as usize)
        .map(|i| request(&keys[i % keys.len()], body))
        .collect();
    block_on(async {
        let start = Instant::now();
        for request in requests {
            black_box(route.handle(request).await);
        }
        start.elapsed()
    })
}

fn engine(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine");
    for (name, size) in SIZES {
        let body = json_body(size);
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("first", name), &body, |b, body| {
            b.iter_custom(|iters| first_requests(iters, &route(), body));
        });

        let route = route();
        let first = block_on(route.handle(request("key-stored", &body)));
        assert_eq!(first.status(), StatusCode::CREATED);
        let retry = block_on(route.handle(request("key-stored", &body)));
        assert_eq!(retry.headers()["idempotent-replayed"], "true");
        group.bench_with_input(BenchmarkId::new("replay", name), &body, |b, body| {
            b.iter_custom(|iters| replays(iters, &route, &["key-stored".to_owned()], body));
        });
    }
    group.finish();
}

fn fingerprint(c: &mut Criterion) {
    let mut group = c.benchmark_group("fingerprint");
    let uri: Uri = "/orders".parse().expect("a valid path");
    let mut json = HeaderMap::new();
    json.insert("content-type", HeaderValue::from_static("application/json"));
    let raw = HeaderMap::new();
    for (name, size) in SIZES {
        let body = json_body(size);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("json", name), &body, |b, body| {
            b.iter(|| Fingerprint::compute(&Method::POST, &uri, &json, black_box(body)));
        });
        group.bench_with_input(BenchmarkId::new("raw", name), &body, |b, body| {
            b.iter(|| Fingerprint::compute(&Method::POST, &uri, &raw, black_box(body)));
        });
    }
    group.finish();
}

fn record_key(i: u64) -> RecordKey {
    let key = IdempotencyKey::new(format!("key-{i:012}")).expect("a valid key");
    RecordKey::new(Scope::new("orders.create"), key)
}

fn claim_request(key: RecordKey) -> ClaimRequest {
    let now = clock();
    ClaimRequest {
        key,
        fingerprint: Fingerprint::from_parts(1, [7; 32]),
        now,
        lease_until: now.saturating_add(Duration::from_secs(30)),
        expires_at: now.saturating_add(Duration::from_secs(86_400)),
    }
}

fn completion(body: &Bytes) -> Completion {
    let mut response = Response::new(body.clone());
    *response.status_mut() = StatusCode::CREATED;
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    Completion {
        response: ReplayHeaders::default().to_stored(&response),
        events: Vec::new(),
        completed_at: clock(),
        expires_at: clock().saturating_add(Duration::from_secs(86_400)),
    }
}

fn store(c: &mut Criterion) {
    let mut group = c.benchmark_group("store");
    group.bench_function("claim", |b| {
        b.iter_custom(|iters| {
            let store = MemoryStore::new();
            let claims: Vec<_> = (0..iters).map(|i| claim_request(record_key(i))).collect();
            block_on(async {
                let start = Instant::now();
                for claim in claims {
                    black_box(store.claim(claim).await.expect("memory store never fails"));
                }
                start.elapsed()
            })
        });
    });

    for (name, size) in SIZES {
        let body = json_body(size);
        group.bench_with_input(BenchmarkId::new("complete", name), &body, |b, body| {
            b.iter_custom(|iters| {
                let store = MemoryStore::new();
                let mut pending = Vec::new();
                block_on(async {
                    for i in 0..iters {
                        let key = record_key(i);
                        let outcome = store.claim(claim_request(key.clone())).await;
                        let Ok(ClaimOutcome::Claimed { fence, .. }) = outcome else {
                            unreachable!("a new key is always claimed");
                        };
                        pending.push((key, fence, completion(body)));
                    }
                    let start = Instant::now();
                    for (key, fence, completion) in pending {
                        black_box(store.complete(&key, fence, completion).await.is_ok());
                    }
                    start.elapsed()
                })
            });
        });

        let stored = MemoryStore::new();
        block_on(async {
            let key = record_key(0);
            let Ok(ClaimOutcome::Claimed { fence, .. }) =
                stored.claim(claim_request(key.clone())).await
            else {
                unreachable!("a new key is always claimed");
            };
            let committed = stored.complete(&key, fence, completion(&body)).await;
            assert!(committed.is_ok());
        });
        group.bench_function(BenchmarkId::new("claim_existing", name), |b| {
            b.iter_custom(|iters| {
                let claims: Vec<_> = (0..iters).map(|_| claim_request(record_key(0))).collect();
                block_on(async {
                    let start = Instant::now();
                    for claim in claims {
                        black_box(stored.claim(claim).await.expect("memory store never fails"));
                    }
                    start.elapsed()
                })
            });
        });
    }
    group.finish();
}

/// The orders route of the examples over a fresh in-memory store, publishing to `hub`.
fn orders_route(hub: &Hub) -> DurableRoute {
    let engine = Engine::with_parts(
        Arc::new(MemoryStore::new()),
        Arc::new(hub.clone()),
        Arc::new(clock),
        EngineConfig::default(),
    );
    engine.route(orders::CREATE_ORDER, orders::create_order)
}

fn orders(c: &mut Criterion) {
    const STORED: usize = 1024;
    let mut group = c.benchmark_group("orders");
    group.throughput(Throughput::Elements(1));
    let hub = Hub::new(RealtimeConfig::default());
    let body = json_body(0);
    let stored: Vec<String> = (0..STORED).map(|i| format!("stored-{i:06}")).collect();

    group.bench_function("plain", |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            let key = &stored[i % STORED];
            orders::create_order_without_engine(key, black_box(&body), clock(), |event| {
                hub.publish_event(event);
            })
        });
    });
    group.bench_function("first", |b| {
        b.iter_custom(|iters| first_requests(iters, &orders_route(&hub), &body));
    });

    let route = orders_route(&hub);
    for key in &stored {
        let first = block_on(route.handle(request(key, &body)));
        assert_eq!(first.status(), StatusCode::CREATED);
    }
    group.bench_function("replay", |b| {
        b.iter_custom(|iters| replays(iters, &route, &stored, &body));
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = engine, fingerprint, store, orders
}
criterion_main!(benches);
