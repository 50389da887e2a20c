//! A reference model of the behaviour contract: what a durable route must answer, run and
//! publish, step by step, written as plainly as possible.
//!
//! The model knows nothing of fingerprints, fences or stores. It keeps one record per
//! (caller, key) with the body class that claimed it, its state and its deadlines, and
//! follows the engine's documented sequence of store calls so that a planned store fault
//! hits the same call in the model as in the engine. The property checker in
//! [`properties`](crate::properties) runs a schedule on both and compares.

use std::collections::{BTreeMap, BTreeSet};

use http::StatusCode;

use crate::faulty::StoreMethod;
use crate::properties::{Body, Caller, Key, Req, Script};
use crate::sim::RequestId;

/// What the model expects a committed response to hold: enough to rebuild the standard
/// handler's answer byte for byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredAnswer {
    /// The handler's status.
    pub status: StatusCode,
    /// The run that produced it.
    pub run: u64,
    /// The key it was sent with.
    pub key: Key,
    /// The caller it was sent by.
    pub caller: Caller,
}

/// Why the model expects a request to run the handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimReason {
    /// No record existed for the key in this scope.
    New,
    /// A record existed but its retention had passed.
    AfterRetention,
    /// An in-progress record's lease had run out.
    Takeover,
}

/// The answer the model expects for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The handler ran and this is its first answer.
    Fresh {
        /// The answer.
        stored: StoredAnswer,
        /// Why the handler was allowed to run.
        reason: ClaimReason,
    },
    /// A replay of this stored answer.
    Replay(StoredAnswer),
    /// 409 (or the configured status): the key was used with another body.
    KeyReused,
    /// 409: the first request with this key still runs.
    InProgress,
    /// 500: the handler panicked or failed.
    HandlerFailed,
    /// 503: the store failed to claim.
    ClaimFailed,
    /// 500: the store failed to commit.
    CommitFailed,
    /// 409: the handler outlived its lease and the key was taken over.
    LeaseLost,
}

/// Events the model expects published in one `publish` call: one committed run's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The claim that committed them; the same on a republication.
    pub claim: u64,
    /// The run that staged them.
    pub run: u64,
    /// The key of the run.
    pub key: Key,
    /// When they were committed, in model milliseconds.
    pub completed_at: u64,
}

/// Everything the model expects from one step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    /// Answers, per request answered during the step.
    pub answers: BTreeMap<RequestId, Answer>,
    /// Handler runs started during the step, in order: (request, run number).
    pub runs: Vec<(RequestId, u64)>,
    /// Event batches published during the step, in order.
    pub batches: Vec<Batch>,
    /// The result of a purge: how many records were removed, or an error.
    pub purged: Option<Result<u64, ()>>,
    /// The result of a recovery: how many events were published, or an error.
    pub recovered: Option<Result<usize, ()>>,
}

#[derive(Clone, Debug)]
enum State {
    InProgress {
        claim: u64,
        lease_until: u64,
    },
    Completed {
        claim: u64,
        stored: StoredAnswer,
        events: bool,
        published: bool,
        completed_at: u64,
    },
}

#[derive(Clone, Debug)]
struct ModelRecord {
    same_as: Body,
    state: State,
    expires_at: u64,
}

/// A claim the model granted whose handler has not finished.
#[derive(Clone, Debug)]
struct Claimed {
    id: RequestId,
    record: (Caller, Key),
    claim: u64,
    run: u64,
    script: Script,
    reason: ClaimReason,
}

/// The reference model. Time is in milliseconds from the start of the schedule.
#[derive(Clone, Debug)]
pub struct Model {
    lease: u64,
    retention: u64,
    store_server_errors: bool,
    now: u64,
    records: BTreeMap<(Caller, Key), ModelRecord>,
    claims: u64,
    runs: u64,
    armed: BTreeMap<StoreMethod, u64>,
    refusals: u64,
    held: Vec<Claimed>,
    unstored_runs: BTreeSet<u64>,
    fenced_runs: BTreeSet<u64>,
}

impl Model {
    /// A model with the engine's lease and retention, in milliseconds, that stores 5xx
    /// answers like any other.
    pub fn new(lease: u64, retention: u64) -> Self {
        Self {
            lease,
            retention,
            store_server_errors: true,
            now: 0,
            records: BTreeMap::new(),
            claims: 0,
            runs: 0,
            armed: BTreeMap::new(),
            refusals: 0,
            held: Vec::new(),
            unstored_runs: BTreeSet::new(),
            fenced_runs: BTreeSet::new(),
        }
    }

