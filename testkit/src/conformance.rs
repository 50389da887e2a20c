//! The store conformance suite: every rule of the [`Store`] trait's documentation, checked
//! against a store you supply.
//!
//! ```
//! use cnerium_store_memory::MemoryStore;
//!
//! let report = cnerium_testkit::conformance::run(MemoryStore::new);
//! assert!(report.is_ok());
//! println!("{report}");
//! ```
//!
//! Give [`run`] (panics on the first report with a failure, naming every failed check) or
//! [`check`] (returns the [`Report`]) a factory of empty stores: a closure, or
//! [`persistent`] for a store that keeps its records across a reopen, which enables the
//! restart checks. Each check gets a fresh store. The suite blocks on the store's futures
//! with a minimal executor and races claims on plain threads, so it needs no async runtime;
//! call it from a synchronous test (or from `spawn_blocking` in an async one).
//! A store built on tokio I/O needs a tokio runtime to make progress: wrap it in
//! `OnRuntime` (the `tokio` feature of this crate), which runs each call on a runtime you
//! hand it.
//!
//! The checks, by name:
//!
//! - `claim grants a free key`: a claim on no record writes the in-progress record and grants a
//!   fence.
//! - `claim returns the live record it cannot replace`: a live, unclaimable record is returned
//!   unchanged.
//! - `claim is atomic under interleaving`: claims polled in turn, one step each: exactly one
//!   wins.
//! - `claim is atomic across threads`: threads racing one key: exactly one `Claimed`.
//! - `an expired lease is taken over`: at `lease_until` (not before) a claim takes over, with a
//!   greater fence.
//! - `a completed record is kept until it expires`: a completion is not claimable before
//!   `expires_at`, and is at it.
//! - `fences grow across takeover, release and purge`: each grant's fence exceeds every earlier
//!   one for the key.
//! - `complete stores the response and events exactly`: status, headers (order and repeats),
//!   body bytes, events, times.
//! - `complete with a stale fence writes nothing`: a stale, released, purged or repeated
//!   completion is `Fenced`.
//! - `release removes only the claim it names`: a release under another fence, or of a
//!   completion, changes nothing.
//! - `lookup changes nothing and hides expired records`: lookup is read-only; a record at
//!   `expires_at` is gone.
//! - `purge removes exactly the expired records`: `expires_at <= now` is removed and counted,
//!   nothing else.
//! - `scopes and keys never share records`: operation, caller and key each separate records.
//! - `pending events are listed oldest first`: unpublished completions with events, by
//!   `completed_at`, `limit` honoured.
//! - `mark_published changes only the flag`: the right fence clears the listing; another fence
//!   changes nothing.
//! - `a completion racing a takeover never both win`: under threads, either the completion or
//!   the takeover wins.
//! - `records survive a reopen`: (persistent stores) records and pending events are as before.
//! - `fences keep growing across a reopen and a purge`: (persistent stores) no fence is granted
//!   twice.

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use bytes::Bytes;
use cnerium_core::{
    ClaimOutcome, ClaimRequest, CompleteError, Completion, Event, Fence, Fingerprint,
    IdempotencyKey, PendingEvents, Record, RecordKey, RecordState, Scope, Store, StoredResponse,
    Timestamp,
};
use futures_executor::block_on;
use http::StatusCode;
use http::header::{CONTENT_TYPE, ETAG, HeaderName, HeaderValue, LINK, LOCATION};

#[cfg(feature = "tokio")]
pub use crate::on_runtime::OnRuntime;

/// Makes empty stores for the suite, and reopens one when the store is persistent.
pub trait StoreFactory {
    /// The store under test.
    type Store: Store + 'static;

    /// A new, empty store.
    fn create(&self) -> Self::Store;

    /// Closes `store` and opens it again over the same data, as after a restart; `None`
    /// when the store keeps nothing across a restart (the restart checks are skipped).
    fn reopen(&self, store: Self::Store) -> Option<Self::Store> {
        drop(store);
        None
    }
}

impl<S, F> StoreFactory for F
where
    S: Store + 'static,
    F: Fn() -> S,
{
    type Store = S;

    fn create(&self) -> S {
        self()
    }
}

/// A factory for a store that persists: `create` makes an empty store (in a fresh
/// directory, say), `reopen` closes one and opens its data again.
#[derive(Clone, Debug)]
pub struct Persistent<C, R> {
    create: C,
    reopen: R,
}

/// A factory for a persistent store; enables the restart checks.
///
/// ```no_run
/// # use std::path::{Path, PathBuf};
/// # use cnerium_store_memory::MemoryStore as DirStore;
/// # fn open(_dir: &Path) -> DirStore { DirStore::new() }
/// # fn dir_of(_store: &DirStore) -> PathBuf { PathBuf::new() }
/// # fn fresh_dir() -> PathBuf { PathBuf::new() }
/// use cnerium_testkit::conformance;
///
/// // A store kept in a directory: `reopen` closes the old instance and opens its
/// // directory again.
/// let factory = conformance::persistent(
///     || open(&fresh_dir()),
///     |old: DirStore| {
///         let dir = dir_of(&old);
///         drop(old);
///         open(&dir)
///     },
/// );
/// conformance::run(factory);
/// ```
pub fn persistent<S, C, R>(create: C, reopen: R) -> Persistent<C, R>
where
    S: Store + 'static,
    C: Fn() -> S,
    R: Fn(S) -> S,
{
    Persistent { create, reopen }
}

impl<S, C, R> StoreFactory for Persistent<C, R>
where
    S: Store + 'static,
    C: Fn() -> S,
    R: Fn(S) -> S,
{
    type Store = S;

    fn create(&self) -> S {
        (self.create)()
    }

    fn reopen(&self, store: S) -> Option<S> {
        Some((self.reopen)(store))
    }
}

