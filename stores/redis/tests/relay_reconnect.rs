//! The event relay survives the loss of its connection. A test binary of its own: it kills
//! the pub/sub connections that appeared while its relay subscribed, which must be no other
//! test's.

mod common;

use std::time::{Duration, Instant};

use cnerium_core::EventSink;
use cnerium_store_redis::RedisEventSink;
use common::replica::{Replica, marker, pubsub_client_ids};
use common::{TestPrefix, event};

#[tokio::test]
async fn the_relay_subscribes_again_after_losing_its_connection() {
    let channel = "cnerium-test:relay:reconnect";
    let prefix = TestPrefix::new("relay_reconnect").await;
    let mut raw = prefix.raw().await;
    let before = pubsub_client_ids(&mut raw).await;
    let replica = Replica::start(channel).await;
    let relay_ids: Vec<String> = pubsub_client_ids(&mut raw)
        .await
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect();
    assert!(!relay_ids.is_empty(), "the relay's connection is listed");

    for id in &relay_ids {
        let _: () = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let subscribers: Vec<(String, u64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut raw)
            .await
            .unwrap();
        let resubscribed = pubsub_client_ids(&mut raw)
            .await
            .iter()
            .any(|id| !before.contains(id) && !relay_ids.contains(id));
        if subscribers[0].1 == 1 && resubscribed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the relay did not subscribe again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sink = RedisEventSink::connect(&common::url(), channel)
        .await
        .unwrap();
    let after = event("order.created", None, 1);
    sink.publish(&[after.clone(), marker(2)]).await.unwrap();

    assert_eq!(replica.received_before(&marker(2)).await, [after]);
    prefix.clean().await;
}
