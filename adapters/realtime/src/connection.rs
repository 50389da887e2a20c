//! One WebSocket connection, from the opening handshake to the close, written once for
//! every runtime.
//!
//! The session loop is generic over a stream and sink of tungstenite messages, so the
//! standalone listeners (futures I/O through async-tungstenite) and the warp route (its
//! own WebSocket type, adapted) share it. Timers come from the runtime as a [`Sleep`]
//! function.
//!
//! A session whose URL carries `?since=` catches up before it writes live events: see
//! [`Session::catch_up`].

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use async_tungstenite::tungstenite::{self, Message};
use cnerium_core::Timestamp;
use futures_io::{AsyncRead, AsyncWrite};
use futures_util::future::{self, BoxFuture, Either};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tracing::debug;

use crate::backlog::Backlog;
use crate::handshake::{self, HeadError, Prefixed};
use crate::hub::{ConnectionId, ConnectionInfo, Hub};
use crate::outbox::{End, Frame, Outbox};
use crate::protocol::{self, ErrorCode, Refusal, Reply, Request as ClientRequest};

/// A runtime's timer: a future that completes after the given duration.
///
/// `|d| Box::pin(tokio::time::sleep(d))` on tokio, `|d| Box::pin(async_std::task::sleep(d))`
/// on async-std.
pub type Sleep = fn(Duration) -> BoxFuture<'static, ()>;

/// How long the server waits for its close frame to go out and the client's answer to come
/// back before it drops the connection.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Frames written before the writer flushes, so a busy queue still reaches the socket.
const WRITE_BATCH: usize = 64;

/// The tungstenite settings that enforce the configured frame limit.
pub(crate) fn websocket_config(max_frame_size: usize) -> WebSocketConfig {
    // Clients send little (joins, pongs); a small read buffer saves zeroing tungstenite's
    // 128 KiB default on every read, which dominates fan-out to many connections.
    WebSocketConfig::default()
        .max_frame_size(Some(max_frame_size))
        .max_message_size(Some(max_frame_size))
        .read_buffer_size(4 * 1024)
}

impl Hub {
    /// Serves one client connection over `io`, a byte stream of any runtime: the opening
    /// handshake on the configured path, then the session, until the client leaves or the
    /// server closes it ([`Hub::disconnect_all`] closes it too). A request that cannot be
    /// upgraded gets an HTTP error (see the [crate] docs) and the connection closes.
    ///
    /// `sleep` is the runtime's timer, used for pings, the idle timeout and the handshake
    /// deadline. The standalone listeners call this for each accepted socket.
    pub async fn serve_io<S>(&self, io: S, peer_addr: Option<SocketAddr>, sleep: Sleep)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        accept(self.clone(), io, peer_addr, sleep, std::future::pending()).await;
    }
}

/// Runs the opening handshake on `io`, then the session, until the client leaves, the
/// server closes it, or `shutdown` completes.
pub(crate) async fn accept<S>(
    hub: Hub,
    io: S,
    peer_addr: Option<SocketAddr>,
    sleep: Sleep,
    shutdown: impl Future<Output = ()> + Send,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut shutdown = pin!(shutdown);
    let config = hub.config().clone();
    let mut info = None;

    let websocket = {
        // The error type is fixed by tungstenite's handshake callback.
        #[allow(clippy::result_large_err)]
        let callback = |request: &Request, response: Response| {
            // `read_upgrade` refuses other paths before tungstenite runs; this stays as the
            // last guard before a session starts.
            if request.uri().path() != config.path {
                debug!(
                    path = request.uri().path(),
                    "refusing a handshake on a wrong path"
                );
                return Err(not_found());
            }
            info = Some(ConnectionInfo::new(
                request.uri().clone(),
                request.headers().clone(),
                peer_addr,
            ));
            Ok(response)
        };
        let handshake = async {
            let mut io = io;
            // Checked first, so that a request tungstenite would drop without a word gets an
            // HTTP error instead.
            let head = match handshake::read_upgrade(&mut io, &config.path).await {
                Ok(head) => head,
                Err(HeadError::Gone) => return None,
                Err(HeadError::Bad(bad)) => {
                    debug!(
                        peer = ?peer_addr,
                        status = %bad.status(),
                        detail = bad.detail(),
                        "refusing a websocket handshake"
                    );
                    bad.answer(&mut io, sleep).await;
                    return None;
                }
            };
            // tungstenite reads the checked head again and answers it.
            let accepted = async_tungstenite::accept_hdr_async_with_config(
                Prefixed::new(head, io),
                callback,
                Some(websocket_config(config.max_frame_size)),
            )
            .await;
            match accepted {
                Ok(websocket) => Some(websocket),
                Err(error) => {
                    debug!(peer = ?peer_addr, %error, "websocket handshake failed");
                    None
                }
            }
        };
        let deadline = future::select(sleep(config.idle_timeout), shutdown.as_mut());
        match future::select(pin!(handshake), deadline).await {
            Either::Left((Some(websocket), _)) => websocket,
            Either::Left((None, _)) => return,
            Either::Right(_) => {
                debug!(peer = ?peer_addr, "websocket handshake did not finish in time");
                return;
            }
        }
    };
    let Some(info) = info else {
        // The handshake only succeeds after the callback accepted the request.
        return;
    };

    run_session(hub, websocket, info, sleep, shutdown).await;
}

