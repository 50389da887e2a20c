//! Two replicas of the `durable_orders_realtime` example, run as real processes that share
//! one store and one Redis event channel, driven over real sockets.
//!
//! Every scenario runs twice: with records in PostgreSQL (a schema of the test's own) and
//! events on a Redis channel, and with records and events both in Redis (a key prefix of
//! the test's own). The servers are those of the store crates' tests:
//! `CNERIUM_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`) and
//! `CNERIUM_REDIS_URL` (default `redis://127.0.0.1:6379/`). Each test removes its schema or
//! keys when it ends, with `psql` and `redis-cli`.

#![cfg(all(
    feature = "warp",
    feature = "realtime",
    feature = "file-store",
    feature = "memory-store",
    feature = "postgres-store",
    feature = "redis-store"
))]

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use support::{Service, WsClient, client, post_order};

const EXAMPLE: &str = "durable_orders_realtime";
const ORDER: &str = r#"{"product_id":"p1","quantity":2}"#;

/// How long a client listens for events that may still be on their way.
const SETTLE: Duration = Duration::from_millis(1500);

/// One module per shared store, with one test per scenario.
macro_rules! scenarios_on {
    ($($store:ident),+) => {
        $(
            mod $store {
                scenarios_on!(@tests $store:
                    a_retry_sent_to_the_other_replica_replays_the_same_bytes,
                    concurrent_duplicates_on_both_replicas_run_the_handler_once,
                    a_client_of_one_replica_gets_each_event_of_the_other_once,
                    a_client_catching_up_on_one_replica_gets_the_other_replicas_events,
                );
            }
        )+
    };
    (@tests $store:ident: $($scenario:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread")]
            async fn $scenario() {
                super::$scenario(super::Backend::$store()).await;
            }
        )+
    };
}

scenarios_on!(postgres, redis);

