//! The `Store` contract, method by method, against a real PostgreSQL server.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cnerium_core::{
    ClaimOutcome, CompleteError, Fence, Payload, Record, RecordState, Store, Timestamp,
};
use cnerium_store_postgres::{ConnectError, PostgresOptions, PostgresStore};
use common::{LEASE, RETENTION, T0, TestSchema, claim, completion, event, fingerprint, key};

async fn claimed(store: &PostgresStore, request: cnerium_core::ClaimRequest) -> (Fence, bool) {
    match store.claim(request).await.unwrap() {
        ClaimOutcome::Claimed { fence, takeover } => (fence, takeover),
        ClaimOutcome::Existing(record) => panic!("expected a granted claim, found {record:?}"),
    }
}

async fn existing(store: &PostgresStore, request: cnerium_core::ClaimRequest) -> Record {
    match store.claim(request).await.unwrap() {
        ClaimOutcome::Existing(record) => record,
        other => panic!("expected the existing record, got {other:?}"),
    }
}

#[tokio::test]
async fn claim_of_a_new_key_writes_an_in_progress_record() {
    let schema = TestSchema::new("claim_new").await;
    let store = schema.connect().await;
    let k = key("k1");
    let request = claim(&k, fingerprint(1), T0);

    let (fence, takeover) = claimed(&store, request.clone()).await;

    assert!(!takeover);
    assert_eq!(
        store.lookup(&k, T0).await.unwrap(),
        Some(request.in_progress_record(fence))
    );
    schema.drop().await;
}

#[tokio::test]
async fn claim_of_a_live_record_returns_it_and_changes_nothing() {
    let schema = TestSchema::new("claim_existing").await;
    let store = schema.connect().await;
    let k = key("k1");
    let first = claim(&k, fingerprint(1), T0);
    let (fence, _) = claimed(&store, first.clone()).await;

    let later = T0.saturating_add(Duration::from_secs(1));
    let record = existing(&store, claim(&k, fingerprint(2), later)).await;

    assert_eq!(record, first.in_progress_record(fence));
    assert_eq!(store.lookup(&k, later).await.unwrap(), Some(record.clone()));

    store
        .complete(&k, fence, completion(later, vec![]))
        .await
        .unwrap();
    let long_after_lease = later.saturating_add(LEASE * 10);
    let completed = existing(&store, claim(&k, fingerprint(1), long_after_lease)).await;
    assert!(matches!(completed.state, RecordState::Completed { fence: f, .. } if f == fence));
    schema.drop().await;
}

