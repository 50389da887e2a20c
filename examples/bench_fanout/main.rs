//! Time from publishing an event until each of 10,000 WebSocket clients has it.
//!
//! ```text
//! cargo run --release --example bench_fanout -- --clients 10000 --events 20
//! ```
//!
//! Starts the realtime hub's tokio listener on 127.0.0.1 and connects `--clients`
//! WebSocket clients to it from the same process and runtime. Then, `--events` times, it
//! publishes one broadcast event through the hub (as the engine does after a commit) and
//! waits until every client has read it; the latency of one delivery runs from just before
//! the publish call until the client's read returns the frame. Prints percentiles over all
//! deliveries and over each event's slowest client. Target: p99 under 100 ms.
//!
//! Each client holds two descriptors (its socket and the server's), so the process raises
//! its open-file limit first (`RLIMIT_NOFILE`).

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use clap::Parser;
use cnerium::realtime::{Hub, RealtimeConfig};
use cnerium::{Event, Timestamp};
use futures_util::StreamExt;
use tokio::sync::{Notify, Semaphore};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// WebSocket fan-out latency.
#[derive(Debug, Parser)]
#[command(name = "bench_fanout")]
struct Args {
    /// Connected WebSocket clients.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,

    /// Broadcast events to time, one after the other.
    #[arg(long, default_value_t = 20)]
    events: usize,

    /// Pause between two events, in milliseconds, after the previous one reached everyone.
    #[arg(long, default_value_t = 200)]
    pause_ms: u64,

    /// Worker threads of the runtime that runs both the server and the clients.
    #[arg(long, default_value_t = 2)]
    threads: usize,

    /// Connections opened at the same time while clients connect.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
}

/// p99 of a delivery must stay below this.
const TARGET_P99: Duration = Duration::from_millis(100);

/// How long to wait for one event to reach every client before counting it missed.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// What the clients report back.
struct Deliveries {
    /// When each event was published.
    published: Vec<OnceLock<Instant>>,
    /// Microseconds from publication to receipt, per event.
    latencies_us: Vec<Mutex<Vec<u32>>>,
    /// Clients that have each event.
    received: Vec<AtomicUsize>,
    /// Clients connected and reading.
    connected: AtomicUsize,
    changed: Notify,
}

impl Deliveries {
    fn new(events: usize) -> Self {
        Self {
            published: (0..events).map(|_| OnceLock::new()).collect(),
            latencies_us: (0..events).map(|_| Mutex::new(Vec::new())).collect(),
            received: (0..events).map(|_| AtomicUsize::new(0)).collect(),
            connected: AtomicUsize::new(0),
            changed: Notify::new(),
        }
    }

