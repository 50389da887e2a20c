//! A whole WebSocket session through `Hub::serve_io` over an in-memory stream: a fixed
//! opening handshake with fuzzed rooms on the URL, then fuzzed client frames (well-formed
//! frames with any payload, and raw bytes). Never panics or hangs, answers only with frames
//! of the documented protocol, and leaves no connection registered behind.

#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use arbitrary::Arbitrary;
use cnerium_realtime::{ConnectionInfo, Hub, RealtimeConfig};
use futures_io::{AsyncRead, AsyncWrite};
use futures_util::future::{self, BoxFuture};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Frame limit of the fuzzed hub: small, so the fuzzer reaches the 1009 close.
const MAX_FRAME: usize = 1024;

#[derive(Arbitrary, Debug)]
struct Session {
    /// Rooms joined on the URL, percent-encoded into the query.
    url_rooms: Vec<String>,
    frames: Vec<ClientFrame>,
}

#[derive(Arbitrary, Debug)]
enum ClientFrame {
    Join(String),
    Leave(String),
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Close,
    /// One frame with any header bits, masked as a client must.
    Frame {
        first_byte: u8,
        payload: Vec<u8>,
    },
    /// Bytes as they are, not even framed.
    Raw(Vec<u8>),
}

fuzz_target!(|session: Session| {
    let hub = Hub::builder(RealtimeConfig {
        max_frame_size: MAX_FRAME,
        max_rooms_per_connection: 4,
        queue_capacity: 64,
        ..RealtimeConfig::default()
    })
    .join_rule(|_: &ConnectionInfo, room: &str| !room.starts_with("secret"))
    .build();

    let mut input = handshake(&session.url_rooms);
    let handshake_len = input.len();
    for frame in &session.frames {
        encode(frame, &mut input);
    }
    let mut io = Duplex {
        input,
        read_at: 0,
        handshake_len,
        answer_stalls_left: STALLS_FOR_ANSWER,
        stalls_left: STALLS_AT_END,
        output: Vec::new(),
    };
    futures_executor::block_on(hub.serve_io(&mut io, None, never));

    assert_eq!(
        hub.connection_count(),
        0,
        "the session left a connection behind"
    );
    check_output(&io.output);
});

/// A timer that never fires: the session ends when the input does.
fn never(_: Duration) -> BoxFuture<'static, ()> {
    Box::pin(future::pending())
}

