//! Helpers shared by the socket tests: start a listener, connect clients, read frames with
//! deadlines.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::{self, Message};
use cnerium_core::{Event, Timestamp};
use cnerium_realtime::{Hub, RealtimeConfig};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any single expectation may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(5);

pub type Client = WebSocketStream<TokioAdapter<TcpStream>>;

/// A tokio listener on an ephemeral port, stopped by [`Server::stop`].
pub struct Server {
    pub hub: Hub,
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Server {
    pub async fn start(hub: Hub) -> Self {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let listener = cnerium_realtime::tokio::Listener::bind(addr, hub.clone())
            .await
            .unwrap();
        let addr = listener.local_addr();
        assert_ne!(addr.port(), 0);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(listener.run_until(async {
            let _ = stopped.await;
        }));
        Self {
            hub,
            addr,
            stop,
            task,
        }
    }

    pub async fn with_config(config: RealtimeConfig) -> Self {
        Self::start(Hub::new(config)).await
    }

    /// Signals shutdown and waits for the listener to return.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        within(self.task).await.unwrap();
    }
}

/// A config with test-friendly defaults.
pub fn config() -> RealtimeConfig {
    RealtimeConfig::default()
}

/// Fails the test when `future` takes longer than [`DEADLINE`].
pub async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(DEADLINE, future)
        .await
        .expect("the expected outcome did not happen in time")
}

/// Waits until `condition` holds, checking every 10 ms, failing after [`DEADLINE`].
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let waiting = async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    if tokio::time::timeout(DEADLINE, waiting).await.is_err() {
        panic!("timed out waiting until {what}");
    }
}

pub async fn connect(addr: SocketAddr, path: &str) -> Client {
    try_connect(addr, path, &[]).await.unwrap()
}

pub async fn connect_with_headers(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Client {
    try_connect(addr, path, headers).await.unwrap()
}

pub async fn try_connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Client, tungstenite::Error> {
    let stream = TcpStream::connect(addr).await.unwrap();
    handshake(stream, addr, path, headers).await
}

/// A client whose socket receive buffer is tiny, so a server writing to it fills up fast.
pub async fn connect_with_small_receive_buffer(addr: SocketAddr, path: &str) -> Client {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    handshake(stream, addr, path, &[]).await.unwrap()
}

async fn handshake(
    stream: TcpStream,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Client, tungstenite::Error> {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (name, value) in headers {
        let name: tungstenite::http::HeaderName = name.parse().unwrap();
        request.headers_mut().insert(name, value.parse().unwrap());
    }
    let (client, _response) =
        within(async_tungstenite::tokio::client_async(request, stream)).await?;
    Ok(client)
}

/// The next message that is not a ping or pong.
pub async fn next_message(client: &mut Client) -> Message {
    within(async {
        loop {
            match client.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(message)) => return message,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    })
    .await
}

/// The next text frame, parsed as JSON.
pub async fn next_json(client: &mut Client) -> Value {
    match next_message(client).await {
        Message::Text(text) => serde_json::from_str(text.as_str()).unwrap(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Reads until the server's close frame and returns it.
pub async fn next_close(client: &mut Client) -> CloseFrame {
    within(async {
        loop {
            match client.next().await {
                Some(Ok(Message::Close(Some(frame)))) => return frame,
                Some(Ok(Message::Close(None))) => panic!("close frame without a code"),
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
}

pub async fn send_json(client: &mut Client, value: Value) {
    client.send(Message::text(value.to_string())).await.unwrap();
}

pub fn join_frame(room: &str) -> Value {
    json!({"type": "room.join", "payload": {"room": room}})
}

pub fn leave_frame(room: &str) -> Value {
    json!({"type": "room.leave", "payload": {"room": room}})
}

pub fn joined(room: &str) -> Value {
    json!({"type": "room.joined", "payload": {"room": room}})
}

pub fn left(room: &str) -> Value {
    json!({"type": "room.left", "payload": {"room": room}})
}

/// The `code` of an error frame, failing when `frame` is not one.
pub fn error_code(frame: &Value) -> &str {
    assert_eq!(
        frame["type"], "error",
        "expected an error frame, got {frame}"
    );
    assert!(
        frame["payload"]["message"].is_string(),
        "error without message: {frame}"
    );
    frame["payload"]["code"].as_str().unwrap()
}

pub fn event(kind: &str, room: Option<&str>, payload: Value) -> Event {
    Event::new(
        kind,
        room.map(str::to_owned),
        payload,
        Timestamp::from_millis(1),
    )
    .unwrap()
}

/// The JSON a client receives for `event`.
pub fn envelope(event: &Event) -> Value {
    serde_json::from_str(&event.to_envelope()).unwrap()
}

/// An HTTP answer read from a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The value of the header `name` (case-insensitive), failing when it is absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(found, _)| found.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
            .unwrap_or_else(|| panic!("no {name} header in {self:?}"))
    }

    /// Checks that this is a problem answer with `status` that closes the connection, and
    /// returns its body.
    pub fn assert_problem(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("content-type"), "application/problem+json");
        assert_eq!(self.header("content-length"), self.body.len().to_string());
        let connection = self.header("connection").to_ascii_lowercase();
        assert!(
            connection.split(',').any(|token| token.trim() == "close"),
            "{self:?}"
        );
        let problem: Value = serde_json::from_slice(&self.body).unwrap();
        assert_eq!(problem["status"], status, "{problem}");
        assert!(problem["title"].is_string(), "{problem}");
        assert!(problem["detail"].is_string(), "{problem}");
        problem
    }
}

/// Sends `request` as raw bytes and reads the answer until the server closes the
/// connection; fails when the server closes without a complete HTTP answer.
pub async fn send_raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut received = Vec::new();
    within(stream.read_to_end(&mut received)).await.unwrap();

    let mut fields = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut fields);
    let length = match response.parse(&received) {
        Ok(httparse::Status::Complete(length)) => length,
        other => panic!(
            "no complete HTTP answer ({other:?}): {:?}",
            String::from_utf8_lossy(&received)
        ),
    };
    RawResponse {
        status: response.code.unwrap(),
        headers: response
            .headers
            .iter()
            .map(|field| {
                let value = String::from_utf8(field.value.to_vec()).unwrap();
                (field.name.to_owned(), value)
            })
            .collect(),
        body: received[length..].to_vec(),
    }
}

/// A WebSocket upgrade request for `target` with the `name: value` lines of `replace`
/// instead of the defaults of the same name (an empty value drops the header).
pub fn upgrade_request(method: &str, target: &str, replace: &[(&str, &str)]) -> Vec<u8> {
    let defaults = [
        ("Host", "localhost"),
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let mut head = format!("{method} {target} HTTP/1.1\r\n");
    for (name, default) in defaults {
        let value = replace
            .iter()
            .find(|(replaced, _)| replaced.eq_ignore_ascii_case(name))
            .map_or(default, |(_, value)| *value);
        if !value.is_empty() {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("\r\n");
    head.into_bytes()
}
