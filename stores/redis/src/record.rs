//! How a record is laid out in its Redis hash, and the names of the store's keys.
//!
//! Fields: `fp` (fingerprint version byte then the 32 digest bytes), `state`
//! (`in_progress` or `completed`), `fence`, `lease_until`, `created_at`, `expires_at`, and
//! for a completed record `completed_at`, `status`, `headers` (JSON array of
//! `[name, [value bytes]]`), `body` (raw bytes), `events` (JSON array) and `published`
//! (`0` or `1`). Numbers are decimal text; times are milliseconds since the Unix epoch.

use std::collections::HashMap;

use bytes::Bytes;
use cnerium_core::{
    Event, Fence, Fingerprint, Payload, Record, RecordKey, RecordState, StoreError, StoredResponse,
    Timestamp,
};
use http::{HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The names of one store's keys.
#[derive(Debug)]
pub(crate) struct Keys {
    /// Prefix of record hashes; a record's key is this plus its id.
    pub(crate) record_prefix: String,
    pub(crate) fence: String,
    pub(crate) expiry: String,
    pub(crate) pending: String,
    pub(crate) history: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            record_prefix: format!("{prefix}record:"),
            fence: format!("{prefix}fence"),
            expiry: format!("{prefix}expiry"),
            pending: format!("{prefix}pending"),
            history: format!("{prefix}history"),
        }
    }

    pub(crate) fn record(&self, id: &str) -> String {
        format!("{}{id}", self.record_prefix)
    }
}

/// The id of a record within its store: the hex form of [`RecordKey::encode`].
pub(crate) fn record_id(key: &RecordKey) -> String {
    hex::encode(key.encode())
}

/// The member of the pending index for the completion of `id` under `fence`.
pub(crate) fn pending_member(id: &str, fence: Fence) -> String {
    format!("{:020}:{id}", fence.0)
}

/// The fingerprint as the `fp` field keeps it.
pub(crate) fn fingerprint_bytes(fingerprint: &Fingerprint) -> Vec<u8> {
    let mut out = Vec::with_capacity(33);
    out.push(fingerprint.version());
    out.extend_from_slice(fingerprint.digest());
    out
}

/// One event as it is kept in the `events` field: a JSON array of these.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    room: Option<String>,
    /// The payload inline in the stored JSON, where serde can put it only as a tree.
    payload: Value,
    /// Milliseconds since the Unix epoch.
    ts: u64,
}

impl StoredEvent {
    fn from_event(event: &Event) -> Self {
        Self {
            id: event.id.clone(),
            kind: event.kind.clone(),
            room: event.room.clone(),
            payload: event.payload.to_value(),
            ts: event.ts.as_millis(),
        }
    }

    fn into_event(self) -> Event {
        Event {
            id: self.id,
            kind: self.kind,
            room: self.room,
            payload: Payload::from_value(&self.payload),
            ts: Timestamp::from_millis(self.ts),
        }
    }
}

/// The `events` field of a completion.
pub(crate) fn encode_events(events: &[Event]) -> Vec<u8> {
    let stored: Vec<StoredEvent> = events.iter().map(StoredEvent::from_event).collect();
    // Strings, numbers and JSON values serialize into memory without failing.
    serde_json::to_vec(&stored).expect("serializing stored events")
}

/// Reads an `events` field back.
pub(crate) fn decode_events(bytes: &[u8]) -> Result<Vec<Event>, StoreError> {
    let stored: Vec<StoredEvent> = serde_json::from_slice(bytes)
        .map_err(|e| StoreError::with_source("redis store: corrupt record events", e))?;
    Ok(stored.into_iter().map(StoredEvent::into_event).collect())
}

/// The `headers` field of a completion.
pub(crate) fn encode_headers(headers: &[(HeaderName, HeaderValue)]) -> Vec<u8> {
    let stored: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_bytes()))
        .collect();
    // Strings and byte arrays serialize into memory without failing.
    serde_json::to_vec(&stored).expect("serializing stored headers")
}

