//! Model-based properties: random schedules of requests, retries, concurrency, clock
//! jumps, store faults, handler failures and restarts, run on a [`Simulation`] and on the
//! reference [`Model`], compared after every step.
//!
//! # The properties
//!
//! Every mismatch is reported as a [`Violation`] naming the [`Property`] it breaks:
//!
//! - [`Property::HandlerRunsOnce`]: a handler runs at most once per live record; a retry
//!   of a finished or running request never runs it again.
//! - [`Property::ReplayIsIdentical`]: a replay repeats the first answer's status, body and
//!   allow-listed headers byte for byte, and never a credential header.
//! - [`Property::ReusedKeyConflicts`]: a key reused with another body answers 409 and
//!   never runs the handler.
//! - [`Property::EventsAfterCommit`]: the events of a run are published once it committed,
//!   in order, and never for a replay, a conflict, a failure or a fenced completion; a
//!   republication after a crash carries the same event ids.
//! - [`Property::FencedCompletionDropped`]: a completion whose lease was taken over is
//!   answered 409 and never stored.
//! - [`Property::RetentionHonoured`]: a record is neither used past its retention nor lost
//!   before it, and purging removes exactly the expired records.
//! - [`Property::LeaseTakeover`]: a claim whose lease ran out (a crashed or hanging owner)
//!   is taken over by the next request.
//! - [`Property::ScopesIsolated`]: one key sent by two callers names two records.
//! - [`Property::MatchesModel`]: everything else the model predicts (error statuses and
//!   problem types, requests still running, recovery results).
//!
//! # Running them
//!
//! [`check_store`] runs random schedules against a store and returns the shortest failing
//! schedule it found; [`schedule`] is the proptest strategy, for use in a `proptest!` block;
//! [`check_schedule`] runs one given schedule.
//!
//! ```
//! use cnerium_store_memory::MemoryStore;
//! use cnerium_testkit::properties::{self, Body, Caller, Key, Req, Script, Step};
//!
//! // One hand-written schedule: a request hangs, its lease runs out, a retry takes over.
//! let schedule = [
//!     Step::Send(Req::new(Key::K1, Body::A, Caller::Anyone, Script::Hangs)),
//!     Step::Advance(properties::Jump::PastLease),
//!     Step::Send(Req::new(Key::K1, Body::A, Caller::Anyone, Script::Created)),
//!     Step::Release(0),
//! ];
//! properties::check_schedule(MemoryStore::new(), &schedule).unwrap();
//!
//! // Random schedules; returns the shortest failing one if any.
//! properties::check_store(MemoryStore::new, properties::Search::cases(16)).unwrap();
//! ```
//!
//! The check assumes the standard simulated handler. It follows the simulation's engine
//! configuration for the lease, the retention, the status of a reused key and whether 5xx
//! answers are stored; the clock jumps are sized for the default lease and retention.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use cnerium_core::{Event, Store};
use http::header::{CONTENT_TYPE, ETAG, LOCATION, RETRY_AFTER, SET_COOKIE};
use http::{HeaderName, StatusCode};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};

use crate::faulty::StoreMethod;
use crate::model::{Answer, Batch, ClaimReason, Expected, Model, StoredAnswer};
use crate::sim::{
    Behaviour, Outcome, RUN_HEADER, RequestId, SimRequest, SimResponse, Simulation,
    standard_events, standard_response,
};

/// An idempotency key from a small pool, so that schedules reuse keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// `k1`.
    K1,
    /// `k2`.
    K2,
}

impl Key {
    /// The key as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::K1 => "k1",
            Self::K2 => "k2",
        }
    }
}

/// A JSON body from a small pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Body {
    /// `{"item":"apple","qty":1}`.
    A,
    /// The same document as [`Body::A`], re-serialized with other spacing and member
    /// order: it must fingerprint alike.
    ARespaced,
    /// `{"item":"pear","qty":2}`: another request.
    B,
}

