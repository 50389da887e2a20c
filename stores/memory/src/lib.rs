//! An in-memory [`Store`]: records live in maps behind locks and vanish with the process.
//!
//! It is the reference implementation of the [`Store`] contract, short enough to read in
//! one sitting, and the store to use in tests and for services that accept losing records
//! on restart. Records are spread over shards by key, each behind its own lock; a method
//! on one key takes its shard's lock once, so it is atomic with respect to every other
//! call on that key. Scans (purges, event listings) take one shard at a time, so they
//! never hold up requests for longer than one shard's share of the work.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::collections::hash_map::{Entry, RandomState};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use cnerium_core::async_trait;
use cnerium_core::{
    ClaimOutcome, ClaimRequest, CompleteError, Completion, Event, Fence, PendingEvents, Record,
    RecordKey, RecordState, Store, StoreError, Timestamp,
};

/// Shards of a store: enough that two cores rarely wait for each other and that a purge
/// holds each lock for a small share of the records.
const SHARDS: usize = 32;

/// Records in memory.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    /// Hashes record keys, keyed per store so that clients choosing idempotency keys
    /// cannot aim at one bucket.
    hasher: RandomState,
    /// The last fence granted by this store; fences are unique across all keys, so they
    /// also grow per key across purges. Taken under the key's shard lock, so the fences
    /// of one key grow in the order its claims are granted.
    last_fence: AtomicU64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            last_fence: AtomicU64::new(0),
        }
    }
}

#[derive(Debug, Default)]
struct Shard {
    /// Records are boxed: the table reserves up to twice as many slots as it holds, and a
    /// slot of a key and a pointer is a quarter of one holding the record itself.
    records: HashMap<Hashed, Box<Record>, KeepHash>,
}

/// A record key with its hash, computed once when the record is inserted.
///
/// The table rehashes every key each time it grows; with the keys' strings run through
/// SipHash again, that was a third of a claim's time in a store of a million records.
#[derive(Debug)]
struct Hashed {
    hash: u64,
    key: RecordKey,
}

/// What the table looks keys up by: a stored [`Hashed`] key, or a borrowed key with its
/// hash when a method is given `&RecordKey`.
trait Lookup {
    fn hash_value(&self) -> u64;
    fn record_key(&self) -> &RecordKey;
}

impl Lookup for Hashed {
    fn hash_value(&self) -> u64 {
        self.hash
    }

    fn record_key(&self) -> &RecordKey {
        &self.key
    }
}

impl Lookup for (u64, &RecordKey) {
    fn hash_value(&self) -> u64 {
        self.0
    }

    fn record_key(&self) -> &RecordKey {
        self.1
    }
}

impl<'a> Borrow<dyn Lookup + 'a> for Hashed {
    fn borrow(&self) -> &(dyn Lookup + 'a) {
        self
    }
}

impl Hash for dyn Lookup + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash_value());
    }
}

impl PartialEq for dyn Lookup + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.hash_value() == other.hash_value() && self.record_key() == other.record_key()
    }
}

impl Eq for dyn Lookup + '_ {}

impl Hash for Hashed {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialEq for Hashed {
    fn eq(&self, other: &Self) -> bool {
        (self as &dyn Lookup) == (other as &dyn Lookup)
    }
}

impl Eq for Hashed {}

/// Hands the precomputed hash of a [`Hashed`] key to the table as it is.
#[derive(Clone, Copy, Debug, Default)]
struct KeepHash;

impl BuildHasher for KeepHash {
    type Hasher = KeptHash;

    fn build_hasher(&self) -> KeptHash {
        KeptHash(0)
    }
}

struct KeptHash(u64);

impl Hasher for KeptHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is ever called, by the `Hash` impls above; fold anything else
        // in rather than lose it.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of records held, live or expired but not yet purged.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).records.len()).sum()
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hash of `key` and its shard, locked.
    fn shard(&self, key: &RecordKey) -> (u64, MutexGuard<'_, Shard>) {
        let hash = self.hasher.hash_one(key);
        // The table uses the low bits of the hash for its buckets; the shard takes the
        // high ones, so that each shard's table still sees well spread hashes.
        let index = (hash >> 59) as usize % self.shards.len();
        (hash, lock(&self.shards[index]))
    }
}

