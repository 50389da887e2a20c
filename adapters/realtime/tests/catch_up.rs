//! Catch-up on reconnect: a client connecting with `?since=` gets the committed events it
//! may have missed, then live events, each event id once.

#![cfg(feature = "tokio")]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cnerium_core::{
    BoxError, Clock, DurableRequest, DurableResponse, Engine, EngineConfig, Event, ManualClock,
    Timestamp, async_trait,
};
use cnerium_realtime::{Backlog, BacklogError, Hub, RealtimeConfig};
use cnerium_store_memory::MemoryStore;
use serde_json::{Value, json};
use support::*;
use tokio::sync::Semaphore;

/// Events with the time their record committed, answered the way a store answers; it can
/// be made to wait or to fail, and it remembers what it was asked.
#[derive(Clone, Default)]
struct History {
    committed: Arc<Mutex<Vec<(Timestamp, Event)>>>,
    asked: Arc<Mutex<Vec<(Timestamp, usize)>>>,
    /// When set, each answer waits for a permit.
    gate: Option<Arc<Semaphore>>,
    failing: bool,
}

impl History {
    fn of(events: &[Event]) -> Self {
        let history = Self::default();
        for event in events {
            history.commit(event);
        }
        history
    }

    /// Records `event` as committed at its own `ts`.
    fn commit(&self, event: &Event) {
        let mut committed = self.committed.lock().unwrap();
        committed.push((event.ts, event.clone()));
    }

    fn asked(&self) -> Vec<(Timestamp, usize)> {
        self.asked.lock().unwrap().clone()
    }
}

