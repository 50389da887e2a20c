//! Events across replicas: [`RedisEventSink`] publishes to a Redis channel,
//! [`RedisEventRelay`] delivers what the channel carries to this replica's clients.
//!
//! With several replicas behind a load balancer, a client's WebSocket is connected to one
//! replica while the request that emits an event may run on another. Wire each replica so:
//!
//! - the engine's sink is a [`RedisEventSink`]: a committed event goes to the channel only,
//!   not to the local hub;
//! - a [`RedisEventRelay`] subscribed to the channel feeds the local hub.
//!
//! Every replica, the publishing one included, then receives each event once from the
//! channel and hands it to its own clients once. A sink that also delivered locally would
//! make the publishing replica's clients see every event twice.
//!
//! Redis pub/sub keeps nothing: a replica whose subscription is down while an event is
//! published misses it (the relay logs a warning when it loses and regains the channel).
//! Events published again on recovery carry the same id, so clients can drop repeats.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cnerium_core::async_trait;
use cnerium_core::event::{validate_kind, validate_room};
use cnerium_core::{EmitError, Event, EventSink, Payload, PublishError, Timestamp};
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, PubSubStream};
use serde::Deserialize;
use serde_json::Value;

use crate::error::ConnectError;
use crate::options::RedisOptions;

/// The channel used when an application has no reason to pick another.
pub const DEFAULT_CHANNEL: &str = "cnerium:events";

/// First wait before the relay tries to subscribe again after losing the channel.
const RESUBSCRIBE_MIN_DELAY: Duration = Duration::from_millis(100);
/// Longest wait between two attempts to subscribe again.
const RESUBSCRIBE_MAX_DELAY: Duration = Duration::from_secs(5);

/// An [`EventSink`] that publishes each event's wire envelope to a Redis channel.
///
/// One `PUBLISH` per event, all events of a batch in one pipelined round-trip, in order.
/// `Ok` means Redis accepted the messages; it says nothing about who was subscribed. Clones
/// share one reconnecting connection.
#[derive(Clone)]
pub struct RedisEventSink {
    connection: ConnectionManager,
    channel: Arc<str>,
}

impl fmt::Debug for RedisEventSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisEventSink")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl RedisEventSink {
    /// Connects to the Redis server at `url` to publish to `channel`.
    ///
    /// [`RedisStore::event_sink`](crate::RedisStore::event_sink) makes a sink that shares
    /// the store's connection instead.
    pub async fn connect(url: &str, channel: impl Into<String>) -> Result<Self, ConnectError> {
        let connection = crate::store::connection_manager(url, &RedisOptions::new()).await?;
        Ok(Self::with_connection(connection, channel))
    }

    pub(crate) fn with_connection(
        connection: ConnectionManager,
        channel: impl Into<String>,
    ) -> Self {
        Self {
            connection,
            channel: channel.into().into(),
        }
    }

    /// The channel this sink publishes to.
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

#[async_trait]
impl EventSink for RedisEventSink {
    async fn publish(&self, events: &[Event]) -> Result<(), PublishError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for event in events {
            pipe.cmd("PUBLISH")
                .arg(&*self.channel)
                .arg(event.to_envelope())
                .ignore();
        }
        pipe.query_async::<()>(&mut self.connection.clone())
            .await
            .map_err(|e| PublishError::new(format!("redis publish failed: {e}")))?;
        tracing::trace!(channel = %self.channel, events = events.len(), "events published");
        Ok(())
    }
}

/// Subscribes to a Redis channel and hands every event it carries to a local sink.
///
/// Create it with [`subscribe`](RedisEventRelay::subscribe), which returns once the
/// subscription is active, then drive [`run`](RedisEventRelay::run) on a task of its own:
///
/// ```no_run
/// use std::sync::Arc;
///
/// use cnerium_core::{DiscardEvents, EventSink};
/// use cnerium_store_redis::{DEFAULT_CHANNEL, RedisEventRelay};
///
/// # async fn start() -> Result<(), Box<dyn std::error::Error>> {
/// // This replica's WebSocket hub, or any other sink.
/// let hub: Arc<dyn EventSink> = Arc::new(DiscardEvents);
/// let relay = RedisEventRelay::subscribe("redis://127.0.0.1/", DEFAULT_CHANNEL, hub).await?;
/// let task = tokio::spawn(relay.run());
/// // ... serve; on shutdown:
/// task.abort();
/// # Ok(())
/// # }
/// ```
pub struct RedisEventRelay {
    client: redis::Client,
    channel: String,
    local: Arc<dyn EventSink>,
    messages: PubSubStream,
}

