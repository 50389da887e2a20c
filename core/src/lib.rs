//! The sans-IO core of Cnerium: makes an HTTP POST safe to retry.
//!
//! A client sends a POST with an `Idempotency-Key` header. The first request with a key
//! claims it, runs the handler and stores the response; a retry with the same key and the
//! same request gets the stored response back byte for byte, and the handler does not run
//! again; the same key with another request is a conflict. Events a handler emits are
//! stored with its response and published only after the commit, so a retry never
//! notifies anyone twice.
//!
//! This crate works on `http::Request<Bytes>` and `http::Response<Bytes>`. It does no I/O,
//! spawns no task and reads no clock: records go through a [`Store`], events through an
//! [`EventSink`], time comes from a [`Clock`]. The [`Engine`] type documents how an adapter
//! drives it.

#![warn(missing_docs)]

pub mod engine;
pub mod event;
pub mod fingerprint;
pub mod key;
pub mod request;
pub mod response;
pub mod store;
pub mod time;

pub use async_trait::async_trait;
pub use engine::{
    BoxError, Decision, DurableRoute, Engine, EngineConfig, Handler, IntoHandlerResult, decide,
};
pub use event::{DiscardEvents, EmitError, Event, EventSink, Payload, PublishError};
pub use fingerprint::Fingerprint;
pub use key::{IdempotencyKey, KeyError};
pub use request::{BodyError, DurableRequest, Emitter};
pub use response::{DurableResponse, ProblemKind, ReplayHeaders};
pub use store::{
    ClaimOutcome, ClaimRequest, CompleteError, Completion, Fence, PendingEvents, Record, RecordKey,
    RecordState, Scope, Store, StoreError, StoredResponse,
};
pub use time::{Clock, ManualClock, Timestamp};