fn postgres_url() -> String {
    std::env::var("CNERIUM_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn redis_url() -> String {
    std::env::var("CNERIUM_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned())
}

/// A name no other test, and no other run of this binary, uses.
fn unique_name() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// The shared store and channel of one test, removed when it is dropped.
struct Backend {
    args: Vec<String>,
    cleanup: Cleanup,
}

enum Cleanup {
    Schema(String),
    KeyPrefix(String),
}

impl Backend {
    /// Records in a PostgreSQL schema of their own, events on a Redis channel of their own.
    fn postgres() -> Self {
        let name = unique_name();
        let schema = format!("cnerium_replicas_{name}");
        Self {
            args: vec![
                "--store".into(),
                postgres_url(),
                "--pg-schema".into(),
                schema.clone(),
                "--events".into(),
                redis_url(),
                "--events-channel".into(),
                format!("cnerium-test:replicas:{name}"),
            ],
            cleanup: Cleanup::Schema(schema),
        }
    }

    /// Records under a Redis key prefix of their own, events on a channel of that server.
    fn redis() -> Self {
        let name = unique_name();
        let prefix = format!("cnerium-test:replicas:{name}:");
        Self {
            args: vec![
                "--store".into(),
                redis_url(),
                "--redis-key-prefix".into(),
                prefix.clone(),
                "--events-channel".into(),
                format!("{prefix}events"),
            ],
            cleanup: Cleanup::KeyPrefix(prefix),
        }
    }

    /// Two replicas of the example over this backend.
    fn start_replicas(&self) -> (Service, Service) {
        (
            Service::start_with(EXAMPLE, &self.args),
            Service::start_with(EXAMPLE, &self.args),
        )
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let (tool, result) = match &self.cleanup {
            Cleanup::Schema(schema) => (
                "psql",
                Command::new("psql")
                    .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &postgres_url()])
                    .arg("-c")
                    .arg(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .output(),
            ),
            Cleanup::KeyPrefix(prefix) => (
                "redis-cli",
                Command::new("redis-cli")
                    .args(["-u", &redis_url(), "EVAL"])
                    .arg(
                        "for _, key in ipairs(redis.call('KEYS', ARGV[1])) do \
                         redis.call('DEL', key) end return 0",
                    )
                    .arg("0")
                    .arg(format!("{prefix}*"))
                    .output(),
            ),
        };
        match result {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!(
                "replicas test: {tool} could not clean up: {}",
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(e) => eprintln!("replicas test: {tool} could not clean up: {e}"),
        }
    }
}

async fn parts(response: reqwest::Response) -> (u16, Option<String>, Vec<u8>) {
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.bytes().await.expect("read body").to_vec();
    (status, replayed, body)
}

/// A client of `service` whose connection is live: the hub answered its room join.
async fn live_client(service: &Service) -> WsClient {
    WsClient::connect(&format!("{}?room=replicas", service.ws)).await
}

/// The `order.created` events among `frames`, as their order ids.
fn created_orders(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .filter(|frame| frame["type"] == "order.created")
        .map(|frame| {
            frame["payload"]["order_id"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

async fn a_retry_sent_to_the_other_replica_replays_the_same_bytes(backend: Backend) {
    let (a, b) = backend.start_replicas();
    let http = client();

    let (status, replayed, first) = parts(post_order(&http, &a, Some("r-1"), ORDER).await).await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&first));
    assert_eq!(replayed, None);

    let (status, replayed, retry) = parts(post_order(&http, &b, Some("r-1"), ORDER).await).await;
    assert_eq!(status, 201);
    assert_eq!(replayed.as_deref(), Some("true"));
    assert_eq!(retry, first, "the other replica replays the stored bytes");

    // The same key with another body is a conflict on either replica.
    let other = r#"{"product_id":"p2","quantity":1}"#;
    let (status, _, _) = parts(post_order(&http, &b, Some("r-1"), other).await).await;
    assert_eq!(status, 409);
}

async fn concurrent_duplicates_on_both_replicas_run_the_handler_once(backend: Backend) {
    let (a, b) = backend.start_replicas();
    let mut watch_a = live_client(&a).await;
    let mut watch_b = live_client(&b).await;
    let http = client();

    let sends: Vec<_> = (0..32)
        .map(|i| {
            let http = http.clone();
            let url = if i % 2 == 0 {
                a.url("/orders")
            } else {
                b.url("/orders")
            };
            tokio::spawn(async move {
                let response = http
                    .post(url)
                    .header("content-type", "application/json")
                    .header("idempotency-key", "dup-1")
                    .body(ORDER)
                    .send()
                    .await
                    .expect("send POST /orders");
                parts(response).await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for send in sends {
        answers.push(send.await.expect("request task"));
    }

    let created: Vec<_> = answers
        .iter()
        .filter(|(status, replayed, _)| *status == 201 && replayed.is_none())
        .collect();
    assert_eq!(created.len(), 1, "answers: {answers:?}");
    for (status, replayed, body) in &answers {
        match status {
            201 => assert_eq!(
                body, &created[0].2,
                "a replay differs from the first answer"
            ),
            409 => assert_eq!(replayed, &None),
            other => panic!(
                "unexpected status {other}: {}",
                String::from_utf8_lossy(body)
            ),
        }
    }

    let seen_a = created_orders(&watch_a.events_within(SETTLE).await);
    let seen_b = created_orders(&watch_b.events_within(SETTLE).await);
    assert_eq!(seen_a, ["ord_dup-1"], "replica A's client");
    assert_eq!(seen_b, ["ord_dup-1"], "replica B's client");
}

async fn a_client_of_one_replica_gets_each_event_of_the_other_once(backend: Backend) {
    let (a, b) = backend.start_replicas();
    let mut watch_a = live_client(&a).await;
    let mut watch_b = live_client(&b).await;
    let http = client();

    for key in ["e-1", "e-2"] {
        let (status, _, _) = parts(post_order(&http, &a, Some(key), ORDER).await).await;
        assert_eq!(status, 201);
    }
    // Retries on either replica publish nothing.
    for service in [&a, &b] {
        let (status, replayed, _) =
            parts(post_order(&http, service, Some("e-1"), ORDER).await).await;
        assert_eq!((status, replayed.as_deref()), (201, Some("true")));
    }

    let frames_b = watch_b.events_within(SETTLE).await;
    assert_eq!(created_orders(&frames_b), ["ord_e-1", "ord_e-2"]);
    let first = &frames_b[0];
    assert_eq!(first["payload"]["product_id"], "p1");
    assert_eq!(first["payload"]["quantity"], 2);
    assert!(
        first.get("room").is_none(),
        "a broadcast has no room: {first}"
    );

    let frames_a = watch_a.events_within(SETTLE).await;
    assert_eq!(created_orders(&frames_a), ["ord_e-1", "ord_e-2"]);
    let ids =
        |frames: &[Value]| -> Vec<String> { frames.iter().map(|f| f["id"].to_string()).collect() };
    assert_eq!(
        ids(&frames_a),
        ids(&frames_b),
        "both replicas relay the same events"
    );
}

async fn a_client_catching_up_on_one_replica_gets_the_other_replicas_events(backend: Backend) {
    let (a, b) = backend.start_replicas();
    let http = client();
    let (status, _, _) = parts(post_order(&http, &a, Some("c-1"), ORDER).await).await;
    assert_eq!(status, 201);

    // Connected after the order was created, to the replica that did not create it.
    let mut late = WsClient::connect(&format!("{}?since=0&room=replicas", b.ws)).await;
    let frames = late.events_within(SETTLE).await;
    assert_eq!(created_orders(&frames), ["ord_c-1"]);
}
