//! The `Store` contract, method by method, against a real Redis server.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cnerium_core::{
    ClaimOutcome, CompleteError, Fence, Payload, Record, RecordState, Store, Timestamp,
};
use cnerium_store_redis::{ConnectError, RedisOptions, RedisStore};
use common::{LEASE, RETENTION, T0, TestPrefix, claim, completion, event, fingerprint, key};

async fn claimed(store: &RedisStore, request: cnerium_core::ClaimRequest) -> (Fence, bool) {
    match store.claim(request).await.unwrap() {
        ClaimOutcome::Claimed { fence, takeover } => (fence, takeover),
        ClaimOutcome::Existing(record) => panic!("expected a granted claim, found {record:?}"),
    }
}

async fn existing(store: &RedisStore, request: cnerium_core::ClaimRequest) -> Record {
    match store.claim(request).await.unwrap() {
        ClaimOutcome::Existing(record) => record,
        other => panic!("expected the existing record, got {other:?}"),
    }
}

#[tokio::test]
async fn claim_of_a_new_key_writes_an_in_progress_record() {
    let prefix = TestPrefix::new("claim_new").await;
    let store = prefix.connect().await;
    let k = key("k1");
    let request = claim(&k, fingerprint(1), T0);

    let (fence, takeover) = claimed(&store, request.clone()).await;

    assert!(!takeover);
    assert_eq!(
        store.lookup(&k, T0).await.unwrap(),
        Some(request.in_progress_record(fence))
    );
    prefix.clean().await;
}

#[tokio::test]
async fn claim_of_a_live_record_returns_it_and_changes_nothing() {
    let prefix = TestPrefix::new("claim_existing").await;
    let store = prefix.connect().await;
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
    prefix.clean().await;
}

#[tokio::test]
async fn claim_after_the_lease_is_a_takeover_with_a_greater_fence() {
    let prefix = TestPrefix::new("claim_takeover").await;
    let store = prefix.connect().await;
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
    prefix.clean().await;
}

#[tokio::test]
async fn claim_after_expiry_starts_afresh_without_takeover() {
    let prefix = TestPrefix::new("claim_expired").await;
    let store = prefix.connect().await;
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
    prefix.clean().await;
}

