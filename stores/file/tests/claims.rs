//! Claims, fencing, releases and group commit.

mod support;

use std::sync::{Arc, Barrier};

use cnerium_core::{ClaimOutcome, CompleteError, RecordState, Store};
use futures_executor::block_on;
use support::*;

#[test]
fn of_many_concurrent_claims_of_one_key_exactly_one_is_granted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    let threads = 32;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (store, barrier) = (store.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                block_on(store.claim(claim_request(&key("contended"), at(1_000)))).unwrap()
            })
        })
        .collect();
    let outcomes: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let granted = outcomes
        .iter()
        .filter(|o| matches!(o, ClaimOutcome::Claimed { .. }))
        .count();
    assert_eq!(granted, 1);
    assert!(outcomes.iter().all(|o| match o {
        ClaimOutcome::Existing(record) => matches!(record.state, RecordState::InProgress { .. }),
        ClaimOutcome::Claimed { takeover, .. } => !takeover,
    }));
}

#[test]
fn a_completion_with_an_older_fence_after_a_takeover_is_fenced_and_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let k = key("a");
    let store = open(dir.path());
    let old = claim(&store, &k, at(0));

    // The first owner's lease ran out; a retry takes the key over.
    let late = at(0).saturating_add(LEASE);
    let ClaimOutcome::Claimed {
        fence: new,
        takeover,
    } = block_on(store.claim(claim_request(&k, late))).unwrap()
    else {
        panic!("expected a takeover");
    };
    assert!(takeover);
    assert!(new > old);

    let result = block_on(store.complete(&k, old, completion(b"stale", vec![], late)));
    assert!(matches!(result, Err(CompleteError::Fenced)), "{result:?}");
    let record = block_on(store.lookup(&k, late)).unwrap().unwrap();
    assert_eq!(record.fence(), new);
    assert!(matches!(record.state, RecordState::InProgress { .. }));

    block_on(store.complete(&k, new, completion(b"fresh", vec![], late))).unwrap();
    block_on(store.close()).unwrap();
    let store = open(dir.path());
    assert_eq!(replay(&store, &k, late).as_deref(), Some(&b"fresh"[..]));
    let on_disk = std::fs::read(segments(dir.path()).pop().unwrap()).unwrap();
    assert!(!on_disk.windows(5).any(|w| w == b"stale"));
}

#[test]
fn completing_twice_or_after_release_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let k = key("a");
    let fence = claim(&store, &k, at(1));
    block_on(store.complete(&k, fence, completion(b"1", vec![], at(1)))).unwrap();
    let again = block_on(store.complete(&k, fence, completion(b"2", vec![], at(1))));
    assert!(matches!(again, Err(CompleteError::Fenced)));
    assert_eq!(replay(&store, &k, at(2)).as_deref(), Some(&b"1"[..]));

    let r = key("released");
    let fence = claim(&store, &r, at(1));
    block_on(store.release(&r, fence)).unwrap();
    let late = block_on(store.complete(&r, fence, completion(b"3", vec![], at(1))));
    assert!(matches!(late, Err(CompleteError::Fenced)));
}

#[test]
fn release_frees_the_key_only_under_its_own_fence() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let k = key("a");
    let fence = claim(&store, &k, at(1));
    block_on(store.release(&k, cnerium_core::Fence(fence.0 + 100))).unwrap();
    assert!(block_on(store.lookup(&k, at(1))).unwrap().is_some());
    block_on(store.release(&k, fence)).unwrap();
    assert_eq!(block_on(store.lookup(&k, at(1))).unwrap(), None);
    assert!(claim(&store, &k, at(2)) > fence);
}

#[test]
fn an_expired_record_is_gone_for_lookups_and_claimable_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let k = key("a");
    let first = store_record(&store, &k, b"old", vec![], at(0));
    let expired = at(0).saturating_add(RETENTION);
    assert_eq!(block_on(store.lookup(&k, expired)).unwrap(), None);
    let ClaimOutcome::Claimed { fence, takeover } =
        block_on(store.claim(claim_request(&k, expired))).unwrap()
    else {
        panic!("an expired record must be claimable");
    };
    assert!(!takeover);
    assert!(fence > first);
}

#[test]
fn pending_events_are_oldest_first_limited_and_skip_silent_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store_record(&store, &key("late"), b"", vec![event("e3", at(30))], at(30));
    store_record(&store, &key("silent"), b"", vec![], at(5));
    store_record(
        &store,
        &key("early"),
        b"",
        vec![event("e1", at(10))],
        at(10),
    );
    store_record(&store, &key("mid"), b"", vec![event("e2", at(20))], at(20));

    let pending = block_on(store.pending_events(2)).unwrap();
    let keys: Vec<_> = pending.iter().map(|p| p.key.clone()).collect();
    assert_eq!(keys, vec![key("early"), key("mid")]);
    assert_eq!(block_on(store.pending_events(10)).unwrap().len(), 3);
}

#[test]
fn mark_published_with_another_fence_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let k = key("a");
    let fence = store_record(&store, &k, b"", vec![event("e", at(1))], at(1));
    block_on(store.mark_published(&k, cnerium_core::Fence(fence.0 + 1))).unwrap();
    assert_eq!(block_on(store.pending_events(10)).unwrap().len(), 1);
    block_on(store.mark_published(&k, fence)).unwrap();
    assert!(block_on(store.pending_events(10)).unwrap().is_empty());
}

#[test]
fn concurrent_completions_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let n = 64;
    let keys: Vec<_> = (0..n).map(|i| key(&format!("k{i}"))).collect();
    let fences: Vec<_> = keys.iter().map(|k| claim(&store, k, at(1))).collect();
    let before = store.stats();

    let completions = keys
        .iter()
        .zip(&fences)
        .map(|(k, f)| store.complete(k, *f, completion(b"{}", vec![], at(1))));
    let results = block_on(futures_util::future::join_all(completions));
    assert!(results.iter().all(Result::is_ok));

    let after = store.stats();
    assert_eq!(after.commits - before.commits, n as u64);
    let syncs = after.syncs - before.syncs;
    assert!(
        syncs >= 1 && syncs < n as u64,
        "{syncs} syncs for {n} completions"
    );
}

#[test]
fn operations_after_close_fail_and_leave_the_claim_releasable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let k = key("a");
    let fence = claim(&store, &k, at(1));
    block_on(store.close()).unwrap();
    let result = block_on(store.complete(&k, fence, completion(b"x", vec![], at(1))));
    assert!(matches!(result, Err(CompleteError::Store(_))), "{result:?}");
    assert!(block_on(store.lookup(&k, at(1))).is_err());
    block_on(store.close()).unwrap();
}