impl Body {
    /// The bytes sent.
    pub fn bytes(self) -> Bytes {
        Bytes::from_static(match self {
            Self::A => br#"{"item":"apple","qty":1}"#,
            Self::ARespaced => br#"{ "qty": 1, "item": "apple" }"#,
            Self::B => br#"{"item":"pear","qty":2}"#,
        })
    }

    /// The body it is the same request as.
    pub fn class(self) -> Body {
        match self {
            Self::A | Self::ARespaced => Self::A,
            Self::B => Self::B,
        }
    }
}

/// Who sends a request; the simulated route scopes keys per caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Caller {
    /// No caller identity: the operation's shared key space.
    Anyone,
    /// Caller `alice`.
    Alice,
    /// Caller `bob`.
    Bob,
}

impl Caller {
    /// The caller identity sent, if any.
    pub fn id(self) -> Option<&'static str> {
        match self {
            Self::Anyone => None,
            Self::Alice => Some("alice"),
            Self::Bob => Some("bob"),
        }
    }
}

/// What the handler does when a request runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Script {
    /// 201 with the standard events.
    Created,
    /// 200 with the standard events.
    Ok,
    /// 400 with the standard events (a 4xx is stored like any answer).
    BadRequest,
    /// 500 from the handler itself (stored by default).
    ServerError,
    /// 201 without events.
    NoEvents,
    /// Stages events, then panics.
    Panics,
    /// Stages events, then returns an error.
    Fails,
    /// Holds until released, then answers 201.
    Hangs,
    /// Holds until released, then panics.
    HangsThenPanics,
}

impl Script {
    /// Whether the handler holds until released.
    pub fn holds(self) -> bool {
        matches!(self, Self::Hangs | Self::HangsThenPanics)
    }

    /// The status it answers with, or `None` when it panics or fails.
    pub fn outcome(self) -> Option<StatusCode> {
        match self {
            Self::Created | Self::NoEvents | Self::Hangs => Some(StatusCode::CREATED),
            Self::Ok => Some(StatusCode::OK),
            Self::BadRequest => Some(StatusCode::BAD_REQUEST),
            Self::ServerError => Some(StatusCode::INTERNAL_SERVER_ERROR),
            Self::Panics | Self::Fails | Self::HangsThenPanics => None,
        }
    }

    /// Whether a committed run of it has events.
    pub fn stages_events(self) -> bool {
        !matches!(self, Self::NoEvents)
    }

    fn behaviour(self) -> Behaviour {
        let outcome = match self {
            Self::Panics | Self::HangsThenPanics => Outcome::Panic,
            Self::Fails => Outcome::Error,
            other => Outcome::Respond(other.outcome().expect("a responding script")),
        };
        Behaviour {
            hold: self.holds(),
            events: self.stages_events(),
            outcome,
        }
    }
}

/// A clock jump, named after the boundary it probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Jump {
    /// One second.
    Second,
    /// One millisecond short of the default lease (30 s).
    AlmostLease,
    /// Exactly the default lease.
    Lease,
    /// Past the default lease (31 s).
    PastLease,
    /// One hour.
    Hour,
    /// One millisecond short of the default retention (24 h).
    AlmostRetention,
    /// Exactly the default retention.
    Retention,
    /// Past the default retention (24 h and 1 s).
    PastRetention,
}

impl Jump {
    /// The duration jumped.
    pub fn duration(self) -> Duration {
        const DAY: u64 = 24 * 60 * 60 * 1000;
        Duration::from_millis(match self {
            Self::Second => 1_000,
            Self::AlmostLease => 29_999,
            Self::Lease => 30_000,
            Self::PastLease => 31_000,
            Self::Hour => 3_600_000,
            Self::AlmostRetention => DAY - 1,
            Self::Retention => DAY,
            Self::PastRetention => DAY + 1_000,
        })
    }
}

/// One request of a schedule.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Req {
    /// The idempotency key.
    pub key: Key,
    /// The body.
    pub body: Body,
    /// The caller.
    pub caller: Caller,
    /// What the handler does if it runs.
    pub script: Script,
}

