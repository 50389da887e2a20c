//! The standalone tokio listener over real sockets.

#![cfg(feature = "tokio")]

mod support;

use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use cnerium_core::EventSink;
use cnerium_realtime::{ConnectionInfo, Hub, ListenError, RealtimeConfig};
use futures_util::StreamExt;
use serde_json::json;
use support::*;

#[tokio::test]
async fn broadcast_reaches_every_client_in_order() {
    let server = Server::with_config(config()).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(server.addr, "/ws").await);
    }
    wait_until("three clients are registered", || {
        server.hub.connection_count() == 3
    })
    .await;

    let first = event("order.created", None, json!({"order": {"id": "o1"}}));
    let second = event("order.paid", None, json!({"id": "o1"}));
    server
        .hub
        .publish(&[first.clone(), second.clone()])
        .await
        .unwrap();

    for client in &mut clients {
        assert_eq!(next_json(client).await, envelope(&first));
        assert_eq!(next_json(client).await, envelope(&second));
    }
    server.stop().await;
}

#[tokio::test]
async fn room_event_reaches_members_only() {
    let server = Server::with_config(config()).await;
    let mut member = connect(server.addr, "/ws?room=orders").await;
    let mut outsider = connect(server.addr, "/ws?room=other").await;
    assert_eq!(next_json(&mut member).await, joined("orders"));
    assert_eq!(next_json(&mut outsider).await, joined("other"));

    let room_event = event("order.created", Some("orders"), json!({"id": 1}));
    let marker = event("test.marker", None, json!({}));
    assert_eq!(server.hub.publish_event(&room_event), 1);
    server.hub.publish_event(&marker);

    assert_eq!(next_json(&mut member).await, envelope(&room_event));
    assert_eq!(next_json(&mut member).await, envelope(&marker));
    // Frames arrive in order, so the marker coming first proves the room event never came.
    assert_eq!(next_json(&mut outsider).await, envelope(&marker));
    server.stop().await;
}

#[tokio::test]
async fn url_rooms_are_joined_and_answered_in_order() {
    let server = Server::with_config(config()).await;
    let mut client = connect(server.addr, "/ws?room=a&room=b%3A1").await;

    assert_eq!(next_json(&mut client).await, joined("a"));
    assert_eq!(next_json(&mut client).await, joined("b:1"));
    assert_eq!(server.hub.room_size("a"), 1);
    assert_eq!(server.hub.room_size("b:1"), 1);
    server.stop().await;
}

#[tokio::test]
async fn join_and_leave_frames_change_membership_and_are_answered() {
    let server = Server::with_config(config()).await;
    let mut client = connect(server.addr, "/ws").await;

    send_json(&mut client, join_frame("orders")).await;
    assert_eq!(next_json(&mut client).await, joined("orders"));
    assert_eq!(server.hub.room_size("orders"), 1);
    let while_member = event("order.created", Some("orders"), json!({"n": 1}));
    server.hub.publish_event(&while_member);
    assert_eq!(next_json(&mut client).await, envelope(&while_member));

    send_json(&mut client, leave_frame("orders")).await;
    assert_eq!(next_json(&mut client).await, left("orders"));
    assert_eq!(server.hub.room_size("orders"), 0);
    assert_eq!(
        server
            .hub
            .publish_event(&event("order.created", Some("orders"), json!({}))),
        0
    );
    server.stop().await;
}

#[tokio::test]
async fn wrong_path_is_refused_at_the_handshake_with_404() {
    let server = Server::with_config(config()).await;

    let refused = try_connect(server.addr, "/elsewhere", &[])
        .await
        .unwrap_err();
    match refused {
        async_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), 404);
        }
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
    assert_eq!(server.hub.connection_count(), 0);
    server.stop().await;
}

fn user_rooms_for_their_owner_only(connection: &ConnectionInfo, room: &str) -> bool {
    match room.strip_prefix("user:") {
        Some(user) => {
            let expected = format!("u{user}");
            connection.bearer_token() == Some(expected.as_str())
                || connection.query_value("token").as_deref() == Some(expected.as_str())
        }
        None => true,
    }
}

