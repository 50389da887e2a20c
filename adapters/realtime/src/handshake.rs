//! The opening handshake's request head, checked before tungstenite sees it.
//!
//! tungstenite answers only the requests the handshake callback refuses; one it cannot
//! upgrade at all (no `Upgrade` header, another method, another WebSocket version) ends
//! with a closed connection and not a word to the client. So the standalone listeners read
//! the head themselves, answer a request that cannot be upgraded with an HTTP error, and
//! hand an acceptable head to tungstenite through [`Prefixed`], which reads it again. The
//! warp route runs the same [`check_upgrade`] on the request warp has parsed.

use std::borrow::Cow;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};

use async_tungstenite::tungstenite::handshake::headers::MAX_HEADERS;
use async_tungstenite::tungstenite::handshake::server::{self, Request};
use bytes::Bytes;
use cnerium_core::DurableResponse;
use futures_io::{AsyncRead, AsyncWrite};
use futures_util::future;
use futures_util::io::{AsyncReadExt, AsyncWriteExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};
use tracing::debug;

use crate::connection::{CLOSE_TIMEOUT, Sleep};

/// The largest request head a client may send, request line and headers together.
const MAX_HEAD_SIZE: usize = 16 * 1024;

/// Bytes asked of the socket per read while the head is incomplete.
const READ_CHUNK: usize = 2048;

/// The most a refused client may still send while its answer goes out; past that the
/// connection is simply closed.
const DRAIN_LIMIT: usize = 64 * 1024;

/// The only `Sec-WebSocket-Version` the server speaks.
const WEBSOCKET_VERSION: &str = "13";

/// A request that is not an acceptable WebSocket handshake, and the HTTP answer it gets:
/// an `application/problem+json` body, `Connection: close`, and a header naming what would
/// be accepted where there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BadHandshake {
    status: StatusCode,
    detail: Cow<'static, str>,
    /// `Allow`, `Upgrade` or `Sec-WebSocket-Version`, with the value the server accepts.
    hint: Option<(HeaderName, &'static str)>,
    /// False for a `HEAD` request, whose answer carries no content.
    with_body: bool,
}

impl BadHandshake {
    fn new(status: StatusCode, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            detail: detail.into(),
            hint: None,
            with_body: true,
        }
    }

    pub(crate) fn bad_request(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    fn not_found(path: &str) -> Self {
        let detail = format!("no WebSocket endpoint at this path; connect to {path}");
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    fn method_not_allowed() -> Self {
        let detail = "a WebSocket handshake is a GET request";
        Self::new(StatusCode::METHOD_NOT_ALLOWED, detail).hint(header::ALLOW, "GET")
    }

    fn upgrade_required() -> Self {
        let detail = "this endpoint serves WebSocket connections only; send the request with \
                      `Connection: Upgrade` and `Upgrade: websocket`";
        Self::new(StatusCode::UPGRADE_REQUIRED, detail).hint(header::UPGRADE, "websocket")
    }

    fn unsupported_version() -> Self {
        let detail =
            "the server speaks WebSocket version 13 only; send `Sec-WebSocket-Version: 13`";
        Self::new(StatusCode::UPGRADE_REQUIRED, detail)
            .hint(header::SEC_WEBSOCKET_VERSION, WEBSOCKET_VERSION)
    }

    fn head_too_large() -> Self {
        let detail = format!(
            "the request line and headers exceed {MAX_HEAD_SIZE} bytes or {MAX_HEADERS} headers"
        );
        Self::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, detail)
    }

    fn hint(mut self, name: HeaderName, value: &'static str) -> Self {
        self.hint = Some((name, value));
        self
    }

    /// The answer to a request of `method`: without content for `HEAD`.
    fn for_method(mut self, method: &Method) -> Self {
        self.with_body = method != Method::HEAD;
        self
    }

    /// The status the client gets.
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// What the client is told to fix.
    pub(crate) fn detail(&self) -> &str {
        &self.detail
    }

    /// The full HTTP answer.
    pub(crate) fn to_response(&self) -> http::Response<Bytes> {
        let mut response = DurableResponse::problem(self.status, &self.detail).into_http();
        let length = response.body().len();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        // A response that names an `Upgrade` also lists it as a connection option.
        let connection = match &self.hint {
            Some((name, _)) if name == header::UPGRADE => "upgrade, close",
            _ => "close",
        };
        headers.insert(header::CONNECTION, HeaderValue::from_static(connection));
        if let Some((name, value)) = &self.hint {
            headers.insert(name.clone(), HeaderValue::from_static(value));
        }
        if !self.with_body {
            *response.body_mut() = Bytes::new();
        }
        response
    }

    /// The answer as bytes on the wire.
    fn to_bytes(&self) -> Vec<u8> {
        let (parts, body) = self.to_response().into_parts();
        let mut bytes = Vec::with_capacity(256 + body.len());
        server::write_response(&mut bytes, &http::Response::from_parts(parts, ()))
            .expect("writing into a Vec cannot fail and every header value is visible ASCII");
        bytes.extend_from_slice(&body);
        bytes
    }

    /// Writes the answer to `io` and closes the connection.
    ///
    /// After the answer the write side is shut down and whatever the client still sends
    /// (a request body, say) is read and dropped until it closes too, for at most
    /// [`CLOSE_TIMEOUT`]: closing a socket with unread input resets the connection, and
    /// the client could lose the answer.
    pub(crate) async fn answer<S>(&self, io: &mut S, sleep: Sleep)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if let Err(error) = io.write_all(&self.to_bytes()).await {
            debug!(%error, "could not write the handshake refusal");
            return;
        }
        if io.close().await.is_err() {
            return;
        }

        let drain = async {
            let mut scratch = [0; READ_CHUNK];
            let mut drained = 0;
            while drained < DRAIN_LIMIT {
                match io.read(&mut scratch).await {
                    Ok(0) | Err(_) => break,
                    Ok(read) => drained += read,
                }
            }
        };
        future::select(pin!(drain), sleep(CLOSE_TIMEOUT)).await;
    }
}

