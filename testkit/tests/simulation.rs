//! The simulator drives the real engine through the situations of the behaviour contract.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cnerium_core::{DurableRequest, DurableResponse, RecordState, Store};
use cnerium_store_memory::MemoryStore;
use cnerium_testkit::{SimRequest, Simulation, StoreMethod, block_on};
use http::StatusCode;

const LEASE: Duration = Duration::from_secs(30);
const IN_PROGRESS: &str = "urn:cnerium:problem:request-in-progress";
const KEY_REUSED: &str = "urn:cnerium:problem:idempotency-key-reused";

fn order(key: &str) -> SimRequest {
    SimRequest::new(key, r#"{"item":"apple"}"#)
}

#[test]
fn a_retry_while_the_first_request_runs_is_told_to_wait() {
    let mut sim = Simulation::new(MemoryStore::new());
    block_on(async {
        let first = sim.send(order("k").hold()).await.id();
        assert_eq!(sim.in_flight(), vec![first]);

        let retry = sim.send(order("k")).await.answered();
        assert_eq!(retry.status, StatusCode::CONFLICT);
        assert_eq!(retry.problem_type().as_deref(), Some(IN_PROGRESS));
        assert!(retry.headers.contains_key("retry-after"));

        let answer = sim.release(first).await.expect("released request answers");
        assert_eq!(answer.status, StatusCode::CREATED);
        let replay = sim.send(order("k")).await.answered();
        assert!(replay.is_replay());
        assert_eq!(replay.body, answer.body);
    });
    assert_eq!(sim.handler_runs().len(), 1);
}

#[test]
fn concurrent_first_requests_run_the_handler_once() {
    let mut sim = Simulation::new(MemoryStore::new());
    let sent = block_on(sim.send_concurrently(vec![order("k"), order("k"), order("k")]));
    let statuses: Vec<u16> = sent
        .iter()
        .map(|s| s.response().expect("answered").status.as_u16())
        .collect();
    assert_eq!(statuses, [201, 409, 409]);
    assert_eq!(sim.handler_runs().len(), 1);
    assert_eq!(sim.events().len(), 2);
}

#[test]
fn a_handler_hanging_past_its_lease_loses_to_the_retry() {
    let mut sim = Simulation::new(MemoryStore::new());
    block_on(async {
        let slow = sim.send(order("k").hold()).await.id();
        sim.advance(LEASE + Duration::from_secs(1));
        let retry = sim.send(order("k")).await.answered();
        assert_eq!(retry.status, StatusCode::CREATED);
        assert_eq!(retry.run(), Some(2));

        let late = sim.release(slow).await.expect("released request answers");
        assert_eq!(late.status, StatusCode::CONFLICT);
        assert_eq!(
            late.problem_type().as_deref(),
            Some("urn:cnerium:problem:lease-expired")
        );
        let replay = sim.send(order("k")).await.answered();
        assert_eq!(replay.run(), Some(2), "the fenced run's result was stored");
    });
    let runs: Vec<u64> = sim
        .events()
        .iter()
        .map(|e| e.payload.to_value()["run"].as_u64().unwrap())
        .collect();
    assert_eq!(
        runs,
        [2, 2],
        "only the committed run publishes its two events"
    );
}

#[test]
fn a_panicking_handler_frees_the_key_and_publishes_nothing() {
    let mut sim = Simulation::new(MemoryStore::new());
    block_on(async {
        let crash = sim.send(order("k").panics()).await.answered();
        assert_eq!(crash.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(sim.events().is_empty());
        let retry = sim.send(order("k")).await.answered();
        assert_eq!((retry.status, retry.run()), (StatusCode::CREATED, Some(2)));
    });
}

#[test]
fn a_failed_commit_frees_the_key_and_publishes_nothing() {
    let mut sim = Simulation::new(MemoryStore::new());
    sim.faults().fail_next(StoreMethod::Complete);
    block_on(async {
        let failed = sim.send(order("k")).await.answered();
        assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            failed.problem_type().as_deref(),
            Some("urn:cnerium:problem:store-unavailable")
        );
        assert!(sim.events().is_empty());
        assert_eq!(sim.send(order("k")).await.answered().run(), Some(2));
    });
}

#[test]
fn a_store_call_held_at_its_nth_call_holds_only_that_request() {
    let mut sim = Simulation::new(MemoryStore::new());
    block_on(async {
        sim.send(order("a")).await.answered();
        let gate = sim.hold_store(StoreMethod::Claim, 1);
        let held = sim.send(order("a")).await.id();
        assert_eq!(sim.in_flight(), vec![held]);
        assert_eq!(gate.waiting(), 1);

        // Other requests go on while the held claim waits.
        let other = sim.send(order("b")).await.answered();
        assert_eq!(other.status, StatusCode::CREATED);

        sim.open(&gate).await;
        let replay = sim.response(held).expect("answered once the gate opened");
        assert!(replay.is_replay());
    });
    assert!(sim.in_flight().is_empty());
}

#[test]
fn a_key_reused_with_another_body_conflicts_without_running_the_handler() {
    let mut sim = Simulation::new(MemoryStore::new());
    block_on(async {
        sim.send(order("k")).await.answered();
        let reused = sim
            .send(SimRequest::new("k", r#"{"item":"pear"}"#))
            .await
            .answered();
        assert_eq!(reused.status, StatusCode::CONFLICT);
        assert_eq!(reused.problem_type().as_deref(), Some(KEY_REUSED));
    });
    assert_eq!(sim.handler_runs().len(), 1);
}

#[test]
fn a_json_body_re_serialized_still_replays_but_raw_bytes_must_match() {
    let mut sim = Simulation::new(MemoryStore::new());
    block_on(async {
        sim.send(SimRequest::new("j", r#"{"a":1,"b":2}"#))
            .await
            .answered();
        let respaced = sim
            .send(SimRequest::new("j", r#"{ "b": 2, "a": 1 }"#))
            .await
            .answered();
        assert!(respaced.is_replay());

        sim.send(SimRequest::new("r", r#"{"a":1}"#).raw())
            .await
            .answered();
        let respaced = sim
            .send(SimRequest::new("r", r#"{ "a": 1 }"#).raw())
            .await
            .answered();
        assert_eq!(respaced.problem_type().as_deref(), Some(KEY_REUSED));
    });
}

#[test]
fn two_callers_with_one_key_get_two_records() {
    let mut sim = Simulation::new(MemoryStore::new());
    block_on(async {
        let alice = sim.send(order("k").caller("alice")).await.answered();
        let bob = sim.send(order("k").caller("bob")).await.answered();
        assert_eq!((alice.run(), bob.run()), (Some(1), Some(2)));
        assert!(sim.lookup("k", Some("alice")).await.unwrap().is_some());
        assert!(sim.lookup("k", None).await.unwrap().is_none());
    });
}

#[test]
fn a_request_without_a_key_never_reaches_the_handler() {
    let mut sim = Simulation::new(MemoryStore::new());
    let answer = block_on(sim.send(SimRequest::without_key("{}"))).answered();
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(sim.handler_runs().is_empty());
}

#[test]
fn a_record_expires_after_its_retention() {
    let mut sim = Simulation::new(MemoryStore::new());
    block_on(async {
        sim.send(order("k")).await.answered();
        sim.advance(Duration::from_secs(24 * 60 * 60) - Duration::from_millis(1));
        assert!(sim.send(order("k")).await.answered().is_replay());
        sim.advance(Duration::from_millis(1));
        assert_eq!(sim.purge().await.unwrap(), 1);
        assert_eq!(sim.send(order("k")).await.answered().run(), Some(2));
    });
}

#[test]
fn a_restart_republishes_the_events_the_sink_refused() {
    let mut sim = Simulation::new(MemoryStore::new());
    sim.sink().refuse_next(1);
    block_on(async {
        sim.send(order("k")).await.answered();
        assert!(sim.events().is_empty());
        assert_eq!(sim.sink().refused().len(), 1);

        assert_eq!(sim.restart().await.unwrap(), 2);
        let refused_ids: Vec<String> = sim.sink().refused()[0]
            .iter()
            .map(|e| e.id.clone())
            .collect();
        let published_ids: Vec<String> = sim.events().iter().map(|e| e.id.clone()).collect();
        assert_eq!(
            published_ids, refused_ids,
            "a republished event keeps its id"
        );

        assert_eq!(
            sim.restart().await.unwrap(),
            0,
            "published events are not repeated"
        );
    });
}

#[test]
fn a_restart_abandons_running_requests_whose_claims_then_time_out() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let reopened = Arc::new(AtomicUsize::new(0));
    let count = reopened.clone();
    let mut sim = Simulation::builder_shared(store)
        .reopen(move |old| {
            count.fetch_add(1, Ordering::SeqCst);
            old
        })
        .build();
    block_on(async {
        let crashed = sim.send(order("k").hold()).await.id();
        sim.restart().await.unwrap();
        assert_eq!(sim.abandoned(), [crashed]);
        assert!(sim.in_flight().is_empty());

        let record = sim
            .lookup("k", None)
            .await
            .unwrap()
            .expect("the claim survived");
        assert!(matches!(record.state, RecordState::InProgress { .. }));
        assert_eq!(
            sim.send(order("k")).await.answered().status,
            StatusCode::CONFLICT
        );

        sim.advance(LEASE);
        let takeover = sim.send(order("k")).await.answered();
        assert_eq!(
            (takeover.status, takeover.run()),
            (StatusCode::CREATED, Some(2))
        );
    });
    assert_eq!(reopened.load(Ordering::SeqCst), 1);
}

#[test]
fn a_custom_handler_runs_once_per_key_under_the_simulation() {
    let handler = |request: DurableRequest| async move {
        request.emit("custom.done", serde_json::json!({}))?;
        Ok::<_, cnerium_core::BoxError>(DurableResponse::text(StatusCode::ACCEPTED, "queued"))
    };
    let mut sim = Simulation::builder(MemoryStore::new())
        .handler(handler)
        .build();
    block_on(async {
        let first = sim.send(order("k")).await.answered();
        assert_eq!(
            (first.status, &first.body[..]),
            (StatusCode::ACCEPTED, &b"queued"[..])
        );
        assert!(sim.send(order("k")).await.answered().is_replay());
        let failed = sim.send(order("other").fails()).await.answered();
        assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    });
    assert_eq!(sim.handler_runs().len(), 2);
    let kinds: Vec<String> = sim.events().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["custom.done"]);
}

#[test]
fn a_server_error_is_retried_when_the_engine_does_not_store_it() {
    let config = cnerium_core::EngineConfig {
        store_server_errors: false,
        ..Default::default()
    };
    let mut sim = Simulation::builder(MemoryStore::new())
        .config(config)
        .build();
    let broken = || order("k").status(StatusCode::BAD_GATEWAY);
    block_on(async {
        assert_eq!(
            sim.send(broken()).await.answered().status,
            StatusCode::BAD_GATEWAY
        );
        let retry = sim.send(broken()).await.answered();
        assert!(!retry.is_replay());
        assert_eq!(retry.run(), Some(2));
    });
    assert!(
        sim.events().is_empty(),
        "an unstored answer publishes nothing"
    );
}

#[test]
fn a_quoted_key_and_a_bare_key_name_one_record() {
    let mut sim = Simulation::new(MemoryStore::new());
    block_on(async {
        sim.send(order("\"k-1\"")).await.answered();
        assert!(sim.send(order("k-1")).await.answered().is_replay());
    });
    assert_eq!(sim.handler_runs().len(), 1);
}

#[test]
fn a_commit_that_landed_but_reported_failure_counts_as_committed() {
    let mut sim = Simulation::new(MemoryStore::new());
    sim.faults().inject(
        StoreMethod::Complete,
        cnerium_testkit::Trigger::Nth(1),
        cnerium_testkit::Fault::FailAfter,
    );
    block_on(async {
        // The engine looks the record up: the write landed, so the caller gets its result
        // and the events go out now rather than after the next restart.
        let first = sim.send(order("k")).await.answered();
        assert_eq!(first.status, StatusCode::CREATED);
        assert!(!first.is_replay());
        assert_eq!(
            sim.events().len(),
            2,
            "the committed run's events are published"
        );

        let retry = sim.send(order("k")).await.answered();
        assert!(retry.is_replay());
        assert_eq!(retry.body, first.body);
        assert_eq!(retry.run(), Some(1));

        assert_eq!(sim.restart().await.unwrap(), 0, "nothing was left pending");
    });
    assert_eq!(sim.handler_runs().len(), 1);
}
