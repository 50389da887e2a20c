//! The testkit's model-based properties hold for the file store.

use cnerium_core::{
    ClaimOutcome, ClaimRequest, CompleteError, Completion, Fence, PendingEvents, Record, RecordKey,
    Store, StoreError, Timestamp, async_trait,
};
use cnerium_store_file::{FileStore, FileStoreOptions};
use cnerium_testkit::props;

/// A file store in a directory that lives exactly as long as it does.
struct TempFileStore {
    store: FileStore,
    _dir: tempfile::TempDir,
}

impl TempFileStore {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let options = FileStoreOptions::default().segment_size(8 * 1024);
        let store = FileStore::open_with(dir.path(), options).unwrap();
        Self { store, _dir: dir }
    }
}

#[async_trait]
impl Store for TempFileStore {
    async fn claim(&self, request: ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        self.store.claim(request).await
    }

    async fn complete(
        &self,
        key: &RecordKey,
        fence: Fence,
        completion: Completion,
    ) -> Result<(), CompleteError> {
        self.store.complete(key, fence, completion).await
    }

    async fn release(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError> {
        self.store.release(key, fence).await
    }

    async fn mark_published(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError> {
        self.store.mark_published(key, fence).await
    }

    async fn pending_events(&self, limit: usize) -> Result<Vec<PendingEvents>, StoreError> {
        self.store.pending_events(limit).await
    }

    async fn lookup(&self, key: &RecordKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        self.store.lookup(key, now).await
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        let purged = self.store.purge_expired(now).await?;
        // Compact on every purge so that the schedules exercise moves under live traffic.
        self.store.compact().await?;
        Ok(purged)
    }
}

#[test]
fn file_store_keeps_every_property_on_random_schedules() {
    // Restarts keep the same store object here: the model expects claims to outlive a
    // restart, which a file store only promises for completions.
    if let Err(failure) = props::check_store(TempFileStore::new, props::cases()) {
        panic!("{failure}");
    }
}
