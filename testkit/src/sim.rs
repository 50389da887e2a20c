//! [`Simulation`]: drives the real engine over any store, on a manual clock, with requests
//! interleaved in an order the test decides.
//!
//! # How requests interleave
//!
//! Every request is a future the simulation polls itself, in the order the requests were
//! sent. The simulated handler stops at a checkpoint right after it starts, so that when
//! several requests are sent at once, every claim happens before any handler finishes. A
//! handler told to [`hold`](SimRequest::hold) then waits at a [`Gate`] until the test
//! [`release`](Simulation::release)s it; a store call held with
//! [`FaultPlan::hold_nth`] waits the same way. Between those points a request runs on
//! without interruption, and a future that waits on real I/O is simply awaited, so the
//! order of events does not depend on timing.

use std::collections::HashMap;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use cnerium_core::{
    BoxError, Clock, DurableRequest, DurableResponse, DurableRoute, Engine, EngineConfig, Event,
    EventSink, Handler, IdempotencyKey, ManualClock, Record, RecordKey, Scope, Store, StoreError,
    Timestamp,
};
use futures_util::future::BoxFuture;
use http::header::{CONTENT_TYPE, ETAG, HeaderName, HeaderValue, LOCATION, SET_COOKIE};
use http::{HeaderMap, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::faulty::{FaultPlan, FaultyStore, StoreMethod};
use crate::gate::{Gate, Park, checkpoint, clear_park, take_park};
use crate::sink::RecordingSink;

/// The operation name of the simulated route, unless the builder sets another.
pub const DEFAULT_OPERATION: &str = "sim.create";

/// The path every simulated request is sent to.
pub const SIM_PATH: &str = "/things";

/// Request header carrying the caller identity; the route scopes keys by it.
pub const CALLER_HEADER: &str = "x-sim-caller";

/// Response header the standard handler sets with its run number; not on the replay
/// allow-list, so a replay never carries it.
pub const RUN_HEADER: &str = "x-sim-run";

/// Where the simulation's clock starts: 2026-01-01T00:00:00Z.
pub const START: Timestamp = Timestamp::from_millis(1_767_225_600_000);

/// Identifies one request sent through a [`Simulation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// How the simulated handler ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Returns the standard response with this status.
    Respond(StatusCode),
    /// Panics (without printing a panic message).
    Panic,
    /// Returns an error.
    Error,
}

/// What the simulated handler does for one request.
///
/// In order: it records the run, stops at a checkpoint, waits at its gate when `hold` is
/// set, stages its events when `events` is set, then ends as `outcome` says. Events are
/// staged before a panic or an error on purpose: the engine must drop them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Behaviour {
    /// Wait at a gate until [`Simulation::release`].
    pub hold: bool,
    /// Stage the standard events (see [`standard_events`]).
    pub events: bool,
    /// How the run ends.
    pub outcome: Outcome,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            hold: false,
            events: true,
            outcome: Outcome::Respond(StatusCode::CREATED),
        }
    }
}

/// One request to send through the simulated route: `POST /things` with a key and a body.
#[derive(Clone, Debug)]
pub struct SimRequest {
    key: Option<String>,
    body: Bytes,
    caller: Option<String>,
    json: bool,
    behaviour: Behaviour,
}

impl SimRequest {
    /// A JSON request with idempotency key `key`; the handler answers 201 and stages the
    /// standard events unless told otherwise.
    pub fn new(key: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Self {
            key: Some(key.into()),
            body: body.into(),
            caller: None,
            json: true,
            behaviour: Behaviour::default(),
        }
    }

    /// A request without an `Idempotency-Key` header.
    pub fn without_key(body: impl Into<Bytes>) -> Self {
        Self {
            key: None,
            ..Self::new("", body)
        }
    }

    /// Sent by `caller`; the route scopes keys per caller.
    pub fn caller(mut self, caller: impl Into<String>) -> Self {
        self.caller = Some(caller.into());
        self
    }

    /// Sent as `application/octet-stream`, so the body is fingerprinted as raw bytes.
    pub fn raw(mut self) -> Self {
        self.json = false;
        self
    }

    /// The handler waits at a gate until [`Simulation::release`].
    pub fn hold(mut self) -> Self {
        self.behaviour.hold = true;
        self
    }

