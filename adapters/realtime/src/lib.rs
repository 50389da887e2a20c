//! Realtime WebSocket delivery for Cnerium: the events a durable handler emits reach
//! connected clients once its result is committed.
//!
//! A [`Hub`] holds the open connections and their rooms and is the application's
//! [`EventSink`](cnerium_core::EventSink). Clients connect to the configured path (`/ws`
//! by default), join rooms with `?room=a&room=b` on the URL or with
//! `{"type":"room.join","payload":{"room":"a"}}` frames (and `room.leave`), and receive one
//! text frame per event, the envelope of [`Event::to_envelope`](cnerium_core::Event):
//! broadcasts reach every connection, room events the room's members only. The server
//! answers `room.joined`, `room.left`, or an `error` frame whose `code` is an
//! [`ErrorCode`].
//!
//! Publishing never waits on a client: every connection has a bounded queue, and a client
//! whose queue fills up is disconnected (close code 1008). The server pings every
//! [`ping_interval`](RealtimeConfig::ping_interval), closes a client silent for
//! [`idle_timeout`](RealtimeConfig::idle_timeout) (1001), and closes one that sends a
//! frame over [`max_frame_size`](RealtimeConfig::max_frame_size) (1009).
//!
//! A request on the endpoint that cannot be upgraded gets an HTTP error with an
//! `application/problem+json` body, then the connection closes: 404 for another path, 405
//! (with `Allow: GET`) for another method, 426 (with `Upgrade: websocket`) for a request
//! that does not ask for a WebSocket upgrade, 426 (with `Sec-WebSocket-Version: 13`) for
//! another WebSocket version, 400 for a missing or malformed `Sec-WebSocket-Key` or a
//! request that is not valid HTTP/1.1 (one `Host` header included), and 431 for a request
//! head over 16 KiB.
//!
//! Which rooms a connection may join is the application's decision: give the hub a
//! [`JoinRule`] that looks at the handshake's [`ConnectionInfo`] (URI and headers).
//!
//! # Catching up after a reconnect
//!
//! Events published while a client was away, or queued for it when the server died, are
//! not lost for it: a client that reconnects with `?since=<cursor>`, the `ts` of the last
//! event it received (as in the envelope, `2026-12-03T19:05:09.123Z`, or integer
//! milliseconds since the epoch; `since=0` for everything kept), first receives the
//! committed events it may have missed, then live events, never the same event id twice on
//! one connection. The history comes from the hub's [`Backlog`];
//! [`Engine`](cnerium_core::Engine) is one, reading its store's
//! [`events_since`](cnerium_core::Store::events_since).
//!
//! The hub looks back a little before the cursor (the engine's lease, 30 s by default),
//! because an event's `ts` is when the handler emitted it and its record commits later. So
//! a client may receive again events it had before the reconnect: it drops them by id, as
//! it drops repeats after a server restart. A cursor that does not parse is answered with
//! an `invalid_cursor` error frame, and a connection whose backlog fails gets live events
//! only. See [`Hub`] for the order of the steps and [`RealtimeConfig`] for the limits.
//!
//! # Features
//!
//! - `tokio`: `tokio::Listener`, a standalone listener on tokio.
//! - `async-std`: `async_std::Listener`, the same listener on async-std 1.x.
//! - `warp`: `warp::route`, the endpoint as a filter of the application's warp server.
//!
//! Without features the crate offers the hub, the configuration and
//! [`Hub::serve_io`], which serves one connection over any futures I/O stream given a
//! runtime's timer.
//!
//! # Example
//!
//! ```no_run
//! # #[cfg(feature = "tokio")]
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::net::SocketAddr;
//!
//! use cnerium_core::{Event, Timestamp};
//! use cnerium_realtime::{ConnectionInfo, Hub, RealtimeConfig};
//!
//! // Only the client presenting `Authorization: Bearer u123` may join `user:123`.
//! let hub = Hub::builder(RealtimeConfig::default())
//!     .join_rule(|connection: &ConnectionInfo, room: &str| match room.strip_prefix("user:") {
//!         Some(user) => connection.bearer_token() == Some(&format!("u{user}")),
//!         None => true,
//!     })
//!     .build();
//!
//! let addr: SocketAddr = "127.0.0.1:0".parse()?;
//! let listener = cnerium_realtime::tokio::Listener::bind(addr, hub.clone()).await?;
//! println!("clients connect to ws://{}/ws", listener.local_addr());
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(listener.run_until(async {
//!     let _ = stopped.await;
//! }));
//!
//! let now = Timestamp::from_system_time(std::time::SystemTime::now());
//! let payload = serde_json::json!({"id": 1});
//! let event = Event::new("order.created", Some("orders".into()), payload, now)?;
//! hub.publish_event(&event);
//!
//! let _ = stop.send(());
//! server.await?;
//! # Ok(()) }
//! ```

mod backlog;
mod config;
mod connection;
mod handshake;
mod hub;
mod listener;
mod outbox;
mod protocol;

#[cfg(feature = "async-std")]
pub mod async_std;
#[cfg(feature = "tokio")]
pub mod tokio;
#[cfg(feature = "warp")]
pub mod warp;

pub use backlog::{Backlog, BacklogError};
pub use config::{ConfigError, RealtimeConfig};
pub use connection::Sleep;
pub use hub::{AllowAll, ConnectionInfo, Hub, HubBuilder, JoinRule};
pub use listener::ListenError;
pub use protocol::ErrorCode;