/// Claims `k` from 32 tasks released at once and returns the one granted fence, after
/// checking that every other claim saw the winner's record.
async fn race(store: &Arc<RedisStore>, k: &cnerium_core::RecordKey, now: Timestamp) -> Fence {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_32_concurrent_claims_exactly_one_is_granted() {
    let prefix = TestPrefix::new("claim_race").await;
    let store = Arc::new(prefix.connect().await);

    for round in 0..5 {
        race(&store, &key(&format!("contended-{round}")), T0).await;
    }
    prefix.clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_32_concurrent_takeovers_exactly_one_is_granted() {
    let prefix = TestPrefix::new("takeover_race").await;
    let store = Arc::new(prefix.connect().await);
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
    prefix.clean().await;
}

#[tokio::test]
async fn fences_grow_across_takeover_release_purge_and_reconnect() {
    let prefix = TestPrefix::new("fences_grow").await;
    let store = prefix.connect().await;
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
    let store = prefix.connect().await;
    now = now.saturating_add(RETENTION);
    let (f, _) = claimed(&store, claim(&k, fingerprint(1), now)).await;
    fences.push(f);

    assert!(fences.windows(2).all(|w| w[0] < w[1]), "{fences:?}");
    prefix.clean().await;
}

#[tokio::test]
async fn completion_is_stored_byte_for_byte() {
    let prefix = TestPrefix::new("complete").await;
    let store = prefix.connect().await;
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
    prefix.clean().await;
}

#[tokio::test]
async fn event_payloads_keep_their_values_and_digits() {
    let prefix = TestPrefix::new("payload_text").await;
    let store = prefix.connect().await;
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
    prefix.clean().await;
}

#[tokio::test]
async fn completion_under_a_stale_fence_is_fenced_and_stores_nothing() {
    let prefix = TestPrefix::new("complete_fenced").await;
    let store = prefix.connect().await;
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
    prefix.clean().await;
}

#[tokio::test]
async fn release_removes_the_claim_only_under_its_fence() {
    let prefix = TestPrefix::new("release").await;
    let store = prefix.connect().await;
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
    prefix.clean().await;
}

#[tokio::test]
async fn pending_events_lists_unpublished_completions_oldest_first() {
    let prefix = TestPrefix::new("pending").await;
    let store = prefix.connect().await;
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
    prefix.clean().await;
}

#[tokio::test]
async fn purge_removes_expired_records_in_batches_and_keeps_live_ones() {
    let prefix = TestPrefix::new("purge").await;
    let store = RedisStore::connect(&common::url(), prefix.options().purge_batch_size(2))
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
    prefix.clean().await;
}

#[tokio::test]
async fn the_event_history_forgets_records_replaced_by_a_claim_or_purged() {
    let prefix = TestPrefix::new("history").await;
    let store = prefix.connect().await;
    let history_entries = || async {
        let entries: u64 = redis::cmd("ZCARD")
            .arg(format!("{}history", prefix.prefix))
            .query_async(&mut prefix.raw().await)
            .await
            .unwrap();
        entries
    };
    // Two records completed at one time, the later fence first in key order.
    let (b, a) = (key("b"), key("a"));
    let (fence_b, _) = claimed(&store, claim(&b, fingerprint(1), T0)).await;
    let (fence_a, _) = claimed(&store, claim(&a, fingerprint(1), T0)).await;
    store
        .complete(&a, fence_a, completion(T0, vec![event("x.a", None, 1)]))
        .await
        .unwrap();
    store
        .complete(&b, fence_b, completion(T0, vec![event("x.b", None, 2)]))
        .await
        .unwrap();
    store.mark_published(&a, fence_a).await.unwrap();
    let ids = |events: Vec<cnerium_core::Event>| events.into_iter().map(|e| e.id).collect();
    let listed: Vec<String> = ids(store.events_since(T0, 10).await.unwrap());
    assert_eq!(
        listed,
        ["evt_x.b_2", "evt_x.a_1"],
        "by fence within one time"
    );

    // "a" expires and is claimed afresh: its old events leave the history.
    let expired = T0.saturating_add(RETENTION);
    claimed(&store, claim(&a, fingerprint(2), expired)).await;
    let listed: Vec<String> = ids(store.events_since(T0, 10).await.unwrap());
    assert_eq!(listed, ["evt_x.b_2"]);
    assert_eq!(history_entries().await, 1);

    assert_eq!(store.purge_expired(expired).await.unwrap(), 1);
    assert!(store.events_since(T0, 10).await.unwrap().is_empty());
    assert_eq!(history_entries().await, 0);
    prefix.clean().await;
}

#[tokio::test]
async fn lookup_hides_expired_records_and_changes_nothing() {
    let prefix = TestPrefix::new("lookup").await;
    let store = prefix.connect().await;
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
    prefix.clean().await;
}

#[tokio::test]
async fn records_survive_a_new_store_instance() {
    let prefix = TestPrefix::new("reconnect").await;
    let k = key("k1");
    let first = prefix.connect().await;
    let (fence, _) = claimed(&first, claim(&k, fingerprint(3), T0)).await;
    first
        .complete(&k, fence, completion(T0, vec![event("a.b", None, 1)]))
        .await
        .unwrap();
    let before = first.lookup(&k, T0).await.unwrap();
    drop(first);

    let second = prefix.connect().await;

    assert!(before.is_some());
    assert_eq!(second.lookup(&k, T0).await.unwrap(), before);
    assert_eq!(second.pending_events(10).await.unwrap().len(), 1);
    prefix.clean().await;
}

#[tokio::test]
async fn scopes_and_prefixes_keep_records_apart() {
    let prefix = TestPrefix::new("scopes").await;
    let other_prefix = TestPrefix::new("scopes_other").await;
    let store = prefix.connect().await;
    let other = other_prefix.connect().await;
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
    prefix.clean().await;
    other_prefix.clean().await;
}

#[tokio::test]
async fn every_key_lives_under_the_prefix_with_a_ttl_from_the_callers_clock() {
    let prefix = TestPrefix::new("keys").await;
    let store = prefix.connect().await;
    let k = key("k1");
    let (fence, _) = claimed(&store, claim(&k, fingerprint(1), T0)).await;
    let mut raw = prefix.raw().await;
    let record_key = format!("{}record:{}", prefix.prefix, hex::encode(k.encode()));

    let ttl: i64 = redis::cmd("PTTL")
        .arg(&record_key)
        .query_async(&mut raw)
        .await
        .unwrap();
    let retention = RETENTION.as_millis() as i64;
    assert!(ttl > retention - 60_000 && ttl <= retention, "ttl {ttl}");

    // A completion sets the TTL from its own times: one hour of retention left.
    let done = T0.saturating_add(RETENTION - Duration::from_secs(3600));
    let mut short = completion(done, vec![event("a.b", None, 1)]);
    short.expires_at = done.saturating_add(Duration::from_secs(3600));
    store.complete(&k, fence, short).await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&record_key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(ttl > 3_540_000 && ttl <= 3_600_000, "ttl {ttl}");

    let p = &prefix.prefix;
    assert_eq!(
        prefix.keys().await,
        [
            format!("{p}expiry"),
            format!("{p}fence"),
            format!("{p}history"),
            format!("{p}pending"),
            record_key
        ]
    );
    prefix.clean().await;
}

#[tokio::test]
async fn the_callers_clock_expires_records_that_redis_still_holds() {
    let prefix = TestPrefix::new("caller_clock").await;
    let store = prefix.connect().await;
    let k = key("k1");
    let (first, _) = claimed(&store, claim(&k, fingerprint(1), T0)).await;
    store
        .complete(&k, first, completion(T0, vec![]))
        .await
        .unwrap();

    // Redis keeps the record for a day of its own time; the engine's clock moved past it.
    let expired = T0.saturating_add(RETENTION);
    assert_eq!(store.lookup(&k, expired).await.unwrap(), None);
    let (second, takeover) = claimed(&store, claim(&k, fingerprint(2), expired)).await;
    assert!(!takeover && second > first);
    prefix.clean().await;
}

#[tokio::test]
async fn records_redis_expired_by_itself_leave_no_stale_index_entries() {
    let prefix = TestPrefix::new("stale_index").await;
    let store = prefix.connect().await;
    for name in ["a", "b"] {
        let k = key(name);
        let (fence, _) = claimed(&store, claim(&k, fingerprint(1), T0)).await;
        store
            .complete(&k, fence, completion(T0, vec![event("a.b", None, 1)]))
            .await
            .unwrap();
    }
    // As if Redis's TTL had fired for "a" before the engine's clock got there.
    let mut raw = prefix.raw().await;
    let record_a = format!("{}record:{}", prefix.prefix, hex::encode(key("a").encode()));
    let _: () = redis::cmd("DEL")
        .arg(&record_a)
        .query_async(&mut raw)
        .await
        .unwrap();

    let pending = store.pending_events(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].key, key("b"));
    let pending_entries: u64 = redis::cmd("ZCARD")
        .arg(format!("{}pending", prefix.prefix))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(pending_entries, 1, "the stale pending entry was dropped");

    let purged = store
        .purge_expired(T0.saturating_add(RETENTION))
        .await
        .unwrap();
    assert_eq!(purged, 1, "only the record Redis still held is counted");
    let p = &prefix.prefix;
    assert_eq!(prefix.keys().await, [format!("{p}fence")]);
    prefix.clean().await;
}

#[tokio::test]
async fn connect_reports_bad_urls_unreachable_servers_and_bad_options() {
    let bad = RedisStore::connect("http://127.0.0.1:6379", RedisOptions::new()).await;
    assert!(matches!(bad, Err(ConnectError::InvalidUrl(_))), "{bad:?}");

    let options = RedisOptions::new().connect_timeout(Duration::from_secs(2));
    let closed = RedisStore::connect("redis://127.0.0.1:1/", options).await;
    assert!(
        matches!(closed, Err(ConnectError::Unreachable(_))),
        "{closed:?}"
    );

    let invalid = RedisStore::connect(&common::url(), RedisOptions::new().key_prefix("")).await;
    assert!(matches!(
        invalid,
        Err(ConnectError::InvalidOption {
            option: "key_prefix",
            ..
        })
    ));
}
