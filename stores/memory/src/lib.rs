//! An in-memory [`Store`]: records live in a map behind one lock and vanish with the
//! process.
//!
//! It is the reference implementation of the [`Store`] contract, short enough to read in
//! one sitting, and the store to use in tests and for services that accept losing records
//! on restart. Every method takes the lock once, so each is atomic with respect to all the
//! others.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Mutex, MutexGuard};

use cnerium_core::async_trait;
use cnerium_core::{
    ClaimOutcome, ClaimRequest, CompleteError, Completion, Event, Fence, PendingEvents, Record,
    RecordKey, RecordState, Store, StoreError, Timestamp,
};

/// Records in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Records are boxed: the table reserves up to twice as many slots as it holds, and a
    /// slot of a key and a pointer is a quarter of one holding the record itself.
    records: HashMap<RecordKey, Box<Record>>,
    /// The last fence granted by this store; fences are unique across all keys, so they
    /// also grow per key across purges.
    last_fence: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of records held, live or expired but not yet purged.
    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No method panics while holding the lock, so a poisoned lock still guards
        // consistent data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn claim(&self, request: ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        let mut inner = self.lock();
        let inner = &mut *inner;

        // The record is made before the lookup, which takes the key; its fence is spent
        // only if the claim is granted. One lookup serves both the check and the insert.
        let fence = Fence(inner.last_fence + 1);
        let record = Box::new(request.in_progress_record(fence));
        let takeover = match inner.records.entry(request.key) {
            Entry::Occupied(existing) if !existing.get().is_claimable(request.now) => {
                return Ok(ClaimOutcome::Existing(Record::clone(existing.get())));
            }
            Entry::Occupied(mut existing) => {
                let takeover = existing.get().is_live(request.now)
                    && matches!(existing.get().state, RecordState::InProgress { .. });
                existing.insert(record);
                takeover
            }
            Entry::Vacant(slot) => {
                slot.insert(record);
                false
            }
        };
        inner.last_fence = fence.0;
        Ok(ClaimOutcome::Claimed { fence, takeover })
    }

    async fn complete(
        &self,
        key: &RecordKey,
        fence: Fence,
        completion: Completion,
    ) -> Result<(), CompleteError> {
        let mut inner = self.lock();
        let Some(record) = inner.records.get_mut(key) else {
            return Err(CompleteError::Fenced);
        };
        if !matches!(record.state, RecordState::InProgress { fence: f, .. } if f == fence) {
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
        let mut inner = self.lock();
        let held = matches!(
            inner.records.get(key).map(Box::as_ref),
            Some(Record { state: RecordState::InProgress { fence: f, .. }, .. }) if *f == fence
        );
        if held {
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
        }) = inner.records.get_mut(key).map(Box::as_mut)
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
        pending.truncate(limit);
        Ok(pending.into_iter().map(|(_, p)| p).collect())
    }

    async fn lookup(&self, key: &RecordKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .records
            .get(key)
            .filter(|r| r.is_live(now))
            .map(|r| Record::clone(r)))
    }

    async fn events_since(&self, since: Timestamp, limit: usize) -> Result<Vec<Event>, StoreError> {
        let inner = self.lock();
        let mut completed: Vec<(Timestamp, Fence, &Vec<Event>)> = inner
            .records
            .values()
            .filter_map(|record| match &record.state {
                RecordState::Completed {
                    fence,
                    events,
                    completed_at,
                    ..
                } if *completed_at >= since && !events.is_empty() => {
                    Some((*completed_at, *fence, events))
                }
                _ => None,
            })
            .collect();
        completed.sort_by_key(|(completed_at, fence, _)| (*completed_at, *fence));
        Ok(completed
            .into_iter()
            .flat_map(|(_, _, events)| events.iter().cloned())
            .take(limit)
            .collect())
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let before = inner.records.len();
        inner.records.retain(|_, record| record.is_live(now));
        Ok((before - inner.records.len()) as u64)
    }
}
