//! Realtime events: what a handler emits, how it is staged, and the [`EventSink`] that
//! delivers it after the commit.

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Serialize;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::store::{Fence, RecordKey};
use crate::time::Timestamp;

/// Longest event type and room name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 200;

/// Deepest nesting of arrays and objects in a payload: the most `serde_json` reads into a
/// [`Value`].
pub const MAX_PAYLOAD_DEPTH: usize = 127;

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
    pub payload: Payload,
    /// When the event was emitted.
    pub ts: Timestamp,
}

/// An event's payload: one JSON value, kept as its compact JSON text; clones share it.
///
/// The text is what every delivery sends and what stores write, so it is produced once,
/// when the event is emitted, and never rebuilt. Stores keep events for the whole record
/// retention and the engine clones them to publish after the commit: shared text makes
/// those clones a reference count and keeps one allocation per payload, where a
/// [`Value`] tree would allocate a node for every object and array.
///
/// [`Payload::new`] and [`Payload::from_json`] give only text that `serde_json` reads back
/// into a [`Value`], and refuse anything else, such as nesting deeper than
/// [`MAX_PAYLOAD_DEPTH`] levels.
///
/// Two payloads are equal when their texts are, or else when they hold equal values, so a
/// payload read back from a store that reorders keys or rewrites escapes still equals the
/// one written. Numbers compare by their digits, as `serde_json`'s `arbitrary_precision`
/// keeps them: `1.50` and `1.5` differ.
#[derive(Clone)]
pub struct Payload {
    json: Arc<str>,
}

impl Payload {
    /// Serializes `value` straight to compact JSON text, without building a [`Value`].
    ///
    /// Struct fields keep their declaration order; map keys keep the map's order.
    pub fn new(value: impl Serialize) -> Result<Self, serde_json::Error> {
        let json = serde_json::to_string(&value)?;
        // Serializing checks no depth, but reading does, and stores read payloads back;
        // anything else serde_json writes it also reads. Each level takes an opening and a
        // closing byte, so a short text cannot nest too deep and is not read again.
        if json.len() > 2 * MAX_PAYLOAD_DEPTH && check_json(&json).is_err() {
            return Err(serde::ser::Error::custom(format!(
                "the payload nests deeper than {MAX_PAYLOAD_DEPTH} levels"
            )));
        }
        Ok(Self { json: json.into() })
    }

    /// Takes `text` as it is, after checking that it is exactly one JSON value.
    ///
    /// Refuses what `serde_json` would not read into a [`Value`]: anything but one value
    /// with optional surrounding whitespace, lone surrogate escapes, and nesting deeper
    /// than [`MAX_PAYLOAD_DEPTH`] levels.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        check_json(text)?;
        Ok(Self { json: text.into() })
    }

    /// The compact JSON text of `value`.
    ///
    /// A tree nested deeper than [`MAX_PAYLOAD_DEPTH`] levels gives a payload that
    /// [`to_value`] cannot read; [`new`] and [`from_json`] refuse such payloads.
    ///
    /// [`to_value`]: Payload::to_value
    /// [`new`]: Payload::new
    /// [`from_json`]: Payload::from_json
    pub fn from_value(value: &Value) -> Self {
        Self {
            json: value.to_string().into(),
        }
    }

    /// The JSON text, as sent in envelopes and written by stores.
    pub fn as_json(&self) -> &str {
        &self.json
    }

    /// The payload parsed into a tree, for code that needs its fields.
    ///
    /// # Panics
    ///
    /// If the payload came from [`Payload::from_value`] of a tree nested deeper than
    /// [`MAX_PAYLOAD_DEPTH`] levels, which `serde_json` does not read back.
    pub fn to_value(&self) -> Value {
        self.try_to_value()
            .expect("an event payload nests deeper than serde_json reads")
    }

    fn try_to_value(&self) -> Option<Value> {
        serde_json::from_str(&self.json).ok()
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        if self.json == other.json {
            return true;
        }
        match (self.try_to_value(), other.try_to_value()) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Payload {}

impl PartialEq<Value> for Payload {
    fn eq(&self, other: &Value) -> bool {
        self.try_to_value().is_some_and(|value| value == *other)
    }
}

impl PartialEq<Payload> for Value {
    fn eq(&self, other: &Payload) -> bool {
        other == self
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.json)
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.json)
    }
}

