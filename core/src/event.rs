//! Realtime events: what a handler emits, how it is staged, and the [`EventSink`] that
//! delivers it after the commit.

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::store::{Fence, RecordKey};
use crate::time::Timestamp;

/// Longest event type and room name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 200;

/// One application event, as stored with its record and as sent to clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Stable identifier: the same on every delivery attempt of this event, so a client can
    /// drop a repeat.
    pub id: String,
    /// Dotted event type, such as `order.created`.
    pub kind: String,
    /// Target room; `None` broadcasts to every connection.
    pub room: Option<String>,
    /// Application payload.
    pub payload: Value,
    /// When the event was emitted.
    pub ts: Timestamp,
}

#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    payload: &'a Value,
    ts: String,
}

impl Event {
    /// An event the application publishes directly, outside a durable route.
    ///
    /// The id is derived from the other fields; pass a distinguishing payload or time when
    /// two equal events must not look like repeats.
    pub fn new(
        kind: impl Into<String>,
        room: Option<String>,
        payload: impl Serialize,
        ts: Timestamp,
    ) -> Result<Self, EmitError> {
        let kind = kind.into();
        validate_kind(&kind)?;
        if let Some(room) = &room {
            validate_room(room)?;
        }
        let payload =
            serde_json::to_value(payload).map_err(|e| EmitError::Payload(e.to_string()))?;
        let mut hasher = Sha256::new();
        hasher.update(kind.as_bytes());
        hasher.update([0]);
        hasher.update(room.as_deref().unwrap_or("").as_bytes());
        hasher.update([0]);
        hasher.update(payload.to_string().as_bytes());
        hasher.update(ts.as_millis().to_be_bytes());
        let id = format!("evt_{}", hex::encode(&hasher.finalize()[..12]));
        Ok(Self {
            id,
            kind,
            room,
            payload,
            ts,
        })
    }

    /// The wire envelope: `{"id","type","room"?,"payload","ts"}` as one JSON text.
    pub fn to_envelope(&self) -> String {
        let envelope = Envelope {
            id: &self.id,
            kind: &self.kind,
            room: self.room.as_deref(),
            payload: &self.payload,
            ts: self.ts.to_rfc3339(),
        };
        // Serializing strings and a JSON value into memory cannot fail.
        serde_json::to_string(&envelope).expect("serializing an event envelope")
    }
}

/// Why an event was refused at `emit`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EmitError {
    /// The type is empty, too long, or not dot-separated segments of letters, digits, `_`
    /// and `-`.
    InvalidType(String),
    /// The room is empty, too long, or holds control characters.
    InvalidRoom(String),
    /// The payload could not be turned into JSON.
    Payload(String),
    /// The handler already returned; events emitted after that belong to no request.
    Closed,
}

impl fmt::Display for EmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidType(kind) => write!(
                f,
                "invalid event type {kind:?}: use dotted segments of letters, digits, '_' and \
                 '-', such as \"order.created\", at most {MAX_NAME_LEN} bytes"
            ),
            Self::InvalidRoom(room) => write!(
                f,
                "invalid room {room:?}: a room is 1 to {MAX_NAME_LEN} bytes without control \
                 characters"
            ),
            Self::Payload(e) => write!(f, "event payload is not representable as JSON: {e}"),
            Self::Closed => write!(
                f,
                "the handler already returned; emit events before returning the response"
            ),
        }
    }
}

impl std::error::Error for EmitError {}

/// Checks an event type: non-empty dot-separated segments of `[A-Za-z0-9_-]`.
pub fn validate_kind(kind: &str) -> Result<(), EmitError> {
    let valid = !kind.is_empty()
        && kind.len() <= MAX_NAME_LEN
        && kind.split('.').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if valid {
        Ok(())
    } else {
        Err(EmitError::InvalidType(kind.to_owned()))
    }
}

/// Checks a room name: 1 to [`MAX_NAME_LEN`] bytes, no control characters.
pub fn validate_room(room: &str) -> Result<(), EmitError> {
    let valid =
        !room.is_empty() && room.len() <= MAX_NAME_LEN && !room.chars().any(char::is_control);
    if valid {
        Ok(())
    } else {
        Err(EmitError::InvalidRoom(room.to_owned()))
    }
}

/// Events staged by one handler run, kept apart until the engine commits.
///
/// Ids are derived from the record key, the claim's fence and the event's position, so
/// they are unique per claim and identical on every later publication of the same event.
#[derive(Clone)]
pub(crate) struct EventStage {
    inner: Arc<Mutex<StageInner>>,
}

struct StageInner {
    id_prefix: Sha256,
    ts: Timestamp,
    events: Vec<Event>,
    closed: bool,
}

impl EventStage {
    pub(crate) fn new(key: &RecordKey, fence: Fence, ts: Timestamp) -> Self {
        let mut id_prefix = Sha256::new();
        id_prefix.update(key.encode());
        id_prefix.update(fence.0.to_be_bytes());
        Self {
            inner: Arc::new(Mutex::new(StageInner {
                id_prefix,
                ts,
                events: Vec::new(),
                closed: false,
            })),
        }
    }

