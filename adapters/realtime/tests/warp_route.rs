//! The warp route serves the same hub and session as the standalone listener.

#![cfg(feature = "warp")]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use cnerium_realtime::{ConnectionInfo, Hub, RealtimeConfig};
use serde_json::json;
use support::*;
use warp::Filter;

/// Serves `hub`'s route next to a plain `GET /health` on an ephemeral port.
async fn serve(hub: Hub) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let health = warp::path("health").map(|| "ok");
    let routes = cnerium_realtime::warp::route(hub).or(health);
    tokio::spawn(warp::serve(routes).incoming(listener).run());
    addr
}

#[tokio::test]
async fn warp_route_joins_rooms_and_delivers_events() {
    let hub = Hub::new(RealtimeConfig::default());
    let addr = serve(hub.clone()).await;
    let mut member = connect(addr, "/ws?room=orders").await;
    let mut other = connect(addr, "/ws").await;
    assert_eq!(next_json(&mut member).await, joined("orders"));
    wait_until("both clients are registered", || {
        hub.connection_count() == 2
    })
    .await;

    let room_event = event("order.created", Some("orders"), json!({"id": 1}));
    let broadcast = event("shop.opened", None, json!({}));
    hub.publish_event(&room_event);
    hub.publish_event(&broadcast);

    assert_eq!(next_json(&mut member).await, envelope(&room_event));
    assert_eq!(next_json(&mut member).await, envelope(&broadcast));
    assert_eq!(next_json(&mut other).await, envelope(&broadcast));

    send_json(&mut other, join_frame("orders")).await;
    assert_eq!(next_json(&mut other).await, joined("orders"));
    send_json(&mut other, leave_frame("orders")).await;
    assert_eq!(next_json(&mut other).await, left("orders"));
}

#[tokio::test]
async fn warp_route_refuses_other_paths_and_leaves_them_to_other_routes() {
    let hub = Hub::new(RealtimeConfig::default());
    let addr = serve(hub.clone()).await;

    let refused = try_connect(addr, "/elsewhere", &[]).await.unwrap_err();
    match refused {
        async_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), 404);
        }
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    within(stream.read_to_string(&mut response)).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok"), "{response}");
    assert_eq!(hub.connection_count(), 0);
}

#[tokio::test]
async fn warp_route_answers_a_plain_get_with_426_and_keeps_serving() {
    let hub = Hub::new(RealtimeConfig::default());
    let addr = serve(hub.clone()).await;

    // What `curl http://host/ws` sends; warp's own filter would answer a plain-text 400.
    let curl =
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";
    let response = send_raw(addr, curl).await;

    response.assert_problem(426);
    assert_eq!(response.header("upgrade"), "websocket");
    let mut client = connect(addr, "/ws?room=after").await;
    assert_eq!(next_json(&mut client).await, joined("after"));
    assert_eq!(hub.connection_count(), 1);
}

#[tokio::test]
async fn warp_route_refuses_other_methods_versions_and_keys_as_the_listener_does() {
    let hub = Hub::new(RealtimeConfig::default());
    let addr = serve(hub.clone()).await;

    let post = upgrade_request("POST", "/ws", &[]);
    let response = send_raw(addr, &post).await;
    response.assert_problem(405);
    assert_eq!(response.header("allow"), "GET");

    let version_8 = upgrade_request("GET", "/ws", &[("Sec-WebSocket-Version", "8")]);
    let response = send_raw(addr, &version_8).await;
    response.assert_problem(426);
    assert_eq!(response.header("sec-websocket-version"), "13");

    let bad_key = upgrade_request("GET", "/ws", &[("Sec-WebSocket-Key", "short")]);
    send_raw(addr, &bad_key).await.assert_problem(400);
    assert_eq!(hub.connection_count(), 0);
}

#[tokio::test]
async fn warp_route_applies_the_join_rule_to_handshake_headers() {
    let hub = Hub::builder(RealtimeConfig::default())
        .join_rule(|connection: &ConnectionInfo, room: &str| {
            room != "user:123" || connection.bearer_token() == Some("u123")
        })
        .build();
    let addr = serve(hub.clone()).await;

    let mut owner = connect_with_headers(
        addr,
        "/ws?room=user:123",
        &[("authorization", "Bearer u123")],
    )
    .await;
    let mut intruder = connect(addr, "/ws?room=user:123").await;

    assert_eq!(next_json(&mut owner).await, joined("user:123"));
    assert_eq!(error_code(&next_json(&mut intruder).await), "join_refused");
    assert_eq!(hub.room_size("user:123"), 1);
}

#[tokio::test]
async fn warp_route_answers_bad_frames_and_closes_oversized_ones_with_1009() {
    let hub = Hub::new(RealtimeConfig {
        max_frame_size: 1024,
        ..RealtimeConfig::default()
    });
    let addr = serve(hub.clone()).await;
    let mut client = connect(addr, "/ws").await;

    client.send(Message::binary(vec![0; 8])).await.unwrap();
    assert_eq!(
        error_code(&next_json(&mut client).await),
        "binary_unsupported"
    );
    client.send(Message::text("nope")).await.unwrap();
    assert_eq!(error_code(&next_json(&mut client).await), "invalid_json");

    client.send(Message::text("x".repeat(2000))).await.unwrap();
    assert_eq!(next_close(&mut client).await.code, CloseCode::Size);
    wait_until("the client is gone", || hub.connection_count() == 0).await;
}

#[tokio::test]
async fn warp_route_pings_and_closes_idle_clients() {
    let hub = Hub::new(RealtimeConfig {
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(400),
        ..RealtimeConfig::default()
    });
    let addr = serve(hub.clone()).await;
    let mut client = connect(addr, "/ws").await;

    // Reading the ping makes the client answer it, but then the client stops reading, so
    // no further pong goes out and the server sees silence.
    use futures_util::StreamExt;
    let ping = within(client.next()).await.unwrap().unwrap();
    assert!(
        matches!(ping, Message::Ping(_)),
        "expected a ping, got {ping:?}"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(next_close(&mut client).await.code, CloseCode::Away);
    wait_until("the client is gone", || hub.connection_count() == 0).await;
}

#[tokio::test]
async fn disconnect_all_closes_warp_clients() {
    let hub = Hub::new(RealtimeConfig::default());
    let addr = serve(hub.clone()).await;
    let mut client = connect(addr, "/ws").await;
    wait_until("the client is registered", || hub.connection_count() == 1).await;

    hub.disconnect_all();
    assert_eq!(next_close(&mut client).await.code, CloseCode::Away);
}
