//! The durable orders examples, run as real processes and driven over real sockets.
//!
//! Every scenario runs against both services, `durable_orders_realtime` (warp on tokio)
//! and `durable_orders_tide` (tide on async-std), each built when its features are on;
//! `both_services_answer_one_session_identically` then holds them to the same bytes.

#![cfg(any(
    all(feature = "warp", feature = "realtime", feature = "file-store"),
    all(
        feature = "tide",
        feature = "realtime-async-std",
        feature = "file-store"
    ),
))]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Service, WsClient, client, post_order};

const ORDER_P1: &str = r#"{"product_id":"p1","quantity":2}"#;
const ORDER_P2: &str = r#"{"product_id":"p2","quantity":1}"#;

/// Waiting time for an event that must not come.
const QUIET: Duration = Duration::from_millis(700);

/// One module per example, with one test per scenario: `warp::walkthrough_...`,
/// `tide::walkthrough_...`.
macro_rules! scenarios_against {
    ($module:ident, $example:literal, $($feature:literal),+) => {
        #[cfg(all($(feature = $feature),+))]
        mod $module {
            scenarios_against!(@tests $example:
                walkthrough_creates_replays_and_refuses_a_reused_key,
                reserialized_json_replays_instead_of_conflicting,
                every_client_gets_one_event_per_order_and_none_for_replays_or_conflicts,
                concurrent_identical_first_requests_run_the_handler_once,
                refused_requests_store_nothing,
                stored_validation_errors_replay_and_block_a_corrected_body,
                a_restarted_process_replays_without_running_the_handler,
                health_answers_get_and_head_and_names_them_for_other_methods,
            );
        }
    };
    (@tests $example:literal: $($scenario:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread")]
            async fn $scenario() {
                super::$scenario($example).await;
            }
        )+
    };
}

scenarios_against!(
    warp,
    "durable_orders_realtime",
    "warp",
    "realtime",
    "file-store"
);
scenarios_against!(
    tide,
    "durable_orders_tide",
    "tide",
    "realtime-async-std",
    "file-store"
);

async fn parts(response: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("read body").to_vec();
    (status, headers, body)
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("body is JSON")
}