    /// The handler panics.
    pub fn panics(mut self) -> Self {
        self.behaviour.outcome = Outcome::Panic;
        self
    }

    /// The handler returns an error.
    pub fn fails(mut self) -> Self {
        self.behaviour.outcome = Outcome::Error;
        self
    }

    /// The handler answers with `status`.
    pub fn status(mut self, status: StatusCode) -> Self {
        self.behaviour.outcome = Outcome::Respond(status);
        self
    }

    /// The handler stages no event.
    pub fn without_events(mut self) -> Self {
        self.behaviour.events = false;
        self
    }

    /// The handler does exactly `behaviour`.
    pub fn behaviour(mut self, behaviour: Behaviour) -> Self {
        self.behaviour = behaviour;
        self
    }

    /// The idempotency key, if the request has one.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The caller, if any.
    pub fn caller_id(&self) -> Option<&str> {
        self.caller.as_deref()
    }

    fn to_http(&self, id: RequestId) -> Request<Bytes> {
        let mut request = Request::post(SIM_PATH)
            .body(self.body.clone())
            .expect("a POST to a fixed path is a valid request");
        let headers = request.headers_mut();
        if let Some(key) = &self.key {
            let value = HeaderValue::from_str(key)
                .unwrap_or_else(|_| panic!("simulated key {key:?} is not a valid header value"));
            headers.insert("idempotency-key", value);
        }
        let content_type = if self.json {
            "application/json"
        } else {
            "application/octet-stream"
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Some(caller) = &self.caller {
            let value = HeaderValue::from_str(caller).unwrap_or_else(|_| {
                panic!("simulated caller {caller:?} is not a valid header value")
            });
            headers.insert(CALLER_HEADER, value);
        }
        request.extensions_mut().insert(SimTag(id));
        request
    }
}

/// Marks a request with the simulation's id for it, so the handler finds its behaviour.
#[derive(Clone, Copy, Debug)]
struct SimTag(RequestId);

/// The standard handler's answer for run `run` of `key`: a JSON body naming the key, the
/// caller and the run, a `Location` and an `ETag` (replayed), and a `Set-Cookie` and an
/// `x-sim-run` header (never replayed).
pub fn standard_response(
    key: &str,
    caller: Option<&str>,
    run: u64,
    status: StatusCode,
) -> DurableResponse {
    let body = json!({"key": key, "caller": caller, "run": run});
    DurableResponse::json(status, body)
        .with_header(LOCATION, location_of(run))
        .with_header(ETAG, etag_of(run))
        .with_header(SET_COOKIE, HeaderValue::from_static("sim-session=1"))
        .with_header(HeaderName::from_static(RUN_HEADER), HeaderValue::from(run))
}

fn location_of(run: u64) -> HeaderValue {
    HeaderValue::try_from(format!("{SIM_PATH}/{run}")).expect("a path of digits is a value")
}

fn etag_of(run: u64) -> HeaderValue {
    HeaderValue::try_from(format!("\"run-{run}\"")).expect("a quoted token is a value")
}

/// One standard event, as (type, room, payload): what [`standard_events`] stages.
pub type EventSpec = (&'static str, Option<&'static str>, Value);

/// The events the standard handler stages on run `run` of `key`: a broadcast
/// `thing.created` and a `thing.audited` to room `audit`.
pub fn standard_events(key: &str, run: u64) -> Vec<EventSpec> {
    vec![
        ("thing.created", None, json!({"key": key, "run": run})),
        ("thing.audited", Some("audit"), json!({"run": run})),
    ]
}

/// A run of the handler, as the simulation saw it start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerRun {
    /// The request it ran for.
    pub request: Option<RequestId>,
    /// Its number: 1 for the first run of the simulation, counting across restarts.
    pub run: u64,
    /// The idempotency key.
    pub key: String,
    /// The caller, when the record is scoped to one.
    pub caller: Option<String>,
    /// The request body.
    pub body: Bytes,
    /// When it started.
    pub at: Timestamp,
}

/// A response the route sent.
#[derive(Clone, Debug)]
pub struct SimResponse {
    /// The request it answers.
    pub request: RequestId,
    /// The status.
    pub status: StatusCode,
    /// Every header.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// When it was sent.
    pub at: Timestamp,
}

