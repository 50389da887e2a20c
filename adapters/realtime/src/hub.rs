//! The hub: who is connected, who is in which room, and how events reach them.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_tungstenite::tungstenite::{Message, Utf8Bytes};
use cnerium_core::{Event, EventSink, PublishError};
use http::{HeaderMap, Uri};
use tracing::debug;

use crate::backlog::Backlog;
use crate::config::RealtimeConfig;
use crate::outbox::{End, Frame, Outbox, Refused};
use crate::protocol::{ErrorCode, Refusal};

/// Decides whether a connection may join a room.
///
/// Called for every valid room a client asks for, from the URL (`?room=a`) or a
/// `room.join` frame, before the per-connection room limit is checked. It runs on the
/// connection's task and must not block. Any `Fn(&ConnectionInfo, &str) -> bool` closure is
/// a join rule.
///
/// ```
/// use cnerium_realtime::ConnectionInfo;
///
/// // Only the connection authenticated as user 123 may join `user:123`.
/// let rule = |connection: &ConnectionInfo, room: &str| match room.strip_prefix("user:") {
///     Some(user) => connection.bearer_token() == Some(&format!("u{user}")),
///     None => true,
/// };
/// # let _: &dyn cnerium_realtime::JoinRule = &rule;
/// ```
pub trait JoinRule: Send + Sync + 'static {
    /// Whether `connection` may join `room`; `room` has already passed
    /// [`validate_room`](cnerium_core::event::validate_room).
    fn allows(&self, connection: &ConnectionInfo, room: &str) -> bool;
}

impl<F> JoinRule for F
where
    F: Fn(&ConnectionInfo, &str) -> bool + Send + Sync + 'static,
{
    fn allows(&self, connection: &ConnectionInfo, room: &str) -> bool {
        self(connection, room)
    }
}

/// The join rule used when the application sets none: every valid room is allowed.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl JoinRule for AllowAll {
    fn allows(&self, _connection: &ConnectionInfo, _room: &str) -> bool {
        true
    }
}

/// What the server knows about a connection from its opening handshake.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    uri: Uri,
    headers: HeaderMap,
    peer_addr: Option<SocketAddr>,
}

impl ConnectionInfo {
    /// Describes a connection; the listeners build this from the handshake request, and
    /// tests can build one to exercise a [`JoinRule`].
    pub fn new(uri: Uri, headers: HeaderMap, peer_addr: Option<SocketAddr>) -> Self {
        Self {
            uri,
            headers,
            peer_addr,
        }
    }

    /// The request URI of the handshake, path and query.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The request headers of the handshake.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The client's address, when the server knows it.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    /// Every value of query parameter `name`, percent-decoded, in order.
    pub fn query_values(&self, name: &str) -> Vec<String> {
        let query = self.uri.query().unwrap_or("");
        form_urlencoded::parse(query.as_bytes())
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
            .collect()
    }

    /// The first value of query parameter `name`, percent-decoded.
    pub fn query_value(&self, name: &str) -> Option<String> {
        self.query_values(name).into_iter().next()
    }

    /// The token of an `Authorization: Bearer <token>` header, if there is exactly one
    /// such header.
    pub fn bearer_token(&self) -> Option<&str> {
        let mut values = self.headers.get_all(http::header::AUTHORIZATION).iter();
        let value = values.next()?;
        if values.next().is_some() {
            return None;
        }
        let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    }
}

/// Identifies one connection inside a hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConnectionId(u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The set of live WebSocket connections and their rooms; an [`EventSink`].
///
/// Cloning is cheap and every clone is the same hub. Publishing never waits on a client:
/// each event is queued on every target connection (all of them for a broadcast, the
/// room's members for a room event), and a connection whose queue is full is disconnected
/// with close code 1008 while the others carry on.
///
/// A hub serves connections from any number of listeners and warp routes at once.
///
/// # Catching up
///
/// With a [`Backlog`], a client that connects with `?since=<cursor>` (the `ts` of the last
/// event it received, as in the envelope, or integer milliseconds since the epoch) first
/// gets the committed events it may have missed, then live events, and never the same
/// event id twice on that connection. The hub registers the connection (so live events
/// start queueing) and joins its URL rooms before it asks the backlog, sends the backlog's
/// broadcasts and events of the rooms joined, then the queued live events, skipping those
/// it already sent.
///
/// The backlog is asked from a little before the cursor (see
/// [`catch_up_margin`](RealtimeConfig::catch_up_margin)), so the client may get again
/// events it had on its previous connection: it drops them by id, as it would drop a
/// repeat after a server restart. An unparsable cursor is answered with an
/// [`InvalidCursor`](ErrorCode::InvalidCursor) error frame; then, as without a backlog or
/// when the backlog fails, the connection gets live events only.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    config: RealtimeConfig,
    join_rule: Box<dyn JoinRule>,
    backlog: Mutex<Option<Arc<dyn Backlog>>>,
    next_id: AtomicU64,
    registry: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    connections: HashMap<ConnectionId, Member>,
    rooms: HashMap<String, HashSet<ConnectionId>>,
}