#[tokio::test]
async fn join_rule_refusal_answers_an_error_and_withholds_room_events() {
    let hub = Hub::builder(config())
        .join_rule(user_rooms_for_their_owner_only)
        .build();
    let server = Server::start(hub).await;
    let mut owner = connect_with_headers(
        server.addr,
        "/ws?room=user:123",
        &[("authorization", "Bearer u123")],
    )
    .await;
    let mut by_token = connect(server.addr, "/ws?token=u123&room=user:123").await;
    let mut intruder = connect_with_headers(
        server.addr,
        "/ws?room=user:123",
        &[("authorization", "Bearer u9")],
    )
    .await;

    assert_eq!(next_json(&mut owner).await, joined("user:123"));
    assert_eq!(next_json(&mut by_token).await, joined("user:123"));
    let refusal = next_json(&mut intruder).await;
    assert_eq!(error_code(&refusal), "join_refused");
    assert_eq!(refusal["payload"]["room"], "user:123");
    send_json(&mut intruder, join_frame("user:123")).await;
    assert_eq!(error_code(&next_json(&mut intruder).await), "join_refused");
    assert_eq!(server.hub.room_size("user:123"), 2);

    let private = event("user.notified", Some("user:123"), json!({"secret": true}));
    let marker = event("test.marker", None, json!({}));
    server.hub.publish_event(&private);
    server.hub.publish_event(&marker);
    assert_eq!(next_json(&mut owner).await, envelope(&private));
    assert_eq!(next_json(&mut intruder).await, envelope(&marker));
    server.stop().await;
}

#[tokio::test]
async fn bad_frames_answer_errors_and_the_connection_keeps_working() {
    let server = Server::with_config(config()).await;
    let mut client = connect(server.addr, "/ws").await;

    client.send(Message::text("{not json")).await.unwrap();
    assert_eq!(error_code(&next_json(&mut client).await), "invalid_json");
    client.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(
        error_code(&next_json(&mut client).await),
        "binary_unsupported"
    );
    send_json(&mut client, json!({"type": "room.dance", "payload": {}})).await;
    assert_eq!(error_code(&next_json(&mut client).await), "unknown_type");
    send_json(&mut client, json!(["room.join"])).await;
    assert_eq!(error_code(&next_json(&mut client).await), "invalid_frame");
    send_json(&mut client, join_frame("")).await;
    assert_eq!(error_code(&next_json(&mut client).await), "invalid_room");
    send_json(&mut client, join_frame(&"r".repeat(201))).await;
    assert_eq!(error_code(&next_json(&mut client).await), "invalid_room");
    send_json(&mut client, join_frame("bell\u{7}")).await;
    assert_eq!(error_code(&next_json(&mut client).await), "invalid_room");
    send_json(
        &mut client,
        json!({"type": "room.join", "payload": {"room": 5}}),
    )
    .await;
    assert_eq!(error_code(&next_json(&mut client).await), "invalid_room");

    send_json(&mut client, join_frame("still-here")).await;
    assert_eq!(next_json(&mut client).await, joined("still-here"));
    assert_eq!(server.hub.connection_count(), 1);
    server.stop().await;
}

#[tokio::test]
async fn joining_more_rooms_than_allowed_answers_an_error() {
    let server = Server::with_config(RealtimeConfig {
        max_rooms_per_connection: 2,
        ..config()
    })
    .await;
    let mut client = connect(server.addr, "/ws?room=a&room=b&room=c").await;

    assert_eq!(next_json(&mut client).await, joined("a"));
    assert_eq!(next_json(&mut client).await, joined("b"));
    assert_eq!(error_code(&next_json(&mut client).await), "too_many_rooms");
    assert_eq!(server.hub.room_size("c"), 0);
    server.stop().await;
}

#[tokio::test]
async fn frame_over_the_limit_closes_with_1009() {
    let server = Server::with_config(RealtimeConfig {
        max_frame_size: 1024,
        ..config()
    })
    .await;
    let mut client = connect(server.addr, "/ws").await;
    wait_until("the client is registered", || {
        server.hub.connection_count() == 1
    })
    .await;

    let big = format!(
        r#"{{"type":"room.join","payload":{{"room":"{}"}}}}"#,
        "x".repeat(2000)
    );
    client.send(Message::text(big)).await.unwrap();

    assert_eq!(next_close(&mut client).await.code, CloseCode::Size);
    wait_until("the client is gone", || server.hub.connection_count() == 0).await;
    server.stop().await;
}

