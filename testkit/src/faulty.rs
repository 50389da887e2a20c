//! [`FaultyStore`]: wraps any [`Store`] and fails, holds or delays chosen calls.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cnerium_core::async_trait;
use cnerium_core::{
    ClaimOutcome, ClaimRequest, CompleteError, Completion, Event, Fence, PendingEvents, Record,
    RecordKey, Store, StoreError, Timestamp,
};

use crate::gate::{Gate, sleep};

/// A method of the [`Store`] trait, to aim a fault at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StoreMethod {
    /// [`Store::claim`].
    Claim,
    /// [`Store::complete`].
    Complete,
    /// [`Store::release`].
    Release,
    /// [`Store::mark_published`].
    MarkPublished,
    /// [`Store::pending_events`].
    PendingEvents,
    /// [`Store::lookup`].
    Lookup,
    /// [`Store::purge_expired`].
    PurgeExpired,
    /// [`Store::events_since`].
    EventsSince,
}

impl StoreMethod {
    /// Every method, in trait order.
    pub const ALL: [StoreMethod; 8] = [
        Self::Claim,
        Self::Complete,
        Self::Release,
        Self::MarkPublished,
        Self::PendingEvents,
        Self::Lookup,
        Self::PurgeExpired,
        Self::EventsSince,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for StoreMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Claim => "claim",
            Self::Complete => "complete",
            Self::Release => "release",
            Self::MarkPublished => "mark_published",
            Self::PendingEvents => "pending_events",
            Self::Lookup => "lookup",
            Self::PurgeExpired => "purge_expired",
            Self::EventsSince => "events_since",
        };
        f.write_str(name)
    }
}

/// What happens to a call a rule matches.
#[derive(Clone, Debug)]
pub enum Fault {
    /// The call fails with a [`StoreError`] and the wrapped store is not called.
    Fail,
    /// The wrapped store does the work, then the caller is told it failed: the outcome a
    /// caller cannot tell apart from [`Fault::Fail`] (a timeout after the write landed).
    FailAfter,
    /// The call waits until the gate opens, then goes through.
    Hold(Gate),
    /// The call waits this long in real time, then goes through.
    Delay(Duration),
}

/// Which calls of a method a rule matches.
#[derive(Clone)]
pub enum Trigger {
    /// The n-th call of the method counted from when the rule was added (1 is the next
    /// call); the rule fires once.
    Nth(u64),
    /// Every call of the method from when the rule was added.
    Every,
    /// Every call for which the predicate holds.
    Matching(Arc<dyn Fn(&Call<'_>) -> bool + Send + Sync>),
}

impl fmt::Debug for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Nth(n) => f.debug_tuple("Nth").field(n).finish(),
            Self::Every => f.write_str("Every"),
            Self::Matching(_) => f.write_str("Matching(..)"),
        }
    }
}

/// A store call as a [`Trigger::Matching`] predicate sees it.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    /// The method called.
    pub method: StoreMethod,
    /// Which call of this method it is since the store was wrapped, from 1.
    pub number: u64,
    /// The record key the call is about, for methods that take one.
    pub key: Option<&'a RecordKey>,
}

struct Rule {
    method: StoreMethod,
    trigger: RuleTrigger,
    fault: Fault,
}

