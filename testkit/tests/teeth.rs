//! Proof that the testkit has teeth: known bugs are planted one at a time, and the
//! conformance suite or the property check must fail on each, while the same checks pass
//! on the reference store.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use cnerium_core::async_trait;
use cnerium_core::{
    ClaimOutcome, ClaimRequest, CompleteError, Completion, DurableRequest, Event, EventSink, Fence,
    Handler, PendingEvents, Record, RecordKey, RecordState, Scope, Store, StoreError, Timestamp,
};
use cnerium_store_memory::MemoryStore;
use cnerium_testkit::conformance::{self, Report};
use cnerium_testkit::properties::{
    self, Body, Caller, Jump, Key, Property, Req, Script, Search, Step, Violation,
};
use cnerium_testkit::sim::standard_events;
use cnerium_testkit::{RecordingSink, Simulation, StoreMethod, yield_now};
use http::StatusCode;
use http::header::LOCATION;

/// Which bugs a [`PlantedStore`] carries; all off, it is a correct store.
#[derive(Clone, Copy, Debug, Default)]
struct Bugs {
    /// `claim` reads, yields, then writes: two claims can both see a free key.
    racy_claim: bool,
    /// `complete` writes over any in-progress record, whatever its fence.
    unfenced_complete: bool,
    /// An in-progress record is never claimable before its retention ends.
    eternal_lease: bool,
    /// Records count as expired an hour before their `expires_at`.
    expires_early: bool,
    /// The fence counter is not persisted: a reopened store starts again from zero.
    fence_resets_on_reopen: bool,
}

#[derive(Debug, Default)]
struct Data {
    records: BTreeMap<RecordKey, Record>,
    last_fence: u64,
}

/// A small map-backed store with optional planted bugs; "reopening" it keeps its data.
#[derive(Clone, Debug, Default)]
struct PlantedStore {
    data: Arc<Mutex<Data>>,
    bugs: Bugs,
}

const HOUR: u64 = 60 * 60 * 1000;

impl PlantedStore {
    fn with(bugs: Bugs) -> Self {
        Self {
            data: Arc::default(),
            bugs,
        }
    }

    fn reopen(self) -> Self {
        if self.bugs.fence_resets_on_reopen {
            self.lock().last_fence = 0;
        }
        self
    }

    fn lock(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap()
    }

    fn live(&self, record: &Record, now: Timestamp) -> bool {
        let expires_at = if self.bugs.expires_early {
            Timestamp::from_millis(record.expires_at.as_millis().saturating_sub(HOUR))
        } else {
            record.expires_at
        };
        now < expires_at
    }

    fn claimable(&self, record: &Record, now: Timestamp) -> bool {
        if !self.live(record, now) {
            return true;
        }
        match record.state {
            RecordState::InProgress { .. } if self.bugs.eternal_lease => false,
            RecordState::InProgress { lease_until, .. } => now >= lease_until,
            RecordState::Completed { .. } => false,
        }
    }
}

impl PlantedStore {
    /// Whether `request` may claim (and whether that is a takeover), or the record that
    /// stops it.
    fn decide(&self, data: &Data, request: &ClaimRequest) -> Result<bool, Box<Record>> {
        match data.records.get(&request.key) {
            Some(r) if !self.claimable(r, request.now) => Err(Box::new(r.clone())),
            Some(r) => {
                Ok(self.live(r, request.now) && matches!(r.state, RecordState::InProgress { .. }))
            }
            None => Ok(false),
        }
    }
}

fn grant(data: &mut Data, request: ClaimRequest, takeover: bool) -> ClaimOutcome {
    data.last_fence += 1;
    let fence = Fence(data.last_fence);
    let record = request.in_progress_record(fence);
    data.records.insert(request.key, record);
    ClaimOutcome::Claimed { fence, takeover }
}

#[async_trait]
impl Store for PlantedStore {
    async fn claim(&self, request: ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        if !self.bugs.racy_claim {
            let mut data = self.lock();
            return Ok(match self.decide(&data, &request) {
                Ok(takeover) => grant(&mut data, request, takeover),
                Err(existing) => ClaimOutcome::Existing(*existing),
            });
        }
        // The bug: the decision and the write are two steps with a yield in between.
        let decided = self.decide(&self.lock(), &request);
        yield_now().await;
        std::thread::yield_now();
        Ok(match decided {
            Ok(takeover) => grant(&mut self.lock(), request, takeover),
            Err(existing) => ClaimOutcome::Existing(*existing),
        })
    }

