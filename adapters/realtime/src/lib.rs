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
//! Which rooms a connection may join is the application's decision: give the hub a
//! [`JoinRule`] that looks at the handshake's [`ConnectionInfo`] (URI and headers).
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
