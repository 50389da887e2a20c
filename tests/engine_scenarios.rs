//! One scenario per test: the engine over the in-memory store, driven by hand with a
//! manual clock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cnerium::async_trait;
use cnerium::stores::MemoryStore;
use cnerium::{
    BoxError, DurableRequest, DurableResponse, Engine, EngineConfig, Event, EventSink, ManualClock,
    PublishError, Timestamp,
};
use futures_executor::block_on;
use http::{Request, Response, StatusCode};

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
}

#[async_trait]
impl EventSink for Recorder {
    async fn publish(&self, events: &[Event]) -> Result<(), PublishError> {
        self.events.lock().unwrap().extend_from_slice(events);
        Ok(())
    }
}

impl Recorder {
    fn kinds(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.kind.clone())
            .collect()
    }
}

struct Harness {
    clock: Arc<ManualClock>,
    sink: Arc<Recorder>,
    engine: Engine,
}

fn harness(config: EngineConfig) -> Harness {
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_000_000)));
    let sink = Arc::new(Recorder::default());
    let engine = Engine::with_parts(
        Arc::new(MemoryStore::new()),
        sink.clone(),
        clock.clone(),
        config,
    );
    Harness {
        clock,
        sink,
        engine,
    }
}

fn post(key: &str, body: &'static str) -> Request<Bytes> {
    Request::post("/things")
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(Bytes::from_static(body.as_bytes()))
        .unwrap()
}

fn problem_type(response: &Response<Bytes>) -> String {
    let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    body["type"].as_str().unwrap().to_owned()
}

#[test]
fn handler_error_releases_the_claim_and_publishes_nothing() {
    let h = harness(EngineConfig::default());
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let route = h
        .engine
        .route("things.create", move |request: DurableRequest| {
            let run = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                request.emit("thing.created", 1)?;
                if run == 0 {
                    return Err::<DurableResponse, BoxError>("database down".into());
                }
                Ok(DurableResponse::created(serde_json::json!({"run": run})))
            }
        });

    let failed = block_on(route.handle(post("k", "{}")));
    assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(problem_type(&failed), "urn:cnerium:problem:handler-failed");
    assert!(!String::from_utf8_lossy(failed.body()).contains("database down"));
    assert!(h.sink.kinds().is_empty());

    let retried = block_on(route.handle(post("k", "{}")));
    assert_eq!(retried.status(), StatusCode::CREATED);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(h.sink.kinds(), ["thing.created"]);
}

#[test]
fn handler_panic_releases_the_claim() {
    let h = harness(EngineConfig::default());
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let route = h
        .engine
        .route("things.create", move |_request: DurableRequest| {
            let run = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                assert!(run > 0, "first run panics");
                DurableResponse::created(serde_json::json!({"run": run}))
            }
        });

    let failed = block_on(route.handle(post("k", "{}")));
    assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let retried = block_on(route.handle(post("k", "{}")));
    assert_eq!(retried.status(), StatusCode::CREATED);
}

#[test]
fn handler_panicking_before_it_returns_a_future_releases_the_claim() {
    let h = harness(EngineConfig::default());
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let route = h
        .engine
        .route("things.create", move |request: DurableRequest| {
            let run = counter.fetch_add(1, Ordering::SeqCst);
            // The closure itself panics, outside the future it returns.
            assert!(run > 0, "first call panics");
            request.emit("thing.created", run).unwrap();
            async move { DurableResponse::created(serde_json::json!({"run": run})) }
        });

    let failed = block_on(route.handle(post("k", "{}")));
    assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(problem_type(&failed), "urn:cnerium:problem:handler-failed");
    assert!(h.sink.kinds().is_empty());

    // Released at once: the retry runs instead of waiting out the lease as "in progress".
    let retried = block_on(route.handle(post("k", "{}")));
    assert_eq!(retried.status(), StatusCode::CREATED);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(h.sink.kinds(), ["thing.created"]);
}