#[async_trait]
impl Backlog for History {
    async fn events_since(
        &self,
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<Event>, BacklogError> {
        self.asked.lock().unwrap().push((since, limit));
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
        if self.failing {
            return Err(BacklogError::new("the history is unreachable"));
        }
        let committed = self.committed.lock().unwrap();
        Ok(committed
            .iter()
            .filter(|(at, _)| *at >= since)
            .map(|(_, event)| event.clone())
            .take(limit)
            .collect())
    }
}

/// Event number `n` of `room` (a broadcast for `None`), emitted at `n` seconds.
fn numbered(n: u64, room: Option<&str>) -> Event {
    let ts = Timestamp::from_millis(n * 1000);
    Event::new(
        "order.created",
        room.map(str::to_owned),
        json!({"n": n}),
        ts,
    )
    .unwrap()
}

async fn serve(history: &History, config: RealtimeConfig) -> Server {
    Server::start(Hub::builder(config).backlog(history.clone()).build()).await
}

/// Publishes a broadcast marker and checks it is the next frame: whatever was not
/// received before it never will be, since frames arrive in order.
async fn assert_nothing_else_before_a_marker(server: &Server, client: &mut Client) {
    let marker = event("test.marker", None, json!({"marker": true}));
    server.hub.publish_event(&marker);
    assert_eq!(next_json(client).await, envelope(&marker));
}

#[tokio::test]
async fn catch_up_sends_missed_events_in_order_before_live_ones() {
    let missed = [numbered(1, None), numbered(2, None), numbered(3, None)];
    let history = History::of(&missed);
    let server = serve(&history, config()).await;

    let mut client = connect(server.addr, "/ws?since=0").await;
    for event in &missed {
        assert_eq!(next_json(&mut client).await, envelope(event));
    }
    wait_until("the client is registered", || {
        server.hub.connection_count() == 1
    })
    .await;
    let live = numbered(4, None);
    server.hub.publish_event(&live);
    assert_eq!(next_json(&mut client).await, envelope(&live));
    server.stop().await;
}

#[tokio::test]
async fn catch_up_sends_broadcasts_and_events_of_the_joined_rooms_only() {
    let broadcast = numbered(1, None);
    let joined_room = numbered(2, Some("a"));
    let other_room = numbered(3, Some("b"));
    let history = History::of(&[broadcast.clone(), joined_room.clone(), other_room]);
    let server = serve(&history, config()).await;

    let mut client = connect(server.addr, "/ws?room=a&since=0").await;
    assert_eq!(next_json(&mut client).await, joined("a"));
    assert_eq!(next_json(&mut client).await, envelope(&broadcast));
    assert_eq!(next_json(&mut client).await, envelope(&joined_room));
    assert_nothing_else_before_a_marker(&server, &mut client).await;
    server.stop().await;
}

#[tokio::test]
async fn an_event_in_the_backlog_and_published_during_the_connect_is_sent_once() {
    let gate = Arc::new(Semaphore::new(0));
    let history = History {
        gate: Some(gate.clone()),
        ..History::of(&[numbered(1, None)])
    };
    let server = serve(&history, config()).await;

    let mut client = connect(server.addr, "/ws?since=0").await;
    wait_until("the backlog is asked", || history.asked().len() == 1).await;
    // Committed before the backlog answers and published live meanwhile: both paths.
    let both = numbered(2, None);
    history.commit(&both);
    assert_eq!(server.hub.publish_event(&both), 1);
    // Committed after the backlog answered: live only, and after the backlog.
    let live_only = numbered(3, None);
    assert_eq!(server.hub.publish_event(&live_only), 1);
    gate.add_permits(1);

    assert_eq!(next_json(&mut client).await, envelope(&numbered(1, None)));
    assert_eq!(next_json(&mut client).await, envelope(&both));
    assert_eq!(next_json(&mut client).await, envelope(&live_only));
    assert_nothing_else_before_a_marker(&server, &mut client).await;

    // A later live repeat of a caught-up event (a recovery publishing it again) is
    // skipped as well.
    server.hub.publish_event(&both);
    assert_nothing_else_before_a_marker(&server, &mut client).await;
    server.stop().await;
}

#[tokio::test]
async fn an_unparsable_cursor_answers_an_error_and_the_connection_stays_live() {
    let history = History::of(&[numbered(1, None)]);
    let server = serve(&history, config()).await;

    let mut client = connect(server.addr, "/ws?since=yesterday&room=a").await;
    assert_eq!(next_json(&mut client).await, joined("a"));
    assert_eq!(error_code(&next_json(&mut client).await), "invalid_cursor");
    wait_until("the client is registered", || {
        server.hub.room_size("a") == 1
    })
    .await;
    let live = numbered(2, Some("a"));
    server.hub.publish_event(&live);
    assert_eq!(next_json(&mut client).await, envelope(&live));
    assert!(history.asked().is_empty(), "the backlog was asked");
    server.stop().await;
}

/// Log lines written while a test runs, at debug level.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || logs.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// Single-threaded, so the connection tasks log to this test's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn a_failing_backlog_leaves_the_connection_live_only_and_logs_why() {
    let logs = CapturedLogs::default();
    let _logging = logs.install();
    let history = History {
        failing: true,
        ..History::of(&[numbered(1, None)])
    };
    let server = serve(&history, config()).await;

    let mut client = connect(server.addr, "/ws?since=0&room=a").await;
    assert_eq!(next_json(&mut client).await, joined("a"));
    wait_until("the backlog is asked", || history.asked().len() == 1).await;
    let live = numbered(2, Some("a"));
    server.hub.publish_event(&live);
    assert_eq!(next_json(&mut client).await, envelope(&live));
    server.stop().await;

    let logs = logs.text();
    let line = logs
        .lines()
        .find(|line| line.contains("backlog failed; sending live events only"))
        .unwrap_or_else(|| panic!("no log line about the failed backlog in:\n{logs}"));
    assert!(line.contains("DEBUG"), "{line}");
    assert!(line.contains("the history is unreachable"), "{line}");
}

