//! Starts the example services as real processes and talks to them over real sockets.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A running example service.
pub struct Service {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub http: String,
    /// `ws://127.0.0.1:PORT/ws`
    pub ws: String,
}

/// Path of an example binary built by `cargo test`, next to the test binary.
pub fn example_binary(name: &str) -> PathBuf {
    let test_exe = std::env::current_exe().expect("test binary path");
    // target/debug/deps/<test> -> target/debug/examples/<name>
    let debug_dir = test_exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir");
    let path = debug_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing; run the tests with `cargo test` so that examples are built",
        path.display()
    );
    path
}

impl Service {
    /// Starts `example` on free ports with records in `data_dir`, and waits until it
    /// prints where it listens.
    pub fn start(example: &str, data_dir: &Path) -> Service {
        let mut child = Command::new(example_binary(example))
            .args([
                "--http",
                "127.0.0.1:0",
                "--realtime",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the example service");

        let stdout = child.stdout.take().expect("piped stdout");
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let line = received
            .recv_timeout(Duration::from_secs(60))
            .expect("the service printed no start line within 60 s");
        let http = find_url(&line, "http://").expect("start line names the HTTP address");
        let ws = find_url(&line, "ws://").expect("start line names the WebSocket address");
        Service { child, http, ws }
    }

    /// Kills the process at once, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The URL of `path` on this service.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.http, path)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

fn find_url(line: &str, scheme: &str) -> Option<String> {
    let start = line.find(scheme)?;
    let rest = &line[start..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == ',' || c == ')')
        .unwrap_or(rest.len());
    Some(rest[..end].to_owned())
}

/// An HTTP client that never reuses connections between tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// `POST /orders` with `key` and a JSON `body`.
pub async fn post_order(
    client: &reqwest::Client,
    service: &Service,
    key: Option<&str>,
    body: &str,
) -> reqwest::Response {
    let mut request = client
        .post(service.url("/orders"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.send().await.expect("send POST /orders")
}

/// A WebSocket client of the realtime endpoint.
pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    /// Connects to `url` and, when it names rooms (`?room=a&room=b`), waits for the
    /// server's `room.joined` answer to each.
    pub async fn connect(url: &str) -> WsClient {
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect WebSocket");
        let mut client = WsClient { stream };
        let rooms = url.split_once('?').map_or(0, |(_, query)| {
            query.split('&').filter(|pair| pair.starts_with("room=")).count()
        });
        for _ in 0..rooms {
            let answer = client
                .next_json(Duration::from_secs(10))
                .await
                .expect("join answer");
            assert_eq!(answer["type"], "room.joined", "URL join answered {answer}");
        }
        client
    }

    /// Sends a text frame.
    pub async fn send(&mut self, text: &str) {
        self.stream
            .send(Message::text(text))
            .await
            .expect("send frame");
    }

    /// Joins `room` with a frame and waits for `room.joined`.
    pub async fn join(&mut self, room: &str) {
        let frame = serde_json::json!({"type": "room.join", "payload": {"room": room}});
        self.send(&frame.to_string()).await;
        let answer = self
            .next_json(Duration::from_secs(10))
            .await
            .expect("join answer");
        assert_eq!(
            answer["type"], "room.joined",
            "join of {room} answered {answer}"
        );
        assert_eq!(answer["payload"]["room"], room);
    }

    /// The next text frame parsed as JSON, or `None` when none arrives within `wait`.
    pub async fn next_json(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()??;
            match next.ok()? {
                Message::Text(text) => {
                    return Some(serde_json::from_str(text.as_str()).expect("frame is JSON"));
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Every event frame (frames with an `id`) that arrives within `wait`.
    pub async fn events_within(&mut self, wait: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut events = Vec::new();
        while let Some(frame) = self
            .next_json(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            if frame.get("id").is_some() {
                events.push(frame);
            }
        }
        events
    }
}
