//! What survives closing, reopening, torn writes and corrupted bytes.

mod support;

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};

use cnerium_core::{ClaimOutcome, RecordState, Store};
use cnerium_store_file::format::{self, Entry};
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
fn an_in_progress_claim_survives_reopening_until_its_lease_ends() {
    let dir = tempfile::tempdir().unwrap();
    let k = key("a");
    let store = open(dir.path());
    let old = claim(&store, &k, at(1_000));
    drop(store);

    let store = open(dir.path());
    let record = block_on(store.lookup(&k, at(1_001)))
        .unwrap()
        .expect("claim survives");
    assert_eq!(record.fence(), old);
    assert!(matches!(record.state, RecordState::InProgress { .. }));
    let retry = block_on(store.claim(claim_request(&k, at(1_001)))).unwrap();
    assert!(matches!(retry, ClaimOutcome::Existing(_)));

    let ClaimOutcome::Claimed { fence, takeover } =
        block_on(store.claim(claim_request(&k, at(1_000).saturating_add(LEASE)))).unwrap()
    else {
        panic!("the lease ran out; the claim must be taken over");
    };
    assert!(takeover);
    assert!(fence > old);
}

#[test]
fn a_released_claim_stays_released_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let k = key("a");
    let store = open(dir.path());
    let fence = claim(&store, &k, at(1_000));
    block_on(store.release(&k, fence)).unwrap();
    block_on(store.close()).unwrap();

    let store = open(dir.path());
    assert_eq!(block_on(store.lookup(&k, at(1_001))).unwrap(), None);
    assert!(claim(&store, &k, at(1_001)) > fence);
}

#[test]
fn a_claim_lost_with_its_unsynced_frame_leaves_the_key_claimable() {
    let dir = tempfile::tempdir().unwrap();
    let k = key("a");
    let store = open(dir.path());
    store_record(&store, &key("kept"), b"kept", vec![], at(1));
    let path = segments(dir.path()).pop().unwrap();
    let synced = std::fs::metadata(&path).unwrap().len();
    let old = claim(&store, &k, at(1_000));
    block_on(store.close()).unwrap();

    // A power cut drops what was written after the last sync: here, the claim frame.
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(synced)
        .unwrap();
    let store = open(dir.path());
    assert_eq!(block_on(store.lookup(&k, at(1_001))).unwrap(), None);
    assert!(claim(&store, &k, at(1_001)) > old);
    assert_eq!(
        replay(&store, &key("kept"), at(2)).as_deref(),
        Some(&b"kept"[..])
    );
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
    // The completion of "c" was lost; its claim frame, written before it, was not.
    let c = block_on(store.lookup(&key("c"), at(2))).unwrap().unwrap();
    assert!(matches!(c.state, RecordState::InProgress { .. }));
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
    // Only the claim of "c" is left: in progress until its lease runs out.
    let c = block_on(store.lookup(&key("c"), at(2))).unwrap().unwrap();
    assert!(matches!(c.state, RecordState::InProgress { .. }));
    assert_eq!(
        warnings.matches("skipped corrupt bytes").count(),
        1,
        "{warnings}"
    );
    assert!(warnings.contains("offset="), "{warnings}");
    assert!(warnings.contains("skipped="), "{warnings}");
    assert!(warnings.contains("torn_tail=false"), "{warnings}");
    let takeover = block_on(store.claim(claim_request(&key("c"), at(1).saturating_add(LEASE))));
    assert!(matches!(
        takeover.unwrap(),
        ClaimOutcome::Claimed { takeover: true, .. }
    ));
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

/// Writes three records (one with events) into a fresh directory and returns the segment's
/// bytes and where each record's frame starts and ends.
fn three_records() -> (Vec<u8>, Vec<(String, usize, usize)>) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        let events = if i == 1 {
            vec![event("evt_b", at(1))]
        } else {
            vec![]
        };
        store_record(
            &store,
            &key(name),
            format!("body-{name}").as_bytes(),
            events,
            at(1),
        );
    }
    block_on(store.close()).unwrap();
    let bytes = std::fs::read(segments(dir.path()).pop().unwrap()).unwrap();

    let mut frames = Vec::new();
    let mut at_byte = format::SEGMENT_HEADER_LEN;
    while at_byte < bytes.len() {
        let (_, len) = format::check_frame(&bytes[at_byte..]).unwrap();
        let end = at_byte + len;
        if let Entry::Record(record) = format::decode_frame(&bytes[at_byte..end]).unwrap() {
            frames.push((record.key.key().as_str().to_owned(), at_byte, end));
        }
        at_byte = end;
    }
    assert_eq!(frames.len(), 3);
    (bytes, frames)
}

fn fast_options() -> cnerium_store_file::FileStoreOptions {
    options()
        .sync(cnerium_store_file::SyncMode::Never)
        .reader_threads(1)
}

#[test]
fn a_crash_at_any_byte_recovers_exactly_the_whole_frames_before_it() {
    let (bytes, ends) = three_records();
    for cut in 0..=bytes.len() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("segment-0000000001.log"), &bytes[..cut]).unwrap();
        let store = cnerium_store_file::FileStore::open_with(dir.path(), fast_options()).unwrap();
        for (name, _, end) in &ends {
            let replayed = replay(&store, &key(name), at(2));
            if *end <= cut {
                assert_eq!(
                    replayed.unwrap(),
                    format!("body-{name}").as_bytes(),
                    "cut {cut}"
                );
            } else {
                assert_eq!(replayed, None, "{name} must not survive a cut at {cut}");
            }
        }
    }
}

#[test]
fn a_flipped_byte_anywhere_loses_at_most_the_frame_it_hit() {
    let (bytes, ends) = three_records();
    for at_byte in 0..bytes.len() {
        let mut corrupt = bytes.clone();
        corrupt[at_byte] ^= 0x5A;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("segment-0000000001.log"), &corrupt).unwrap();
        let store = cnerium_store_file::FileStore::open_with(dir.path(), fast_options()).unwrap();
        for (name, start, end) in &ends {
            let hit = (*start..*end).contains(&at_byte);
            let replayed = replay(&store, &key(name), at(2));
            if hit {
                assert_eq!(replayed, None, "{name} was hit at byte {at_byte}");
            } else {
                let body = replayed.unwrap_or_else(|| panic!("{name} lost to byte {at_byte}"));
                assert_eq!(body, format!("body-{name}").as_bytes());
            }
        }
    }
}
