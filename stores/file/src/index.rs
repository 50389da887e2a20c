//! The in-memory index: one small slot per record key, pointing into a segment for
//! completed records. Responses stay on disk.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cnerium_core::{Fence, Fingerprint, Record, RecordState, Timestamp};

/// A record key as [`RecordKey::encode`](cnerium_core::RecordKey::encode) spells it, shared
/// between the index maps.
pub(crate) type Key = Arc<[u8]>;

/// Where a frame lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Location {
    pub(crate) segment: u32,
    pub(crate) len: u32,
    pub(crate) offset: u64,
}

/// An in-progress claim.
#[derive(Debug)]
pub(crate) struct Claim {
    pub(crate) fingerprint: Fingerprint,
    pub(crate) fence: u64,
    pub(crate) created_at: u64,
    pub(crate) lease_until: u64,
    pub(crate) expires_at: u64,
    /// A completion under this fence is being written; the claim can be neither taken over
    /// nor completed again until the writer reports.
    pub(crate) committing: bool,
    /// Claims that must know how the commit ends before they can answer; dropping the
    /// senders wakes them.
    pub(crate) waiters: Vec<futures_channel::oneshot::Sender<()>>,
}

impl Claim {
    pub(crate) fn record(&self) -> Record {
        Record {
            fingerprint: self.fingerprint,
            state: RecordState::InProgress {
                fence: Fence(self.fence),
                lease_until: Timestamp::from_millis(self.lease_until),
            },
            created_at: Timestamp::from_millis(self.created_at),
            expires_at: Timestamp::from_millis(self.expires_at),
        }
    }
}

/// A completed record: its frame's location and what the index must answer without
/// reading it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Committed {
    pub(crate) location: Location,
    pub(crate) fence: u64,
    pub(crate) expires_at: u64,
    pub(crate) completed_at: u64,
    pub(crate) has_events: bool,
    pub(crate) published: bool,
}

/// What the index holds for one key.
#[derive(Debug)]
pub(crate) enum Slot {
    Claimed(Box<Claim>),
    Committed(Committed),
}

impl Slot {
    pub(crate) fn fence(&self) -> u64 {
        match self {
            Self::Claimed(claim) => claim.fence,
            Self::Committed(committed) => committed.fence,
        }
    }

    fn expires_at(&self) -> u64 {
        match self {
            Self::Claimed(claim) => claim.expires_at,
            Self::Committed(committed) => committed.expires_at,
        }
    }

    fn pending_events(&self) -> Option<(u64, u64)> {
        match self {
            Self::Committed(c) if c.has_events && !c.published => Some((c.completed_at, c.fence)),
            _ => None,
        }
    }
}

/// Bytes of one segment file, and how many of them belong to records the index points at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SegmentUsage {
    pub(crate) total: u64,
    pub(crate) live: u64,
    pub(crate) records: u64,
}

/// Every record key the store knows, with the orders that purging and recovery need.
#[derive(Debug, Default)]
pub(crate) struct Index {
    slots: HashMap<Key, Slot>,
    /// Every slot by (expires_at, fence); fences are unique, so entries never collide.
    by_expiry: BTreeMap<(u64, u64), Key>,
    /// Committed slots with unpublished events by (completed_at, fence).
    pending: BTreeMap<(u64, u64), Key>,
    usage: HashMap<u32, SegmentUsage>,
    /// The next fence to grant.
    pub(crate) next_fence: u64,
}

impl Index {
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn slot(&self, key: &[u8]) -> Option<&Slot> {
        self.slots.get(key)
    }

    pub(crate) fn claim_mut(&mut self, key: &[u8]) -> Option<&mut Claim> {
        match self.slots.get_mut(key) {
            Some(Slot::Claimed(claim)) => Some(claim),
            _ => None,
        }
    }

    /// The shared key for `key`: the index's own copy when it has one.
    pub(crate) fn shared_key(&self, key: &[u8]) -> Key {
        match self.slots.get_key_value(key) {
            Some((shared, _)) => shared.clone(),
            None => Arc::from(key),
        }
    }

