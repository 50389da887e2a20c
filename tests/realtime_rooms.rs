//! `emit_to` over real sockets: a durable route's room event reaches the room's members
//! and no one else, and only after the commit.

#![cfg(all(feature = "realtime", feature = "warp", feature = "memory-store"))]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cnerium::realtime::{Hub, RealtimeConfig};
use cnerium::stores::MemoryStore;
use cnerium::{DurableRequest, DurableResponse, EmitError, Engine, EngineConfig, SystemClock};
use support::WsClient;
use warp::Filter;

struct Rooms {
    http: SocketAddr,
    ws: String,
}

async fn start() -> Rooms {
    let hub = Hub::new(RealtimeConfig::default());
    let listener =
        cnerium::realtime::tokio::Listener::bind("127.0.0.1:0".parse().unwrap(), hub.clone())
            .await
            .unwrap();
    let ws = format!("ws://{}/ws", listener.local_addr());
    tokio::spawn(listener.run());

    let engine = Engine::with_parts(
        Arc::new(MemoryStore::new()),
        Arc::new(hub),
        Arc::new(SystemClock),
        EngineConfig::default(),
    );
    let notify = engine.route("shops.notify", |request: DurableRequest| async move {
        let body = request.json().unwrap_or_default();
        let shop = body["shop"].as_str().unwrap_or("0").to_owned();
        request.emit_to(
            &format!("shop:{shop}"),
            "shop.notified",
            serde_json::json!({"shop": shop}),
        )?;
        Ok::<_, EmitError>(DurableResponse::ok(serde_json::json!({"ok": true})))
    });
    let routes = warp::path("notify").and(cnerium::warp::durable(notify));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(routes).incoming(listener).run());
    Rooms { http, ws }
}

#[tokio::test(flavor = "multi_thread")]
async fn emit_to_reaches_the_room_members_only_once() {
    let rooms = start().await;
    let mut member_by_url = WsClient::connect(&format!("{}?room=shop:42", rooms.ws)).await;
    member_by_url.join("anything").await;
    let mut member_by_frame = WsClient::connect(&rooms.ws).await;
    member_by_frame.join("shop:42").await;
    let mut other_room = WsClient::connect(&rooms.ws).await;
    other_room.join("shop:7").await;
    let mut left = WsClient::connect(&rooms.ws).await;
    left.join("shop:42").await;
    left.send(r#"{"type":"room.leave","payload":{"room":"shop:42"}}"#)
        .await;
    let answer = left.next_json(Duration::from_secs(5)).await.unwrap();
    assert_eq!(answer["type"], "room.left");

    let http = support::client();
    for _ in 0..2 {
        let response = http
            .post(format!("http://{}/notify", rooms.http))
            .header("idempotency-key", "n-1")
            .header("content-type", "application/json")
            .body(r#"{"shop":"42"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    for member in [&mut member_by_url, &mut member_by_frame] {
        let events = member.events_within(Duration::from_millis(800)).await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0]["type"], "shop.notified");
        assert_eq!(events[0]["room"], "shop:42");
        assert_eq!(events[0]["payload"]["shop"], "42");
    }
    assert!(
        other_room
            .events_within(Duration::from_millis(300))
            .await
            .is_empty()
    );
    assert!(
        left.events_within(Duration::from_millis(300))
            .await
            .is_empty()
    );
}
