//! Events across replicas: a `RedisEventSink` publishes, a `RedisEventRelay` per replica
//! delivers, against a real Redis server.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use cnerium_core::{DurableRequest, DurableResponse, Engine, EngineConfig, EventSink, ManualClock};
use cnerium_store_redis::{ConnectError, RedisEventRelay, RedisEventSink};
use cnerium_testkit::RecordingSink;
use common::replica::{Replica, marker};
use common::{T0, TestPrefix, event};
use http::{Request, StatusCode};

#[tokio::test]
async fn one_publish_reaches_every_replica_exactly_once() {
    let channel = "cnerium-test:relay:once";
    let replica_a = Replica::start(channel).await;
    let replica_b = Replica::start(channel).await;
    // The publishing replica is A: its engine's sink publishes to Redis only.
    let sink = RedisEventSink::connect(&common::url(), channel)
        .await
        .unwrap();
    let events = vec![
        event("order.created", None, 1),
        event("order.paid", Some("shop:1"), 2),
    ];

    sink.publish(&events).await.unwrap();
    sink.publish(&[marker(3)]).await.unwrap();

    assert_eq!(replica_a.received_before(&marker(3)).await, events);
    assert_eq!(replica_b.received_before(&marker(3)).await, events);
    assert_eq!(
        replica_a.local.batches().len(),
        3,
        "one local publish per relayed event"
    );
}

#[tokio::test]
async fn a_committed_request_notifies_every_replica_once_and_its_replay_notifies_none() {
    let channel = "cnerium-test:relay:engine";
    let prefix = TestPrefix::new("relay_engine").await;
    let replica_a = Replica::start(channel).await;
    let replica_b = Replica::start(channel).await;
    let store = prefix.connect().await;
    let sink = store.event_sink(channel);
    let engine = Engine::with_parts(
        Arc::new(store),
        Arc::new(sink.clone()),
        Arc::new(ManualClock::new(T0)),
        EngineConfig::default(),
    );
    let route = engine.route("orders.create", |request: DurableRequest| async move {
        request.emit("order.created", serde_json::json!({"order_id": "o1"}))?;
        Ok::<_, cnerium_core::EmitError>(DurableResponse::created(serde_json::json!({"ok": true})))
    });
    let post = || {
        Request::post("/orders")
            .header("idempotency-key", "order-1")
            .header("content-type", "application/json")
            .body(Bytes::from_static(b"{\"product_id\":\"p1\"}"))
            .unwrap()
    };

    let first = route.handle(post()).await;
    let replay = route.handle(post()).await;
    sink.publish(&[marker(9)]).await.unwrap();

    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(first.body(), replay.body());
    assert!(replay.headers().contains_key("idempotent-replayed"));
    for replica in [&replica_a, &replica_b] {
        let kinds: Vec<String> = replica
            .received_before(&marker(9))
            .await
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["order.created"]);
    }
    assert!(
        engine.store().pending_events(10).await.unwrap().is_empty(),
        "the engine marked the events published"
    );
    prefix.clean().await;
}

#[tokio::test]
async fn messages_that_are_not_envelopes_are_skipped() {
    let channel = "cnerium-test:relay:malformed";
    let replica = Replica::start(channel).await;
    let mut raw = TestPrefix::new("relay_malformed").await.raw().await;
    let sink = RedisEventSink::connect(&common::url(), channel)
        .await
        .unwrap();

    for junk in [
        "not json",
        "{\"id\":\"x\",\"type\":\"a..b\",\"payload\":1,\"ts\":\"x\"}",
    ] {
        let _: () = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(junk)
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    let good = event("order.created", None, 1);
    sink.publish(&[good.clone(), marker(2)]).await.unwrap();

    assert_eq!(replica.received_before(&marker(2)).await, [good]);
}

#[tokio::test]
async fn subscribing_to_an_unreachable_server_fails() {
    let local: Arc<dyn EventSink> = Arc::new(RecordingSink::new());
    let result = RedisEventRelay::subscribe("redis://127.0.0.1:1/", "c", local.clone()).await;
    assert!(
        matches!(result, Err(ConnectError::Unreachable(_))),
        "{result:?}"
    );
    let result = RedisEventRelay::subscribe("http://nowhere", "c", local).await;
    assert!(
        matches!(result, Err(ConnectError::InvalidUrl(_))),
        "{result:?}"
    );
}
