//! What a handler returns, what the library answers by itself, and which headers a replay
//! repeats.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use serde::Serialize;

use crate::store::StoredResponse;

/// Media type of the library's own error bodies (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Header set on every replayed response.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// The response of a durable handler: an `http::Response<Bytes>` with helpers.
///
/// ```
/// use cnerium_core::DurableResponse;
/// use http::StatusCode;
///
/// let created = DurableResponse::created(serde_json::json!({"ok": true}));
/// assert_eq!(created.status(), StatusCode::CREATED);
///
/// let refused = DurableResponse::bad_request("Missing required field: product_id");
/// assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
/// ```
#[derive(Clone, Debug)]
pub struct DurableResponse {
    inner: Response<Bytes>,
}

impl DurableResponse {
    /// A response with `status` and an empty body.
    pub fn new(status: StatusCode) -> Self {
        let mut inner = Response::new(Bytes::new());
        *inner.status_mut() = status;
        Self { inner }
    }

    /// A JSON response: `value` serialized, with `Content-Type: application/json`.
    ///
    /// A value that cannot be serialized (a map with non-string keys) becomes a 500
    /// problem, never a panic.
    pub fn json(status: StatusCode, value: impl Serialize) -> Self {
        match serde_json::to_vec(&value) {
            Ok(body) => Self::with_body(status, "application/json", exact(body)),
            Err(e) => Self::problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("the handler's response could not be serialized as JSON: {e}"),
            ),
        }
    }

    /// A plain-text response with `Content-Type: text/plain; charset=utf-8`.
    pub fn text(status: StatusCode, text: impl Into<String>) -> Self {
        Self::with_body(status, "text/plain; charset=utf-8", text.into())
    }

    /// 200 with a JSON body.
    pub fn ok(value: impl Serialize) -> Self {
        Self::json(StatusCode::OK, value)
    }

    /// 201 with a JSON body.
    pub fn created(value: impl Serialize) -> Self {
        Self::json(StatusCode::CREATED, value)
    }

    /// 400 as `application/problem+json` with `detail` telling the client what to fix.
    pub fn bad_request(detail: &str) -> Self {
        Self::problem(StatusCode::BAD_REQUEST, detail)
    }

    /// 409 as `application/problem+json`.
    pub fn conflict(detail: &str) -> Self {
        Self::problem(StatusCode::CONFLICT, detail)
    }

    /// 500 as `application/problem+json`.
    pub fn internal_error(detail: &str) -> Self {
        Self::problem(StatusCode::INTERNAL_SERVER_ERROR, detail)
    }

    /// An `application/problem+json` response of type `about:blank`: the title is the
    /// status's reason phrase, `detail` says what happened.
    pub fn problem(status: StatusCode, detail: &str) -> Self {
        let body = ProblemBody {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail,
        };
        Self::with_body(status, PROBLEM_JSON, encode_problem(&body))
    }

    /// Adds a header, keeping any of the same name already set.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.inner.headers_mut().append(name, value);
        self
    }

    /// Adds a header given as strings; fails when either is not valid in HTTP.
    pub fn try_with_header(self, name: &str, value: &str) -> Result<Self, http::Error> {
        let name = HeaderName::try_from(name)?;
        let value = HeaderValue::try_from(value)?;
        Ok(self.with_header(name, value))
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.inner.status()
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        self.inner.headers()
    }

    /// The headers, to change.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        self.inner.headers_mut()
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        self.inner.body()
    }

    /// The underlying response.
    pub fn into_http(self) -> Response<Bytes> {
        self.inner
    }

    fn with_body(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        let mut inner = Response::new(body.into());
        *inner.status_mut() = status;
        inner
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        Self { inner }
    }
}

impl From<Response<Bytes>> for DurableResponse {
    fn from(inner: Response<Bytes>) -> Self {
        Self { inner }
    }
}

impl From<DurableResponse> for Response<Bytes> {
    fn from(response: DurableResponse) -> Self {
        response.inner
    }
}

#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