impl Req {
    /// A request.
    pub fn new(key: Key, body: Body, caller: Caller, script: Script) -> Self {
        Self {
            key,
            body,
            caller,
            script,
        }
    }

    /// The simulated request.
    pub fn to_sim(self) -> SimRequest {
        let mut request = SimRequest::new(self.key.as_str(), self.body.bytes())
            .behaviour(self.script.behaviour());
        if let Some(caller) = self.caller.id() {
            request = request.caller(caller);
        }
        request
    }
}

impl fmt::Debug for Req {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Req({:?}, {:?}, {:?}, {:?})",
            self.key, self.body, self.caller, self.script
        )
    }
}

/// One step of a schedule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// Sends one request and drives it until it is answered or its handler holds.
    Send(Req),
    /// Sends requests at once: all claim before any handler finishes.
    SendTogether(Vec<Req>),
    /// Releases a holding handler: the n-th (modulo how many hold), oldest first. Does
    /// nothing when none holds.
    Release(usize),
    /// Moves the clock.
    Advance(Jump),
    /// The next call of this store method that is not already doomed fails.
    FailNext(StoreMethod),
    /// The event sink refuses its next publication.
    SinkRefusesNext,
    /// Purges expired records.
    Purge,
    /// Restarts: drops held requests, opens the store again, runs recovery.
    Restart,
}

/// A rule of the contract that a schedule can break.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Property {
    /// A handler runs at most once per live record.
    HandlerRunsOnce,
    /// A replay is byte-identical to the first answer.
    ReplayIsIdentical,
    /// A reused key with another body answers 409 without running the handler.
    ReusedKeyConflicts,
    /// Events are published once per committed record, after the commit, never otherwise.
    EventsAfterCommit,
    /// A completion whose lease was taken over is never stored.
    FencedCompletionDropped,
    /// A record is neither used past its retention nor lost before it.
    RetentionHonoured,
    /// A claim whose lease ran out is taken over.
    LeaseTakeover,
    /// Two callers never share a record.
    ScopesIsolated,
    /// Any other answer or state the model predicts.
    MatchesModel,
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::HandlerRunsOnce => "a handler runs at most once per live record",
            Self::ReplayIsIdentical => "a replay is byte-identical to the first answer",
            Self::ReusedKeyConflicts => {
                "a reused key with another body answers 409 without running the handler"
            }
            Self::EventsAfterCommit => {
                "events are published once per committed record, only after the commit"
            }
            Self::FencedCompletionDropped => {
                "a completion whose lease was taken over is never stored"
            }
            Self::RetentionHonoured => {
                "a record is neither used past its retention nor lost before it"
            }
            Self::LeaseTakeover => "a claim whose lease ran out is taken over",
            Self::ScopesIsolated => "two callers never share a record",
            Self::MatchesModel => "the route behaves as the model predicts",
        })
    }
}

/// A step whose observed results differ from the model's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Index of the step in the schedule, from 0.
    pub step: usize,
    /// The step.
    pub action: Step,
    /// The rule broken.
    pub property: Property,
    /// What was expected and what happened.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "property violated: {}\n  at step {}: {:?}\n  {}",
            self.property, self.step, self.action, self.detail
        )
    }
}

impl std::error::Error for Violation {}

/// The shortest failing schedule a random search found, with its violation.
#[derive(Clone, Debug)]
pub struct PropertyFailure {
    /// The schedule, shrunk.
    pub schedule: Vec<Step>,
    /// What went wrong on it.
    pub violation: Violation,
}

