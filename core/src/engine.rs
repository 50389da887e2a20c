//! The engine: takes a request through claim, handler, commit and publication.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::header::{HeaderValue, RETRY_AFTER};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use tracing::{debug, error, info, trace, warn};

use crate::event::{DiscardEvents, EventSink, EventStage};
use crate::fingerprint::Fingerprint;
use crate::key::{IdempotencyKey, KeyError};
use crate::request::DurableRequest;
use crate::response::{
    DurableResponse, ProblemKind, ReplayHeaders, problem_response, replay_response,
};
use crate::store::{
    ClaimOutcome, ClaimRequest, CompleteError, Completion, Fence, Record, RecordKey, RecordState,
    Scope, Store, StoreError, StoredResponse, defaults,
};
use crate::time::{Clock, Timestamp};

/// Error type a handler may return; any error converts into it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Default largest request body a durable route reads: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// Default largest response body a store keeps: 1 MiB.
pub const DEFAULT_MAX_STORED_BODY: usize = 1024 * 1024;

/// How the engine behaves; shared by all routes of one engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// How long a claim holds before a retry may take over a crashed owner's key.
    pub lease: Duration,
    /// How long a record is kept after its first request.
    pub retention: Duration,
    /// Largest request body, unless a route sets its own.
    pub body_limit: usize,
    /// Largest response body stored for replay. A larger response still reaches the first
    /// caller; a retry receives a 409 problem saying the result was not stored, and the
    /// handler does not run again.
    pub max_stored_body: usize,
    /// Which response headers a replay repeats.
    pub replay_headers: ReplayHeaders,
    /// Status for a key reused with another request: 409 by default, 422 in the IETF
    /// preset.
    pub key_reused_status: StatusCode,
    /// Whether 5xx responses of the handler are stored. When false, a 5xx is returned to
    /// the caller, the claim is released and a retry runs the handler again.
    pub store_server_errors: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            lease: defaults::LEASE,
            retention: defaults::RETENTION,
            body_limit: DEFAULT_BODY_LIMIT,
            max_stored_body: DEFAULT_MAX_STORED_BODY,
            replay_headers: ReplayHeaders::default(),
            key_reused_status: StatusCode::CONFLICT,
            store_server_errors: true,
        }
    }
}

impl EngineConfig {
    /// The defaults, with the statuses of the IETF Idempotency-Key draft: 422 for a key
    /// reused with another request.
    pub fn ietf() -> Self {
        Self {
            key_reused_status: StatusCode::UNPROCESSABLE_ENTITY,
            ..Self::default()
        }
    }
}

/// Runs durable requests against a [`Store`], an [`EventSink`] and a [`Clock`].
///
/// The engine does no I/O of its own: it awaits the store and the sink it was given and
/// reads time from the clock. Adapters drive it:
///
/// 1. Build one engine per service with [`Engine::new`], and one [`DurableRoute`] per
///    operation with [`Engine::route`].
/// 2. For each request, call [`DurableRoute::precheck`] on the head before reading the
///    body (it refuses a missing or malformed key without reading anything), read the body
///    up to [`DurableRoute::body_limit`], then call [`DurableRoute::handle`].
/// 3. At start, call [`Engine::recover`] to publish events a crash left unpublished; from
///    time to time, call [`Engine::purge_expired`].
///
/// The `cnerium` facade crate's documentation shows a complete route over the in-memory
/// store.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    store: Arc<dyn Store>,
    sink: Arc<dyn EventSink>,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
}

