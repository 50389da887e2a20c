//! One replica's receiving side of the event relay, for the relay tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cnerium_core::Event;
use cnerium_store_redis::RedisEventRelay;
use cnerium_testkit::RecordingSink;

/// One replica's receiving side: its local sink (a WebSocket hub in a service) fed by a
/// relay running on a task of its own.
pub struct Replica {
    pub local: RecordingSink,
    pub relay: tokio::task::JoinHandle<()>,
}

impl Replica {
    pub async fn start(channel: &str) -> Self {
        let local = RecordingSink::new();
        let relay = RedisEventRelay::subscribe(&super::url(), channel, Arc::new(local.clone()))
            .await
            .expect("subscribing to the test channel");
        Self {
            local,
            relay: tokio::spawn(relay.run()),
        }
    }

    /// Waits until the local sink received `marker`, then returns everything it received
    /// before it. Redis delivers a channel's messages to a subscriber in order, so a repeat
    /// of anything published before the marker would have arrived before it.
    pub async fn received_before(&self, marker: &Event) -> Vec<Event> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let events = self.local.events();
            if let Some(at) = events.iter().position(|e| e.id == marker.id) {
                assert_eq!(at + 1, events.len(), "events after the marker: {events:?}");
                return events[..at].to_vec();
            }
            assert!(
                Instant::now() < deadline,
                "marker not relayed; got {events:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.relay.abort();
    }
}

/// An event published last, to know that everything before it was relayed.
pub fn marker(n: u64) -> Event {
    super::event("test.marker", None, n)
}

/// Ids of the server's pub/sub connections.
pub async fn pubsub_client_ids(raw: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(raw)
        .await
        .unwrap();
    list.lines()
        .filter_map(|line| line.split(' ').find_map(|field| field.strip_prefix("id=")))
        .map(str::to_owned)
        .collect()
}