    /// Puts `slot` in place of whatever `key` held, keeping every order and count in step.
    pub(crate) fn insert(&mut self, key: Key, slot: Slot) -> Option<Slot> {
        // Detach first: the new slot may share the old one's order keys (same fence).
        let old = self.slots.remove(&*key);
        if let Some(old) = &old {
            self.detach(old);
        }
        self.attach(&key, &slot);
        self.slots.insert(key, slot);
        old
    }

    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<Slot> {
        let old = self.slots.remove(key)?;
        self.detach(&old);
        Some(old)
    }

    fn attach(&mut self, key: &Key, slot: &Slot) {
        self.by_expiry
            .insert((slot.expires_at(), slot.fence()), key.clone());
        if let Some(order) = slot.pending_events() {
            self.pending.insert(order, key.clone());
        }
        if let Slot::Committed(c) = slot {
            let usage = self.usage.entry(c.location.segment).or_default();
            usage.live += u64::from(c.location.len);
            usage.records += 1;
        }
    }

    fn detach(&mut self, slot: &Slot) {
        self.by_expiry.remove(&(slot.expires_at(), slot.fence()));
        if let Some(order) = slot.pending_events() {
            self.pending.remove(&order);
        }
        if let Slot::Committed(c) = slot {
            if let Some(usage) = self.usage.get_mut(&c.location.segment) {
                usage.live = usage.live.saturating_sub(u64::from(c.location.len));
                usage.records = usage.records.saturating_sub(1);
            }
        }
    }

    /// Turns the committing claim of `key` under `fence` into `committed`. Returns false
    /// when the claim is gone (purged while the completion was being written).
    pub(crate) fn commit(&mut self, key: &Key, fence: u64, committed: Committed) -> bool {
        match self.slots.get(&**key) {
            Some(Slot::Claimed(claim)) if claim.fence == fence => {
                self.insert(key.clone(), Slot::Committed(committed));
                true
            }
            _ => false,
        }
    }

    /// Lets the claim of `key` under `fence` be completed or released again after a failed
    /// write.
    pub(crate) fn abort_commit(&mut self, key: &[u8], fence: u64) {
        if let Some(claim) = self.claim_mut(key) {
            if claim.fence == fence {
                claim.committing = false;
                claim.waiters.clear();
            }
        }
    }

    /// Marks the events of the completion of `key` under `fence` published. Returns true
    /// when that changed anything and the completion has events.
    pub(crate) fn set_published(&mut self, key: &[u8], fence: u64) -> bool {
        let Some((key, Slot::Committed(committed))) = self.slots.get_key_value(key) else {
            return false;
        };
        if committed.fence != fence || committed.published {
            return false;
        }
        let key = key.clone();
        let mut updated = *committed;
        updated.published = true;
        self.insert(key, Slot::Committed(updated));
        updated.has_events
    }

    /// Up to `limit` committed records with unpublished events, oldest first. Expired
    /// records count until they are purged, as in the reference store.
    pub(crate) fn pending(&self, limit: usize) -> Vec<(Key, Committed)> {
        self.pending
            .values()
            .filter_map(|key| match self.slots.get(key) {
                Some(Slot::Committed(c)) => Some((key.clone(), *c)),
                _ => None,
            })
            .take(limit)
            .collect()
    }

    /// Committed records with events completed at or after `since`, by (completed_at,
    /// fence), at most `limit` of them.
    ///
    /// Scans every slot: catch-up after a reconnect is rare, and a dedicated order would
    /// cost memory on every record.
    pub(crate) fn completed_since(&self, since: u64, limit: usize) -> Vec<(Key, Committed)> {
        let mut found: Vec<(Key, Committed)> = self
            .slots
            .iter()
            .filter_map(|(key, slot)| match slot {
                Slot::Committed(c) if c.has_events && c.completed_at >= since => {
                    Some((key.clone(), *c))
                }
                _ => None,
            })
            .collect();
        found.sort_unstable_by_key(|(_, c)| (c.completed_at, c.fence));
        found.truncate(limit);
        found
    }

    /// Removes up to `max` records expired at `now`, except claims whose completion is
    /// being written. Returns how many were removed and whether more may be left.
    pub(crate) fn purge_some(&mut self, now: u64, max: usize) -> (u64, bool) {
        let due: Vec<((u64, u64), Key)> = self
            .by_expiry
            .range(..=(now, u64::MAX))
            .take(max)
            .map(|(order, key)| (*order, key.clone()))
            .collect();
        let more = due.len() == max;
        let mut removed = 0;
        for (order, key) in due {
            let (_, fence) = order;
            let busy = matches!(self.slots.get(&*key), Some(Slot::Claimed(c)) if c.committing);
            if busy {
                continue;
            }
            match self.slots.get(&*key) {
                Some(slot) if slot.fence() == fence => {
                    self.remove(&key);
                    removed += 1;
                }
                // Cannot happen while the orders are kept in step; drop the stray entry so
                // purging always makes progress.
                _ => {
                    self.by_expiry.remove(&order);
                }
            }
        }
        (removed, more && removed > 0)
    }

