//! Durable POST routes for [tide](https://docs.rs/tide) 0.16.
//!
//! [`durable`] turns a [`DurableRoute`] into a tide [`Endpoint`] that you mount on any
//! path of an existing app, beside its ordinary routes:
//!
//! ```no_run
//! use std::sync::Arc;
//! use cnerium_core::{DurableRequest, DurableResponse, Engine, Timestamp};
//! use cnerium_store_memory::MemoryStore;
//!
//! # async fn run() -> std::io::Result<()> {
//! let clock = Arc::new(|| Timestamp::from_system_time(std::time::SystemTime::now()));
//! let engine = Engine::new(Arc::new(MemoryStore::new()), clock);
//! let create = engine.route("orders.create", |request: DurableRequest| async move {
//!     DurableResponse::created(serde_json::json!({"key": request.idempotency_key().as_str()}))
//! });
//!
//! let mut app = tide::new();
//! app.with(cnerium_tide::RouterProblems);
//! app.at("/health").get(|_| async { Ok("ok") });
//! app.at("/orders")
//!     .post(cnerium_tide::durable(create))
//!     .all(cnerium_tide::method_not_allowed());
//! app.listen("127.0.0.1:8080").await
//! # }
//! ```
//!
//! The endpoint checks the key before it reads the body, then reads the body itself up to
//! the route's limit, so a chunked body without `Content-Length` is limited too; a refused
//! request never reaches the store. The engine runs in a task of its own: a client that
//! disconnects mid-request does not cancel the handler, and its retry receives the stored
//! result. Every answer of a durable path carries `X-Content-Type-Options: nosniff`, and
//! the adapter's own refusals are `application/problem+json`.
//!
//! tide speaks `http-types` 2.x; the engine speaks `http` 1.x. The [`convert`] module
//! carries requests and responses across without losing a header value, a status or a
//! body byte, and reports what the other side cannot express instead of dropping it.
//!
//! # Known limits of tide 0.16
//!
//! - `http-types` 2.x knows a fixed set of statuses and only ASCII header values. A
//!   handler response outside them (status 299, a Latin-1 header value) is stored as the
//!   handler returned it but answered with a 500 problem, first time and on replay, until
//!   the adapter moves to a tide release built on `http` 1.x.
//! - After answering early (413, a refused key), tide's HTTP/1 server reads and discards
//!   the rest of the request body, unbuffered, before the connection can serve another
//!   request, and may lose the first bytes of a request sent right behind that body. Such
//!   answers therefore carry `Connection: close`, so that clients do not reuse the
//!   connection.

pub mod convert;

use std::panic::AssertUnwindSafe;

use bytes::Bytes;
use cnerium_core::{DurableResponse, DurableRoute};
use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use tide::{Endpoint, Middleware, Next};
use tracing::{error, trace};

/// The async-std release tide runs on; the endpoint spawns each durable request onto it.
pub use async_std;
/// The tide release this adapter is built for, so that an application names the same
/// `Server`, `Request` and `Endpoint`.
pub use tide;

use crate::convert::{request_parts, tide_response};

/// Detail of the 405 answer, the same as the warp adapter's.
const METHOD_NOT_ALLOWED_DETAIL: &str =
    "this method is not allowed on this path; durable routes accept POST";

/// Detail of the 404 answer, the same as the warp adapter's.
const NOT_FOUND_DETAIL: &str = "no route matches this path";

/// The tide endpoint of one durable route; made by [`durable`].
#[derive(Clone, Debug)]
pub struct Durable {
    route: DurableRoute,
}

/// An endpoint that runs `route` for POST requests and answers every outcome itself.
///
/// Mount it with `app.at("/orders").post(durable(route))`. Mounted for other methods (with
/// `all`), it answers them with a 405 problem and runs nothing.
pub fn durable(route: DurableRoute) -> Durable {
    Durable { route }
}

impl Durable {
    /// The route this endpoint runs.
    pub fn route(&self) -> &DurableRoute {
        &self.route
    }

    async fn respond<State>(&self, request: tide::Request<State>) -> tide::Response {
        let body_left = has_body(&request);
        match self.run(request).await {
            Ok(response) => send(response),
            Err(refused) => send(close_if(body_left, refused)),
        }
    }

    /// The engine's response, or the refusal given before the body was read to its end.
    async fn run<State>(
        &self,
        mut request: tide::Request<State>,
    ) -> Result<Response<Bytes>, Response<Bytes>> {
        if request.method() != tide::http::Method::Post {
            return Err(method_not_allowed_problem("POST"));
        }
        let parts = request_parts(&request).map_err(|e| {
            trace!(error = %e, "request head refused");
            problem(
                StatusCode::BAD_REQUEST,
                &format!("the request cannot be read: {e}"),
            )
        })?;
        if let Some(refused) = self.route.precheck(&parts) {
            return Err(refused);
        }

        let body = match read_limited(request.take_body(), self.route.body_limit()).await {
            Ok(body) => body,
            Err(BodyRead::TooLarge) => return Err(self.route.body_too_large()),
            Err(BodyRead::Failed(e)) => {
                return Err(self.route.body_unreadable(&e));
            }
        };
        let request = Request::from_parts(parts, body);

        // A task of its own, so that a client hanging up does not cancel a running handler.
        let route = self.route.clone();
        let task = async move { route.handle(request).await };
        match async_std::task::spawn(AssertUnwindSafe(task).catch_unwind()).await {
            Ok(response) => Ok(response),
            Err(_) => {
                error!(operation = %self.route.operation(), "durable request task panicked");
                Ok(problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the operation failed",
                ))
            }
        }
    }
}