fn not_found() -> ErrorResponse {
    let mut response = ErrorResponse::new(Some("not found".to_owned()));
    *response.status_mut() = http::StatusCode::NOT_FOUND;
    response
}

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exit {
    /// The client closed the connection or it broke.
    PeerGone,
    /// The client sent nothing for the idle timeout.
    Idle,
    /// The client sent a frame over the size limit.
    TooBig,
    /// The client broke the WebSocket framing rules (reserved opcode, unmasked frame, a
    /// continuation of nothing).
    ProtocolViolation,
    /// The client sent a text frame that is not UTF-8.
    InvalidText,
    /// The client did not read fast enough and its queue filled up.
    TooSlow,
    /// The server is shutting down.
    Shutdown,
}

impl Exit {
    fn close_frame(self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            Self::PeerGone => return None,
            Self::Idle => (CloseCode::Away, "idle timeout"),
            Self::TooBig => (CloseCode::Size, "frame too large"),
            Self::ProtocolViolation => (CloseCode::Protocol, "protocol error"),
            Self::InvalidText => (CloseCode::Invalid, "text frame is not UTF-8"),
            Self::TooSlow => (CloseCode::Policy, "client too slow"),
            Self::Shutdown => (CloseCode::Away, "server shutting down"),
        };
        Some(CloseFrame {
            code,
            reason: reason.into(),
        })
    }
}

/// Serves one connection whose handshake is done.
///
/// `websocket` yields the client's messages and takes the server's; its read errors are
/// inspected for tungstenite's size limit error (directly or as a source) to answer 1009.
pub(crate) async fn run_session<W, E>(
    hub: Hub,
    websocket: W,
    info: ConnectionInfo,
    sleep: Sleep,
    shutdown: impl Future<Output = ()>,
) where
    W: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
    E: std::error::Error + 'static,
    <W as Sink<Message>>::Error: fmt::Display,
{
    let catch_up = CatchUp::plan(&hub, &info);
    let holding_events = matches!(catch_up, Ok(Some(_)));
    // Registered first, so that every event published from now on queues for this
    // connection while the backlog is read.
    let (id, outbox) = hub.register(holding_events);
    let session = Session {
        hub,
        id,
        info: Arc::new(info),
        outbox,
        sleep,
    };
    debug!(
        connection = %id,
        peer = ?session.info.peer_addr(),
        uri = %session.info.uri(),
        "websocket connected"
    );

    for room in session.info.query_values("room") {
        session.join(&room);
    }
    let catch_up = catch_up.unwrap_or_else(|refusal| {
        session.refuse(refusal);
        None
    });

    let (mut sink, mut stream) = websocket.split();
    let exit = {
        let reader = session.read_frames(&mut stream);
        let writer = session.write_frames(&mut sink, catch_up);
        let pinger = session.ping();
        let ended = async {
            match future::poll_fn(|cx| session.outbox.poll_end(cx)).await {
                End::Overflow => Exit::TooSlow,
                End::Shutdown => Exit::Shutdown,
            }
        };
        let shutdown = async {
            shutdown.await;
            Exit::Shutdown
        };
        first(first(reader, writer), first(first(pinger, ended), shutdown)).await
    };

    session.hub.unregister(id);
    debug!(connection = %id, reason = ?exit, "websocket closing");
    if let Some(frame) = exit.close_frame() {
        let closing = async {
            if sink.send(Message::Close(Some(frame))).await.is_ok() {
                // Read until the client's close answer, so the socket shuts down cleanly.
                while let Some(Ok(_)) = stream.next().await {}
            }
        };
        future::select(pin!(closing), (session.sleep)(CLOSE_TIMEOUT)).await;
    }
}

/// Feeds `frame` to `sink` unless it is an event already sent from the backlog.
async fn feed_unsent<S>(sink: &mut S, frame: Frame, sent: &HashSet<String>) -> Result<(), S::Error>
where
    S: Sink<Message> + Unpin,
{
    if let Frame::Event { id, .. } = &frame {
        if sent.contains(&**id) {
            return Ok(());
        }
    }
    sink.feed(frame.into_message()).await
}