async fn walkthrough_creates_replays_and_refuses_a_reused_key(example: &str) {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(example, dir.path());
    let http = client();

    let health = http.get(service.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let (status, headers, first) =
        parts(post_order(&http, &service, Some("order-123"), ORDER_P1).await).await;
    assert_eq!(status, 201);
    assert!(headers.get("idempotent-replayed").is_none());
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(
        json(&first),
        serde_json::json!({
            "ok": true, "order_id": "ord_order-123", "product_id": "p1", "quantity": 2
        })
    );

    let (status, headers, replay) =
        parts(post_order(&http, &service, Some("order-123"), ORDER_P1).await).await;
    assert_eq!(status, 201);
    assert_eq!(replay, first, "a replay is byte-identical");
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(headers["content-type"], "application/json");

    let (status, headers, conflict) =
        parts(post_order(&http, &service, Some("order-123"), ORDER_P2).await).await;
    assert_eq!(status, 409);
    assert_eq!(headers["content-type"], "application/problem+json");
    let problem = json(&conflict);
    assert_eq!(problem["status"], 409);
    assert_eq!(
        problem["type"],
        "urn:cnerium:problem:idempotency-key-reused"
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("different request")
    );
}

async fn reserialized_json_replays_instead_of_conflicting(example: &str) {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(example, dir.path());
    let http = client();

    let (status, _, first) =
        parts(post_order(&http, &service, Some("k-json"), ORDER_P1).await).await;
    assert_eq!(status, 201);
    let reordered = "{ \"quantity\": 2,\n  \"product_id\": \"p1\" }";
    let (status, headers, replay) =
        parts(post_order(&http, &service, Some("\"k-json\""), reordered).await).await;
    assert_eq!(status, 201);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(replay, first);
}

async fn every_client_gets_one_event_per_order_and_none_for_replays_or_conflicts(example: &str) {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(example, dir.path());
    let http = client();

    let mut in_room = WsClient::connect(&format!("{}?room=orders", service.ws)).await;
    in_room.join("orders-watchers").await;
    let mut no_room = WsClient::connect(&service.ws).await;
    no_room.join("lobby").await;

    assert_eq!(
        post_order(&http, &service, Some("order-123"), ORDER_P1)
            .await
            .status(),
        201
    );
    assert_eq!(
        post_order(&http, &service, Some("order-123"), ORDER_P1)
            .await
            .status(),
        201
    );
    assert_eq!(
        post_order(&http, &service, Some("order-123"), ORDER_P2)
            .await
            .status(),
        409
    );

    for client in [&mut in_room, &mut no_room] {
        let events = client.events_within(QUIET * 2).await;
        assert_eq!(events.len(), 1, "exactly one event, got {events:?}");
        let event = &events[0];
        assert_eq!(event["type"], "order.created");
        assert!(
            event.get("room").is_none(),
            "a broadcast has no room: {event}"
        );
        assert!(event["id"].as_str().is_some_and(|id| !id.is_empty()));
        assert_eq!(
            event["payload"],
            serde_json::json!({"order_id": "ord_order-123", "product_id": "p1", "quantity": 2})
        );
        let ts = event["ts"].as_str().expect("ts is a string");
        assert!(
            ts.ends_with('Z') && ts.contains('T'),
            "ts is RFC 3339: {ts}"
        );
    }
}

async fn concurrent_identical_first_requests_run_the_handler_once(example: &str) {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(example, dir.path());
    let mut watcher = WsClient::connect(&service.ws).await;
    watcher.join("lobby").await;

    let mut tasks = Vec::new();
    for _ in 0..32 {
        let http = client();
        let url = service.url("/orders");
        tasks.push(tokio::spawn(async move {
            let response = http
                .post(url)
                .header("content-type", "application/json")
                .header("idempotency-key", "burst-1")
                .body(ORDER_P1)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.bytes().await.unwrap().to_vec())
        }));
    }
    let mut created = Vec::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            201 => created.push(body),
            409 => {
                let problem = json(&body);
                assert_eq!(
                    problem["type"], "urn:cnerium:problem:request-in-progress",
                    "{problem}"
                );
            }
            other => panic!(
                "unexpected status {other}: {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }
    assert!(
        !created.is_empty(),
        "at least the first request gets its 201"
    );
    assert!(
        created.windows(2).all(|w| w[0] == w[1]),
        "every 201 carries the same bytes"
    );

    let events = watcher.events_within(QUIET * 2).await;
    assert_eq!(events.len(), 1, "the handler ran once: {events:?}");
}

async fn refused_requests_store_nothing(example: &str) {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(example, dir.path());
    let http = client();

    let (status, headers, body) = parts(post_order(&http, &service, None, ORDER_P1).await).await;
    assert_eq!(status, 400);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(
        json(&body)["type"],
        "urn:cnerium:problem:missing-idempotency-key"
    );

    let long = "k".repeat(256);
    for key in ["", "a b", "\"unterminated", long.as_str(), "a,b"] {
        let (status, _, body) = parts(post_order(&http, &service, Some(key), ORDER_P1).await).await;
        assert_eq!(status, 400, "key {key:?}");
        assert_eq!(
            json(&body)["type"],
            "urn:cnerium:problem:invalid-idempotency-key"
        );
    }

    let huge = format!(
        r#"{{"product_id":"{}","quantity":1}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let (status, _, body) = parts(post_order(&http, &service, Some("big-1"), &huge).await).await;
    assert_eq!(status, 413);
    assert_eq!(json(&body)["type"], "urn:cnerium:problem:body-too-large");

    // Nothing was stored under the key of the refused body: it is new.
    let response = post_order(&http, &service, Some("big-1"), ORDER_P1).await;
    assert_eq!(response.status(), 201);
    assert!(response.headers().get("idempotent-replayed").is_none());
}

async fn stored_validation_errors_replay_and_block_a_corrected_body(example: &str) {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(example, dir.path());
    let http = client();
    let bad = r#"{"product_id":"p1","quantity":0}"#;

    let (status, _, first) = parts(post_order(&http, &service, Some("v-1"), bad).await).await;
    assert_eq!(status, 400);
    assert_eq!(
        json(&first)["detail"],
        "Field quantity must be greater than zero"
    );

    let (status, headers, replay) =
        parts(post_order(&http, &service, Some("v-1"), bad).await).await;
    assert_eq!(status, 400);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(replay, first);

    let (status, _, _) = parts(post_order(&http, &service, Some("v-1"), ORDER_P1).await).await;
    assert_eq!(status, 409);

    let (status, _, body) =
        parts(post_order(&http, &service, Some("v-2"), r#"{"quantity":1}"#).await).await;
    assert_eq!(status, 400);
    assert_eq!(json(&body)["detail"], "Missing required field: product_id");
}

async fn a_restarted_process_replays_without_running_the_handler(example: &str) {
    let dir = tempfile::tempdir().unwrap();
    let http = client();

    let mut first_run = Service::start(example, dir.path());
    let (status, _, first) =
        parts(post_order(&http, &first_run, Some("restart-1"), ORDER_P1).await).await;
    assert_eq!(status, 201);
    first_run.kill();

    let second_run = Service::start(example, dir.path());
    let mut watcher = WsClient::connect(&second_run.ws).await;
    watcher.join("lobby").await;
    let (status, headers, replay) =
        parts(post_order(&http, &second_run, Some("restart-1"), ORDER_P1).await).await;
    assert_eq!(status, 201);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(replay, first);
    let events = watcher.events_within(QUIET).await;
    assert!(
        events.is_empty(),
        "a replay after restart emits nothing: {events:?}"
    );
}

/// The same session sent to both services, answer for answer and event for event.
#[cfg(all(
    feature = "warp",
    feature = "realtime",
    feature = "tide",
    feature = "realtime-async-std",
    feature = "file-store"
))]
mod same_answers {
    use super::*;

    /// Response headers that must match; `date` and `content-length` framing may not.
    const COMPARED_HEADERS: [&str; 6] = [
        "content-type",
        "idempotent-replayed",
        "x-content-type-options",
        "allow",
        "retry-after",
        "location",
    ];

    /// What one request got back: status, the compared headers, the body.
    #[derive(Debug, PartialEq)]
    struct Answer {
        request: String,
        status: u16,
        headers: Vec<(&'static str, Option<String>)>,
        body: String,
    }

    /// Everything a session produced: the answers in order and the events a watcher got,
    /// without their `id` and `ts`.
    #[derive(Debug, PartialEq)]
    struct Session {
        answers: Vec<Answer>,
        events: Vec<Value>,
    }

    /// The requests of the session: a label, the method, path, key and body.
    fn requests() -> Vec<(
        &'static str,
        &'static str,
        &'static str,
        Option<String>,
        String,
    )> {
        let order = |key: &str, body: &str| {
            let label = "POST /orders";
            (
                label,
                "POST",
                "/orders",
                Some(key.to_owned()),
                body.to_owned(),
            )
        };
        let huge = format!(
            r#"{{"product_id":"{}","quantity":1}}"#,
            "x".repeat(2 * 1024 * 1024)
        );
        let mut requests = vec![
            order("order-123", ORDER_P1),
            order("order-123", ORDER_P1),
            order("order-123", ORDER_P2),
            ("no key", "POST", "/orders", None, ORDER_P1.to_owned()),
        ];
        let long = "k".repeat(256);
        for key in ["", "a b", "\"unterminated", long.as_str(), "a,b"] {
            requests.push(order(key, ORDER_P1));
        }
        requests.extend([
            order("big-1", &huge),
            order("big-1", ORDER_P1),
            order("v-1", r#"{"product_id":"p1","quantity":0}"#),
            order("v-1", r#"{"product_id":"p1","quantity":0}"#),
            order("v-2", r#"{"quantity":1}"#),
            order("v-3", r#"{"product_id":"","quantity":1}"#),
            order("v-4", r#"{"product_id":"p1","quantity":"2"}"#),
            order("v-5", r#"{"product_id":"p1","quantity":1.5}"#),
            order("v-6", "not json"),
            ("wrong method", "GET", "/orders", None, String::new()),
            ("unknown path", "GET", "/nowhere", None, String::new()),
        ]);
        requests
    }

    async fn record(example: &str) -> Session {
        let dir = tempfile::tempdir().unwrap();
        let service = Service::start(example, dir.path());
        let http = client();
        let mut watcher = WsClient::connect(&service.ws).await;
        watcher.join("lobby").await;

        let mut answers = Vec::new();
        for (label, method, path, key, body) in requests() {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let mut request = http
                .request(method, service.url(path))
                .header("content-type", "application/json")
                .body(body);
            if let Some(key) = &key {
                request = request.header("idempotency-key", key);
            }
            let response = request.send().await.expect("send the request");
            let (status, headers, body) = parts(response).await;
            let headers = COMPARED_HEADERS
                .iter()
                .map(|&name| {
                    let value = headers.get(name).map(|v| v.to_str().unwrap().to_owned());
                    (name, value)
                })
                .collect();
            answers.push(Answer {
                request: format!("{label} key={key:?}"),
                status,
                headers,
                body: String::from_utf8(body).expect("bodies are text"),
            });
        }

        let events = watcher
            .events_within(QUIET * 2)
            .await
            .into_iter()
            .map(|mut event| {
                let fields = event.as_object_mut().expect("an event is an object");
                assert!(fields.remove("id").is_some(), "event has an id");
                assert!(fields.remove("ts").is_some(), "event has a ts");
                event
            })
            .collect();
        Session { answers, events }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn both_services_answer_one_session_identically() {
        let (warp, tide) = tokio::join!(
            record("durable_orders_realtime"),
            record("durable_orders_tide")
        );

        let statuses: Vec<_> = warp.answers.iter().map(|a| a.status).collect();
        assert_eq!(
            statuses,
            [
                201, 201, 409, 400, 400, 400, 400, 400, 400, 413, 201, 400, 400, 400, 400, 400,
                400, 400, 405, 404
            ],
            "the warp service answered as the spec says: {:#?}",
            warp.answers
        );
        assert_eq!(
            warp.events.len(),
            2,
            "two orders were created: {:?}",
            warp.events
        );
        for (warp, tide) in warp.answers.iter().zip(&tide.answers) {
            assert_eq!(warp, tide);
        }
        assert_eq!(warp.answers.len(), tide.answers.len());
        assert_eq!(warp.events, tide.events);
    }
}

async fn health_answers_get_and_head_and_names_them_for_other_methods(example: &str) {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(example, dir.path());
    let http = client();

    let get = http.get(service.url("/health")).send().await.unwrap();
    assert_eq!(get.status(), 200);
    assert!(json(&get.bytes().await.unwrap())["ok"] == true);
    let head = http.head(service.url("/health")).send().await.unwrap();
    assert_eq!(head.status(), 200);

    for method in [reqwest::Method::POST, reqwest::Method::DELETE] {
        let (status, headers, body) = parts(
            http.request(method.clone(), service.url("/health"))
                .body("x")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 405, "{method}");
        assert_eq!(headers["allow"], "GET, HEAD", "{method}");
        assert_eq!(headers["content-type"], "application/problem+json");
        let detail = json(&body)["detail"].as_str().unwrap().to_owned();
        assert!(!detail.contains("POST"), "{detail}");
    }

    // The durable path still names its own method.
    let wrong = http.get(service.url("/orders")).send().await.unwrap();
    assert_eq!(wrong.status(), 405);
    assert_eq!(wrong.headers()["allow"], "POST");
}
