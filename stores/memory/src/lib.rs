//! An in-memory [`Store`]: records live in maps behind locks and vanish with the process.
//!
//! It is the reference implementation of the [`Store`] contract, short enough to read in
//! one sitting, and the store to use in tests and for services that accept losing records
//! on restart. Records are spread over shards by key, each behind its own lock; a method
//! on one key takes its shard's lock once, so it is atomic with respect to every other
//! call on that key. Scans (purges, event listings) take one shard at a time, so they
//! never hold up requests for longer than one shard's share of the work.
//!
//! Each record is kept as a compact entry (a few hundred bytes for a small response; see
//! `Entry`) and rebuilt into a [`Record`] when asked for. The `Store` methods at the end
//! read as they would over whole `Record`s: that is where the contract is kept.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use cnerium_core::async_trait;
use cnerium_core::{
    ClaimOutcome, ClaimRequest, CompleteError, Completion, Event, Fence, Fingerprint,
    IdempotencyKey, PendingEvents, Record, RecordKey, RecordState, Scope, Store, StoreError,
    StoredResponse, Timestamp,
};
use hashbrown::HashTable;
use hashbrown::hash_table::Entry as Slot;
use http::{HeaderName, HeaderValue, StatusCode};
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
    /// Each slot holds a key's hash beside its boxed entry: the table rehashes every
    /// entry when it grows, and with the hash at hand it never reads the entries (nor
    /// runs their keys through SipHash again) to do so. A slot is 16 bytes, and the table
    /// keeps up to twice as many slots as entries.
    entries: HashTable<(u64, Box<Entry>)>,
}

impl Shard {
    fn find(&self, hash: u64, key: &RecordKey) -> Option<&Entry> {
        self.entries
            .find(hash, |(h, entry)| *h == hash && entry.has_key(key))
            .map(|(_, entry)| entry.as_ref())
    }

    fn find_mut(&mut self, hash: u64, key: &RecordKey) -> Option<&mut Entry> {
        self.entries
            .find_mut(hash, |(h, entry)| *h == hash && entry.has_key(key))
            .map(|(_, entry)| entry.as_mut())
    }
}

/// One record, laid out to be small: a store of a million records holds a million of
/// these, and what each one costs is what the store costs.
///
/// The fixed-size fields are inline; the record key and the stored response (headers and
/// body) are one block of bytes in one allocation, described at [`Entry::data`]. The
/// public [`Record`] is rebuilt from it when a caller asks, which costs a copy of the
/// body: a replay copies a few hundred bytes where keeping `Bytes` and `HeaderValue`s
/// would cost as many bytes of bookkeeping for every record held.
#[derive(Debug)]
struct Entry {
    fingerprint: Fingerprint,
    fence: Fence,
    created_at: Timestamp,
    expires_at: Timestamp,
    /// While the claim is in progress, when its lease runs out; once completed, when the
    /// completion was committed.
    at: Timestamp,
    /// `None` while the claim is in progress; the stored response's status once completed.
    status: Option<StatusCode>,
    events_published: bool,
    /// The record key: the operation, a flag byte (1 when a caller follows), the caller
    /// and the idempotency key, each string preceded by its length. Once completed, the
    /// response follows: the number of headers, each header's name and value preceded by
    /// their lengths, and the body, which runs to the end. Lengths are LEB128 varints.
    data: Box<[u8]>,
    /// Events the handler staged; an empty slice allocates nothing.
    events: Box<[Event]>,
}

impl Entry {
    /// The in-progress record a granted claim writes.
    fn claimed(request: &ClaimRequest, fence: Fence) -> Self {
        let mut data = Vec::with_capacity(key_len(&request.key));
        push_key(&mut data, &request.key);
        Self {
            fingerprint: request.fingerprint,
            fence,
            created_at: request.now,
            expires_at: request.expires_at,
            at: request.lease_until,
            status: None,
            events_published: false,
            data: data.into_boxed_slice(),
            events: Box::default(),
        }
    }

    /// Turns the claim into its completion.
    fn complete(&mut self, completion: Completion) {
        let Completion {
            response,
            events,
            completed_at,
            expires_at,
        } = completion;
        let key = &self.data[..self.key_end()];
        let mut size = key.len() + varint_len(response.headers.len()) + response.body.len();
        for (name, value) in &response.headers {
            size += varint_len(name.as_str().len()) + name.as_str().len();
            size += varint_len(value.len()) + value.len();
        }
        let mut data = Vec::with_capacity(size);
        data.extend_from_slice(key);
        push_varint(&mut data, response.headers.len());
        for (name, value) in &response.headers {
            push_part(&mut data, name.as_str().as_bytes());
            push_part(&mut data, value.as_bytes());
        }
        data.extend_from_slice(&response.body);
        self.data = data.into_boxed_slice();
        self.status = Some(response.status);
        self.events = events.into_boxed_slice();
        self.events_published = false;
        self.at = completed_at;
        self.expires_at = expires_at;
    }

