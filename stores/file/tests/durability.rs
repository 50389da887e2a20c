//! What survives closing, reopening, torn writes and corrupted bytes.

mod support;

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};

use cnerium_core::{ClaimOutcome, RecordState, Store};
use futures_executor::block_on;
use support::*;

#[test]
fn completed_records_replay_the_same_bytes_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let body = b"{\"ok\":true,\"order_id\":\"ord_a\"}\x00\xff\xfe binary tail";
    let k = key("a");
    let store = open(dir.path());
    let fence = store_record(&store, &k, body, vec![event("evt_1", at(1_000))], at(1_000));
    block_on(store.close()).unwrap();

    let store = open(dir.path());
    let record = block_on(store.lookup(&k, at(2_000)))
        .unwrap()
        .expect("record survives");
    assert_eq!(record.fingerprint, fingerprint(1));
    assert_eq!(record.created_at, at(1_000));
    assert_eq!(record.expires_at, at(1_000).saturating_add(RETENTION));
    let RecordState::Completed {
        fence: stored_fence,
        response: stored,
        events,
        events_published,
        completed_at,
    } = record.state
    else {
        panic!("expected a completed record");
    };
    assert_eq!(stored_fence, fence);
    assert_eq!(stored, response(body));
    assert_eq!(events, vec![event("evt_1", at(1_000))]);
    assert!(!events_published);
    assert_eq!(completed_at, at(1_000));

    // A retry still finds the record instead of being granted the key.
    match block_on(store.claim(claim_request(&k, at(3_000)))).unwrap() {
        ClaimOutcome::Existing(existing) => assert_eq!(existing.fence(), fence),
        other => panic!("expected the stored record, got {other:?}"),
    }
}

#[test]
fn pending_events_and_published_markers_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, quiet) = (key("a"), key("b"), key("quiet"));
    let store = open(dir.path());
    let fence_a = store_record(&store, &a, b"a", vec![event("evt_a", at(1))], at(1));
    let fence_b = store_record(&store, &b, b"b", vec![event("evt_b", at(2))], at(2));
    store_record(&store, &quiet, b"q", vec![], at(3));
    block_on(store.close()).unwrap();

    let store = open(dir.path());
    let pending = block_on(store.pending_events(10)).unwrap();
    let listed: Vec<_> = pending.iter().map(|p| (p.key.clone(), p.fence)).collect();
    assert_eq!(listed, vec![(a.clone(), fence_a), (b.clone(), fence_b)]);
    assert_eq!(pending[0].events, vec![event("evt_a", at(1))]);

    block_on(store.mark_published(&a, fence_a)).unwrap();
    block_on(store.close()).unwrap();

    let store = open(dir.path());
    let pending = block_on(store.pending_events(10)).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].key, b);
    let Some(record) = block_on(store.lookup(&a, at(10))).unwrap() else {
        panic!("record a is gone");
    };
    assert!(matches!(
        record.state,
        RecordState::Completed {
            events_published: true,
            ..
        }
    ));
}

#[test]
fn fences_keep_growing_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let first = store_record(&store, &key("a"), b"a", vec![], at(1));
    // A claim that never completes is not written, yet its fence must not come back.
    let unfinished = claim(&store, &key("b"), at(1));
    drop(store);

    let store = open(dir.path());
    let next = claim(&store, &key("c"), at(2));
    assert!(
        next > first && next > unfinished,
        "{next} after {first} and {unfinished}"
    );
}

#[test]
fn a_crashed_owners_key_is_claimable_right_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let k = key("a");
    let store = open(dir.path());
    let old = claim(&store, &k, at(1_000));
    drop(store);

    let store = open(dir.path());
    assert_eq!(block_on(store.lookup(&k, at(1_001))).unwrap(), None);
    let new = claim(&store, &k, at(1_001));
    assert!(new > old);
}