fn handshake(rooms: &[String]) -> Vec<u8> {
    let mut target = String::from("/ws");
    for (i, room) in rooms.iter().take(8).enumerate() {
        target.push(if i == 0 { '?' } else { '&' });
        target.push_str("room=");
        for byte in room.bytes() {
            target.push_str(&format!("%{byte:02X}"));
        }
    }
    format!(
        "GET {target} HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

fn encode(frame: &ClientFrame, out: &mut Vec<u8>) {
    let join = |kind: &str, room: &str| {
        serde_json::json!({"type": kind, "payload": {"room": room}})
            .to_string()
            .into_bytes()
    };
    match frame {
        ClientFrame::Join(room) => push_frame(out, 0x81, &join("room.join", room)),
        ClientFrame::Leave(room) => push_frame(out, 0x81, &join("room.leave", room)),
        ClientFrame::Text(text) => push_frame(out, 0x81, text.as_bytes()),
        ClientFrame::Binary(bytes) => push_frame(out, 0x82, bytes),
        ClientFrame::Ping(bytes) => push_frame(out, 0x89, &bytes[..bytes.len().min(125)]),
        ClientFrame::Close => push_frame(out, 0x88, &[0x03, 0xE8]),
        ClientFrame::Frame {
            first_byte,
            payload,
        } => push_frame(out, *first_byte, payload),
        ClientFrame::Raw(bytes) => out.extend_from_slice(bytes),
    }
}

/// Appends one masked client frame.
fn push_frame(out: &mut Vec<u8>, first_byte: u8, payload: &[u8]) {
    const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];
    out.push(first_byte);
    match payload.len() {
        len @ 0..=125 => out.push(0x80 | len as u8),
        len @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
}

/// The server wrote an HTTP answer, then (after a 101) only frames of the protocol.
fn check_output(output: &[u8]) {
    if output.is_empty() {
        return;
    }
    let head_end = output
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the server's answer starts with a complete HTTP head")
        + 4;
    let head = String::from_utf8_lossy(&output[..head_end]);
    assert!(
        head.starts_with("HTTP/1.1 101 "),
        "handshake refused: {head}"
    );

    let mut rest = &output[head_end..];
    while !rest.is_empty() {
        let (opcode, payload, len) = server_frame(rest);
        match opcode {
            0x1 => check_reply(payload),
            0x8 => {
                if payload.len() >= 2 {
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    assert!(
                        matches!(code, 1000 | 1001 | 1002 | 1007 | 1008 | 1009 | 1011),
                        "unexpected close code {code}"
                    );
                }
            }
            0x9 | 0xA => {}
            other => panic!("the server sent opcode {other:#x}"),
        }
        rest = &rest[len..];
    }
}

/// Opcode, payload and total length of the unmasked server frame at the start of `bytes`.
fn server_frame(bytes: &[u8]) -> (u8, &[u8], usize) {
    assert!(bytes.len() >= 2, "truncated server frame");
    assert_eq!(bytes[0] & 0x80, 0x80, "server frames are final");
    assert_eq!(bytes[1] & 0x80, 0, "server frames are unmasked");
    let (len, at) = match bytes[1] & 0x7F {
        126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
        127 => {
            let mut len = [0u8; 8];
            len.copy_from_slice(&bytes[2..10]);
            (u64::from_be_bytes(len) as usize, 10)
        }
        len => (len as usize, 2),
    };
    let payload = &bytes[at..at + len];
    (bytes[0] & 0x0F, payload, at + len)
}

fn check_reply(payload: &[u8]) {
    let reply: Value = serde_json::from_slice(payload).expect("replies are JSON");
    match reply["type"].as_str() {
        Some("room.joined" | "room.left") => {
            assert!(reply["payload"]["room"].is_string(), "{reply}");
        }
        Some("error") => {
            let code = reply["payload"]["code"].as_str().unwrap_or_default();
            assert!(
                matches!(
                    code,
                    "invalid_json"
                        | "invalid_frame"
                        | "unknown_type"
                        | "invalid_room"
                        | "join_refused"
                        | "too_many_rooms"
                        | "binary_unsupported"
                ),
                "{reply}"
            );
            assert!(reply["payload"]["message"].is_string(), "{reply}");
        }
        _ => panic!("unexpected reply {reply}"),
    }
}

/// Times a read at the end of the input answers "not yet" before it answers end of stream,
/// so that the session writes the replies it queued before it sees the client leave.
const STALLS_AT_END: usize = 4;

/// Times a read after the handshake request answers "not yet" while the server has not
/// answered it: a client sends frames only once it has the server's answer (RFC 6455,
/// section 4.1), and the server refuses data that arrives before.
const STALLS_FOR_ANSWER: usize = 64;

/// Client bytes to read, server bytes written.
struct Duplex {
    input: Vec<u8>,
    read_at: usize,
    /// The opening handshake's length: the frames after it wait for the server's answer.
    handshake_len: usize,
    answer_stalls_left: usize,
    stalls_left: usize,
    output: Vec<u8>,
}

impl AsyncRead for &mut Duplex {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.read_at == this.handshake_len
            && this.output.is_empty()
            && this.answer_stalls_left > 0
        {
            this.answer_stalls_left -= 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if this.read_at == this.input.len() && this.stalls_left > 0 {
            this.stalls_left -= 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        // The handshake request is read on its own, as a client that waits sends it.
        let end = if this.read_at < this.handshake_len {
            this.handshake_len
        } else {
            this.input.len()
        };
        let left = &this.input[this.read_at..end];
        let n = left.len().min(buf.len());
        buf[..n].copy_from_slice(&left[..n]);
        this.read_at += n;
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for &mut Duplex {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().output.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