/// Whichever of two exits comes first.
async fn first(a: impl Future<Output = Exit>, b: impl Future<Output = Exit>) -> Exit {
    match future::select(pin!(a), pin!(b)).await {
        Either::Left((exit, _)) | Either::Right((exit, _)) => exit,
    }
}

/// What a connection with `?since=` catches up on.
struct CatchUp {
    backlog: Arc<dyn Backlog>,
    cursor: Timestamp,
}

impl CatchUp {
    /// The catch-up the URL asks for: none without `since` or without a backlog, a
    /// refusal to send when the cursor does not parse.
    fn plan(hub: &Hub, info: &ConnectionInfo) -> Result<Option<Self>, Refusal> {
        let Some(since) = info.query_value("since") else {
            return Ok(None);
        };
        let cursor = protocol::parse_cursor(&since)?;
        let Some(backlog) = hub.backlog() else {
            debug!(%cursor, "no backlog to catch up from; sending live events only");
            return Ok(None);
        };
        Ok(Some(Self { backlog, cursor }))
    }
}

struct Session {
    hub: Hub,
    id: ConnectionId,
    info: Arc<ConnectionInfo>,
    outbox: Arc<Outbox>,
    sleep: Sleep,
}

impl Drop for Session {
    /// Leaves the hub even when the task is dropped midway or a join rule panics, so no
    /// dead connection keeps receiving events.
    fn drop(&mut self) {
        self.hub.unregister(self.id);
    }
}

impl Session {
    /// Reads client frames until the client leaves, goes silent, or breaks a limit.
    async fn read_frames<R, E>(&self, stream: &mut R) -> Exit
    where
        R: Stream<Item = Result<Message, E>> + Unpin,
        E: std::error::Error + 'static,
    {
        let idle_timeout = self.hub.config().idle_timeout;
        loop {
            let next = future::select(stream.next(), (self.sleep)(idle_timeout)).await;
            let message = match next {
                Either::Left((Some(Ok(message)), _)) => message,
                Either::Left((Some(Err(error)), _)) => return self.read_failed(&error),
                Either::Left((None, _)) => return Exit::PeerGone,
                Either::Right(_) => return Exit::Idle,
            };
            match message {
                Message::Text(text) => self.handle_text(text.as_str()),
                Message::Binary(_) => self.refuse(Refusal::new(
                    ErrorCode::BinaryUnsupported,
                    "binary frames are not supported; send JSON text frames",
                )),
                // tungstenite answers pings and close frames itself; any frame counts as
                // activity for the idle timer.
                Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {}
            }
        }
    }

