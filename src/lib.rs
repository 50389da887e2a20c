//! Cnerium makes HTTP operations safe to retry.
//!
//! A client that sends `POST /orders` with an `Idempotency-Key` header gets the order
//! created once, however often the network makes it retry. The first request with a key
//! runs the handler and stores its response; a retry with the same key and body gets the
//! stored response back, byte for byte, with `Idempotent-Replayed: true`, and the handler
//! does not run again; the same key with another body is a 409 conflict. Events a handler
//! emits (`order.created` to a room of WebSocket clients) are stored with the response and
//! published after the commit, so a retry never notifies anyone twice.
//!
//! This crate gathers what a service needs; cargo features choose the parts:
//!
//! | feature | default | brings |
//! |---|---|---|
//! | `warp` | yes | [`warp`]: durable routes in a warp filter tree |
//! | `realtime` | yes | [`realtime`]: the WebSocket event hub on tokio |
//! | `tide` | no | `tide`: durable routes as tide 0.16 endpoints, on async-std |
//! | `realtime-async-std` | no | [`realtime`]: the same hub with its listener on async-std |
//! | `memory-store` | yes | [`stores::MemoryStore`] |
//! | `file-store` | yes | [`stores::FileStore`], the durable embedded store |
//!
//! A complete route over the in-memory store, driven by hand:
//!
//! ```
//! # #[cfg(feature = "memory-store")]
//! # futures_executor::block_on(async {
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use cnerium::stores::MemoryStore;
//! use cnerium::{DurableRequest, DurableResponse, Engine, SystemClock};
//!
//! let engine = Engine::new(Arc::new(MemoryStore::new()), Arc::new(SystemClock));
//! let route = engine.route("orders.create", |request: DurableRequest| async move {
//!     let order_id = format!("ord_{}", request.idempotency_key());
//!     request.emit("order.created", serde_json::json!({ "order_id": order_id }))?;
//!     Ok::<_, cnerium::BoxError>(DurableResponse::created(serde_json::json!({
//!         "ok": true,
//!         "order_id": order_id,
//!     })))
//! });
//!
//! let request = || {
//!     http::Request::post("/orders")
//!         .header("idempotency-key", "order-123")
//!         .header("content-type", "application/json")
//!         .body(Bytes::from_static(br#"{"product_id":"p1","quantity":2}"#))
//!         .unwrap()
//! };
//! let first = route.handle(request()).await;
//! let retry = route.handle(request()).await;
//! assert_eq!(first.status(), 201);
//! assert_eq!(retry.status(), 201);
//! assert_eq!(retry.body(), first.body());
//! assert_eq!(retry.headers()["idempotent-replayed"], "true");
//! # });
//! ```

#![warn(missing_docs)]

mod config;

pub use cnerium_core::*;
pub use config::{AppConfig, ConfigError, RealtimeEndpoint};

#[cfg(feature = "warp")]
pub use cnerium_warp as warp;

#[cfg(feature = "tide")]
pub use cnerium_tide as tide;

#[cfg(any(feature = "realtime", feature = "realtime-async-std"))]
pub use cnerium_realtime as realtime;

/// Record stores.
///
/// Shared by several replicas of a service, with the features that are off by default:
///
/// | feature | brings |
/// |---|---|
/// | `postgres-store` | `stores::postgres` (`cnerium-store-postgres`), `stores::PostgresStore` |
/// | `redis-store` | `stores::redis` (`cnerium-store-redis`), `stores::RedisStore`, event relay |
pub mod stores {
    #[cfg(feature = "file-store")]
    pub use cnerium_store_file as file;
    #[cfg(feature = "file-store")]
    pub use cnerium_store_file::FileStore;
    #[cfg(feature = "memory-store")]
    pub use cnerium_store_memory::MemoryStore;
    #[cfg(feature = "postgres-store")]
    pub use cnerium_store_postgres as postgres;
    #[cfg(feature = "postgres-store")]
    pub use cnerium_store_postgres::PostgresStore;
    #[cfg(feature = "redis-store")]
    pub use cnerium_store_redis as redis;
    #[cfg(feature = "redis-store")]
    pub use cnerium_store_redis::RedisStore;
}

/// The wall clock, for services; tests use [`ManualClock`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_system_time(std::time::SystemTime::now())
    }
}

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
