//! The durable orders service on tide and async-std, with live events over WebSocket.
//!
//! ```text
//! cargo run --example durable_orders_tide --features tide,realtime-async-std,file-store -- --help
//! ```
//!
//! The same service as `durable_orders_realtime`, request for request and byte for byte,
//! on another framework and runtime: `POST /orders` with an `Idempotency-Key` creates an
//! order once per key and broadcasts `order.created` to every WebSocket client; retries
//! replay the stored answer. Records live in a file store, so a restarted service still
//! replays them.

mod app;
#[path = "../shared/logging.rs"]
mod logging;
#[path = "../shared/orders.rs"]
mod orders;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use cnerium::realtime::{Hub, RealtimeConfig};
use cnerium::stores::FileStore;
use cnerium::tide::async_std::{channel, net::TcpListener, task};
use cnerium::{Engine, EngineConfig, SystemClock};
use futures_util::StreamExt;
use futures_util::future::{Either, select};
use tracing::{info, warn};

use crate::app::InFlight;

const SERVICE: &str = "durable-orders-tide";

/// How long a stopping service waits for the requests it is answering.
const DRAIN: Duration = Duration::from_secs(10);

/// The durable orders service on tide: POST /orders runs once per Idempotency-Key.
#[derive(Debug, Parser)]
#[command(name = "durable_orders_tide", version)]
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

    /// Directory where records are kept.
    #[arg(long = "data-dir", value_name = "PATH", default_value = "data/cnerium")]
    data_dir: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init();

    match task::block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let store = FileStore::open(&args.data_dir).map_err(|e| e.to_string())?;
    let store = Arc::new(store);

    let hub = Hub::new(RealtimeConfig::default());
    let realtime = cnerium::realtime::async_std::Listener::bind(args.realtime, hub.clone())
        .await
        .map_err(|e| {
            format!(
                "cannot listen for WebSocket clients on {}: {e}",
                args.realtime
            )
        })?;
    let realtime_addr = realtime.local_addr();

    let engine = Engine::with_parts(
        store.clone(),
        Arc::new(hub.clone()),
        Arc::new(SystemClock),
        EngineConfig::default(),
    );
    match engine.recover().await {
        Ok(0) => {}
        Ok(n) => info!(events = n, "published events left pending by the last run"),
        Err(e) => warn!(error = %e, "could not publish pending events; they stay pending"),
    }

    let listener = TcpListener::bind(args.http)
        .await
        .map_err(|e| format!("cannot listen for HTTP on {}: {e}", args.http))?;
    let http_addr = listener.local_addr().map_err(|e| e.to_string())?;
    let stopping = stop_on_signal().map_err(|e| format!("cannot watch for Ctrl-C: {e}"))?;

    println!(
        "{SERVICE}: http://{http_addr} (POST /orders, GET /health), realtime \
         ws://{realtime_addr}/ws, data in {}",
        args.data_dir.display()
    );

    let maintenance = task::spawn(purge_periodically(engine.clone()));
    let realtime_stop = stopping.clone();
    let realtime_task = task::spawn(realtime.run_until(async move {
        let _ = realtime_stop.recv().await;
    }));

    // tide 0.16 cannot stop gracefully: stop accepting, then let the requests being
    // answered finish.
    let in_flight = InFlight::default();
    let server = app::app(&engine, SERVICE, in_flight.clone()).listen(listener);
    let stopped = stopping.recv();
    if let Either::Left((Err(e), _)) = select(pin!(server), pin!(stopped)).await {
        return Err(format!("the HTTP server failed: {e}"));
    }
    let started = Instant::now();
    while in_flight.count() > 0 && started.elapsed() < DRAIN {
        task::sleep(Duration::from_millis(20)).await;
    }

    realtime_task.await;
    maintenance.cancel().await;
    drop(engine);
    if let Err(e) = store.close().await {
        warn!(error = %e, "closing the store failed; the next start recovers from its log");
    }
    info!("stopped");
    Ok(())
}

async fn purge_periodically(engine: Engine) {
    loop {
        task::sleep(Duration::from_secs(60)).await;
        if let Err(e) = engine.purge_expired().await {
            warn!(error = %e, "purging expired records failed; will retry");
        }
    }
}

/// A receiver that reports closed once Ctrl-C (or, on Unix, SIGTERM) arrives.
fn stop_on_signal() -> std::io::Result<channel::Receiver<()>> {
    use async_signal::{Signal, Signals};

    #[cfg(unix)]
    let signals = [Signal::Int, Signal::Term];
    #[cfg(not(unix))]
    let signals = [Signal::Int];
    let mut signals = Signals::new(signals)?;

    let (stop, stopping) = channel::bounded::<()>(1);
    task::spawn(async move {
        match signals.next().await {
            Some(Ok(signal)) => info!(?signal, "stopping"),
            Some(Err(e)) => warn!(error = %e, "watching for signals failed; stopping"),
            None => {}
        }
        // Dropping the only sender closes the channel for every receiver.
        drop(stop);
    });
    Ok(stopping)
}
