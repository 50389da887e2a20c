//! Durable POST routes for [warp](https://docs.rs/warp).
//!
//! [`durable`] turns a [`DurableRoute`] into a warp filter that you mount anywhere in an
//! existing filter tree, beside ordinary routes:
//!
//! ```no_run
//! use std::sync::Arc;
//! use cnerium_core::{DurableRequest, DurableResponse, Engine, Timestamp};
//! use cnerium_store_memory::MemoryStore;
//! use warp::Filter;
//!
//! # async fn run() {
//! let clock = Arc::new(|| Timestamp::from_system_time(std::time::SystemTime::now()));
//! let engine = Engine::new(Arc::new(MemoryStore::new()), clock);
//! let create = engine.route("orders.create", |request: DurableRequest| async move {
//!     DurableResponse::created(serde_json::json!({"key": request.idempotency_key().as_str()}))
//! });
//!
//! let health = warp::path("health").and(warp::get()).map(|| "ok");
//! let orders = warp::path("orders").and(warp::path::end()).and(cnerium_warp::durable(create));
//! let routes = health.or(orders).recover(cnerium_warp::problem_rejections);
//! warp::serve(routes).run(([127, 0, 0, 1], 8080)).await;
//! # }
//! ```
//!
//! The filter matches POST only and reads the body itself, up to the route's limit, so a
//! chunked body without `Content-Length` is limited too. The engine runs in a task of its
//! own: a client that disconnects mid-request does not cancel the handler, and its retry
//! receives the stored result.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use cnerium_core::DurableRoute;
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use tracing::{error, trace};
use warp::{Filter, Rejection};

/// A filter that runs `route` for POST requests and answers every outcome itself.
///
/// Combine it with path filters: `warp::path("orders").and(warp::path::end()).and(durable(route))`.
/// Requests with another method are rejected as warp's "method not allowed", so that other
/// routes on the same path still match; [`problem_rejections`] turns that into a 405
/// problem.
pub fn durable(
    route: DurableRoute,
) -> impl Filter<Extract = (Response<Bytes>,), Error = Rejection> + Clone + Send + Sync + 'static {
    warp::post()
        .and(warp::path::full())
        .and(raw_query())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            move |path: warp::path::FullPath, query: String, headers, body| {
                let route = route.clone();
                async move { run(route, path.as_str(), &query, headers, body).await }
            },
        )
}

/// The same as [`durable`], mounted on the single path segment `segment`
/// (`durable_post("orders", route)` serves `POST /orders`).
pub fn durable_post(
    segment: &'static str,
    route: DurableRoute,
) -> impl Filter<Extract = (Response<Bytes>,), Error = Rejection> + Clone + Send + Sync + 'static {
    warp::path(segment)
        .and(warp::path::end())
        .and(durable(route))
}

fn raw_query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

async fn run<S, B>(
    route: DurableRoute,
    path: &str,
    query: &str,
    headers: HeaderMap,
    body: S,
) -> Response<Bytes>
where
    S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf,
{
    let uri = if query.is_empty() {
        Uri::try_from(path)
    } else {
        Uri::try_from(format!("{path}?{query}"))
    };
    let mut request = Request::new(Bytes::new());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = match uri {
        Ok(uri) => uri,
        Err(_) => return bad_target(),
    };
    *request.headers_mut() = headers;

    let (parts, _) = request.into_parts();
    let mut body = std::pin::pin!(body);
    if let Some(refused) = route.precheck(&parts) {
        if !expects_continue(&parts.headers) {
            drain(body.as_mut()).await;
        }
        return refused;
    }
    let body = match read_limited(body.as_mut(), route.body_limit()).await {
        Ok(body) => body,
        Err(BodyRead::TooLarge) => {
            drain(body.as_mut()).await;
            return route.body_too_large();
        }
        Err(BodyRead::Failed(e)) => return route.body_unreadable(&e),
    };
    let request = Request::from_parts(parts, body);

    // A client hanging up drops this future; the engine's part then goes on in a task of
    // its own, so a running handler is never cancelled half-way.
    DetachOnDrop::new(async move { route.handle(request).await }).await
}

/// Runs a future in place and, if dropped before it finished, moves the rest of it into a
/// task. Cheaper than spawning every request: only abandoned requests pay for a task.
struct DetachOnDrop<F: Future<Output = Response<Bytes>> + Send + 'static> {
    future: Option<Pin<Box<F>>>,
}

impl<F: Future<Output = Response<Bytes>> + Send + 'static> DetachOnDrop<F> {
    fn new(future: F) -> Self {
        Self {
            future: Some(Box::pin(future)),
        }
    }
}

impl<F: Future<Output = Response<Bytes>> + Send + 'static> Future for DetachOnDrop<F> {
    type Output = Response<Bytes>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response<Bytes>> {
        let Some(future) = self.future.as_mut() else {
            // Polled again after completion; warp never does this.
            return Poll::Pending;
        };
        let response = std::task::ready!(future.as_mut().poll(cx));
        self.future = None;
        Poll::Ready(response)
    }
}