    /// Draws a fence below `reserved`, or `None` when every fence below it is used.
    pub(crate) fn take_fence(&mut self, reserved: u64) -> Option<u64> {
        if self.next_fence >= reserved {
            return None;
        }
        let fence = self.next_fence;
        self.next_fence += 1;
        Some(fence)
    }

    pub(crate) fn usage(&self) -> &HashMap<u32, SegmentUsage> {
        &self.usage
    }

    pub(crate) fn add_segment_bytes(&mut self, segment: u32, bytes: u64) {
        self.usage.entry(segment).or_default().total += bytes;
    }

    pub(crate) fn forget_segment(&mut self, segment: u32) {
        self.usage.remove(&segment);
    }

    /// Whether `key`'s committed slot is the frame at `location`, and its published flag.
    pub(crate) fn is_at(&self, key: &[u8], location: Location) -> Option<bool> {
        match self.slots.get(key) {
            Some(Slot::Committed(c)) if c.location == location => Some(c.published),
            _ => None,
        }
    }

    /// Whether the completion of `key` under `fence` is published and stored outside
    /// `segments`: its published marker must outlive the compaction of those segments.
    pub(crate) fn published_elsewhere(&self, key: &[u8], fence: u64, segments: &[u32]) -> bool {
        matches!(
            self.slots.get(key),
            Some(Slot::Committed(c))
                if c.fence == fence && c.published && !segments.contains(&c.location.segment)
        )
    }

    /// Points `key` at `to` if it still points at `from`.
    pub(crate) fn relocate(&mut self, key: &[u8], from: Location, to: Location) -> bool {
        let Some((key, Slot::Committed(committed))) = self.slots.get_key_value(key) else {
            return false;
        };
        if committed.location != from {
            return false;
        }
        let key = key.clone();
        let mut moved = *committed;
        moved.location = to;
        self.insert(key, Slot::Committed(moved));
        true
    }

    // Recovery: the `recover_*` methods touch only the slots, one hash lookup per frame in
    // the common case; `finish_recovery` then builds the orders and counts in one pass.

    /// Recovery: a published marker found on disk. Returns false when the completion it
    /// names is not (or not yet) in the index.
    pub(crate) fn recover_published(&mut self, key: &[u8], fence: u64) -> bool {
        match self.slots.get_mut(key) {
            Some(Slot::Committed(c)) if c.fence == fence => {
                c.published = true;
                true
            }
            _ => false,
        }
    }

    /// Recovery: a claim frame found on disk. The highest fence per key wins, and a
    /// completion beats the claim it completed.
    pub(crate) fn recover_claim(&mut self, key: &[u8], claim: Claim) {
        self.next_fence = self.next_fence.max(claim.fence.saturating_add(1));
        match self.slots.get_mut(key) {
            Some(slot) if slot.fence() >= claim.fence => {}
            Some(slot) => *slot = Slot::Claimed(Box::new(claim)),
            None => {
                self.slots
                    .insert(Arc::from(key), Slot::Claimed(Box::new(claim)));
            }
        }
    }

    /// Recovery: a release marker found on disk. Returns false when the claim it names is
    /// not (or not yet) in the index.
    pub(crate) fn recover_released(&mut self, key: &[u8], fence: u64) -> bool {
        let released = matches!(
            self.slots.get(key),
            Some(Slot::Claimed(claim)) if claim.fence == fence
        );
        if released {
            self.slots.remove(key);
        }
        released
    }

    /// Recovery: a record frame found on disk. The highest fence per key wins; a copy of
    /// the same completion (left by an interrupted compaction) only adds its published flag.
    pub(crate) fn recover_record(&mut self, key: &[u8], committed: Committed) {
        self.next_fence = self.next_fence.max(committed.fence.saturating_add(1));
        match self.slots.get_mut(key) {
            Some(slot) if slot.fence() > committed.fence => {}
            Some(Slot::Committed(c)) if c.fence == committed.fence => {
                c.published |= committed.published;
            }
            Some(slot) => *slot = Slot::Committed(committed),
            None => {
                self.slots
                    .insert(Arc::from(key), Slot::Committed(committed));
            }
        }
    }

