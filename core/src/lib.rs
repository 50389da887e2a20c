//! The sans-IO core of Cnerium: makes an HTTP POST safe to retry.
pub mod event;
pub mod fingerprint;
pub mod key;
pub mod store;
pub mod time;

pub use event::{DiscardEvents, EmitError, Event, EventSink, PublishError};
pub use fingerprint::Fingerprint;
pub use key::{IdempotencyKey, KeyError};
pub use store::{
    ClaimOutcome, ClaimRequest, CompleteError, Completion, Fence, PendingEvents, Record,
    RecordKey, RecordState, Scope, Store, StoreError, StoredResponse,
};
pub use time::{Clock, ManualClock, Timestamp};
pub use async_trait::async_trait;
