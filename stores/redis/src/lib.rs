//! A Redis [`Store`](cnerium_core::Store) for Cnerium, and an event relay that delivers each
//! committed event to the WebSocket clients of every replica exactly once.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use cnerium_core::{DiscardEvents, EventSink};
//! use cnerium_store_redis::{DEFAULT_CHANNEL, RedisEventRelay, RedisOptions, RedisStore};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let url = "redis://cache.internal:6379/0";
//! let store = RedisStore::connect(url, RedisOptions::new().key_prefix("orders:")).await?;
//!
//! // The engine publishes committed events to the channel only...
//! let sink = store.event_sink(DEFAULT_CHANNEL);
//! // ...and every replica delivers what the channel carries to its own clients.
//! let hub: Arc<dyn EventSink> = Arc::new(DiscardEvents); // this replica's WebSocket hub
//! let relay = RedisEventRelay::subscribe(url, DEFAULT_CHANNEL, hub).await?;
//! tokio::spawn(relay.run());
//! // ... hand `store` and `sink` to the engine, serve ...
//! # Ok(())
//! # }
//! ```
//!
//! # Design
//!
//! Each record is a Redis hash. Every store method is one Lua script or one command (one
//! round-trip), and Redis runs a script without interleaving other commands, so a claim
//! reads the record, decides and writes atomically: of any number of concurrent claims
//! exactly one is granted. Fences come from `INCR` on a counter key that never expires, so
//! they grow across takeovers, releases and purges. `complete`, `release` and
//! `mark_published` check state and fence inside their script.
//!
//! Records expire twice over: Redis deletes a record by TTL (`PEXPIRE` with the time left
//! until `expires_at` by the engine's clock), and every method treats a record whose
//! `expires_at` is at or before the caller's `now` as absent, so the engine's clock has the
//! last word even when it differs from the Redis server's. `purge_expired` deletes records
//! expired by the engine's clock that Redis still holds and clears the store's indexes;
//! the records Redis expired by itself are not counted.
//!
//! `events_since` reads a sorted set of the completed records that have events, by
//! completion time; each record's events are read from its hash, so Redis keeps one copy.
//!
//! See [`relay`] for how events travel between replicas.

#![warn(missing_docs)]

mod error;
mod options;
mod record;
pub mod relay;
mod scripts;
mod store;

pub use error::ConnectError;
pub use options::RedisOptions;
pub use relay::{
    DEFAULT_CHANNEL, EnvelopeError, RedisEventRelay, RedisEventSink, event_from_envelope,
};
pub use store::RedisStore;