    /// Follows the engine setting of that name: when false, a 5xx answer of the handler is
    /// sent but not stored, and the claim is released.
    pub fn store_server_errors(mut self, store: bool) -> Self {
        self.store_server_errors = store;
        self
    }

    /// Requests whose handler holds, oldest first.
    pub fn held(&self) -> Vec<RequestId> {
        self.held.iter().map(|c| c.id).collect()
    }

    /// Runs whose result must never be replayed: they failed, were abandoned or fenced.
    pub fn unstored_runs(&self) -> &BTreeSet<u64> {
        &self.unstored_runs
    }

    /// Runs whose completion came after their key was taken over.
    pub fn fenced_runs(&self) -> &BTreeSet<u64> {
        &self.fenced_runs
    }

    /// Whether a live record exists for `key` in a scope other than `caller`'s.
    pub fn key_live_elsewhere(&self, caller: Caller, key: Key) -> bool {
        self.records
            .iter()
            .any(|(&(c, k), r)| c != caller && k == key && self.now < r.expires_at)
    }

    /// Arms one more failure of `method`: the next unarmed call of it fails.
    pub fn fail_next(&mut self, method: StoreMethod) -> u64 {
        let armed = self.armed.entry(method).or_default();
        *armed += 1;
        *armed
    }

    /// The sink refuses one more publication.
    pub fn refuse_next_publication(&mut self) {
        self.refusals += 1;
    }

    /// Moves time forward.
    pub fn advance(&mut self, millis: u64) {
        self.now += millis;
    }

    /// Sends requests together: every claim first, in order, then every handler that does
    /// not hold finishes, in order.
    pub fn send(&mut self, requests: &[(RequestId, Req)]) -> Expected {
        let mut expected = Expected::default();
        let mut claimed = Vec::new();
        for (id, req) in requests {
            match self.claim(*id, req, &mut expected) {
                Ok(claim) => claimed.push(claim),
                Err(answer) => {
                    expected.answers.insert(*id, answer);
                }
            }
        }
        for claim in claimed {
            if claim.script.holds() {
                self.held.push(claim);
            } else {
                let answer = self.finish(&claim, &mut expected);
                expected.answers.insert(claim.id, answer);
            }
        }
        expected
    }

    /// Lets held request `id` finish now.
    pub fn release(&mut self, id: RequestId) -> Expected {
        let mut expected = Expected::default();
        if let Some(index) = self.held.iter().position(|c| c.id == id) {
            let claim = self.held.remove(index);
            let answer = self.finish(&claim, &mut expected);
            expected.answers.insert(id, answer);
        }
        expected
    }

    /// Removes records at or past their expiry.
    pub fn purge(&mut self) -> Expected {
        let purged = if self.consume(StoreMethod::PurgeExpired) {
            Err(())
        } else {
            let now = self.now;
            let before = self.records.len();
            self.records.retain(|_, r| now < r.expires_at);
            Ok((before - self.records.len()) as u64)
        };
        Expected {
            purged: Some(purged),
            ..Expected::default()
        }
    }

    /// Drops held requests (their claims stay) and runs recovery.
    pub fn restart(&mut self) -> Expected {
        for claim in self.held.drain(..) {
            self.unstored_runs.insert(claim.run);
        }
        let mut expected = Expected::default();
        expected.recovered = Some(self.recover(&mut expected.batches));
        expected
    }

    fn recover(&mut self, batches: &mut Vec<Batch>) -> Result<usize, ()> {
        if self.consume(StoreMethod::PendingEvents) {
            return Err(());
        }
        let mut pending: Vec<(u64, u64, (Caller, Key))> = self
            .records
            .iter()
            .filter_map(|(&at, r)| match r.state {
                State::Completed {
                    claim,
                    events: true,
                    published: false,
                    completed_at,
                    ..
                } => Some((completed_at, claim, at)),
                _ => None,
            })
            .collect();
        pending.sort();

        let mut published = 0;
        for (completed_at, claim, at) in pending {
            if self.refusals > 0 {
                self.refusals -= 1;
                return Ok(published);
            }
            let State::Completed { stored, .. } = self.records[&at].state else {
                unreachable!("only completed records are pending");
            };
            batches.push(Batch {
                claim,
                run: stored.run,
                key: stored.key,
                completed_at,
            });
            if self.consume(StoreMethod::MarkPublished) {
                return Err(());
            }
            if let Some(ModelRecord {
                state: State::Completed { published: p, .. },
                ..
            }) = self.records.get_mut(&at)
            {
                *p = true;
            }
            published += EVENTS_PER_RUN;
        }
        Ok(published)
    }