/// `record`, an in-progress record made before its fence was known, with `fence`.
fn with_fence(mut record: Box<Record>, fence: Fence) -> Box<Record> {
    if let RecordState::InProgress { fence: f, .. } = &mut record.state {
        *f = fence;
    }
    record
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // No method panics while holding a lock, so a poisoned lock still guards consistent
    // data.
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl Store for MemoryStore {
    async fn claim(&self, request: ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        let (hash, mut shard) = self.shard(&request.key);

        // The record is made before the lookup, which takes the key; its fence is spent
        // only if the claim is granted. One lookup serves both the check and the insert.
        // Other shards may spend fences meanwhile: the fence is made unique once granted.
        let record = Box::new(request.in_progress_record(Fence(0)));
        let key = Hashed {
            hash,
            key: request.key,
        };
        let fence = || Fence(self.last_fence.fetch_add(1, Ordering::SeqCst) + 1);
        let (fence, takeover) = match shard.records.entry(key) {
            Entry::Occupied(existing) if !existing.get().is_claimable(request.now) => {
                return Ok(ClaimOutcome::Existing(Record::clone(existing.get())));
            }
            Entry::Occupied(mut existing) => {
                let takeover = existing.get().is_live(request.now)
                    && matches!(existing.get().state, RecordState::InProgress { .. });
                let fence = fence();
                existing.insert(with_fence(record, fence));
                (fence, takeover)
            }
            Entry::Vacant(slot) => {
                let fence = fence();
                slot.insert(with_fence(record, fence));
                (fence, false)
            }
        };
        Ok(ClaimOutcome::Claimed { fence, takeover })
    }

    async fn complete(
        &self,
        key: &RecordKey,
        fence: Fence,
        completion: Completion,
    ) -> Result<(), CompleteError> {
        let (hash, mut shard) = self.shard(key);
        let Some(record) = shard.records.get_mut(&(hash, key) as &dyn Lookup) else {
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
        let (hash, mut shard) = self.shard(key);
        let lookup = (hash, key);
        let held = matches!(
            shard.records.get(&lookup as &dyn Lookup).map(Box::as_ref),
            Some(Record { state: RecordState::InProgress { fence: f, .. }, .. }) if *f == fence
        );
        if held {
            shard.records.remove(&lookup as &dyn Lookup);
        }
        Ok(())
    }

    async fn mark_published(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError> {
        let (hash, mut shard) = self.shard(key);
        if let Some(Record {
            state:
                RecordState::Completed {
                    fence: f,
                    events_published,
                    ..
                },
            ..
        }) = shard
            .records
            .get_mut(&(hash, key) as &dyn Lookup)
            .map(Box::as_mut)
            && *f == fence
        {
            *events_published = true;
        }
        Ok(())
    }

    async fn pending_events(&self, limit: usize) -> Result<Vec<PendingEvents>, StoreError> {
        let mut pending: Vec<(Timestamp, PendingEvents)> = Vec::new();
        for shard in &self.shards {
            let shard = lock(shard);
            pending.extend(
                shard
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
                                key: key.key.clone(),
                                fence: *fence,
                                events: events.clone(),
                            },
                        )),
                        _ => None,
                    }),
            );
        }
        pending.sort_by_key(|(completed_at, p)| (*completed_at, p.fence));
        pending.truncate(limit);
        Ok(pending.into_iter().map(|(_, p)| p).collect())
    }

    async fn lookup(&self, key: &RecordKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        let (hash, shard) = self.shard(key);
        Ok(shard
            .records
            .get(&(hash, key) as &dyn Lookup)
            .filter(|r| r.is_live(now))
            .map(|r| Record::clone(r)))
    }

    async fn events_since(&self, since: Timestamp, limit: usize) -> Result<Vec<Event>, StoreError> {
        // Each shard gives its first `limit` events at or after `since`; the first `limit`
        // of all of them are among those.
        let mut completed: Vec<(Timestamp, Fence, Vec<Event>)> = Vec::new();
        for shard in &self.shards {
            let shard = lock(shard);
            let mut found: Vec<(Timestamp, Fence, &Vec<Event>)> = shard
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
            found.sort_by_key(|(completed_at, fence, _)| (*completed_at, *fence));
            let mut taken = 0;
            for (completed_at, fence, events) in found {
                if taken >= limit {
                    break;
                }
                taken += events.len();
                completed.push((completed_at, fence, events.clone()));
            }
        }
        completed.sort_by_key(|(completed_at, fence, _)| (*completed_at, *fence));
        Ok(completed
            .into_iter()
            .flat_map(|(_, _, events)| events)
            .take(limit)
            .collect())
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        let mut removed = 0;
        for shard in &self.shards {
            let mut shard = lock(shard);
            let before = shard.records.len();
            shard.records.retain(|_, record| record.is_live(now));
            removed += (before - shard.records.len()) as u64;
        }
        Ok(removed)
    }
}
