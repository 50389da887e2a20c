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