#[tokio::test]
async fn the_backlog_is_asked_from_the_cursor_less_the_margin() {
    let history = History::default();
    let server = serve(&history, config()).await;
    let cursor = Timestamp::from_millis(1_796_324_709_123);

    // The envelope's form, with the backlog's own margin (30 s by default).
    let _first = connect(server.addr, &format!("/ws?since={cursor}")).await;
    wait_until("the backlog is asked", || history.asked().len() == 1).await;
    assert_eq!(history.asked()[0].0.as_millis(), 1_796_324_679_123);
    server.stop().await;

    // Milliseconds, with a configured margin.
    let config = RealtimeConfig {
        catch_up_margin: Some(Duration::from_secs(5)),
        ..config()
    };
    let server = serve(&history, config).await;
    let _second = connect(server.addr, "/ws?since=1796324709123").await;
    wait_until("the backlog is asked", || history.asked().len() == 2).await;
    assert_eq!(history.asked()[1].0.as_millis(), 1_796_324_704_123);

    // A cursor younger than the margin asks from the epoch.
    let _third = connect(server.addr, "/ws?since=10").await;
    wait_until("the backlog is asked", || history.asked().len() == 3).await;
    assert_eq!(history.asked()[2].0, Timestamp::EPOCH);
    server.stop().await;
}

#[tokio::test]
async fn catch_up_stops_at_the_limit_and_says_so() {
    let missed: Vec<Event> = (1..=3).map(|n| numbered(n, None)).collect();
    let history = History::of(&missed);
    let config = RealtimeConfig {
        max_catch_up_events: 2,
        ..config()
    };
    let server = serve(&history, config).await;

    let mut client = connect(server.addr, "/ws?since=0").await;
    assert_eq!(next_json(&mut client).await, envelope(&missed[0]));
    assert_eq!(next_json(&mut client).await, envelope(&missed[1]));
    assert_eq!(
        error_code(&next_json(&mut client).await),
        "catch_up_truncated"
    );
    assert_nothing_else_before_a_marker(&server, &mut client).await;
    server.stop().await;
}

#[tokio::test]
async fn without_since_the_backlog_is_not_asked() {
    let history = History::of(&[numbered(1, None)]);
    let server = serve(&history, config()).await;

    let mut client = connect(server.addr, "/ws").await;
    wait_until("the client is registered", || {
        server.hub.connection_count() == 1
    })
    .await;
    assert_nothing_else_before_a_marker(&server, &mut client).await;
    assert!(history.asked().is_empty(), "the backlog was asked");
    server.stop().await;
}

#[tokio::test]
async fn a_hub_without_backlog_answers_since_with_live_events_only() {
    let server = Server::with_config(config()).await;

    let mut client = connect(server.addr, "/ws?since=0").await;
    wait_until("the client is registered", || {
        server.hub.connection_count() == 1
    })
    .await;
    assert_nothing_else_before_a_marker(&server, &mut client).await;
    server.stop().await;
}

#[tokio::test]
async fn an_engine_backlog_replays_events_committed_while_no_client_listened() {
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_796_324_709_123)));
    let hub = Hub::new(config());
    let engine = Engine::with_parts(
        Arc::new(MemoryStore::new()),
        Arc::new(hub.clone()),
        clock.clone(),
        EngineConfig::default(),
    );
    hub.set_backlog(engine.clone());
    let route = engine.route("orders.create", |request: DurableRequest| async move {
        let order_id = format!("ord_{}", request.idempotency_key());
        request.emit("order.created", json!({ "order_id": order_id }))?;
        request.emit_to("staff", "order.review", json!({ "order_id": order_id }))?;
        Ok::<_, BoxError>(DurableResponse::created(json!({ "ok": true })))
    });
    let order = http::Request::post("/orders")
        .header("idempotency-key", "order-1")
        .header("content-type", "application/json")
        .body(Bytes::from_static(br#"{"product_id":"p1"}"#))
        .unwrap();
    assert_eq!(route.handle(order).await.status(), 201);

    let server = Server::start(hub.clone()).await;
    let cursor = clock.now().as_millis();
    let mut client = connect(server.addr, &format!("/ws?since={cursor}")).await;
    let caught_up: Value = next_json(&mut client).await;
    assert_eq!(caught_up["type"], "order.created");
    assert_eq!(caught_up["payload"]["order_id"], "ord_order-1");
    assert_eq!(caught_up["ts"], "2026-12-03T19:05:09.123Z");
    assert_nothing_else_before_a_marker(&server, &mut client).await;

    hub.clear_backlog();
    server.stop().await;
}
