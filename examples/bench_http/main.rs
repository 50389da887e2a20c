//! HTTP load against a durable route and a plain warp route running the same order code.
//!
//! ```text
//! cargo run --release --example bench_http
//! cargo run --release --example bench_http -- --rounds 8 --seconds 5 --connections 64
//! ```
//!
//! One process starts the orders service on 127.0.0.1 (warp, in-memory store, realtime hub
//! as the event sink, no WebSocket client connected) with two routes:
//!
//! - `POST /orders`: the durable route of the orders example (`orders.create`);
//! - `POST /plain/orders`: the same validation, response and `order.created` event of
//!   `examples/shared/orders.rs`, published straight to the hub, without the engine.
//!
//! A load generator in the same process (hyper's HTTP/1.1 client, one keep-alive
//! connection per task) drives both with `--connections` concurrent connections, in
//! alternating rounds (durable, plain, durable, plain, ...) so that drift of a shared
//! machine hits both alike. Two scenarios run one after the other:
//!
//! - first executions: every request carries a new key, so the durable route claims,
//!   runs the handler and commits each time; target durable >= 0.90 x plain;
//! - replays: every request repeats one of `--replay-keys` requests stored beforehand, so
//!   the durable route answers from the store; target durable >= 1.00 x plain (which runs
//!   the handler every time).
//!
//! For each route it prints throughput, p50 and p99 latency, and the CPU time the server's
//! threads spent per request (a figure less disturbed by other work on the machine than
//! throughput is). Every figure comes from this run.
//!
//! With `--direct`, a third route joins the rounds: `POST /direct/orders` runs the same
//! durable route (same engine and store) from a plain warp filter that hands the request
//! to `DurableRoute::handle` itself, without the `cnerium-warp` adapter (which reads the
//! body as a stream and runs the engine in a task of its own). The gap between it and the
//! durable route is the adapter's cost; between it and the plain route, the engine's.
//!
//! With `--only <route>`, one route runs alone, for a profiler: `valgrind
//! --tool=callgrind` on `--only durable` and on `--only plain` counts the instructions
//! each route costs per request.

#[path = "../shared/orders.rs"]
mod orders;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use cnerium::realtime::{Hub, RealtimeConfig};
use cnerium::stores::{FileStore, MemoryStore};
use cnerium::warp::{durable_post, problem_rejections};
use cnerium::{Clock, Engine, EngineConfig, Store, SystemClock};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Barrier, oneshot};
use warp::Filter;
use warp::reply::Reply;

use crate::orders::{CREATE_ORDER, create_order};

/// HTTP throughput and latency of a durable route against a plain one.
#[derive(Debug, Parser)]
#[command(name = "bench_http")]
struct Args {
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,

    /// Measured rounds per route and scenario.
    #[arg(long, default_value_t = 5)]
    rounds: usize,

    /// Length of one round, in seconds.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,

    /// Unmeasured warm-up per route before each scenario, in seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,

    /// Stored requests the replay scenario cycles through.
    #[arg(long, default_value_t = 1024)]
    replay_keys: usize,

    /// Which scenarios to run.
    #[arg(long, value_enum, default_value_t = Scenario::Both)]
    scenario: Scenario,

    /// Worker threads of the server's runtime.
    #[arg(long, default_value_t = 2)]
    server_threads: usize,

    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    load_threads: usize,

    /// Also measure the durable route called without the cnerium-warp adapter.
    #[arg(long)]
    direct: bool,

    /// Measure this route alone, for a profiler to see one route's requests only; the
    /// figures then have no ratio.
    #[arg(long, value_enum)]
    only: Option<Route>,

    /// The durable route's store. With `file`, records go to a file store in a temporary
    /// directory, and the raw rate of single fsyncs on the same disk is measured first.
    #[arg(long, value_enum, default_value_t = StoreKind::Memory)]
    store: StoreKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    Memory,
    File,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    First,
    Replay,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Route {
    Durable,
    Plain,
    Direct,
}

impl Route {
    fn path(self) -> &'static str {
        match self {
            Self::Durable => "/orders",
            Self::Plain => "/plain/orders",
            Self::Direct => "/direct/orders",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Durable => "durable",
            Self::Plain => "plain",
            Self::Direct => "direct",
        }
    }

    /// The routes of each round, in order.
    fn measured(args: &Args) -> Vec<Route> {
        match args.only {
            Some(route) => vec![route],
            None if args.direct => vec![Self::Durable, Self::Plain, Self::Direct],
            None => vec![Self::Durable, Self::Plain],
        }
    }
}

