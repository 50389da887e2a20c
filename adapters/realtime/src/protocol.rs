//! The JSON frames a client sends and the answers the server gives.

use std::fmt;

use async_tungstenite::tungstenite::Message;
use cnerium_core::Timestamp;
use cnerium_core::event::validate_room;
use serde::Serialize;
use serde_json::Value;

/// A request a client made with a text frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// `{"type":"room.join","payload":{"room":"..."}}`
    Join(String),
    /// `{"type":"room.leave","payload":{"room":"..."}}`
    Leave(String),
}

/// The `code` of an `error` frame the server sends to a client.
///
/// The frame reads `{"type":"error","payload":{"code":"...","message":"..."}}`, with a
/// `room` field added when the error concerns a valid room name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The text frame is not JSON.
    InvalidJson,
    /// The JSON is not an object with a string `type`.
    InvalidFrame,
    /// The `type` is not one the server knows.
    UnknownType,
    /// The room is missing, not a string, empty, longer than 200 bytes, or holds control
    /// characters.
    InvalidRoom,
    /// The application's join rule refused the room.
    JoinRefused,
    /// The connection is already a member of as many rooms as allowed.
    TooManyRooms,
    /// The client sent a binary frame; the protocol is JSON text only.
    BinaryUnsupported,
    /// The `since` parameter of the URL is neither an RFC 3339 UTC time nor integer
    /// milliseconds since the epoch; the connection gets live events only.
    InvalidCursor,
    /// The catch-up stopped at
    /// [`max_catch_up_events`](crate::RealtimeConfig::max_catch_up_events): newer missed
    /// events were not sent. The frame comes right after the last caught-up event;
    /// reconnecting with that event's `ts` as `since` fetches the next ones.
    CatchUpTruncated,
}

impl ErrorCode {
    /// The code as it appears on the wire, such as `join_refused`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidFrame => "invalid_frame",
            Self::UnknownType => "unknown_type",
            Self::InvalidRoom => "invalid_room",
            Self::JoinRefused => "join_refused",
            Self::TooManyRooms => "too_many_rooms",
            Self::BinaryUnsupported => "binary_unsupported",
            Self::InvalidCursor => "invalid_cursor",
            Self::CatchUpTruncated => "catch_up_truncated",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request the server refuses, with what to tell the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    pub(crate) room: Option<String>,
}

impl Refusal {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            room: None,
        }
    }

    pub(crate) fn for_room(code: ErrorCode, message: impl Into<String>, room: &str) -> Self {
        Self {
            room: Some(room.to_owned()),
            ..Self::new(code, message)
        }
    }

    pub(crate) fn to_message(&self) -> Message {
        Reply::Error {
            code: self.code,
            message: &self.message,
            room: self.room.as_deref(),
        }
        .to_message()
    }
}

/// A frame the server sends in answer to a client.
#[derive(Serialize)]
#[serde(tag = "type", content = "payload")]
pub(crate) enum Reply<'a> {
    #[serde(rename = "room.joined")]
    Joined { room: &'a str },
    #[serde(rename = "room.left")]
    Left { room: &'a str },
    #[serde(rename = "error")]
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
    },
}

impl Reply<'_> {
    pub(crate) fn to_message(&self) -> Message {
        // Strings and a unit enum always serialize.
        Message::text(serde_json::to_string(self).expect("serializing a reply frame"))
    }
}

/// Reads one client text frame.
pub(crate) fn parse_request(text: &str) -> Result<Request, Refusal> {
    let frame: Value = serde_json::from_str(text)
        .map_err(|e| Refusal::new(ErrorCode::InvalidJson, format!("frame is not JSON: {e}")))?;
    let Some(kind) = frame.get("type").and_then(Value::as_str) else {
        return Err(Refusal::new(
            ErrorCode::InvalidFrame,
            "frame must be a JSON object with a string \"type\"",
        ));
    };
    let make: fn(String) -> Request = match kind {
        "room.join" => Request::Join,
        "room.leave" => Request::Leave,
        _ => {
            return Err(Refusal::new(
                ErrorCode::UnknownType,
                "unknown frame type: expected \"room.join\" or \"room.leave\"",
            ));
        }
    };
    let room = frame
        .get("payload")
        .and_then(|payload| payload.get("room"))
        .and_then(Value::as_str)
        .ok_or_else(|| Refusal::new(ErrorCode::InvalidRoom, "payload.room must be a string"))?;
    check_room(room)?;
    Ok(make(room.to_owned()))
}