enum RuleTrigger {
    /// Absolute call number of the method.
    At(u64),
    From(u64),
    Matching(Arc<dyn Fn(&Call<'_>) -> bool + Send + Sync>),
}

#[derive(Default)]
struct PlanState {
    calls: [u64; StoreMethod::ALL.len()],
    rules: Vec<Rule>,
    fired: u64,
}

/// The faults planned for one or more [`FaultyStore`]s; clones share one plan.
///
/// Sharing a plan lets a test keep injecting faults into the store a simulation rebuilt
/// after a restart, with call counts that go on from before.
#[derive(Clone, Default)]
pub struct FaultPlan {
    state: Arc<Mutex<PlanState>>,
}

impl FaultPlan {
    /// A plan with no fault.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rule: calls of `method` matching `trigger` suffer `fault`. When several
    /// rules match one call, the oldest wins.
    pub fn inject(&self, method: StoreMethod, trigger: Trigger, fault: Fault) {
        let mut state = self.lock();
        let calls = state.calls[method.index()];
        let trigger = match trigger {
            Trigger::Nth(n) => RuleTrigger::At(calls + n.max(1)),
            Trigger::Every => RuleTrigger::From(calls + 1),
            Trigger::Matching(predicate) => RuleTrigger::Matching(predicate),
        };
        state.rules.push(Rule {
            method,
            trigger,
            fault,
        });
    }

    /// Fails the n-th call of `method` from now (1 is the next call).
    pub fn fail_nth(&self, method: StoreMethod, n: u64) {
        self.inject(method, Trigger::Nth(n), Fault::Fail);
    }

    /// Fails the next call of `method`.
    pub fn fail_next(&self, method: StoreMethod) {
        self.fail_nth(method, 1);
    }

    /// Fails every call of `method` from now on.
    pub fn fail_every(&self, method: StoreMethod) {
        self.inject(method, Trigger::Every, Fault::Fail);
    }

    /// Fails every call of `method` for which `predicate` holds.
    pub fn fail_when(
        &self,
        method: StoreMethod,
        predicate: impl Fn(&Call<'_>) -> bool + Send + Sync + 'static,
    ) {
        self.inject(method, Trigger::Matching(Arc::new(predicate)), Fault::Fail);
    }

    /// Holds the n-th call of `method` from now until the returned gate opens.
    pub fn hold_nth(&self, method: StoreMethod, n: u64) -> Gate {
        let gate = Gate::new();
        self.inject(method, Trigger::Nth(n), Fault::Hold(gate.clone()));
        gate
    }

    /// Delays the n-th call of `method` from now by `delay` of real time.
    pub fn delay_nth(&self, method: StoreMethod, n: u64, delay: Duration) {
        self.inject(method, Trigger::Nth(n), Fault::Delay(delay));
    }

    /// Removes every rule; call counts stay.
    pub fn clear(&self) {
        self.lock().rules.clear();
    }

    /// How many calls of `method` the wrapped stores received.
    pub fn calls(&self, method: StoreMethod) -> u64 {
        self.lock().calls[method.index()]
    }

    /// How many calls a rule matched so far.
    pub fn fired(&self) -> u64 {
        self.lock().fired
    }

    /// Counts a call and returns the fault it suffers, if any.
    fn on_call(&self, method: StoreMethod, key: Option<&RecordKey>) -> Option<Fault> {
        let mut state = self.lock();
        state.calls[method.index()] += 1;
        let call = Call {
            method,
            number: state.calls[method.index()],
            key,
        };
        let position = state.rules.iter().position(|rule| {
            rule.method == method
                && match &rule.trigger {
                    RuleTrigger::At(n) => call.number == *n,
                    RuleTrigger::From(n) => call.number >= *n,
                    RuleTrigger::Matching(predicate) => predicate(&call),
                }
        })?;
        state.fired += 1;
        let fault = state.rules[position].fault.clone();
        if matches!(state.rules[position].trigger, RuleTrigger::At(_)) {
            state.rules.remove(position);
        }
        Some(fault)
    }

    fn lock(&self) -> MutexGuard<'_, PlanState> {
        // Predicates run under this lock; a panicking one leaves the counts consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Debug for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("FaultPlan")
            .field("calls", &state.calls)
            .field("rules", &state.rules.len())
            .field("fired", &state.fired)
            .finish()
    }
}

/// A [`Store`] that passes every call to an inner store, except those its [`FaultPlan`]
/// aims a fault at.
///
/// ```
/// use cnerium_store_memory::MemoryStore;
/// use cnerium_testkit::{FaultyStore, StoreMethod};
///
/// let store = FaultyStore::new(MemoryStore::new());
/// store.plan().fail_nth(StoreMethod::Complete, 2); // the second commit from now fails
/// store.plan().fail_every(StoreMethod::PurgeExpired);
/// ```
pub struct FaultyStore<S: ?Sized> {
    inner: Arc<S>,
    plan: FaultPlan,
}

impl<S: Store> FaultyStore<S> {
    /// Wraps `inner` with an empty plan.
    pub fn new(inner: S) -> Self {
        Self::from_arc(Arc::new(inner))
    }
}

impl<S: Store + ?Sized> FaultyStore<S> {
    /// Wraps a shared store with an empty plan.
    pub fn from_arc(inner: Arc<S>) -> Self {
        Self::with_plan(inner, FaultPlan::new())
    }

    /// Wraps a shared store, following a plan shared with other wrappers.
    pub fn with_plan(inner: Arc<S>, plan: FaultPlan) -> Self {
        Self { inner, plan }
    }

    /// The faults this store injects; change it at any time.
    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }

    /// Applies the planned fault of one call around `call`, which runs the inner store.
    async fn guarded<T, E, Fut>(
        &self,
        method: StoreMethod,
        key: Option<&RecordKey>,
        call: impl FnOnce() -> Fut,
    ) -> Result<T, E>
    where
        Fut: std::future::Future<Output = Result<T, E>>,
        E: From<StoreError>,
    {
        match self.plan.on_call(method, key) {
            None => call().await,
            Some(Fault::Fail) => Err(injected(method).into()),
            Some(Fault::FailAfter) => {
                let _ = call().await;
                Err(injected(method).into())
            }
            Some(Fault::Hold(gate)) => {
                gate.wait().await;
                call().await
            }
            Some(Fault::Delay(delay)) => {
                sleep(delay).await;
                call().await
            }
        }
    }
}

fn injected(method: StoreMethod) -> StoreError {
    StoreError::new(format!("injected fault on {method}"))
}

impl<S: ?Sized> fmt::Debug for FaultyStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyStore")
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<S: Store + ?Sized> Store for FaultyStore<S> {
    async fn claim(&self, request: ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        let key = request.key.clone();
        self.guarded(StoreMethod::Claim, Some(&key), || self.inner.claim(request))
            .await
    }

    async fn complete(
        &self,
        key: &RecordKey,
        fence: Fence,
        completion: Completion,
    ) -> Result<(), CompleteError> {
        self.guarded(StoreMethod::Complete, Some(key), || {
            self.inner.complete(key, fence, completion)
        })
        .await
    }

    async fn release(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError> {
        self.guarded(StoreMethod::Release, Some(key), || {
            self.inner.release(key, fence)
        })
        .await
    }

    async fn mark_published(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError> {
        self.guarded(StoreMethod::MarkPublished, Some(key), || {
            self.inner.mark_published(key, fence)
        })
        .await
    }

    async fn pending_events(&self, limit: usize) -> Result<Vec<PendingEvents>, StoreError> {
        self.guarded(StoreMethod::PendingEvents, None, || {
            self.inner.pending_events(limit)
        })
        .await
    }

    async fn lookup(&self, key: &RecordKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        self.guarded(StoreMethod::Lookup, Some(key), || {
            self.inner.lookup(key, now)
        })
        .await
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.guarded(StoreMethod::PurgeExpired, None, || {
            self.inner.purge_expired(now)
        })
        .await
    }

    async fn events_since(&self, since: Timestamp, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.guarded(StoreMethod::EventsSince, None, || {
            self.inner.events_since(since, limit)
        })
        .await
    }
}