    async fn complete(
        &self,
        key: &RecordKey,
        fence: Fence,
        completion: Completion,
    ) -> Result<(), CompleteError> {
        let mut data = self.lock();
        let Some(record) = data.records.get_mut(key) else {
            return Err(CompleteError::Fenced);
        };
        let held = match record.state {
            RecordState::InProgress { .. } if self.bugs.unfenced_complete => true,
            RecordState::InProgress { fence: f, .. } => f == fence,
            RecordState::Completed { .. } => false,
        };
        if !held {
            return Err(CompleteError::Fenced);
        }
        record.state = RecordState::Completed {
            fence,
            response: completion.response,
            events: completion.events,
            events_published: false,
            completed_at: completion.completed_at,
        };
        record.expires_at = completion.expires_at;
        Ok(())
    }

    async fn release(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError> {
        let mut data = self.lock();
        if matches!(
            data.records.get(key),
            Some(Record { state: RecordState::InProgress { fence: f, .. }, .. }) if *f == fence
        ) {
            data.records.remove(key);
        }
        Ok(())
    }

    async fn mark_published(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError> {
        let mut data = self.lock();
        if let Some(Record {
            state:
                RecordState::Completed {
                    fence: f,
                    events_published,
                    ..
                },
            ..
        }) = data.records.get_mut(key)
        {
            if *f == fence {
                *events_published = true;
            }
        }
        Ok(())
    }

    async fn pending_events(&self, limit: usize) -> Result<Vec<PendingEvents>, StoreError> {
        let data = self.lock();
        let mut pending: Vec<_> = data
            .records
            .iter()
            .filter_map(|(key, r)| match &r.state {
                RecordState::Completed {
                    fence,
                    events,
                    events_published: false,
                    completed_at,
                    ..
                } if !events.is_empty() => Some((
                    (*completed_at, *fence),
                    PendingEvents {
                        key: key.clone(),
                        fence: *fence,
                        events: events.clone(),
                    },
                )),
                _ => None,
            })
            .collect();
        pending.sort_by_key(|(order, _)| *order);
        Ok(pending.into_iter().take(limit).map(|(_, p)| p).collect())
    }

    async fn lookup(&self, key: &RecordKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        let data = self.lock();
        Ok(data.records.get(key).filter(|r| self.live(r, now)).cloned())
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        let mut data = self.lock();
        let before = data.records.len();
        data.records.retain(|_, r| self.live(r, now));
        Ok((before - data.records.len()) as u64)
    }
}

/// Wraps the reference store and rewrites each stored response: a 201 is kept as a 200
/// and the `Location` header is dropped.
#[derive(Debug, Default)]
struct RewritingStore(MemoryStore);

/// Wraps the reference store and drops the caller from every record key, so that two
/// callers share one key space.
#[derive(Debug, Default)]
struct ScopelessStore(MemoryStore);

fn without_caller(key: &RecordKey) -> RecordKey {
    RecordKey::new(Scope::new(key.scope().operation()), key.key().clone())
}

#[async_trait]
impl Store for RewritingStore {
    async fn claim(&self, request: ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        self.0.claim(request).await
    }

    async fn complete(
        &self,
        key: &RecordKey,
        fence: Fence,
        mut completion: Completion,
    ) -> Result<(), CompleteError> {
        let response = &mut completion.response;
        if response.status == StatusCode::CREATED {
            response.status = StatusCode::OK;
        }
        response.headers.retain(|(name, _)| name != LOCATION);
        self.0.complete(key, fence, completion).await
    }

    async fn release(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError> {
        self.0.release(&RecordKey::clone(key), fence).await
    }

    async fn mark_published(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError> {
        self.0.mark_published(&RecordKey::clone(key), fence).await
    }

    async fn pending_events(&self, limit: usize) -> Result<Vec<PendingEvents>, StoreError> {
        self.0.pending_events(limit).await
    }

    async fn lookup(&self, key: &RecordKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        self.0.lookup(&RecordKey::clone(key), now).await
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.0.purge_expired(now).await
    }
}

#[async_trait]
impl Store for ScopelessStore {
    async fn claim(&self, mut request: ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        request.key = without_caller(&request.key);
        self.0.claim(request).await
    }

    async fn complete(
        &self,
        key: &RecordKey,
        fence: Fence,
        completion: Completion,
    ) -> Result<(), CompleteError> {
        self.0
            .complete(&without_caller(key), fence, completion)
            .await
    }

    async fn release(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError> {
        self.0.release(&without_caller(key), fence).await
    }

    async fn mark_published(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError> {
        self.0.mark_published(&without_caller(key), fence).await
    }

    async fn pending_events(&self, limit: usize) -> Result<Vec<PendingEvents>, StoreError> {
        self.0.pending_events(limit).await
    }

    async fn lookup(&self, key: &RecordKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        self.0.lookup(&without_caller(key), now).await
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.0.purge_expired(now).await
    }
}

fn req(key: Key, body: Body, caller: Caller, script: Script) -> Req {
    Req::new(key, body, caller, script)
}

fn send(script: Script) -> Step {
    Step::Send(req(Key::K1, Body::A, Caller::Anyone, script))
}

/// A random search with a fixed seed, so these tests never depend on luck.
fn search() -> Search {
    Search::cases(256).seeded(7)
}

#[track_caller]
fn assert_check_fails(report: &Report, check: &str) {
    assert!(
        report.failed(check),
        "the conformance suite should fail `{check}` on the planted bug; report:\n{report}"
    );
}

#[track_caller]
fn assert_violates(outcome: Result<(), Violation>, property: Property) -> Violation {
    match outcome {
        Ok(()) => panic!("the schedule should break `{property}`, but it passed"),
        Err(violation) => {
            assert_eq!(violation.property, property, "{violation}");
            violation
        }
    }
}

#[test]
fn the_planted_store_without_bugs_passes_everything() {
    let report = conformance::run(conformance::persistent(
        PlantedStore::default,
        PlantedStore::reopen,
    ));
    assert!(report.is_ok(), "{report}");
    // Every check runs except the event history one: this store keeps no history.
    assert_eq!(report.passed(), conformance::CHECKS.len() - 1, "{report}");
    let simulation = || {
        let store = PlantedStore::default();
        let data = store.clone();
        Simulation::builder(store)
            .reopen(move |_old| Arc::new(data.clone().reopen()))
            .build()
    };
    properties::check_simulations(simulation, search()).unwrap_or_else(|f| panic!("{f}"));
}

#[test]
fn the_reference_store_passes_the_same_checks() {
    assert!(conformance::check(MemoryStore::new).is_ok());
    properties::check_store(MemoryStore::new, search()).unwrap_or_else(|f| panic!("{f}"));
}

#[test]
fn a_claim_that_is_not_atomic_fails_the_interleaving_check() {
    let racy = || {
        PlantedStore::with(Bugs {
            racy_claim: true,
            ..Bugs::default()
        })
    };
    let report = conformance::check(racy);
    assert_check_fails(&report, "claim is atomic under interleaving");
    // Nothing else is wrong with the store: only checks that race claims may fail (a
    // takeover racing a completion is one of them).
    let racing = [
        "claim is atomic under interleaving",
        "claim is atomic across threads",
        "a completion racing a takeover never both win",
    ];
    for (name, _) in report.failures() {
        assert!(
            racing.contains(&name),
            "unexpected failure of `{name}`:\n{report}"
        );
    }
}

#[test]
fn a_completion_without_the_fencing_check_is_caught() {
    let unfenced = || {
        PlantedStore::with(Bugs {
            unfenced_complete: true,
            ..Bugs::default()
        })
    };
    assert_check_fails(
        &conformance::check(unfenced),
        "complete with a stale fence writes nothing",
    );

    // The first request hangs past its lease, a retry takes over and hangs too; the first
    // one's late completion must be refused, but the buggy store keeps it.
    let schedule = [
        send(Script::Hangs),
        Step::Advance(Jump::PastLease),
        send(Script::Hangs),
        Step::Release(0),
    ];
    assert_violates(
        properties::check_schedule(unfenced(), &schedule),
        Property::FencedCompletionDropped,
    );
    properties::check_schedule(MemoryStore::new(), &schedule).unwrap();
}

#[test]
fn events_published_before_the_commit_are_caught() {
    // A handler layer that publishes the handler's events itself as soon as the handler
    // returns, before the engine commits: the bug of notifying from inside the handler.
    let eager = || {
        let recorder = RecordingSink::new();
        let sink = recorder.clone();
        Simulation::builder(MemoryStore::new())
            .recording_into(recorder)
            .wrap_handler(move |inner| publish_on_return(inner, sink.clone()))
            .build()
    };

    // The commit fails, so nothing may be published; the layer already did.
    let schedule = [Step::FailNext(StoreMethod::Complete), send(Script::Created)];
    let mut sim = eager();
    let violation = assert_violates(
        cnerium_testkit::block_on(properties::check_schedule_on(&mut sim, &schedule)),
        Property::EventsAfterCommit,
    );
    assert_eq!(violation.step, 1);
    properties::check_schedule(MemoryStore::new(), &schedule).unwrap();

    let failure = properties::check_simulations(eager, search()).unwrap_err();
    assert_eq!(
        failure.violation.property,
        Property::EventsAfterCommit,
        "{failure}"
    );
    assert!(failure.schedule.len() <= 2, "not shrunk:\n{failure}");
}

fn publish_on_return(inner: Arc<dyn Handler>, sink: RecordingSink) -> Arc<dyn Handler> {
    Arc::new(move |request: DurableRequest| {
        let inner = inner.clone();
        let sink = sink.clone();
        async move {
            let key = request.idempotency_key().as_str().to_owned();
            let response = inner.call(request).await?;
            let body: serde_json::Value = serde_json::from_slice(response.body())?;
            let run = body["run"].as_u64().unwrap_or_default();
            let events: Vec<Event> = standard_events(&key, run)
                .into_iter()
                .map(|(kind, room, payload)| {
                    Event::new(kind, room.map(str::to_owned), payload, Timestamp::EPOCH)
                        .expect("standard events are valid")
                })
                .collect();
            sink.publish(&events).await?;
            Ok::<_, cnerium_core::BoxError>(response)
        }
    })
}

#[test]
fn a_replay_that_loses_its_status_or_location_is_caught() {
    assert_check_fails(
        &conformance::check(RewritingStore::default),
        "complete stores the response and events exactly",
    );

    let schedule = [send(Script::Created), send(Script::Created)];
    let violation = assert_violates(
        properties::check_schedule(RewritingStore::default(), &schedule),
        Property::ReplayIsIdentical,
    );
    assert_eq!(violation.step, 1);

    let failure = properties::check_store(RewritingStore::default, search()).unwrap_err();
    assert_eq!(
        failure.violation.property,
        Property::ReplayIsIdentical,
        "{failure}"
    );
    assert_eq!(failure.schedule.len(), 2, "not shrunk:\n{failure}");
}

#[test]
fn two_scopes_sharing_records_are_caught() {
    assert_check_fails(
        &conformance::check(ScopelessStore::default),
        "scopes and keys never share records",
    );

    let schedule = [
        Step::Send(req(Key::K1, Body::A, Caller::Alice, Script::Created)),
        Step::Send(req(Key::K1, Body::A, Caller::Bob, Script::Created)),
    ];
    assert_violates(
        properties::check_schedule(ScopelessStore::default(), &schedule),
        Property::ScopesIsolated,
    );

    let failure = properties::check_store(ScopelessStore::default, search()).unwrap_err();
    assert_eq!(
        failure.violation.property,
        Property::ScopesIsolated,
        "{failure}"
    );
}

#[test]
fn a_lease_that_never_expires_after_a_crash_is_caught() {
    let eternal = || {
        PlantedStore::with(Bugs {
            eternal_lease: true,
            ..Bugs::default()
        })
    };
    assert_check_fails(
        &conformance::check(eternal),
        "an expired lease is taken over",
    );

    // The process dies while the handler runs; after the lease a retry must run it again.
    let schedule = [
        send(Script::Hangs),
        Step::Restart,
        Step::Advance(Jump::PastLease),
        send(Script::Created),
    ];
    let violation = assert_violates(
        properties::check_schedule(eternal(), &schedule),
        Property::LeaseTakeover,
    );
    assert_eq!(violation.step, 3);
    properties::check_schedule(MemoryStore::new(), &schedule).unwrap();

    let failure = properties::check_store(eternal, search()).unwrap_err();
    assert_eq!(
        failure.violation.property,
        Property::LeaseTakeover,
        "{failure}"
    );
}

#[test]
fn a_record_lost_before_its_retention_is_caught() {
    let early = || {
        PlantedStore::with(Bugs {
            expires_early: true,
            ..Bugs::default()
        })
    };
    assert_check_fails(
        &conformance::check(early),
        "a completed record is kept until it expires",
    );

    let schedule = [
        send(Script::Created),
        Step::Advance(Jump::AlmostRetention),
        send(Script::Created),
    ];
    let violation = assert_violates(
        properties::check_schedule(early(), &schedule),
        Property::HandlerRunsOnce,
    );
    assert_eq!(violation.step, 2);
}

#[test]
fn fences_reused_after_a_reopen_are_caught() {
    let factory = conformance::persistent(
        || {
            PlantedStore::with(Bugs {
                fence_resets_on_reopen: true,
                ..Bugs::default()
            })
        },
        PlantedStore::reopen,
    );
    assert_check_fails(
        &conformance::check(factory),
        "fences keep growing across a reopen and a purge",
    );

    // Through the engine: event ids derive from the fence, so a fence granted twice for one
    // key gives two commits the same event ids.
    let simulation = || {
        let store = PlantedStore::with(Bugs {
            fence_resets_on_reopen: true,
            ..Bugs::default()
        });
        let data = store.clone();
        Simulation::builder(store)
            .reopen(move |_old| Arc::new(data.clone().reopen()))
            .build()
    };
    let failure = properties::check_simulations(simulation, search()).unwrap_err();
    assert_eq!(
        failure.violation.property,
        Property::EventsAfterCommit,
        "{failure}"
    );
    assert!(failure.violation.detail.contains("not unique"), "{failure}");
}