impl fmt::Display for PropertyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.violation)?;
        writeln!(f, "  schedule:")?;
        for (i, step) in self.schedule.iter().enumerate() {
            writeln!(f, "    {i:>2}: {step:?}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PropertyFailure {}

/// Proptest strategy for one request: keys, bodies and callers from small pools, most
/// handlers answering, some failing or hanging.
pub fn req() -> impl Strategy<Value = Req> {
    let key = prop_oneof![3 => Just(Key::K1), 1 => Just(Key::K2)];
    let body = prop_oneof![4 => Just(Body::A), 2 => Just(Body::ARespaced), 2 => Just(Body::B)];
    let caller = prop_oneof![
        6 => Just(Caller::Anyone),
        1 => Just(Caller::Alice),
        1 => Just(Caller::Bob),
    ];
    let script = prop_oneof![
        6 => Just(Script::Created),
        1 => Just(Script::Ok),
        1 => Just(Script::BadRequest),
        1 => Just(Script::ServerError),
        1 => Just(Script::NoEvents),
        1 => Just(Script::Panics),
        1 => Just(Script::Fails),
        4 => Just(Script::Hangs),
        1 => Just(Script::HangsThenPanics),
    ];
    (key, body, caller, script).prop_map(|(key, body, caller, script)| Req {
        key,
        body,
        caller,
        script,
    })
}

/// Proptest strategy for a clock jump, boundaries included.
pub fn jump() -> impl Strategy<Value = Jump> {
    prop_oneof![
        Just(Jump::Second),
        Just(Jump::AlmostLease),
        Just(Jump::Lease),
        Just(Jump::PastLease),
        Just(Jump::Hour),
        Just(Jump::AlmostRetention),
        Just(Jump::Retention),
        Just(Jump::PastRetention),
    ]
}

/// Proptest strategy for one step.
pub fn step() -> impl Strategy<Value = Step> {
    let method = prop_oneof![
        3 => Just(StoreMethod::Claim),
        3 => Just(StoreMethod::Complete),
        2 => Just(StoreMethod::Release),
        2 => Just(StoreMethod::MarkPublished),
        1 => Just(StoreMethod::PendingEvents),
        1 => Just(StoreMethod::PurgeExpired),
    ];
    prop_oneof![
        30 => req().prop_map(Step::Send),
        6 => proptest::collection::vec(req(), 2..=3).prop_map(Step::SendTogether),
        9 => (0..3usize).prop_map(Step::Release),
        12 => jump().prop_map(Step::Advance),
        5 => method.prop_map(Step::FailNext),
        2 => Just(Step::SinkRefusesNext),
        3 => Just(Step::Purge),
        4 => Just(Step::Restart),
    ]
}

/// Proptest strategy for a schedule of 1 to `max_len` steps.
pub fn schedule_of(max_len: usize) -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(step(), 1..=max_len.max(1))
}

/// Proptest strategy for a schedule of 1 to 24 steps.
pub fn schedule() -> impl Strategy<Value = Vec<Step>> {
    schedule_of(24)
}

/// How many random schedules to try: `PROPTEST_CASES` from the environment, else 128.
pub fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128)
}

/// How a random search of schedules runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Search {
    /// How many schedules to try.
    pub cases: u32,
    /// The longest schedule generated.
    pub max_steps: usize,
    /// A fixed seed, for a search that tries the same schedules every time; `None` draws
    /// one (or takes `PROPTEST_RNG_SEED` from the environment).
    pub seed: Option<u64>,
}

impl Default for Search {
    /// [`cases()`] schedules of up to 24 steps, with a random seed.
    fn default() -> Self {
        Self {
            cases: cases(),
            max_steps: 24,
            seed: None,
        }
    }
}

impl Search {
    /// The default search with `cases` schedules.
    pub fn cases(cases: u32) -> Self {
        Self {
            cases,
            ..Self::default()
        }
    }

    /// The same search with a fixed seed.
    pub fn seeded(self, seed: u64) -> Self {
        Self {
            seed: Some(seed),
            ..self
        }
    }

    fn runner(&self) -> TestRunner {
        let mut config = Config {
            cases: self.cases,
            failure_persistence: None,
            ..Config::default()
        };
        if let Some(seed) = self.seed {
            config.rng_seed = RngSeed::Fixed(seed);
        }
        TestRunner::new(config)
    }
}

/// Runs `schedule` on a fresh simulation over `store`; blocks until done.
pub fn check_schedule(store: impl Store + 'static, schedule: &[Step]) -> Result<(), Violation> {
    let mut simulation = Simulation::new(store);
    futures_executor::block_on(check_schedule_on(&mut simulation, schedule))
}