/// How one check ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The store kept the rule.
    Passed,
    /// The store broke the rule; the message says how.
    Failed(String),
    /// The check does not apply (a restart check for a store that does not persist).
    Skipped(&'static str),
}

/// The outcome of every check, in suite order.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Each check's name and verdict.
    pub checks: Vec<(&'static str, Verdict)>,
}

impl Report {
    /// Whether no check failed.
    pub fn is_ok(&self) -> bool {
        self.failures().is_empty()
    }

    /// The failed checks with their messages.
    pub fn failures(&self) -> Vec<(&'static str, &str)> {
        self.checks
            .iter()
            .filter_map(|(name, verdict)| match verdict {
                Verdict::Failed(message) => Some((*name, message.as_str())),
                _ => None,
            })
            .collect()
    }

    /// Whether the named check failed.
    pub fn failed(&self, name: &str) -> bool {
        self.failures().iter().any(|(n, _)| *n == name)
    }

    /// How many checks passed.
    pub fn passed(&self) -> usize {
        self.checks
            .iter()
            .filter(|(_, v)| *v == Verdict::Passed)
            .count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, verdict) in &self.checks {
            match verdict {
                Verdict::Passed => writeln!(f, "ok      {name}")?,
                Verdict::Failed(message) => writeln!(f, "FAILED  {name}: {message}")?,
                Verdict::Skipped(why) => writeln!(f, "skipped {name} ({why})")?,
            }
        }
        let failed = self.failures().len();
        write!(f, "{} passed, {} failed", self.passed(), failed)
    }
}

/// Runs every check and returns the report.
pub fn check<F: StoreFactory>(factory: F) -> Report {
    let mut report = Report::default();
    for (name, check) in checks::<F>() {
        let verdict = match catch_unwind(AssertUnwindSafe(|| check(&factory))) {
            Ok(Ok(Outcome::Done)) => Verdict::Passed,
            Ok(Ok(Outcome::NotPersistent)) => Verdict::Skipped("the factory offers no reopen"),
            Ok(Ok(Outcome::NoHistory)) => Verdict::Skipped("the store keeps no event history"),
            Ok(Err(message)) => Verdict::Failed(message),
            Err(panic) => Verdict::Failed(format!("panicked: {}", panic_message(&*panic))),
        };
        report.checks.push((name, verdict));
    }
    report
}

/// Runs every check; panics with the names and messages of the failed ones.
#[track_caller]
pub fn run<F: StoreFactory>(factory: F) -> Report {
    let report = check(factory);
    if !report.is_ok() {
        let failures: Vec<String> = report
            .failures()
            .iter()
            .map(|(name, message)| format!("  check `{name}` failed: {message}"))
            .collect();
        panic!(
            "the store does not conform to the Store contract:\n{}",
            failures.join("\n")
        );
    }
    report
}

/// The names of every check, in suite order.
pub const CHECKS: [&str; 19] = [
    "claim grants a free key",
    "claim returns the live record it cannot replace",
    "claim is atomic under interleaving",
    "claim is atomic across threads",
    "an expired lease is taken over",
    "a completed record is kept until it expires",
    "fences grow across takeover, release and purge",
    "complete stores the response and events exactly",
    "complete with a stale fence writes nothing",
    "release removes only the claim it names",
    "lookup changes nothing and hides expired records",
    "purge removes exactly the expired records",
    "scopes and keys never share records",
    "pending events are listed oldest first",
    "mark_published changes only the flag",
    "a completion racing a takeover never both win",
    "records survive a reopen",
    "fences keep growing across a reopen and a purge",
    "event history lists committed events from a time",
];

enum Outcome {
    Done,
    NotPersistent,
    NoHistory,
}

type CheckResult = Result<Outcome, String>;
type CheckFn<F> = fn(&F) -> CheckResult;

fn checks<F: StoreFactory>() -> impl Iterator<Item = (&'static str, CheckFn<F>)> {
    let checks: [CheckFn<F>; CHECKS.len()] = [
        claim_grants_a_free_key::<F>,
        claim_returns_the_live_record::<F>,
        claim_is_atomic_under_interleaving::<F>,
        claim_is_atomic_across_threads::<F>,
        an_expired_lease_is_taken_over::<F>,
        a_completed_record_is_kept_until_it_expires::<F>,
        fences_grow::<F>,
        complete_stores_exactly::<F>,
        complete_with_a_stale_fence_writes_nothing::<F>,
        release_removes_only_its_claim::<F>,
        lookup_is_read_only::<F>,
        purge_removes_exactly_expired::<F>,
        scopes_and_keys_are_isolated::<F>,
        pending_events_oldest_first::<F>,
        mark_published_changes_only_the_flag::<F>,
        completion_racing_takeover::<F>,
        records_survive_a_reopen::<F>,
        fences_grow_across_reopen::<F>,
        event_history_from_a_time::<F>,
    ];
    CHECKS.into_iter().zip(checks)
}

macro_rules! ensure {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err(format!($($message)+));
        }
    };
}

/// Start of the suite's time, in milliseconds.
const T0: u64 = 1_700_000_000_000;
const LEASE: u64 = 30_000;
const RETENTION: u64 = 24 * 60 * 60 * 1000;
const THREADS: usize = 8;
const ROUNDS: usize = 12;

fn at(offset: u64) -> Timestamp {
    Timestamp::from_millis(T0 + offset)
}

fn key(name: &str) -> RecordKey {
    scoped(Scope::new("conformance.create"), name)
}

fn scoped(scope: Scope, name: &str) -> RecordKey {
    RecordKey::new(
        scope,
        IdempotencyKey::new(name).expect("suite keys are valid"),
    )
}

fn fingerprint(n: u8) -> Fingerprint {
    Fingerprint::from_parts(1, [n; 32])
}

fn claim_request(key: &RecordKey, fp: u8, now: u64) -> ClaimRequest {
    ClaimRequest {
        key: key.clone(),
        fingerprint: fingerprint(fp),
        now: at(now),
        lease_until: at(now + LEASE),
        expires_at: at(now + RETENTION),
    }
}