/// Checks that `text` is one JSON value `serde_json` reads into a [`Value`], without
/// building the tree: [`JsonCheck`] goes through the same parser paths, with the same depth
/// limit and string rules, and keeps nothing.
fn check_json(text: &str) -> Result<(), serde_json::Error> {
    serde_json::from_str::<JsonCheck>(text).map(|JsonCheck| ())
}

/// A JSON value that was read and dropped; see [`check_json`].
struct JsonCheck;

impl<'de> Deserialize<'de> for JsonCheck {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonCheck)
    }
}

impl<'de> Visitor<'de> for JsonCheck {
    type Value = JsonCheck;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<JsonCheck>()?.is_some() {}
        Ok(self)
    }

    // With `arbitrary_precision`, numbers arrive as one-entry maps holding their text.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<JsonCheck, JsonCheck>()?.is_some() {}
        Ok(self)
    }
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
        let payload = Payload::new(payload).map_err(|e| EmitError::Payload(e.to_string()))?;
        let mut hasher = Sha256::new();
        hasher.update(kind.as_bytes());
        hasher.update([0]);
        hasher.update(room.as_deref().unwrap_or("").as_bytes());
        hasher.update([0]);
        hasher.update(payload.as_json().as_bytes());
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
    ///
    /// The payload's text goes in as it is; the other fields are escaped as JSON strings.
    pub fn to_envelope(&self) -> String {
        let ts = self.ts.to_rfc3339();
        let payload = self.payload.as_json();
        // Names, quotes and punctuation take 38 bytes, and 10 more with a room; escapes
        // may add to that.
        let room_len = self.room.as_ref().map_or(0, |room| room.len() + 10);
        let mut out = Vec::with_capacity(
            38 + self.id.len() + self.kind.len() + room_len + payload.len() + ts.len(),
        );
        out.extend_from_slice(br#"{"id":"#);
        push_json_string(&mut out, &self.id);
        out.extend_from_slice(br#","type":"#);
        push_json_string(&mut out, &self.kind);
        if let Some(room) = &self.room {
            out.extend_from_slice(br#","room":"#);
            push_json_string(&mut out, room);
        }
        out.extend_from_slice(br#","payload":"#);
        out.extend_from_slice(payload.as_bytes());
        out.extend_from_slice(br#","ts":"#);
        push_json_string(&mut out, &ts);
        out.push(b'}');
        // Every part is UTF-8: strings escaped by serde_json and the payload's text.
        String::from_utf8(out).expect("an event envelope is UTF-8")
    }
}

/// Appends `s` as a JSON string literal.
fn push_json_string(out: &mut Vec<u8>, s: &str) {
    // Writing a string into memory cannot fail.
    serde_json::to_writer(out, s).expect("serializing a string");
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
    /// The payload could not be turned into JSON, or nests deeper than
    /// [`MAX_PAYLOAD_DEPTH`] levels.
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
        key.encode_into(|bytes| id_prefix.update(bytes));
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
        let payload = Payload::new(payload).map_err(|e| EmitError::Payload(e.to_string()))?;
        let mut inner = self.lock();
        if inner.closed {
            return Err(EmitError::Closed);
        }
        let mut hasher = inner.id_prefix.clone();
        hasher.update((inner.events.len() as u64).to_be_bytes());
        let id = format!("evt_{}", hex::encode(&hasher.finalize()[..12]));
        let ts = inner.ts;
        if inner.events.capacity() == 0 {
            // Most handlers emit one event; room for exactly one spares `close` a copy.
            inner.events.reserve_exact(1);
        }
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
        let mut event = Event {
            id: "evt_1".into(),
            kind: "order.created".into(),
            room: None,
            payload: Payload::from_json(r#"{"order":{"id":"o1"}}"#).unwrap(),
            ts: Timestamp::from_millis(0),
        };
        let expected = concat!(
            r#"{"id":"evt_1","type":"order.created","payload":{"order":{"id":"o1"}},"#,
            r#""ts":"1970-01-01T00:00:00.000Z"}"#
        );
        assert_eq!(event.to_envelope(), expected);

        event.room = Some("shop:\"42\"".into());
        let expected = concat!(
            r#"{"id":"evt_1","type":"order.created","room":"shop:\"42\"","#,
            r#""payload":{"order":{"id":"o1"}},"ts":"1970-01-01T00:00:00.000Z"}"#
        );
        assert_eq!(event.to_envelope(), expected);
    }

    #[test]
    fn envelope_carries_the_payload_text_as_it_is() {
        let text = r#"{"b":[1.50,12345678901234567890123],"a":"\u00e9"}"#;
        let event = Event {
            id: "evt_\u{1}".into(),
            kind: "a.b".into(),
            room: Some("r".into()),
            payload: Payload::from_json(text).unwrap(),
            ts: Timestamp::from_millis(1_764_788_709_123),
        };
        let envelope = event.to_envelope();
        assert_eq!(
            envelope,
            format!(
                concat!(
                    r#"{{"id":"evt_\u0001","type":"a.b","room":"r","payload":{text},"#,
                    r#""ts":"2025-12-03T19:05:09.123Z"}}"#
                ),
                text = text
            )
        );
        let parsed: Value = serde_json::from_str(&envelope).unwrap();
        assert_eq!(parsed["payload"], event.payload.to_value());
    }

    #[test]
    fn payloads_of_structs_keep_their_field_order() {
        #[derive(Serialize)]
        struct Order {
            quantity: u32,
            id: &'static str,
        }
        let payload = Payload::new(Order {
            quantity: 2,
            id: "o1",
        })
        .unwrap();
        assert_eq!(payload.as_json(), r#"{"quantity":2,"id":"o1"}"#);
        assert_eq!(payload, serde_json::json!({"id": "o1", "quantity": 2}));
        assert_eq!(format!("{payload:?}"), r#"{"quantity":2,"id":"o1"}"#);
    }

    #[test]
    fn from_json_takes_exactly_one_value() {
        for text in [
            "",
            " ",
            "{",
            "1 2",
            "{} x",
            "[1,]",
            "{\"a\":1,}",
            "01",
            "'a'",
            "nul",
        ] {
            assert!(Payload::from_json(text).is_err(), "{text:?} was taken");
        }
        for text in ["null", "0", "\"\"", "[]", "{}", " {\"a\": [true, null]} "] {
            assert_eq!(Payload::from_json(text).unwrap().as_json(), text);
        }
    }

    /// Arrays, and objects with a `"k"` member, alternating to `depth` levels around `0`.
    fn nested(depth: usize) -> Value {
        (0..depth).fold(Value::from(0), |inner, level| {
            if level % 2 == 0 {
                Value::Array(vec![inner])
            } else {
                serde_json::json!({ "k": inner })
            }
        })
    }

    #[test]
    fn the_depth_limit_is_the_one_serde_json_reads() {
        let text = |depth| nested(depth).to_string();
        let deepest = (1..512)
            .take_while(|&depth| serde_json::from_str::<Value>(&text(depth)).is_ok())
            .last()
            .unwrap();
        assert_eq!(deepest, MAX_PAYLOAD_DEPTH);
    }

    #[test]
    fn from_json_refuses_what_a_value_cannot_hold() {
        assert!(Payload::from_json(r#""\ud800""#).is_err());
        assert!(Payload::from_json("\"a\u{1}\"").is_err());
        let text = |depth| nested(depth).to_string();
        assert!(Payload::from_json(&text(MAX_PAYLOAD_DEPTH)).is_ok());
        assert!(Payload::from_json(&text(MAX_PAYLOAD_DEPTH + 1)).is_err());
    }

    #[test]
    fn new_refuses_payloads_too_deep_to_read_back() {
        let payload = Payload::new(nested(MAX_PAYLOAD_DEPTH)).unwrap();
        assert_eq!(payload.to_value(), nested(MAX_PAYLOAD_DEPTH));
        let deep = nested(MAX_PAYLOAD_DEPTH + 1);
        assert!(Payload::new(&deep).is_err());
        assert!(matches!(
            Event::new("a.b", None, &deep, Timestamp::EPOCH),
            Err(EmitError::Payload(_))
        ));

        // Brackets inside strings, escaped quotes included, are not nesting.
        let brackets = "[{".repeat(2 * MAX_PAYLOAD_DEPTH);
        for text in [
            brackets.clone(),
            format!("\"{brackets}"),
            format!("\\\"{brackets}"),
        ] {
            let payload = Payload::new(serde_json::json!([text])).unwrap();
            assert_eq!(payload.to_value(), serde_json::json!([text]));
        }
        let after_a_string = serde_json::json!(["\\\"", nested(MAX_PAYLOAD_DEPTH)]);
        assert!(Payload::new(after_a_string).is_err());
    }

    #[test]
    fn payloads_are_equal_by_text_or_by_value() {
        let a = Payload::from_json(r#"{"a":1,"b":2}"#).unwrap();
        let b = Payload::from_json(r#"{"b":2,"a":1}"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(b, a);
        assert_eq!(a, Payload::from_json(r#"{ "a": 1, "b": 2 }"#).unwrap());
        assert_eq!(
            Payload::from_json(r#""\u00e9""#).unwrap(),
            Payload::from_json(r#""é""#).unwrap()
        );
        assert_eq!(a, Payload::from_value(&serde_json::json!({"b": 2, "a": 1})));
        assert_eq!(a.clone(), a);

        assert_ne!(a, Payload::from_json(r#"{"a":1,"b":3}"#).unwrap());
        assert_ne!(a, Payload::from_json(r#"{"a":1}"#).unwrap());
        assert_ne!(a, Payload::from_json(r#"[1,2]"#).unwrap());
        assert_ne!(a, serde_json::json!({"a": 1}));
        assert_ne!(
            Payload::from_json("1.50").unwrap(),
            Payload::from_json("1.5").unwrap()
        );
    }

    #[test]
    fn numbers_keep_their_digits() {
        let text = r#"{"big":12345678901234567890123,"price":1.50,"exp":1e2}"#;
        let payload = Payload::from_json(text).unwrap();
        assert_eq!(payload.as_json(), text);
        let value = payload.to_value();
        assert_eq!(value["big"].to_string(), "12345678901234567890123");
        assert_eq!(value["price"].to_string(), "1.50");
        assert_eq!(value["exp"], Payload::from_json("1e2").unwrap());
        assert_eq!(
            Payload::from_value(&serde_json::json!({"x": [value["big"], value["price"]]}))
                .as_json(),
            r#"{"x":[12345678901234567890123,1.50]}"#
        );
        let big = Payload::new(12345678901234567890123_u128).unwrap();
        assert_eq!(big.as_json(), "12345678901234567890123");
    }

    #[test]
    fn event_ids_derive_from_the_payload_text() {
        let id = |payload: &str| {
            let payload = Payload::from_json(payload).unwrap().to_value();
            Event::new("a.b", None, payload, Timestamp::EPOCH)
                .unwrap()
                .id
        };
        assert_eq!(id(r#"{"n":1}"#), id(r#"{"n":1}"#));
        assert_ne!(id(r#"{"n":1}"#), id(r#"{"n":2}"#));
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
    fn staged_ids_hash_the_record_key_encoding_then_fence_then_position() {
        let key = RecordKey::new(
            Scope::with_caller("orders.create", "tenant"),
            IdempotencyKey::new("k-1").unwrap(),
        );
        let stage = EventStage::new(&key, Fence(7), Timestamp::EPOCH);
        stage.stage(None, "a.b", 1).unwrap();
        stage.stage(None, "a.b", 2).unwrap();
        let events = stage.close();
        for (position, event) in events.iter().enumerate() {
            let mut hasher = Sha256::new();
            hasher.update(key.encode());
            hasher.update(7u64.to_be_bytes());
            hasher.update((position as u64).to_be_bytes());
            let expected = format!("evt_{}", hex::encode(&hasher.finalize()[..12]));
            assert_eq!(event.id, expected);
        }
        assert_eq!(events.capacity(), 2);
    }

    #[test]
    fn emit_after_close_is_refused() {
        let key = RecordKey::new(Scope::new("op"), IdempotencyKey::new("k").unwrap());
        let stage = EventStage::new(&key, Fence(1), Timestamp::EPOCH);
        stage.close();
        assert_eq!(stage.stage(None, "a.b", 1), Err(EmitError::Closed));
    }
}
