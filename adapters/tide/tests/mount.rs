//! A durable route mounted beside ordinary routes of a tide app, over real sockets.
//!
//! The client is a few lines of raw HTTP/1.1, so the tests see exactly the bytes on the
//! wire: every header line, repeated ones included, and chunked request bodies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_std::io::prelude::*;
use async_std::io::{BufReader, ReadExt};
use async_std::net::{TcpListener, TcpStream};
use async_std::task;
use cnerium_core::{DurableRequest, DurableResponse, Engine, Timestamp};
use cnerium_store_memory::MemoryStore;
use http::header::{self, HeaderValue};

/// Response headers a replay repeats by default.
const ALLOWED: [&str; 8] = [
    "cache-control",
    "content-language",
    "content-location",
    "content-type",
    "etag",
    "last-modified",
    "link",
    "location",
];

struct TestService {
    addr: SocketAddr,
    runs: Arc<AtomicUsize>,
    gate: async_std::channel::Sender<()>,
}

/// An app with `GET /hello`, `GET /echo` and the durable `POST /echo` and `POST /slow`.
async fn start(body_limit: usize) -> TestService {
    let clock = Arc::new(|| Timestamp::from_system_time(std::time::SystemTime::now()));
    let engine = Engine::new(Arc::new(MemoryStore::new()), clock);
    let runs = Arc::new(AtomicUsize::new(0));

    let counter = runs.clone();
    let echo = engine
        .route("echo.create", move |request: DurableRequest| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { echo(&request) }
        })
        .with_body_limit(body_limit);

    let (gate, opened) = async_std::channel::unbounded::<()>();
    let counter = runs.clone();
    let slow = engine.route("slow.create", move |_request: DurableRequest| {
        counter.fetch_add(1, Ordering::SeqCst);
        let opened = opened.clone();
        async move {
            let _ = opened.recv().await;
            DurableResponse::created(serde_json::json!({"slow": true}))
        }
    });

    let mut app = tide::new();
    app.with(cnerium_tide::RouterProblems);
    app.at("/hello").get(|_| async { Ok("hello") });
    app.at("/echo")
        .get(|_| async { Ok("plain get") })
        .post(cnerium_tide::durable(echo))
        .all(cnerium_tide::method_not_allowed());
    app.at("/slow").post(cnerium_tide::durable(slow));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    task::spawn(app.listen(listener));
    TestService { addr, runs, gate }
}

/// Answers with the body length and the `x-tag` values it received, every allow-listed
/// header, two cookies and a header a replay does not repeat.
fn echo(request: &DurableRequest) -> DurableResponse {
    let tags: Vec<_> = request
        .headers()
        .get_all("x-tag")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let value = HeaderValue::from_static;
    DurableResponse::created(serde_json::json!({"len": request.body().len(), "tags": tags}))
        .with_header(header::LOCATION, value("/echo/1"))
        .with_header(header::ETAG, value("\"v1\""))
        .with_header(
            header::LAST_MODIFIED,
            value("Tue, 01 Dec 2026 10:00:00 GMT"),
        )
        .with_header(header::LINK, value("</echo/0>; rel=prev"))
        .with_header(header::LINK, value("</echo/2>; rel=next"))
        .with_header(header::CACHE_CONTROL, value("no-store"))
        .with_header(header::CONTENT_LANGUAGE, value("en"))
        .with_header(header::CONTENT_LOCATION, value("/echo/1.json"))
        .with_header(header::SET_COOKIE, value("session=abc; Path=/"))
        .with_header(header::SET_COOKIE, value("theme=dark; Path=/"))
        .with_header(
            header::HeaderName::from_static("x-request-id"),
            value("r-1"),
        )
}

/// A response as it came off the wire: header lines in order, body decoded.
#[derive(Debug)]
struct Wire {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Wire {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }
}

/// Reads one response off `stream` without waiting for the connection to close.
async fn read_response(stream: &TcpStream) -> Wire {
    let mut reader = BufReader::new(stream.clone());
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    let status = line
        .split(' ')
        .nth(1)
        .expect("status line")
        .parse()
        .unwrap();

    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await.unwrap();
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':').expect("header line");
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }

    let mut wire = Wire {
        status,
        headers,
        body: Vec::new(),
    };
    if let Some(len) = wire.header("content-length") {
        wire.body = vec![0; len.parse().unwrap()];
        reader.read_exact(&mut wire.body).await.unwrap();
    } else if wire.header("transfer-encoding") == Some("chunked") {
        loop {
            line.clear();
            reader.read_line(&mut line).await.unwrap();
            let size = usize::from_str_radix(line.trim(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).await.unwrap();
            if size == 0 {
                break;
            }
            wire.body.extend_from_slice(&chunk[..size]);
        }
    }
    wire
}