fn events(tag: &str, count: usize, ts: u64) -> Vec<Event> {
    (0..count)
        .map(|i| {
            let room = (i % 2 == 1).then(|| format!("room-{tag}"));
            let mut event = Event::new(
                "conformance.event",
                room,
                serde_json::json!({"tag": tag, "i": i, "nested": {"deep": [1, 2]}}),
                at(ts),
            )
            .expect("suite events are valid");
            event.id = format!("evt_{tag}_{i}");
            event
        })
        .collect()
}

/// A completion of a claim granted at `claimed_at`, committed at `completed_at`.
fn completion(tag: &str, events_count: usize, claimed_at: u64, completed_at: u64) -> Completion {
    let value = |s: String| HeaderValue::try_from(s).expect("suite headers are valid");
    let mut body = format!("{{\"tag\":\"{tag}\"}}").into_bytes();
    body.extend_from_slice(&[0x00, 0xff, 0xfe, b'\n']);
    Completion {
        response: StoredResponse {
            status: StatusCode::CREATED,
            headers: vec![
                (CONTENT_TYPE, HeaderValue::from_static("application/json")),
                (LOCATION, value(format!("/things/{tag}"))),
                (LINK, HeaderValue::from_static("</a>; rel=\"a\"")),
                (ETAG, value(format!("\"{tag}\""))),
                (LINK, HeaderValue::from_static("</b>; rel=\"b\"")),
                (
                    HeaderName::from_static("x-app-header"),
                    HeaderValue::from_static("kept"),
                ),
            ],
            body: Bytes::from(body),
        },
        events: events(tag, events_count, completed_at),
        completed_at: at(completed_at),
        expires_at: at(claimed_at + RETENTION),
    }
}

async fn claim<S: Store + ?Sized>(
    store: &S,
    request: ClaimRequest,
) -> Result<ClaimOutcome, String> {
    let key = request.key.clone();
    store
        .claim(request)
        .await
        .map_err(|e| format!("claim of {key} failed: {e}"))
}

/// Claims and requires a grant; returns its fence.
async fn granted<S: Store + ?Sized>(
    store: &S,
    request: ClaimRequest,
    takeover: bool,
) -> Result<Fence, String> {
    let key = request.key.clone();
    match claim(store, request).await? {
        ClaimOutcome::Claimed { fence, takeover: t } => {
            ensure!(
                t == takeover,
                "claim of {key} was granted with takeover = {t}, expected {takeover}"
            );
            Ok(fence)
        }
        ClaimOutcome::Existing(record) => Err(format!(
            "claim of {key} should have been granted but returned the existing record \
             {record:?}"
        )),
    }
}

/// Claims and requires the existing record back.
async fn refused<S: Store + ?Sized>(store: &S, request: ClaimRequest) -> Result<Record, String> {
    let key = request.key.clone();
    let now = request.now;
    match claim(store, request).await? {
        ClaimOutcome::Existing(record) => Ok(record),
        ClaimOutcome::Claimed { fence, .. } => Err(format!(
            "claim of {key} at {now} was granted (fence {fence}) although a live, unclaimable \
             record exists"
        )),
    }
}

async fn complete<S: Store + ?Sized>(
    store: &S,
    key: &RecordKey,
    fence: Fence,
    completion: Completion,
) -> Result<(), String> {
    store
        .complete(key, fence, completion)
        .await
        .map_err(|e| format!("complete of {key} under fence {fence} failed: {e}"))
}

async fn fenced<S: Store + ?Sized>(
    store: &S,
    key: &RecordKey,
    fence: Fence,
    completion: Completion,
    situation: &str,
) -> Result<(), String> {
    match store.complete(key, fence, completion).await {
        Err(CompleteError::Fenced) => Ok(()),
        Ok(()) => Err(format!(
            "complete of {key} under fence {fence} {situation} was stored; it must be refused \
             with Fenced"
        )),
        Err(e) => Err(format!(
            "complete of {key} under fence {fence} {situation} failed with {e}; expected Fenced"
        )),
    }
}

async fn lookup<S: Store + ?Sized>(
    store: &S,
    key: &RecordKey,
    now: u64,
) -> Result<Option<Record>, String> {
    store
        .lookup(key, at(now))
        .await
        .map_err(|e| format!("lookup of {key} failed: {e}"))
}

async fn pending<S: Store + ?Sized>(store: &S, limit: usize) -> Result<Vec<PendingEvents>, String> {
    store
        .pending_events(limit)
        .await
        .map_err(|e| format!("pending_events({limit}) failed: {e}"))
}

async fn purge<S: Store + ?Sized>(store: &S, now: u64) -> Result<u64, String> {
    store
        .purge_expired(at(now))
        .await
        .map_err(|e| format!("purge_expired failed: {e}"))
}

async fn release<S: Store + ?Sized>(
    store: &S,
    key: &RecordKey,
    fence: Fence,
) -> Result<(), String> {
    store
        .release(key, fence)
        .await
        .map_err(|e| format!("release of {key} under fence {fence} failed: {e}"))
}

async fn mark<S: Store + ?Sized>(store: &S, key: &RecordKey, fence: Fence) -> Result<(), String> {
    store
        .mark_published(key, fence)
        .await
        .map_err(|e| format!("mark_published of {key} under fence {fence} failed: {e}"))
}

fn completed_record(request: &ClaimRequest, fence: Fence, completion: &Completion) -> Record {
    Record {
        fingerprint: request.fingerprint,
        state: RecordState::Completed {
            fence,
            response: completion.response.clone(),
            events: completion.events.clone(),
            events_published: false,
            completed_at: completion.completed_at,
        },
        created_at: request.now,
        expires_at: completion.expires_at,
    }
}

