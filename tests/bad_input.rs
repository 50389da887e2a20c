//! Bad input against the running `durable_orders_realtime` example, over real sockets.
//!
//! Two tables, one for HTTP and one for the realtime WebSocket endpoint, each run in order
//! against one service process. An HTTP row is a request sent byte for byte on a new TCP
//! connection, so header bytes that no client library would send get through; a WebSocket
//! row is a session of frames. Each row names the exact answer it must get, and after each
//! row the test checks that
//!
//! - what the row may have stored is as documented: a request refused before the handler
//!   leaves its key new (a good order with it gets a fresh 201), and an answer of the
//!   order handler itself is stored and replays, like any handler response;
//! - a good order with a fresh key still gets its 201, and a watching WebSocket client
//!   receives that order's event and none from the row;
//! - the process still runs and its log reports no panic.
//!
//! The last tests run a service of their own, in this file, for what the orders example
//! cannot show: which response headers a replay repeats, and a response too large to
//! store.

#![cfg(all(feature = "warp", feature = "realtime", feature = "file-store"))]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cnerium::stores::MemoryStore;
use cnerium::{DurableRequest, DurableResponse, Engine, SystemClock};
use futures_util::{SinkExt, StreamExt};
use http::header::{
    AUTHORIZATION, CONTENT_TYPE, ETAG, HeaderValue, LOCATION, SET_COOKIE, WWW_AUTHENTICATE,
};
use serde_json::Value;
use support::{
    RawResponse, Service, WsClient, client, panics_in, raw_exchange, raw_exchange_half_closed,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const EXAMPLE: &str = "durable_orders_realtime";

const ORDER: &[u8] = br#"{"product_id":"p1","quantity":2}"#;
const ORDER_P2: &[u8] = br#"{"product_id":"p2","quantity":1}"#;

const INVALID_KEY: &str = "urn:cnerium:problem:invalid-idempotency-key";
const MISSING_KEY: &str = "urn:cnerium:problem:missing-idempotency-key";
const BODY_TOO_LARGE: &str = "urn:cnerium:problem:body-too-large";
const KEY_REUSED: &str = "urn:cnerium:problem:idempotency-key-reused";
const NOT_STORED: &str = "urn:cnerium:problem:response-not-stored";
const ABOUT_BLANK: &str = "about:blank";

const NOT_AN_OBJECT: &str = "Request body must be a JSON object";
const NO_PRODUCT: &str = "Missing required field: product_id";
const BAD_QUANTITY: &str = "Field quantity must be greater than zero";

/// How long any single expectation may take.
const DEADLINE: Duration = Duration::from_secs(10);

/// The route's default body limit, 1 MiB; the oversized bodies are twice that.
const OVER_LIMIT: usize = 2 * 1024 * 1024;

/// The realtime endpoint's default frame limit, 64 KiB.
const FRAME_LIMIT: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------
// The HTTP table.

/// What the service must answer to a row's request.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// A problem answered by the library or the adapter: status, `type`, and a phrase the
    /// `detail` holds.
    Problem(u16, &'static str, &'static str),
    /// The order handler's own 400, with this `detail`.
    Invalid(&'static str),
    /// hyper refused the request before any route saw it: this status, an empty body,
    /// the connection closed.
    Refused(u16),
    /// A 405 problem with `Allow: POST`; a HEAD answer has the head only.
    MethodNotAllowed { head: bool },
    /// A 404 problem for a path no route serves.
    NotFound,
    /// The order was created: 201 with `ord_<key>`.
    Created(&'static str),
}

/// What a row must have left behind under its key.
#[derive(Clone, Copy, Debug)]
enum Left {
    /// The row names no usable key: nothing to look up.
    NoKey,
    /// Refused before the handler: a good order with this key gets a fresh 201.
    KeyStaysNew(&'static str),
    /// The handler's answer is stored: the same request replays it byte for byte, and
    /// another body with this key is a 409.
    AnswerStored(&'static str),
    /// The order was created: a good order with this key, its header spelled in another
    /// case and quoted, replays it.
    OrderStored(&'static str),
}

struct HttpRow {
    name: &'static str,
    request: Vec<u8>,
    /// Shut the write side down once the request is sent, as a client giving up does.
    half_close: bool,
    answer: Answer,
    left: Left,
}

fn row(name: &'static str, request: Vec<u8>, answer: Answer, left: Left) -> HttpRow {
    HttpRow {
        name,
        request,
        half_close: false,
        answer,
        left,
    }
}

fn half_closed(name: &'static str, request: Vec<u8>, answer: Answer, left: Left) -> HttpRow {
    HttpRow {
        half_close: true,
        ..row(name, request, answer, left)
    }
}

/// A request with `Connection: close`: the request line, `head` lines (each ending in
/// CRLF), a `Content-Length` for `body` when `content_length` is set, then `body`.
fn request(line: &str, head: &[&[u8]], content_length: bool, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{line}\r\nHost: test\r\nConnection: close\r\n").into_bytes();
    for header in head {
        out.extend_from_slice(header);
    }
    if content_length {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// `POST /orders` with a JSON content type, the given key header value and body.
fn post(key_value: &[u8], body: &[u8]) -> Vec<u8> {
    post_with(&[&key_line(key_value)], body)
}

/// `POST /orders` with a JSON content type, `head` lines and `body`.
fn post_with(head: &[&[u8]], body: &[u8]) -> Vec<u8> {
    let mut lines: Vec<&[u8]> = vec![b"Content-Type: application/json\r\n"];
    lines.extend_from_slice(head);
    request("POST /orders HTTP/1.1", &lines, true, body)
}

fn key_line(value: &[u8]) -> Vec<u8> {
    [b"Idempotency-Key: ".as_slice(), value, b"\r\n"].concat()
}

/// `POST /orders` with a chunked body, no `Content-Length`.
fn post_chunked(key: &str, body: &[u8]) -> Vec<u8> {
    let head = format!(
        "POST /orders HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Content-Type: application/json\r\nIdempotency-Key: {key}\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    let mut out = head.into_bytes();
    for chunk in body.chunks(64 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// An order whose JSON is `{"product_id":"p1","quantity":<quantity>}`.
fn with_quantity(quantity: &str) -> Vec<u8> {
    format!(r#"{{"product_id":"p1","quantity":{quantity}}}"#).into_bytes()
}

/// An order whose JSON is `{"product_id":<product>,"quantity":1}`.
fn with_product(product: &str) -> Vec<u8> {
    format!(r#"{{"product_id":{product},"quantity":1}}"#).into_bytes()
}

fn http_rows() -> Vec<HttpRow> {
    use Answer::*;
    use Left::*;

    let bare_rule = Problem(400, INVALID_KEY, "a bare key is visible ASCII");
    let bad_quoting = Problem(400, INVALID_KEY, "not a valid RFC 9651 string");
    let empty = Problem(400, INVALID_KEY, "is empty");
    let too_large = Problem(413, BODY_TOO_LARGE, "exceeds this route's limit");
    let unreadable = Problem(
        400,
        "urn:cnerium:problem:body-unreadable",
        "the request body could not be read",
    );
    let long_key = "k".repeat(256);
    let big_order = format!(
        r#"{{"product_id":"{}","quantity":1}}"#,
        "x".repeat(OVER_LIMIT)
    )
    .into_bytes();

    vec![
        // The Idempotency-Key header.
        row(
            "no key header",
            post_with(&[], ORDER),
            Problem(400, MISSING_KEY, "send an Idempotency-Key header"),
            NoKey,
        ),
        row("empty key", post(b"", ORDER), empty, NoKey),
        row(
            "key of spaces and tabs",
            post(b"  \t  ", ORDER),
            empty,
            NoKey,
        ),
        row(
            "quoted key of spaces",
            post(b"\"   \"", ORDER),
            empty,
            NoKey,
        ),
        row(
            "key of 256 characters",
            post(long_key.as_bytes(), ORDER),
            Problem(400, INVALID_KEY, "256 characters long"),
            NoKey,
        ),
        row(
            "quoted key of 256 characters",
            post(format!("\"{long_key}\"").as_bytes(), ORDER),
            Problem(400, INVALID_KEY, "256 characters long"),
            NoKey,
        ),
        row(
            "key of 255 characters is accepted",
            post(KEY_255.as_bytes(), ORDER),
            Created(KEY_255),
            OrderStored(KEY_255),
        ),
        row(
            "non-ASCII UTF-8 key (raw bytes)",
            post("ordér-1".as_bytes(), ORDER),
            Problem(400, INVALID_KEY, "byte 0xc3"),
            NoKey,
        ),
        row(
            "obs-text byte 0xff in the key",
            post(b"order-\xff", ORDER),
            Problem(400, INVALID_KEY, "byte 0xff"),
            NoKey,
        ),
        row(
            "control character 0x01 in the key",
            post(b"order\x01-1", ORDER),
            Refused(400),
            NoKey,
        ),
        row(
            "NUL in the key",
            post(b"order\x00-1", ORDER),
            Refused(400),
            NoKey,
        ),
        row(
            "DEL in the key",
            post(b"order\x7f-1", ORDER),
            Refused(400),
            NoKey,
        ),
        row(
            "tab inside a bare key",
            post(b"a\tb", ORDER),
            bare_rule,
            NoKey,
        ),
        row(
            "space inside a bare key",
            post(b"a b", ORDER),
            bare_rule,
            NoKey,
        ),
        row("comma in a bare key", post(b"a,b", ORDER), bare_rule, NoKey),
        row(
            "backslash in a bare key",
            post(b"a\\b", ORDER),
            bare_rule,
            NoKey,
        ),
        row(
            "unterminated quote \"abc",
            post(b"\"abc", ORDER),
            bad_quoting,
            NoKey,
        ),
        row(
            "raw line feed inside quotes",
            post(b"\"a\nb\"", ORDER),
            Refused(400),
            NoKey,
        ),
        row(
            "escape \\n inside quotes",
            post(b"\"a\\nb\"", ORDER),
            bad_quoting,
            NoKey,
        ),
        row(
            "text after the closing quote",
            post(b"\"a\"b\"", ORDER),
            bad_quoting,
            NoKey,
        ),
        row(
            "parameters after a string",
            post(b"\"a\";x=1", ORDER),
            bad_quoting,
            NoKey,
        ),
        row("empty quoted string", post(b"\"\"", ORDER), empty, NoKey),
        row(
            "non-ASCII inside quotes",
            post("\"é\"".as_bytes(), ORDER),
            bad_quoting,
            NoKey,
        ),
        row(
            "header sent twice with one value",
            post_with(&[&key_line(b"twice-1"), &key_line(b"twice-1")], ORDER),
            Problem(400, INVALID_KEY, "more than once"),
            KeyStaysNew("twice-1"),
        ),
        row(
            "header sent twice in two cases",
            post_with(
                &[
                    b"idempotency-key: twice-2\r\n",
                    b"IDEMPOTENCY-KEY: twice-2\r\n",
                ],
                ORDER,
            ),
            Problem(400, INVALID_KEY, "more than once"),
            KeyStaysNew("twice-2"),
        ),
        row(
            "lower-case header name is the key header",
            post_with(&[b"idempotency-key: lower-1\r\n"], ORDER),
            Created("lower-1"),
            OrderStored("lower-1"),
        ),
        row(
            "upper-case header name is the key header",
            post_with(&[b"IDEMPOTENCY-KEY: UPPER-1\r\n"], ORDER),
            Created("UPPER-1"),
            OrderStored("UPPER-1"),
        ),
        row(
            "space before the header colon",
            post_with(&[b"Idempotency-Key : colon-1\r\n"], ORDER),
            Refused(400),
            KeyStaysNew("colon-1"),
        ),
        row(
            "obsolete line folding in the key",
            post_with(&[b"Idempotency-Key: fold-1\r\n", b" more\r\n"], ORDER),
            Refused(400),
            KeyStaysNew("fold-1"),
        ),
        // Bodies the adapter or hyper refuse.
        row(
            "body over the limit with Content-Length",
            post(b"big-1", &big_order),
            too_large,
            KeyStaysNew("big-1"),
        ),
        row(
            "body over the limit, chunked without Content-Length",
            post_chunked("big-2", &big_order),
            too_large,
            KeyStaysNew("big-2"),
        ),
        half_closed(
            "declared length over the limit, body never sent",
            request(
                "POST /orders HTTP/1.1",
                &[
                    b"Idempotency-Key: big-3\r\n",
                    b"Content-Length: 5000000\r\n",
                ],
                false,
                b"{",
            ),
            too_large,
            KeyStaysNew("big-3"),
        ),
        row(
            "declared length over the limit, client stalls after a byte",
            request(
                "POST /orders HTTP/1.1",
                &[
                    b"Idempotency-Key: big-4\r\n",
                    b"Content-Length: 10000000000\r\n",
                ],
                false,
                b"{",
            ),
            too_large,
            KeyStaysNew("big-4"),
        ),
        row(
            "declared length over the limit, client waits for 100 Continue",
            request(
                "POST /orders HTTP/1.1",
                &[
                    b"Idempotency-Key: big-5\r\n",
                    b"Expect: 100-continue\r\n",
                    b"Content-Length: 5000000\r\n",
                ],
                false,
                b"",
            ),
            too_large,
            KeyStaysNew("big-5"),
        ),
        half_closed(
            "body shorter than its Content-Length",
            request(
                "POST /orders HTTP/1.1",
                &[b"Idempotency-Key: short-1\r\n", b"Content-Length: 50\r\n"],
                false,
                b"{\"product_id\"",
            ),
            unreadable,
            KeyStaysNew("short-1"),
        ),
        row(
            "chunk size that is not hex",
            request(
                "POST /orders HTTP/1.1",
                &[
                    b"Idempotency-Key: chunk-1\r\n",
                    b"Transfer-Encoding: chunked\r\n",
                ],
                false,
                b"zz\r\nabc\r\n0\r\n\r\n",
            ),
            unreadable,
            KeyStaysNew("chunk-1"),
        ),
        row(
            "Content-Length that is not a number",
            request(
                "POST /orders HTTP/1.1",
                &[b"Idempotency-Key: cl-1\r\n", b"Content-Length: abc\r\n"],
                false,
                b"",
            ),
            Refused(400),
            KeyStaysNew("cl-1"),
        ),
        row(
            "two different Content-Length headers",
            request(
                "POST /orders HTTP/1.1",
                &[
                    b"Idempotency-Key: cl-2\r\n",
                    b"Content-Length: 2\r\n",
                    b"Content-Length: 3\r\n",
                ],
                false,
                b"{}",
            ),
            Refused(400),
            KeyStaysNew("cl-2"),
        ),
        row(
            "unknown transfer coding",
            request(
                "POST /orders HTTP/1.1",
                &[b"Idempotency-Key: te-1\r\n", b"Transfer-Encoding: gzip\r\n"],
                false,
                b"",
            ),
            Refused(400),
            KeyStaysNew("te-1"),
        ),
        // Bodies the order handler refuses: its 400 is a stored response.
        row(
            "malformed JSON",
            post(b"json-1", br#"{"product_id":"p1","#),
            Invalid(NOT_AN_OBJECT),
            AnswerStored("json-1"),
        ),
        row(
            "body not UTF-8",
            post(b"json-2", b"{\"product_id\":\"\xff\xfe\",\"quantity\":1}"),
            Invalid(NOT_AN_OBJECT),
            AnswerStored("json-2"),
        ),
        row(
            "empty body",
            post(b"json-3", b""),
            Invalid(NOT_AN_OBJECT),
            AnswerStored("json-3"),
        ),
        row(
            "JSON nested past the parser's depth limit",
            post(b"json-4", "[".repeat(100_000).as_bytes()),
            Invalid(NOT_AN_OBJECT),
            AnswerStored("json-4"),
        ),
        row(
            "JSON array",
            post(b"json-5", b"[1,2]"),
            Invalid(NO_PRODUCT),
            AnswerStored("json-5"),
        ),
        row(
            "JSON string",
            post(b"json-6", br#""an order""#),
            Invalid(NO_PRODUCT),
            AnswerStored("json-6"),
        ),
        row(
            "JSON null",
            post(b"json-7", b"null"),
            Invalid(NO_PRODUCT),
            AnswerStored("json-7"),
        ),
        row(
            "product_id a number",
            post(b"product-1", &with_product("7")),
            Invalid(NO_PRODUCT),
            AnswerStored("product-1"),
        ),
        row(
            "product_id null",
            post(b"product-2", &with_product("null")),
            Invalid(NO_PRODUCT),
            AnswerStored("product-2"),
        ),
        row(
            "product_id empty",
            post(b"product-3", &with_product(r#""""#)),
            Invalid(NO_PRODUCT),
            AnswerStored("product-3"),
        ),
        row(
            "product_id an object",
            post(b"product-4", &with_product(r#"{"id":"p1"}"#)),
            Invalid(NO_PRODUCT),
            AnswerStored("product-4"),
        ),
        row(
            "quantity a string",
            post(b"qty-1", &with_quantity(r#""2""#)),
            Invalid(BAD_QUANTITY),
            AnswerStored("qty-1"),
        ),
        row(
            "quantity a fraction",
            post(b"qty-2", &with_quantity("1.5")),
            Invalid(BAD_QUANTITY),
            AnswerStored("qty-2"),
        ),
        row(
            "quantity an integral float",
            post(b"qty-3", &with_quantity("2.0")),
            Invalid(BAD_QUANTITY),
            AnswerStored("qty-3"),
        ),
        row(
            "quantity negative",
            post(b"qty-4", &with_quantity("-1")),
            Invalid(BAD_QUANTITY),
            AnswerStored("qty-4"),
        ),
        row(
            "quantity zero",
            post(b"qty-5", &with_quantity("0")),
            Invalid(BAD_QUANTITY),
            AnswerStored("qty-5"),
        ),
        row(
            "quantity past u64",
            post(b"qty-6", &with_quantity("18446744073709551616")),
            Invalid(BAD_QUANTITY),
            AnswerStored("qty-6"),
        ),
        row(
            "quantity past f64",
            post(b"qty-7", &with_quantity("1e400")),
            Invalid(BAD_QUANTITY),
            AnswerStored("qty-7"),
        ),
        row(
            "quantity missing",
            post(b"qty-8", br#"{"product_id":"p1"}"#),
            Invalid(BAD_QUANTITY),
            AnswerStored("qty-8"),
        ),
        // Methods and paths.
        row(
            "GET /orders",
            request(
                "GET /orders HTTP/1.1",
                &[b"Idempotency-Key: get-1\r\n"],
                false,
                b"",
            ),
            MethodNotAllowed { head: false },
            KeyStaysNew("get-1"),
        ),
        row(
            "PUT /orders",
            request(
                "PUT /orders HTTP/1.1",
                &[b"Idempotency-Key: put-1\r\n"],
                true,
                ORDER,
            ),
            MethodNotAllowed { head: false },
            KeyStaysNew("put-1"),
        ),
        row(
            "DELETE /orders",
            request(
                "DELETE /orders HTTP/1.1",
                &[b"Idempotency-Key: del-1\r\n"],
                false,
                b"",
            ),
            MethodNotAllowed { head: false },
            KeyStaysNew("del-1"),
        ),
        row(
            "PATCH /orders",
            request(
                "PATCH /orders HTTP/1.1",
                &[b"Idempotency-Key: patch-1\r\n"],
                true,
                ORDER,
            ),
            MethodNotAllowed { head: false },
            KeyStaysNew("patch-1"),
        ),
        row(
            "HEAD /orders",
            request("HEAD /orders HTTP/1.1", &[], false, b""),
            MethodNotAllowed { head: true },
            NoKey,
        ),
        row(
            "OPTIONS /orders",
            request("OPTIONS /orders HTTP/1.1", &[], false, b""),
            MethodNotAllowed { head: false },
            NoKey,
        ),
        row(
            "GET of an unknown path",
            request("GET /nowhere HTTP/1.1", &[], false, b""),
            NotFound,
            NoKey,
        ),
        row(
            "POST to /ORDERS (paths are case-sensitive)",
            request(
                "POST /ORDERS HTTP/1.1",
                &[b"Idempotency-Key: path-1\r\n"],
                true,
                ORDER,
            ),
            NotFound,
            KeyStaysNew("path-1"),
        ),
        row(
            "POST below /orders",
            request(
                "POST /orders/extra HTTP/1.1",
                &[b"Idempotency-Key: path-2\r\n"],
                true,
                ORDER,
            ),
            NotFound,
            KeyStaysNew("path-2"),
        ),
        // Requests hyper cannot parse.
        row(
            "garbage request line",
            b"GARBAGE\r\n\r\n".to_vec(),
            Refused(400),
            NoKey,
        ),
        row(
            "unknown HTTP version",
            b"GET /health HTTP/9.9\r\nHost: test\r\n\r\n".to_vec(),
            Refused(400),
            NoKey,
        ),
        row(
            "TLS hello on the plain port",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(),
            Refused(400),
            NoKey,
        ),
        row(
            "header line without a colon",
            request("POST /orders HTTP/1.1", &[b"NoColonHere\r\n"], false, b""),
            Refused(400),
            NoKey,
        ),
        row(
            "request target of 70 000 bytes",
            request(
                &format!("GET /{} HTTP/1.1", "a".repeat(70_000)),
                &[],
                false,
                b"",
            ),
            Refused(414),
            NoKey,
        ),
        row(
            "header of 500 000 bytes",
            request(
                "GET /health HTTP/1.1",
                &[format!("X-Big: {}\r\n", "a".repeat(500_000)).as_bytes()],
                false,
                b"",
            ),
            Refused(431),
            NoKey,
        ),
    ]
}

/// A valid key of exactly the maximum length.
const KEY_255: &str = concat!(
    "max-len-key-",
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "0123456789abcdef0123456789abcdef0123456789abcdefghi",
);

#[tokio::test(flavor = "multi_thread")]
async fn http_bad_inputs_get_precise_refusals_and_store_only_what_the_handler_answered() {
    assert_eq!(KEY_255.len(), 255);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("service.log");
    let mut service = Service::start_logged(EXAMPLE, &dir.path().join("data"), &log);
    let addr = service.http_addr();
    let mut watcher = Watcher::connect(&service).await;

    let rows = http_rows();
    assert!(rows.len() >= 40, "the table has {} rows", rows.len());
    for (index, row) in rows.iter().enumerate() {
        let name = row.name;
        let response = if row.half_close {
            raw_exchange_half_closed(addr, &row.request).await
        } else {
            raw_exchange(addr, &row.request).await
        };
        let mut created = check_answer(name, row.answer, &response);
        created.extend(check_left(name, addr, row, &response).await);
        check_still_serving(name, index, &mut service, &log, &mut watcher, created).await;
    }
}

/// Checks the answer to a row; returns the order it created, if any.
fn check_answer(row: &str, answer: Answer, response: &RawResponse) -> Vec<String> {
    let body = || String::from_utf8_lossy(&response.body).into_owned();
    match answer {
        Answer::Problem(status, kind, phrase) => {
            assert_eq!(response.status, status, "{row}: status; body {}", body());
            let problem = expect_problem(row, response);
            assert_eq!(problem["type"], kind, "{row}: {problem}");
            let detail = problem["detail"].as_str().unwrap_or_default();
            assert!(detail.contains(phrase), "{row}: detail {detail:?}");
        }
        Answer::Invalid(detail) => {
            assert_eq!(response.status, 400, "{row}: status; body {}", body());
            let problem = expect_problem(row, response);
            assert_eq!(problem["type"], ABOUT_BLANK, "{row}: {problem}");
            assert_eq!(problem["detail"], detail, "{row}: {problem}");
        }
        Answer::Refused(status) => {
            assert_eq!(response.status, status, "{row}: status; body {}", body());
            assert!(response.body.is_empty(), "{row}: body {}", body());
            assert_eq!(response.header("connection"), Some("close"), "{row}");
        }
        Answer::MethodNotAllowed { head } => {
            assert_eq!(response.status, 405, "{row}: status; body {}", body());
            assert_eq!(response.header("allow"), Some("POST"), "{row}");
            assert_eq!(
                response.header("content-type"),
                Some("application/problem+json"),
                "{row}"
            );
            if head {
                assert!(response.body.is_empty(), "{row}: HEAD answered a body");
            } else {
                let problem = expect_problem(row, response);
                assert_eq!(problem["status"], 405, "{row}: {problem}");
            }
        }
        Answer::NotFound => {
            assert_eq!(response.status, 404, "{row}: status; body {}", body());
            let problem = expect_problem(row, response);
            assert_eq!(problem["type"], ABOUT_BLANK, "{row}: {problem}");
            assert_eq!(problem["status"], 404, "{row}: {problem}");
        }
        Answer::Created(key) => {
            assert_eq!(response.status, 201, "{row}: status; body {}", body());
            assert_eq!(response.header("idempotent-replayed"), None, "{row}");
            assert_eq!(response.json()["order_id"], format!("ord_{key}"), "{row}");
            return vec![key.to_owned()];
        }
    }
    Vec::new()
}

/// The body of a problem answer, after checking its media type and its `nosniff`.
fn expect_problem(row: &str, response: &RawResponse) -> Value {
    assert_eq!(
        response.header("content-type"),
        Some("application/problem+json"),
        "{row}"
    );
    assert_eq!(
        response.header("x-content-type-options"),
        Some("nosniff"),
        "{row}"
    );
    let problem = response.json();
    assert_eq!(problem["status"], response.status, "{row}: {problem}");
    assert!(problem["title"].as_str().is_some(), "{row}: {problem}");
    problem
}

/// Checks what the row left under its key; returns the orders the check itself created.
async fn check_left(
    row: &str,
    addr: SocketAddr,
    spec: &HttpRow,
    first: &RawResponse,
) -> Vec<String> {
    match spec.left {
        Left::NoKey => Vec::new(),
        Left::KeyStaysNew(key) => {
            let response = raw_exchange(addr, &post(key.as_bytes(), ORDER)).await;
            assert_eq!(response.status, 201, "{row}: the key stayed new");
            assert_eq!(
                response.header("idempotent-replayed"),
                None,
                "{row}: nothing was stored under {key}, so nothing replays"
            );
            assert_eq!(response.json()["order_id"], format!("ord_{key}"), "{row}");
            vec![key.to_owned()]
        }
        Left::AnswerStored(key) => {
            let replay = raw_exchange(addr, &spec.request).await;
            assert_eq!(replay.status, first.status, "{row}: replay status");
            assert_eq!(replay.header("idempotent-replayed"), Some("true"), "{row}");
            assert_eq!(replay.body, first.body, "{row}: replay is byte-identical");

            let other = raw_exchange(addr, &post(key.as_bytes(), ORDER_P2)).await;
            assert_eq!(other.status, 409, "{row}: another body with {key}");
            assert_eq!(other.json()["type"], KEY_REUSED, "{row}");
            Vec::new()
        }
        Left::OrderStored(key) => {
            let quoted = format!("idempotency-KEY: \"{key}\"\r\n");
            let replay = raw_exchange(addr, &post_with(&[quoted.as_bytes()], ORDER)).await;
            assert_eq!(replay.status, 201, "{row}: replay status");
            assert_eq!(replay.header("idempotent-replayed"), Some("true"), "{row}");
            assert_eq!(replay.body, first.body, "{row}: replay is byte-identical");
            Vec::new()
        }
    }
}

/// After a row: the process runs without a panic, a good order still gets its 201, and the
/// watcher gets exactly the events of `created` and of that order, in order.
async fn check_still_serving(
    row: &str,
    index: usize,
    service: &mut Service,
    log: &Path,
    watcher: &mut Watcher,
    mut created: Vec<String>,
) {
    assert!(service.is_running(), "{row}: the service exited");
    let panics = panics_in(log);
    assert!(panics.is_empty(), "{row}: the service panicked: {panics:?}");

    let key = format!("good-after-{index}");
    let response = raw_exchange(service.http_addr(), &post(key.as_bytes(), ORDER)).await;
    assert_eq!(response.status, 201, "{row}: a good order after the row");
    assert_eq!(response.json()["order_id"], format!("ord_{key}"), "{row}");
    created.push(key);

    let seen = watcher.orders_until(created.last().unwrap()).await;
    assert_eq!(seen, created, "{row}: events published during the row");
}

/// A WebSocket client that collects `order.created` events.
struct Watcher {
    client: WsClient,
}

impl Watcher {
    async fn connect(service: &Service) -> Watcher {
        let mut client = WsClient::connect(&service.ws).await;
        client.join("watchers").await;
        Watcher { client }
    }

    /// The order ids of every event up to and including the one for `ord_<last_key>`,
    /// returned as keys.
    async fn orders_until(&mut self, last_key: &str) -> Vec<String> {
        let mut keys = Vec::new();
        loop {
            let event = self
                .client
                .next_json(DEADLINE)
                .await
                .unwrap_or_else(|| panic!("no event for {last_key}; saw {keys:?}"));
            assert_eq!(event["type"], "order.created", "{event}");
            let order_id = event["payload"]["order_id"].as_str().unwrap_or_default();
            let key = order_id.strip_prefix("ord_").unwrap_or(order_id).to_owned();
            let done = key == last_key;
            keys.push(key);
            if done {
                return keys;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The WebSocket table.

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the server must do with a WebSocket row.
#[derive(Clone, Debug)]
enum WsOutcome {
    /// Answer each frame in order, `room.joined` or `error:<code>`, and keep the
    /// connection open.
    Answers(Vec<String>),
    /// Close the connection with this code.
    Close(u16),
    /// Refuse the opening handshake with this HTTP status.
    Handshake(u16),
}

struct WsRow {
    name: &'static str,
    /// Path and query of the handshake.
    target: String,
    frames: Vec<Message>,
    outcome: WsOutcome,
}

fn ws_row(name: &'static str, frames: Vec<Message>, answers: &[&str]) -> WsRow {
    WsRow {
        name,
        target: "/ws".to_owned(),
        frames,
        outcome: WsOutcome::Answers(answers.iter().map(|&a| a.to_owned()).collect()),
    }
}

fn text(frame: &str) -> Vec<Message> {
    vec![Message::text(frame)]
}

fn join_frame(room: &str) -> Message {
    Message::text(serde_json::json!({"type": "room.join", "payload": {"room": room}}).to_string())
}

fn ws_rows() -> Vec<WsRow> {
    let long_room = "r".repeat(201);
    let huge_room = "r".repeat(60_000);
    let flood: Vec<Message> = (0..70).map(|i| join_frame(&format!("flood-{i}"))).collect();
    let mut flood_answers = vec!["room.joined"; 64];
    flood_answers.extend(["error:too_many_rooms"; 6]);

    vec![
        ws_row(
            "text that is not JSON",
            text("{not json"),
            &["error:invalid_json"],
        ),
        ws_row("empty text frame", text(""), &["error:invalid_json"]),
        ws_row(
            "JSON nested past the parser's depth limit",
            text(&"[".repeat(60_000)),
            &["error:invalid_json"],
        ),
        ws_row("JSON array", text("[1,2]"), &["error:invalid_frame"]),
        ws_row(
            "type not a string",
            text(r#"{"type":7}"#),
            &["error:invalid_frame"],
        ),
        ws_row(
            "no type",
            text(r#"{"payload":{"room":"a"}}"#),
            &["error:invalid_frame"],
        ),
        ws_row(
            "unknown type",
            text(r#"{"type":"room.dance"}"#),
            &["error:unknown_type"],
        ),
        ws_row(
            "type in the wrong case",
            text(r#"{"type":"ROOM.JOIN","payload":{"room":"a"}}"#),
            &["error:unknown_type"],
        ),
        ws_row(
            "join without payload",
            text(r#"{"type":"room.join"}"#),
            &["error:invalid_room"],
        ),
        ws_row(
            "join with an empty room name",
            vec![join_frame("")],
            &["error:invalid_room"],
        ),
        ws_row(
            "join with a room name of 201 bytes",
            vec![join_frame(&long_room)],
            &["error:invalid_room"],
        ),
        ws_row(
            "join with a room name of 60 000 bytes",
            vec![join_frame(&huge_room)],
            &["error:invalid_room"],
        ),
        ws_row(
            "join with a control character in the room",
            vec![join_frame("a\u{1}b")],
            &["error:invalid_room"],
        ),
        ws_row(
            "join with a room that is a number",
            text(r#"{"type":"room.join","payload":{"room":7}}"#),
            &["error:invalid_room"],
        ),
        ws_row(
            "leave with an empty room name",
            text(r#"{"type":"room.leave","payload":{"room":""}}"#),
            &["error:invalid_room"],
        ),
        ws_row(
            "binary frame",
            vec![Message::binary(b"{\"type\":\"room.join\"}".to_vec())],
            &["error:binary_unsupported"],
        ),
        ws_row(
            "text frame of exactly 64 KiB",
            text(&"x".repeat(FRAME_LIMIT)),
            &["error:invalid_json"],
        ),
        ws_row("flood of 70 joins", flood, &flood_answers),
        WsRow {
            name: "empty room on the URL",
            target: "/ws?room=".to_owned(),
            frames: Vec::new(),
            outcome: WsOutcome::Answers(vec!["error:invalid_room".to_owned()]),
        },
        WsRow {
            name: "room of 201 bytes on the URL",
            target: format!("/ws?room={long_room}"),
            frames: Vec::new(),
            outcome: WsOutcome::Answers(vec!["error:invalid_room".to_owned()]),
        },
        WsRow {
            name: "text frame over 64 KiB",
            target: "/ws".to_owned(),
            frames: text(&"x".repeat(FRAME_LIMIT + 1)),
            outcome: WsOutcome::Close(1009),
        },
        WsRow {
            name: "binary frame over 64 KiB",
            target: "/ws".to_owned(),
            frames: vec![Message::binary(vec![0u8; FRAME_LIMIT + 1])],
            outcome: WsOutcome::Close(1009),
        },
        WsRow {
            name: "handshake on a wrong path",
            target: "/nope".to_owned(),
            frames: Vec::new(),
            outcome: WsOutcome::Handshake(404),
        },
        WsRow {
            name: "handshake on the path with a trailing slash",
            target: "/ws/".to_owned(),
            frames: Vec::new(),
            outcome: WsOutcome::Handshake(404),
        },
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_bad_inputs_get_error_frames_or_closes_and_the_hub_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("service.log");
    let mut service = Service::start_logged(EXAMPLE, &dir.path().join("data"), &log);
    let ws_addr = service.ws_addr();
    let mut watcher = Watcher::connect(&service).await;

    let rows = ws_rows();
    for (index, row) in rows.iter().enumerate() {
        let name = row.name;
        let url = format!("ws://{ws_addr}{}", row.target);
        let connected = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(&url))
            .await
            .unwrap_or_else(|_| panic!("{name}: the handshake did not finish in time"));
        let mut socket = match (connected, &row.outcome) {
            (Err(tungstenite::Error::Http(response)), WsOutcome::Handshake(status)) => {
                assert_eq!(response.status().as_u16(), *status, "{name}");
                None
            }
            (Err(e), _) => panic!("{name}: handshake failed: {e}"),
            (Ok(_), WsOutcome::Handshake(status)) => {
                panic!("{name}: the handshake succeeded instead of answering {status}")
            }
            (Ok((socket, _)), _) => Some(socket),
        };

        if let Some(socket) = socket.as_mut() {
            for frame in row.frames.clone() {
                socket
                    .send(frame)
                    .await
                    .unwrap_or_else(|e| panic!("{name}: send: {e}"));
            }
            match &row.outcome {
                WsOutcome::Answers(expected) => {
                    let mut answers = Vec::new();
                    while answers.len() < expected.len() {
                        answers.push(next_answer(name, socket).await);
                    }
                    assert_eq!(&answers, expected, "{name}");
                    // The connection still works: a valid join is answered.
                    socket.send(join_frame("after-row")).await.unwrap();
                    let answer = next_answer(name, socket).await;
                    let full = expected.iter().any(|a| a == "error:too_many_rooms");
                    let expected = if full {
                        "error:too_many_rooms"
                    } else {
                        "room.joined"
                    };
                    assert_eq!(answer, expected, "{name}: a join after the row");
                }
                WsOutcome::Close(code) => {
                    assert_eq!(next_close(name, socket).await, *code, "{name}");
                }
                WsOutcome::Handshake(_) => unreachable!("handled above"),
            }
        }

        // A new client still connects and joins, and the HTTP side still takes orders.
        let mut fresh = WsClient::connect(&format!("ws://{ws_addr}/ws?room=fresh")).await;
        fresh.join("fresh-2").await;
        check_still_serving(name, index, &mut service, &log, &mut watcher, Vec::new()).await;
    }
}

/// The next text frame as `room.joined`, `room.left` or `error:<code>`.
async fn next_answer(row: &str, socket: &mut Socket) -> String {
    loop {
        let message = tokio::time::timeout(DEADLINE, socket.next())
            .await
            .unwrap_or_else(|_| panic!("{row}: no answer in time"))
            .unwrap_or_else(|| panic!("{row}: the connection ended"))
            .unwrap_or_else(|e| panic!("{row}: read failed: {e}"));
        let Message::Text(text) = message else {
            continue;
        };
        let frame: Value = serde_json::from_str(text.as_str()).expect("answers are JSON");
        return match frame["type"].as_str() {
            Some("error") => {
                assert!(frame["payload"]["message"].as_str().is_some(), "{frame}");
                format!("error:{}", frame["payload"]["code"].as_str().unwrap_or("?"))
            }
            Some(kind) => kind.to_owned(),
            None => panic!("{row}: answer without a type: {frame}"),
        };
    }
}

/// The code of the close frame the server sends next.
async fn next_close(row: &str, socket: &mut Socket) -> u16 {
    loop {
        let message = tokio::time::timeout(DEADLINE, socket.next())
            .await
            .unwrap_or_else(|_| panic!("{row}: no close frame in time"))
            .unwrap_or_else(|| panic!("{row}: the connection ended without a close frame"))
            .unwrap_or_else(|e| panic!("{row}: read failed before a close frame: {e}"));
        if let Message::Close(frame) = message {
            let frame = frame.unwrap_or_else(|| panic!("{row}: close frame without a code"));
            return u16::from(frame.code);
        }
    }
}

// ---------------------------------------------------------------------------------------
// A service of this test's own: replayed headers and responses too large to store.

/// Serves `POST /things` on a fresh port with `handler`, over the in-memory store.
async fn serve_things(
    handler: impl Fn(DurableRequest) -> DurableResponse + Send + Sync + 'static,
) -> (String, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let handler = Arc::new(handler);
    let engine = Engine::new(Arc::new(MemoryStore::new()), Arc::new(SystemClock));
    let route = engine.route("things.create", move |request: DurableRequest| {
        counted.fetch_add(1, Ordering::SeqCst);
        let response = handler(request);
        async move { response }
    });
    let routes = cnerium::warp::durable_post("things", route);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/things", listener.local_addr().unwrap());
    tokio::spawn(warp::serve(routes).incoming(listener).run());
    (url, runs)
}

async fn post_thing(http: &reqwest::Client, url: &str, key: &str) -> reqwest::Response {
    http.post(url)
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(r#"{"name":"thing"}"#)
        .send()
        .await
        .expect("send POST /things")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_repeats_safe_headers_and_never_credentials() {
    let (url, runs) = serve_things(|_| {
        DurableResponse::created(serde_json::json!({"id": 1}))
            .with_header(SET_COOKIE, HeaderValue::from_static("session=s1; HttpOnly"))
            .with_header(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"things\""),
            )
            .with_header(AUTHORIZATION, HeaderValue::from_static("Bearer secret-1"))
            .with_header(LOCATION, HeaderValue::from_static("/things/1"))
            .with_header(ETAG, HeaderValue::from_static("\"v1\""))
    })
    .await;
    let http = client();

    let first = post_thing(&http, &url, "thing-1").await;
    assert_eq!(first.status(), 201);
    let headers = first.headers().clone();
    let first_body = first.bytes().await.unwrap();
    assert_eq!(headers[SET_COOKIE.as_str()], "session=s1; HttpOnly");
    assert_eq!(
        headers[WWW_AUTHENTICATE.as_str()],
        "Bearer realm=\"things\""
    );
    assert_eq!(headers[AUTHORIZATION.as_str()], "Bearer secret-1");
    assert_eq!(headers[LOCATION.as_str()], "/things/1");
    assert_eq!(headers[ETAG.as_str()], "\"v1\"");
    assert_eq!(headers[CONTENT_TYPE.as_str()], "application/json");
    assert!(headers.get("idempotent-replayed").is_none());

    let replay = post_thing(&http, &url, "thing-1").await;
    assert_eq!(replay.status(), 201);
    let headers = replay.headers().clone();
    assert_eq!(replay.bytes().await.unwrap(), first_body);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(headers[LOCATION.as_str()], "/things/1");
    assert_eq!(headers[ETAG.as_str()], "\"v1\"");
    assert_eq!(headers[CONTENT_TYPE.as_str()], "application/json");
    for credential in [SET_COOKIE, WWW_AUTHENTICATE, AUTHORIZATION] {
        assert!(
            headers.get(&credential).is_none(),
            "a replay repeated {credential}: {headers:?}"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_over_the_storage_cap_reaches_the_first_caller_and_is_never_rerun() {
    let cap = cnerium::EngineConfig::default().max_stored_body;
    let big: Bytes = (0..=cap).map(|i| b'a' + (i % 26) as u8).collect();
    assert_eq!(big.len(), cap + 1);
    let body = big.clone();
    let (url, runs) = serve_things(move |_| {
        let response = http::Response::builder()
            .status(200)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(body.clone())
            .expect("a valid response");
        DurableResponse::from(response)
    })
    .await;
    let http = client();

    let first = post_thing(&http, &url, "big-thing").await;
    assert_eq!(first.status(), 200);
    assert_eq!(
        first.bytes().await.unwrap(),
        big,
        "the first caller gets it all"
    );

    let retry = post_thing(&http, &url, "big-thing").await;
    assert_eq!(retry.status(), 409);
    assert_eq!(
        retry.headers()[CONTENT_TYPE.as_str()],
        "application/problem+json"
    );
    let problem: Value = serde_json::from_slice(&retry.bytes().await.unwrap()).unwrap();
    assert_eq!(problem["type"], NOT_STORED, "{problem}");
    assert_eq!(problem["status"], 409, "{problem}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("status 200"), "{detail}");
    assert!(detail.contains(&format!("{}-byte", cap + 1)), "{detail}");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
}

// ---------------------------------------------------------------------------------------
// Protocol violations below the JSON protocol.

/// RFC 6455 §7.1.7: an endpoint that must fail an established connection should first send
/// a close frame with a status code: 1002 for a protocol error, 1007 for a text frame that is
/// not UTF-8.
#[tokio::test(flavor = "multi_thread")]
async fn framing_violations_close_with_1002_or_1007() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(EXAMPLE, &dir.path().join("data"));
    let rows: [(&str, Vec<u8>, u16); 5] = [
        (
            "text frame that is not UTF-8",
            masked(0x81, b"\xff\xfe"),
            1007,
        ),
        ("reserved opcode 0x3", masked(0x83, b"hi"), 1002),
        (
            "client frame without a mask",
            vec![0x81, 0x02, b'h', b'i'],
            1002,
        ),
        ("RSV1 bit without an extension", masked(0xC1, b"hi"), 1002),
        (
            "continuation with nothing to continue",
            masked(0x80, b"x"),
            1002,
        ),
    ];
    for (name, frame, code) in rows {
        let answer = raw_websocket(service.ws_addr(), &frame).await;
        assert_eq!(close_code(&answer), Some(code), "{name}: got {answer:?}");
    }
}

/// One masked client frame with `first_byte` (FIN, RSV and opcode) and a short payload.
fn masked(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [1, 2, 3, 4];
    assert!(payload.len() < 126);
    let mut frame = vec![first_byte, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&MASK);
    frame.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
    frame
}

/// Opens a WebSocket session by hand, sends `frame`, and returns what the server sends
/// after its handshake answer until it closes the connection.
async fn raw_websocket(addr: SocketAddr, frame: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut received = Vec::new();
    while !received.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
            .await
            .expect("a handshake answer in time")
            .unwrap();
        assert!(n > 0, "the server closed during the handshake");
        received.extend_from_slice(&buf[..n]);
    }
    assert!(received.starts_with(b"HTTP/1.1 101 "), "{received:?}");
    let head_end = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut after = received.split_off(head_end);

    stream.write_all(frame).await.unwrap();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut after))
        .await
        .expect("the server closed the connection in time");
    after
}

/// The status code of the first close frame among unmasked server frames.
fn close_code(mut bytes: &[u8]) -> Option<u16> {
    while bytes.len() >= 2 {
        let opcode = bytes[0] & 0x0F;
        let (len, at) = match bytes[1] & 0x7F {
            126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 => return None,
            len => (usize::from(len), 2),
        };
        let payload = bytes.get(at..at + len)?;
        if opcode == 0x8 {
            return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        }
        bytes = &bytes[at + len..];
    }
    None
}