struct Member {
    outbox: Arc<Outbox>,
    rooms: HashSet<String>,
}

/// Builds a [`Hub`] with a join rule and a backlog.
pub struct HubBuilder {
    config: RealtimeConfig,
    join_rule: Box<dyn JoinRule>,
    backlog: Option<Arc<dyn Backlog>>,
}

impl HubBuilder {
    /// Sets the rule that decides which rooms a connection may join.
    pub fn join_rule(mut self, rule: impl JoinRule) -> Self {
        self.join_rule = Box::new(rule);
        self
    }

    /// Sets where clients connecting with `?since=` catch up from. Without one they get
    /// live events only.
    ///
    /// An [`Engine`](cnerium_core::Engine) whose sink is this hub cannot exist before the
    /// hub; give it with [`Hub::set_backlog`] once it is built.
    pub fn backlog(mut self, backlog: impl Backlog) -> Self {
        self.backlog = Some(Arc::new(backlog));
        self
    }

    /// The hub.
    pub fn build(self) -> Hub {
        Hub {
            inner: Arc::new(HubInner {
                config: self.config,
                join_rule: self.join_rule,
                backlog: Mutex::new(self.backlog),
                next_id: AtomicU64::new(1),
                registry: Mutex::new(Registry::default()),
            }),
        }
    }
}