/// Why no request head came to be upgraded.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// There is nobody to answer: the client closed before sending anything, or the
    /// socket failed.
    Gone,
    /// The request gets an HTTP error.
    Bad(BadHandshake),
}

impl From<BadHandshake> for HeadError {
    fn from(bad: BadHandshake) -> Self {
        Self::Bad(bad)
    }
}

/// Reads a request head from `io`, at most [`MAX_HEAD_SIZE`] bytes, and checks that it
/// asks to upgrade `path` to a WebSocket.
///
/// Returns the bytes read, exactly the head, for tungstenite to read again: a request it
/// lets through is one tungstenite accepts, up to the handshake callback. The caller bounds
/// the time this takes.
pub(crate) async fn read_upgrade<S>(io: &mut S, path: &str) -> Result<Vec<u8>, HeadError>
where
    S: AsyncRead + Unpin,
{
    let mut head = Vec::with_capacity(READ_CHUNK);
    let mut chunk = [0; READ_CHUNK];
    loop {
        let room = READ_CHUNK.min(MAX_HEAD_SIZE - head.len());
        let read = match io.read(&mut chunk[..room]).await {
            Ok(0) if head.is_empty() => return Err(HeadError::Gone),
            Ok(0) => {
                let detail = "the connection closed before the request head was complete";
                return Err(BadHandshake::bad_request(detail).into());
            }
            Ok(read) => read,
            Err(error) => {
                debug!(%error, "reading the handshake request failed");
                return Err(HeadError::Gone);
            }
        };
        head.extend_from_slice(&chunk[..read]);

        let Some((length, request)) = parse_head(&head)? else {
            if head.len() >= MAX_HEAD_SIZE {
                return Err(BadHandshake::head_too_large().into());
            }
            continue;
        };
        check_upgrade(&request, path).map_err(|bad| bad.for_method(request.method()))?;
        if length < head.len() {
            let detail = "the client sent data after the handshake request before it was answered";
            return Err(BadHandshake::bad_request(detail).into());
        }
        // The checks above are meant to be at least as strict as tungstenite's; should they
        // ever let through what it refuses, the client still gets an answer.
        if let Err(error) = server::create_response(&request) {
            let detail = format!("the handshake request was refused: {error}");
            return Err(BadHandshake::bad_request(detail).into());
        }
        return Ok(head);
    }
}