#[test]
fn crashed_owner_is_taken_over_after_the_lease_and_its_late_completion_is_refused() {
    let h = harness(EngineConfig::default());
    let gate = Arc::new(Mutex::new(None::<futures_channel::oneshot::Receiver<()>>));
    let runs = Arc::new(AtomicUsize::new(0));
    let (release_first, first_waits) = futures_channel::oneshot::channel::<()>();
    *gate.lock().unwrap() = Some(first_waits);
    let counter = runs.clone();
    let route = h
        .engine
        .route("things.create", move |request: DurableRequest| {
            let run = counter.fetch_add(1, Ordering::SeqCst);
            let wait = gate.lock().unwrap().take();
            async move {
                if let Some(wait) = wait {
                    let _ = wait.await;
                }
                request.emit("thing.created", run)?;
                Ok::<_, BoxError>(DurableResponse::created(serde_json::json!({"run": run})))
            }
        });

    let mut pool = futures_executor::LocalPool::new();
    let first_route = route.clone();
    let first = pool.spawner();
    let first_result = Arc::new(Mutex::new(None));
    let slot = first_result.clone();
    futures_util::task::LocalSpawnExt::spawn_local(&first, async move {
        let response = first_route.handle(post("k", "{}")).await;
        *slot.lock().unwrap() = Some(response);
    })
    .unwrap();
    pool.run_until_stalled();

    let busy = pool.run_until(route.handle(post("k", "{}")));
    assert_eq!(busy.status(), StatusCode::CONFLICT);
    assert_eq!(
        problem_type(&busy),
        "urn:cnerium:problem:request-in-progress"
    );
    assert_eq!(busy.headers()["retry-after"], "1");

    h.clock.advance(Duration::from_secs(31));
    let takeover = pool.run_until(route.handle(post("k", "{}")));
    assert_eq!(takeover.status(), StatusCode::CREATED);
    assert_eq!(takeover.body(), r#"{"run":1}"#);

    release_first.send(()).unwrap();
    pool.run_until_stalled();
    let late = first_result.lock().unwrap().take().unwrap();
    assert_eq!(late.status(), StatusCode::CONFLICT);
    assert_eq!(problem_type(&late), "urn:cnerium:problem:lease-expired");

    let replay = pool.run_until(route.handle(post("k", "{}")));
    assert_eq!(
        replay.body(),
        r#"{"run":1}"#,
        "the newer result stays stored"
    );
    assert_eq!(
        h.sink.events.lock().unwrap().len(),
        1,
        "only the stored run published"
    );
}

#[test]
fn records_expire_after_retention() {
    let h = harness(EngineConfig::default());
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let route = h
        .engine
        .route("things.create", move |_request: DurableRequest| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { DurableResponse::created("done") }
        });
    block_on(route.handle(post("k", "{}")));
    h.clock.advance(Duration::from_secs(24 * 3600 - 1));
    let replay = block_on(route.handle(post("k", "{}")));
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(block_on(h.engine.purge_expired()).unwrap(), 0);

    h.clock.advance(Duration::from_secs(1));
    assert_eq!(block_on(h.engine.purge_expired()).unwrap(), 1);
    let fresh = block_on(route.handle(post("k", "{}")));
    assert!(fresh.headers().get("idempotent-replayed").is_none());
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[test]
fn scopes_keep_callers_apart() {
    let h = harness(EngineConfig::default());
    let route = h
        .engine
        .route("things.create", |request: DurableRequest| async move {
            let user = request.scope().caller().unwrap_or("nobody").to_owned();
            DurableResponse::created(serde_json::json!({"user": user}))
        })
        .scope_by(|parts| {
            parts
                .headers
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        });
    let as_user = |user: &str| {
        let mut request = post("shared-key", "{}");
        request
            .headers_mut()
            .insert("x-user", user.parse().unwrap());
        request
    };
    let alice = block_on(route.handle(as_user("alice")));
    let bob = block_on(route.handle(as_user("bob")));
    assert_eq!(alice.body(), r#"{"user":"alice"}"#);
    assert_eq!(bob.body(), r#"{"user":"bob"}"#);
    assert!(bob.headers().get("idempotent-replayed").is_none());
}

#[test]
fn ietf_preset_answers_422_for_a_reused_key() {
    let h = harness(EngineConfig::ietf());
    let route = h.engine.route("things.create", |_r: DurableRequest| async {
        DurableResponse::created("ok")
    });
    block_on(route.handle(post("k", r#"{"a":1}"#)));
    let reused = block_on(route.handle(post("k", r#"{"a":2}"#)));
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[test]
fn server_errors_can_be_left_unstored() {
    let config = EngineConfig {
        store_server_errors: false,
        ..EngineConfig::default()
    };
    let h = harness(config);
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let route = h.engine.route("things.create", move |_r: DurableRequest| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { DurableResponse::internal_error("upstream timed out") }
    });
    assert_eq!(block_on(route.handle(post("k", "{}"))).status(), 500);
    assert_eq!(block_on(route.handle(post("k", "{}"))).status(), 500);
    assert_eq!(runs.load(Ordering::SeqCst), 2, "an unstored 5xx runs again");
}

#[test]
fn credentials_are_not_replayed_but_location_is() {
    let h = harness(EngineConfig::default());
    let route = h.engine.route("things.create", |_r: DurableRequest| async {
        DurableResponse::created("ok")
            .try_with_header("location", "/things/1")?
            .try_with_header("set-cookie", "session=secret")
    });
    let first = block_on(route.handle(post("k", "{}")));
    assert_eq!(first.headers()["set-cookie"], "session=secret");
    let replay = block_on(route.handle(post("k", "{}")));
    assert_eq!(replay.headers()["location"], "/things/1");
    assert!(replay.headers().get("set-cookie").is_none());
}

#[test]
fn oversized_response_reaches_the_first_caller_only() {
    let config = EngineConfig {
        max_stored_body: 8,
        ..EngineConfig::default()
    };
    let h = harness(config);
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let route = h.engine.route("things.create", move |_r: DurableRequest| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { DurableResponse::created("a body longer than eight bytes") }
    });
    let first = block_on(route.handle(post("k", "{}")));
    assert_eq!(first.status(), 201);
    assert_eq!(first.body(), "\"a body longer than eight bytes\"");
    let retry = block_on(route.handle(post("k", "{}")));
    assert_eq!(retry.status(), 409);
    assert_eq!(
        problem_type(&retry),
        "urn:cnerium:problem:response-not-stored"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[test]
fn status_out_of_range_is_a_500_and_not_stored() {
    let h = harness(EngineConfig::default());
    let route = h.engine.route("things.create", |_r: DurableRequest| async {
        DurableResponse::new(StatusCode::from_u16(799).unwrap())
    });
    let first = block_on(route.handle(post("k", "{}")));
    assert_eq!(first.status(), 500);
    let again = block_on(route.handle(post("k", "{}")));
    assert!(again.headers().get("idempotent-replayed").is_none());
}

#[test]
fn invalid_event_names_are_refused_at_emit() {
    let h = harness(EngineConfig::default());
    let route = h
        .engine
        .route("things.create", |request: DurableRequest| async move {
            let refused = request.emit("", 1).is_err() && request.emit_to("", "a.b", 1).is_err();
            DurableResponse::ok(serde_json::json!({"refused": refused}))
        });
    let response = block_on(route.handle(post("k", "{}")));
    assert_eq!(response.body(), r#"{"refused":true}"#);
    assert!(h.sink.kinds().is_empty());
}