impl fmt::Debug for HubBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub with `config` that lets connections join every valid room.
    pub fn new(config: RealtimeConfig) -> Self {
        Self::builder(config).build()
    }

    /// Starts building a hub with `config`, to set a join rule or a backlog.
    pub fn builder(config: RealtimeConfig) -> HubBuilder {
        HubBuilder {
            config,
            join_rule: Box::new(AllowAll),
            backlog: None,
        }
    }

    /// Sets, or replaces, where clients connecting with `?since=` catch up from; the
    /// connections that connect afterwards use it.
    ///
    /// This is how an engine whose sink is this hub becomes its backlog:
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use cnerium_core::{Engine, EngineConfig, ManualClock, Store};
    /// # use cnerium_realtime::{Hub, RealtimeConfig};
    /// # fn wire(store: Arc<dyn Store>, clock: Arc<ManualClock>) -> (Hub, Engine) {
    /// let hub = Hub::new(RealtimeConfig::default());
    /// let sink = Arc::new(hub.clone());
    /// let engine = Engine::with_parts(store, sink, clock, EngineConfig::default());
    /// hub.set_backlog(engine.clone());
    /// # (hub, engine) }
    /// ```
    ///
    /// The hub and the engine then hold each other; [`clear_backlog`](Self::clear_backlog)
    /// when shutting down lets both go, and the store with them.
    pub fn set_backlog(&self, backlog: impl Backlog) {
        *self.backlog_slot() = Some(Arc::new(backlog));
    }

    /// Removes the backlog: clients connecting afterwards get live events only.
    pub fn clear_backlog(&self) {
        self.backlog_slot().take();
    }

    /// The settings the hub and its listeners use.
    pub fn config(&self) -> &RealtimeConfig {
        &self.inner.config
    }

    /// Sends `event` to its targets, for an application publishing outside a durable
    /// route. Returns how many connections it was queued for.
    ///
    /// Never waits: a target whose queue is full is disconnected instead.
    pub fn publish_event(&self, event: &Event) -> usize {
        let event_id: Arc<str> = Arc::from(event.id.as_str());
        let text = Utf8Bytes::from(event.to_envelope());
        let mut registry = self.registry();
        let targets: Vec<ConnectionId> = match &event.room {
            None => registry.connections.keys().copied().collect(),
            Some(room) => registry
                .rooms
                .get(room)
                .map(|members| members.iter().copied().collect())
                .unwrap_or_default(),
        };

        let mut queued = 0;
        for id in targets {
            let Some(member) = registry.connections.get(&id) else {
                continue;
            };
            let frame = Frame::Event {
                id: Arc::clone(&event_id),
                text: text.clone(),
            };
            match member.outbox.push(frame) {
                Ok(()) => queued += 1,
                Err(refused) => {
                    registry.remove(id);
                    debug!(connection = %id, reason = ?refused, "dropping a slow client");
                }
            }
        }
        debug!(
            event_id = %event.id,
            event_type = %event.kind,
            room = event.room.as_deref().unwrap_or(""),
            queued,
            "event published"
        );
        queued
    }

    /// Sends each of `events` in order, like [`publish_event`](Self::publish_event).
    /// Returns how many frames were queued in all.
    pub fn publish_events(&self, events: &[Event]) -> usize {
        events.iter().map(|event| self.publish_event(event)).sum()
    }

    /// How many connections are open.
    pub fn connection_count(&self) -> usize {
        self.registry().connections.len()
    }

    /// How many connections are members of `room`.
    pub fn room_size(&self, room: &str) -> usize {
        self.registry().rooms.get(room).map_or(0, HashSet::len)
    }

    /// Closes every connection with code 1001 (going away), for an application shutting
    /// down a server whose listener it does not own, such as a warp route.
    pub fn disconnect_all(&self) {
        let members: Vec<Member> = {
            let mut registry = self.registry();
            registry.rooms.clear();
            registry
                .connections
                .drain()
                .map(|(_, member)| member)
                .collect()
        };
        debug!(connections = members.len(), "disconnecting every client");
        for member in members {
            member.outbox.end(End::Shutdown);
        }
    }

    /// Adds a connection; with `holding_events`, its events queue until the connection
    /// has caught up and releases them.
    pub(crate) fn register(&self, holding_events: bool) -> (ConnectionId, Arc<Outbox>) {
        let id = ConnectionId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let capacity = self.inner.config.queue_capacity;
        let outbox = Arc::new(Outbox::new(capacity, holding_events));
        let member = Member {
            outbox: Arc::clone(&outbox),
            rooms: HashSet::new(),
        };
        self.registry().connections.insert(id, member);
        (id, outbox)
    }

    pub(crate) fn unregister(&self, id: ConnectionId) {
        self.registry().remove(id);
    }

    /// Adds connection `id` to `room` if the join rule and the room limit allow it.
    pub(crate) fn join(
        &self,
        id: ConnectionId,
        info: &ConnectionInfo,
        room: &str,
    ) -> Result<(), Refusal> {
        // The application's rule runs outside the lock: it may be slow or use the hub.
        if !self.inner.join_rule.allows(info, room) {
            return Err(Refusal::for_room(
                ErrorCode::JoinRefused,
                "the server does not allow this connection to join the room",
                room,
            ));
        }

        let limit = self.inner.config.max_rooms_per_connection;
        let mut registry = self.registry();
        let Some(member) = registry.connections.get_mut(&id) else {
            // The connection was dropped meanwhile; its task is about to end.
            return Ok(());
        };
        if !member.rooms.contains(room) && member.rooms.len() >= limit {
            return Err(Refusal::for_room(
                ErrorCode::TooManyRooms,
                format!("a connection may be in at most {limit} rooms"),
                room,
            ));
        }
        member.rooms.insert(room.to_owned());
        registry
            .rooms
            .entry(room.to_owned())
            .or_default()
            .insert(id);
        Ok(())
    }

    /// The rooms connection `id` is a member of.
    pub(crate) fn rooms_of(&self, id: ConnectionId) -> HashSet<String> {
        self.registry()
            .connections
            .get(&id)
            .map(|member| member.rooms.clone())
            .unwrap_or_default()
    }

    /// The backlog connections catch up from, if any.
    pub(crate) fn backlog(&self) -> Option<Arc<dyn Backlog>> {
        self.backlog_slot().clone()
    }

    /// Removes connection `id` from `room`; leaving a room one is not in is no error.
    pub(crate) fn leave(&self, id: ConnectionId, room: &str) {
        let mut registry = self.registry();
        if let Some(member) = registry.connections.get_mut(&id) {
            member.rooms.remove(room);
        }
        registry.remove_from_room(id, room);
    }

    /// Queues a frame for one connection, dropping the connection if its queue is full.
    pub(crate) fn send(&self, id: ConnectionId, outbox: &Outbox, frame: Message) {
        if let Err(Refused::Overflowed) = outbox.push(Frame::Control(frame)) {
            self.unregister(id);
            debug!(connection = %id, "dropping a client that does not read its answers");
        }
    }

    fn backlog_slot(&self) -> MutexGuard<'_, Option<Arc<dyn Backlog>>> {
        // Only an `Arc` is stored or cloned under this lock; nothing can panic there.
        self.inner.backlog.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // No code that can panic runs under this lock, so a poisoned lock still holds
        // consistent data.
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl Registry {
    fn remove(&mut self, id: ConnectionId) {
        let Some(member) = self.connections.remove(&id) else {
            return;
        };
        for room in &member.rooms {
            self.remove_from_room(id, room);
        }
    }

    fn remove_from_room(&mut self, id: ConnectionId, room: &str) {
        if let Some(members) = self.rooms.get_mut(room) {
            members.remove(&id);
            if members.is_empty() {
                self.rooms.remove(room);
            }
        }
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new(RealtimeConfig::default())
    }
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let registry = self.registry();
        f.debug_struct("Hub")
            .field("config", &self.inner.config)
            .field("connections", &registry.connections.len())
            .field("rooms", &registry.rooms.len())
            .field("backlog", &self.backlog_slot().is_some())
            .finish_non_exhaustive()
    }
}