/// The request in `head` once it is complete, with the length of its head; `None` while
/// more bytes are needed.
fn parse_head(head: &[u8]) -> Result<Option<(usize, Request)>, BadHandshake> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut raw = httparse::Request::new(&mut fields);
    let length = match raw.parse(head) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(BadHandshake::head_too_large()),
        Err(error) => {
            let detail = format!("the request is not valid HTTP/1.1: {error}");
            return Err(BadHandshake::bad_request(detail));
        }
    };

    let (Some(method), Some(target), Some(version)) = (raw.method, raw.path, raw.version) else {
        // httparse fills all three in a complete head.
        return Err(BadHandshake::bad_request("the request line is incomplete"));
    };
    let invalid = |what: &str| BadHandshake::bad_request(format!("the request {what} is invalid"));
    let mut request = Request::new(());
    *request.method_mut() = Method::from_bytes(method.as_bytes()).map_err(|_| invalid("method"))?;
    *request.uri_mut() = target.parse::<Uri>().map_err(|_| invalid("target"))?;
    *request.version_mut() = if version == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    for field in raw.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes());
        let value = HeaderValue::from_bytes(field.value);
        let (Ok(name), Ok(value)) = (name, value) else {
            return Err(invalid("header"));
        };
        request.headers_mut().append(name, value);
    }
    Ok(Some((length, request)))
}

/// Checks that `request` asks to upgrade `path` to a WebSocket, in the order a client would
/// fix its mistakes: a valid HTTP/1.1 request, then the path, the method, the upgrade
/// itself, the WebSocket version, and the key.
pub(crate) fn check_upgrade(request: &Request, path: &str) -> Result<(), BadHandshake> {
    if request.version() != Version::HTTP_11 {
        return Err(BadHandshake::bad_request(
            "a WebSocket handshake is an HTTP/1.1 request",
        ));
    }
    let headers = request.headers();
    if only_value(headers, &header::HOST).is_none() {
        return Err(BadHandshake::bad_request(
            "an HTTP/1.1 request carries exactly one Host header",
        ));
    }

    if request.uri().path() != path {
        return Err(BadHandshake::not_found(path));
    }
    if request.method() != Method::GET {
        return Err(BadHandshake::method_not_allowed());
    }

    // `Upgrade` counts only when `Connection` lists it; otherwise this is a plain request.
    let upgrade = only_value(headers, &header::UPGRADE)
        .is_some_and(|protocol| protocol.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if !upgrade || !lists_token(headers, &header::CONNECTION, "upgrade") {
        return Err(BadHandshake::upgrade_required());
    }
    if only_value(headers, &header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|version| version != WEBSOCKET_VERSION)
    {
        return Err(BadHandshake::unsupported_version());
    }
    if !only_value(headers, &header::SEC_WEBSOCKET_KEY).is_some_and(|key| is_nonce(key.as_bytes()))
    {
        return Err(BadHandshake::bad_request(
            "Sec-WebSocket-Key must be one header holding 16 bytes in base64",
        ));
    }
    Ok(())
}

/// The value of the `name` header when it is sent exactly once.
fn only_value<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    values.next().is_none().then_some(value)
}

/// Whether a `name` header lists `token` among its comma-separated values, ignoring case.
fn lists_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|listed| listed.trim().eq_ignore_ascii_case(token))
}

/// Whether `key` has the form of a client's nonce: 16 bytes in base64, 24 characters with
/// two of padding. The unused low bits of the last character are not checked, as common
/// clients and examples do not always clear them.
fn is_nonce(key: &[u8]) -> bool {
    let Some(digits) = key.strip_suffix(b"==") else {
        return false;
    };
    digits.len() == 22
        && digits
            .iter()
            .all(|&byte| byte.is_ascii_alphanumeric() || byte == b'+' || byte == b'/')
}