    fn claim(
        &mut self,
        id: RequestId,
        req: &Req,
        expected: &mut Expected,
    ) -> Result<Claimed, Answer> {
        if self.consume(StoreMethod::Claim) {
            return Err(Answer::ClaimFailed);
        }
        let at = (req.caller, req.key);
        let now = self.now;
        let reason = match self.records.get(&at) {
            None => ClaimReason::New,
            Some(r) if now >= r.expires_at => ClaimReason::AfterRetention,
            Some(ModelRecord {
                state: State::InProgress { lease_until, .. },
                ..
            }) if now >= *lease_until => ClaimReason::Takeover,
            Some(r) if r.same_as != req.body.class() => return Err(Answer::KeyReused),
            Some(ModelRecord {
                state: State::InProgress { .. },
                ..
            }) => return Err(Answer::InProgress),
            Some(ModelRecord {
                state: State::Completed { stored, .. },
                ..
            }) => return Err(Answer::Replay(*stored)),
        };

        self.claims += 1;
        self.runs += 1;
        self.records.insert(
            at,
            ModelRecord {
                same_as: req.body.class(),
                state: State::InProgress {
                    claim: self.claims,
                    lease_until: now + self.lease,
                },
                expires_at: now + self.retention,
            },
        );
        expected.runs.push((id, self.runs));
        Ok(Claimed {
            id,
            record: at,
            claim: self.claims,
            run: self.runs,
            script: req.script,
            reason,
        })
    }

    /// The handler of `claim` ends now: release on failure, commit and publish otherwise.
    fn finish(&mut self, claim: &Claimed, expected: &mut Expected) -> Answer {
        let status = match claim.script.outcome() {
            None => {
                self.unstored_runs.insert(claim.run);
                self.give_up(claim);
                return Answer::HandlerFailed;
            }
            Some(status) => status,
        };
        let (caller, key) = claim.record;
        let stored = StoredAnswer {
            status,
            run: claim.run,
            key,
            caller,
        };
        if status.is_server_error() && !self.store_server_errors {
            self.unstored_runs.insert(claim.run);
            self.give_up(claim);
            return Answer::Fresh {
                stored,
                reason: claim.reason,
            };
        }
        if self.consume(StoreMethod::Complete) {
            self.unstored_runs.insert(claim.run);
            self.give_up(claim);
            return Answer::CommitFailed;
        }
        let held = matches!(
            self.records.get(&claim.record),
            Some(ModelRecord { state: State::InProgress { claim: c, .. }, .. }) if *c == claim.claim
        );
        if !held {
            self.unstored_runs.insert(claim.run);
            self.fenced_runs.insert(claim.run);
            return Answer::LeaseLost;
        }

        let events = claim.script.stages_events();
        let mut published = false;
        if events {
            if self.refusals > 0 {
                self.refusals -= 1;
            } else {
                expected.batches.push(Batch {
                    claim: claim.claim,
                    run: claim.run,
                    key,
                    completed_at: self.now,
                });
                published = !self.consume(StoreMethod::MarkPublished);
            }
        }
        let record = self
            .records
            .get_mut(&claim.record)
            .expect("the record was just found held");
        record.state = State::Completed {
            claim: claim.claim,
            stored,
            events,
            published,
            completed_at: self.now,
        };
        Answer::Fresh {
            stored,
            reason: claim.reason,
        }
    }

    /// Gives up `claim`, unless the release call fails.
    fn give_up(&mut self, claim: &Claimed) {
        if self.consume(StoreMethod::Release) {
            return;
        }
        let held = matches!(
            self.records.get(&claim.record),
            Some(ModelRecord { state: State::InProgress { claim: c, .. }, .. }) if *c == claim.claim
        );
        if held {
            self.records.remove(&claim.record);
        }
    }

    /// Whether the next call of `method` fails, using up one armed failure if so.
    fn consume(&mut self, method: StoreMethod) -> bool {
        match self.armed.get_mut(&method) {
            Some(armed) if *armed > 0 => {
                *armed -= 1;
                true
            }
            _ => false,
        }
    }
}

/// How many events the standard handler stages per run.
pub const EVENTS_PER_RUN: usize = 2;