#[cnerium_core::async_trait]
impl EventSink for Hub {
    /// Queues every event on its target connections and returns `Ok` at once; events for
    /// rooms without members, or published with no client connected, are dropped.
    async fn publish(&self, events: &[Event]) -> Result<(), PublishError> {
        self.publish_events(events);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnerium_core::Timestamp;

    fn info(uri: &str, authorization: Option<&str>) -> ConnectionInfo {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        }
        ConnectionInfo::new(uri.parse().unwrap(), headers, None)
    }

    fn event(room: Option<&str>) -> Event {
        let room = room.map(str::to_owned);
        Event::new("order.created", room, 1, Timestamp::EPOCH).unwrap()
    }

    fn frames(outbox: &Outbox) -> Vec<String> {
        std::iter::from_fn(|| outbox.try_pop())
            .map(|frame| frame.into_message().into_text().unwrap().to_string())
            .collect()
    }

    #[test]
    fn query_values_are_decoded_and_kept_in_order() {
        let info = info("/ws?room=a&token=t%201&room=b%3Ac", None);
        assert_eq!(info.query_values("room"), ["a", "b:c"]);
        assert_eq!(info.query_value("token").as_deref(), Some("t 1"));
        assert_eq!(info.query_value("missing"), None);
    }

    #[test]
    fn bearer_token_reads_one_authorization_header() {
        assert_eq!(
            info("/ws", Some("Bearer u123")).bearer_token(),
            Some("u123")
        );
        assert_eq!(info("/ws", Some("bearer u1")).bearer_token(), Some("u1"));
        assert_eq!(info("/ws", Some("Basic abc")).bearer_token(), None);
        assert_eq!(info("/ws", None).bearer_token(), None);
    }

    #[test]
    fn room_events_reach_members_only_and_broadcasts_reach_everyone() {
        let hub = Hub::default();
        let (a, outbox_a) = hub.register(false);
        let (_b, outbox_b) = hub.register(false);
        hub.join(a, &info("/ws", None), "orders").unwrap();

        assert_eq!(hub.publish_event(&event(Some("orders"))), 1);
        assert_eq!(hub.publish_event(&event(None)), 2);
        assert_eq!(frames(&outbox_a).len(), 2);
        assert_eq!(frames(&outbox_b).len(), 1);
    }

    #[test]
    fn a_full_queue_drops_only_that_connection() {
        let config = RealtimeConfig {
            queue_capacity: 2,
            ..RealtimeConfig::default()
        };
        let hub = Hub::new(config);
        let (_slow, _slow_outbox) = hub.register(false);
        let (_fast, fast_outbox) = hub.register(false);

        for _ in 0..2 {
            hub.publish_event(&event(None));
            frames(&fast_outbox);
        }
        assert_eq!(hub.publish_event(&event(None)), 1);
        assert_eq!(hub.connection_count(), 1);
        assert_eq!(frames(&fast_outbox).len(), 1);
    }

    #[test]
    fn join_rule_and_room_limit_refuse_with_their_codes() {
        let config = RealtimeConfig {
            max_rooms_per_connection: 1,
            ..RealtimeConfig::default()
        };
        let hub = Hub::builder(config)
            .join_rule(|_: &ConnectionInfo, room: &str| room != "secret")
            .build();
        let (id, _outbox) = hub.register(false);
        let info = info("/ws", None);

        assert_eq!(
            hub.join(id, &info, "secret").unwrap_err().code,
            ErrorCode::JoinRefused
        );
        assert_eq!(hub.join(id, &info, "a"), Ok(()));
        assert_eq!(
            hub.join(id, &info, "a"),
            Ok(()),
            "joining twice is no error"
        );
        assert_eq!(
            hub.join(id, &info, "b").unwrap_err().code,
            ErrorCode::TooManyRooms
        );
        assert_eq!(hub.room_size("a"), 1);

        hub.leave(id, "a");
        assert_eq!(hub.room_size("a"), 0);
        assert_eq!(hub.join(id, &info, "b"), Ok(()));
    }

    #[test]
    fn unregister_removes_room_memberships() {
        let hub = Hub::default();
        let (id, _outbox) = hub.register(false);
        hub.join(id, &info("/ws", None), "a").unwrap();
        hub.unregister(id);
        assert_eq!(hub.room_size("a"), 0);
        assert_eq!(hub.connection_count(), 0);
    }
}