#[test]
fn a_truncated_last_frame_is_skipped_and_earlier_records_recover() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for name in ["a", "b", "c"] {
        store_record(&store, &key(name), name.as_bytes(), vec![], at(1));
    }
    block_on(store.close()).unwrap();

    // A power cut in the middle of the last write.
    let path = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 7)
        .unwrap();

    let (store, warnings) = capture_warnings(|| open(dir.path()));
    assert_eq!(replay(&store, &key("a"), at(2)).as_deref(), Some(&b"a"[..]));
    assert_eq!(replay(&store, &key("b"), at(2)).as_deref(), Some(&b"b"[..]));
    assert_eq!(block_on(store.lookup(&key("c"), at(2))).unwrap(), None);
    assert_eq!(
        warnings.matches("skipped corrupt bytes").count(),
        1,
        "{warnings}"
    );
    assert!(warnings.contains("torn_tail=true"), "{warnings}");

    // The torn tail was cut, so new records land after valid frames and reopen cleanly.
    store_record(&store, &key("d"), b"d", vec![], at(3));
    block_on(store.close()).unwrap();
    let (store, warnings) = capture_warnings(|| open(dir.path()));
    assert_eq!(warnings, "");
    assert_eq!(replay(&store, &key("d"), at(4)).as_deref(), Some(&b"d"[..]));
    assert_eq!(replay(&store, &key("b"), at(4)).as_deref(), Some(&b"b"[..]));
}

#[test]
fn a_corrupted_byte_mid_segment_loses_only_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["a", "b", "c", "d", "e"];
    let store = open(dir.path());
    for name in names {
        let body = format!("body-of-{name}-{}", "x".repeat(100));
        store_record(&store, &key(name), body.as_bytes(), vec![], at(1));
    }
    block_on(store.close()).unwrap();

    // Flip one byte inside the body of "c".
    let path = segments(dir.path()).pop().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let at_c = bytes
        .windows(9)
        .position(|w| w == b"body-of-c")
        .expect("body of c on disk");
    let mut file = OpenOptions::new().write(true).open(&path).unwrap();
    file.seek(SeekFrom::Start(at_c as u64 + 20)).unwrap();
    file.write_all(&[bytes[at_c + 20] ^ 0x10]).unwrap();
    drop(file);

    let (store, warnings) = capture_warnings(|| open(dir.path()));
    for name in ["a", "b", "d", "e"] {
        let body = replay(&store, &key(name), at(2)).expect("neighbour recovered");
        assert!(body.starts_with(format!("body-of-{name}").as_bytes()));
    }
    assert_eq!(block_on(store.lookup(&key("c"), at(2))).unwrap(), None);
    assert_eq!(
        warnings.matches("skipped corrupt bytes").count(),
        1,
        "{warnings}"
    );
    assert!(warnings.contains("offset="), "{warnings}");
    assert!(warnings.contains("skipped="), "{warnings}");
    assert!(warnings.contains("torn_tail=false"), "{warnings}");
    // The corrupt frame's key is new again.
    claim(&store, &key("c"), at(3));
}

#[test]
fn a_copy_left_by_an_interrupted_compaction_is_merged_on_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let k = key("a");
    let store = open(dir.path());
    let fence = store_record(&store, &k, b"a", vec![event("evt_a", at(1))], at(1));
    block_on(store.close()).unwrap();

    // The same frames under a second segment name: the state between renaming a compacted
    // segment into place and deleting the old one.
    let path = segments(dir.path()).pop().unwrap();
    std::fs::copy(&path, dir.path().join("segment-0000000099.log")).unwrap();
    std::fs::write(
        dir.path().join("segment-0000000100.log.tmp"),
        b"half written",
    )
    .unwrap();

    let store = open(dir.path());
    assert_eq!(store.stats().records, 1);
    assert_eq!(block_on(store.pending_events(10)).unwrap().len(), 1);
    block_on(store.mark_published(&k, fence)).unwrap();
    assert!(block_on(store.pending_events(10)).unwrap().is_empty());
    assert!(!dir.path().join("segment-0000000100.log.tmp").exists());
}

#[test]
fn the_store_works_without_any_async_runtime_of_its_own() {
    // Everything above ran on futures-executor; this checks a second executor pattern:
    // many futures interleaved on one thread.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let keys: Vec<_> = (0..16).map(|i| key(&format!("k{i}"))).collect();
    let fences: Vec<_> = keys.iter().map(|k| claim(&store, k, at(1))).collect();
    let completions = keys
        .iter()
        .zip(&fences)
        .map(|(k, f)| store.complete(k, *f, completion(b"x", vec![], at(1))));
    let results = block_on(futures_util::future::join_all(completions));
    assert!(results.iter().all(Result::is_ok));
    assert!(keys.iter().all(|k| replay(&store, k, at(2)).is_some()));
}
