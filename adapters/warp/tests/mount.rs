//! A durable route mounted beside ordinary routes of a warp service, over real sockets.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use cnerium_core::{DurableRequest, DurableResponse, Engine, Timestamp};
use cnerium_store_memory::MemoryStore;
use futures_util::stream;
use warp::Filter;

struct TestService {
    addr: SocketAddr,
    runs: Arc<AtomicUsize>,
}

async fn start(body_limit: usize) -> TestService {
    let clock = Arc::new(|| Timestamp::from_system_time(std::time::SystemTime::now()));
    let engine = Engine::new(Arc::new(MemoryStore::new()), clock);
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let route = engine
        .route("echo.create", move |request: DurableRequest| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                let body = String::from_utf8_lossy(request.body()).into_owned();
                DurableResponse::created(serde_json::json!({"len": body.len(), "body": body}))
            }
        })
        .with_body_limit(body_limit);

    let hello = warp::path("hello").and(warp::get()).map(|| "hello");
    let echo_get = warp::path("echo").and(warp::get()).map(|| "plain get");
    let echo = warp::path("echo")
        .and(warp::path::end())
        .and(cnerium_warp::durable(route));
    let routes = hello
        .map(warp::reply::Reply::into_response)
        .or(echo_get.map(warp::reply::Reply::into_response))
        .unify()
        .or(echo.map(warp::reply::Reply::into_response))
        .unify()
        .recover(cnerium_warp::problem_rejections);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(routes).incoming(listener).run());
    TestService { addr, runs }
}

#[tokio::test]
async fn ordinary_routes_are_untouched_by_the_durable_route() {
    let service = start(1024).await;
    let http = reqwest::Client::new();
    let hello = http
        .get(format!("http://{}/hello", service.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(hello.status(), 200);
    assert!(hello.headers().get("x-content-type-options").is_none());
    assert_eq!(hello.text().await.unwrap(), "hello");

    let get = http
        .get(format!("http://{}/echo", service.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(get.text().await.unwrap(), "plain get");
    assert_eq!(service.runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn wrong_method_on_a_durable_path_is_a_405_problem() {
    let service = start(1024).await;
    let http = reqwest::Client::new();
    let response = http
        .delete(format!("http://{}/echo", service.addr))
        .header("idempotency-key", "k")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(service.runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413_and_runs_nothing() {
    let service = start(1024).await;
    let http = reqwest::Client::new();
    let chunks = (0..8).map(|_| Ok::<_, Infallible>(Bytes::from(vec![b'a'; 512])));
    let response = http
        .post(format!("http://{}/echo", service.addr))
        .header("idempotency-key", "chunked-1")
        .body(reqwest::Body::wrap_stream(stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(service.runs.load(Ordering::SeqCst), 0);

    let ok = http
        .post(format!("http://{}/echo", service.addr))
        .header("idempotency-key", "chunked-1")
        .body(vec![b'a'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 201, "the refused key was not stored");
    assert_eq!(service.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_sent_in_many_chunks_reaches_the_handler_whole_and_in_order() {
    let service = start(1024).await;
    let http = reqwest::Client::new();
    let chunks = (b'a'..=b'h').map(|b| Ok::<_, Infallible>(Bytes::from(vec![b; 100])));
    let response = http
        .post(format!("http://{}/echo", service.addr))
        .header("idempotency-key", "chunks-1")
        .body(reqwest::Body::wrap_stream(stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let echoed: serde_json::Value = response.json().await.unwrap();
    let expected: String = ('a'..='h')
        .flat_map(|c| std::iter::repeat_n(c, 100))
        .collect();
    assert_eq!(echoed["body"], expected.as_str());
    assert_eq!(echoed["len"], 800);
}

#[tokio::test]
async fn declared_length_over_the_limit_is_refused_before_reading() {
    let service = start(16).await;
    let http = reqwest::Client::new();
    let response = http
        .post(format!("http://{}/echo", service.addr))
        .header("idempotency-key", "k")
        .body(vec![b'a'; 17])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "urn:cnerium:problem:body-too-large");
}

#[tokio::test]
async fn query_is_part_of_the_fingerprint() {
    let service = start(1024).await;
    let http = reqwest::Client::new();
    let send = |query: &'static str| {
        http.post(format!("http://{}/echo{query}", service.addr))
            .header("idempotency-key", "q-1")
            .body("x")
            .send()
    };
    assert_eq!(send("?a=1").await.unwrap().status(), 201);
    assert_eq!(
        send("?a=1").await.unwrap().headers()["idempotent-replayed"],
        "true"
    );
    assert_eq!(send("?a=2").await.unwrap().status(), 409);
}

#[tokio::test]
async fn a_client_hanging_up_mid_handler_does_not_cancel_it() {
    let clock = Arc::new(|| Timestamp::from_system_time(std::time::SystemTime::now()));
    let engine = Engine::new(Arc::new(MemoryStore::new()), clock);
    let finished = Arc::new(AtomicUsize::new(0));
    let counter = finished.clone();
    let route = engine.route("slow.create", move |_request: DurableRequest| {
        let counter = counter.clone();
        async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            counter.fetch_add(1, Ordering::SeqCst);
            DurableResponse::created(serde_json::json!({"slow": true}))
        }
    });
    let routes = warp::path("slow")
        .and(cnerium_warp::durable(route))
        .recover(cnerium_warp::problem_rejections);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(routes).incoming(listener).run());

    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(50))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(format!("http://{addr}/slow"))
        .header("idempotency-key", "slow-1")
        .body("{}")
        .send()
        .await;
    assert!(gave_up.is_err(), "the client timed out and hung up");

    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(
        finished.load(Ordering::SeqCst),
        1,
        "the handler finished anyway"
    );
    let retry = reqwest::Client::new()
        .post(format!("http://{addr}/slow"))
        .header("idempotency-key", "slow-1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(finished.load(Ordering::SeqCst), 1);
}