impl<F: Future<Output = Response<Bytes>> + Send + 'static> Drop for DetachOnDrop<F> {
    fn drop(&mut self) {
        let Some(future) = self.future.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                trace!("client left mid-request; finishing it in a task");
                runtime.spawn(future);
            }
            Err(_) => {
                error!("client left mid-request outside a runtime; the claim waits out its lease")
            }
        }
    }
}

enum BodyRead {
    TooLarge,
    Failed(warp::Error),
}

async fn read_limited<S, B>(mut body: Pin<&mut S>, limit: usize) -> Result<Bytes, BodyRead>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    // Most bodies arrive in one chunk, which is taken as it is; a copy is made only to
    // join a second one to it.
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    let mut read = 0;
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(BodyRead::Failed)?;
        read += chunk.remaining();
        if read > limit {
            return Err(BodyRead::TooLarge);
        }
        if first.is_none() && joined.is_empty() {
            first = Some(chunk.copy_to_bytes(chunk.remaining()));
            continue;
        }
        if let Some(first) = first.take() {
            joined.reserve(read);
            joined.extend_from_slice(&first);
        }
        joined.put(chunk);
    }
    Ok(match first {
        Some(only) => only,
        None => joined.freeze(),
    })
}

/// Most bytes of a refused body read and thrown away before answering.
///
/// Answering before the client finished sending makes the server close the connection
/// mid-upload, and many clients then report a reset instead of the answer. Reading a
/// bounded remainder lets them see the 4xx; a larger body is cut off.
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;

/// Longest wait for a refused body's remainder: a client that stops sending, or sends
/// slowly, still gets its answer.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

async fn drain<S, B>(mut body: Pin<&mut S>)
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let read = async {
        let mut drained = 0;
        while let Some(Ok(chunk)) = body.next().await {
            drained += chunk.remaining();
            if drained > DRAIN_LIMIT {
                return;
            }
        }
    };
    // Past the deadline the answer goes out and the connection closes behind it.
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}

/// Whether the client waits for `100 Continue` before it sends the body: then a refusal
/// is answered without reading any of it, and the client never sends it.
fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
}

fn bad_target() -> Response<Bytes> {
    with_nosniff(problem(
        StatusCode::BAD_REQUEST,
        "the request target is not a valid URI",
    ))
}

fn with_nosniff(mut response: Response<Bytes>) -> Response<Bytes> {
    response.headers_mut().insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    response
}

fn problem(status: StatusCode, detail: &str) -> Response<Bytes> {
    cnerium_core::DurableResponse::problem(status, detail).into_http()
}

/// A `recover` handler that answers warp's own rejections as `application/problem+json`:
/// 404 for unknown paths, 405 with `Allow` for a wrong method, and so on.
///
/// ```no_run
/// # use warp::Filter;
/// let routes = warp::path("health").map(|| "ok").recover(cnerium_warp::problem_rejections);
/// ```
pub async fn problem_rejections(rejection: Rejection) -> Result<Response<Bytes>, Rejection> {
    let (status, detail) = if rejection.is_not_found() {
        (
            StatusCode::NOT_FOUND,
            "no route matches this path".to_owned(),
        )
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "this method is not allowed on this path; durable routes accept POST".to_owned(),
        )
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is too large".to_owned(),
        )
    } else if rejection
        .find::<warp::reject::UnsupportedMediaType>()
        .is_some()
    {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported content type".to_owned(),
        )
    } else if let Some(e) = rejection.find::<warp::filters::body::BodyDeserializeError>() {
        (
            StatusCode::BAD_REQUEST,
            format!("the request body is invalid: {e}"),
        )
    } else if rejection.find::<warp::reject::MissingHeader>().is_some()
        || rejection.find::<warp::reject::InvalidHeader>().is_some()
        || rejection.find::<warp::reject::InvalidQuery>().is_some()
    {
        (
            StatusCode::BAD_REQUEST,
            "the request is malformed".to_owned(),
        )
    } else {
        // Let warp answer rejections this function does not know about.
        return Err(rejection);
    };
    let mut response = with_nosniff(problem(status, &detail));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
    }
    Ok(response)
}

/// A 405 problem with `Allow: allow`, for an ordinary route to answer the methods it does
/// not serve (warp's own 405 rejection does not say which methods a path has, so
/// [`problem_rejections`] can only name the durable routes' POST).
///
/// ```no_run
/// # use warp::Filter;
/// let health = warp::path("health").and(warp::path::end());
/// let others = health.map(|| cnerium_warp::method_not_allowed("GET, HEAD"));
/// let routes = health
///     .and(warp::get().or(warp::head()).unify())
///     .map(|| "ok")
///     .map(warp::Reply::into_response)
///     .or(others.map(warp::Reply::into_response));
/// ```
pub fn method_not_allowed(allow: &'static str) -> Response<Bytes> {
    let detail = format!("this method is not allowed on this path; it accepts {allow}");
    let mut response = with_nosniff(problem(StatusCode::METHOD_NOT_ALLOWED, &detail));
    response
        .headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    response
}