impl Engine {
    /// An engine over `store` and `clock`, publishing nowhere and with default settings.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self::with_parts(
            store,
            Arc::new(DiscardEvents),
            clock,
            EngineConfig::default(),
        )
    }

    /// An engine with every part given.
    pub fn with_parts(
        store: Arc<dyn Store>,
        sink: Arc<dyn EventSink>,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
    ) -> Self {
        Self {
            inner: Arc::new(EngineInner {
                store,
                sink,
                clock,
                config,
            }),
        }
    }

    /// The same engine publishing committed events to `sink`.
    pub fn with_sink(self, sink: Arc<dyn EventSink>) -> Self {
        let inner = &self.inner;
        Self::with_parts(
            inner.store.clone(),
            sink,
            inner.clock.clone(),
            inner.config.clone(),
        )
    }

    /// The same engine with `config`.
    pub fn with_config(self, config: EngineConfig) -> Self {
        let inner = &self.inner;
        Self::with_parts(
            inner.store.clone(),
            inner.sink.clone(),
            inner.clock.clone(),
            config,
        )
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The event sink.
    pub fn sink(&self) -> &Arc<dyn EventSink> {
        &self.inner.sink
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// A durable route for `operation` that runs `handler` at most once per key.
    ///
    /// The operation name scopes keys: two routes with different operations never share
    /// records. Keep it stable across deployments, or stored records stop matching.
    pub fn route(&self, operation: impl Into<String>, handler: impl Handler) -> DurableRoute {
        DurableRoute {
            engine: self.clone(),
            operation: Arc::from(operation.into()),
            handler: Arc::new(handler),
            scope_fn: None,
            body_limit: self.inner.config.body_limit,
        }
    }

    /// Publishes the events of committed records that were not confirmed published (the
    /// process stopped between commit and publication), and returns how many events went
    /// out. Call it once at start, before serving.
    pub async fn recover(&self) -> Result<usize, StoreError> {
        const BATCH: usize = 256;
        let mut published = 0;
        loop {
            let pending = self.inner.store.pending_events(BATCH).await?;
            if pending.is_empty() {
                return Ok(published);
            }
            let batch_len = pending.len();
            for entry in pending {
                if let Err(e) = self.inner.sink.publish(&entry.events).await {
                    warn!(record = %entry.key, error = %e, "recovery could not publish events");
                    return Ok(published);
                }
                self.inner
                    .store
                    .mark_published(&entry.key, entry.fence)
                    .await?;
                published += entry.events.len();
                debug!(record = %entry.key, events = entry.events.len(), "republished events");
            }
            if batch_len < BATCH {
                return Ok(published);
            }
        }
    }

    /// Events committed at or after `since`, for a client catching up after a reconnect;
    /// see [`Store::events_since`].
    pub async fn events_since(
        &self,
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<crate::Event>, StoreError> {
        self.inner.store.events_since(since, limit).await
    }

    /// Removes expired records from the store; returns how many were removed.
    pub async fn purge_expired(&self) -> Result<u64, StoreError> {
        let now = self.inner.clock.now();
        let purged = self.inner.store.purge_expired(now).await?;
        if purged > 0 {
            debug!(purged, "purged expired records");
        }
        Ok(purged)
    }
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Gives the caller's identity from a request head, to scope keys per caller.
pub type ScopeFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// One durable operation: a handler, its operation name and its limits.
///
/// Cheap to clone; clones share the handler.
#[derive(Clone)]
pub struct DurableRoute {
    engine: Engine,
    operation: Arc<str>,
    handler: Arc<dyn Handler>,
    scope_fn: Option<ScopeFn>,
    body_limit: usize,
}

/// What the engine decided about a request whose claim found an existing record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The first request finished; send its stored response.
    Replay(StoredResponse),
    /// The first request is still running.
    InProgress {
        /// How long until its lease runs out.
        lease_left: Duration,
    },
    /// The key was first used with a request whose fingerprint differs.
    KeyReused,
}

/// Decides how to answer a request whose key already has a live, unclaimable record.
///
/// Takes the record by value: a replay moves its stored response out rather than copying
/// it.
pub fn decide(existing: Record, fingerprint: &Fingerprint, now: Timestamp) -> Decision {
    if existing.fingerprint != *fingerprint {
        return Decision::KeyReused;
    }
    match existing.state {
        RecordState::InProgress { lease_until, .. } => Decision::InProgress {
            lease_left: lease_until.saturating_since(now),
        },
        RecordState::Completed { response, .. } => Decision::Replay(response),
    }
}

impl DurableRoute {
    /// Scopes keys by caller: `scope` returns the caller's identity (a user id, a tenant)
    /// from the request head. Requests for which it returns `None` share the operation's
    /// unscoped key space.
    pub fn scope_by(
        mut self,
        scope: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.scope_fn = Some(Arc::new(scope));
        self
    }

    /// Sets the largest request body this route reads.
    pub fn with_body_limit(mut self, limit: usize) -> Self {
        self.body_limit = limit;
        self
    }

    /// The largest request body this route reads, in bytes.
    pub fn body_limit(&self) -> usize {
        self.body_limit
    }

    /// The operation name.
    pub fn operation(&self) -> &str {
        &self.operation
    }

    /// The engine this route runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Checks the request head before the body is read: returns the error response for a
    /// missing or malformed key, or for a declared `Content-Length` over the limit.
    pub fn precheck(&self, parts: &Parts) -> Option<Response<Bytes>> {
        if let Err(e) = IdempotencyKey::from_headers(&parts.headers) {
            return Some(finish(key_problem(&e)));
        }
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        match declared {
            Some(len) if len > self.body_limit as u64 => Some(self.body_too_large()),
            _ => None,
        }
    }

    /// The 413 answer for a body over this route's limit.
    pub fn body_too_large(&self) -> Response<Bytes> {
        trace!(operation = %self.operation, limit = self.body_limit, "body too large");
        let detail = format!(
            "the request body exceeds this route's limit of {} bytes; send a smaller body",
            self.body_limit
        );
        finish(problem_response(
            ProblemKind::BodyTooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            &detail,
        ))
    }

    /// The 400 answer for a body the adapter could not read (cut short, badly chunked).
    pub fn body_unreadable(&self, error: &dyn fmt::Display) -> Response<Bytes> {
        trace!(operation = %self.operation, %error, "body unreadable");
        let detail = format!(
            "the request body could not be read ({error}); send the whole body, as its \
             Content-Length or chunked encoding announces"
        );
        finish(problem_response(
            ProblemKind::BodyUnreadable,
            StatusCode::BAD_REQUEST,
            &detail,
        ))
    }

    /// Runs one request through the route and returns the response to send.
    ///
    /// Never fails: every outcome, including store failures and handler panics, is a
    /// response. Every response carries `X-Content-Type-Options: nosniff`.
    pub async fn handle(&self, request: Request<Bytes>) -> Response<Bytes> {
        finish(self.run(request).await)
    }

    async fn run(&self, request: Request<Bytes>) -> Response<Bytes> {
        let (parts, body) = request.into_parts();
        let key = match IdempotencyKey::from_headers(&parts.headers) {
            Ok(key) => key,
            Err(e) => return key_problem(&e),
        };
        if body.len() > self.body_limit {
            return self.body_too_large();
        }

        let caller = self.scope_fn.as_ref().and_then(|f| f(&parts));
        let scope = Scope::of_route(&self.operation, caller);
        let record_key = RecordKey::new(scope, key);
        let fingerprint = Fingerprint::compute(&parts.method, &parts.uri, &parts.headers, &body);

        let inner = &self.engine.inner;
        let now = inner.clock.now();
        let claim = ClaimRequest {
            key: record_key.clone(),
            fingerprint,
            now,
            lease_until: now.saturating_add(inner.config.lease),
            expires_at: now.saturating_add(inner.config.retention),
        };
        let fence = match inner.store.claim(claim).await {
            Ok(ClaimOutcome::Claimed { fence, takeover }) => {
                if takeover {
                    info!(record = %record_key, %fence, "lease expired; took over the key");
                } else {
                    debug!(record = %record_key, %fence, "new key claimed");
                }
                fence
            }
            Ok(ClaimOutcome::Existing(record)) => {
                return self.answer_existing(&record_key, record, &fingerprint, now);
            }
            Err(e) => {
                error!(record = %record_key, error = %e, "store failed to claim");
                let mut response = problem_response(
                    ProblemKind::StoreUnavailable,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the idempotency store could not be reached; retry with the same key",
                );
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                return response;
            }
        };

        self.execute(parts, body, record_key, fence, now).await
    }

    fn answer_existing(
        &self,
        record_key: &RecordKey,
        record: Record,
        fingerprint: &Fingerprint,
        now: Timestamp,
    ) -> Response<Bytes> {
        match decide(record, fingerprint, now) {
            Decision::Replay(stored) => {
                debug!(record = %record_key, status = stored.status.as_u16(), "replay");
                replay_response(stored)
            }
            Decision::InProgress { lease_left } => {
                debug!(record = %record_key, ?lease_left, "request in progress");
                let mut response = problem_response(
                    ProblemKind::RequestInProgress,
                    StatusCode::CONFLICT,
                    "a request with this idempotency key is still being processed; retry \
                     after the delay in Retry-After to receive its result",
                );
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
            Decision::KeyReused => {
                debug!(record = %record_key, "key reused with another request");
                problem_response(
                    ProblemKind::KeyReused,
                    self.engine.inner.config.key_reused_status,
                    "this idempotency key was already used with a different request (method, \
                     path, query or body); use a new key for a new request",
                )
            }
        }
    }

    async fn execute(
        &self,
        parts: Parts,
        body: Bytes,
        record_key: RecordKey,
        fence: Fence,
        now: Timestamp,
    ) -> Response<Bytes> {
        let inner = &self.engine.inner;
        let stage = EventStage::new(&record_key, fence, now);
        let request = DurableRequest::new(
            parts,
            body,
            record_key.key().clone(),
            record_key.scope().clone(),
            stage.clone(),
        );

        // A handler may panic while it builds its future as well as while it runs.
        let outcome =
            match std::panic::catch_unwind(AssertUnwindSafe(|| self.handler.call(request))) {
                Ok(future) => AssertUnwindSafe(future).catch_unwind().await,
                Err(panic) => Err(panic),
            };
        let events = stage.close();
        let response = match outcome {
            Ok(Ok(response)) => response.into_http(),
            Ok(Err(e)) => {
                error!(record = %record_key, error = %e, "handler failed; claim released");
                return self.fail(&record_key, fence, "the operation failed").await;
            }
            Err(_) => {
                error!(record = %record_key, "handler panicked; claim released");
                return self.fail(&record_key, fence, "the operation failed").await;
            }
        };

        let status = response.status();
        if status.as_u16() > 599 {
            error!(record = %record_key, status = status.as_u16(), "handler status out of range");
            return self
                .fail(
                    &record_key,
                    fence,
                    "the operation returned an invalid status",
                )
                .await;
        }
        if status.is_server_error() && !inner.config.store_server_errors {
            debug!(record = %record_key, status = status.as_u16(), "server error not stored");
            self.release(&record_key, fence).await;
            return response;
        }

        let mut stored = inner.config.replay_headers.to_stored(&response);
        if stored.body.len() > inner.config.max_stored_body {
            warn!(
                record = %record_key,
                size = stored.body.len(),
                cap = inner.config.max_stored_body,
                "response too large to store; retries will get a not-stored problem"
            );
            stored = not_stored_response(status, stored.body.len(), inner.config.max_stored_body);
        }
        let completion = Completion {
            response: stored,
            events,
            completed_at: inner.clock.now(),
            expires_at: now.saturating_add(inner.config.retention),
        };
        let events = completion.events.clone();

        match inner.store.complete(&record_key, fence, completion).await {
            Ok(()) => debug!(record = %record_key, %fence, status = status.as_u16(), "committed"),
            Err(CompleteError::Fenced) => {
                warn!(record = %record_key, %fence, "lease lost before commit; result discarded");
                return problem_response(
                    ProblemKind::LeaseExpired,
                    StatusCode::CONFLICT,
                    "the operation took longer than its lease and a retry took the key over; \
                     retry with the same key to receive that request's result",
                );
            }
            Err(CompleteError::Store(e)) => {
                // The write may have landed before the failure was reported; then the result
                // is stored and a retry would replay it, so this caller must get it too.
                if !self.committed_despite_error(&record_key, fence).await {
                    error!(record = %record_key, error = %e, "store failed to commit");
                    self.release(&record_key, fence).await;
                    return problem_response(
                        ProblemKind::StoreUnavailable,
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the result could not be stored, so the operation's outcome was not \
                         kept; retry with the same key",
                    );
                }
                warn!(record = %record_key, error = %e, "commit reported failure but landed");
            }
        }

        if !events.is_empty() {
            self.publish(&record_key, fence, &events).await;
        }
        response
    }

    /// Whether the record is completed under `fence` after all.
    async fn committed_despite_error(&self, record_key: &RecordKey, fence: Fence) -> bool {
        let now = self.engine.inner.clock.now();
        match self.engine.inner.store.lookup(record_key, now).await {
            Ok(Some(record)) => {
                matches!(record.state, RecordState::Completed { fence: f, .. } if f == fence)
            }
            _ => false,
        }
    }

    async fn publish(&self, record_key: &RecordKey, fence: Fence, events: &[crate::Event]) {
        let inner = &self.engine.inner;
        match inner.sink.publish(events).await {
            Ok(()) => {
                trace!(record = %record_key, events = events.len(), "events published");
                if let Err(e) = inner.store.mark_published(record_key, fence).await {
                    warn!(record = %record_key, error = %e, "could not mark events published");
                }
            }
            Err(e) => {
                warn!(record = %record_key, error = %e, "event sink refused; events stay pending");
            }
        }
    }

    async fn fail(&self, record_key: &RecordKey, fence: Fence, detail: &str) -> Response<Bytes> {
        self.release(record_key, fence).await;
        let detail =
            format!("{detail}; nothing was stored, so a retry with the same key runs it again");
        problem_response(
            ProblemKind::HandlerFailed,
            StatusCode::INTERNAL_SERVER_ERROR,
            &detail,
        )
    }

    async fn release(&self, record_key: &RecordKey, fence: Fence) {
        if let Err(e) = self.engine.inner.store.release(record_key, fence).await {
            // The claim stays until its lease runs out; retries get 409 until then.
            warn!(record = %record_key, error = %e, "could not release claim");
        }
    }
}

impl fmt::Debug for DurableRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableRoute")
            .field("operation", &self.operation)
            .field("body_limit", &self.body_limit)
            .field("scoped", &self.scope_fn.is_some())
            .finish()
    }
}

fn key_problem(error: &KeyError) -> Response<Bytes> {
    trace!(%error, "key refused");
    let kind = match error {
        KeyError::Missing => ProblemKind::MissingKey,
        _ => ProblemKind::InvalidKey,
    };
    let detail = match error {
        KeyError::Missing => "send an Idempotency-Key header with a unique value per operation, \
                              such as a UUID"
            .to_owned(),
        other => other.to_string(),
    };
    problem_response(kind, StatusCode::BAD_REQUEST, &detail)
}

fn not_stored_response(status: StatusCode, size: usize, cap: usize) -> StoredResponse {
    let detail = format!(
        "the request with this idempotency key completed with status {} but its {size}-byte \
         response exceeded the {cap}-byte storage cap, so it cannot be replayed; the \
         operation is not run again",
        status.as_u16()
    );
    let response = problem_response(
        ProblemKind::ResponseNotStored,
        StatusCode::CONFLICT,
        &detail,
    );
    ReplayHeaders::default().to_stored(&response)
}

/// Adds the headers every durable response carries.
fn finish(mut response: Response<Bytes>) -> Response<Bytes> {
    response.headers_mut().insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// A durable handler: runs once per key and returns the response to store.
///
/// Implemented for async closures `Fn(DurableRequest) -> impl Future<Output = R>` where `R`
/// is a [`DurableResponse`], an `http::Response<Bytes>`, or a `Result` of either with any
/// error type.
pub trait Handler: Send + Sync + 'static {
    /// Runs the operation.
    fn call(
        &self,
        request: DurableRequest,
    ) -> BoxFuture<'static, Result<DurableResponse, BoxError>>;
}

impl<F, Fut, R> Handler for F
where
    F: Fn(DurableRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoHandlerResult,
{
    fn call(
        &self,
        request: DurableRequest,
    ) -> BoxFuture<'static, Result<DurableResponse, BoxError>> {
        let future = self(request);
        Box::pin(async move { future.await.into_handler_result() })
    }
}

/// What a handler's future may resolve to.
pub trait IntoHandlerResult {
    /// The response, or the error that makes the engine release the claim.
    fn into_handler_result(self) -> Result<DurableResponse, BoxError>;
}

impl IntoHandlerResult for DurableResponse {
    fn into_handler_result(self) -> Result<DurableResponse, BoxError> {
        Ok(self)
    }
}

impl IntoHandlerResult for Response<Bytes> {
    fn into_handler_result(self) -> Result<DurableResponse, BoxError> {
        Ok(self.into())
    }
}

impl<T, E> IntoHandlerResult for Result<T, E>
where
    T: Into<DurableResponse>,
    E: Into<BoxError>,
{
    fn into_handler_result(self) -> Result<DurableResponse, BoxError> {
        self.map(Into::into).map_err(Into::into)
    }
}