fn decode_headers(bytes: &[u8]) -> Result<Vec<(HeaderName, HeaderValue)>, StoreError> {
    let stored: Vec<(String, Vec<u8>)> = serde_json::from_slice(bytes)
        .map_err(|e| StoreError::with_source("redis store: corrupt record headers", e))?;
    stored
        .into_iter()
        .map(|(name, value)| {
            let name = HeaderName::from_bytes(name.as_bytes()).ok();
            let value = HeaderValue::from_bytes(&value).ok();
            name.zip(value)
                .ok_or_else(|| corrupt("invalid stored header"))
        })
        .collect()
}

/// Decodes a record hash as `HGETALL` returns it; `None` when the hash is empty.
pub(crate) fn decode_record(
    mut fields: HashMap<String, Vec<u8>>,
) -> Result<Option<Record>, StoreError> {
    if fields.is_empty() {
        return Ok(None);
    }
    let mut take = |name: &str| {
        fields
            .remove(name)
            .ok_or_else(|| corrupt(&format!("missing field {name}")))
    };

    let fp = take("fp")?;
    let (&version, digest) = fp
        .split_first()
        .ok_or_else(|| corrupt("empty fingerprint"))?;
    let digest: [u8; 32] = digest
        .try_into()
        .map_err(|_| corrupt("fingerprint is not 32 bytes"))?;
    let fence = Fence(number(&take("fence")?)?);
    let created_at = timestamp(&take("created_at")?)?;
    let expires_at = timestamp(&take("expires_at")?)?;

    let state = match take("state")?.as_slice() {
        b"in_progress" => RecordState::InProgress {
            fence,
            lease_until: timestamp(&take("lease_until")?)?,
        },
        b"completed" => {
            let status = u16::try_from(number(&take("status")?)?)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .ok_or_else(|| corrupt("invalid status"))?;
            RecordState::Completed {
                fence,
                response: StoredResponse {
                    status,
                    headers: decode_headers(&take("headers")?)?,
                    body: Bytes::from(take("body")?),
                },
                events: decode_events(&take("events")?)?,
                events_published: take("published")? == b"1",
                completed_at: timestamp(&take("completed_at")?)?,
            }
        }
        _ => return Err(corrupt("unknown state")),
    };

    Ok(Some(Record {
        fingerprint: Fingerprint::from_parts(version, digest),
        state,
        created_at,
        expires_at,
    }))
}

/// Parses decimal text as Redis keeps numbers.
pub(crate) fn number(bytes: &[u8]) -> Result<u64, StoreError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| corrupt("invalid number"))
}

fn timestamp(bytes: &[u8]) -> Result<Timestamp, StoreError> {
    number(bytes).map(Timestamp::from_millis)
}

pub(crate) fn corrupt(what: &str) -> StoreError {
    StoreError::new(format!("redis store: corrupt record: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_members_sort_by_fence_as_text() {
        let a = pending_member("ff", Fence(9));
        let b = pending_member("00", Fence(10));
        assert!(a < b, "{a} sorts after {b}");
        assert_eq!(pending_member("ab", Fence(1)), "00000000000000000001:ab");
        assert_eq!(pending_member("ab", Fence(u64::MAX)).len(), 23);
    }

    #[test]
    fn headers_keep_bytes_that_are_not_utf8() {
        let headers = vec![(
            HeaderName::from_static("x-raw"),
            HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        )];
        assert_eq!(decode_headers(&encode_headers(&headers)).unwrap(), headers);
    }

    #[test]
    fn events_keep_every_field() {
        let events = vec![Event {
            id: "evt_1".into(),
            kind: "order.created".into(),
            room: Some("orders".into()),
            payload: Payload::from_json(r#"{"x":[1.50],"n":12345678901234567890123}"#).unwrap(),
            ts: Timestamp::from_millis(1_764_788_709_123),
        }];
        let back = decode_events(&encode_events(&events)).unwrap();
        assert_eq!(back, events);
        assert_eq!(
            back[0].payload.as_json(),
            r#"{"n":12345678901234567890123,"x":[1.50]}"#
        );
    }

    #[test]
    fn an_empty_hash_is_no_record_and_a_partial_one_is_corrupt() {
        assert_eq!(decode_record(HashMap::new()).unwrap(), None);
        let partial = HashMap::from([("state".to_owned(), b"completed".to_vec())]);
        assert!(decode_record(partial).is_err());
    }
}