impl SimResponse {
    /// Whether this is a replay of a stored response.
    pub fn is_replay(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }

    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The `type` of a problem response (`urn:cnerium:problem:...`), if this is one.
    pub fn problem_type(&self) -> Option<String> {
        let is_problem = self
            .headers
            .get(CONTENT_TYPE)
            .is_some_and(|v| v == "application/problem+json");
        if !is_problem {
            return None;
        }
        self.json()?.get("type")?.as_str().map(str::to_owned)
    }

    /// The run number of a standard handler's body, first answer or replay.
    pub fn run(&self) -> Option<u64> {
        self.json()?.get("run")?.as_u64()
    }
}

/// What became of a request by the time the simulation stopped driving.
#[derive(Clone, Debug)]
pub enum Sent {
    /// It was answered.
    Answered(SimResponse),
    /// It still runs: its handler or a store call waits at a gate.
    InFlight(RequestId),
}

impl Sent {
    /// The request's id.
    pub fn id(&self) -> RequestId {
        match self {
            Self::Answered(response) => response.request,
            Self::InFlight(id) => *id,
        }
    }

    /// The response, if the request was answered.
    pub fn response(&self) -> Option<&SimResponse> {
        match self {
            Self::Answered(response) => Some(response),
            Self::InFlight(_) => None,
        }
    }

    /// The response; panics when the request is still in flight.
    #[track_caller]
    pub fn answered(self) -> SimResponse {
        match self {
            Self::Answered(response) => response,
            Self::InFlight(id) => panic!("request {id} is still in flight"),
        }
    }
}

struct Plan {
    behaviour: Behaviour,
    gate: Option<Gate>,
}

/// State shared by the simulation and its handler.
struct Shared {
    clock: Arc<ManualClock>,
    plans: Mutex<HashMap<RequestId, Plan>>,
    runs: Mutex<Vec<HandlerRun>>,
    custom: Option<Arc<dyn Handler>>,
}