fn claim_grants_a_free_key<F: StoreFactory>(factory: &F) -> CheckResult {
    let store = factory.create();
    block_on(async {
        let k = key("free");
        let request = claim_request(&k, 1, 0);
        let fence = granted(&store, request.clone(), false).await?;
        let found = lookup(&store, &k, 1).await?;
        ensure!(
            found == Some(request.in_progress_record(fence)),
            "after a granted claim, lookup returned {found:?}; expected the in-progress record \
             {:?}",
            request.in_progress_record(fence)
        );
        Ok(Outcome::Done)
    })
}

fn claim_returns_the_live_record<F: StoreFactory>(factory: &F) -> CheckResult {
    let store = factory.create();
    block_on(async {
        let k = key("busy");
        let first = claim_request(&k, 1, 0);
        let fence = granted(&store, first.clone(), false).await?;
        let expected = first.in_progress_record(fence);
        for (fp, offset) in [(1, 1), (2, LEASE - 1)] {
            let record = refused(&store, claim_request(&k, fp, offset)).await?;
            ensure!(
                record == expected,
                "a refused claim returned {record:?}; expected the live record {expected:?}"
            );
        }
        let found = lookup(&store, &k, 2).await?;
        ensure!(
            found.as_ref() == Some(&expected),
            "a refused claim changed the record: lookup returned {found:?}"
        );

        let completion = completion("busy", 1, 0, 10);
        complete(&store, &k, fence, completion.clone()).await?;
        let done = completed_record(&first, fence, &completion);
        let record = refused(&store, claim_request(&k, 2, LEASE + 5)).await?;
        ensure!(
            record == done,
            "a claim on a completed record returned {record:?}; expected {done:?}"
        );
        Ok(Outcome::Done)
    })
}

fn claim_is_atomic_under_interleaving<F: StoreFactory>(factory: &F) -> CheckResult {
    let store = factory.create();
    for round in 0..ROUNDS {
        let k = key(&format!("interleaved-{round}"));
        let claims: Vec<_> = (0..THREADS)
            .map(|i| store.claim(claim_request(&k, (i % 3) as u8, 0)))
            .collect();
        let outcomes = poll_in_turn(claims);
        let outcomes = outcomes
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("a claim failed: {e}"))?;
        one_winner(&k, &outcomes)?;
    }
    Ok(Outcome::Done)
}

