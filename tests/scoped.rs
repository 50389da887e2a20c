//! The `scoped_orders` example, run as a real process: idempotency keys belong to the caller
//! named by the bearer token, and a user's room is open to that user's connection only.

#![cfg(all(feature = "warp", feature = "realtime", feature = "file-store"))]

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{Service, client};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const EXAMPLE: &str = "scoped_orders";

/// The example's demo tokens: `token-123` is user 123, `token-456` user 456.
const USER_A: (&str, &str) = ("token-123", "123");
const USER_B: (&str, &str) = ("token-456", "456");

const ORDER: &str = r#"{"product_id":"p1","quantity":2}"#;

const DEADLINE: Duration = Duration::from_secs(10);

/// Waiting time for a frame that must not come.
const QUIET: Duration = Duration::from_millis(700);

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }

    fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }
}

async fn order(service: &Service, token: Option<&str>, key: &str, body: &str) -> Answer {
    let mut request = client()
        .post(service.url("/orders"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body.to_owned());
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = request.send().await.expect("send POST /orders");
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().await.expect("read the body").to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn another_user_sending_the_same_key_and_body_runs_an_order_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(EXAMPLE, dir.path());

    let a_first = order(&service, Some(USER_A.0), "order-1", ORDER).await;
    assert_eq!(a_first.status, 201);
    assert!(!a_first.replayed());
    assert_eq!(
        a_first.json(),
        json!({"ok": true, "order_id": "ord_123_order-1", "user": "123",
               "product_id": "p1", "quantity": 2})
    );

    let b_first = order(&service, Some(USER_B.0), "order-1", ORDER).await;
    assert_eq!(b_first.status, 201, "B's own operation runs");
    assert!(!b_first.replayed(), "B never gets A's stored response");
    assert_ne!(b_first.body, a_first.body);
    assert_eq!(b_first.json()["user"], USER_B.1);
    assert_eq!(b_first.json()["order_id"], "ord_456_order-1");

    let a_retry = order(&service, Some(USER_A.0), "order-1", ORDER).await;
    assert_eq!(a_retry.status, 201);
    assert!(a_retry.replayed());
    assert_eq!(a_retry.body, a_first.body, "A's retry replays A's bytes");

    let b_retry = order(&service, Some(USER_B.0), "order-1", ORDER).await;
    assert!(b_retry.replayed());
    assert_eq!(b_retry.body, b_first.body, "B's retry replays B's bytes");

    // Another body under the key is a conflict within the caller's own key space only.
    let a_other = order(
        &service,
        Some(USER_A.0),
        "order-1",
        r#"{"product_id":"p2","quantity":1}"#,
    )
    .await;
    assert_eq!(a_other.status, 409);
    assert_eq!(
        a_other.json()["type"],
        "urn:cnerium:problem:idempotency-key-reused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_without_a_known_token_is_401_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(EXAMPLE, dir.path());
    let mut a_room = UserSocket::connect(&service, Some(USER_A.0)).await;
    a_room.join_ok("user:123").await;

    for token in [None, Some("not-a-token")] {
        for _ in 0..2 {
            let refused = order(&service, token, "anon-1", ORDER).await;
            assert_eq!(refused.status, 401, "token {token:?}");
            assert!(!refused.replayed(), "a 401 is never a replay");
            assert_eq!(refused.headers["www-authenticate"], "Bearer");
            assert_eq!(refused.headers["content-type"], "application/problem+json");
            assert_eq!(refused.headers["x-content-type-options"], "nosniff");
            let problem = refused.json();
            assert_eq!(problem["status"], 401, "{problem}");
            assert!(
                problem["detail"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("Bearer"),
                "{problem}"
            );
        }
    }

    // The refused requests ran nothing: the first order with the key is A's, fresh, and
    // its event is the only one A's room sees.
    let first = order(&service, Some(USER_A.0), "anon-1", ORDER).await;
    assert_eq!(first.status, 201);
    assert!(!first.replayed());
    let event = a_room.next_frame(DEADLINE).await.expect("A's order event");
    assert_eq!(event["type"], "order.created", "{event}");
    assert_eq!(event["room"], "user:123", "{event}");
    assert_eq!(event["payload"]["order_id"], "ord_123_anon-1", "{event}");
    assert_eq!(a_room.next_frame(QUIET).await, None, "one order, one event");
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_connection_authenticated_as_the_user_may_join_the_user_room() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(EXAMPLE, dir.path());

    let mut owner = UserSocket::connect(&service, Some(USER_A.0)).await;
    owner.join_ok("user:123").await;

    let mut other = UserSocket::connect(&service, Some(USER_B.0)).await;
    other.join_refused("user:123").await;
    other.join_ok("user:456").await;
    let mut anonymous = UserSocket::connect(&service, None).await;
    anonymous.join_refused("user:123").await;
    anonymous.join_ok("lobby").await;

    // A's order reaches A's room and nobody else.
    assert_eq!(
        order(&service, Some(USER_A.0), "room-1", ORDER)
            .await
            .status,
        201
    );
    let event = owner.next_frame(DEADLINE).await.expect("the owner's event");
    assert_eq!(event["room"], "user:123", "{event}");
    assert_eq!(event["payload"]["order_id"], "ord_123_room-1", "{event}");
    assert_eq!(other.next_frame(QUIET).await, None, "B got A's event");
    assert_eq!(
        anonymous.next_frame(QUIET).await,
        None,
        "a stranger got A's event"
    );
}

/// A WebSocket client of the example, authenticated by a bearer token or not.
struct UserSocket {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl UserSocket {
    async fn connect(service: &Service, token: Option<&str>) -> UserSocket {
        let mut request = service.ws.as_str().into_client_request().unwrap();
        if let Some(token) = token {
            let value = format!("Bearer {token}").parse().unwrap();
            request.headers_mut().insert("authorization", value);
        }
        let (stream, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("connect WebSocket");
        UserSocket { stream }
    }

    async fn join(&mut self, room: &str) -> Value {
        let frame = json!({"type": "room.join", "payload": {"room": room}});
        self.stream
            .send(Message::text(frame.to_string()))
            .await
            .expect("send a join");
        self.next_frame(DEADLINE).await.expect("a join answer")
    }

    async fn join_ok(&mut self, room: &str) {
        let answer = self.join(room).await;
        assert_eq!(answer["type"], "room.joined", "join {room}: {answer}");
        assert_eq!(answer["payload"]["room"], room);
    }

    async fn join_refused(&mut self, room: &str) {
        let answer = self.join(room).await;
        assert_eq!(answer["type"], "error", "join {room}: {answer}");
        assert_eq!(answer["payload"]["code"], "join_refused", "{answer}");
        assert_eq!(answer["payload"]["room"], room, "{answer}");
    }

    /// The next text frame as JSON, or `None` when none comes within `wait`.
    async fn next_frame(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let message = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()??
                .expect("read a frame");
            if let Message::Text(text) = message {
                return Some(serde_json::from_str(text.as_str()).expect("frames are JSON"));
            }
        }
    }
}
