//! The durable orders service on warp, with live events over WebSocket.
//!
//! ```text
//! cargo run --example durable_orders_realtime -- --help
//! ```
//!
//! `POST /orders` with an `Idempotency-Key` creates an order once per key and broadcasts
//! `order.created` to every WebSocket client; retries replay the stored answer. Records
//! live in a file store, so a restarted service still replays them, and a client that
//! reconnects with `?since=<ts of the last event it got>` first receives what it missed.
//!
//! Several replicas share records with `--store postgres://...` or `--store redis://...`
//! and carry events to each other's clients with `--events redis://...` (see `backend`).

mod app;
mod backend;
#[path = "../shared/logging.rs"]
mod logging;
#[path = "../shared/orders.rs"]
mod orders;
#[path = "../shared/tokio_service.rs"]
mod tokio_service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use backend::{EventsChoice, StoreChoice, StoreNames};
use clap::Parser;
use cnerium::realtime::{Hub, RealtimeConfig};
use cnerium::{Engine, EngineConfig, SystemClock};
use tokio_service::{purge_periodically, shutdown_signal};
use tracing::{info, warn};

const SERVICE: &str = "durable-orders-realtime";

/// The durable orders service: POST /orders runs once per Idempotency-Key.
#[derive(Debug, Parser)]
#[command(name = "durable_orders_realtime", version)]
struct Args {
    /// Address of the HTTP server (port 0 picks a free port).
    #[arg(long = "http", value_name = "ADDR", default_value = "127.0.0.1:8080")]
    http: SocketAddr,

    /// Address of the realtime WebSocket listener, served on path /ws (port 0 picks a free
    /// port).
    #[arg(
        long = "realtime",
        value_name = "ADDR",
        default_value = "127.0.0.1:9090"
    )]
    realtime: SocketAddr,

    /// Directory where records are kept with `--store file`.
    #[arg(long = "data-dir", value_name = "PATH", default_value = "data/cnerium")]
    data_dir: PathBuf,

    /// Where records are kept: `file` (in --data-dir), `memory` (lost on stop),
    /// `postgres://user@host:5432/db` or `redis://host:6379/0`. Replicas started with the
    /// same PostgreSQL or Redis store (and the same schema, table prefix or key prefix)
    /// share records: a retry sent to any of them replays. PostgreSQL needs the
    /// `postgres-store` feature, Redis the `redis-store` feature.
    #[arg(long = "store", value_name = "STORE", default_value = "file")]
    store: StoreChoice,

    /// How committed events reach WebSocket clients: `local` (this process's clients) or
    /// `redis://host:6379/0` (published to --events-channel, which every replica relays to
    /// its own clients, each event once). Default: the Redis server of a Redis store,
    /// `local` otherwise. Needs the `redis-store` feature.
    #[arg(long = "events", value_name = "EVENTS")]
    events: Option<EventsChoice>,

    /// Redis channel of `--events redis://...`; replicas of one service use the same one.
    #[arg(
        long = "events-channel",
        value_name = "NAME",
        default_value = "cnerium:events"
    )]
    events_channel: String,

    /// PostgreSQL schema of the store's tables (created when missing).
    #[arg(long = "pg-schema", value_name = "NAME", default_value = "public")]
    pg_schema: String,

    /// Prefix of the store's PostgreSQL table names.
    #[arg(
        long = "pg-table-prefix",
        value_name = "PREFIX",
        default_value = "cnerium_"
    )]
    pg_table_prefix: String,

    /// Prefix of every key of the Redis store.
    #[arg(
        long = "redis-key-prefix",
        value_name = "PREFIX",
        default_value = "cnerium:"
    )]
    redis_key_prefix: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    logging::init();

    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let names = StoreNames {
        data_dir: &args.data_dir,
        pg_schema: &args.pg_schema,
        pg_table_prefix: &args.pg_table_prefix,
        redis_key_prefix: &args.redis_key_prefix,
    };
    let store = backend::open_store(&args.store, &names).await?;
    let events = args
        .events
        .clone()
        .unwrap_or_else(|| EventsChoice::default_for(&args.store));
    if matches!(args.store, StoreChoice::Postgres(_)) && events == EventsChoice::Local {
        warn!(
            "records are shared but events are local: clients of other replicas miss the \
             events of requests run here; pass --events redis://..."
        );
    }

    let hub = Hub::new(RealtimeConfig::default());
    let realtime = cnerium::realtime::tokio::Listener::bind(args.realtime, hub.clone())
        .await
        .map_err(|e| {
            format!(
                "cannot listen for WebSocket clients on {}: {e}",
                args.realtime
            )
        })?;
    let realtime_addr = realtime.local_addr();
    let events = backend::event_path(&events, &args.events_channel, &hub).await?;

    let engine = Engine::with_parts(
        store.store,
        events.sink,
        Arc::new(SystemClock),
        EngineConfig::default(),
    );
    // The hub is fed by the engine, so the engine exists only now: clients reconnecting
    // with `?since=` catch up from its store, which holds every replica's events when the
    // store is shared.
    hub.set_backlog(engine.clone());
    match engine.recover().await {
        Ok(0) => {}
        Ok(n) => info!(events = n, "published events left pending by the last run"),
        Err(e) => warn!(error = %e, "could not publish pending events; they stay pending"),
    }

    let listener = tokio::net::TcpListener::bind(args.http)
        .await
        .map_err(|e| format!("cannot listen for HTTP on {}: {e}", args.http))?;
    let http_addr = listener.local_addr().map_err(|e| e.to_string())?;

    println!(
        "{SERVICE}: http://{http_addr} (POST /orders, GET /health), realtime \
         ws://{realtime_addr}/ws, {}{}",
        store.description, events.description
    );

    let maintenance = tokio::spawn(purge_periodically(engine.clone()));
    let realtime_task = tokio::spawn(realtime.run_until(shutdown_signal()));

    warp::serve(app::routes(&engine, SERVICE))
        .incoming(listener)
        .graceful(shutdown_signal())
        .run()
        .await;

    maintenance.abort();
    realtime_task.abort();
    if let Some(relay) = events.relay {
        relay.abort();
    }
    // The hub and the engine hold each other; let go so that the store closes.
    hub.clear_backlog();
    drop(engine);
    info!("stopped");
    Ok(())
}