/// Runs random schedules, each on a fresh simulation over a store from `store`, and
/// returns the shortest failing schedule found, if any.
pub fn check_store<S, F>(store: F, search: Search) -> Result<(), PropertyFailure>
where
    S: Store + 'static,
    F: Fn() -> S,
{
    check_simulations(|| Simulation::new(store()), search)
}

/// Runs random schedules, each on a fresh simulation from `simulation` (use it to set a
/// reopen closure, a sink or a handler wrapper), and returns the shortest failing schedule
/// found, if any.
pub fn check_simulations<F>(simulation: F, search: Search) -> Result<(), PropertyFailure>
where
    F: Fn() -> Simulation,
{
    let mut runner = search.runner();
    let outcome = runner.run(&schedule_of(search.max_steps), |steps| {
        let mut sim = simulation();
        futures_executor::block_on(check_schedule_on(&mut sim, &steps))
            .map_err(|v| TestCaseError::fail(v.to_string()))
    });
    match outcome {
        Ok(()) => Ok(()),
        Err(TestError::Fail(_, schedule)) => {
            let mut sim = simulation();
            let violation = futures_executor::block_on(check_schedule_on(&mut sim, &schedule))
                .expect_err("the shrunk schedule failed when proptest ran it");
            Err(PropertyFailure {
                schedule,
                violation,
            })
        }
        Err(TestError::Abort(reason)) => panic!("the property search aborted: {reason}"),
    }
}

/// Runs `schedule` on `simulation`, which must be fresh (nothing sent yet) and use the
/// standard handler, comparing every step with the model.
pub async fn check_schedule_on(
    simulation: &mut Simulation,
    schedule: &[Step],
) -> Result<(), Violation> {
    let mut checker = Checker::new(simulation);
    for (index, step) in schedule.iter().enumerate() {
        checker
            .step(step)
            .await
            .map_err(|(property, detail)| Violation {
                step: index,
                action: step.clone(),
                property,
                detail,
            })?;
    }
    Ok(())
}

type Failure = (Property, String);

/// Runs steps on a simulation and the model side by side.
struct Checker<'a> {
    sim: &'a mut Simulation,
    model: Model,
    key_reused_status: StatusCode,
    /// Event ids first seen for each committed claim of the model.
    ids: BTreeMap<u64, Vec<String>>,
}

impl<'a> Checker<'a> {
    fn new(sim: &'a mut Simulation) -> Self {
        let config = sim.engine().config();
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let model = Model::new(millis(config.lease), millis(config.retention))
            .store_server_errors(config.store_server_errors);
        let key_reused_status = config.key_reused_status;
        Self {
            sim,
            model,
            key_reused_status,
            ids: BTreeMap::new(),
        }
    }

