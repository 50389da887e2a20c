//! The fault-injecting store fails, holds and delays exactly the calls it is told to.

use std::time::{Duration, Instant};

use cnerium_core::{
    ClaimOutcome, ClaimRequest, CompleteError, Completion, Fingerprint, IdempotencyKey, RecordKey,
    Scope, Store, StoredResponse, Timestamp,
};
use cnerium_store_memory::MemoryStore;
use cnerium_testkit::{Fault, FaultyStore, Gate, StoreMethod, Trigger, block_on};
use http::StatusCode;

fn key(name: &str) -> RecordKey {
    RecordKey::new(Scope::new("op"), IdempotencyKey::new(name).unwrap())
}

fn claim(name: &str) -> ClaimRequest {
    ClaimRequest {
        key: key(name),
        fingerprint: Fingerprint::from_parts(1, [0; 32]),
        now: Timestamp::from_millis(0),
        lease_until: Timestamp::from_millis(30_000),
        expires_at: Timestamp::from_millis(86_400_000),
    }
}

fn completion() -> Completion {
    Completion {
        response: StoredResponse {
            status: StatusCode::OK,
            headers: Vec::new(),
            body: "done".into(),
        },
        events: Vec::new(),
        completed_at: Timestamp::from_millis(1),
        expires_at: Timestamp::from_millis(86_400_000),
    }
}

#[test]
fn the_nth_call_counts_from_when_the_rule_is_added() {
    let store = FaultyStore::new(MemoryStore::new());
    block_on(async {
        store.claim(claim("a")).await.unwrap();
        store.plan().fail_nth(StoreMethod::Claim, 2);
        assert!(store.claim(claim("b")).await.is_ok());
        assert!(store.claim(claim("c")).await.is_err());
        assert!(
            store.claim(claim("c")).await.is_ok(),
            "an nth rule fires once"
        );
    });
    assert_eq!(store.plan().calls(StoreMethod::Claim), 4);
    assert_eq!(store.plan().fired(), 1);
}

#[test]
fn a_failed_call_leaves_the_inner_store_untouched() {
    let store = FaultyStore::new(MemoryStore::new());
    store.plan().fail_next(StoreMethod::Claim);
    assert!(block_on(store.claim(claim("a"))).is_err());
    assert!(store.inner().is_empty());
}

#[test]
fn a_failure_after_the_call_still_writes() {
    let store = FaultyStore::new(MemoryStore::new());
    block_on(async {
        let ClaimOutcome::Claimed { fence, .. } = store.claim(claim("a")).await.unwrap() else {
            panic!("a free key is granted");
        };
        store
            .plan()
            .inject(StoreMethod::Complete, Trigger::Nth(1), Fault::FailAfter);
        let outcome = store.complete(&key("a"), fence, completion()).await;
        assert!(matches!(outcome, Err(CompleteError::Store(_))));
        let record = store
            .inner()
            .lookup(&key("a"), Timestamp::from_millis(2))
            .await;
        assert!(matches!(
            record.unwrap().unwrap().state,
            cnerium_core::RecordState::Completed { .. }
        ));
    });
}

#[test]
fn a_predicate_aims_at_one_key() {
    let store = FaultyStore::new(MemoryStore::new());
    store
        .plan()
        .fail_when(StoreMethod::Claim, |call| call.key == Some(&key("doomed")));
    block_on(async {
        assert!(store.claim(claim("doomed")).await.is_err());
        assert!(store.claim(claim("fine")).await.is_ok());
        assert!(store.claim(claim("doomed")).await.is_err());
    });
}

#[test]
fn every_call_fails_until_the_plan_is_cleared() {
    let store = FaultyStore::new(MemoryStore::new());
    store.plan().fail_every(StoreMethod::PurgeExpired);
    block_on(async {
        assert!(store.purge_expired(Timestamp::EPOCH).await.is_err());
        assert!(store.purge_expired(Timestamp::EPOCH).await.is_err());
        store.plan().clear();
        assert!(store.purge_expired(Timestamp::EPOCH).await.is_ok());
    });
}

#[test]
fn a_held_call_waits_for_its_gate() {
    let store = std::sync::Arc::new(FaultyStore::new(MemoryStore::new()));
    let gate: Gate = store.plan().hold_nth(StoreMethod::Claim, 1);
    let waiting = {
        let store = store.clone();
        std::thread::spawn(move || block_on(store.claim(claim("a"))))
    };
    while gate.waiting() == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        store.inner().is_empty(),
        "the held claim has not reached the store"
    );
    gate.open();
    assert!(matches!(
        waiting.join().unwrap(),
        Ok(ClaimOutcome::Claimed { .. })
    ));
}

#[test]
fn a_delayed_call_takes_at_least_its_delay() {
    let store = FaultyStore::new(MemoryStore::new());
    store
        .plan()
        .delay_nth(StoreMethod::Lookup, 1, Duration::from_millis(20));
    let start = Instant::now();
    block_on(store.lookup(&key("a"), Timestamp::EPOCH)).unwrap();
    assert!(start.elapsed() >= Duration::from_millis(20));
}
