//! The data directory: one process at a time, and keys that never become paths.

mod support;

use cnerium_core::{IdempotencyKey, RecordKey, Scope};
use cnerium_store_file::{FileStore, OpenError};
use futures_executor::block_on;
use support::*;

#[test]
fn a_second_open_of_a_locked_directory_names_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let _store = open(dir.path());
    let error = FileStore::open(dir.path()).unwrap_err();
    let OpenError::Locked { pid, .. } = &error else {
        panic!("expected a lock error, got {error}");
    };
    assert_eq!(*pid, Some(std::process::id()));
    let message = error.to_string();
    assert!(
        message.contains(&std::process::id().to_string()),
        "{message}"
    );
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    assert!(message.contains("another data directory"), "{message}");
}

#[test]
fn closing_or_dropping_releases_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    block_on(store.close()).unwrap();
    let store = open(dir.path());
    drop(store);
    open(dir.path());
}

#[test]
fn open_creates_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("data").join("cnerium");
    let store = open(&nested);
    store_record(&store, &key("a"), b"a", vec![], at(1));
    assert!(nested.join("LOCK").exists());
}

#[test]
fn a_file_where_the_directory_should_be_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("afile");
    std::fs::write(&file, b"not a store").unwrap();
    let message = FileStore::open(&file).unwrap_err().to_string();
    assert!(message.contains("not a directory"), "{message}");
    assert!(message.contains(&file.display().to_string()), "{message}");
    assert_eq!(std::fs::read(&file).unwrap(), b"not a store");
}

#[test]
fn invalid_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let result = FileStore::open_with(dir.path(), options().segment_size(10));
    assert!(matches!(result, Err(OpenError::InvalidOptions(_))));
}

#[test]
fn keys_with_path_syntax_and_odd_bytes_stay_inside_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let keys = [
        RecordKey::new(
            Scope::new("../../etc"),
            IdempotencyKey::new("../../etc/passwd").unwrap(),
        ),
        RecordKey::new(
            Scope::with_caller("orders.create", "tenant\u{0}/..\\ü/\u{7f}"),
            IdempotencyKey::new("~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./ ").unwrap(),
        ),
        RecordKey::new(
            Scope::new("orders.create"),
            IdempotencyKey::new("k".repeat(255)).unwrap(),
        ),
    ];
    let store = open(dir.path());
    for (i, k) in keys.iter().enumerate() {
        store_record(&store, k, format!("body{i}").as_bytes(), vec![], at(1));
    }
    block_on(store.close()).unwrap();

    let store = open(dir.path());
    for (i, k) in keys.iter().enumerate() {
        let body = replay(&store, k, at(2)).unwrap();
        assert_eq!(body, format!("body{i}").as_bytes());
    }
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["FENCE", "LOCK", "segment-0000000001.log"]);
    assert!(!dir.path().parent().unwrap().join("etc").exists());
}