const SERVER_THREAD: &str = "bench-server";
const LOAD_THREAD: &str = "bench-load";
const ORDER_BODY: &[u8] = br#"{"product_id":"p1","quantity":2}"#;

fn main() -> ExitCode {
    let args = Args::parse();
    if args.connections == 0 || args.rounds == 0 || args.seconds <= 0.0 {
        eprintln!("error: --connections, --rounds and --seconds must be positive");
        return ExitCode::FAILURE;
    }

    let data = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("error: cannot make a temporary directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    // With the file store, its handle for the counters and the disk's single-fsync rate.
    type FileRun = Option<(Arc<FileStore>, f64)>;
    let (store, file): (Arc<dyn Store>, FileRun) = match args.store {
        StoreKind::Memory => (Arc::new(MemoryStore::new()), None),
        StoreKind::File => {
            println!("measuring single write+fdatasync calls on the same disk for 3 s ...");
            let rate = match raw_fsync_rate(&data.path().join("fsync-probe")) {
                Ok(rate) => rate,
                Err(e) => {
                    eprintln!(
                        "error: cannot measure fsyncs in {}: {e}",
                        data.path().display()
                    );
                    return ExitCode::FAILURE;
                }
            };
            println!("raw: {rate:.0} single fsyncs per second");
            match FileStore::open(data.path().join("store")) {
                Ok(store) => {
                    let store = Arc::new(store);
                    (store.clone(), Some((store, rate)))
                }
                Err(e) => {
                    eprintln!("error: cannot open the file store: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };

    let server = match Server::start(args.server_threads, store) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("error: cannot start the server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.load_threads.max(1))
        .thread_name(LOAD_THREAD)
        .enable_all()
        .build()
        .expect("building the load generator's runtime");

    println!(
        "bench_http: orders service on http://{} ({} server threads), {} connections, \
         {} rounds of {:.1} s per route, {} cores",
        server.addr,
        args.server_threads,
        args.connections,
        args.rounds,
        args.seconds,
        std::thread::available_parallelism().map_or(0, usize::from),
    );

    let mut failed = false;
    let mut summaries = Vec::new();
    if args.scenario != Scenario::Replay {
        let summary = load.block_on(run_scenario(&args, server.addr, Kind::First));
        failed |= summary.errors > 0;
        summaries.push(summary);
    }
    if args.scenario != Scenario::First {
        let summary = load.block_on(run_scenario(&args, server.addr, Kind::Replay));
        failed |= summary.errors > 0;
        summaries.push(summary);
    }

    println!();
    println!(
        "summary ({} connections, {} rounds x {:.1} s per route):",
        args.connections, args.rounds, args.seconds
    );
    for summary in &summaries {
        summary.print();
    }
    if let Some((store, fsyncs)) = &file
        && let Some(first) = summaries.iter().find(|s| s.kind == Kind::First)
    {
        let fsyncs = *fsyncs;
        let stats = store.stats();
        let ratio = first.durable.throughput() / fsyncs;
        println!(
            "  file store: {:.0} first executions per second = {ratio:.1} x the {fsyncs:.0} \
             single fsyncs per second of the same disk (target >= 10: {}); every 201 was \
             on disk before it was sent",
            first.durable.throughput(),
            if ratio >= 10.0 {
                "target met"
            } else {
                "TARGET MISSED"
            }
        );
        println!(
            "  file store over the whole run: {} completions in {} fsyncs, {:.1} per fsync",
            stats.commits,
            stats.syncs,
            stats.commits as f64 / stats.syncs.max(1) as f64
        );
    }
    drop(load);
    server.stop();

    if failed {
        eprintln!("error: some requests failed or answered unexpectedly; figures are suspect");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Appends 200 bytes and syncs, one at a time for 3 s, like a store without group
/// commit; returns syncs per second.
fn raw_fsync_rate(path: &std::path::Path) -> std::io::Result<f64> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    let started = Instant::now();
    let mut syncs = 0u64;
    while started.elapsed() < Duration::from_secs(3) {
        file.write_all(&[b'r'; 200])?;
        file.sync_data()?;
        syncs += 1;
    }
    Ok(syncs as f64 / started.elapsed().as_secs_f64())
}

/// The orders service on a runtime of its own.
struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Server {
    fn start(threads: usize, store: Arc<dyn Store>) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(SERVER_THREAD)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let hub = Hub::new(RealtimeConfig::default());
                let engine = Engine::with_parts(
                    store,
                    Arc::new(hub.clone()),
                    Arc::new(SystemClock),
                    EngineConfig::default(),
                );
                let route = engine.route(CREATE_ORDER, create_order);
                let durable = durable_post("orders", route.clone());
                let direct = warp::post()
                    .and(warp::path!("direct" / "orders"))
                    .and(warp::header::headers_cloned())
                    .and(warp::body::content_length_limit(1024 * 1024))
                    .and(warp::body::bytes())
                    .then(move |headers, body: Bytes| {
                        let route = route.clone();
                        async move {
                            let mut request = http::Request::new(body);
                            *request.method_mut() = http::Method::POST;
                            *request.uri_mut() = http::Uri::from_static("/orders");
                            *request.headers_mut() = headers;
                            route.handle(request).await
                        }
                    });
                let plain = warp::post()
                    .and(warp::path!("plain" / "orders"))
                    .and(warp::header::optional::<String>("idempotency-key"))
                    .and(warp::body::content_length_limit(1024 * 1024))
                    .and(warp::body::bytes())
                    .map(move |key: Option<String>, body: Bytes| {
                        let key = key.as_deref().unwrap_or("");
                        orders::create_order_without_engine(key, &body, SystemClock.now(), |e| {
                            hub.publish_event(e);
                        })
                    });
                let routes = durable
                    .map(Reply::into_response)
                    .or(plain.map(Reply::into_response))
                    .unify()
                    .or(direct.map(Reply::into_response))
                    .unify()
                    .recover(|rejection| async move {
                        problem_rejections(rejection)
                            .await
                            .map(Reply::into_response)
                    });
                warp::serve(routes)
                    .incoming(listener)
                    .graceful(async {
                        let _ = stopped.await;
                    })
                    .run()
                    .await;
            });
        });
        Ok(Self { addr, stop, thread })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    First,
    Replay,
}

impl Kind {
    fn title(self) -> &'static str {
        match self {
            Self::First => "first executions (a new key each request)",
            Self::Replay => "replays of stored responses",
        }
    }

    /// Lowest durable/plain throughput ratio that meets the target.
    fn target(self) -> f64 {
        match self {
            Self::First => 0.90,
            Self::Replay => 1.00,
        }
    }
}

/// What the requests of one round look like.
#[derive(Clone, Copy)]
struct Plan {
    kind: Kind,
    route: Route,
    /// Distinguishes the keys of rounds, so first executions never repeat a key.
    round: usize,
    replay_keys: usize,
    connections: usize,
}

impl Plan {
    fn key(&self, connection: usize, seq: u64) -> String {
        match self.kind {
            Kind::First => format!(
                "first-{}-{}-{connection}-{seq}",
                self.route.name(),
                self.round
            ),
            Kind::Replay => {
                let slot = (seq as usize * self.connections + connection) % self.replay_keys;
                format!("replay-{slot}")
            }
        }
    }

    /// Whether a durable answer must be marked replayed.
    fn expects_replay(&self) -> bool {
        self.route != Route::Plain && self.kind == Kind::Replay
    }
}

/// Counts and latencies of one round.
#[derive(Default)]
struct Round {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
    server_cpu: Duration,
    load_cpu: Duration,
}

impl Round {
    fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// All rounds of one route in one scenario.
#[derive(Default)]
struct Totals {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    server_cpu: Duration,
    latencies_us: Vec<u32>,
    throughputs: Vec<f64>,
}

impl Totals {
    fn add(&mut self, round: Round) {
        self.requests += round.requests;
        self.errors += round.errors;
        self.elapsed += round.elapsed;
        self.server_cpu += round.server_cpu;
        self.throughputs.push(round.throughput());
        self.latencies_us.extend(round.latencies_us);
    }

    fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn cpu_us_per_request(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / self.requests.max(1) as f64
    }
}

struct Summary {
    kind: Kind,
    durable: Totals,
    plain: Totals,
    direct: Option<Totals>,
    pair_ratios: Vec<f64>,
    errors: u64,
}

impl Summary {
    fn print(&self) {
        let ratio = self.durable.throughput() / self.plain.throughput();
        let target = self.kind.target();
        let verdict = if ratio >= target {
            "target met"
        } else {
            "TARGET MISSED"
        };
        println!("  {}:", self.kind.title());
        let mut routes = vec![("durable", &self.durable), ("plain", &self.plain)];
        if let Some(direct) = &self.direct {
            routes.push(("direct", direct));
        }
        for (route, totals) in routes {
            if totals.requests == 0 {
                continue;
            }
            let mut latencies = totals.latencies_us.clone();
            latencies.sort_unstable();
            println!(
                "    {route:<8} {:>8.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms   server CPU \
                 {:>5.1} us/request   {} requests, {} errors",
                totals.throughput(),
                percentile(&latencies, 0.50),
                percentile(&latencies, 0.99),
                totals.cpu_us_per_request(),
                totals.requests,
                totals.errors,
            );
        }
        if self.pair_ratios.is_empty() {
            println!("    one route measured (--only): no ratio");
            return;
        }
        println!(
            "    ratio durable/plain: throughput {ratio:.3} (median of round pairs {:.3}; \
             target >= {target:.2}: {verdict}), server CPU per request {:.3}",
            median(&self.pair_ratios),
            self.durable.cpu_us_per_request() / self.plain.cpu_us_per_request(),
        );
        if let Some(direct) = &self.direct {
            println!(
                "    server CPU per request over plain: engine {:+.1} us (direct), \
                 cnerium-warp adapter {:+.1} us (durable over direct)",
                direct.cpu_us_per_request() - self.plain.cpu_us_per_request(),
                self.durable.cpu_us_per_request() - direct.cpu_us_per_request(),
            );
        }
    }
}

async fn run_scenario(args: &Args, addr: SocketAddr, kind: Kind) -> Summary {
    println!();
    println!("== {}", kind.title());
    let plan = |route, round| Plan {
        kind,
        route,
        round,
        replay_keys: args.replay_keys.max(1),
        connections: args.connections,
    };

    if kind == Kind::Replay {
        let stored = store_replay_keys(addr, args.replay_keys.max(1)).await;
        println!("  stored {stored} responses to replay");
    }

    let warmup = Duration::from_secs_f64(args.warmup);
    if !warmup.is_zero() {
        for route in Route::measured(args) {
            let round = run_round(addr, args.connections, warmup, plan(route, 0)).await;
            println!(
                "  warm-up  {:<8} {:>8.0} req/s",
                route.name(),
                round.throughput()
            );
        }
    }

    let length = Duration::from_secs_f64(args.seconds);
    let mut durable = Totals::default();
    let mut plain = Totals::default();
    let mut direct = (args.direct || args.only == Some(Route::Direct)).then(Totals::default);
    let mut pair_ratios = Vec::new();
    for round in 1..=args.rounds {
        let mut pair = [0.0; 3];
        for (i, route) in Route::measured(args).into_iter().enumerate() {
            let result = run_round(addr, args.connections, length, plan(route, round)).await;
            let mut latencies = result.latencies_us.clone();
            latencies.sort_unstable();
            println!(
                "  round {round}/{} {:<8} {:>8.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms   \
                 CPU server {:>5.1} / load {:>5.1} us/request{}",
                args.rounds,
                route.name(),
                result.throughput(),
                percentile(&latencies, 0.50),
                percentile(&latencies, 0.99),
                result.server_cpu.as_secs_f64() * 1e6 / result.requests.max(1) as f64,
                result.load_cpu.as_secs_f64() * 1e6 / result.requests.max(1) as f64,
                if result.errors > 0 {
                    format!("   {} ERRORS", result.errors)
                } else {
                    String::new()
                },
            );
            pair[i] = result.throughput();
            match (route, direct.as_mut()) {
                (Route::Durable, _) => durable.add(result),
                (Route::Plain, _) => plain.add(result),
                (Route::Direct, Some(direct)) => direct.add(result),
                (Route::Direct, None) => {}
            }
        }
        if args.only.is_none() {
            pair_ratios.push(pair[0] / pair[1]);
        }
    }

    let errors = durable.errors + plain.errors + direct.as_ref().map_or(0, |d| d.errors);
    Summary {
        kind,
        durable,
        plain,
        direct,
        pair_ratios,
        errors,
    }
}

/// Sends each replayed request once, so that the replay rounds find it stored.
async fn store_replay_keys(addr: SocketAddr, count: usize) -> usize {
    let mut client = match Client::connect(addr).await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("  cannot connect: {e}");
            return 0;
        }
    };
    let mut stored = 0;
    for slot in 0..count {
        match client
            .post(Route::Durable.path(), &format!("replay-{slot}"))
            .await
        {
            Ok(answer) if answer.status == 201 => stored += 1,
            Ok(answer) => eprintln!("  storing replay-{slot}: status {}", answer.status),
            Err(e) => eprintln!("  storing replay-{slot}: {e}"),
        }
    }
    stored
}

async fn run_round(addr: SocketAddr, connections: usize, length: Duration, plan: Plan) -> Round {
    let barrier = Arc::new(Barrier::new(connections + 1));
    let mut tasks = Vec::with_capacity(connections);
    for connection in 0..connections {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(drive(addr, connection, plan, barrier, length)));
    }

    // Every connection is open before the clock starts.
    barrier.wait().await;
    let cpu_before = thread_cpu();
    let start = Instant::now();
    let mut round = Round::default();
    for task in tasks {
        match task.await {
            Ok(part) => {
                round.requests += part.requests;
                round.errors += part.errors;
                round.latencies_us.extend(part.latencies_us);
            }
            Err(e) => {
                eprintln!("  a load task failed: {e}");
                round.errors += 1;
            }
        }
    }
    round.elapsed = start.elapsed();
    let cpu_after = thread_cpu();
    round.server_cpu = cpu_after.server.saturating_sub(cpu_before.server);
    round.load_cpu = cpu_after.load.saturating_sub(cpu_before.load);
    round
}

/// One connection's share of a round: requests back to back until the round ends.
async fn drive(
    addr: SocketAddr,
    connection: usize,
    plan: Plan,
    barrier: Arc<Barrier>,
    length: Duration,
) -> Round {
    let mut part = Round::default();
    let client = Client::connect(addr).await;
    barrier.wait().await;
    let mut client = match client {
        Ok(client) => client,
        Err(e) => {
            eprintln!("  connection {connection}: {e}");
            part.errors += 1;
            return part;
        }
    };

    let deadline = Instant::now() + length;
    let mut seq = 0;
    while Instant::now() < deadline {
        let key = plan.key(connection, seq);
        seq += 1;
        let start = Instant::now();
        let answer = client.post(plan.route.path(), &key).await;
        let latency = start.elapsed();
        match answer {
            Ok(answer) if answer.status == 201 && answer.replayed == plan.expects_replay() => {
                part.requests += 1;
                part.latencies_us
                    .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
            }
            Ok(answer) => {
                part.errors += 1;
                if part.errors == 1 {
                    eprintln!(
                        "  {} {key}: status {}, replayed {}",
                        plan.route.name(),
                        answer.status,
                        answer.replayed
                    );
                }
            }
            Err(e) => {
                part.errors += 1;
                eprintln!("  {} {key}: {e}", plan.route.name());
                return part;
            }
        }
    }
    part
}

/// One keep-alive HTTP/1.1 connection.
struct Client {
    sender: http1::SendRequest<Full<Bytes>>,
}

struct Answer {
    status: u16,
    replayed: bool,
}

type ClientError = Box<dyn std::error::Error + Send + Sync>;

impl Client {
    async fn connect(addr: SocketAddr) -> Result<Self, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { sender })
    }

    async fn post(&mut self, path: &str, key: &str) -> Result<Answer, ClientError> {
        self.sender.ready().await?;
        let request = http::Request::post(path)
            .header(http::header::HOST, "127.0.0.1")
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", key)
            .body(Full::new(Bytes::from_static(ORDER_BODY)))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let replayed = response.headers().contains_key("idempotent-replayed");
        response.into_body().collect().await?;
        Ok(Answer { status, replayed })
    }
}

/// CPU time used so far by the server's and the load generator's threads.
struct ThreadCpu {
    server: Duration,
    load: Duration,
}

/// Reads every thread's user and system time from /proc; zero where it is unreadable.
fn thread_cpu() -> ThreadCpu {
    let mut cpu = ThreadCpu {
        server: Duration::ZERO,
        load: Duration::ZERO,
    };
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).unwrap_or(100).max(1);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return cpu;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // The name is in parentheses and may hold spaces; fields after it are numeric.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        let used: u64 = fields
            .get(11..13)
            .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
        let used = Duration::from_secs_f64(used as f64 / ticks as f64);
        if name.starts_with(SERVER_THREAD) {
            cpu.server += used;
        } else if name.starts_with(LOAD_THREAD) {
            cpu.load += used;
        }
    }
    cpu
}

/// The `q` quantile of sorted microsecond latencies, in milliseconds.
fn percentile(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted_us.len() as f64 * q).ceil() as usize).clamp(1, sorted_us.len());
    f64::from(sorted_us[rank - 1]) / 1000.0
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}