fn claim_is_atomic_across_threads<F: StoreFactory>(factory: &F) -> CheckResult {
    let store = Arc::new(factory.create());
    for round in 0..ROUNDS {
        let k = key(&format!("raced-{round}"));
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let store = store.clone();
                let barrier = barrier.clone();
                let request = claim_request(&k, (i % 3) as u8, 0);
                thread::spawn(move || {
                    barrier.wait();
                    block_on(store.claim(request)).map_err(|e| e.to_string())
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for handle in handles {
            let outcome = handle
                .join()
                .map_err(|p| format!("a claiming thread panicked: {}", panic_message(&*p)))?;
            outcomes.push(outcome.map_err(|e| format!("a claim failed: {e}"))?);
        }
        one_winner(&k, &outcomes)?;
    }
    Ok(Outcome::Done)
}

/// Exactly one grant, and every refused claim saw the winner's record.
fn one_winner(key: &RecordKey, outcomes: &[ClaimOutcome]) -> Result<(), String> {
    let fences: Vec<Fence> = outcomes
        .iter()
        .filter_map(|o| match o {
            ClaimOutcome::Claimed { fence, .. } => Some(*fence),
            ClaimOutcome::Existing(_) => None,
        })
        .collect();
    ensure!(
        fences.len() == 1,
        "{} concurrent claims of {key} were granted {} times (fences {fences:?}); exactly one \
         may be",
        outcomes.len(),
        fences.len()
    );
    for outcome in outcomes {
        if let ClaimOutcome::Existing(record) = outcome {
            ensure!(
                record.fence() == fences[0],
                "a refused claim of {key} saw fence {} but the winner holds fence {}",
                record.fence(),
                fences[0]
            );
        }
    }
    Ok(())
}

fn an_expired_lease_is_taken_over<F: StoreFactory>(factory: &F) -> CheckResult {
    let store = factory.create();
    block_on(async {
        let k = key("lease");
        let old = granted(&store, claim_request(&k, 1, 0), false).await?;
        refused(&store, claim_request(&k, 1, LEASE - 1)).await?;
        let request = claim_request(&k, 2, LEASE);
        let new = granted(&store, request.clone(), true).await?;
        ensure!(
            new > old,
            "the takeover's fence {new} is not greater than the crashed owner's {old}"
        );
        let found = lookup(&store, &k, LEASE + 1).await?;
        ensure!(
            found == Some(request.in_progress_record(new)),
            "after a takeover, lookup returned {found:?}; expected the new claimant's record"
        );
        refused(&store, claim_request(&k, 1, LEASE + 1)).await?;
        Ok(Outcome::Done)
    })
}

fn a_completed_record_is_kept_until_it_expires<F: StoreFactory>(factory: &F) -> CheckResult {
    let store = factory.create();
    block_on(async {
        let k = key("kept");
        let request = claim_request(&k, 1, 0);
        let fence = granted(&store, request.clone(), false).await?;
        let completion = completion("kept", 1, 0, 100);
        complete(&store, &k, fence, completion.clone()).await?;
        for now in [LEASE, LEASE + 1, RETENTION / 2, RETENTION - 1] {
            refused(&store, claim_request(&k, 1, now)).await?;
            let found = lookup(&store, &k, now).await?;
            ensure!(
                found.is_some(),
                "a completed record was lost {now} ms after its claim, before its expiry"
            );
        }
        let next = granted(&store, claim_request(&k, 2, RETENTION), false).await?;
        ensure!(
            next > fence,
            "a claim after expiry got fence {next}, not above {fence}"
        );
        Ok(Outcome::Done)
    })
}

fn fences_grow<F: StoreFactory>(factory: &F) -> CheckResult {
    let store = factory.create();
    block_on(async {
        let k = key("fences");
        let other = key("fences-other");
        let mut last = granted(&store, claim_request(&k, 1, 0), false).await?;
        let mut next = |fence: Fence, how: &str| -> Result<(), String> {
            ensure!(
                fence > last,
                "the fence granted {how} ({fence}) is not greater than the one before ({last})"
            );
            last = fence;
            Ok(())
        };

        let f = granted(&store, claim_request(&k, 1, LEASE), true).await?;
        next(f, "on takeover")?;
        complete(&store, &k, f, completion("f", 1, LEASE, LEASE + 1)).await?;
        granted(&store, claim_request(&other, 1, LEASE + 2), false).await?;
        let removed = purge(&store, LEASE + RETENTION).await?;
        ensure!(
            removed >= 1,
            "purge at expiry removed {removed} records, expected at least 1"
        );
        let f = granted(&store, claim_request(&k, 1, LEASE + RETENTION), false).await?;
        next(f, "after a purge")?;
        release(&store, &k, f).await?;
        let f = granted(&store, claim_request(&k, 1, LEASE + RETENTION + 1), false).await?;
        next(f, "after a release")?;
        let f = granted(&store, claim_request(&k, 2, 3 * RETENTION), false).await?;
        next(f, "after expiry without a purge")?;
        Ok(Outcome::Done)
    })
}

fn complete_stores_exactly<F: StoreFactory>(factory: &F) -> CheckResult {
    let store = factory.create();
    block_on(async {
        let k = key("exact");
        let request = claim_request(&k, 7, 0);
        let fence = granted(&store, request.clone(), false).await?;
        let completion = completion("exact", 3, 0, 1_234);
        complete(&store, &k, fence, completion.clone()).await?;
        let expected = completed_record(&request, fence, &completion);
        let found = lookup(&store, &k, 2_000).await?;
        ensure!(
            found.as_ref() == Some(&expected),
            "after complete, lookup returned\n    {found:?}\n  expected\n    {expected:?}"
        );

        // A bare answer: a 4xx status, no header, an empty body, no event.
        let bare_key = key("exact-bare");
        let bare_request = claim_request(&bare_key, 8, 0);
        let fence = granted(&store, bare_request.clone(), false).await?;
        let bare = Completion {
            response: StoredResponse {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                headers: Vec::new(),
                body: Bytes::new(),
            },
            events: Vec::new(),
            completed_at: at(5),
            expires_at: at(RETENTION),
        };
        complete(&store, &bare_key, fence, bare.clone()).await?;
        let expected = completed_record(&bare_request, fence, &bare);
        let found = lookup(&store, &bare_key, 6).await?;
        ensure!(
            found.as_ref() == Some(&expected),
            "after a bare complete, lookup returned {found:?}; expected {expected:?}"
        );
        Ok(Outcome::Done)
    })
}

fn complete_with_a_stale_fence_writes_nothing<F: StoreFactory>(factory: &F) -> CheckResult {
    let store = factory.create();
    block_on(async {
        let k = key("stale");
        let old = granted(&store, claim_request(&k, 1, 0), false).await?;
        let request = claim_request(&k, 1, LEASE);
        let new = granted(&store, request.clone(), true).await?;

        fenced(
            &store,
            &k,
            old,
            completion("old", 1, 0, LEASE + 1),
            "after a takeover",
        )
        .await?;
        let found = lookup(&store, &k, LEASE + 2).await?;
        ensure!(
            found == Some(request.in_progress_record(new)),
            "a fenced completion changed the record: lookup returned {found:?}"
        );
        ensure!(
            pending(&store, 10).await?.is_empty(),
            "a fenced completion left pending events"
        );

        let done = completion("new", 1, LEASE, LEASE + 3);
        complete(&store, &k, new, done.clone()).await?;
        let expected = completed_record(&request, new, &done);
        fenced(
            &store,
            &k,
            new,
            completion("again", 1, LEASE, LEASE + 4),
            "a second time",
        )
        .await?;
        fenced(
            &store,
            &k,
            old,
            completion("old", 1, 0, LEASE + 5),
            "on a completed record",
        )
        .await?;
        let found = lookup(&store, &k, LEASE + 6).await?;
        ensure!(
            found.as_ref() == Some(&expected),
            "a refused completion overwrote the first one: lookup returned {found:?}"
        );

        let unknown = key("stale-unknown");
        fenced(
            &store,
            &unknown,
            new,
            completion("u", 1, 0, 1),
            "of a key never claimed",
        )
        .await?;
        ensure!(
            lookup(&store, &unknown, 2).await?.is_none(),
            "a refused completion of an unknown key created a record"
        );

        let released = key("stale-released");
        let fence = granted(&store, claim_request(&released, 1, 0), false).await?;
        release(&store, &released, fence).await?;
        fenced(
            &store,
            &released,
            fence,
            completion("r", 1, 0, 1),
            "after a release",
        )
        .await?;
        ensure!(
            lookup(&store, &released, 2).await?.is_none(),
            "a refused completion of a released key created a record"
        );

        let purged = key("stale-purged");
        let fence = granted(&store, claim_request(&purged, 1, 0), false).await?;
        purge(&store, RETENTION).await?;
        fenced(
            &store,
            &purged,
            fence,
            completion("p", 1, 0, RETENTION),
            "after a purge",
        )
        .await?;
        Ok(Outcome::Done)
    })
}

fn release_removes_only_its_claim<F: StoreFactory>(factory: &F) -> CheckResult {
    let store = factory.create();
    block_on(async {
        let k = key("release");
        let old = granted(&store, claim_request(&k, 1, 0), false).await?;
        release(&store, &k, Fence(old.0 + 1_000)).await?;
        ensure!(
            lookup(&store, &k, 1).await?.is_some(),
            "release under a fence never granted removed the claim"
        );
        let request = claim_request(&k, 1, LEASE);
        let new = granted(&store, request.clone(), true).await?;
        release(&store, &k, old).await?;
        let found = lookup(&store, &k, LEASE + 1).await?;
        ensure!(
            found == Some(request.in_progress_record(new)),
            "release under the taken-over fence changed the new claim: lookup returned {found:?}"
        );
        release(&store, &k, new).await?;
        let found = lookup(&store, &k, LEASE + 2).await?;
        ensure!(
            found.is_none(),
            "release left the record: lookup returned {found:?}"
        );
        release(&store, &k, new).await?;
        granted(&store, claim_request(&k, 2, LEASE + 3), false).await?;

        let done = key("release-done");
        let request = claim_request(&done, 1, 0);
        let fence = granted(&store, request.clone(), false).await?;
        let completion = completion("done", 1, 0, 1);
        complete(&store, &done, fence, completion.clone()).await?;
        release(&store, &done, fence).await?;
        let found = lookup(&store, &done, 2).await?;
        ensure!(
            found == Some(completed_record(&request, fence, &completion)),
            "release of a completed record changed it: lookup returned {found:?}"
        );
        Ok(Outcome::Done)
    })
}

fn lookup_is_read_only<F: StoreFactory>(factory: &F) -> CheckResult {
    let store = factory.create();
    block_on(async {
        let k = key("lookup");
        ensure!(
            lookup(&store, &k, 0).await?.is_none(),
            "lookup of a key never claimed found a record"
        );
        let request = claim_request(&k, 1, 0);
        let fence = granted(&store, request.clone(), false).await?;
        ensure!(
            lookup(&store, &k, RETENTION - 1).await? == Some(request.in_progress_record(fence)),
            "lookup just before expiry did not return the record"
        );
        ensure!(
            lookup(&store, &k, RETENTION).await?.is_none(),
            "lookup at expires_at still returned the record"
        );
        // Lookups at and past expiry must not have removed or changed anything.
        let found = lookup(&store, &k, 1).await?;
        ensure!(
            found == Some(request.in_progress_record(fence)),
            "lookup changed the record: a later lookup at an earlier time returned {found:?}"
        );
        refused(&store, claim_request(&k, 1, 2)).await?;
        let removed = purge(&store, RETENTION).await?;
        ensure!(
            removed == 1,
            "purge after lookups removed {removed} records, expected the 1 expired one"
        );
        Ok(Outcome::Done)
    })
}

fn purge_removes_exactly_expired<F: StoreFactory>(factory: &F) -> CheckResult {
    let store = factory.create();
    block_on(async {
        let (a, b, c) = (key("purge-a"), key("purge-b"), key("purge-c"));
        let fa = granted(&store, claim_request(&a, 1, 0), false).await?;
        complete(&store, &a, fa, completion("a", 2, 0, 10)).await?;
        granted(&store, claim_request(&b, 1, 1_000), false).await?;
        let fc = granted(&store, claim_request(&c, 1, 2_000), false).await?;
        complete(&store, &c, fc, completion("c", 1, 2_000, 2_010)).await?;

        let removed = purge(&store, RETENTION - 1).await?;
        ensure!(
            removed == 0,
            "purge before any expiry removed {removed} records"
        );
        let removed = purge(&store, RETENTION).await?;
        ensure!(
            removed == 1,
            "purge at the first expires_at removed {removed} records, expected 1 (expiry is \
             inclusive)"
        );
        ensure!(
            lookup(&store, &b, RETENTION).await?.is_some()
                && lookup(&store, &c, RETENTION).await?.is_some(),
            "purge removed a record that had not expired"
        );
        let listed: Vec<RecordKey> = pending(&store, 10)
            .await?
            .into_iter()
            .map(|p| p.key)
            .collect();
        ensure!(
            listed == vec![c.clone()],
            "after purging a record, pending_events listed {listed:?}; expected only {c}"
        );
        let removed = purge(&store, RETENTION).await?;
        ensure!(
            removed == 0,
            "a second purge at the same time removed {removed} records"
        );
        let removed = purge(&store, RETENTION + 5_000).await?;
        ensure!(
            removed == 2,
            "purge after every expiry removed {removed} records, expected 2"
        );
        let fresh = granted(&store, claim_request(&a, 1, RETENTION + 5_000), false).await?;
        ensure!(
            fresh > fa,
            "a claim after a purge got fence {fresh}, not above {fa}"
        );
        Ok(Outcome::Done)
    })
}

fn scopes_and_keys_are_isolated<F: StoreFactory>(factory: &F) -> CheckResult {
    let store = factory.create();
    block_on(async {
        let keys = [
            scoped(Scope::new("orders.create"), "k"),
            scoped(Scope::with_caller("orders.create", "alice"), "k"),
            scoped(Scope::with_caller("orders.create", "bob"), "k"),
            scoped(Scope::with_caller("orders.create", ""), "k"),
            scoped(Scope::new("orders.refund"), "k"),
            scoped(Scope::with_caller("orders.creat", "ealice"), "k"),
            scoped(Scope::with_caller("orders.create", "alice"), "K"),
            scoped(Scope::with_caller("orders.create", "alice"), "k "),
            scoped(Scope::with_caller("orders.create", "alice/k"), "k"),
        ];
        let mut requests = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let request = claim_request(k, i as u8, 0);
            let fence = granted(&store, request.clone(), false)
                .await
                .map_err(|e| format!("{e} (each scope and key must name its own record)"))?;
            requests.push((request, fence));
        }
        let (first, fence) = &requests[0];
        complete(&store, &first.key, *fence, completion("scoped", 1, 0, 1)).await?;
        for (request, fence) in &requests[1..] {
            let found = lookup(&store, &request.key, 2).await?;
            ensure!(
                found == Some(request.in_progress_record(*fence)),
                "record {} was changed by work on another scope or key: {found:?}",
                request.key
            );
        }
        let listed = pending(&store, 100).await?;
        ensure!(
            listed.len() == 1 && listed[0].key == first.key,
            "pending_events listed {:?}; expected only {}",
            listed.iter().map(|p| p.key.to_string()).collect::<Vec<_>>(),
            first.key
        );
        Ok(Outcome::Done)
    })
}

fn pending_events_oldest_first<F: StoreFactory>(factory: &F) -> CheckResult {
    let store = factory.create();
    block_on(async {
        let names = ["p-late", "p-early", "p-middle"];
        let times = [300, 100, 200];
        let mut fences = Vec::new();
        for (name, time) in names.iter().zip(times) {
            let k = key(name);
            let fence = granted(&store, claim_request(&k, 1, 0), false).await?;
            complete(&store, &k, fence, completion(name, 2, 0, time)).await?;
            fences.push(fence);
        }
        let silent = key("p-silent");
        let fence = granted(&store, claim_request(&silent, 1, 0), false).await?;
        complete(&store, &silent, fence, completion("silent", 0, 0, 50)).await?;
        granted(&store, claim_request(&key("p-running"), 1, 0), false).await?;

        let listed = pending(&store, 10).await?;
        let expected: Vec<PendingEvents> = [1, 2, 0]
            .into_iter()
            .map(|i| PendingEvents {
                key: key(names[i]),
                fence: fences[i],
                events: events(names[i], 2, times[i]),
            })
            .collect();
        ensure!(
            listed == expected,
            "pending_events(10) returned {:?}; expected {:?} with their events in order",
            listed.iter().map(|p| p.key.to_string()).collect::<Vec<_>>(),
            expected
                .iter()
                .map(|p| p.key.to_string())
                .collect::<Vec<_>>()
        );
        let two = pending(&store, 2).await?;
        ensure!(
            two == expected[..2],
            "pending_events(2) returned {:?}; expected the two oldest",
            two.iter().map(|p| p.key.to_string()).collect::<Vec<_>>()
        );
        ensure!(
            pending(&store, 0).await?.is_empty(),
            "pending_events(0) returned entries"
        );
        Ok(Outcome::Done)
    })
}

fn event_history_from_a_time<F: StoreFactory>(factory: &F) -> CheckResult {
    let store = factory.create();
    block_on(async {
        let names = ["h-late", "h-early", "h-middle"];
        let times = [300, 100, 200];
        for (name, time) in names.iter().zip(times) {
            let k = key(name);
            let fence = granted(&store, claim_request(&k, 1, 0), false).await?;
            complete(&store, &k, fence, completion(name, 2, 0, time)).await?;
        }
        let published = key("h-early");
        let fence = match store.lookup(&published, at(0)).await {
            Ok(Some(record)) => record.fence(),
            other => return Err(format!("lookup of {published} returned {other:?}")),
        };
        mark(&store, &published, fence).await?;
        granted(&store, claim_request(&key("h-running"), 1, 0), false).await?;

        let all = match store.events_since(at(0), 100).await {
            Ok(events) => events,
            Err(_) => return Ok(Outcome::NoHistory),
        };
        let expected: Vec<Event> = [1, 2, 0]
            .into_iter()
            .flat_map(|i| events(names[i], 2, times[i]))
            .collect();
        ensure!(
            all == expected,
            "events_since(0) returned ids {:?}; expected {:?}: every committed event, \
             published or not, by completion time",
            all.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            expected.iter().map(|e| e.id.as_str()).collect::<Vec<_>>()
        );
        let later = store
            .events_since(at(200), 100)
            .await
            .map_err(|e| format!("events_since failed: {e}"))?;
        ensure!(
            later == expected[2..],
            "events_since(200) returned ids {:?}; expected those completed at 200 and later",
            later.iter().map(|e| e.id.as_str()).collect::<Vec<_>>()
        );
        let three = store
            .events_since(at(0), 3)
            .await
            .map_err(|e| format!("events_since failed: {e}"))?;
        ensure!(
            three == expected[..3],
            "events_since(0, limit 3) returned {} events; expected the 3 oldest",
            three.len()
        );
        Ok(Outcome::Done)
    })
}

fn mark_published_changes_only_the_flag<F: StoreFactory>(factory: &F) -> CheckResult {
    let store = factory.create();
    block_on(async {
        let k = key("mark");
        let request = claim_request(&k, 1, 0);
        let fence = granted(&store, request.clone(), false).await?;
        let completion = completion("mark", 2, 0, 10);
        complete(&store, &k, fence, completion.clone()).await?;

        mark(&store, &k, Fence(fence.0 + 1_000)).await?;
        ensure!(
            pending(&store, 10).await?.len() == 1,
            "mark_published under another fence removed the pending events"
        );
        mark(&store, &key("mark-unknown"), fence).await?;
        mark(&store, &k, fence).await?;
        let listed = pending(&store, 10).await?;
        ensure!(
            listed.is_empty(),
            "after mark_published, pending_events still listed {:?}",
            listed.iter().map(|p| p.key.to_string()).collect::<Vec<_>>()
        );
        let mut expected = completed_record(&request, fence, &completion);
        if let RecordState::Completed {
            events_published, ..
        } = &mut expected.state
        {
            *events_published = true;
        }
        let found = lookup(&store, &k, 20).await?;
        ensure!(
            found.as_ref() == Some(&expected),
            "mark_published changed more than the flag: lookup returned {found:?}"
        );
        mark(&store, &k, fence).await?;
        refused(&store, claim_request(&k, 1, 30)).await?;

        let running = key("mark-running");
        let request = claim_request(&running, 1, 0);
        let fence = granted(&store, request.clone(), false).await?;
        mark(&store, &running, fence).await?;
        ensure!(
            lookup(&store, &running, 1).await? == Some(request.in_progress_record(fence)),
            "mark_published changed an in-progress record"
        );
        Ok(Outcome::Done)
    })
}

fn completion_racing_takeover<F: StoreFactory>(factory: &F) -> CheckResult {
    let store = Arc::new(factory.create());
    for round in 0..ROUNDS {
        let k = key(&format!("race-{round}"));
        let old = block_on(granted(&*store, claim_request(&k, 1, 0), false))?;
        let barrier = Arc::new(Barrier::new(2));
        let completing = {
            let (store, barrier, k) = (store.clone(), barrier.clone(), k.clone());
            thread::spawn(move || {
                barrier.wait();
                block_on(store.complete(&k, old, completion("race", 1, 0, LEASE)))
            })
        };
        let taking = {
            let (store, barrier, k) = (store.clone(), barrier.clone(), k.clone());
            thread::spawn(move || {
                barrier.wait();
                block_on(store.claim(claim_request(&k, 1, LEASE)))
            })
        };
        let completed = completing
            .join()
            .map_err(|p| format!("the completing thread panicked: {}", panic_message(&*p)))?;
        let taken = taking
            .join()
            .map_err(|p| format!("the claiming thread panicked: {}", panic_message(&*p)))?
            .map_err(|e| format!("the takeover claim failed: {e}"))?;
        let found = block_on(lookup(&*store, &k, LEASE + 1))?;
        match (completed, taken) {
            (Ok(()), ClaimOutcome::Existing(record)) => ensure!(
                matches!(record.state, RecordState::Completed { fence, .. } if fence == old)
                    && found == Some(record.clone()),
                "the completion won the race but the takeover saw {record:?} and lookup \
                 {found:?}"
            ),
            (Err(CompleteError::Fenced), ClaimOutcome::Claimed { fence, takeover }) => ensure!(
                takeover
                    && fence > old
                    && matches!(
                        found.as_ref().map(|r| &r.state),
                        Some(RecordState::InProgress { fence: f, .. }) if *f == fence
                    ),
                "the takeover won the race but lookup returned {found:?}"
            ),
            (Ok(()), ClaimOutcome::Claimed { fence, .. }) => {
                return Err(format!(
                    "a completion under fence {old} and a takeover (fence {fence}) both \
                     succeeded on {k}"
                ));
            }
            (completed, taken) => {
                return Err(format!(
                    "racing a completion and a takeover gave {completed:?} and {taken:?}"
                ));
            }
        }
    }
    Ok(Outcome::Done)
}

fn records_survive_a_reopen<F: StoreFactory>(factory: &F) -> CheckResult {
    let store = factory.create();
    let (running, unpublished, published) = (key("r-running"), key("r-pending"), key("r-done"));
    let before = block_on(async {
        granted(&store, claim_request(&running, 1, 0), false).await?;
        let fence = granted(&store, claim_request(&unpublished, 2, 0), false).await?;
        complete(&store, &unpublished, fence, completion("pending", 2, 0, 10)).await?;
        let fence = granted(&store, claim_request(&published, 3, 0), false).await?;
        complete(&store, &published, fence, completion("done", 1, 0, 20)).await?;
        mark(&store, &published, fence).await?;
        let mut records = Vec::new();
        for k in [&running, &unpublished, &published] {
            records.push(lookup(&store, k, 30).await?);
        }
        Ok::<_, String>((records, pending(&store, 10).await?))
    })?;
    let Some(store) = factory.reopen(store) else {
        return Ok(Outcome::NotPersistent);
    };
    block_on(async {
        for (k, record) in [&running, &unpublished, &published]
            .into_iter()
            .zip(&before.0)
        {
            let found = lookup(&store, k, 30).await?;
            ensure!(
                found == *record,
                "after a reopen, lookup of {k} returned {found:?}; before it was {record:?}"
            );
        }
        let listed = pending(&store, 10).await?;
        ensure!(
            listed == before.1,
            "after a reopen, pending_events returned {listed:?}; before it was {:?}",
            before.1
        );
        refused(&store, claim_request(&running, 1, 40)).await?;
        Ok(Outcome::Done)
    })
}

fn fences_grow_across_reopen<F: StoreFactory>(factory: &F) -> CheckResult {
    let store = factory.create();
    let k = key("reopen-fence");
    let first = block_on(async {
        let fence = granted(&store, claim_request(&k, 1, 0), false).await?;
        complete(&store, &k, fence, completion("first", 1, 0, 1)).await?;
        purge(&store, RETENTION).await?;
        Ok::<_, String>(fence)
    })?;
    let Some(store) = factory.reopen(store) else {
        return Ok(Outcome::NotPersistent);
    };
    block_on(async {
        let fence = granted(&store, claim_request(&k, 1, RETENTION), false).await?;
        ensure!(
            fence > first,
            "after a purge and a reopen, a claim of {k} got fence {fence}, not above the \
             earlier {first}"
        );
        let takeover = granted(&store, claim_request(&k, 1, RETENTION + LEASE), true).await?;
        ensure!(
            takeover > fence,
            "a takeover after a reopen got fence {takeover}, not above {fence}"
        );
        Ok(Outcome::Done)
    })
}

/// Polls the futures in turn, one poll each per round, until all are ready, so that a
/// store which yields between reading and writing lets the others in between.
fn poll_in_turn<T, Fut>(futures: Vec<Fut>) -> Vec<T>
where
    Fut: Future<Output = T>,
{
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut futures: Vec<Pin<Box<Fut>>> = futures.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    loop {
        let mut progressed = false;
        for (future, result) in futures.iter_mut().zip(results.iter_mut()) {
            if result.is_some() {
                continue;
            }
            if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
                *result = Some(value);
                progressed = true;
            }
        }
        if results.iter().all(Option::is_some) {
            return results.into_iter().flatten().collect();
        }
        if !progressed {
            thread::park_timeout(Duration::from_millis(1));
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}
