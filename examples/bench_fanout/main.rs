//! Time from publishing an event until each of 10,000 WebSocket clients has it.
//!
//! ```text
//! cargo run --release --example bench_fanout -- --clients 10000 --events 20
//! ```
//!
//! Starts the realtime hub's tokio listener on 127.0.0.1 and connects `--clients`
//! WebSocket clients to it. Then, `--events` times, it publishes one broadcast event
//! through the hub (as the engine does after a commit) and waits until every client has
//! read it. The event is published from a task on the server's runtime, as a request
//! handler's commit publishes it (a wake-up from a worker thread goes to that worker's own
//! queue; one from outside the runtime goes through the shared queue and wakes a parked
//! worker every time). The latency of one delivery runs from just before the event is
//! built and published until the client's read returns its frame, both read from the system's
//! monotonic clock. Prints percentiles over all deliveries and over each event's slowest
//! client. Target: p99 under 100 ms.
//!
//! Each connection holds a descriptor on each side, and one process may not hold the
//! 20,000 and more that 10,000 connections need where the hard open-file limit is 20,000,
//! so the clients run on tokio in a child process (this same program, started with
//! `--client-of`); both processes raise their soft `RLIMIT_NOFILE` to the hard limit.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

    /// Worker threads of each process's runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,

    /// Connections opened at the same time while clients connect.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,

    /// Run as the client process of a server at this WebSocket URL (used internally).
    #[arg(long, value_name = "URL", hide = true)]
    client_of: Option<String>,
}

/// p99 of a delivery must stay below this.
const TARGET_P99: Duration = Duration::from_millis(100);

/// How long the client process waits for the rest of the clients once one client has an
/// event, before it reports the event as missed by the others.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Read buffer of each client, in bytes; events are a few hundred bytes. tungstenite
/// zero-fills its whole read buffer (128 KiB by default) before every read, which for
/// thousands of clients costs more than the delivery being measured.
const CLIENT_READ_BUFFER: usize = 4096;