    fn is_live(&self, now: Timestamp) -> bool {
        now < self.expires_at
    }

    /// Whether a claim at `now` may replace this record, as [`Record::is_claimable`]
    /// decides for the record it stands for.
    fn is_claimable(&self, now: Timestamp) -> bool {
        !self.is_live(now) || (self.status.is_none() && now >= self.at)
    }

    fn in_progress_under(&self, fence: Fence) -> bool {
        self.status.is_none() && self.fence == fence
    }

    fn completed_under(&self, fence: Fence) -> bool {
        self.status.is_some() && self.fence == fence
    }

    /// Whether this is the record of `key`, compared part by part without decoding.
    fn has_key(&self, key: &RecordKey) -> bool {
        let mut data = Reader(&self.data);
        let scope = key.scope();
        if data.part() != Some(scope.operation().as_bytes()) {
            return false;
        }
        let caller_matches = match (data.byte(), scope.caller()) {
            (Some(0), None) => true,
            (Some(1), Some(caller)) => data.part() == Some(caller.as_bytes()),
            _ => false,
        };
        caller_matches && data.part() == Some(key.key().as_str().as_bytes())
    }

    /// Where the record key ends in `data`.
    fn key_end(&self) -> usize {
        let mut data = Reader(&self.data);
        data.part();
        if data.byte() == Some(1) {
            data.part();
        }
        data.part();
        self.data.len() - data.0.len()
    }

    fn record_key(&self) -> RecordKey {
        let mut data = Reader(&self.data);
        let operation = data.text();
        let scope = match data.byte() {
            Some(1) => Scope::with_caller(operation, data.text()),
            _ => Scope::new(operation),
        };
        // The key was an `IdempotencyKey` when it was written.
        let key = IdempotencyKey::new(data.text()).expect("a stored key stays valid");
        RecordKey::new(scope, key)
    }

    /// The public form of this record.
    fn record(&self) -> Record {
        let state = match self.status {
            None => RecordState::InProgress {
                fence: self.fence,
                lease_until: self.at,
            },
            Some(status) => {
                let mut data = Reader(&self.data[self.key_end()..]);
                let count = data.varint().unwrap_or(0);
                let mut headers = Vec::with_capacity(count);
                for _ in 0..count {
                    let (Some(name), Some(value)) = (data.part(), data.part()) else {
                        break;
                    };
                    // Both were a valid `HeaderName` and `HeaderValue` when written.
                    let name = HeaderName::from_bytes(name).expect("a stored name stays valid");
                    let value = HeaderValue::from_bytes(value).expect("a stored value stays valid");
                    headers.push((name, value));
                }
                RecordState::Completed {
                    fence: self.fence,
                    response: StoredResponse {
                        status,
                        headers,
                        body: Bytes::copy_from_slice(data.0),
                    },
                    events: self.events.to_vec(),
                    events_published: self.events_published,
                    completed_at: self.at,
                }
            }
        };
        Record {
            fingerprint: self.fingerprint,
            state,
            created_at: self.created_at,
            expires_at: self.expires_at,
        }
    }
}

/// Bytes `push_key` writes for `key`.
fn key_len(key: &RecordKey) -> usize {
    let scope = key.scope();
    let part = |s: &str| varint_len(s.len()) + s.len();
    part(scope.operation()) + 1 + scope.caller().map_or(0, part) + part(key.key().as_str())
}

fn push_key(out: &mut Vec<u8>, key: &RecordKey) {
    let scope = key.scope();
    push_part(out, scope.operation().as_bytes());
    match scope.caller() {
        Some(caller) => {
            out.push(1);
            push_part(out, caller.as_bytes());
        }
        None => out.push(0),
    }
    push_part(out, key.key().as_str().as_bytes());
}

fn push_part(out: &mut Vec<u8>, part: &[u8]) {
    push_varint(out, part.len());
    out.extend_from_slice(part);
}

fn push_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn varint_len(n: usize) -> usize {
    (usize::BITS - (n | 1).leading_zeros()).div_ceil(7) as usize
}

