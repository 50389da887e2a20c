//! [`OnRuntime`]: a store that needs a tokio runtime, driven from any executor.

use std::fmt;
use std::sync::Arc;

use cnerium_core::async_trait;
use cnerium_core::{
    ClaimOutcome, ClaimRequest, CompleteError, Completion, Event, Fence, PendingEvents, Record,
    RecordKey, Store, StoreError, Timestamp,
};
use tokio::runtime::Handle;

/// A store whose every call runs as a task on a tokio runtime, so that callers polling with
/// another executor can use it.
///
/// The conformance suite and the simulator poll futures with a minimal executor of their
/// own. A store built on tokio I/O (a connection pool, a multiplexed Redis connection)
/// panics or stalls when polled outside a tokio runtime. Wrapped, each call is spawned on
/// `runtime` and awaited through its join handle, which any executor can poll; the runtime
/// must keep running on threads of its own (a multi-threaded runtime does).
///
/// A call that panics inside the store comes back as a [`StoreError`]. The label is free
/// text for the test: what it needs to open the same data again in a
/// [`persistent`](crate::conformance::persistent) factory's reopen (a schema, a key prefix).
///
/// ```
/// use cnerium_store_memory::MemoryStore;
/// use cnerium_testkit::conformance::{self, OnRuntime};
///
/// let runtime = tokio::runtime::Builder::new_multi_thread()
///     .worker_threads(2)
///     .enable_all()
///     .build()
///     .unwrap();
/// let handle = runtime.handle().clone();
/// // A tokio-based store would be connected here, with `handle.block_on(...)`.
/// let report = conformance::run(|| OnRuntime::new(handle.clone(), MemoryStore::new()));
/// assert!(report.is_ok());
/// ```
///
/// Available with the `tokio` feature of this crate.
pub struct OnRuntime<S> {
    runtime: Handle,
    inner: Arc<S>,
    label: String,
}

impl<S> OnRuntime<S> {
    /// `inner`, with each call run on `runtime`.
    pub fn new(runtime: Handle, inner: S) -> Self {
        Self {
            runtime,
            inner: Arc::new(inner),
            label: String::new(),
        }
    }

    /// Attaches a label, such as the schema or key prefix the store was opened with.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// The label given with [`with_label`](OnRuntime::with_label); empty by default.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The runtime calls run on.
    pub fn runtime(&self) -> &Handle {
        &self.runtime
    }
}

impl<S> fmt::Debug for OnRuntime<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnRuntime")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl<S: Store + 'static> OnRuntime<S> {
    /// Spawns `call` on the runtime with a handle to the store and awaits its result.
    async fn spawned<T, E, F>(&self, call: impl FnOnce(Arc<S>) -> F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        self.runtime
            .spawn(call(self.inner.clone()))
            .await
            .map_err(|e| StoreError::with_source("store call panicked", e))?
    }
}

#[async_trait]
impl<S: Store + 'static> Store for OnRuntime<S> {
    async fn claim(&self, request: ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        self.spawned(|s| async move { s.claim(request).await })
            .await
    }

    async fn complete(
        &self,
        key: &RecordKey,
        fence: Fence,
        completion: Completion,
    ) -> Result<(), CompleteError> {
        let key = key.clone();
        self.spawned(|s| async move { s.complete(&key, fence, completion).await })
            .await
    }

    async fn release(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError> {
        let key = key.clone();
        self.spawned(|s| async move { s.release(&key, fence).await })
            .await
    }

    async fn mark_published(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError> {
        let key = key.clone();
        self.spawned(|s| async move { s.mark_published(&key, fence).await })
            .await
    }

    async fn pending_events(&self, limit: usize) -> Result<Vec<PendingEvents>, StoreError> {
        self.spawned(|s| async move { s.pending_events(limit).await })
            .await
    }

    async fn lookup(&self, key: &RecordKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        let key = key.clone();
        self.spawned(|s| async move { s.lookup(&key, now).await })
            .await
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.spawned(|s| async move { s.purge_expired(now).await })
            .await
    }

    async fn events_since(&self, since: Timestamp, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.spawned(|s| async move { s.events_since(since, limit).await })
            .await
    }
}
