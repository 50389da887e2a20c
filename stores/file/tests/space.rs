//! Purging, compaction and segment rotation.

mod support;

use std::time::Duration;

use cnerium_core::Store;
use cnerium_store_file::FileStore;
use futures_executor::block_on;
use support::*;

const SEGMENT: u64 = 16 * 1024;

fn small_segments(dir: &std::path::Path) -> FileStore {
    FileStore::open_with(dir, options().segment_size(SEGMENT)).unwrap()
}

#[test]
fn segments_rotate_at_the_configured_size() {
    let dir = tempfile::tempdir().unwrap();
    let store = small_segments(dir.path());
    let body = vec![b'x'; 1024];
    for i in 0..64 {
        store_record(&store, &key(&format!("k{i}")), &body, vec![], at(1));
    }
    let files = segments(dir.path());
    assert!(files.len() >= 4, "{} segments", files.len());
    for file in &files {
        assert!(std::fs::metadata(file).unwrap().len() <= SEGMENT + 2048);
    }
    for i in 0..64 {
        assert_eq!(
            replay(&store, &key(&format!("k{i}")), at(2)).unwrap().len(),
            1024
        );
    }
}

#[test]
fn purge_and_compaction_shrink_disk_use_and_keep_live_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = small_segments(dir.path());
    let body = vec![b'x'; 512];
    let short = Duration::from_secs(60);
    for i in 0..200 {
        let k = key(&format!("short{i}"));
        let fence = claim(&store, &k, at(0));
        let mut done = completion(&body, vec![], at(0));
        done.expires_at = at(0).saturating_add(short);
        block_on(store.complete(&k, fence, done)).unwrap();
    }
    for i in 0..10 {
        let k = key(&format!("long{i}"));
        store_record(
            &store,
            &k,
            format!("keep-{i}").as_bytes(),
            vec![event("e", at(0))],
            at(0),
        );
    }
    let before = segment_bytes(dir.path());

    let later = at(0).saturating_add(short);
    assert_eq!(block_on(store.purge_expired(later)).unwrap(), 200);
    assert_eq!(block_on(store.purge_expired(later)).unwrap(), 0);
    let freed = block_on(store.compact()).unwrap();
    let after = segment_bytes(dir.path());
    assert!(freed > 0);
    assert!(
        after * 5 < before,
        "{after} bytes after compaction, {before} before"
    );

    for i in 0..10 {
        let body = replay(&store, &key(&format!("long{i}")), later).unwrap();
        assert_eq!(body, format!("keep-{i}").as_bytes());
    }
    assert_eq!(block_on(store.pending_events(100)).unwrap().len(), 10);
    block_on(store.close()).unwrap();

    let store = small_segments(dir.path());
    assert_eq!(store.stats().records, 10);
    assert_eq!(block_on(store.lookup(&key("short3"), at(1))).unwrap(), None);
    assert_eq!(
        replay(&store, &key("long3"), later).as_deref(),
        Some(&b"keep-3"[..])
    );
    assert_eq!(block_on(store.pending_events(100)).unwrap().len(), 10);
}

#[test]
fn published_state_survives_compaction_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let store = small_segments(dir.path());
    let k = key("a");
    let fence = store_record(&store, &k, b"a", vec![event("e", at(0))], at(0));
    block_on(store.mark_published(&k, fence)).unwrap();
    for i in 0..40 {
        // Replace a record many times so that old segments are mostly dead.
        let churn = key(&format!("c{}", i % 4));
        let now = at(i * 10_000_000);
        store_record(&store, &churn, &[b'y'; 900], vec![], now);
    }
    block_on(store.compact()).unwrap();
    assert!(block_on(store.pending_events(10)).unwrap().is_empty());
    block_on(store.close()).unwrap();

    let store = small_segments(dir.path());
    assert!(block_on(store.pending_events(10)).unwrap().is_empty());
    assert_eq!(replay(&store, &k, at(1)).as_deref(), Some(&b"a"[..]));
}

#[test]
fn fences_stay_above_purged_and_compacted_records_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = small_segments(dir.path());
    let k = key("a");
    let old = store_record(&store, &k, b"a", vec![event("e", at(0))], at(0));
    let later = at(0).saturating_add(RETENTION);
    block_on(store.purge_expired(later)).unwrap();
    block_on(store.compact()).unwrap();
    block_on(store.close()).unwrap();

    let store = small_segments(dir.path());
    assert_eq!(store.stats().records, 0);
    assert!(claim(&store, &k, later) > old);
}

#[test]
fn background_compaction_follows_purges() {
    let dir = tempfile::tempdir().unwrap();
    let options = options().segment_size(SEGMENT).compaction_live_ratio(0.5);
    let store = FileStore::open_with(dir.path(), options).unwrap();
    let body = vec![b'x'; 512];
    for i in 0..200 {
        store_record(&store, &key(&format!("k{i}")), &body, vec![], at(0));
    }
    let before = segment_bytes(dir.path());
    block_on(store.purge_expired(at(0).saturating_add(RETENTION))).unwrap();

    // The compactor works on its own thread; give it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.stats().compactions == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(store.stats().compactions > 0);
    assert!(segment_bytes(dir.path()) < before / 2);
}

#[test]
fn records_completed_during_compaction_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(small_segments(dir.path()));
    for i in 0..100 {
        store_record(
            &store,
            &key(&format!("old{i}")),
            &[b'o'; 400],
            vec![],
            at(0),
        );
    }
    block_on(store.purge_expired(at(0).saturating_add(RETENTION))).unwrap();
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            let now = at(0).saturating_add(RETENTION);
            for i in 0..100 {
                store_record(&store, &key(&format!("new{i}")), &[b'n'; 400], vec![], now);
            }
        })
    };
    for _ in 0..5 {
        block_on(store.compact()).unwrap();
    }
    writer.join().unwrap();
    block_on(store.compact()).unwrap();
    let now = at(0).saturating_add(RETENTION);
    for i in 0..100 {
        assert!(
            replay(&store, &key(&format!("new{i}")), now).is_some(),
            "new{i}"
        );
    }
    let store = std::sync::Arc::into_inner(store).unwrap();
    block_on(store.close()).unwrap();
    let store = small_segments(dir.path());
    assert_eq!(store.stats().records, 100);
}

#[test]
fn purged_records_stay_purged_after_restart_without_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = small_segments(dir.path());
    let k = key("a");
    let fence = store_record(&store, &k, b"a", vec![event("e", at(0))], at(0));
    let kept = key("b");
    store_record(&store, &kept, b"b", vec![], at(0).saturating_add(RETENTION));
    let later = at(0).saturating_add(RETENTION);
    assert_eq!(block_on(store.purge_expired(later)).unwrap(), 1);
    block_on(store.close()).unwrap();

    let store = small_segments(dir.path());
    assert_eq!(store.stats().records, 1);
    assert!(block_on(store.pending_events(10)).unwrap().is_empty());
    let new = claim(&store, &k, later);
    assert!(new > fence);
    assert_eq!(replay(&store, &kept, later).as_deref(), Some(&b"b"[..]));

    // The watermark, and the release of the new claim, outlive compaction of the segments
    // that first recorded them.
    block_on(store.release(&k, new)).unwrap();
    block_on(store.compact()).unwrap();
    block_on(store.close()).unwrap();
    let store = small_segments(dir.path());
    assert_eq!(store.stats().records, 1);
}