#[tokio::test]
async fn frame_at_the_limit_is_accepted() {
    let server = Server::with_config(RealtimeConfig {
        max_frame_size: 1024,
        ..config()
    })
    .await;
    let mut client = connect(server.addr, "/ws").await;
    let frame = join_frame("r").to_string();
    let padded = format!("{frame}{}", " ".repeat(1024 - frame.len()));

    client.send(Message::text(padded)).await.unwrap();
    assert_eq!(next_json(&mut client).await, joined("r"));
    server.stop().await;
}

#[tokio::test]
async fn silent_client_is_closed_after_the_idle_timeout() {
    let server = Server::with_config(RealtimeConfig {
        idle_timeout: Duration::from_millis(300),
        ..config()
    })
    .await;
    let mut client = connect(server.addr, "/ws").await;
    wait_until("the client is registered", || {
        server.hub.connection_count() == 1
    })
    .await;
    let connected = Instant::now();

    assert_eq!(next_close(&mut client).await.code, CloseCode::Away);
    assert!(
        connected.elapsed() >= Duration::from_millis(250),
        "closed before the timeout"
    );
    wait_until("the client is gone", || server.hub.connection_count() == 0).await;
    server.stop().await;
}

#[tokio::test]
async fn server_pings_at_the_configured_interval() {
    let server = Server::with_config(RealtimeConfig {
        ping_interval: Duration::from_millis(100),
        ..config()
    })
    .await;
    let mut client = connect(server.addr, "/ws").await;

    for _ in 0..2 {
        let message = within(client.next()).await.unwrap().unwrap();
        assert!(
            matches!(message, Message::Ping(_)),
            "expected a ping, got {message:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn client_answering_pings_is_not_idle() {
    let server = Server::with_config(RealtimeConfig {
        ping_interval: Duration::from_millis(50),
        idle_timeout: Duration::from_millis(300),
        ..config()
    })
    .await;
    let mut client = connect(server.addr, "/ws").await;

    // Reading lets the client answer each ping with a pong, which counts as activity.
    let mut pings = 0;
    let reading = tokio::time::timeout(Duration::from_millis(900), async {
        while let Some(Ok(message)) = client.next().await {
            assert!(
                matches!(message, Message::Ping(_)),
                "unexpected {message:?}"
            );
            pings += 1;
        }
    });
    assert!(
        reading.await.is_err(),
        "the server closed a client that answers pings"
    );
    assert!(pings >= 5, "only {pings} pings");
    assert_eq!(server.hub.connection_count(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_is_dropped_while_others_get_every_event() {
    let server = Server::with_config(RealtimeConfig {
        queue_capacity: 8,
        ..config()
    })
    .await;
    let stalled = connect_with_small_receive_buffer(server.addr, "/ws").await;
    let mut reader = connect(server.addr, "/ws").await;
    wait_until("both clients are registered", || {
        server.hub.connection_count() == 2
    })
    .await;

    let (received_tx, mut received) = tokio::sync::mpsc::unbounded_channel();
    let reading = tokio::spawn(async move {
        while let Some(Ok(message)) = reader.next().await {
            if let Message::Text(text) = message {
                let _ = received_tx.send(text.to_string());
            }
        }
    });

    let payload = "p".repeat(32 * 1024);
    let mut published = Vec::new();
    let mut slowest_publish = Duration::ZERO;
    while server.hub.connection_count() == 2 {
        assert!(
            published.len() < 5_000,
            "the stalled client was never dropped"
        );
        let event = event(
            "load.tick",
            None,
            json!({"n": published.len(), "pad": payload}),
        );
        let started = Instant::now();
        server.hub.publish_event(&event);
        slowest_publish = slowest_publish.max(started.elapsed());
        // Pace on the reading client, so only the stalled one can fall behind.
        let delivered = within(received.recv()).await.unwrap();
        assert_eq!(delivered, event.to_envelope());
        published.push(event);
    }

    assert!(published.len() > 8, "dropped before its queue could fill");
    assert!(
        slowest_publish < Duration::from_millis(100),
        "publish waited {slowest_publish:?}"
    );
    let after = event("load.after", None, json!({}));
    assert_eq!(server.hub.publish_event(&after), 1);
    assert_eq!(within(received.recv()).await.unwrap(), after.to_envelope());
    drop(stalled);
    reading.abort();
    server.stop().await;
}

#[tokio::test]
async fn client_closing_unregisters_its_connection_and_rooms() {
    let server = Server::with_config(config()).await;
    let mut client = connect(server.addr, "/ws?room=a").await;
    assert_eq!(next_json(&mut client).await, joined("a"));

    client.close(None).await.unwrap();
    wait_until("the client is gone", || server.hub.connection_count() == 0).await;
    assert_eq!(server.hub.room_size("a"), 0);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_clients_with_1001_and_stops_accepting() {
    let server = Server::with_config(config()).await;
    let addr = server.addr;
    let hub = server.hub.clone();
    let mut client = connect(addr, "/ws").await;
    wait_until("the client is registered", || hub.connection_count() == 1).await;

    let stopping = tokio::spawn(server.stop());
    assert_eq!(next_close(&mut client).await.code, CloseCode::Away);
    within(stopping).await.unwrap();

    assert_eq!(hub.connection_count(), 0);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );
}

#[tokio::test]
async fn disconnect_all_closes_every_client_with_1001() {
    let server = Server::with_config(config()).await;
    let mut first = connect(server.addr, "/ws?room=a").await;
    let mut second = connect(server.addr, "/ws").await;
    wait_until("both clients are registered", || {
        server.hub.connection_count() == 2
    })
    .await;

    server.hub.disconnect_all();

    assert_eq!(next_json(&mut first).await, joined("a"));
    assert_eq!(next_close(&mut first).await.code, CloseCode::Away);
    assert_eq!(next_close(&mut second).await.code, CloseCode::Away);
    assert_eq!(server.hub.room_size("a"), 0);
    server.stop().await;
}

#[tokio::test]
async fn configured_listener_refuses_port_zero_and_binds_a_valid_config() {
    let refused = cnerium_realtime::tokio::Listener::bind_configured(Hub::new(RealtimeConfig {
        port: 0,
        ..config()
    }))
    .await
    .unwrap_err();
    match refused {
        ListenError::Config(error) => assert_eq!(error.field(), "port"),
        other => panic!("expected a config error, got {other}"),
    }

    // Find a free port, then let the configured listener bind it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hub = Hub::new(RealtimeConfig {
        host: "127.0.0.1".into(),
        port,
        ..config()
    });
    let listener = cnerium_realtime::tokio::Listener::bind_configured(hub)
        .await
        .unwrap();
    assert_eq!(listener.local_addr().port(), port);
}

#[tokio::test]
async fn panicking_join_rule_drops_only_that_connection() {
    let hub = Hub::builder(config())
        .join_rule(|_: &ConnectionInfo, room: &str| {
            assert_ne!(room, "boom", "join rule panics on purpose");
            true
        })
        .build();
    let server = Server::start(hub).await;
    let mut survivor = connect(server.addr, "/ws?room=calm").await;
    assert_eq!(next_json(&mut survivor).await, joined("calm"));
    let mut victim = connect(server.addr, "/ws").await;
    wait_until("both clients are registered", || {
        server.hub.connection_count() == 2
    })
    .await;

    send_json(&mut victim, join_frame("boom")).await;
    wait_until("the panicking connection is gone", || {
        server.hub.connection_count() == 1
    })
    .await;

    let after = event("calm.tick", Some("calm"), json!({}));
    assert_eq!(server.hub.publish_event(&after), 1);
    assert_eq!(next_json(&mut survivor).await, envelope(&after));
    server.stop().await;
}

#[tokio::test]
async fn serve_io_serves_a_socket_accepted_by_the_application() {
    let hub = Hub::new(config());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = hub.clone();
    tokio::spawn(async move {
        let (stream, peer) = listener.accept().await.unwrap();
        let io = async_tungstenite::tokio::TokioAdapter::new(stream);
        serving
            .serve_io(io, Some(peer), cnerium_realtime::tokio::sleep)
            .await;
    });

    let mut client = connect(addr, "/ws?room=a").await;
    assert_eq!(next_json(&mut client).await, joined("a"));
    let in_room = event("order.created", Some("a"), json!({}));
    hub.publish_event(&in_room);
    assert_eq!(next_json(&mut client).await, envelope(&in_room));
}
