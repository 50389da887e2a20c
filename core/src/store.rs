//! The [`Store`] trait: where records live, and the contract every store keeps.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

use crate::event::Event;
use crate::fingerprint::Fingerprint;
use crate::key::IdempotencyKey;
use crate::time::Timestamp;

/// The key space a record lives in: an operation name plus an optional caller identity.
///
/// Two scopes never share records: the same idempotency key sent to two operations, or by
/// two callers of one operation with a scope function set, names two records.
///
/// The operation name is shared: every record key a route makes points at the route's one
/// copy, so a store holding many records keeps the name once.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    operation: Arc<str>,
    caller: Option<Box<str>>,
}

impl Scope {
    /// The scope of `operation` shared by every caller.
    pub fn new(operation: impl Into<String>) -> Self {
        Self {
            operation: Arc::from(operation.into()),
            caller: None,
        }
    }

    /// The scope of `operation` for one caller (a tenant, a user).
    pub fn with_caller(operation: impl Into<String>, caller: impl Into<String>) -> Self {
        Self {
            operation: Arc::from(operation.into()),
            caller: Some(caller.into().into_boxed_str()),
        }
    }

    /// The scope of a route's `operation` for `caller`, sharing the route's name.
    pub(crate) fn of_route(operation: &Arc<str>, caller: Option<String>) -> Self {
        Self {
            operation: Arc::clone(operation),
            caller: caller.map(String::into_boxed_str),
        }
    }

    /// The operation name.
    pub fn operation(&self) -> &str {
        &self.operation
    }

    /// The caller identity, if the route has a scope function.
    pub fn caller(&self) -> Option<&str> {
        self.caller.as_deref()
    }
}

/// The identity of one record: its scope and its idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey {
    scope: Scope,
    key: IdempotencyKey,
}

impl RecordKey {
    /// The record of `key` within `scope`.
    pub fn new(scope: Scope, key: IdempotencyKey) -> Self {
        Self { scope, key }
    }

    /// The scope.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The idempotency key.
    pub fn key(&self) -> &IdempotencyKey {
        &self.key
    }

    /// An unambiguous byte encoding of scope and key, for stores that index by one string.
    ///
    /// Each part is length-prefixed, so no choice of operation, caller or key can make two
    /// record keys encode alike. The encoding is stable across versions of this crate.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            16 + self.scope.operation.len()
                + self.scope.caller.as_ref().map_or(0, |c| c.len())
                + self.key.as_str().len(),
        );
        self.encode_into(|bytes| out.extend_from_slice(bytes));
        out
    }

    /// Hands the bytes of [`RecordKey::encode`] to `out` piece by piece, for a caller that
    /// hashes them rather than keeping them.
    pub(crate) fn encode_into(&self, mut out: impl FnMut(&[u8])) {
        push_part(&mut out, self.scope.operation.as_bytes());
        match &self.scope.caller {
            Some(caller) => {
                out(&[1]);
                push_part(&mut out, caller.as_bytes());
            }
            None => out(&[0]),
        }
        push_part(&mut out, self.key.as_str().as_bytes());
    }

    /// Reverses [`RecordKey::encode`]; `None` when `bytes` is not such an encoding.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (operation, rest) = take_part(bytes)?;
        let (caller, rest) = match rest.split_first()? {
            (0, rest) => (None, rest),
            (1, rest) => {
                let (caller, rest) = take_part(rest)?;
                (Some(caller), rest)
            }
            _ => return None,
        };
        let (key, rest) = take_part(rest)?;
        if !rest.is_empty() {
            return None;
        }
        let scope = Scope {
            operation: Arc::from(std::str::from_utf8(operation).ok()?),
            caller: match caller {
                Some(c) => Some(Box::from(std::str::from_utf8(c).ok()?)),
                None => None,
            },
        };
        let key = IdempotencyKey::new(String::from_utf8(key.to_vec()).ok()?).ok()?;
        Some(Self { scope, key })
    }
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scope.caller {
            Some(caller) => write!(f, "{}[{}]/{}", self.scope.operation, caller, self.key),
            None => write!(f, "{}/{}", self.scope.operation, self.key),
        }
    }
}

fn push_part(out: &mut impl FnMut(&[u8]), part: &[u8]) {
    out(&(part.len() as u32).to_be_bytes());
    out(part);
}

fn take_part(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<4>()?;
    let len = u32::from_be_bytes(*len) as usize;
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// A fencing token: grows with every claim a store grants.
///
/// A store hands out a token greater than any it handed out before for the same record key,
/// across purges and restarts, so a completion carrying an older token can always be told
/// apart from the current owner's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fence(pub u64);

impl fmt::Display for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A response as a store keeps it: status, allow-listed headers and the exact body bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    /// The handler's status.
    pub status: StatusCode,
    /// Headers that a replay repeats, in the order the handler set them.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body, byte for byte.
    pub body: Bytes,
}