    async fn step(&mut self, step: &Step) -> Result<(), Failure> {
        let responses_before = self.sim.responses().len();
        let runs_before = self.sim.handler_runs().len();
        let batches_before = self.sim.sink().batches().len();

        let mut purged = None;
        let mut recovered = None;
        let expected = match step {
            Step::Send(req) => self.send(&[*req]).await,
            Step::SendTogether(reqs) => self.send(reqs).await,
            Step::Release(n) => {
                let held = self.model.held();
                if held.is_empty() {
                    Expected::default()
                } else {
                    let id = held[n % held.len()];
                    self.sim.release(id).await;
                    self.model.release(id)
                }
            }
            Step::Advance(jump) => {
                self.sim.advance(jump.duration());
                self.model.advance(jump.duration().as_millis() as u64);
                Expected::default()
            }
            Step::FailNext(method) => {
                let n = self.model.fail_next(*method);
                self.sim.faults().fail_nth(*method, n);
                Expected::default()
            }
            Step::SinkRefusesNext => {
                self.sim.sink().refuse_next(1);
                self.model.refuse_next_publication();
                Expected::default()
            }
            Step::Purge => {
                purged = Some(self.sim.purge().await.map_err(|_| ()));
                self.model.purge()
            }
            Step::Restart => {
                recovered = Some(self.sim.restart().await.map_err(|_| ()));
                self.model.restart()
            }
        };

        let responses = self.sim.responses()[responses_before..].to_vec();
        let runs: Vec<(RequestId, u64)> = self.sim.handler_runs()[runs_before..]
            .iter()
            .map(|r| (r.request.expect("the simulation tags every request"), r.run))
            .collect();
        let batches = self.sim.sink().batches()[batches_before..].to_vec();

        self.compare_answers(&expected, &responses)?;
        self.compare_runs(&expected, &runs)?;
        self.compare_events(&expected, &batches)?;
        self.compare_in_flight()?;
        if purged != expected.purged {
            return Err((
                Property::RetentionHonoured,
                format!(
                    "purge returned {purged:?}, expected {:?} (records removed, or an error)",
                    expected.purged
                ),
            ));
        }
        if recovered != expected.recovered {
            return Err((
                Property::EventsAfterCommit,
                format!(
                    "recovery returned {recovered:?}, expected {:?} (events republished, or \
                     an error)",
                    expected.recovered
                ),
            ));
        }
        Ok(())
    }

    async fn send(&mut self, reqs: &[Req]) -> Expected {
        let sent = self
            .sim
            .send_concurrently(reqs.iter().map(|r| r.to_sim()).collect())
            .await;
        let tagged: Vec<(RequestId, Req)> = sent
            .iter()
            .map(|s| s.id())
            .zip(reqs.iter().copied())
            .collect();
        self.model.send(&tagged)
    }

    fn compare_answers(
        &self,
        expected: &Expected,
        responses: &[SimResponse],
    ) -> Result<(), Failure> {
        for response in responses {
            if !expected.answers.contains_key(&response.request) {
                return Err((
                    Property::MatchesModel,
                    format!(
                        "request {} was answered {} but the model expected no answer yet (its \
                         handler should still hold)",
                        response.request, response.status
                    ),
                ));
            }
        }
        for (&id, answer) in &expected.answers {
            let Some(response) = responses.iter().find(|r| r.request == id) else {
                return Err((
                    self.classify_missing(answer),
                    format!("request {id} got no answer; expected {answer:?}"),
                ));
            };
            if let Err(detail) = self.check_answer(answer, response) {
                return Err((
                    self.classify(answer, response),
                    format!(
                        "request {id}: expected {answer:?}, got {} (replay: {}, body {}): {detail}",
                        response.status,
                        response.is_replay(),
                        String::from_utf8_lossy(&response.body)
                    ),
                ));
            }
        }
        Ok(())
    }

    fn classify_missing(&self, answer: &Answer) -> Property {
        match answer {
            Answer::Fresh {
                reason: ClaimReason::Takeover,
                ..
            } => Property::LeaseTakeover,
            _ => Property::MatchesModel,
        }
    }

    /// Names the rule a wrong answer breaks, from what was expected and what came.
    fn classify(&self, answer: &Answer, response: &SimResponse) -> Property {
        let ran = !response.is_replay() && response.problem_type().is_none();
        match answer {
            Answer::KeyReused => Property::ReusedKeyConflicts,
            Answer::Replay(_) if response.is_replay() => {
                let run = response.run().unwrap_or(0);
                if self.model.fenced_runs().contains(&run) {
                    Property::FencedCompletionDropped
                } else {
                    Property::ReplayIsIdentical
                }
            }
            Answer::Replay(_) | Answer::InProgress if ran => Property::HandlerRunsOnce,
            Answer::Replay(_) => Property::RetentionHonoured,
            Answer::Fresh { reason, stored } => {
                let done_elsewhere =
                    response.is_replay() || response.problem_type().as_deref() == Some(KEY_REUSED);
                match reason {
                    _ if ran => Property::MatchesModel,
                    ClaimReason::AfterRetention => Property::RetentionHonoured,
                    ClaimReason::Takeover => Property::LeaseTakeover,
                    ClaimReason::New
                        if done_elsewhere
                            && self.model.key_live_elsewhere(stored.caller, stored.key) =>
                    {
                        Property::ScopesIsolated
                    }
                    ClaimReason::New => Property::MatchesModel,
                }
            }
            Answer::LeaseLost if ran => Property::FencedCompletionDropped,
            _ => Property::MatchesModel,
        }
    }