    /// Recovery: builds the expiry and pending orders and the live byte counts from the
    /// slots, after the last `recover_*` call.
    pub(crate) fn finish_recovery(&mut self) {
        for usage in self.usage.values_mut() {
            usage.live = 0;
            usage.records = 0;
        }
        let mut by_expiry = Vec::with_capacity(self.slots.len());
        let mut pending = Vec::new();
        for (key, slot) in &self.slots {
            by_expiry.push(((slot.expires_at(), slot.fence()), key.clone()));
            if let Some(order) = slot.pending_events() {
                pending.push((order, key.clone()));
            }
            if let Slot::Committed(c) = slot {
                let usage = self.usage.entry(c.location.segment).or_default();
                usage.live += u64::from(c.location.len);
                usage.records += 1;
            }
        }
        // Sorted input lets the maps be built in bulk.
        by_expiry.sort_unstable_by_key(|(order, _)| *order);
        pending.sort_unstable_by_key(|(order, _)| *order);
        self.by_expiry = by_expiry.into_iter().collect();
        self.pending = pending.into_iter().collect();
    }

    /// Whether `key` is claimed under `fence`: its claim frame must outlive compaction.
    pub(crate) fn is_claimed(&self, key: &[u8], fence: u64) -> bool {
        matches!(self.slots.get(key), Some(Slot::Claimed(c)) if c.fence == fence)
    }

    /// Makes room for `additional` more keys without rehashing.
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.slots.reserve(additional);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(segment: u32, fence: u64, expires_at: u64) -> Committed {
        Committed {
            location: Location {
                segment,
                len: 100,
                offset: 16,
            },
            fence,
            expires_at,
            completed_at: fence,
            has_events: true,
            published: false,
        }
    }

    #[test]
    fn replacing_a_slot_moves_its_bytes_between_segments() {
        let mut index = Index::default();
        let key: Key = Arc::from(&b"k"[..]);
        index.insert(key.clone(), Slot::Committed(committed(1, 1, 10)));
        index.insert(key, Slot::Committed(committed(2, 2, 10)));
        assert_eq!(index.usage()[&1].live, 0);
        assert_eq!(index.usage()[&2].live, 100);
        assert_eq!(index.pending(10).len(), 1);
    }

    #[test]
    fn rewriting_a_slot_under_the_same_fence_keeps_its_orders() {
        let mut index = Index::default();
        let key: Key = Arc::from(&b"k"[..]);
        index.insert(key.clone(), Slot::Committed(committed(1, 1, 10)));
        let to = Location {
            segment: 2,
            len: 100,
            offset: 16,
        };
        assert!(index.relocate(b"k", committed(1, 1, 10).location, to));
        assert_eq!(index.pending(10).len(), 1);
        assert_eq!(index.purge_some(10, 100), (1, false));
        assert!(index.pending(10).is_empty());
    }

    #[test]
    fn purge_removes_only_what_expired() {
        let mut index = Index::default();
        for (i, expires) in [5, 10, 15].into_iter().enumerate() {
            let key: Key = Arc::from(format!("k{i}").as_bytes());
            index.insert(key, Slot::Committed(committed(1, i as u64 + 1, expires)));
        }
        assert_eq!(index.purge_some(10, 100), (2, false));
        assert_eq!(index.len(), 1);
        assert_eq!(index.usage()[&1].records, 1);
    }

    #[test]
    fn recovery_keeps_the_highest_fence_whatever_the_order() {
        let mut index = Index::default();
        index.recover_record(b"k", committed(2, 7, 10));
        index.recover_record(b"k", committed(1, 3, 10));
        index.finish_recovery();
        assert_eq!(index.slot(b"k").map(Slot::fence), Some(7));
        assert_eq!(index.next_fence, 8);
        assert_eq!(index.usage()[&2].live, 100);
        assert!(!index.usage().contains_key(&1));
        assert_eq!(index.pending(10).len(), 1);
        assert_eq!(index.purge_some(10, 10), (1, false));
    }
}