/// Sends `head` (request line and header lines, without the blank line) and `body`, and
/// reads the response.
async fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> Wire {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{head}\r\nHost: test\r\nConnection: close\r\n");
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    read_response(&stream).await
}

fn post_echo(key: &str) -> String {
    format!("POST /echo HTTP/1.1\r\nIdempotency-Key: {key}\r\nContent-Type: text/plain")
}

#[test]
fn replay_is_byte_identical_with_every_allowed_header() {
    task::block_on(async {
        let service = start(1024).await;
        let first = exchange(service.addr, &post_echo("replay-1"), b"hello").await;
        assert_eq!(first.status, 201);
        assert_eq!(first.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(first.header("idempotent-replayed"), None);
        assert_eq!(first.header("x-request-id"), Some("r-1"));
        assert_eq!(
            first.header("connection"),
            None,
            "a read body keeps the connection"
        );

        let replay = exchange(service.addr, &post_echo("replay-1"), b"hello").await;
        assert_eq!(replay.status, 201);
        assert_eq!(replay.body, first.body, "a replay is byte-identical");
        assert_eq!(replay.header("idempotent-replayed"), Some("true"));
        assert_eq!(replay.header("x-content-type-options"), Some("nosniff"));
        for name in ALLOWED {
            assert!(!first.all(name).is_empty(), "first response has {name}");
            assert_eq!(replay.all(name), first.all(name), "replay repeats {name}");
        }
        assert!(
            replay.all("set-cookie").is_empty(),
            "cookies are never replayed"
        );
        assert_eq!(replay.header("x-request-id"), None);
        assert_eq!(service.runs.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn repeated_headers_survive_conversion_both_ways() {
    task::block_on(async {
        let service = start(1024).await;
        let head = format!("{}\r\nX-Tag: one\r\nX-Tag: two", post_echo("tags-1"));
        let response = exchange(service.addr, &head, b"x").await;
        assert_eq!(response.status, 201);
        assert_eq!(response.json()["tags"], serde_json::json!(["one", "two"]));
        assert_eq!(
            response.all("set-cookie"),
            ["session=abc; Path=/", "theme=dark; Path=/"]
        );
        assert_eq!(
            response.all("link"),
            ["</echo/0>; rel=prev", "</echo/2>; rel=next"]
        );
    });
}

#[test]
fn key_sent_twice_is_refused_before_the_handler() {
    task::block_on(async {
        let service = start(1024).await;
        let head = format!("{}\r\nIdempotency-Key: other", post_echo("twice-1"));
        let response = exchange(service.addr, &head, b"x").await;
        assert_eq!(response.status, 400);
        assert_eq!(
            response.json()["type"],
            "urn:cnerium:problem:invalid-idempotency-key"
        );
        assert_eq!(service.runs.load(Ordering::SeqCst), 0);
    });
}

#[test]
fn missing_key_is_a_400_problem_with_nosniff() {
    task::block_on(async {
        let service = start(1024).await;
        let response = exchange(service.addr, "POST /echo HTTP/1.1", b"x").await;
        assert_eq!(response.status, 400);
        assert_eq!(
            response.header("content-type"),
            Some("application/problem+json")
        );
        assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(
            response.json()["type"],
            "urn:cnerium:problem:missing-idempotency-key"
        );
        assert_eq!(service.runs.load(Ordering::SeqCst), 0);
    });
}

#[test]
fn chunked_body_over_the_limit_is_413_and_stores_nothing() {
    task::block_on(async {
        let service = start(1024).await;
        let mut stream = TcpStream::connect(service.addr).await.unwrap();
        let head = "POST /echo HTTP/1.1\r\nHost: test\r\nIdempotency-Key: chunked-1\r\n\
                    Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        for _ in 0..8 {
            stream.write_all(b"200\r\n").await.unwrap();
            stream.write_all(&[b'a'; 512]).await.unwrap();
            stream.write_all(b"\r\n").await.unwrap();
        }
        stream.write_all(b"0\r\n\r\n").await.unwrap();
        let response = read_response(&stream).await;
        assert_eq!(response.status, 413);
        assert_eq!(
            response.json()["type"],
            "urn:cnerium:problem:body-too-large"
        );
        assert_eq!(
            response.header("connection"),
            Some("close"),
            "a connection with an unread body is not reused"
        );
        assert_eq!(service.runs.load(Ordering::SeqCst), 0);

        let ok = exchange(service.addr, &post_echo("chunked-1"), &[b'a'; 1024]).await;
        assert_eq!(ok.status, 201, "the refused key was not stored");
        assert_eq!(ok.header("idempotent-replayed"), None);
        assert_eq!(service.runs.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn declared_length_over_the_limit_is_refused_before_reading_the_body() {
    task::block_on(async {
        let service = start(16).await;
        let mut stream = TcpStream::connect(service.addr).await.unwrap();
        // The client waits for `100 Continue` before sending a body; the answer must come
        // without it.
        let head = "POST /echo HTTP/1.1\r\nHost: test\r\nIdempotency-Key: big-1\r\n\
                    Content-Length: 17\r\nExpect: 100-continue\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        let response = read_response(&stream).await;
        assert_eq!(response.status, 413);
        assert_eq!(
            response.json()["type"],
            "urn:cnerium:problem:body-too-large"
        );
        assert_eq!(service.runs.load(Ordering::SeqCst), 0);
    });
}

#[test]
fn other_routes_of_the_app_are_untouched() {
    task::block_on(async {
        let service = start(1024).await;
        let hello = exchange(service.addr, "GET /hello HTTP/1.1", b"").await;
        assert_eq!(hello.status, 200);
        assert_eq!(hello.body, b"hello");
        assert_eq!(hello.header("x-content-type-options"), None);

        let get = exchange(service.addr, "GET /echo HTTP/1.1", b"").await;
        assert_eq!(get.status, 200);
        assert_eq!(get.body, b"plain get");
        assert_eq!(service.runs.load(Ordering::SeqCst), 0);
    });
}

#[test]
fn other_methods_on_a_durable_path_are_a_405_problem() {
    task::block_on(async {
        let service = start(1024).await;
        let response = exchange(service.addr, "DELETE /echo HTTP/1.1", b"").await;
        assert_eq!(response.status, 405);
        assert_eq!(response.header("allow"), Some("POST"));
        assert_eq!(
            response.header("content-type"),
            Some("application/problem+json")
        );
        assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(service.runs.load(Ordering::SeqCst), 0);
    });
}

#[test]
fn routing_failures_are_problems() {
    task::block_on(async {
        let service = start(1024).await;
        let missing = exchange(service.addr, "GET /nowhere HTTP/1.1", b"").await;
        assert_eq!(missing.status, 404);
        assert_eq!(missing.json()["detail"], "no route matches this path");

        let wrong = exchange(service.addr, "POST /hello HTTP/1.1", b"").await;
        assert_eq!(wrong.status, 405);
        assert_eq!(
            wrong.header("content-type"),
            Some("application/problem+json")
        );
    });
}

#[test]
fn a_client_hanging_up_does_not_cancel_the_handler() {
    task::block_on(async {
        let service = start(1024).await;
        let head = "POST /slow HTTP/1.1\r\nHost: test\r\nIdempotency-Key: slow-1\r\n\
                    Content-Length: 1\r\n\r\nx";
        let mut stream = TcpStream::connect(service.addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        while service.runs.load(Ordering::SeqCst) == 0 {
            task::sleep(Duration::from_millis(10)).await;
        }
        drop(stream);
        task::sleep(Duration::from_millis(50)).await;
        service.gate.send(()).await.unwrap();

        let retry = "POST /slow HTTP/1.1\r\nIdempotency-Key: slow-1";
        let mut answer = exchange(service.addr, retry, b"x").await;
        for _ in 0..100 {
            if answer.status != 409 {
                break;
            }
            task::sleep(Duration::from_millis(20)).await;
            answer = exchange(service.addr, retry, b"x").await;
        }
        assert_eq!(answer.status, 201);
        assert_eq!(answer.header("idempotent-replayed"), Some("true"));
        assert_eq!(service.runs.load(Ordering::SeqCst), 1);
    });
}