/// Reads the `since` cursor of a connection URL: the `ts` of an envelope
/// (`2026-12-03T19:05:09.123Z`) or integer milliseconds since the Unix epoch.
pub(crate) fn parse_cursor(text: &str) -> Result<Timestamp, Refusal> {
    let refused = || {
        Refusal::new(
            ErrorCode::InvalidCursor,
            "since must be an RFC 3339 time such as 2026-12-03T19:05:09.123Z or \
             milliseconds since the Unix epoch; sending live events only",
        )
    };
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map(Timestamp::from_millis)
            .map_err(|_| refused());
    }
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| refused())?;
    // Before the epoch there is nothing to catch up on; the epoch asks for everything.
    let millis = at.unix_timestamp_nanos().max(0) / 1_000_000;
    Ok(Timestamp::from_millis(
        u64::try_from(millis).unwrap_or(u64::MAX),
    ))
}

/// Checks a room name the way events check it.
pub(crate) fn check_room(room: &str) -> Result<(), Refusal> {
    // The refused name is not echoed: it may be long or hold control characters.
    validate_room(room).map_err(|_| {
        Refusal::new(
            ErrorCode::InvalidRoom,
            format!(
                "a room is 1 to {} bytes without control characters",
                cnerium_core::event::MAX_NAME_LEN
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> ErrorCode {
        parse_request(text).unwrap_err().code
    }

    #[test]
    fn join_and_leave_frames_are_read() {
        assert_eq!(
            parse_request(r#"{"type":"room.join","payload":{"room":"a"}}"#),
            Ok(Request::Join("a".into()))
        );
        assert_eq!(
            parse_request(r#"{"payload":{"room":"b"},"type":"room.leave"}"#),
            Ok(Request::Leave("b".into()))
        );
    }

    #[test]
    fn bad_frames_are_refused_with_their_code() {
        assert_eq!(code("{not json"), ErrorCode::InvalidJson);
        assert_eq!(code("[1,2]"), ErrorCode::InvalidFrame);
        assert_eq!(code(r#"{"type":7}"#), ErrorCode::InvalidFrame);
        assert_eq!(code(r#"{"type":"room.dance"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"room.join"}"#), ErrorCode::InvalidRoom);
        assert_eq!(
            code(r#"{"type":"room.join","payload":{"room":1}}"#),
            ErrorCode::InvalidRoom
        );
        assert_eq!(
            code(r#"{"type":"room.join","payload":{"room":""}}"#),
            ErrorCode::InvalidRoom
        );
        let long = format!(
            r#"{{"type":"room.join","payload":{{"room":"{}"}}}}"#,
            "r".repeat(201)
        );
        assert_eq!(code(&long), ErrorCode::InvalidRoom);
        assert_eq!(
            code(r#"{"type":"room.join","payload":{"room":"a\nb"}}"#),
            ErrorCode::InvalidRoom
        );
    }

    #[test]
    fn cursors_are_envelope_times_or_epoch_millis() {
        let ts = Timestamp::from_millis(1_796_324_709_123);
        assert_eq!(parse_cursor(&ts.to_rfc3339()), Ok(ts));
        assert_eq!(parse_cursor("1796324709123"), Ok(ts));
        assert_eq!(parse_cursor("0"), Ok(Timestamp::EPOCH));
        assert_eq!(
            parse_cursor("2026-12-03T19:05:09Z"),
            Ok(Timestamp::from_millis(1_796_324_709_000))
        );
        // Any offset, lower-case separators, and any number of fraction digits.
        for same in [
            "2026-12-03T20:05:09.123+01:00",
            "2026-12-03T19:05:09.123+00:00",
            "2026-12-03t19:05:09.123z",
            "2026-12-03T19:05:09.123456789Z",
            "2026-12-03T14:35:09.123-04:30",
        ] {
            assert_eq!(parse_cursor(same), Ok(ts), "{same}");
        }
        assert_eq!(parse_cursor("1969-12-31T23:59:59Z"), Ok(Timestamp::EPOCH));
        for bad in [
            "",
            "yesterday",
            "-5",
            "1.5",
            "99999999999999999999999",
            "2026-13-03",
        ] {
            assert_eq!(
                parse_cursor(bad).unwrap_err().code,
                ErrorCode::InvalidCursor,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn deeply_nested_json_is_refused_without_overflowing_the_stack() {
        let text = "[".repeat(100_000);
        assert_eq!(code(&text), ErrorCode::InvalidJson);
    }

    #[test]
    fn replies_use_the_documented_wire_shape() {
        let text = |reply: Reply<'_>| reply.to_message().into_text().unwrap().to_string();
        assert_eq!(
            text(Reply::Joined { room: "a" }),
            r#"{"type":"room.joined","payload":{"room":"a"}}"#
        );
        assert_eq!(
            text(Reply::Left { room: "a" }),
            r#"{"type":"room.left","payload":{"room":"a"}}"#
        );
        let refusal = Refusal::for_room(ErrorCode::JoinRefused, "no", "a");
        assert_eq!(
            refusal.to_message().into_text().unwrap().as_str(),
            r#"{"type":"error","payload":{"code":"join_refused","message":"no","room":"a"}}"#
        );
    }
}
