//! Where a reconnecting client's missed events come from.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cnerium_core::store::defaults;
use cnerium_core::{Engine, Event, StoreError, Timestamp, async_trait};

/// The history of committed events a client connecting with `?since=<cursor>` catches up
/// from; set it with [`HubBuilder::backlog`](crate::HubBuilder::backlog) or
/// [`Hub::set_backlog`](crate::Hub::set_backlog).
///
/// [`Engine`] is a backlog: it asks its store ([`Store::events_since`]). An application
/// that keeps its events elsewhere (a log, a table of its own) implements this trait.
///
/// The hub calls [`events_since`](Backlog::events_since) once per catching-up connection,
/// on that connection's task, with the cursor moved back by
/// [`commit_delay`](Backlog::commit_delay) (or the configured
/// [`catch_up_margin`](crate::RealtimeConfig::catch_up_margin)). Publishing to other
/// connections goes on meanwhile.
///
/// [`Store::events_since`]: cnerium_core::Store::events_since
///
/// ```
/// use cnerium_core::{Event, Timestamp, async_trait};
/// use cnerium_realtime::{Backlog, BacklogError};
///
/// /// Events kept in memory, oldest commit first, with the time each committed.
/// struct Recorded(Vec<(Timestamp, Event)>);
///
/// #[async_trait]
/// impl Backlog for Recorded {
///     async fn events_since(
///         &self,
///         since: Timestamp,
///         limit: usize,
///     ) -> Result<Vec<Event>, BacklogError> {
///         Ok(self
///             .0
///             .iter()
///             .filter(|(committed, _)| *committed >= since)
///             .map(|(_, event)| event.clone())
///             .take(limit)
///             .collect())
///     }
/// }
/// ```
#[async_trait]
pub trait Backlog: Send + Sync + 'static {
    /// Committed events whose record completed at or after `since`, ordered by completion
    /// (events of one record in the order they were emitted), at most `limit` of them.
    ///
    /// Events already published must be included: the client may have missed them. Must
    /// not change anything and may be called concurrently. An error sends the connection
    /// on with live events only; the client is not told why.
    async fn events_since(
        &self,
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<Event>, BacklogError>;

    /// How long after its `ts` (the time it was emitted) an event's record may still
    /// complete: the hub looks this far before a client's cursor, so that an event emitted
    /// before the cursor but committed after it is not missed.
    ///
    /// The default is the default lease, 30 s.
    fn commit_delay(&self) -> Duration {
        defaults::LEASE
    }
}

#[async_trait]
impl Backlog for Engine {
    /// Forwards to the store through [`Engine::events_since`]; a store that keeps no event
    /// history answers an error, and clients then get live events only.
    async fn events_since(
        &self,
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<Event>, BacklogError> {
        Ok(Engine::events_since(self, since, limit).await?)
    }

    /// The engine's lease: a handler's result commits within it, or not at all.
    fn commit_delay(&self) -> Duration {
        self.config().lease
    }
}

#[async_trait]
impl<B: Backlog + ?Sized> Backlog for Arc<B> {
    async fn events_since(
        &self,
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<Event>, BacklogError> {
        (**self).events_since(since, limit).await
    }

    fn commit_delay(&self) -> Duration {
        (**self).commit_delay()
    }
}

/// A [`Backlog`] could not answer.
#[derive(Debug)]
pub struct BacklogError {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl BacklogError {
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

impl fmt::Display for BacklogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {}", self.message, source),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for BacklogError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

impl From<StoreError> for BacklogError {
    fn from(error: StoreError) -> Self {
        Self::with_source("the store could not list past events", error)
    }
}
