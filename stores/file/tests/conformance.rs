//! The testkit's conformance suite and model-based properties hold for the file store,
//! reopens included.

use std::sync::Arc;

use cnerium_core::Store;
use cnerium_store_file::{FileStore, FileStoreOptions};
use cnerium_testkit::properties::{self, Search};
use cnerium_testkit::{Simulation, conformance};
use futures_executor::block_on;

fn options() -> FileStoreOptions {
    // Small segments, so that schedules rotate and compact.
    FileStoreOptions::default().segment_size(8 * 1024)
}

/// A file store in a directory that lives as long as it does.
struct TempFileStore {
    store: FileStore,
    dir: tempfile::TempDir,
}

impl TempFileStore {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open_with(dir.path(), options()).unwrap();
        Self { store, dir }
    }

    /// Closes the store and opens its directory again, as after a restart.
    fn reopen(self) -> Self {
        let Self { store, dir } = self;
        block_on(store.close()).unwrap();
        drop(store);
        let store = FileStore::open_with(dir.path(), options()).unwrap();
        Self { store, dir }
    }
}

#[cnerium_core::async_trait]
impl Store for TempFileStore {
    async fn claim(
        &self,
        request: cnerium_core::ClaimRequest,
    ) -> Result<cnerium_core::ClaimOutcome, cnerium_core::StoreError> {
        self.store.claim(request).await
    }

    async fn complete(
        &self,
        key: &cnerium_core::RecordKey,
        fence: cnerium_core::Fence,
        completion: cnerium_core::Completion,
    ) -> Result<(), cnerium_core::CompleteError> {
        self.store.complete(key, fence, completion).await
    }

    async fn release(
        &self,
        key: &cnerium_core::RecordKey,
        fence: cnerium_core::Fence,
    ) -> Result<(), cnerium_core::StoreError> {
        self.store.release(key, fence).await
    }

    async fn mark_published(
        &self,
        key: &cnerium_core::RecordKey,
        fence: cnerium_core::Fence,
    ) -> Result<(), cnerium_core::StoreError> {
        self.store.mark_published(key, fence).await
    }

    async fn pending_events(
        &self,
        limit: usize,
    ) -> Result<Vec<cnerium_core::PendingEvents>, cnerium_core::StoreError> {
        self.store.pending_events(limit).await
    }

    async fn events_since(
        &self,
        since: cnerium_core::Timestamp,
        limit: usize,
    ) -> Result<Vec<cnerium_core::Event>, cnerium_core::StoreError> {
        self.store.events_since(since, limit).await
    }

    async fn lookup(
        &self,
        key: &cnerium_core::RecordKey,
        now: cnerium_core::Timestamp,
    ) -> Result<Option<cnerium_core::Record>, cnerium_core::StoreError> {
        self.store.lookup(key, now).await
    }

    async fn purge_expired(
        &self,
        now: cnerium_core::Timestamp,
    ) -> Result<u64, cnerium_core::StoreError> {
        let purged = self.store.purge_expired(now).await?;
        // Compact on every purge, so that records move while the schedule goes on.
        self.store.compact().await?;
        Ok(purged)
    }
}

#[test]
fn file_store_passes_the_conformance_suite_with_reopens() {
    let report = conformance::run(conformance::persistent(
        TempFileStore::new,
        TempFileStore::reopen,
    ));
    assert_eq!(report.failures().len(), 0, "{report}");
    assert!(
        !report.to_string().contains("skipped"),
        "the restart checks must run: {report}"
    );
}

#[test]
fn file_store_keeps_every_property_on_random_schedules_with_restarts() {
    let simulation = || {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let mut current = Arc::new(FileStore::open_with(&path, options()).unwrap());
        Simulation::builder_shared(current.clone())
            .reopen(move |old: Arc<dyn Store>| {
                let _dir = &dir;
                // The simulation may still hold the old engine while it reopens, so close
                // the old store explicitly (on another thread: this runs inside an
                // executor) instead of waiting for its last handle to go.
                let closing = current.clone();
                std::thread::spawn(move || block_on(closing.close()))
                    .join()
                    .unwrap()
                    .unwrap();
                drop(old);
                current = Arc::new(FileStore::open_with(&path, options()).unwrap());
                current.clone()
            })
            .build()
    };
    if let Err(failure) = properties::check_simulations(simulation, Search::default()) {
        panic!("{failure}");
    }
}
