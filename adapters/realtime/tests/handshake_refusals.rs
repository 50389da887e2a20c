//! The standalone tokio listener answers a request it cannot upgrade with an HTTP error
//! over real sockets, and goes on serving valid clients.

#![cfg(feature = "tokio")]

mod support;

use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::protocol::Role;
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Checks that refused requests left no connection behind and that a valid client still
/// joins a room from its URL and receives the room's events.
async fn assert_serves_a_valid_client(server: &Server) {
    assert_eq!(server.hub.connection_count(), 0);
    let mut client = connect(server.addr, "/ws?room=after").await;
    assert_eq!(next_json(&mut client).await, joined("after"));
    let in_room = event("order.created", Some("after"), json!({"n": 1}));
    assert_eq!(server.hub.publish_event(&in_room), 1);
    assert_eq!(next_json(&mut client).await, envelope(&in_room));
}

#[tokio::test]
async fn plain_get_without_upgrade_gets_426_naming_websocket() {
    let server = Server::with_config(config()).await;

    // What `curl http://host/ws` sends.
    let curl =
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";
    let response = send_raw(server.addr, curl).await;

    let problem = response.assert_problem(426);
    assert_eq!(problem["title"], "Upgrade Required");
    assert_eq!(response.header("upgrade"), "websocket");
    assert_eq!(response.header("connection"), "upgrade, close");
    assert_serves_a_valid_client(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn upgrade_without_connection_upgrade_gets_426() {
    let server = Server::with_config(config()).await;

    let request = upgrade_request("GET", "/ws", &[("Connection", "keep-alive")]);
    let response = send_raw(server.addr, &request).await;

    response.assert_problem(426);
    assert_eq!(response.header("upgrade"), "websocket");
    assert_serves_a_valid_client(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn post_gets_405_allowing_get() {
    let server = Server::with_config(config()).await;

    let post = b"POST /ws HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                 Content-Length: 13\r\n\r\n{\"room\":\"a\"}\n";
    let response = send_raw(server.addr, post).await;

    response.assert_problem(405);
    assert_eq!(response.header("allow"), "GET");
    assert_serves_a_valid_client(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn wrong_websocket_version_gets_426_naming_version_13() {
    let server = Server::with_config(config()).await;

    let request = upgrade_request("GET", "/ws", &[("Sec-WebSocket-Version", "8")]);
    let response = send_raw(server.addr, &request).await;

    response.assert_problem(426);
    assert_eq!(response.header("sec-websocket-version"), "13");
    assert_serves_a_valid_client(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn missing_or_malformed_key_gets_400() {
    let server = Server::with_config(config()).await;

    for key in ["", "not-a-nonce", "dGhlIHNhbXBsZSBub25jZQ"] {
        let request = upgrade_request("GET", "/ws", &[("Sec-WebSocket-Key", key)]);
        let response = send_raw(server.addr, &request).await;
        let problem = response.assert_problem(400);
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("Sec-WebSocket-Key"), "{key:?}: {detail}");
    }
    assert_serves_a_valid_client(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn wrong_path_gets_404_as_a_problem() {
    let server = Server::with_config(config()).await;

    let request = upgrade_request("GET", "/elsewhere?room=a", &[]);
    let response = send_raw(server.addr, &request).await;

    let problem = response.assert_problem(404);
    assert!(
        problem["detail"].as_str().unwrap().contains("/ws"),
        "{problem}"
    );
    assert_serves_a_valid_client(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn garbage_bytes_get_400() {
    let server = Server::with_config(config()).await;

    // The start of a TLS ClientHello, as from a client speaking wss:// to a ws:// port.
    let tls = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x8e\x11";
    for garbage in [
        &tls[..],
        b"\x00\x01\x02\x03\r\n\r\n",
        b"hello there\r\n\r\n",
    ] {
        let response = send_raw(server.addr, garbage).await;
        response.assert_problem(400);
    }
    assert_serves_a_valid_client(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn http_1_0_request_gets_400() {
    let server = Server::with_config(config()).await;

    let request = upgrade_request("GET", "/ws", &[]);
    let request = String::from_utf8(request)
        .unwrap()
        .replacen("HTTP/1.1", "HTTP/1.0", 1);
    let response = send_raw(server.addr, request.as_bytes()).await;

    response.assert_problem(400);
    assert_serves_a_valid_client(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn head_over_16_kib_gets_431() {
    let server = Server::with_config(config()).await;

    let cookie = format!("Cookie: {}\r\n\r\n", "c".repeat(17 * 1024));
    let mut request = upgrade_request("GET", "/ws", &[]);
    request.truncate(request.len() - 2);
    request.extend_from_slice(cookie.as_bytes());
    let response = send_raw(server.addr, &request).await;

    response.assert_problem(431);
    assert_serves_a_valid_client(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn handshake_sent_in_pieces_still_upgrades_and_joins_url_rooms() {
    let server = Server::with_config(config()).await;
    let request = upgrade_request("GET", "/ws?room=a&room=b", &[]);

    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    for piece in request.chunks(20) {
        stream.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        within(stream.read_exact(&mut byte)).await.unwrap();
        answer.push(byte[0]);
    }
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
    // The accept key of the request's nonce, as in the example of RFC 6455.
    assert!(
        answer.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{answer}"
    );

    let mut client =
        WebSocketStream::from_raw_socket(TokioAdapter::new(stream), Role::Client, None).await;
    assert_eq!(next_json(&mut client).await, joined("a"));
    assert_eq!(next_json(&mut client).await, joined("b"));
    let broadcast = event("shop.opened", None, json!({}));
    assert_eq!(server.hub.publish_event(&broadcast), 1);
    assert_eq!(next_json(&mut client).await, envelope(&broadcast));
    server.stop().await;
}