/// What a record holds after its claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordState {
    /// A request holds the claim and its handler may be running.
    InProgress {
        /// The owner's fencing token.
        fence: Fence,
        /// When the claim may be taken over by a retry.
        lease_until: Timestamp,
    },
    /// The handler finished and its response was committed.
    Completed {
        /// The token of the claim that completed.
        fence: Fence,
        /// The stored response.
        response: StoredResponse,
        /// Events the handler staged, in order.
        events: Vec<Event>,
        /// Whether `events` were handed to the event sink.
        events_published: bool,
        /// When the completion was committed.
        completed_at: Timestamp,
    },
}

/// Everything a store keeps for one record key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Fingerprint of the request that claimed the key.
    pub fingerprint: Fingerprint,
    /// Claim or completion.
    pub state: RecordState,
    /// When the claim was first granted.
    pub created_at: Timestamp,
    /// When the record stops existing; after this the key is new again.
    pub expires_at: Timestamp,
}

impl Record {
    /// The fencing token of the claim this record belongs to.
    pub fn fence(&self) -> Fence {
        match &self.state {
            RecordState::InProgress { fence, .. } | RecordState::Completed { fence, .. } => *fence,
        }
    }

    /// Whether the record still exists at `now`.
    pub fn is_live(&self, now: Timestamp) -> bool {
        now < self.expires_at
    }

    /// Whether a claim at `now` may replace this record: it has expired, or it is an
    /// in-progress claim whose lease ran out.
    pub fn is_claimable(&self, now: Timestamp) -> bool {
        match self.state {
            _ if !self.is_live(now) => true,
            RecordState::InProgress { lease_until, .. } => now >= lease_until,
            RecordState::Completed { .. } => false,
        }
    }
}

/// A request to claim a record key.
#[derive(Clone, Debug)]
pub struct ClaimRequest {
    /// The record to claim.
    pub key: RecordKey,
    /// Fingerprint of the claiming request.
    pub fingerprint: Fingerprint,
    /// The current time.
    pub now: Timestamp,
    /// Until when the claim holds against concurrent retries.
    pub lease_until: Timestamp,
    /// When the record expires.
    pub expires_at: Timestamp,
}

impl ClaimRequest {
    /// The in-progress record a granted claim writes.
    pub fn in_progress_record(&self, fence: Fence) -> Record {
        Record {
            fingerprint: self.fingerprint,
            state: RecordState::InProgress {
                fence,
                lease_until: self.lease_until,
            },
            created_at: self.now,
            expires_at: self.expires_at,
        }
    }
}

/// What a claim found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The caller owns the key now and must run the handler, then complete or release.
    Claimed {
        /// The token to present on completion or release.
        fence: Fence,
        /// Whether an earlier claim's lease ran out and this one replaced it.
        takeover: bool,
    },
    /// A live record exists that the claim could not replace. The engine decides between
    /// replay, in progress and conflict by looking at it.
    Existing(Record),
}

/// The committed result of a handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The response to store.
    pub response: StoredResponse,
    /// Events staged by the handler, stored in the same commit.
    pub events: Vec<Event>,
    /// The current time.
    pub completed_at: Timestamp,
    /// When the record expires.
    pub expires_at: Timestamp,
}

/// Events of a committed record that the sink has not yet been given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingEvents {
    /// The record they belong to.
    pub key: RecordKey,
    /// The fence of the completion that staged them.
    pub fence: Fence,
    /// The events, in staging order.
    pub events: Vec<Event>,
}

/// A store failed to do what it was asked: the backend is unreachable, a write failed, data
/// on disk is unreadable.
///
/// The engine answers a failed claim with 503 and a failed commit with 500, and publishes
/// nothing in either case.
#[derive(Debug)]
pub struct StoreError {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// A failure described by `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// A failure described by `message`, caused by `source`.
    pub fn with_source(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {}", self.message, source),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

/// Why a completion was not stored.
#[derive(Debug)]
#[non_exhaustive]
pub enum CompleteError {
    /// The record is no longer held under this fence: the lease ran out and another request
    /// took the key over, or the claim was released or purged. Nothing was written.
    Fenced,
    /// The store failed; whether anything was written is unknown to the caller, but a
    /// store must never leave a completion half-written.
    Store(StoreError),
}

impl fmt::Display for CompleteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fenced => f.write_str("the claim is no longer held under this fencing token"),
            Self::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for CompleteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Fenced => None,
            Self::Store(e) => Some(e),
        }
    }
}

