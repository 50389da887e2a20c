//! A route for the application's own warp 0.4 server (feature `warp`).
//!
//! The route answers WebSocket upgrades on the hub's configured path and runs the same
//! session as the standalone listeners; warp's WebSocket type is adapted to tungstenite
//! messages on the way in and out.

use std::net::SocketAddr;
use std::time::Duration;

use ::warp::filters::path::FullPath;
use ::warp::http::{HeaderMap, Method, Request, Uri};
use ::warp::ws::{self, Ws};
use ::warp::{Filter, Rejection, Reply};
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use futures_util::future::{self, BoxFuture};
use futures_util::{SinkExt, StreamExt};
use tracing::debug;

use crate::connection;
use crate::handshake::{self, BadHandshake};
use crate::hub::{ConnectionInfo, Hub};

fn sleep(duration: Duration) -> BoxFuture<'static, ()> {
    Box::pin(::tokio::time::sleep(duration))
}

/// A filter that serves `hub` on its configured path (`/ws` by default) as part of the
/// application's warp server.
///
/// Requests on other paths are rejected with "not found" so they fall through to the
/// application's other routes. A request on the path that cannot be upgraded gets the same
/// `application/problem+json` answer as from the standalone listeners (405, 426 or 400).
///
/// Connections live until the client leaves, the server closes them (idle, too slow, frame
/// too large) or [`Hub::disconnect_all`] is called; warp's graceful shutdown does not track
/// upgraded connections, so call it when stopping.
///
/// ```no_run
/// # async fn start() {
/// use cnerium_realtime::{Hub, RealtimeConfig};
/// use warp::Filter;
///
/// let hub = Hub::new(RealtimeConfig::default());
/// let health = warp::path("health").map(|| "ok");
/// let routes = cnerium_realtime::warp::route(hub.clone()).or(health);
/// warp::serve(routes).run(([127, 0, 0, 1], 8080)).await;
/// # }
/// ```
pub fn route(hub: Hub) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let path = hub.config().path.clone();
    let uri = ::warp::path::full()
        .and(
            ::warp::query::raw()
                .or(::warp::any().map(String::new))
                .unify(),
        )
        .and_then(move |full: FullPath, query: String| {
            let uri = request_uri(&path, &full, &query);
            future::ready(uri.ok_or_else(::warp::reject::not_found))
        });

    // warp's own filter refuses a request that is not an upgrade with a plain-text 400;
    // `None` lets the route answer it the way the standalone listeners do.
    let upgrade = ::warp::ws()
        .map(Some)
        .or(::warp::any().map(|| None))
        .unify();
    uri.and(::warp::method())
        .and(::warp::header::headers_cloned())
        .and(upgrade)
        .and(::warp::addr::remote())
        .map(
            move |uri: Uri,
                  method: Method,
                  headers: HeaderMap,
                  ws: Option<Ws>,
                  peer: Option<SocketAddr>| {
                // warp does not show the HTTP version to a filter; hyper upgrades HTTP/1.1
                // connections only, the version `Request::new` assumes.
                let mut request = Request::new(());
                *request.method_mut() = method;
                *request.uri_mut() = uri;
                *request.headers_mut() = headers;
                if let Err(bad) = handshake::check_upgrade(&request, &hub.config().path) {
                    debug!(
                        peer = ?peer,
                        status = %bad.status(),
                        detail = bad.detail(),
                        "refusing a websocket handshake"
                    );
                    return bad.to_response().into_response();
                }
                let Some(ws) = ws else {
                    // warp refused a request the checks let through.
                    let bad = BadHandshake::bad_request("the handshake request was refused");
                    return bad.to_response().into_response();
                };

                let (parts, ()) = request.into_parts();
                let info = ConnectionInfo::new(parts.uri, parts.headers, peer);
                let hub = hub.clone();
                let max_frame_size = hub.config().max_frame_size;
                ws.max_frame_size(max_frame_size)
                    .max_message_size(max_frame_size)
                    .on_upgrade(move |socket| serve(hub, socket, info))
                    .into_response()
            },
        )
}

/// The request URI when `full` is the hub's path.
fn request_uri(path: &str, full: &FullPath, query: &str) -> Option<Uri> {
    if full.as_str() != path {
        return None;
    }
    let uri = if query.is_empty() {
        full.as_str().to_owned()
    } else {
        format!("{}?{query}", full.as_str())
    };
    uri.parse().ok()
}

async fn serve(hub: Hub, socket: ws::WebSocket, info: ConnectionInfo) {
    let websocket = socket
        .with(|message: Message| future::ready(Ok::<_, ::warp::Error>(to_warp(message))))
        .map(|item| item.map(from_warp));
    connection::run_session(hub, websocket, info, sleep, future::pending()).await;
}

fn from_warp(message: ws::Message) -> Message {
    if message.is_text() {
        return match message.to_str() {
            Ok(text) => Message::text(text),
            // warp only yields text messages that are valid UTF-8.
            Err(()) => Message::Binary(message.into_bytes()),
        };
    }
    if message.is_close() {
        let frame = message.close_frame().map(|(code, reason)| CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        });
        return Message::Close(frame);
    }
    if message.is_ping() {
        return Message::Ping(message.into_bytes());
    }
    if message.is_pong() {
        return Message::Pong(message.into_bytes());
    }
    Message::Binary(message.into_bytes())
}

fn to_warp(message: Message) -> ws::Message {
    match message {
        Message::Text(text) => ws::Message::text(text.as_str()),
        Message::Binary(bytes) => ws::Message::binary(bytes),
        Message::Ping(bytes) => ws::Message::ping(bytes),
        Message::Pong(bytes) => ws::Message::pong(bytes),
        Message::Close(Some(frame)) => {
            ws::Message::close_with(u16::from(frame.code), frame.reason.to_string())
        }
        Message::Close(None) => ws::Message::close(),
        // The session never sends raw frames.
        Message::Frame(frame) => ws::Message::binary(frame.into_payload()),
    }
}