impl Shared {
    async fn run(self: Arc<Self>, request: DurableRequest) -> Result<DurableResponse, BoxError> {
        let id = request.extensions().get::<SimTag>().map(|tag| tag.0);
        let (behaviour, gate) = {
            let plans = lock(&self.plans);
            match id.and_then(|id| plans.get(&id)) {
                Some(plan) => (plan.behaviour, plan.gate.clone()),
                None => (Behaviour::default(), None),
            }
        };
        let key = request.idempotency_key().as_str().to_owned();
        let caller = request.scope().caller().map(str::to_owned);
        let run = {
            let mut runs = lock(&self.runs);
            let run = runs.len() as u64 + 1;
            runs.push(HandlerRun {
                request: id,
                run,
                key: key.clone(),
                caller: caller.clone(),
                body: request.body().clone(),
                at: self.clock.now(),
            });
            run
        };

        checkpoint().await;
        if let Some(gate) = gate {
            gate.wait().await;
        }
        if let Some(custom) = &self.custom {
            return match behaviour.outcome {
                Outcome::Panic => std::panic::resume_unwind(Box::new("simulated handler crash")),
                Outcome::Error => Err("simulated handler error".into()),
                Outcome::Respond(_) => custom.call(request).await,
            };
        }

        if behaviour.events {
            for (kind, room, payload) in standard_events(&key, run) {
                match room {
                    Some(room) => request.emit_to(room, kind, payload)?,
                    None => request.emit(kind, payload)?,
                }
            }
        }
        match behaviour.outcome {
            // Unwinding without `panic!` skips the panic hook, so tests stay quiet.
            Outcome::Panic => std::panic::resume_unwind(Box::new("simulated handler crash")),
            Outcome::Error => Err("simulated handler error".into()),
            Outcome::Respond(status) => Ok(standard_response(&key, caller.as_deref(), run, status)),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code panics while holding these locks, so a poisoned lock still holds consistent
    // data.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Turns the handler a simulation runs into another, to put middleware around it.
pub type HandlerWrap = Arc<dyn Fn(Arc<dyn Handler>) -> Arc<dyn Handler> + Send + Sync>;

/// Opens a persistent store again after a simulated restart, given the old instance.
pub type Reopen = Box<dyn FnMut(Arc<dyn Store>) -> Arc<dyn Store> + Send>;

/// Configures a [`Simulation`].
pub struct SimulationBuilder {
    store: Arc<dyn Store>,
    sink: Option<Arc<dyn EventSink>>,
    config: EngineConfig,
    start: Timestamp,
    operation: String,
    handler: Option<Arc<dyn Handler>>,
    wrap: Option<HandlerWrap>,
    reopen: Option<Reopen>,
    faults: FaultPlan,
    recorder: Option<RecordingSink>,
}

impl SimulationBuilder {
    /// Publishes to `sink` too; the simulation records what `sink` accepted.
    pub fn sink(mut self, sink: impl EventSink + 'static) -> Self {
        self.sink = Some(Arc::new(sink));
        self
    }

    /// Records published events into `sink`, a clone of which the test keeps, instead of a
    /// recorder of the simulation's own. It takes the place of any [`sink`](Self::sink):
    /// to forward as well, make it with [`RecordingSink::forwarding`].
    pub fn recording_into(mut self, sink: RecordingSink) -> Self {
        self.recorder = Some(sink);
        self
    }

    /// Runs the engine with `config` instead of the defaults.
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// Starts the clock at `start` instead of [`START`].
    pub fn start_at(mut self, start: Timestamp) -> Self {
        self.start = start;
        self
    }

    /// Names the route's operation.
    pub fn operation(mut self, operation: impl Into<String>) -> Self {
        self.operation = operation.into();
        self
    }

    /// Runs `handler` in place of the standard response and events. The simulation still
    /// records runs, holds, panics and fails as each request's [`Behaviour`] says.
    pub fn handler(mut self, handler: impl Handler) -> Self {
        self.handler = Some(Arc::new(handler));
        self
    }

    /// Puts `wrap` around the simulated handler, for example to check that a middleware
    /// keeps the guarantees.
    pub fn wrap_handler(
        mut self,
        wrap: impl Fn(Arc<dyn Handler>) -> Arc<dyn Handler> + Send + Sync + 'static,
    ) -> Self {
        self.wrap = Some(Arc::new(wrap));
        self
    }

    /// On [`Simulation::restart`], opens the store again with `reopen` (given the old
    /// instance, which nothing else holds by then unless the test does). Without it, a
    /// restart keeps the same store object, as a shared store outlives a process.
    pub fn reopen(
        mut self,
        reopen: impl FnMut(Arc<dyn Store>) -> Arc<dyn Store> + Send + 'static,
    ) -> Self {
        self.reopen = Some(Box::new(reopen));
        self
    }

    /// Injects store faults from `plan` (shared with the caller) instead of a fresh plan.
    pub fn faults(mut self, plan: FaultPlan) -> Self {
        self.faults = plan;
        self
    }

    /// The simulation.
    pub fn build(self) -> Simulation {
        let clock = Arc::new(ManualClock::new(self.start));
        let sink = match (self.recorder, self.sink) {
            (Some(recorder), _) => recorder,
            (None, Some(sink)) => RecordingSink::forwarding(sink),
            (None, None) => RecordingSink::new(),
        };
        let shared = Arc::new(Shared {
            clock: clock.clone(),
            plans: Mutex::default(),
            runs: Mutex::default(),
            custom: self.handler,
        });
        let mut simulation = Simulation {
            clock,
            faults: self.faults,
            sink,
            config: self.config,
            operation: self.operation,
            wrap: self.wrap,
            reopen: self.reopen,
            shared,
            running: None,
            next_id: 1,
            tasks: Vec::new(),
            responses: Vec::new(),
            abandoned: Vec::new(),
            restarts: 0,
        };
        simulation.boot(self.store);
        simulation
    }
}

struct Running {
    store: Arc<dyn Store>,
    engine: Engine,
    route: DurableRoute,
}

/// Drives the real engine over a store, a manual clock and a recording sink, one request
/// at a time or several at once, and keeps every response, handler run and event.
///
/// Every method that sends or releases requests drives all requests in flight until each
/// is answered or waits at a gate, then returns. The simulation never waits on time: only
/// [`advance`](Simulation::advance) moves the clock.
///
/// ```
/// use std::time::Duration;
/// use cnerium_store_memory::MemoryStore;
/// use cnerium_testkit::{SimRequest, Simulation, block_on};
///
/// let mut sim = Simulation::new(MemoryStore::new());
/// block_on(async {
///     let first = sim.send(SimRequest::new("k1", r#"{"n":1}"#)).await.answered();
///     assert_eq!(first.status, 201);
///
///     // A retry with the same key and body replays without running the handler.
///     let retry = sim.send(SimRequest::new("k1", r#"{"n":1}"#)).await.answered();
///     assert!(retry.is_replay());
///     assert_eq!(retry.body, first.body);
///     assert_eq!(sim.handler_runs().len(), 1);
///
///     // The same key with another body is a conflict.
///     let reused = sim.send(SimRequest::new("k1", r#"{"n":2}"#)).await.answered();
///     assert_eq!(reused.status, 409);
///
///     // After the retention period the key is new again.
///     sim.advance(Duration::from_secs(24 * 60 * 60));
///     let again = sim.send(SimRequest::new("k1", r#"{"n":2}"#)).await.answered();
///     assert_eq!(again.run(), Some(2));
/// });
/// assert_eq!(sim.events().len(), 4); // two standard events per committed run
/// ```
pub struct Simulation {
    clock: Arc<ManualClock>,
    faults: FaultPlan,
    sink: RecordingSink,
    config: EngineConfig,
    operation: String,
    wrap: Option<HandlerWrap>,
    reopen: Option<Reopen>,
    shared: Arc<Shared>,
    running: Option<Running>,
    next_id: u64,
    tasks: Vec<Task>,
    responses: Vec<SimResponse>,
    abandoned: Vec<RequestId>,
    restarts: u64,
}

impl Simulation {
    /// A simulation over `store` with the default engine settings.
    pub fn new(store: impl Store + 'static) -> Self {
        Self::builder(store).build()
    }

    /// Configures a simulation over `store`.
    pub fn builder(store: impl Store + 'static) -> SimulationBuilder {
        Self::builder_shared(Arc::new(store))
    }

    /// Configures a simulation over a store the test also holds.
    pub fn builder_shared(store: Arc<dyn Store>) -> SimulationBuilder {
        SimulationBuilder {
            store,
            sink: None,
            config: EngineConfig::default(),
            start: START,
            operation: DEFAULT_OPERATION.to_owned(),
            handler: None,
            wrap: None,
            reopen: None,
            faults: FaultPlan::new(),
            recorder: None,
        }
    }

    /// Builds an engine and the route over `store`, wrapped to inject faults.
    fn boot(&mut self, store: Arc<dyn Store>) {
        let faulty: Arc<dyn Store> =
            Arc::new(FaultyStore::with_plan(store.clone(), self.faults.clone()));
        let clock: Arc<dyn Clock> = self.clock.clone();
        let engine = Engine::with_parts(
            faulty,
            Arc::new(self.sink.clone()),
            clock,
            self.config.clone(),
        );
        let shared = self.shared.clone();
        let mut handler: Arc<dyn Handler> =
            Arc::new(move |request: DurableRequest| shared.clone().run(request));
        if let Some(wrap) = &self.wrap {
            handler = wrap(handler);
        }
        let route = engine
            .route(self.operation.clone(), move |request| handler.call(request))
            .scope_by(|parts| {
                parts
                    .headers
                    .get(CALLER_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            });
        self.running = Some(Running {
            store,
            engine,
            route,
        });
    }

    fn running(&self) -> &Running {
        self.running
            .as_ref()
            .expect("the simulation is running outside a restart")
    }

    /// Sends one request and drives it (and anything else in flight) as far as it goes.
    pub async fn send(&mut self, request: SimRequest) -> Sent {
        let mut sent = self.send_concurrently(vec![request]).await;
        sent.pop().expect("one request sent, one outcome")
    }

    /// Sends several requests at once: each claims its key, in order, before any handler
    /// finishes; then the handlers finish in order (those told to hold wait).
    pub async fn send_concurrently(&mut self, requests: Vec<SimRequest>) -> Vec<Sent> {
        let ids: Vec<RequestId> = requests.into_iter().map(|r| self.start(r)).collect();
        self.drive().await;
        ids.into_iter().map(|id| self.outcome(id)).collect()
    }

    /// Lets the held handler of request `id` go on, drives everything in flight, and
    /// returns the request's response if it was answered. Returns `None` for a request that
    /// did not hold or is unknown.
    pub async fn release(&mut self, id: RequestId) -> Option<SimResponse> {
        let gate = self.gate(id)?;
        self.open(&gate).await;
        self.outcome(id).response().cloned()
    }

    /// The gate request `id`'s handler waits at, when it was told to hold.
    pub fn gate(&self, id: RequestId) -> Option<Gate> {
        lock(&self.shared.plans).get(&id)?.gate.clone()
    }

    /// Opens `gate` (a handler's, or one from [`FaultPlan::hold_nth`]) and drives
    /// everything in flight.
    pub async fn open(&mut self, gate: &Gate) {
        gate.open();
        self.drive().await;
    }

    /// Drives everything in flight until each request is answered or waits at a gate.
    pub async fn run_until_idle(&mut self) {
        self.drive().await;
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// The current simulated time.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The clock the engine reads.
    pub fn clock(&self) -> &Arc<ManualClock> {
        &self.clock
    }

    /// The store faults; a fault planned here hits the store the engine uses.
    pub fn faults(&self) -> &FaultPlan {
        &self.faults
    }

    /// Holds the n-th call of `method` from now until the returned gate is opened with
    /// [`Simulation::open`].
    pub fn hold_store(&self, method: StoreMethod, n: u64) -> Gate {
        self.faults.hold_nth(method, n)
    }

    /// The sink that recorded every published event.
    pub fn sink(&self) -> &RecordingSink {
        &self.sink
    }

    /// Every event published so far, in order, recovery included.
    pub fn events(&self) -> Vec<Event> {
        self.sink.events()
    }

    /// Every handler run so far, in the order they started.
    pub fn handler_runs(&self) -> Vec<HandlerRun> {
        lock(&self.shared.runs).clone()
    }

    /// Every response so far, in the order they were sent.
    pub fn responses(&self) -> &[SimResponse] {
        &self.responses
    }

    /// The response to request `id`, once it was answered.
    pub fn response(&self, id: RequestId) -> Option<&SimResponse> {
        self.responses.iter().find(|r| r.request == id)
    }

    /// Requests still in flight, oldest first.
    pub fn in_flight(&self) -> Vec<RequestId> {
        self.tasks.iter().map(|t| t.id).collect()
    }

    /// Requests that were in flight when the simulation restarted: they never got an
    /// answer.
    pub fn abandoned(&self) -> &[RequestId] {
        &self.abandoned
    }

    /// How many times the simulation restarted.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// The engine serving requests now.
    pub fn engine(&self) -> &Engine {
        &self.running().engine
    }

    /// The simulated route.
    pub fn route(&self) -> &DurableRoute {
        &self.running().route
    }

    /// The store under test, without the fault injection.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.running().store
    }

    /// The record key the route uses for `key` sent by `caller`.
    pub fn record_key(&self, key: &str, caller: Option<&str>) -> RecordKey {
        let scope = match caller {
            Some(caller) => Scope::with_caller(self.operation.clone(), caller),
            None => Scope::new(self.operation.clone()),
        };
        let key = IdempotencyKey::new(key).expect("a key the simulation sent is valid");
        RecordKey::new(scope, key)
    }

    /// The live record of `key` sent by `caller`, read from the store under test.
    pub async fn lookup(
        &self,
        key: &str,
        caller: Option<&str>,
    ) -> Result<Option<Record>, StoreError> {
        let key = self.record_key(key, caller);
        self.store().lookup(&key, self.now()).await
    }

    /// Purges expired records through the engine; returns how many were removed.
    pub async fn purge(&mut self) -> Result<u64, StoreError> {
        self.running().engine.purge_expired().await
    }

    /// Simulates a process restart: every request in flight is dropped unanswered (its
    /// claim stays in the store, as after a crash), the store is reopened when the builder
    /// was given a way to, a new engine starts over it, and its recovery publishes the
    /// events left pending. Returns how many events recovery published.
    pub async fn restart(&mut self) -> Result<usize, StoreError> {
        self.abandoned.extend(self.tasks.drain(..).map(|t| t.id));
        let running = self.running.take().expect("the simulation is running");
        let Running { store, .. } = running;
        let store = match &mut self.reopen {
            Some(reopen) => reopen(store),
            None => store,
        };
        self.boot(store);
        self.restarts += 1;
        self.running().engine.recover().await
    }

    fn start(&mut self, request: SimRequest) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let gate = request.behaviour.hold.then(Gate::new);
        lock(&self.shared.plans).insert(
            id,
            Plan {
                behaviour: request.behaviour,
                gate,
            },
        );
        let http = request.to_http(id);
        let route = self.running().route.clone();
        let future = Box::pin(async move { route.handle(http).await });
        self.tasks.push(Task::new(id, future));
        id
    }

    fn outcome(&self, id: RequestId) -> Sent {
        match self.response(id) {
            Some(response) => Sent::Answered(response.clone()),
            None => Sent::InFlight(id),
        }
    }

    /// Polls requests in rounds, oldest first, each up to its next checkpoint, gate or
    /// answer, until none can go on.
    async fn drive(&mut self) {
        loop {
            let runnable: Vec<usize> = (0..self.tasks.len())
                .filter(|&i| self.tasks[i].is_runnable())
                .collect();
            if runnable.is_empty() {
                return;
            }
            let mut finished = Vec::new();
            for index in runnable {
                let task = &mut self.tasks[index];
                let stop = poll_fn(|cx| task.poll_until_stop(cx)).await;
                match stop {
                    Stop::Answered(response) => finished.push((index, response)),
                    Stop::Parked => task.state = TaskState::Parked,
                    Stop::Checkpoint => task.state = TaskState::Runnable,
                }
            }
            for (index, response) in finished.into_iter().rev() {
                let task = self.tasks.remove(index);
                let (parts, body) = response.into_parts();
                self.responses.push(SimResponse {
                    request: task.id,
                    status: parts.status,
                    headers: parts.headers,
                    body,
                    at: self.clock.now(),
                });
            }
        }
    }
}

impl fmt::Debug for Simulation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulation")
            .field("now", &self.clock.now())
            .field("in_flight", &self.in_flight())
            .field("responses", &self.responses.len())
            .field("restarts", &self.restarts)
            .finish_non_exhaustive()
    }
}

/// Re-exported so tests without an async runtime can drive a simulation.
pub use futures_executor::block_on;

enum TaskState {
    /// Not started, or stopped at a checkpoint: may go on at once.
    Runnable,
    /// Waits at a gate: goes on once woken.
    Parked,
}

enum Stop {
    Answered(Response<Bytes>),
    Parked,
    Checkpoint,
}

/// One request in flight.
struct Task {
    id: RequestId,
    future: BoxFuture<'static, Response<Bytes>>,
    waker: Arc<TaskWaker>,
    state: TaskState,
}

/// Notes that a task was woken and passes the wake on to whoever awaits the simulation.
#[derive(Default)]
struct TaskWaker {
    woken: AtomicBool,
    outer: Mutex<Option<Waker>>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        if let Some(waker) = lock(&self.outer).as_ref() {
            waker.wake_by_ref();
        }
    }
}