/// Reads back what the `push_*` functions wrote. The bytes were written by this module,
/// so a read past the end means a bug; it yields `None` rather than panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn varint(&mut self) -> Option<usize> {
        let mut n = 0usize;
        let mut shift = 0;
        loop {
            let byte = self.byte()?;
            n |= usize::from(byte & 0x7f).checked_shl(shift)?;
            if byte < 0x80 {
                return Some(n);
            }
            shift += 7;
        }
    }

    fn part(&mut self) -> Option<&'a [u8]> {
        let len = self.varint()?;
        if len > self.0.len() {
            return None;
        }
        let (part, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(part)
    }

    /// A part that was written from a `&str`.
    fn text(&mut self) -> String {
        String::from_utf8_lossy(self.part().unwrap_or_default()).into_owned()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of records held, live or expired but not yet purged.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).entries.len()).sum()
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hash of `key` and its shard, locked.
    fn shard(&self, key: &RecordKey) -> (u64, MutexGuard<'_, Shard>) {
        let hash = self.hasher.hash_one(key);
        // The table picks buckets with the low bits of the hash and tells keys in a bucket
        // group apart by the top seven; the shard takes bits from the middle, which
        // neither uses, so that each shard's table still sees well spread hashes in both.
        let index = (hash >> 32) as usize % self.shards.len();
        (hash, lock(&self.shards[index]))
    }
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
        // Fences are taken under the shard's lock, so one key's fences grow in the order
        // its claims are granted; other shards may spend fences in between.
        let fence = || Fence(self.last_fence.fetch_add(1, Ordering::SeqCst) + 1);
        let slot = shard.entries.entry(
            hash,
            |(h, entry)| *h == hash && entry.has_key(&request.key),
            |(h, _)| *h,
        );
        let (fence, takeover) = match slot {
            Slot::Occupied(existing) if !existing.get().1.is_claimable(request.now) => {
                return Ok(ClaimOutcome::Existing(existing.get().1.record()));
            }
            Slot::Occupied(mut existing) => {
                let entry = &mut existing.get_mut().1;
                let takeover = entry.is_live(request.now) && entry.status.is_none();
                let fence = fence();
                **entry = Entry::claimed(&request, fence);
                (fence, takeover)
            }
            Slot::Vacant(slot) => {
                let fence = fence();
                slot.insert((hash, Box::new(Entry::claimed(&request, fence))));
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
        match shard.find_mut(hash, key) {
            Some(entry) if entry.in_progress_under(fence) => {
                entry.complete(completion);
                Ok(())
            }
            _ => Err(CompleteError::Fenced),
        }
    }

    async fn release(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError> {
        let (hash, mut shard) = self.shard(key);
        if let Ok(found) = shard
            .entries
            .find_entry(hash, |(h, entry)| *h == hash && entry.has_key(key))
            && found.get().1.in_progress_under(fence)
        {
            found.remove();
        }
        Ok(())
    }

    async fn mark_published(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError> {
        let (hash, mut shard) = self.shard(key);
        if let Some(entry) = shard.find_mut(hash, key)
            && entry.completed_under(fence)
        {
            entry.events_published = true;
        }
        Ok(())
    }

    async fn pending_events(&self, limit: usize) -> Result<Vec<PendingEvents>, StoreError> {
        let mut pending: Vec<(Timestamp, PendingEvents)> = Vec::new();
        for shard in &self.shards {
            let shard = lock(shard);
            pending.extend(shard.entries.iter().filter_map(|(_, entry)| {
                let unpublished =
                    entry.status.is_some() && !entry.events_published && !entry.events.is_empty();
                unpublished.then(|| {
                    (
                        entry.at,
                        PendingEvents {
                            key: entry.record_key(),
                            fence: entry.fence,
                            events: entry.events.to_vec(),
                        },
                    )
                })
            }));
        }
        pending.sort_by_key(|(completed_at, p)| (*completed_at, p.fence));
        pending.truncate(limit);
        Ok(pending.into_iter().map(|(_, p)| p).collect())
    }

    async fn lookup(&self, key: &RecordKey, now: Timestamp) -> Result<Option<Record>, StoreError> {
        let (hash, shard) = self.shard(key);
        Ok(shard
            .find(hash, key)
            .filter(|entry| entry.is_live(now))
            .map(Entry::record))
    }

    async fn events_since(&self, since: Timestamp, limit: usize) -> Result<Vec<Event>, StoreError> {
        // Each shard gives its first `limit` events at or after `since`; the first `limit`
        // of all of them are among those.
        let mut completed: Vec<(Timestamp, Fence, Vec<Event>)> = Vec::new();
        for shard in &self.shards {
            let shard = lock(shard);
            let mut found: Vec<(Timestamp, Fence, &[Event])> = shard
                .entries
                .iter()
                .filter(|(_, entry)| {
                    entry.status.is_some() && entry.at >= since && !entry.events.is_empty()
                })
                .map(|(_, entry)| (entry.at, entry.fence, &entry.events[..]))
                .collect();
            found.sort_by_key(|(completed_at, fence, _)| (*completed_at, *fence));
            let mut taken = 0;
            for (completed_at, fence, events) in found {
                if taken >= limit {
                    break;
                }
                taken += events.len();
                completed.push((completed_at, fence, events.to_vec()));
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
            let before = shard.entries.len();
            shard.entries.retain(|(_, entry)| entry.is_live(now));
            removed += (before - shard.entries.len()) as u64;
            // A table keeps its slots when entries leave; give most of them back once
            // a purge has emptied it to a quarter.
            if shard.entries.len() < shard.entries.capacity() / 4 {
                shard.entries.shrink_to_fit(|(h, _)| *h);
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_executor::block_on;

    use super::*;

    fn key(scope: Scope, key: &str) -> RecordKey {
        RecordKey::new(scope, IdempotencyKey::new(key).unwrap())
    }

    fn claim(store: &MemoryStore, key: &RecordKey, now: Timestamp) -> ClaimOutcome {
        block_on(store.claim(ClaimRequest {
            key: key.clone(),
            fingerprint: Fingerprint::from_parts(1, [7; 32]),
            now,
            lease_until: now.saturating_add(Duration::from_secs(30)),
            expires_at: now.saturating_add(Duration::from_secs(3600)),
        }))
        .unwrap()
    }

    #[test]
    fn varint_lengths_match_what_is_written() {
        for n in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as usize,
            usize::MAX,
        ] {
            let mut out = Vec::new();
            push_varint(&mut out, n);
            assert_eq!(out.len(), varint_len(n), "{n}");
            assert_eq!(Reader(&out).varint(), Some(n), "{n}");
        }
    }

    #[test]
    fn keys_whose_parts_concatenate_alike_are_distinct_records() {
        let store = MemoryStore::new();
        let now = Timestamp::from_millis(1_000);
        let keys = [
            key(Scope::new("ab"), "c"),
            key(Scope::new("a"), "bc"),
            key(Scope::with_caller("a", ""), "bc"),
            key(Scope::with_caller("a", "b"), "c"),
            key(Scope::with_caller("ab", "c"), "c"),
        ];
        for k in &keys {
            assert!(
                matches!(claim(&store, k, now), ClaimOutcome::Claimed { .. }),
                "{k}"
            );
        }
        assert_eq!(store.len(), keys.len());
        for k in &keys {
            assert!(
                matches!(claim(&store, k, now), ClaimOutcome::Existing(_)),
                "{k}"
            );
        }
    }

    #[test]
    fn a_completed_record_reads_back_exactly_as_it_was_written() {
        let store = MemoryStore::new();
        let now = Timestamp::from_millis(5_000);
        let k = key(Scope::with_caller("orders.create", "tenant-é"), "k-1");
        let ClaimOutcome::Claimed { fence, .. } = claim(&store, &k, now) else {
            panic!("a new key is claimed");
        };
        let response = StoredResponse {
            status: StatusCode::ACCEPTED,
            headers: vec![
                (
                    HeaderName::from_static("set-cookie"),
                    HeaderValue::from_static("a=1"),
                ),
                (
                    HeaderName::from_static("set-cookie"),
                    HeaderValue::from_static("b=2"),
                ),
                (
                    HeaderName::from_static("x-long"),
                    HeaderValue::from_bytes(&[b'v'; 300]).unwrap(),
                ),
                (
                    HeaderName::from_static("x-opaque"),
                    HeaderValue::from_bytes(b"\xfe\xff").unwrap(),
                ),
            ],
            body: Bytes::from_static(b"\x00{\"id\":1}\xff"),
        };
        let event = Event::new("order.created", None, 1, now).unwrap();
        let completion = Completion {
            response: response.clone(),
            events: vec![event.clone()],
            completed_at: Timestamp::from_millis(5_010),
            expires_at: Timestamp::from_millis(9_000),
        };
        block_on(store.complete(&k, fence, completion)).unwrap();

        let record = block_on(store.lookup(&k, now))
            .unwrap()
            .expect("the record is live");
        assert_eq!(
            record,
            Record {
                fingerprint: Fingerprint::from_parts(1, [7; 32]),
                state: RecordState::Completed {
                    fence,
                    response,
                    events: vec![event.clone()],
                    events_published: false,
                    completed_at: Timestamp::from_millis(5_010),
                },
                created_at: now,
                expires_at: Timestamp::from_millis(9_000),
            }
        );
        let pending = block_on(store.pending_events(10)).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].key, k);
        assert_eq!(pending[0].events, vec![event]);
    }
}