    fn read_failed(&self, error: &(dyn std::error::Error + 'static)) -> Exit {
        let mut source = Some(error);
        while let Some(error) = source {
            match error.downcast_ref() {
                Some(tungstenite::Error::Capacity(capacity)) => {
                    debug!(connection = %self.id, %capacity, "client frame over the size limit");
                    return Exit::TooBig;
                }
                Some(tungstenite::Error::Protocol(violation)) => {
                    debug!(connection = %self.id, %violation, "client broke the framing rules");
                    return Exit::ProtocolViolation;
                }
                Some(tungstenite::Error::Utf8(_)) => {
                    debug!(connection = %self.id, "client text frame is not UTF-8");
                    return Exit::InvalidText;
                }
                _ => {}
            }
            source = error.source();
        }
        debug!(connection = %self.id, %error, "websocket read failed");
        Exit::PeerGone
    }

    fn handle_text(&self, text: &str) {
        match protocol::parse_request(text) {
            Ok(ClientRequest::Join(room)) => self.join(&room),
            Ok(ClientRequest::Leave(room)) => {
                self.hub.leave(self.id, &room);
                debug!(connection = %self.id, room = %room, "left room");
                self.reply(Reply::Left { room: &room }.to_message());
            }
            Err(refusal) => self.refuse(refusal),
        }
    }

    /// Joins `room` for a URL parameter or a `room.join` frame and answers either way.
    fn join(&self, room: &str) {
        let joined =
            protocol::check_room(room).and_then(|()| self.hub.join(self.id, &self.info, room));
        match joined {
            Ok(()) => {
                debug!(connection = %self.id, room = %room, "joined room");
                self.reply(Reply::Joined { room }.to_message());
            }
            Err(refusal) => self.refuse(refusal),
        }
    }

    fn refuse(&self, refusal: Refusal) {
        debug!(
            connection = %self.id,
            code = %refusal.code,
            room = refusal.room.as_deref().unwrap_or(""),
            "refused a client request"
        );
        self.reply(refusal.to_message());
    }

    fn reply(&self, frame: Message) {
        self.hub.send(self.id, &self.outbox, frame);
    }

    /// Writes queued frames to the client until writing fails, after the missed events
    /// when the connection catches up.
    async fn write_frames<S>(&self, sink: &mut S, catch_up: Option<CatchUp>) -> Exit
    where
        S: Sink<Message> + Unpin,
        S::Error: fmt::Display,
    {
        // Ids of the events sent from the backlog; a live event among them is skipped.
        let mut caught_up = HashSet::new();
        if let Some(catch_up) = catch_up {
            let done = self.catch_up(sink, catch_up, &mut caught_up).await;
            self.outbox.release_events();
            if let Err(error) = done {
                debug!(connection = %self.id, %error, "websocket write failed");
                return Exit::PeerGone;
            }
        }

        loop {
            let frame = future::poll_fn(|cx| self.outbox.poll_frame(cx)).await;
            let mut written = feed_unsent(sink, frame, &caught_up).await;
            let mut batch = 1;
            while written.is_ok() && batch < WRITE_BATCH {
                let Some(frame) = self.outbox.try_pop() else {
                    break;
                };
                written = feed_unsent(sink, frame, &caught_up).await;
                batch += 1;
            }
            if let Err(error) = written.and(sink.flush().await) {
                debug!(connection = %self.id, %error, "websocket write failed");
                return Exit::PeerGone;
            }
        }
    }

    /// Sends the events the client may have missed since its cursor, before any live
    /// event, and records their ids in `sent`.
    ///
    /// Live events published meanwhile wait in the outbox (the caller releases them);
    /// answers queued so far, such as the `room.joined` of the URL rooms, go first. Only
    /// broadcasts and events of the rooms the connection is in are sent. A backlog that
    /// fails or does not answer within the idle timeout leaves the connection with live
    /// events only. Errors are the sink's.
    async fn catch_up<S>(
        &self,
        sink: &mut S,
        catch_up: CatchUp,
        sent: &mut HashSet<String>,
    ) -> Result<(), S::Error>
    where
        S: Sink<Message> + Unpin,
    {
        let config = self.hub.config();
        let CatchUp { backlog, cursor } = catch_up;
        let margin = config
            .catch_up_margin
            .unwrap_or_else(|| backlog.commit_delay());
        let from = Timestamp::from_millis(
            cursor
                .as_millis()
                .saturating_sub(u64::try_from(margin.as_millis()).unwrap_or(u64::MAX)),
        );
        let limit = config.max_catch_up_events;

        // One more than the limit tells whether the limit cut the history short.
        let fetch = backlog.events_since(from, limit.saturating_add(1));
        let events = match future::select(fetch, (self.sleep)(config.idle_timeout)).await {
            Either::Left((Ok(events), _)) => events,
            Either::Left((Err(error), _)) => {
                debug!(
                    connection = %self.id,
                    %cursor,
                    %error,
                    "backlog failed; sending live events only"
                );
                return Ok(());
            }
            Either::Right(_) => {
                debug!(
                    connection = %self.id,
                    %cursor,
                    "backlog did not answer in time; sending live events only"
                );
                return Ok(());
            }
        };
        let truncated = events.len() > limit;

        // Events are held, so this takes the answers queued so far, such as the
        // `room.joined` of the URL rooms: they go before the missed events.
        while let Some(frame) = self.outbox.try_pop() {
            sink.feed(frame.into_message()).await?;
        }

        let rooms = self.hub.rooms_of(self.id);
        let mut caught_up = 0;
        for event in events.into_iter().take(limit) {
            let receivable = event.room.as_ref().is_none_or(|room| rooms.contains(room));
            if !receivable || sent.contains(&event.id) {
                continue;
            }
            sink.feed(Message::text(event.to_envelope())).await?;
            sent.insert(event.id);
            caught_up += 1;
            if caught_up % WRITE_BATCH == 0 {
                sink.flush().await?;
            }
        }
        if truncated {
            let notice = Refusal::new(
                ErrorCode::CatchUpTruncated,
                format!(
                    "caught up on the first {limit} missed events only; reconnect with since \
                     set to the ts of the last event received before this frame for the next"
                ),
            );
            sink.feed(notice.to_message()).await?;
        }
        sink.flush().await?;
        debug!(
            connection = %self.id,
            %cursor,
            %from,
            events = caught_up,
            truncated,
            "caught up"
        );
        Ok(())
    }

    /// Queues a ping every interval; never finishes by itself.
    async fn ping(&self) -> Exit {
        let interval = self.hub.config().ping_interval;
        loop {
            (self.sleep)(interval).await;
            self.reply(Message::Ping(Default::default()));
        }
    }
}