fn encode_problem(body: &ProblemBody<'_>) -> Vec<u8> {
    // A struct of strings and an integer always serializes.
    exact(serde_json::to_vec(body).expect("serializing a problem body"))
}

/// Gives back the spare capacity of a serialized body: the body may be stored for the
/// whole retention, and serializing grows its buffer by doubling (a 200-byte body holds
/// 256 bytes otherwise).
fn exact(mut body: Vec<u8>) -> Vec<u8> {
    body.shrink_to_fit();
    body
}

/// The cases in which the library answers by itself, each with a stable problem `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemKind {
    /// No `Idempotency-Key` header.
    MissingKey,
    /// The key header is malformed or repeated.
    InvalidKey,
    /// The key was used before with another request.
    KeyReused,
    /// The first request with this key is still running.
    RequestInProgress,
    /// The body is larger than the route allows.
    BodyTooLarge,
    /// The body could not be read: shorter than its declared length, or badly chunked.
    BodyUnreadable,
    /// The store could not be reached or failed.
    StoreUnavailable,
    /// The handler returned an error or panicked.
    HandlerFailed,
    /// The handler outlived its lease and another request took the key over.
    LeaseExpired,
    /// The first request completed, but its response was too large to store for replay.
    ResponseNotStored,
}

impl ProblemKind {
    /// The problem `type` URI, stable across versions.
    pub fn type_uri(self) -> &'static str {
        match self {
            Self::MissingKey => "urn:cnerium:problem:missing-idempotency-key",
            Self::InvalidKey => "urn:cnerium:problem:invalid-idempotency-key",
            Self::KeyReused => "urn:cnerium:problem:idempotency-key-reused",
            Self::RequestInProgress => "urn:cnerium:problem:request-in-progress",
            Self::BodyTooLarge => "urn:cnerium:problem:body-too-large",
            Self::BodyUnreadable => "urn:cnerium:problem:body-unreadable",
            Self::StoreUnavailable => "urn:cnerium:problem:store-unavailable",
            Self::HandlerFailed => "urn:cnerium:problem:handler-failed",
            Self::LeaseExpired => "urn:cnerium:problem:lease-expired",
            Self::ResponseNotStored => "urn:cnerium:problem:response-not-stored",
        }
    }

    /// A short, fixed summary of the case.
    pub fn title(self) -> &'static str {
        match self {
            Self::MissingKey => "Idempotency-Key header is missing",
            Self::InvalidKey => "Idempotency-Key header is invalid",
            Self::KeyReused => "Idempotency-Key was already used for another request",
            Self::RequestInProgress => "A request with this Idempotency-Key is in progress",
            Self::BodyTooLarge => "Request body is too large",
            Self::BodyUnreadable => "Request body could not be read",
            Self::StoreUnavailable => "Idempotency store is unavailable",
            Self::HandlerFailed => "The operation failed",
            Self::LeaseExpired => "The operation outlived its claim",
            Self::ResponseNotStored => "The response was too large to store",
        }
    }
}

