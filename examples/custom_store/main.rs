//! A store written in application code, proven by the testkit in a handful of lines.
//!
//! ```text
//! cargo run --example custom_store
//! ```
//!
//! `BTreeStore` keeps records in a sorted map behind one lock. Every method takes the lock
//! once, so each is atomic with respect to the others, which is what the `Store` contract
//! asks. `main` runs the conformance suite (every rule of the trait's documentation) and
//! the model-based properties (random schedules of retries, concurrency, clock jumps,
//! faults and restarts through the real engine) against it, and prints the report.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Mutex, MutexGuard};

use cnerium_core::async_trait;
use cnerium_core::{
    ClaimOutcome, ClaimRequest, CompleteError, Completion, Fence, PendingEvents, Record, RecordKey,
    RecordState, Store, StoreError, Timestamp,
};
use cnerium_testkit::conformance;
use cnerium_testkit::properties;

/// Records in a `BTreeMap` behind a mutex; they vanish with the process.
#[derive(Debug, Default)]
pub struct BTreeStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    records: BTreeMap<RecordKey, Record>,
    /// Fences are counted across all keys, so they also grow per key across purges.
    last_fence: u64,
}

impl BTreeStore {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No method panics while holding the lock, so a poisoned lock still guards
        // consistent data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether `record` is in progress under `fence`.
fn held_under(record: Option<&Record>, fence: Fence) -> bool {
    matches!(
        record,
        Some(Record { state: RecordState::InProgress { fence: f, .. }, .. }) if *f == fence
    )
}

#[async_trait]
impl Store for BTreeStore {
    async fn claim(&self, request: ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        let mut inner = self.lock();
        let takeover = match inner.records.get(&request.key) {
            Some(existing) if !existing.is_claimable(request.now) => {
                return Ok(ClaimOutcome::Existing(existing.clone()));
            }
            Some(existing) => {
                existing.is_live(request.now)
                    && matches!(existing.state, RecordState::InProgress { .. })
            }
            None => false,
        };
        inner.last_fence += 1;
        let fence = Fence(inner.last_fence);
        let record = request.in_progress_record(fence);
        inner.records.insert(request.key, record);
        Ok(ClaimOutcome::Claimed { fence, takeover })
    }

    async fn complete(
        &self,
        key: &RecordKey,
        fence: Fence,
        completion: Completion,
    ) -> Result<(), CompleteError> {
        let mut inner = self.lock();
        let record = match inner.records.get_mut(key) {
            Some(record) if held_under(Some(record), fence) => record,
            _ => return Err(CompleteError::Fenced),
        };
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
        let mut inner = self.lock();
        if held_under(inner.records.get(key), fence) {
            inner.records.remove(key);
        }
        Ok(())
    }

    async fn mark_published(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if let Some(Record {
            state:
                RecordState::Completed {
                    fence: f,
                    events_published,
                    ..
                },
            ..
        }) = inner.records.get_mut(key)
            && *f == fence
        {
            *events_published = true;
        }
        Ok(())
    }

    async fn pending_events(&self, limit: usize) -> Result<Vec<PendingEvents>, StoreError> {
        let inner = self.lock();
        let mut pending: Vec<(Timestamp, PendingEvents)> = inner
            .records
            .iter()
            .filter_map(|(key, record)| match &record.state {
                RecordState::Completed {
                    fence,
                    events,
                    events_published: false,
                    completed_at,
                    ..
                } if !events.is_empty() => Some((
                    *completed_at,
                    PendingEvents {
                        key: key.clone(),
                        fence: *fence,
                        events: events.clone(),
                    },
                )),
                _ => None,
            })
            .collect();
        pending.sort_by_key(|(completed_at, p)| (*completed_at, p.fence));
        Ok(pending.into_iter().take(limit).map(|(_, p)| p).collect())
    }

    async fn lookup(&self, key: &RecordKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        let inner = self.lock();
        Ok(inner.records.get(key).filter(|r| r.is_live(now)).cloned())
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let before = inner.records.len();
        inner.records.retain(|_, record| record.is_live(now));
        Ok((before - inner.records.len()) as u64)
    }
}

fn main() -> ExitCode {
    // Every rule of the `Store` documentation, each on a fresh store.
    let report = conformance::check(BTreeStore::default);
    println!("{report}");

    // Random schedules through the real engine, compared with the reference model.
    let properties = properties::check_store(BTreeStore::default, properties::Search::cases(64));
    match (&properties, report.is_ok()) {
        (Ok(()), true) => {
            println!("the model-based properties hold on 64 random schedules");
            ExitCode::SUCCESS
        }
        (Ok(()), false) => ExitCode::FAILURE,
        (Err(failure), _) => {
            println!("{failure}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_btree_store_keeps_the_store_contract() {
        conformance::run(BTreeStore::default);
    }

    #[test]
    fn the_btree_store_keeps_the_retry_properties() {
        let search = properties::Search::cases(properties::cases().min(64));
        if let Err(failure) = properties::check_store(BTreeStore::default, search) {
            panic!("{failure}");
        }
    }
}