#[tide::utils::async_trait]
impl<State: Clone + Send + Sync + 'static> Endpoint<State> for Durable {
    async fn call(&self, request: tide::Request<State>) -> tide::Result {
        Ok(self.respond(request).await)
    }
}

/// The endpoint for the other methods of a durable path: a 405 problem with `Allow: POST`.
///
/// Mount it with `all` after the durable endpoint:
/// `app.at("/orders").post(durable(route)).all(method_not_allowed())`. Methods the app
/// routes explicitly on the same path (a `get`) still reach their own endpoints.
pub fn method_not_allowed() -> MethodNotAllowed {
    MethodNotAllowed { allow: "POST" }
}

/// The endpoint for the other methods of an ordinary path: a 405 problem with
/// `Allow: allow`, as in
/// `app.at("/health").get(health).all(method_not_allowed_allowing("GET, HEAD"))`.
pub fn method_not_allowed_allowing(allow: &'static str) -> MethodNotAllowed {
    MethodNotAllowed { allow }
}

/// The endpoint made by [`method_not_allowed`] and [`method_not_allowed_allowing`].
#[derive(Clone, Copy, Debug)]
pub struct MethodNotAllowed {
    allow: &'static str,
}

#[tide::utils::async_trait]
impl<State: Clone + Send + Sync + 'static> Endpoint<State> for MethodNotAllowed {
    async fn call(&self, request: tide::Request<State>) -> tide::Result {
        Ok(send(close_if(
            has_body(&request),
            method_not_allowed_problem(self.allow),
        )))
    }
}

/// A middleware that answers tide's own routing failures as `application/problem+json`,
/// as the warp adapter's `problem_rejections` does: 404 for a path no route matches, 405
/// for a method the path does not route.
///
/// Only the bodiless 404 and 405 tide's router produces are rewritten; a 404 an endpoint
/// returns with a body or a `Content-Type` passes untouched. Install it with
/// `app.with(RouterProblems)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RouterProblems;

#[tide::utils::async_trait]
impl<State: Clone + Send + Sync + 'static> Middleware<State> for RouterProblems {
    async fn handle(&self, request: tide::Request<State>, next: Next<'_, State>) -> tide::Result {
        let body_left = has_body(&request);
        let response = next.run(request).await;
        let bare = response.is_empty() == Some(true) && response.content_type().is_none();
        let detail = match response.status() {
            tide::StatusCode::NotFound if bare => NOT_FOUND_DETAIL,
            tide::StatusCode::MethodNotAllowed if bare => METHOD_NOT_ALLOWED_DETAIL,
            _ => return Ok(response),
        };
        let status = StatusCode::from_u16(response.status().into())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        trace!(
            status = status.as_u16(),
            "routing failure answered as a problem"
        );
        Ok(send(close_if(body_left, problem(status, detail))))
    }
}

enum BodyRead {
    TooLarge,
    Failed(std::io::Error),
}

async fn read_limited(body: tide::Body, limit: usize) -> Result<Bytes, BodyRead> {
    use async_std::io::ReadExt;

    // One byte past the limit tells a body over it from one exactly at it.
    let mut collected = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    body.take(cap)
        .read_to_end(&mut collected)
        .await
        .map_err(BodyRead::Failed)?;
    if collected.len() > limit {
        return Err(BodyRead::TooLarge);
    }
    Ok(Bytes::from(collected))
}

fn method_not_allowed_problem(allow: &'static str) -> Response<Bytes> {
    let mut response = if allow == "POST" {
        problem(StatusCode::METHOD_NOT_ALLOWED, METHOD_NOT_ALLOWED_DETAIL)
    } else {
        let detail = format!("this method is not allowed on this path; it accepts {allow}");
        problem(StatusCode::METHOD_NOT_ALLOWED, &detail)
    };
    response
        .headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    response
}

/// Whether the request may carry body bytes: a declared non-zero length, or chunked.
fn has_body<State>(request: &tide::Request<State>) -> bool {
    request.len() != Some(0)
}

/// Adds `Connection: close` to an answer given before the request body was read.
///
/// tide's HTTP/1 server discards the unread body before reading the next request, but it
/// can lose the first bytes of a request the client sends on the same connection right
/// after that body. Closing keeps the client from reusing the connection.
fn close_if(body_left: bool, mut response: Response<Bytes>) -> Response<Bytes> {
    if body_left {
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    response
}

fn problem(status: StatusCode, detail: &str) -> Response<Bytes> {
    DurableResponse::problem(status, detail).into_http()
}

/// Marks `response` `nosniff` and hands it to tide; a response tide cannot express becomes
/// a 500 problem.
fn send(mut response: Response<Bytes>) -> tide::Response {
    response.headers_mut().insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    match tide_response(response) {
        Ok(response) => response,
        Err(e) => {
            error!(error = %e, "durable response cannot be sent by tide");
            let detail = format!("the operation's response cannot be sent: {e}");
            let mut fallback = problem(StatusCode::INTERNAL_SERVER_ERROR, &detail);
            fallback.headers_mut().insert(
                http::header::X_CONTENT_TYPE_OPTIONS,
                http::HeaderValue::from_static("nosniff"),
            );
            // A problem the adapter builds is a known status with ASCII headers.
            tide_response(fallback).expect("a problem response converts")
        }
    }
}