    pub(crate) fn stage(
        &self,
        room: Option<&str>,
        kind: &str,
        payload: impl Serialize,
    ) -> Result<(), EmitError> {
        validate_kind(kind)?;
        if let Some(room) = room {
            validate_room(room)?;
        }
        let payload =
            serde_json::to_value(payload).map_err(|e| EmitError::Payload(e.to_string()))?;
        let mut inner = self.lock();
        if inner.closed {
            return Err(EmitError::Closed);
        }
        let mut hasher = inner.id_prefix.clone();
        hasher.update((inner.events.len() as u64).to_be_bytes());
        let id = format!("evt_{}", hex::encode(&hasher.finalize()[..12]));
        let ts = inner.ts;
        inner.events.push(Event {
            id,
            kind: kind.to_owned(),
            room: room.map(str::to_owned),
            payload,
            ts,
        });
        Ok(())
    }

    /// Takes the staged events and refuses any later `emit`.
    pub(crate) fn close(&self) -> Vec<Event> {
        let mut inner = self.lock();
        inner.closed = true;
        // Stores keep the events with the record for the whole retention; a vector grown
        // by pushing holds room for four events when one was emitted.
        let mut events = std::mem::take(&mut inner.events);
        events.shrink_to_fit();
        events
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StageInner> {
        // The lock is never held across user code, so a poisoned lock still holds
        // consistent data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sink could not take events; they stay pending in the store and are published again
/// on recovery.
#[derive(Debug)]
pub struct PublishError {
    message: String,
}

impl PublishError {
    /// A failure described by `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PublishError {}

/// Where committed events go: a WebSocket hub, a message bus, a test recorder.
///
/// The engine calls [`publish`](EventSink::publish) once per committed completion that
/// staged events, after the commit succeeded, and never for a replay, a conflict or a
/// failure. Recovery may call it again for events whose publication was not confirmed
/// (the process died in between); the event ids are the same, so receivers can drop
/// repeats.
#[async_trait]
pub trait EventSink: Send + Sync {
    /// Hands `events` over for delivery, in order.
    ///
    /// Returning `Ok` means the sink took responsibility for them; the store then marks
    /// them published. It does not mean any client received them: with no client connected,
    /// a WebSocket hub accepts and drops. On `Err` the events stay pending.
    ///
    /// Must not wait on slow receivers: it runs on the request path, before the response is
    /// sent.
    async fn publish(&self, events: &[Event]) -> Result<(), PublishError>;
}

/// A sink that accepts every event and delivers none; the default when realtime is off.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiscardEvents;

#[async_trait]
impl EventSink for DiscardEvents {
    async fn publish(&self, _events: &[Event]) -> Result<(), PublishError> {
        Ok(())
    }
}

#[async_trait]
impl<S: EventSink + ?Sized> EventSink for Arc<S> {
    async fn publish(&self, events: &[Event]) -> Result<(), PublishError> {
        (**self).publish(events).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::IdempotencyKey;
    use crate::store::Scope;

    #[test]
    fn event_types_are_dotted_names() {
        assert!(validate_kind("order.created").is_ok());
        assert!(validate_kind("ping").is_ok());
        assert!(validate_kind("").is_err());
        assert!(validate_kind("order..created").is_err());
        assert!(validate_kind(".order").is_err());
        assert!(validate_kind("order created").is_err());
    }

    #[test]
    fn rooms_are_non_empty_without_controls() {
        assert!(validate_room("shop:42").is_ok());
        assert!(validate_room("").is_err());
        assert!(validate_room("a\nb").is_err());
        assert!(validate_room(&"r".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn envelope_omits_room_for_broadcasts_and_keeps_nested_objects() {
        let event = Event {
            id: "evt_1".into(),
            kind: "order.created".into(),
            room: None,
            payload: serde_json::json!({"order": {"id": "o1"}}),
            ts: Timestamp::from_millis(0),
        };
        let expected = concat!(
            r#"{"id":"evt_1","type":"order.created","payload":{"order":{"id":"o1"}},"#,
            r#""ts":"1970-01-01T00:00:00.000Z"}"#
        );
        assert_eq!(event.to_envelope(), expected);
    }

    #[test]
    fn staged_ids_are_stable_per_claim_and_distinct_per_event() {
        let key = RecordKey::new(Scope::new("op"), IdempotencyKey::new("k").unwrap());
        let ids = |fence| {
            let stage = EventStage::new(&key, Fence(fence), Timestamp::EPOCH);
            stage.stage(None, "a.b", 1).unwrap();
            stage.stage(Some("r"), "a.b", 1).unwrap();
            stage.close().into_iter().map(|e| e.id).collect::<Vec<_>>()
        };
        let first = ids(1);
        assert_eq!(first, ids(1));
        assert_ne!(first[0], first[1]);
        assert_ne!(first, ids(2));
    }

    #[test]
    fn emit_after_close_is_refused() {
        let key = RecordKey::new(Scope::new("op"), IdempotencyKey::new("k").unwrap());
        let stage = EventStage::new(&key, Fence(1), Timestamp::EPOCH);
        stage.close();
        assert_eq!(stage.stage(None, "a.b", 1), Err(EmitError::Closed));
    }
}
