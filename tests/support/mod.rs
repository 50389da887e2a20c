//! Starts the example services as real processes and talks to them over real sockets.

#![allow(dead_code)]

use std::ffi::OsStr;
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
        Self::start_with(example, [OsStr::new("--data-dir"), data_dir.as_os_str()])
    }

    /// Starts `example` on free ports with `args` after the address flags (a store, the
    /// names it keeps records under), and waits until it prints where it listens.
    pub fn start_with<I, A>(example: &str, args: I) -> Service
    where
        I: IntoIterator<Item = A>,
        A: AsRef<OsStr>,
    {
        let mut child = Command::new(example_binary(example))
            .args(["--http", "127.0.0.1:0", "--realtime", "127.0.0.1:0"])
            .args(args)
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
            query
                .split('&')
                .filter(|pair| pair.starts_with("room="))
                .count()
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

impl Service {
    /// Starts `example` like [`Service::start`], with its standard error written to `log`
    /// instead of the test's, so that a test can check afterwards that nothing panicked.
    pub fn start_logged(example: &str, data_dir: &Path, log: &Path) -> Service {
        let log_file = std::fs::File::create(log).expect("create the service log");
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
            .stderr(log_file)
            .spawn()
            .expect("start the example service");

        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = lines
            .next()
            .and_then(Result::ok)
            .expect("the service printed a start line");
        // Keep reading stdout so that the service never blocks on a full pipe.
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        let http = find_url(&line, "http://").expect("start line names the HTTP address");
        let ws = find_url(&line, "ws://").expect("start line names the WebSocket address");
        Service { child, http, ws }
    }

    /// Whether the process is still running (it has not crashed or exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The socket address of the HTTP server.
    pub fn http_addr(&self) -> std::net::SocketAddr {
        socket_addr(&self.http, "http://")
    }

    /// The socket address of the realtime listener.
    pub fn ws_addr(&self) -> std::net::SocketAddr {
        socket_addr(&self.ws, "ws://")
    }
}

fn socket_addr(url: &str, scheme: &str) -> std::net::SocketAddr {
    let rest = url
        .strip_prefix(scheme)
        .expect("URL of the expected scheme");
    let authority = rest.split('/').next().unwrap_or(rest);
    authority.parse().expect("URL holds an IP address and port")
}

/// The lines of a service log that report a panic.
pub fn panics_in(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("panicked"))
        .map(str::to_owned)
        .collect()
}

/// An HTTP/1.1 response as it came off the socket.
#[derive(Debug)]
pub struct RawResponse {
    /// The status code of the status line.
    pub status: u16,
    /// Header names (lower case) and raw values, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, de-chunked when the response was chunked.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    /// The body parsed as JSON; fails the test when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends `request` byte for byte on a new connection and reads the answer until the server
/// closes it (send `Connection: close`). Writing and reading run at once, so a server that
/// answers before reading a whole upload is seen too. Fails after 20 s.
pub async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> RawResponse {
    raw_exchange_with(addr, request, false).await
}

/// Like [`raw_exchange`], and shuts the write side down once `request` is sent, as a client
/// that gives up mid-body does.
pub async fn raw_exchange_half_closed(addr: std::net::SocketAddr, request: &[u8]) -> RawResponse {
    raw_exchange_with(addr, request, true).await
}

async fn raw_exchange_with(
    addr: std::net::SocketAddr,
    request: &[u8],
    half_close: bool,
) -> RawResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let stream = TcpStream::connect(addr)
        .await
        .expect("connect to the service");
    let (mut reader, mut writer) = stream.into_split();
    let request = request.to_vec();
    let write = tokio::spawn(async move {
        // The server may answer and close before the whole request went out; that is
        // what some rows test, so a failed write is no error here.
        if writer.write_all(&request).await.is_ok() && half_close {
            let _ = writer.shutdown().await;
        }
        writer
    });
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), reader.read_to_end(&mut received))
        .await
        .expect("the service answered and closed the connection within 20 s");
    if let Err(e) = read {
        // A reset after a complete answer still leaves that answer readable.
        assert!(
            !received.is_empty(),
            "the connection failed with no answer: {e}"
        );
    }
    drop(write.await);
    parse_raw_response(&received)
}

/// Parses one HTTP/1.x response; fails the test when the bytes are not one.
pub fn parse_raw_response(bytes: &[u8]) -> RawResponse {
    let text = String::from_utf8_lossy(bytes);
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response head in {text:?}"));
    let head = std::str::from_utf8(&bytes[..head_end]).expect("response head is text");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, Vec<u8>)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| {
            (
                name.trim().to_ascii_lowercase(),
                value.trim().as_bytes().to_vec(),
            )
        })
        .collect();
    let rest = &bytes[head_end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case(b"chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    RawResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut bytes: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = bytes.windows(2).position(|w| w == b"\r\n") else {
            return body;
        };
        let size_text = std::str::from_utf8(&bytes[..line_end]).unwrap_or("0");
        let size_text = size_text.split(';').next().unwrap_or("0").trim();
        let size = usize::from_str_radix(size_text, 16).expect("chunk size is hex");
        bytes = &bytes[line_end + 2..];
        if size == 0 || bytes.len() < size {
            return body;
        }
        body.extend_from_slice(&bytes[..size]);
        bytes = bytes.get(size + 2..).unwrap_or_default();
    }
}