    fn check_answer(&self, answer: &Answer, response: &SimResponse) -> Result<(), String> {
        if response
            .headers
            .get("x-content-type-options")
            .is_none_or(|v| v != "nosniff")
        {
            return Err("missing X-Content-Type-Options: nosniff".into());
        }
        let problem = |status: StatusCode, kind: &str| -> Result<(), String> {
            ensure(response.status == status, || format!("status {status}"))?;
            ensure(response.problem_type().as_deref() == Some(kind), || {
                format!("problem type {kind}")
            })
        };
        match answer {
            Answer::Fresh { stored, .. } => {
                ensure(!response.is_replay(), || {
                    "a first answer, not a replay".into()
                })?;
                let first = expected_first_answer(stored);
                ensure(response.status == first.status(), || {
                    format!("status {}", first.status())
                })?;
                ensure(response.body == *first.body(), || {
                    format!("body {}", String::from_utf8_lossy(first.body()))
                })?;
                for name in [CONTENT_TYPE, LOCATION, ETAG, SET_COOKIE] {
                    same_header(&name, first.headers(), &response.headers)?;
                }
                Ok(())
            }
            Answer::Replay(stored) => {
                ensure(response.is_replay(), || "Idempotent-Replayed: true".into())?;
                let first = expected_first_answer(stored);
                ensure(response.status == first.status(), || {
                    format!("the stored status {}", first.status())
                })?;
                ensure(response.body == *first.body(), || {
                    format!("the stored body {}", String::from_utf8_lossy(first.body()))
                })?;
                for name in [CONTENT_TYPE, LOCATION, ETAG] {
                    same_header(&name, first.headers(), &response.headers)?;
                }
                let run_header = HeaderName::from_static(RUN_HEADER);
                for name in [&SET_COOKIE, &run_header] {
                    ensure(!response.headers.contains_key(name), || {
                        format!("no {name} header on a replay")
                    })?;
                }
                Ok(())
            }
            Answer::KeyReused => problem(self.key_reused_status, KEY_REUSED),
            Answer::InProgress => {
                problem(
                    StatusCode::CONFLICT,
                    "urn:cnerium:problem:request-in-progress",
                )?;
                ensure(response.headers.contains_key(RETRY_AFTER), || {
                    "a Retry-After header".into()
                })
            }
            Answer::HandlerFailed => problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "urn:cnerium:problem:handler-failed",
            ),
            Answer::ClaimFailed => problem(StatusCode::SERVICE_UNAVAILABLE, STORE_UNAVAILABLE),
            Answer::CommitFailed => problem(StatusCode::INTERNAL_SERVER_ERROR, STORE_UNAVAILABLE),
            Answer::LeaseLost => problem(StatusCode::CONFLICT, "urn:cnerium:problem:lease-expired"),
        }
    }

    fn compare_runs(&self, expected: &Expected, runs: &[(RequestId, u64)]) -> Result<(), Failure> {
        if runs == expected.runs.as_slice() {
            return Ok(());
        }
        let expected_ids: BTreeSet<RequestId> = expected.runs.iter().map(|r| r.0).collect();
        let extra = runs.iter().find(|r| !expected_ids.contains(&r.0));
        // A run the model did not expect breaks the at-most-once rule (or, for a reused
        // key, the conflict rule); a missing run is some other disagreement.
        let property = match extra.map(|r| expected.answers.get(&r.0)) {
            Some(Some(Answer::KeyReused)) => Property::ReusedKeyConflicts,
            Some(_) => Property::HandlerRunsOnce,
            None => Property::MatchesModel,
        };
        Err((
            property,
            format!(
                "handler runs (request, run) were {runs:?}, expected {:?}",
                expected.runs
            ),
        ))
    }

    fn compare_events(
        &mut self,
        expected: &Expected,
        batches: &[Vec<Event>],
    ) -> Result<(), Failure> {
        let fail = |detail: String| Err((Property::EventsAfterCommit, detail));
        let describe = |batches: &[Vec<Event>]| -> Vec<String> {
            batches
                .iter()
                .map(|b| {
                    let kinds: Vec<String> = b
                        .iter()
                        .map(|e| format!("{}{}", e.kind, e.payload))
                        .collect();
                    kinds.join(" + ")
                })
                .collect()
        };

        // Each published batch must be the events of one expected commit; recovery may
        // publish records committed at the same instant in either order.
        let mut remaining: Vec<&Batch> = expected.batches.iter().collect();
        let mut last_completed = 0;
        for batch in batches {
            let Some(position) = remaining.iter().position(|b| events_match(b, batch)) else {
                return fail(format!(
                    "published {:?}, but the model expected only {:?} (committed run, key)",
                    describe(batches),
                    expected
                        .batches
                        .iter()
                        .map(|b| (b.run, b.key))
                        .collect::<Vec<_>>()
                ));
            };
            let matched = remaining.remove(position);
            if matched.completed_at < last_completed {
                return fail(format!(
                    "recovery published run {} (committed later) before an older record",
                    matched.run
                ));
            }
            last_completed = matched.completed_at;

            let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
            match self.ids.get(&matched.claim) {
                Some(first) if *first != ids => {
                    return fail(format!(
                        "run {} was republished with ids {ids:?}, first published as {first:?}",
                        matched.run
                    ));
                }
                Some(_) => {}
                None => {
                    let taken = self.ids.values().flatten().any(|id| ids.contains(id));
                    let unique: BTreeSet<&String> = ids.iter().collect();
                    if taken || unique.len() != ids.len() {
                        return fail(format!(
                            "run {} published event ids {ids:?} that are not unique",
                            matched.run
                        ));
                    }
                    self.ids.insert(matched.claim, ids);
                }
            }
        }
        if let Some(missing) = remaining.first() {
            return fail(format!(
                "the events of committed run {} (key {:?}) were not published; published {:?}",
                missing.run,
                missing.key,
                describe(batches)
            ));
        }
        Ok(())
    }

    fn compare_in_flight(&self) -> Result<(), Failure> {
        let actual = self.sim.in_flight();
        let expected = self.model.held();
        if actual == expected {
            return Ok(());
        }
        Err((
            Property::MatchesModel,
            format!("requests in flight were {actual:?}, expected {expected:?}"),
        ))
    }
}