impl fmt::Debug for RedisEventRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisEventRelay")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl RedisEventRelay {
    /// Subscribes to `channel` on the Redis server at `url`, to forward its events into
    /// `local`. Events published from the moment this returns are forwarded once `run` is
    /// driven; they wait in the subscription until then.
    pub async fn subscribe(
        url: &str,
        channel: impl Into<String>,
        local: Arc<dyn EventSink>,
    ) -> Result<Self, ConnectError> {
        let client = redis::Client::open(url).map_err(ConnectError::InvalidUrl)?;
        let channel = channel.into();
        let messages = open_subscription(&client, &channel)
            .await
            .map_err(ConnectError::Unreachable)?;
        tracing::debug!(%channel, "event relay subscribed");
        Ok(Self {
            client,
            channel,
            local,
            messages,
        })
    }

    /// Forwards events until the task is dropped or aborted; never returns on its own.
    ///
    /// Each message is parsed back into an [`Event`] and handed to the local sink alone. A
    /// message that is not an event envelope is skipped with a warning. When the
    /// subscription is lost, the relay subscribes again, waiting from 100 ms up to 5 s
    /// between attempts.
    pub async fn run(mut self) {
        loop {
            while let Some(message) = self.messages.next().await {
                self.forward(message.get_payload_bytes()).await;
            }
            tracing::warn!(
                channel = %self.channel,
                "event relay lost its subscription; events published meanwhile are missed"
            );
            self.messages = self.resubscribe().await;
            tracing::warn!(channel = %self.channel, "event relay subscribed again");
        }
    }

    async fn forward(&self, payload: &[u8]) {
        let event = match event_from_envelope(payload) {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(channel = %self.channel, error = %e, "skipped a message");
                return;
            }
        };
        let id = event.id.clone();
        match self.local.publish(std::slice::from_ref(&event)).await {
            Ok(()) => tracing::trace!(channel = %self.channel, event = %id, "event relayed"),
            Err(e) => tracing::warn!(
                channel = %self.channel,
                event = %id,
                error = %e,
                "local sink refused a relayed event"
            ),
        }
    }

    async fn resubscribe(&self) -> PubSubStream {
        let mut delay = RESUBSCRIBE_MIN_DELAY;
        loop {
            tokio::time::sleep(delay).await;
            match open_subscription(&self.client, &self.channel).await {
                Ok(messages) => return messages,
                Err(e) => {
                    tracing::debug!(channel = %self.channel, error = %e, "resubscribe failed");
                    delay = (delay * 2).min(RESUBSCRIBE_MAX_DELAY);
                }
            }
        }
    }
}

async fn open_subscription(
    client: &redis::Client,
    channel: &str,
) -> Result<PubSubStream, redis::RedisError> {
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok(pubsub.into_on_message())
    };
    let timeout = RedisOptions::new().connect_timeout;
    tokio::time::timeout(timeout, connect)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "subscribing timed out").into())
        })
}

/// Why a message is not an event envelope.
#[derive(Debug)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Not JSON, or not an object with `id`, `type`, `payload` and `ts`.
    Malformed(serde_json::Error),
    /// `ts` is not an RFC 3339 time.
    InvalidTimestamp(humantime::TimestampError),
    /// The type or the room would have been refused at `emit`.
    InvalidEvent(EmitError),
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(e) => write!(f, "malformed event envelope: {e}"),
            Self::InvalidTimestamp(e) => write!(f, "invalid event envelope timestamp: {e}"),
            Self::InvalidEvent(e) => write!(f, "invalid event in envelope: {e}"),
        }
    }
}

impl std::error::Error for EnvelopeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Malformed(e) => Some(e),
            Self::InvalidTimestamp(e) => Some(e),
            Self::InvalidEvent(e) => Some(e),
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    room: Option<String>,
    payload: Value,
    ts: String,
}

/// Reads an event back from its wire envelope ([`Event::to_envelope`]).
///
/// `event_from_envelope(event.to_envelope().as_bytes())` gives back `event`, as long as its
/// time has whole milliseconds (the envelope's precision).
pub fn event_from_envelope(bytes: &[u8]) -> Result<Event, EnvelopeError> {
    let envelope: Envelope = serde_json::from_slice(bytes).map_err(EnvelopeError::Malformed)?;
    validate_kind(&envelope.kind).map_err(EnvelopeError::InvalidEvent)?;
    if let Some(room) = &envelope.room {
        validate_room(room).map_err(EnvelopeError::InvalidEvent)?;
    }
    let ts = humantime::parse_rfc3339(&envelope.ts).map_err(EnvelopeError::InvalidTimestamp)?;
    Ok(Event {
        id: envelope.id,
        kind: envelope.kind,
        room: envelope.room,
        payload: Payload::from_value(&envelope.payload),
        ts: Timestamp::from_system_time(ts),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(room: Option<&str>) -> Event {
        Event {
            id: "evt_1".into(),
            kind: "order.created".into(),
            room: room.map(str::to_owned),
            payload: Payload::from_json(r#"{"order":{"id":"o1"},"n":12345678901234567890123}"#)
                .unwrap(),
            ts: Timestamp::from_millis(1_764_788_709_123),
        }
    }

    #[test]
    fn envelopes_round_trip_with_and_without_room() {
        for room in [None, Some("orders")] {
            let event = event(room);
            assert_eq!(
                event_from_envelope(event.to_envelope().as_bytes()).unwrap(),
                event
            );
        }
    }

    #[test]
    fn malformed_envelopes_are_refused() {
        assert!(matches!(
            event_from_envelope(b"not json"),
            Err(EnvelopeError::Malformed(_))
        ));
        assert!(matches!(
            event_from_envelope(br#"{"id":"e","type":"a.b","payload":1}"#),
            Err(EnvelopeError::Malformed(_))
        ));
        assert!(matches!(
            event_from_envelope(br#"{"id":"e","type":"a.b","payload":1,"ts":"yesterday"}"#),
            Err(EnvelopeError::InvalidTimestamp(_))
        ));
        assert!(matches!(
            event_from_envelope(
                br#"{"id":"e","type":"a..b","payload":1,"ts":"2025-01-01T00:00:00Z"}"#
            ),
            Err(EnvelopeError::InvalidEvent(_))
        ));
    }
}
