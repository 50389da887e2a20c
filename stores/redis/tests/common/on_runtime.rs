//! A `Store` wrapper that runs every call of an async-runtime store on a tokio runtime, for
//! callers that poll futures with another executor (the testkit's conformance suite).

use cnerium_core::async_trait;
use cnerium_core::{
    ClaimOutcome, ClaimRequest, CompleteError, Completion, Fence, PendingEvents, Record, RecordKey,
    Store, StoreError, Timestamp,
};
use tokio::runtime::Handle;

/// `inner`, with each call spawned on `runtime` and awaited through its join handle.
pub struct OnRuntime<S> {
    pub runtime: Handle,
    pub inner: S,
    /// What the test needs to open the same data again (a schema or a key prefix).
    pub name: String,
}

impl<S: Store + Clone + 'static> OnRuntime<S> {
    async fn run<T, F>(&self, call: impl FnOnce(S) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.runtime
            .spawn(call(self.inner.clone()))
            .await
            .map_err(|e| StoreError::with_source("store call panicked", e))?
    }
}

#[async_trait]
impl<S: Store + Clone + 'static> Store for OnRuntime<S> {
    async fn claim(&self, request: ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        self.run(|s| async move { s.claim(request).await }).await
    }

    async fn complete(
        &self,
        key: &RecordKey,
        fence: Fence,
        completion: Completion,
    ) -> Result<(), CompleteError> {
        let key = key.clone();
        let outcome = self
            .runtime
            .spawn({
                let inner = self.inner.clone();
                async move { inner.complete(&key, fence, completion).await }
            })
            .await;
        match outcome {
            Ok(result) => result,
            Err(e) => Err(StoreError::with_source("store call panicked", e).into()),
        }
    }

    async fn release(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError> {
        let key = key.clone();
        self.run(|s| async move { s.release(&key, fence).await })
            .await
    }

    async fn mark_published(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError> {
        let key = key.clone();
        self.run(|s| async move { s.mark_published(&key, fence).await })
            .await
    }

    async fn pending_events(&self, limit: usize) -> Result<Vec<PendingEvents>, StoreError> {
        self.run(|s| async move { s.pending_events(limit).await })
            .await
    }

    async fn lookup(&self, key: &RecordKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        let key = key.clone();
        self.run(|s| async move { s.lookup(&key, now).await }).await
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.run(|s| async move { s.purge_expired(now).await })
            .await
    }
}
