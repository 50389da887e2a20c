//! A bounded cache of recently committed or read records, so that the retries that follow
//! a request soon after (the common case) replay from memory instead of a segment file.
//!
//! Entries are keyed by record key and fence: a record replaced since (a takeover, a purge
//! and a new claim) has another fence, so a stale entry is never served; it only waits to
//! be evicted. Eviction is first in, first out, by an estimate of the bytes held.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use cnerium_core::{Record, RecordState};

/// Records by encoded key, within a byte budget.
#[derive(Debug)]
pub(crate) struct RecentRecords {
    budget: usize,
    held: usize,
    records: HashMap<Arc<[u8]>, (u64, Arc<Record>, usize)>,
    order: VecDeque<(Arc<[u8]>, u64)>,
}

impl RecentRecords {
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            budget,
            held: 0,
            records: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The completed record of `key` under `fence`, if held.
    pub(crate) fn get(&self, key: &[u8], fence: u64) -> Option<Arc<Record>> {
        match self.records.get(key) {
            Some((f, record, _)) if *f == fence => Some(record.clone()),
            _ => None,
        }
    }

    /// Holds a completed record, evicting the oldest entries beyond the budget.
    pub(crate) fn insert(&mut self, key: Arc<[u8]>, fence: u64, record: Arc<Record>) {
        let size = estimate(&key, &record);
        if size > self.budget {
            return;
        }
        if let Some((_, _, old)) = self.records.insert(key.clone(), (fence, record, size)) {
            self.held -= old;
        }
        self.held += size;
        self.order.push_back((key, fence));
        while self.held > self.budget {
            let Some((oldest, oldest_fence)) = self.order.pop_front() else {
                break;
            };
            // A key inserted again has a newer entry further back; only drop the entry
            // this queue position stands for.
            if matches!(self.records.get(&oldest), Some((f, _, _)) if *f == oldest_fence) {
                if let Some((_, _, size)) = self.records.remove(&oldest) {
                    self.held -= size;
                }
            }
        }
        // Queue positions of replaced entries linger; keep the queue from growing past
        // a small multiple of the live entries.
        if self.order.len() > 4 * self.records.len() + 64 {
            let records = &self.records;
            self.order
                .retain(|(k, f)| matches!(records.get(k), Some((held, _, _)) if held == f));
        }
    }
}

/// Bytes a record holds, roughly: body, headers, events and bookkeeping.
fn estimate(key: &[u8], record: &Record) -> usize {
    let RecordState::Completed {
        response, events, ..
    } = &record.state
    else {
        return usize::MAX;
    };
    let headers: usize = response
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum();
    let events: usize = events
        .iter()
        .map(|e| e.id.len() + e.kind.len() + e.room.as_ref().map_or(0, String::len) + 256)
        .sum();
    2 * key.len() + response.body.len() + headers + events + 256
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use cnerium_core::{Fence, Fingerprint, StoredResponse, Timestamp};
    use http::StatusCode;

    fn record(fence: u64, body: usize) -> Arc<Record> {
        Arc::new(Record {
            fingerprint: Fingerprint::from_parts(1, [0; 32]),
            state: RecordState::Completed {
                fence: Fence(fence),
                response: StoredResponse {
                    status: StatusCode::CREATED,
                    headers: Vec::new(),
                    body: Bytes::from(vec![b'x'; body]),
                },
                events: Vec::new(),
                events_published: false,
                completed_at: Timestamp::EPOCH,
            },
            created_at: Timestamp::EPOCH,
            expires_at: Timestamp::from_millis(1),
        })
    }

    #[test]
    fn serves_only_the_fence_it_holds() {
        let mut recent = RecentRecords::new(1 << 20);
        recent.insert(Arc::from(&b"k"[..]), 1, record(1, 10));
        assert!(recent.get(b"k", 1).is_some());
        assert!(recent.get(b"k", 2).is_none());
        recent.insert(Arc::from(&b"k"[..]), 2, record(2, 10));
        assert!(recent.get(b"k", 1).is_none());
        assert!(recent.get(b"k", 2).is_some());
    }

    #[test]
    fn evicts_the_oldest_beyond_the_budget() {
        let mut recent = RecentRecords::new(3 * 1400);
        for i in 0..10u64 {
            recent.insert(Arc::from(format!("k{i}").as_bytes()), i, record(i, 1000));
        }
        assert!(recent.held <= 3 * 1400);
        assert!(recent.get(b"k9", 9).is_some());
        assert!(recent.get(b"k0", 0).is_none());
        assert!(recent.order.len() <= 4 * recent.records.len() + 64);
    }

    #[test]
    fn a_record_larger_than_the_budget_is_not_held() {
        let mut recent = RecentRecords::new(100);
        recent.insert(Arc::from(&b"k"[..]), 1, record(1, 1000));
        assert!(recent.get(b"k", 1).is_none());
        assert_eq!(recent.held, 0);
    }
}