/// Builds the `application/problem+json` response the library sends for `kind`.
pub fn problem_response(kind: ProblemKind, status: StatusCode, detail: &str) -> Response<Bytes> {
    let body = ProblemBody {
        kind: kind.type_uri(),
        title: kind.title(),
        status: status.as_u16(),
        detail,
    };
    let mut response = Response::new(Bytes::from(encode_problem(&body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

/// Which response headers a store keeps and a replay repeats.
///
/// The default list holds `content-type`, `content-encoding`, `content-language`,
/// `content-location`, `content-disposition`, `location`, `etag`, `last-modified`, `link`,
/// `cache-control` and `vary`: what a client needs to read the stored body as it was
/// first sent, and what names or describes the resource it created. Applications can add names;
/// credentials (`set-cookie`, `www-authenticate`, `authorization` and the like) are never
/// kept, even when added.
#[derive(Clone, Debug)]
pub struct ReplayHeaders {
    names: Vec<HeaderName>,
}

impl Default for ReplayHeaders {
    fn default() -> Self {
        Self {
            names: vec![
                header::CONTENT_TYPE,
                header::CONTENT_ENCODING,
                header::CONTENT_LANGUAGE,
                header::CONTENT_LOCATION,
                header::CONTENT_DISPOSITION,
                header::LOCATION,
                header::ETAG,
                header::LAST_MODIFIED,
                header::LINK,
                header::CACHE_CONTROL,
                header::VARY,
            ],
        }
    }
}

impl ReplayHeaders {
    /// Also keeps `name` (unless it carries credentials).
    pub fn allow(mut self, name: HeaderName) -> Self {
        if !is_credential(&name) && !self.names.contains(&name) {
            self.names.push(name);
        }
        self
    }

    /// Whether a header of this name is kept.
    pub fn keeps(&self, name: &HeaderName) -> bool {
        !is_credential(name) && self.names.contains(name)
    }

    /// The part of a response a store keeps.
    pub fn to_stored(&self, response: &Response<Bytes>) -> StoredResponse {
        // Sized exactly, as the store keeps it for the whole retention: collecting from a
        // filter reserves room for four headers when one is kept.
        let kept = |(name, _): &(&HeaderName, &HeaderValue)| self.keeps(name);
        let mut headers = Vec::with_capacity(response.headers().iter().filter(kept).count());
        headers.extend(
            response
                .headers()
                .iter()
                .filter(kept)
                .map(|(name, value)| (name.clone(), value.clone())),
        );
        StoredResponse {
            status: response.status(),
            headers,
            body: response.body().clone(),
        }
    }
}

/// Headers that carry or request credentials; never stored, never replayed.
fn is_credential(name: &HeaderName) -> bool {
    name == header::SET_COOKIE
        || name == header::WWW_AUTHENTICATE
        || name == header::AUTHORIZATION
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || name == header::COOKIE
        || name.as_str() == "set-cookie2"
        || name.as_str() == "authentication-info"
        || name.as_str() == "proxy-authentication-info"
}

/// Rebuilds the response a replay sends: the stored status, headers and body, marked with
/// `Idempotent-Replayed: true`.
pub fn replay_response(stored: StoredResponse) -> Response<Bytes> {
    let mut response = Response::new(stored.body);
    *response.status_mut() = stored.status;
    let headers = response.headers_mut();
    // The stored headers plus the replay marker, without growing the map twice.
    headers.reserve(stored.headers.len() + 1);
    for (name, value) in stored.headers {
        headers.append(name, value);
    }
    headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_never_kept_even_when_allowed() {
        let headers = ReplayHeaders::default()
            .allow(header::SET_COOKIE)
            .allow(HeaderName::from_static("x-request-id"));
        assert!(!headers.keeps(&header::SET_COOKIE));
        assert!(headers.keeps(&HeaderName::from_static("x-request-id")));
        assert!(headers.keeps(&header::LOCATION));
        assert!(!headers.keeps(&header::WWW_AUTHENTICATE));
    }

    #[test]
    fn stored_response_keeps_allowed_headers_only() {
        let response = DurableResponse::created(serde_json::json!({"id": 1}))
            .with_header(header::LOCATION, HeaderValue::from_static("/orders/1"))
            .with_header(header::SET_COOKIE, HeaderValue::from_static("s=1"))
            .with_header(header::ETAG, HeaderValue::from_static("\"v1\""))
            .into_http();
        let stored = ReplayHeaders::default().to_stored(&response);
        let names: Vec<_> = stored.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-type", "location", "etag"]);

        let replay = replay_response(stored.clone());
        assert_eq!(replay.status(), StatusCode::CREATED);
        assert_eq!(replay.body(), response.body());
        assert_eq!(replay.headers()[IDEMPOTENT_REPLAYED], "true");
        assert!(replay.headers().get(header::SET_COOKIE).is_none());
    }

    #[test]
    fn bad_request_is_problem_json_with_the_detail() {
        let response = DurableResponse::bad_request("Missing required field: product_id");
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["status"], 400);
        assert_eq!(body["detail"], "Missing required field: product_id");
    }
}