const KEY_REUSED: &str = "urn:cnerium:problem:idempotency-key-reused";
const STORE_UNAVAILABLE: &str = "urn:cnerium:problem:store-unavailable";

fn ensure(holds: bool, expected: impl FnOnce() -> String) -> Result<(), String> {
    if holds {
        Ok(())
    } else {
        Err(format!("expected {}", expected()))
    }
}

fn same_header(
    name: &HeaderName,
    expected: &http::HeaderMap,
    actual: &http::HeaderMap,
) -> Result<(), String> {
    let want: Vec<_> = expected.get_all(name).iter().collect();
    let got: Vec<_> = actual.get_all(name).iter().collect();
    ensure(want == got, || format!("{name}: {want:?}, got {got:?}"))
}

fn expected_first_answer(stored: &StoredAnswer) -> http::Response<Bytes> {
    standard_response(
        stored.key.as_str(),
        stored.caller.id(),
        stored.run,
        stored.status,
    )
    .into_http()
}

fn events_match(expected: &Batch, actual: &[Event]) -> bool {
    let want = standard_events(expected.key.as_str(), expected.run);
    want.len() == actual.len()
        && want
            .iter()
            .zip(actual)
            .all(|((kind, room, payload), event)| {
                event.kind == *kind && event.room.as_deref() == *room && event.payload == *payload
            })
}