/// A stream that yields the bytes already read from `inner` before reading on, and writes
/// straight to it, so tungstenite reads the handshake head this module has checked.
#[derive(Debug)]
pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    /// How much of `prefix` was read.
    position: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            position: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let rest = &this.prefix[this.position..];
        if rest.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }

        let length = rest.len().min(buf.len());
        buf[..length].copy_from_slice(&rest[..length]);
        this.position += length;
        if this.position == this.prefix.len() {
            // The connection may live for hours; the head it started with need not.
            this.prefix = Vec::new();
            this.position = 0;
        }
        Poll::Ready(Ok(length))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;
    use futures_util::io::Cursor;

    use super::*;

    const UPGRADE: &str = "GET /ws?room=a HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
                           Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                           Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    /// `UPGRADE` with the header `name` removed, then `extra` header lines added.
    fn upgrade_with(name: &str, extra: &[&str]) -> String {
        let mut lines: Vec<&str> = UPGRADE
            .trim_end()
            .split("\r\n")
            .filter(|line| !line.to_ascii_lowercase().starts_with(&format!("{name}:")))
            .collect();
        lines.extend_from_slice(extra);
        format!("{}\r\n\r\n", lines.join("\r\n"))
    }

    fn check(head: &str) -> Result<(), BadHandshake> {
        let (_, request) = parse_head(head.as_bytes())?.expect("a complete head");
        check_upgrade(&request, "/ws")
    }

    fn status_of(head: &str) -> StatusCode {
        check(head).expect_err("a refusal").status()
    }

    /// Reads a head from `bytes` as a socket that has nothing more to say.
    fn read(bytes: &[u8]) -> Result<Vec<u8>, HeadError> {
        let mut io = Cursor::new(bytes.to_vec());
        read_upgrade(&mut io, "/ws")
            .now_or_never()
            .expect("reads from memory never wait")
    }

    fn refusal(result: Result<Vec<u8>, HeadError>) -> BadHandshake {
        match result {
            Err(HeadError::Bad(bad)) => bad,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_websocket_upgrade_passes() {
        assert_eq!(check(UPGRADE), Ok(()));
        let listed = upgrade_with("connection", &["Connection: keep-alive, Upgrade"]);
        assert_eq!(check(&listed), Ok(()));
        let capitalized = upgrade_with("upgrade", &["Upgrade: WebSocket"]);
        assert_eq!(check(&capitalized), Ok(()));
        let unpadded_bits = upgrade_with(
            "sec-websocket-key",
            &["Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw=="],
        );
        assert_eq!(check(&unpadded_bits), Ok(()));
    }

    #[test]
    fn a_head_is_incomplete_until_its_empty_line() {
        let cut = &UPGRADE.as_bytes()[..UPGRADE.len() - 2];
        assert_eq!(parse_head(cut).map(|parsed| parsed.is_some()), Ok(false));
        let (length, request) = parse_head(UPGRADE.as_bytes()).unwrap().unwrap();
        assert_eq!(length, UPGRADE.len());
        assert_eq!(request.uri(), "/ws?room=a");
    }

    #[test]
    fn bytes_that_are_not_http_are_a_bad_request() {
        let garbage = parse_head(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").unwrap_err();
        assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
        let bad_name = parse_head(b"GET /ws HTTP/1.1\r\nHo st: x\r\n\r\n").unwrap_err();
        assert_eq!(bad_name.status(), StatusCode::BAD_REQUEST);
        let bad_version = parse_head(b"GET /ws HTTP/2.0\r\nHost: x\r\n\r\n").unwrap_err();
        assert_eq!(bad_version.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn more_headers_than_tungstenite_reads_are_too_large() {
        let many: Vec<String> = (0..=MAX_HEADERS).map(|n| format!("X-{n}: y")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let head = upgrade_with("x-none", &many);
        let bad = parse_head(head.as_bytes()).unwrap_err();
        assert_eq!(bad.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[test]
    fn http_1_0_and_a_missing_or_doubled_host_are_bad_requests() {
        let old = UPGRADE.replace("HTTP/1.1", "HTTP/1.0");
        assert_eq!(status_of(&old), StatusCode::BAD_REQUEST);
        assert_eq!(
            status_of(&upgrade_with("host", &[])),
            StatusCode::BAD_REQUEST
        );
        let doubled = upgrade_with("x-none", &["Host: other"]);
        assert_eq!(status_of(&doubled), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn another_path_is_not_found_before_the_method_is_looked_at() {
        let post = UPGRADE.replace("GET /ws?room=a", "POST /elsewhere");
        let bad = check(&post).unwrap_err();
        assert_eq!(bad.status(), StatusCode::NOT_FOUND);
        assert!(bad.detail().contains("/ws"), "{}", bad.detail());
    }

    #[test]
    fn another_method_is_not_allowed_and_names_get() {
        for method in ["POST", "PUT", "HEAD", "OPTIONS"] {
            let head = UPGRADE.replace("GET ", &format!("{method} "));
            let bad = check(&head).unwrap_err();
            assert_eq!(bad.status(), StatusCode::METHOD_NOT_ALLOWED, "{method}");
            assert_eq!(bad.to_response().headers()[header::ALLOW], "GET");
        }
    }

    #[test]
    fn a_request_not_asking_for_websocket_requires_an_upgrade() {
        let plain = "GET /ws HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n";
        let upgrade_alone = upgrade_with("connection", &[]);
        let connection_alone = upgrade_with("upgrade", &[]);
        let other_protocol = upgrade_with("upgrade", &["Upgrade: h2c"]);
        let two_upgrades = upgrade_with("x-none", &["Upgrade: websocket"]);
        let no_upgrade_token = upgrade_with("connection", &["Connection: keep-alive"]);
        for head in [
            plain,
            &upgrade_alone,
            &connection_alone,
            &other_protocol,
            &two_upgrades,
            &no_upgrade_token,
        ] {
            let bad = check(head).unwrap_err();
            assert_eq!(bad.status(), StatusCode::UPGRADE_REQUIRED, "{head}");
            let response = bad.to_response();
            assert_eq!(response.headers()[header::UPGRADE], "websocket");
            assert_eq!(response.headers()[header::CONNECTION], "upgrade, close");
        }
    }

    #[test]
    fn another_or_missing_websocket_version_requires_version_13() {
        let version_8 = upgrade_with("sec-websocket-version", &["Sec-WebSocket-Version: 8"]);
        let missing = upgrade_with("sec-websocket-version", &[]);
        for head in [&version_8, &missing] {
            let bad = check(head).unwrap_err();
            assert_eq!(bad.status(), StatusCode::UPGRADE_REQUIRED, "{head}");
            let response = bad.to_response();
            assert_eq!(response.headers()[header::SEC_WEBSOCKET_VERSION], "13");
            assert_eq!(response.headers()[header::CONNECTION], "close");
        }
    }

    #[test]
    fn a_missing_or_malformed_key_is_a_bad_request() {
        let key = |value: &str| {
            upgrade_with(
                "sec-websocket-key",
                &[&format!("Sec-WebSocket-Key: {value}")],
            )
        };
        let twice = upgrade_with("x-none", &["Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=="]);
        for head in [
            upgrade_with("sec-websocket-key", &[]),
            key("abc"),
            key("dGhlIHNhbXBsZSBub25jZQ"),
            key("dGhlIHNhbXBsZSBub25j"),
            key("dGhlIHNhbXBsZSBub25j!Q=="),
            key("dGhlIHNhbXBsZSBub25jZQ==AAAA"),
            twice,
        ] {
            assert_eq!(status_of(&head), StatusCode::BAD_REQUEST, "{head}");
        }
    }

    #[test]
    fn a_refusal_is_a_problem_that_closes_the_connection() {
        let response = BadHandshake::method_not_allowed().to_response();
        let headers = response.headers();
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!(headers[header::CONNECTION], "close");
        assert_eq!(
            headers[header::CONTENT_LENGTH],
            response.body().len().to_string()
        );
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["status"], 405);
        assert_eq!(body["title"], "Method Not Allowed");
        assert!(body["detail"].is_string());
    }

    #[test]
    fn a_refused_head_request_gets_no_content() {
        let head = UPGRADE.replace("GET ", "HEAD ");
        let bytes = refusal(read(head.as_bytes())).to_bytes();
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }

    #[test]
    fn reading_returns_exactly_the_checked_head() {
        assert_eq!(read(UPGRADE.as_bytes()).unwrap(), UPGRADE.as_bytes());
    }

    #[test]
    fn data_sent_after_the_head_before_the_answer_is_a_bad_request() {
        let pipelined = format!("{UPGRADE}\u{81}\u{80}");
        let bad = refusal(read(pipelined.as_bytes()));
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn a_head_over_the_size_limit_is_too_large() {
        let padding = format!("X-Padding: {}", "p".repeat(MAX_HEAD_SIZE));
        let head = upgrade_with("x-none", &[&padding]);
        let bad = refusal(read(head.as_bytes()));
        assert_eq!(bad.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[test]
    fn a_connection_closed_early_is_gone_or_a_bad_request() {
        assert!(matches!(read(b""), Err(HeadError::Gone)));
        let cut = refusal(read(&UPGRADE.as_bytes()[..20]));
        assert_eq!(cut.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn prefixed_reads_the_prefix_then_the_stream() {
        let mut io = Prefixed::new(b"head".to_vec(), Cursor::new(b" and more".to_vec()));
        let mut first = [0; 3];
        let read = io.read(&mut first).now_or_never().unwrap().unwrap();
        assert_eq!(&first[..read], b"hea");
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).now_or_never().unwrap().unwrap();
        assert_eq!(rest, b"d and more");
        assert!(io.prefix.is_empty() && io.prefix.capacity() == 0);
    }
}
