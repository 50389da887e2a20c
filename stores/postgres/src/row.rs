//! Conversions between the store's columns and the core's types.

use bytes::Bytes;
use cnerium_core::{
    Event, Fence, Fingerprint, Payload, Record, RecordState, StoreError, StoredResponse, Timestamp,
};
use http::{HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_postgres::Row;
use tokio_postgres::types::Json;

/// One event as it is kept in the `events` column: a JSON array of these.
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
    pub(crate) fn from_event(event: &Event) -> Self {
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

/// A record row as the claim and lookup statements return it.
#[derive(Debug)]
pub(crate) struct RecordRow {
    /// Whether the claim statement granted the claim.
    pub(crate) granted: bool,
    /// Whether the granted claim replaced a live claim whose lease ran out.
    pub(crate) took_over: bool,
    pub(crate) record: Record,
}

/// Decodes a row of `granted, RECORD_COLUMNS` (see [`crate::schema`]).
pub(crate) fn record_row(row: &Row) -> Result<RecordRow, StoreError> {
    let granted: bool = get(row, 0)?;
    let took_over: bool = get(row, 1)?;
    let fingerprint_version: i16 = get(row, 2)?;
    let fingerprint: &[u8] = get(row, 3)?;
    let state: &str = get(row, 4)?;
    let fence = fence_from_sql(get(row, 5)?)?;
    let created_at = millis_from_sql(get(row, 7)?)?;
    let expires_at = millis_from_sql(get(row, 8)?)?;

    let version = u8::try_from(fingerprint_version)
        .map_err(|_| corrupt("fingerprint version out of range"))?;
    let digest: [u8; 32] = fingerprint
        .try_into()
        .map_err(|_| corrupt("fingerprint is not 32 bytes"))?;

    let state = match state {
        "in_progress" => {
            let lease_until: Option<i64> = get(row, 6)?;
            RecordState::InProgress {
                fence,
                lease_until: millis_from_sql(
                    lease_until.ok_or_else(|| corrupt("claim without lease"))?,
                )?,
            }
        }
        "completed" => completed_state(row, fence)?,
        _ => return Err(corrupt("unknown record state")),
    };

    Ok(RecordRow {
        granted,
        took_over,
        record: Record {
            fingerprint: Fingerprint::from_parts(version, digest),
            state,
            created_at,
            expires_at,
        },
    })
}

fn completed_state(row: &Row, fence: Fence) -> Result<RecordState, StoreError> {
    let completed_at: Option<i64> = get(row, 9)?;
    let status: Option<i16> = get(row, 10)?;
    let names: Option<Vec<String>> = get(row, 11)?;
    let values: Option<Vec<Vec<u8>>> = get(row, 12)?;
    let body: Option<Vec<u8>> = get(row, 13)?;
    let events: Option<Json<Vec<StoredEvent>>> = get(row, 14)?;
    let events_published: bool = get(row, 15)?;

    let missing = || corrupt("completed record without its response");
    let status = status
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(missing)?;
    let (names, values) = names.zip(values).ok_or_else(missing)?;
    if names.len() != values.len() {
        return Err(corrupt("header names and values differ in number"));
    }
    let headers = names
        .into_iter()
        .zip(values)
        .map(|(name, value)| {
            let name = HeaderName::from_bytes(name.as_bytes());
            let value = HeaderValue::from_bytes(&value);
            name.ok()
                .zip(value.ok())
                .ok_or_else(|| corrupt("invalid stored header"))
        })
        .collect::<Result<Vec<_>, _>>()?;

    Ok(RecordState::Completed {
        fence,
        response: StoredResponse {
            status,
            headers,
            body: Bytes::from(body.ok_or_else(missing)?),
        },
        events: events
            .ok_or_else(missing)?
            .0
            .into_iter()
            .map(StoredEvent::into_event)
            .collect(),
        events_published,
        completed_at: millis_from_sql(completed_at.ok_or_else(missing)?)?,
    })
}

/// Decodes a row of `record_key, fence, events` from the pending events statement.
pub(crate) fn pending_row(
    row: &Row,
) -> Result<(cnerium_core::RecordKey, Fence, Vec<Event>), StoreError> {
    let key: &[u8] = get(row, 0)?;
    let key = cnerium_core::RecordKey::decode(key).ok_or_else(|| corrupt("invalid record key"))?;
    let fence = fence_from_sql(get(row, 1)?)?;
    let events: Json<Vec<StoredEvent>> = get(row, 2)?;
    let events = events.0.into_iter().map(StoredEvent::into_event).collect();
    Ok((key, fence, events))
}

/// Decodes a row of `event` from the event history statement.
pub(crate) fn history_row(row: &Row) -> Result<Event, StoreError> {
    let event: Json<StoredEvent> = get(row, 0)?;
    Ok(event.0.into_event())
}

/// A timestamp as a `BIGINT`; instants past the year 292 million clamp to `i64::MAX`.
pub(crate) fn millis_to_sql(ts: Timestamp) -> i64 {
    i64::try_from(ts.as_millis()).unwrap_or(i64::MAX)
}

fn millis_from_sql(millis: i64) -> Result<Timestamp, StoreError> {
    u64::try_from(millis)
        .map(Timestamp::from_millis)
        .map_err(|_| corrupt("negative timestamp"))
}

/// A fence as a `BIGINT`. Fences come from a `BIGINT` sequence, so every fence the store
/// handed out fits; a larger one cannot match any row.
pub(crate) fn fence_to_sql(fence: Fence) -> i64 {
    i64::try_from(fence.0).unwrap_or(-1)
}

fn fence_from_sql(fence: i64) -> Result<Fence, StoreError> {
    u64::try_from(fence)
        .map(Fence)
        .map_err(|_| corrupt("negative fence"))
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    index: usize,
) -> Result<T, StoreError> {
    row.try_get(index)
        .map_err(|e| StoreError::with_source("postgres store: unreadable record column", e))
}

fn corrupt(what: &str) -> StoreError {
    StoreError::new(format!("postgres store: corrupt record: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_events_keep_every_field() {
        let event = Event {
            id: "evt_1".into(),
            kind: "order.created".into(),
            room: Some("orders".into()),
            payload: Payload::from_json(r#"{"x":[1.5,1.50],"n":12345678901234567890123}"#).unwrap(),
            ts: Timestamp::from_millis(1_764_788_709_123),
        };
        let text = serde_json::to_string(&StoredEvent::from_event(&event)).unwrap();
        let back: StoredEvent = serde_json::from_str(&text).unwrap();
        let back = back.into_event();
        assert_eq!(back, event);
        assert_eq!(
            back.payload.as_json(),
            r#"{"n":12345678901234567890123,"x":[1.5,1.50]}"#
        );
    }

    #[test]
    fn far_future_timestamps_clamp_instead_of_wrapping() {
        assert_eq!(millis_to_sql(Timestamp::from_millis(u64::MAX)), i64::MAX);
        assert_eq!(fence_to_sql(Fence(u64::MAX)), -1);
        assert!(millis_from_sql(-1).is_err());
    }
}