impl Task {
    fn new(id: RequestId, future: BoxFuture<'static, Response<Bytes>>) -> Self {
        Self {
            id,
            future,
            waker: Arc::default(),
            state: TaskState::Runnable,
        }
    }

    fn is_runnable(&self) -> bool {
        match self.state {
            TaskState::Runnable => true,
            TaskState::Parked => self.waker.woken.load(Ordering::SeqCst),
        }
    }

    /// Polls until the request answers or stops at a gate or checkpoint; a wait on
    /// anything else (real I/O, a timer) is passed to the caller's executor.
    fn poll_until_stop(&mut self, cx: &mut Context<'_>) -> Poll<Stop> {
        *lock(&self.waker.outer) = Some(cx.waker().clone());
        let waker = Waker::from(self.waker.clone());
        let mut inner = Context::from_waker(&waker);
        loop {
            self.waker.woken.store(false, Ordering::SeqCst);
            clear_park();
            let polled = Pin::new(&mut self.future).poll(&mut inner);
            let park = take_park();
            match (polled, park) {
                (Poll::Ready(response), _) => return Poll::Ready(Stop::Answered(response)),
                (Poll::Pending, Some(Park::Gate)) => return Poll::Ready(Stop::Parked),
                (Poll::Pending, Some(Park::Checkpoint)) => {
                    return Poll::Ready(Stop::Checkpoint);
                }
                (Poll::Pending, None) if self.waker.woken.load(Ordering::SeqCst) => continue,
                (Poll::Pending, None) => return Poll::Pending,
            }
        }
    }
}