impl From<StoreError> for CompleteError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// Where records live.
///
/// A store keeps one [`Record`] per [`RecordKey`]. The engine drives it: `claim` before the
/// handler runs, then exactly one of `complete` or `release`, then `mark_published` once
/// the completion's events reached the [`EventSink`](crate::EventSink). Every method may be
/// called concurrently from many tasks and, for shared stores, from many processes.
///
/// A store never interprets fingerprints or responses: deciding between replay, conflict
/// and in progress is the engine's job. Its duties are atomicity, fencing and durability,
/// as each method states. The in-memory store (`cnerium-store-memory`) is a short reference
/// implementation; the testkit's conformance suite checks every rule below against any
/// store.
///
/// Errors are [`StoreError`]s. The engine never retries a failed call by itself; it answers
/// the request with an error and leaves the retry to the client, so a method that fails
/// must leave the record as it was before the call.
#[async_trait]
pub trait Store: Send + Sync {
    /// Claims `request.key`, atomically.
    ///
    /// When no record exists, or the existing one [`is_claimable`](Record::is_claimable) at
    /// `request.now`, the store writes [`ClaimRequest::in_progress_record`] with a fresh
    /// fence and returns [`ClaimOutcome::Claimed`] (`takeover` is true when it replaced an
    /// in-progress record whose lease ran out). Otherwise it changes nothing and returns the
    /// existing record as [`ClaimOutcome::Existing`].
    ///
    /// Of any number of concurrent claims for one key, exactly one may be granted. A fresh
    /// fence is greater than every fence the store granted before for that key, including
    /// to records since purged or replaced.
    async fn claim(&self, request: ClaimRequest) -> Result<ClaimOutcome, StoreError>;

    /// Commits a completion, atomically, if and only if `key` is still in progress under
    /// `fence`.
    ///
    /// On `Ok`, the record is [`RecordState::Completed`] with `events_published` false, and
    /// it must survive whatever the store promises to survive (a durable store: a crash),
    /// because the engine sends the response right after. When the record is gone, completed,
    /// or held under another fence, the store writes nothing and returns
    /// [`CompleteError::Fenced`].
    async fn complete(
        &self,
        key: &RecordKey,
        fence: Fence,
        completion: Completion,
    ) -> Result<(), CompleteError>;

    /// Gives up a claim so that the key is new again: removes the record if it is in
    /// progress under `fence`, and does nothing otherwise (it is not an error to release a
    /// claim that was already taken over).
    async fn release(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError>;

    /// Notes that the events of the completion under `fence` were handed to the sink, so
    /// that [`pending_events`](Store::pending_events) no longer lists them. Does nothing when
    /// the record is gone or belongs to another fence.
    async fn mark_published(&self, key: &RecordKey, fence: Fence) -> Result<(), StoreError>;

    /// Completed records, not yet purged, whose events were not marked published, oldest
    /// completion first, at most `limit` of them. Records without events are never listed.
    async fn pending_events(&self, limit: usize) -> Result<Vec<PendingEvents>, StoreError>;

    /// The live record of `key` at `now`, if any. Never changes anything.
    async fn lookup(&self, key: &RecordKey, now: Timestamp) -> Result<Option<Record>, StoreError>;

    /// Removes records whose `expires_at` is at or before `now` and returns how many were
    /// removed. Must not block concurrent requests for longer than a single claim does.
    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError>;

    /// Events of completed records not yet purged whose completion time is at or after
    /// `since`, ordered by completion time (then fence, then staging order), at most `limit`
    /// of them, whether or not they were marked published.
    ///
    /// This is the history a reconnecting WebSocket client catches up from, so that an
    /// event lost in flight (a crash after the commit, a dropped connection) still reaches
    /// it. It never changes anything. Stores that keep no such history leave the default,
    /// which answers [`StoreError`] "unsupported"; reconnecting clients then get live events
    /// only.
    async fn events_since(&self, since: Timestamp, limit: usize) -> Result<Vec<Event>, StoreError> {
        let _ = (since, limit);
        Err(StoreError::new(
            "this store keeps no event history to catch up from",
        ))
    }
}

/// Defaults shared by engines and stores.
pub mod defaults {
    use super::Duration;

    /// How long a claim holds against retries before a crashed owner's key can be taken.
    pub const LEASE: Duration = Duration::from_secs(30);

    /// How long a record is kept after its first request.
    pub const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_key_encoding_round_trips_and_is_unambiguous() {
        let key = IdempotencyKey::new("k/1").unwrap();
        let a = RecordKey::new(Scope::with_caller("orders.create", "u1"), key.clone());
        let b = RecordKey::new(Scope::new("orders.create"), key.clone());
        let c = RecordKey::new(Scope::with_caller("orders.creat", "eu1"), key);
        assert_eq!(RecordKey::decode(&a.encode()), Some(a.clone()));
        assert_eq!(RecordKey::decode(&b.encode()), Some(b.clone()));
        assert_ne!(a.encode(), b.encode());
        assert_ne!(a.encode(), c.encode());
        assert_eq!(RecordKey::decode(b"\x00\x00"), None);
    }
}