fn main() -> ExitCode {
    let args = Args::parse();
    let limit = raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .expect("building the runtime");
    let ok = match &args.client_of {
        Some(url) => runtime.block_on(run_clients(&args, url)),
        None => {
            match limit {
                Ok(limit) => println!("bench_fanout: open-file limit {limit} per process"),
                Err(e) => eprintln!("warning: cannot raise the open-file limit: {e}"),
            }
            runtime.block_on(run_server(&args))
        }
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The server side: the hub, its listener, the events; the child process reports what its
/// clients received.
async fn run_server(args: &Args) -> bool {
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
        "bench_fanout: {} clients on {url}, {} events, {} runtime threads per process, {} cores",
        args.clients,
        args.events,
        args.threads,
        std::thread::available_parallelism().map_or(0, usize::from),
    );

    let mut child = match spawn_clients(args, &url) {
        Ok(child) => child,
        Err(e) => {
            eprintln!("error: cannot start the client process: {e}");
            return false;
        }
    };
    let reports = child
        .stdout
        .take()
        .map(Reports::new)
        .expect("the child's stdout is piped");
    let ok = drive_events(args, &hub, reports).await;

    let _ = stop.send(());
    let _ = server.await;
    let _ = child.kill();
    let _ = child.wait();
    ok
}

fn spawn_clients(args: &Args, url: &str) -> std::io::Result<Child> {
    Command::new(std::env::current_exe()?)
        .arg("--client-of")
        .arg(url)
        .arg("--clients")
        .arg(args.clients.to_string())
        .arg("--events")
        .arg(args.events.to_string())
        .arg("--threads")
        .arg(args.threads.to_string())
        .arg("--connect-concurrency")
        .arg(args.connect_concurrency.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
}

/// Lines from the client process, read on a thread of their own.
struct Reports {
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Reports {
    fn new(stdout: ChildStdout) -> Self {
        let (send, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Self { lines }
    }

    /// The next line, or `None` when the child ended or said nothing for `timeout`.
    async fn next(&mut self, timeout: Duration) -> Option<String> {
        tokio::time::timeout(timeout, self.lines.recv())
            .await
            .ok()
            .flatten()
    }
}

async fn drive_events(args: &Args, hub: &Hub, mut reports: Reports) -> bool {
    // The client process says "connecting N" as it goes and "ready N" once all are open.
    let connecting = std::time::Instant::now();
    loop {
        let Some(line) = reports.next(Duration::from_secs(120)).await else {
            eprintln!("error: the client process stopped before its clients connected");
            return false;
        };
        match line.split_once(' ') {
            Some(("connecting", n)) => println!("  {n} clients connecting"),
            Some(("ready", n)) => {
                println!("  {n} clients connected");
                break;
            }
            _ => eprintln!("  client process: {line}"),
        }
    }
    // The hub registers a connection after its handshake; wait until it has them all.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while hub.connection_count() < args.clients && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if hub.connection_count() < args.clients {
        eprintln!(
            "error: the hub holds {} of {} clients",
            hub.connection_count(),
            args.clients
        );
        return false;
    }
    println!(
        "  hub holds {} connections after {:.1} s",
        hub.connection_count(),
        connecting.elapsed().as_secs_f64()
    );

    let mut all = Vec::with_capacity(args.clients * args.events);
    let mut slowest_us = Vec::with_capacity(args.events);
    let mut missed = 0;
    for seq in 0..args.events {
        tokio::time::sleep(Duration::from_millis(args.pause_ms)).await;

        let publisher = hub.clone();
        let publishing = tokio::spawn(async move {
            let published = monotonic_ns();
            let event = Event::new(
                "bench.tick",
                None,
                serde_json::json!({ "seq": seq, "published_ns": published }),
                Timestamp::from_system_time(std::time::SystemTime::now()),
            )
            .expect("a valid event");
            let queued = publisher.publish_event(&event);
            (queued, (monotonic_ns() - published) / 1000)
        });
        let Ok((queued, publish_call_us)) = publishing.await else {
            eprintln!("error: publishing event {} panicked", seq + 1);
            return false;
        };

        let Some(line) = reports
            .next(DELIVERY_TIMEOUT + Duration::from_secs(5))
            .await
        else {
            eprintln!(
                "error: no report from the client process for event {}",
                seq + 1
            );
            return false;
        };
        let Some((reported, mut latencies)) = parse_event_report(&line) else {
            eprintln!("error: unexpected report from the client process: {line}");
            return false;
        };
        if reported != seq {
            eprintln!("error: report for event {reported} while waiting for {seq}");
            return false;
        }
        latencies.sort_unstable();
        let got = latencies.len();
        missed += args.clients.saturating_sub(got);
        let last = latencies.last().copied().unwrap_or(u32::MAX);
        slowest_us.push(last);
        println!(
            "  event {:>3}/{}: queued for {queued}, publish call {:>6.2} ms, p50 {:>6.2} ms, \
             p99 {:>6.2} ms, last client {:>6.2} ms{}",
            seq + 1,
            args.events,
            publish_call_us as f64 / 1e3,
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            f64::from(last) / 1e3,
            if got < args.clients {
                format!("   {} clients MISSED it", args.clients - got)
            } else {
                String::new()
            },
        );
        all.extend(latencies);
    }

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
    missed == 0
}

/// `event <seq> <µs>,<µs>,...` from the client process.
fn parse_event_report(line: &str) -> Option<(usize, Vec<u32>)> {
    let mut parts = line.split(' ');
    if parts.next()? != "event" {
        return None;
    }
    let seq = parts.next()?.parse().ok()?;
    let latencies = match parts.next() {
        Some(list) if !list.is_empty() => list
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<u32>, _>>()
            .ok()?,
        _ => Vec::new(),
    };
    Some((seq, latencies))
}

/// What the clients of the child process received.
struct Deliveries {
    /// Microseconds from publication to receipt, per event.
    latencies_us: Vec<Mutex<Vec<u32>>>,
    /// Clients that have each event.
    received: Vec<AtomicUsize>,
    changed: Notify,
}

/// The client side: connect, report, then report each event once every client has it.
async fn run_clients(args: &Args, url: &str) -> bool {
    let deliveries = Arc::new(Deliveries {
        latencies_us: (0..args.events).map(|_| Mutex::new(Vec::new())).collect(),
        received: (0..args.events).map(|_| AtomicUsize::new(0)).collect(),
        changed: Notify::new(),
    });
    let connected = Arc::new(AtomicUsize::new(0));
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut clients = Vec::with_capacity(args.clients);
    for n in 1..=args.clients {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let url = url.to_owned();
        let deliveries = deliveries.clone();
        let connected = connected.clone();
        clients.push(tokio::spawn(async move {
            let config = WebSocketConfig::default().read_buffer_size(CLIENT_READ_BUFFER);
            let socket =
                tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), false)
                    .await;
            drop(permit);
            let (mut socket, _) = match socket {
                Ok(socket) => socket,
                Err(e) => {
                    eprintln!("  a client could not connect: {e}");
                    return;
                }
            };
            connected.fetch_add(1, Ordering::AcqRel);
            while let Some(Ok(message)) = socket.next().await {
                let at = monotonic_ns();
                if let Message::Text(text) = message
                    && let Some((seq, published)) = tick(text.as_str())
                    && let Some(latencies) = deliveries.latencies_us.get(seq)
                {
                    let us = u32::try_from(at.saturating_sub(published) / 1000).unwrap_or(u32::MAX);
                    lock(latencies).push(us);
                    deliveries.received[seq].fetch_add(1, Ordering::AcqRel);
                    deliveries.changed.notify_waiters();
                }
            }
        }));
        if n % 2000 == 0 {
            say(&format!("connecting {n}"));
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while connected.load(Ordering::Acquire) < args.clients && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    say(&format!("ready {}", connected.load(Ordering::Acquire)));

    for seq in 0..args.events {
        // Wait for the first delivery as long as the server takes, then for the rest.
        while deliveries.received[seq].load(Ordering::Acquire) == 0 {
            let changed = deliveries.changed.notified();
            if deliveries.received[seq].load(Ordering::Acquire) > 0 {
                break;
            }
            changed.await;
        }
        let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
        loop {
            let changed = deliveries.changed.notified();
            if deliveries.received[seq].load(Ordering::Acquire) >= args.clients {
                break;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                break;
            }
        }
        let latencies = lock(&deliveries.latencies_us[seq]).clone();
        let list: Vec<String> = latencies.iter().map(u32::to_string).collect();
        say(&format!("event {seq} {}", list.join(",")));
    }
    for client in clients {
        client.abort();
    }
    true
}

/// One line to the server process.
fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// The sequence number and publication time of a `bench.tick` envelope, read without
/// parsing the whole frame.
fn tick(text: &str) -> Option<(usize, u64)> {
    if !text.contains(r#""type":"bench.tick""#) {
        return None;
    }
    Some((
        number_after(text, "\"seq\":")?,
        number_after(text, "\"published_ns\":")?,
    ))
}

fn number_after<T: std::str::FromStr>(text: &str, label: &str) -> Option<T> {
    let start = text.find(label)? + label.len();
    let rest = &text[start..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Nanoseconds of the system's monotonic clock, the same in every process.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write into; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Raises the soft open-file limit to the hard limit; returns the soft limit now in force.
fn raise_fd_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit to write into.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a valid rlimit within the hard limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// The `q` quantile of sorted microseconds, in milliseconds.
fn percentile(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted_us.len() as f64 * q).ceil() as usize).clamp(1, sorted_us.len());
    f64::from(sorted_us[rank - 1]) / 1000.0
}