    fn record(&self, seq: usize, at: Instant) {
        let (Some(published), Some(latencies)) = (
            self.published.get(seq).and_then(OnceLock::get),
            self.latencies_us.get(seq),
        ) else {
            return;
        };
        let us = u32::try_from(at.duration_since(*published).as_micros()).unwrap_or(u32::MAX);
        latencies.lock().unwrap_or_else(|e| e.into_inner()).push(us);
        self.received[seq].fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match raise_fd_limit(args.clients as u64 * 2 + 1024) {
        Ok(limit) => println!("bench_fanout: open-file limit {limit}"),
        Err(e) => eprintln!("warning: cannot raise the open-file limit: {e}"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .expect("building the runtime");
    let ok = runtime.block_on(run(&args));
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run(args: &Args) -> bool {
    let hub = Hub::new(RealtimeConfig::default());
    let listener = match cnerium::realtime::tokio::Listener::bind(
        "127.0.0.1:0".parse().expect("a valid address"),
        hub.clone(),
    )
    .await
    {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("error: cannot listen: {e}");
            return false;
        }
    };
    let url = format!("ws://{}/ws", listener.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(listener.run_until(async {
        let _ = stopped.await;
    }));

    println!(
        "bench_fanout: {} clients on {url}, {} events, {} runtime threads, {} cores",
        args.clients,
        args.events,
        args.threads,
        std::thread::available_parallelism().map_or(0, usize::from),
    );

    let deliveries = Arc::new(Deliveries::new(args.events));
    let connecting = Instant::now();
    let clients = connect_all(args, &url, &hub, &deliveries).await;
    if hub.connection_count() < args.clients {
        eprintln!(
            "error: only {} of {} clients connected",
            hub.connection_count(),
            args.clients
        );
        return false;
    }
    println!(
        "  {} clients connected in {:.1} s",
        hub.connection_count(),
        connecting.elapsed().as_secs_f64()
    );

    let mut slowest_us = Vec::with_capacity(args.events);
    let mut missed = 0;
    for seq in 0..args.events {
        tokio::time::sleep(Duration::from_millis(args.pause_ms)).await;
        let event = Event::new(
            "bench.tick",
            None,
            serde_json::json!({ "seq": seq }),
            Timestamp::from_system_time(std::time::SystemTime::now()),
        )
        .expect("a valid event");

        let published = Instant::now();
        let _ = deliveries.published[seq].set(published);
        let queued = hub.publish_event(&event);
        let publish_call = published.elapsed();

        let everyone = wait_for(&deliveries, seq, args.clients, DELIVERY_TIMEOUT).await;
        let got = deliveries.received[seq].load(Ordering::Acquire);
        missed += args.clients - got;
        let mut latencies = lock(&deliveries.latencies_us[seq]).clone();
        latencies.sort_unstable();
        let last = latencies.last().copied().unwrap_or(u32::MAX);
        slowest_us.push(last);
        println!(
            "  event {:>3}/{}: queued for {queued}, publish call {:>6.2} ms, p50 {:>6.2} ms, \
             p99 {:>6.2} ms, last client {:>6.2} ms{}",
            seq + 1,
            args.events,
            publish_call.as_secs_f64() * 1e3,
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            f64::from(last) / 1e3,
            if everyone {
                String::new()
            } else {
                format!("   {} clients MISSED it", args.clients - got)
            },
        );
    }

    let mut all: Vec<u32> = deliveries
        .latencies_us
        .iter()
        .flat_map(|l| lock(l).clone())
        .collect();
    all.sort_unstable();
    slowest_us.sort_unstable();
    let p99 = percentile(&all, 0.99);
    let verdict = if missed == 0 && p99 < TARGET_P99.as_secs_f64() * 1e3 {
        "target met"
    } else {
        "TARGET MISSED"
    };
    println!();
    println!(
        "summary: {} clients x {} events = {} deliveries, {missed} missed",
        args.clients,
        args.events,
        all.len()
    );
    println!(
        "  delivery latency   p50 {:.2} ms   p90 {:.2} ms   p99 {:.2} ms   p99.9 {:.2} ms   \
         max {:.2} ms",
        percentile(&all, 0.50),
        percentile(&all, 0.90),
        p99,
        percentile(&all, 0.999),
        percentile(&all, 1.0),
    );
    println!(
        "  slowest client per event   median {:.2} ms   max {:.2} ms",
        percentile(&slowest_us, 0.50),
        percentile(&slowest_us, 1.0),
    );
    println!("  target p99 < {} ms: {verdict}", TARGET_P99.as_millis());

    let _ = stop.send(());
    let _ = server.await;
    for client in clients {
        client.abort();
    }
    missed == 0
}

/// Opens every client, a bounded number at a time, and waits until all of them read.
async fn connect_all(
    args: &Args,
    url: &str,
    hub: &Hub,
    deliveries: &Arc<Deliveries>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut clients = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let url = url.to_owned();
        let deliveries = deliveries.clone();
        clients.push(tokio::spawn(async move {
            let connected = tokio_tungstenite::connect_async_with_config(
                url.as_str(),
                Some(client_config()),
                false,
            )
            .await;
            drop(permit);
            let (mut socket, _) = match connected {
                Ok(socket) => socket,
                Err(e) => {
                    eprintln!("  a client could not connect: {e}");
                    return;
                }
            };
            deliveries.connected.fetch_add(1, Ordering::AcqRel);
            deliveries.changed.notify_waiters();
            while let Some(Ok(message)) = socket.next().await {
                let at = Instant::now();
                if let Message::Text(text) = message
                    && let Some(seq) = tick_seq(text.as_str())
                {
                    deliveries.record(seq, at);
                }
            }
        }));
        let n = clients.len();
        if n % 2000 == 0 {
            println!("  {n} clients connecting");
        }
    }

    // The server registers a connection after its handshake; wait until it has them all.
    let deadline = Instant::now() + Duration::from_secs(60);
    while (deliveries.connected.load(Ordering::Acquire) < args.clients
        || hub.connection_count() < args.clients)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    clients
}

/// Client settings: a small read buffer. tungstenite zero-fills its whole read buffer
/// (128 KiB by default) before every read, which for thousands of clients costs more than
/// the delivery being measured.
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(CLIENT_READ_BUFFER)
}

/// Read buffer of each client, in bytes; events are a few hundred bytes.
const CLIENT_READ_BUFFER: usize = 4096;

/// The sequence number of a `bench.tick` envelope, read without parsing the whole frame.
fn tick_seq(text: &str) -> Option<usize> {
    if !text.contains(r#""type":"bench.tick""#) {
        return None;
    }
    let start = text.find(r#""seq":"#)? + r#""seq":"#.len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

async fn wait_for(deliveries: &Deliveries, seq: usize, clients: usize, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let changed = deliveries.changed.notified();
        if deliveries.received[seq].load(Ordering::Acquire) >= clients {
            return true;
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return deliveries.received[seq].load(Ordering::Acquire) >= clients;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Raises the soft and, where allowed, the hard open-file limit to at least `wanted`;
/// returns the soft limit now in force.
fn raise_fd_limit(wanted: u64) -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit to write into.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur >= wanted {
        return Ok(limit.rlim_cur);
    }
    // Raising the hard limit needs privileges; without them, go as far as it allows.
    let raised = libc::rlimit {
        rlim_cur: wanted.max(limit.rlim_cur),
        rlim_max: wanted.max(limit.rlim_max),
    };
    // SAFETY: `raised` is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(raised.rlim_cur);
    }
    let capped = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: `capped` is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &capped) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(capped.rlim_cur)
}

/// The `q` quantile of sorted microseconds, in milliseconds.
fn percentile(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted_us.len() as f64 * q).ceil() as usize).clamp(1, sorted_us.len());
    f64::from(sorted_us[rank - 1]) / 1000.0
}