#[tokio::test]
async fn a_claim_that_finds_a_live_record_writes_nothing() {
    let schema = TestSchema::new("claim_read_only").await;
    let store = schema.connect().await;
    let k = key("k1");
    let (fence, _) = claimed(&store, claim(&k, fingerprint(1), T0)).await;
    store
        .complete(&k, fence, completion(T0, vec![]))
        .await
        .unwrap();
    let (client, connection) = tokio_postgres::connect(&common::url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let versions = format!(
        "SELECT r.xmin::text || '/' || r.xmax::text, s.last_value
        FROM \"{0}\".cnerium_records r, \"{0}\".cnerium_fences s",
        schema.name
    );
    let before = client.query_one(&versions, &[]).await.unwrap();

    for _ in 0..3 {
        existing(&store, claim(&k, fingerprint(1), T0)).await;
        existing(&store, claim(&k, fingerprint(2), T0)).await;
    }

    let after = client.query_one(&versions, &[]).await.unwrap();
    let row_version = |row: &tokio_postgres::Row| (row.get::<_, String>(0), row.get::<_, i64>(1));
    assert_eq!(
        row_version(&after),
        row_version(&before),
        "a replay locked or rewrote the row, or drew a fence"
    );
    schema.drop().await;
}

#[tokio::test]
async fn claim_after_the_lease_is_a_takeover_with_a_greater_fence() {
    let schema = TestSchema::new("claim_takeover").await;
    let store = schema.connect().await;
    let k = key("k1");
    let (old, _) = claimed(&store, claim(&k, fingerprint(1), T0)).await;

    let just_before = T0.saturating_add(LEASE - Duration::from_millis(1));
    existing(&store, claim(&k, fingerprint(1), just_before)).await;

    let at_lease_end = T0.saturating_add(LEASE);
    let retry = claim(&k, fingerprint(1), at_lease_end);
    let (new, takeover) = claimed(&store, retry.clone()).await;

    assert!(takeover);
    assert!(new > old);
    assert_eq!(
        store.lookup(&k, at_lease_end).await.unwrap(),
        Some(retry.in_progress_record(new))
    );
    schema.drop().await;
}

#[tokio::test]
async fn claim_after_expiry_starts_afresh_without_takeover() {
    let schema = TestSchema::new("claim_expired").await;
    let store = schema.connect().await;
    let k = key("k1");
    let (first, _) = claimed(&store, claim(&k, fingerprint(1), T0)).await;
    store
        .complete(&k, first, completion(T0, vec![event("a.b", None, 1)]))
        .await
        .unwrap();

    let expired = T0.saturating_add(RETENTION);
    assert_eq!(store.lookup(&k, expired).await.unwrap(), None);
    let request = claim(&k, fingerprint(2), expired);
    let (second, takeover) = claimed(&store, request.clone()).await;

    assert!(!takeover, "an expired record is gone, not taken over");
    assert!(second > first);
    assert_eq!(
        store.lookup(&k, expired).await.unwrap(),
        Some(request.in_progress_record(second))
    );
    assert!(
        store.pending_events(10).await.unwrap().is_empty(),
        "the replaced completion's events must not stay pending"
    );
    schema.drop().await;
}

/// Claims `k` from 32 tasks released at once and returns the one granted fence, after
/// checking that every other claim saw the winner's record.
async fn race(store: &Arc<PostgresStore>, k: &cnerium_core::RecordKey, now: Timestamp) -> Fence {
    let start = Arc::new(tokio::sync::Barrier::new(32));
    let tasks: Vec<_> = (0..32u8)
        .map(|i| {
            let store = Arc::clone(store);
            let start = Arc::clone(&start);
            let request = claim(k, fingerprint(i), now);
            tokio::spawn(async move {
                start.wait().await;
                store.claim(request).await.unwrap()
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }

    let winners: Vec<Fence> = outcomes
        .iter()
        .filter_map(|o| match o {
            ClaimOutcome::Claimed { fence, .. } => Some(*fence),
            ClaimOutcome::Existing(_) => None,
        })
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    for outcome in &outcomes {
        if let ClaimOutcome::Existing(record) = outcome {
            assert_eq!(record.fence(), winners[0]);
            assert!(
                !record.is_claimable(now),
                "a claimable record was returned: {record:?}"
            );
        }
    }
    winners[0]
}

/// A store whose pooled connections are all open, so that concurrent claims meet in the
/// database rather than queueing for connections.
async fn warm_store(schema: &TestSchema) -> Arc<PostgresStore> {
    let store = Arc::new(schema.connect().await);
    let warm: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.lookup(&key("warm"), T0).await.unwrap() })
        })
        .collect();
    for task in warm {
        task.await.unwrap();
    }
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_32_concurrent_claims_exactly_one_is_granted() {
    let schema = TestSchema::new("claim_race").await;
    let store = warm_store(&schema).await;

    for round in 0..5 {
        race(&store, &key(&format!("contended-{round}")), T0).await;
    }
    schema.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_32_concurrent_takeovers_exactly_one_is_granted() {
    let schema = TestSchema::new("takeover_race").await;
    let store = warm_store(&schema).await;
    let k = key("contended");
    let mut now = T0;
    let mut fence = race(&store, &k, now).await;

    for _ in 0..3 {
        now = now.saturating_add(LEASE);
        let next = race(&store, &k, now).await;
        assert!(next > fence);
        fence = next;
    }
    now = now.saturating_add(RETENTION);
    assert!(race(&store, &k, now).await > fence);
    schema.drop().await;
}

#[tokio::test]
async fn fences_grow_across_takeover_release_purge_and_reconnect() {
    let schema = TestSchema::new("fences_grow").await;
    let store = schema.connect().await;
    let k = key("k1");
    let mut now = T0;
    let mut fences = Vec::new();

    let (f, _) = claimed(&store, claim(&k, fingerprint(1), now)).await;
    fences.push(f);
    now = now.saturating_add(LEASE);
    let (f, takeover) = claimed(&store, claim(&k, fingerprint(1), now)).await;
    assert!(takeover);
    fences.push(f);
    store.release(&k, f).await.unwrap();
    let (f, takeover) = claimed(&store, claim(&k, fingerprint(1), now)).await;
    assert!(!takeover);
    fences.push(f);
    now = now.saturating_add(RETENTION);
    assert_eq!(store.purge_expired(now).await.unwrap(), 1);
    let (f, _) = claimed(&store, claim(&k, fingerprint(1), now)).await;
    fences.push(f);
    drop(store);
    let store = schema.connect().await;
    now = now.saturating_add(RETENTION);
    let (f, _) = claimed(&store, claim(&k, fingerprint(1), now)).await;
    fences.push(f);

    assert!(fences.windows(2).all(|w| w[0] < w[1]), "{fences:?}");
    schema.drop().await;
}

#[tokio::test]
async fn completion_is_stored_byte_for_byte() {
    let schema = TestSchema::new("complete").await;
    let store = schema.connect().await;
    let k = key("k1");
    let request = claim(&k, fingerprint(7), T0);
    let (fence, _) = claimed(&store, request.clone()).await;
    let done = T0.saturating_add(Duration::from_millis(250));
    let events = vec![
        event("order.created", None, 1),
        event("order.paid", Some("shop:1"), 2),
    ];
    let completion = completion(done, events.clone());

    store.complete(&k, fence, completion.clone()).await.unwrap();

    let expected = Record {
        fingerprint: fingerprint(7),
        state: RecordState::Completed {
            fence,
            response: completion.response,
            events,
            events_published: false,
            completed_at: done,
        },
        created_at: T0,
        expires_at: completion.expires_at,
    };
    assert_eq!(
        store.lookup(&k, done).await.unwrap(),
        Some(expected.clone())
    );
    assert_eq!(
        existing(&store, claim(&k, fingerprint(7), done)).await,
        expected
    );
    schema.drop().await;
}

#[tokio::test]
async fn event_payloads_keep_their_values_and_digits() {
    let schema = TestSchema::new("payload_text").await;
    let store = schema.connect().await;
    let k = key("k1");
    let (fence, _) = claimed(&store, claim(&k, fingerprint(1), T0)).await;
    let text = r#"{"amount":1.50,"exp":1e2,"big":123456789012345678901234567890,"s":"\u00e9"}"#;
    let mut event = event("order.created", None, 1);
    event.payload = Payload::from_json(text).unwrap();

    store
        .complete(&k, fence, completion(T0, vec![event.clone()]))
        .await
        .unwrap();

    let pending = store.pending_events(1).await.unwrap();
    assert_eq!(pending[0].events, [event.clone()]);
    assert_eq!(
        pending[0].events[0].payload.as_json(),
        r#"{"amount":1.50,"big":123456789012345678901234567890,"exp":1e+2,"s":"é"}"#,
        "kept as a tree: keys sorted, escapes decoded, every number's digits"
    );
    schema.drop().await;
}

#[tokio::test]
async fn completion_under_a_stale_fence_is_fenced_and_stores_nothing() {
    let schema = TestSchema::new("complete_fenced").await;
    let store = schema.connect().await;
    let k = key("k1");
    let (old, _) = claimed(&store, claim(&k, fingerprint(1), T0)).await;
    let later = T0.saturating_add(LEASE);
    let retry = claim(&k, fingerprint(1), later);
    let (new, _) = claimed(&store, retry.clone()).await;

    let result = store
        .complete(&k, old, completion(later, vec![event("a.b", None, 1)]))
        .await;

    assert!(matches!(result, Err(CompleteError::Fenced)), "{result:?}");
    assert_eq!(
        store.lookup(&k, later).await.unwrap(),
        Some(retry.in_progress_record(new))
    );
    assert!(store.pending_events(10).await.unwrap().is_empty());

    store
        .complete(&k, new, completion(later, vec![]))
        .await
        .unwrap();
    let again = store.complete(&k, new, completion(later, vec![])).await;
    assert!(
        matches!(again, Err(CompleteError::Fenced)),
        "a completed record cannot be completed again"
    );
    let absent = store
        .complete(&key("never-claimed"), new, completion(later, vec![]))
        .await;
    assert!(matches!(absent, Err(CompleteError::Fenced)));
    schema.drop().await;
}

#[tokio::test]
async fn release_removes_the_claim_only_under_its_fence() {
    let schema = TestSchema::new("release").await;
    let store = schema.connect().await;
    let k = key("k1");
    let (fence, _) = claimed(&store, claim(&k, fingerprint(1), T0)).await;

    store.release(&k, Fence(fence.0 + 1)).await.unwrap();
    assert!(store.lookup(&k, T0).await.unwrap().is_some(), "wrong fence");
    store.release(&k, fence).await.unwrap();
    assert_eq!(store.lookup(&k, T0).await.unwrap(), None);
    store.release(&k, fence).await.unwrap();

    let (again, takeover) = claimed(&store, claim(&k, fingerprint(2), T0)).await;
    assert!(!takeover && again > fence);
    store
        .complete(&k, again, completion(T0, vec![]))
        .await
        .unwrap();
    store.release(&k, again).await.unwrap();
    assert!(
        matches!(
            store.lookup(&k, T0).await.unwrap().map(|r| r.state),
            Some(RecordState::Completed { .. })
        ),
        "a completed record is not released"
    );
    schema.drop().await;
}

#[tokio::test]
async fn pending_events_lists_unpublished_completions_oldest_first() {
    let schema = TestSchema::new("pending").await;
    let store = schema.connect().await;
    let mut fences = Vec::new();
    // Completed out of claim order, so completion time and fence order differ; "z" and
    // "b" complete at the same time and sort by fence, not by name.
    for (name, completed_at_offset, with_events) in [
        ("z", 10, true),
        ("a", 30, true),
        ("b", 10, true),
        ("c", 20, false),
        ("d", 20, true),
    ] {
        let k = key(name);
        let (fence, _) = claimed(&store, claim(&k, fingerprint(1), T0)).await;
        let at = T0.saturating_add(Duration::from_millis(completed_at_offset));
        let events = if with_events {
            vec![event("a.b", None, 1), event("a.c", Some("r"), 2)]
        } else {
            vec![]
        };
        store
            .complete(&k, fence, completion(at, events))
            .await
            .unwrap();
        fences.push((k, fence));
    }
    // An in-progress claim has no events to publish yet.
    claimed(&store, claim(&key("e"), fingerprint(1), T0)).await;

    let pending = store.pending_events(10).await.unwrap();
    let names: Vec<&str> = pending.iter().map(|p| p.key.key().as_str()).collect();
    assert_eq!(names, ["z", "b", "d", "a"]);
    assert_eq!(pending[1].fence, fences[2].1);
    assert_eq!(
        pending[1].events,
        vec![event("a.b", None, 1), event("a.c", Some("r"), 2)]
    );
    assert_eq!(store.pending_events(2).await.unwrap().len(), 2);

    let (b, b_fence) = &fences[2];
    store
        .mark_published(b, Fence(b_fence.0 + 100))
        .await
        .unwrap();
    assert_eq!(
        store.pending_events(10).await.unwrap().len(),
        4,
        "wrong fence"
    );
    store.mark_published(b, *b_fence).await.unwrap();
    let names: Vec<String> = store
        .pending_events(10)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key.key().as_str().to_owned())
        .collect();
    assert_eq!(names, ["z", "d", "a"]);
    assert!(matches!(
        store.lookup(b, T0).await.unwrap().map(|r| r.state),
        Some(RecordState::Completed {
            events_published: true,
            ..
        })
    ));
    schema.drop().await;
}

#[tokio::test]
async fn purge_removes_expired_records_in_batches_and_keeps_live_ones() {
    let schema = TestSchema::new("purge").await;
    let store = PostgresStore::connect(&common::url(), schema.options().purge_batch_size(2))
        .await
        .unwrap();
    for i in 0..5 {
        let k = key(&format!("old{i}"));
        let (fence, _) = claimed(&store, claim(&k, fingerprint(1), T0)).await;
        if i % 2 == 0 {
            store
                .complete(&k, fence, completion(T0, vec![]))
                .await
                .unwrap();
        }
    }
    let later = T0.saturating_add(Duration::from_secs(3600));
    claimed(&store, claim(&key("young"), fingerprint(1), later)).await;

    let expiry = T0.saturating_add(RETENTION);
    assert_eq!(store.purge_expired(expiry).await.unwrap(), 5);
    assert_eq!(store.purge_expired(expiry).await.unwrap(), 0);
    assert!(store.lookup(&key("young"), expiry).await.unwrap().is_some());
    assert_eq!(
        store.lookup(&key("old0"), T0).await.unwrap(),
        None,
        "gone for good"
    );
    schema.drop().await;
}

#[tokio::test]
async fn lookup_hides_expired_records_and_changes_nothing() {
    let schema = TestSchema::new("lookup").await;
    let store = schema.connect().await;
    let k = key("k1");
    let request = claim(&k, fingerprint(1), T0);
    let (fence, _) = claimed(&store, request.clone()).await;
    let expiry = request.expires_at;

    let before = Timestamp::from_millis(expiry.as_millis() - 1);
    assert_eq!(
        store.lookup(&k, before).await.unwrap(),
        Some(request.in_progress_record(fence))
    );
    assert_eq!(store.lookup(&k, expiry).await.unwrap(), None);
    assert_eq!(store.lookup(&key("other"), T0).await.unwrap(), None);
    assert!(
        store.lookup(&k, T0).await.unwrap().is_some(),
        "lookup removed the record"
    );
    schema.drop().await;
}

#[tokio::test]
async fn records_survive_a_new_store_instance() {
    let schema = TestSchema::new("reconnect").await;
    let k = key("k1");
    let first = schema.connect().await;
    let (fence, _) = claimed(&first, claim(&k, fingerprint(3), T0)).await;
    first
        .complete(&k, fence, completion(T0, vec![event("a.b", None, 1)]))
        .await
        .unwrap();
    let before = first.lookup(&k, T0).await.unwrap();
    drop(first);

    let second = schema.connect().await;

    assert!(before.is_some());
    assert_eq!(second.lookup(&k, T0).await.unwrap(), before);
    assert_eq!(second.pending_events(10).await.unwrap().len(), 1);
    schema.drop().await;
}

#[tokio::test]
async fn scopes_and_schemas_keep_records_apart() {
    let schema = TestSchema::new("scopes").await;
    let other_schema = TestSchema::new("scopes_other").await;
    let store = schema.connect().await;
    let other = other_schema.connect().await;
    let shared = cnerium_core::IdempotencyKey::new("same").unwrap();
    let tenant_a =
        cnerium_core::RecordKey::new(cnerium_core::Scope::with_caller("op", "a"), shared.clone());
    let tenant_b =
        cnerium_core::RecordKey::new(cnerium_core::Scope::with_caller("op", "b"), shared);

    claimed(&store, claim(&tenant_a, fingerprint(1), T0)).await;
    claimed(&store, claim(&tenant_b, fingerprint(2), T0)).await;
    claimed(&other, claim(&tenant_a, fingerprint(3), T0)).await;

    assert_eq!(
        store
            .lookup(&tenant_a, T0)
            .await
            .unwrap()
            .unwrap()
            .fingerprint,
        fingerprint(1)
    );
    assert_eq!(
        other
            .lookup(&tenant_a, T0)
            .await
            .unwrap()
            .unwrap()
            .fingerprint,
        fingerprint(3)
    );
    schema.drop().await;
    other_schema.drop().await;
}

#[tokio::test]
async fn readable_columns_name_operation_caller_and_key() {
    let schema = TestSchema::new("columns").await;
    let store = schema.connect().await;
    claimed(&store, claim(&key("order-9"), fingerprint(1), T0)).await;

    let (client, connection) = tokio_postgres::connect(&common::url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one(
            &format!(
                "SELECT operation, caller, idempotency_key FROM \"{}\".cnerium_records",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap();
    let columns: (String, Option<String>, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        columns,
        (
            "orders.create".into(),
            Some("tenant-1".into()),
            "order-9".into()
        )
    );
    schema.drop().await;
}

#[tokio::test]
async fn connect_refuses_tables_of_a_newer_schema_version() {
    let schema = TestSchema::new("newer_version").await;
    drop(schema.connect().await);
    schema
        .execute(&format!(
            "INSERT INTO \"{}\".cnerium_schema_version (version) VALUES (99)",
            schema.name
        ))
        .await;

    let result = PostgresStore::connect(&common::url(), schema.options()).await;

    assert!(
        matches!(
            result,
            Err(ConnectError::UnsupportedSchemaVersion { found: 99, .. })
        ),
        "{result:?}"
    );
    schema.drop().await;
}

#[tokio::test]
async fn tables_of_schema_version_1_gain_the_event_history_at_connect() {
    let schema = TestSchema::new("upgrade_from_1").await;
    let store = schema.connect().await;
    let k = key("k1");
    let (fence, _) = claimed(&store, claim(&k, fingerprint(1), T0)).await;
    store
        .complete(&k, fence, completion(T0, vec![event("a.b", None, 1)]))
        .await
        .unwrap();
    drop(store);
    // What a store of the first version left behind.
    schema
        .execute(&format!(
            "DROP INDEX \"{0}\".cnerium_records_history;
            DELETE FROM \"{0}\".cnerium_schema_version WHERE version > 1",
            schema.name
        ))
        .await;

    let store = schema.connect().await;

    let history = store.events_since(T0, 10).await.unwrap();
    assert_eq!(history, [event("a.b", None, 1)]);
    let (client, connection) = tokio_postgres::connect(&common::url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let indexes: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND indexname = $2",
            &[&schema.name, &"cnerium_records_history"],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(indexes, 1, "the history index was not created");
    schema.drop().await;
}

#[tokio::test]
async fn concurrent_connects_migrate_once() {
    let schema = TestSchema::new("concurrent_connect").await;
    let connects: Vec<_> = (0..4)
        .map(|_| {
            let options = schema.options();
            tokio::spawn(async move { PostgresStore::connect(&common::url(), options).await })
        })
        .collect();
    for connect in connects {
        connect
            .await
            .unwrap()
            .expect("every concurrent connect succeeds");
    }
    schema.drop().await;
}

#[tokio::test]
async fn connect_reports_bad_urls_and_unreachable_servers() {
    let bad = PostgresStore::connect("postgres://host:notaport/db", PostgresOptions::new()).await;
    assert!(matches!(bad, Err(ConnectError::InvalidUrl(_))), "{bad:?}");

    let options = PostgresOptions::new().connect_timeout(Duration::from_secs(2));
    let closed = PostgresStore::connect("postgres://postgres@127.0.0.1:1/test", options).await;
    assert!(
        matches!(closed, Err(ConnectError::Unreachable(_))),
        "{closed:?}"
    );

    let invalid = PostgresStore::connect(&common::url(), PostgresOptions::new().schema("A")).await;
    assert!(matches!(
        invalid,
        Err(ConnectError::InvalidOption {
            option: "schema",
            ..
        })
    ));
}
