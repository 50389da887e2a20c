//! An orders service whose idempotency keys belong to the caller, on warp with a file store.
//!
//! ```text
//! cargo run --example scoped_orders -- --help
//! ```
//!
//! Every `POST /orders` must carry `Authorization: Bearer <token>`; the token names a user,
//! and the route is scoped by that user with [`DurableRoute::scope_by`]. Two users sending
//! the same `Idempotency-Key` never see each other's orders: each runs its own operation
//! and replays only its own response. A request without a known token is answered 401 and
//! stored nowhere.
//!
//! Each order is announced to the room `user:<id>` of the realtime listener, and only a
//! WebSocket connection presenting that user's token may join it.
//!
//! [`DurableRoute::scope_by`]: cnerium::DurableRoute::scope_by

#[path = "../shared/logging.rs"]
mod logging;
#[path = "../shared/tokio_service.rs"]
mod tokio_service;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use cnerium::realtime::{ConnectionInfo, Hub, RealtimeConfig};
use cnerium::stores::FileStore;
use cnerium::warp::{durable, problem_rejections};
use cnerium::{DurableRequest, DurableResponse, EmitError, Engine, EngineConfig, SystemClock};
use http::header::{AUTHORIZATION, HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use serde::Serialize;
use serde_json::Value;
use tokio_service::{purge_periodically, shutdown_signal};
use tracing::{info, warn};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Reply;

const SERVICE: &str = "scoped-orders";

/// Operation name of `POST /orders`; keys are scoped by it and by the caller.
const CREATE_ORDER: &str = "orders.create";

/// The orders service where each caller has a key space of its own.
#[derive(Debug, Parser)]
#[command(name = "scoped_orders", version)]
struct Args {
    /// Address of the HTTP server (port 0 picks a free port).
    #[arg(long = "http", value_name = "ADDR", default_value = "127.0.0.1:8081")]
    http: SocketAddr,

    /// Address of the realtime WebSocket listener, served on path /ws (port 0 picks a free
    /// port).
    #[arg(
        long = "realtime",
        value_name = "ADDR",
        default_value = "127.0.0.1:9091"
    )]
    realtime: SocketAddr,

    /// Directory where records are kept.
    #[arg(
        long = "data-dir",
        value_name = "PATH",
        default_value = "data/cnerium-scoped"
    )]
    data_dir: PathBuf,

    /// A bearer token and the user it authenticates, as TOKEN=USER; repeat for more users.
    #[arg(
        long = "token",
        value_name = "TOKEN=USER",
        default_values = ["token-123=123", "token-456=456"]
    )]
    tokens: Vec<String>,
}

/// Which user each bearer token authenticates.
#[derive(Debug, Default)]
struct Users {
    by_token: HashMap<String, String>,
}

impl Users {
    fn parse(pairs: &[String]) -> Result<Self, String> {
        let mut by_token = HashMap::new();
        for pair in pairs {
            match pair.split_once('=') {
                Some((token, user)) if !token.is_empty() && !user.is_empty() => {
                    by_token.insert(token.to_owned(), user.to_owned());
                }
                _ => return Err(format!("--token expects TOKEN=USER, got {pair:?}")),
            }
        }
        Ok(Self { by_token })
    }

    /// The user a request authenticates as: exactly one `Authorization: Bearer <token>`
    /// header with a known token.
    fn caller(&self, headers: &HeaderMap) -> Option<String> {
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let value = values.next()?;
        if values.next().is_some() {
            return None;
        }
        let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        self.by_token.get(token.trim()).cloned()
    }

    /// Whether a WebSocket connection may join `room`: a `user:<id>` room is its owner's
    /// only; other rooms are open.
    fn may_join(&self, connection: &ConnectionInfo, room: &str) -> bool {
        let Some(owner) = room.strip_prefix("user:") else {
            return true;
        };
        connection
            .bearer_token()
            .and_then(|token| self.by_token.get(token))
            .is_some_and(|user| user == owner)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    logging::init();

    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let users = Arc::new(Users::parse(&args.tokens)?);
    let store = Arc::new(FileStore::open(&args.data_dir).map_err(|e| e.to_string())?);

    let rule_users = Arc::clone(&users);
    let hub = Hub::builder(RealtimeConfig::default())
        .join_rule(move |connection: &ConnectionInfo, room: &str| {
            rule_users.may_join(connection, room)
        })
        .build();
    let realtime = cnerium::realtime::tokio::Listener::bind(args.realtime, hub.clone())
        .await
        .map_err(|e| {
            format!(
                "cannot listen for WebSocket clients on {}: {e}",
                args.realtime
            )
        })?;
    let realtime_addr = realtime.local_addr();

    let engine = Engine::with_parts(
        store,
        Arc::new(hub),
        Arc::new(SystemClock),
        EngineConfig::default(),
    );
    match engine.recover().await {
        Ok(0) => {}
        Ok(n) => info!(events = n, "published events left pending by the last run"),
        Err(e) => warn!(error = %e, "could not publish pending events; they stay pending"),
    }

    let listener = tokio::net::TcpListener::bind(args.http)
        .await
        .map_err(|e| format!("cannot listen for HTTP on {}: {e}", args.http))?;
    let http_addr = listener.local_addr().map_err(|e| e.to_string())?;

    println!(
        "{SERVICE}: http://{http_addr} (POST /orders with Authorization: Bearer <token>, \
         GET /health), realtime ws://{realtime_addr}/ws, data in {}",
        args.data_dir.display()
    );

    let maintenance = tokio::spawn(purge_periodically(engine.clone()));
    let realtime_task = tokio::spawn(realtime.run_until(shutdown_signal()));

    warp::serve(routes(&engine, users))
        .incoming(listener)
        .graceful(shutdown_signal())
        .run()
        .await;

    maintenance.abort();
    realtime_task.abort();
    info!("stopped");
    Ok(())
}

/// `GET /health` and `POST /orders` for authenticated callers, every refusal a problem.
fn routes(engine: &Engine, users: Arc<Users>) -> BoxedFilter<(warp::reply::Response,)> {
    let health = warp::path("health")
        .and(warp::path::end())
        .and(warp::get())
        .map(|| warp::reply::json(&serde_json::json!({"ok": true, "service": SERVICE})));

    let scope_users = Arc::clone(&users);
    let create = engine
        .route(CREATE_ORDER, create_order)
        .scope_by(move |parts| scope_users.caller(&parts.headers));

    // The method is checked before the token, so that a GET is a 405 whoever sends it.
    let orders = warp::path("orders")
        .and(warp::path::end())
        .and(warp::post())
        .and(authenticated(users))
        .and(durable(create));

    health
        .map(Reply::into_response)
        .or(orders.map(Reply::into_response))
        .unify()
        .recover(|rejection: warp::Rejection| async move {
            if rejection.find::<Unauthenticated>().is_some() {
                return Ok(unauthorized().into_response());
            }
            problem_rejections(rejection)
                .await
                .map(Reply::into_response)
        })
        .unify()
        .boxed()
}

/// The caller presented no known bearer token.
#[derive(Debug)]
struct Unauthenticated;

impl warp::reject::Reject for Unauthenticated {}

/// Passes requests that authenticate as a known user; rejects the others before the durable
/// route sees them, so nothing of theirs is claimed or stored.
fn authenticated(users: Arc<Users>) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::header::headers_cloned()
        .and_then(move |headers: HeaderMap| {
            let known = users.caller(&headers).is_some();
            async move {
                if known {
                    Ok(())
                } else {
                    Err(warp::reject::custom(Unauthenticated))
                }
            }
        })
        .untuple_one()
}

fn unauthorized() -> Response<Bytes> {
    let mut response = DurableResponse::problem(
        StatusCode::UNAUTHORIZED,
        "send Authorization: Bearer <token> with a token this service knows",
    )
    .into_http();
    let headers = response.headers_mut();
    headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[derive(Serialize)]
struct OrderCreated<'a> {
    ok: bool,
    order_id: &'a str,
    user: &'a str,
    product_id: &'a str,
    quantity: u64,
}

#[derive(Serialize)]
struct OrderEvent<'a> {
    order_id: &'a str,
    product_id: &'a str,
    quantity: u64,
}

/// Creates an order for the calling user once per key and tells that user's room.
async fn create_order(request: DurableRequest) -> Result<DurableResponse, EmitError> {
    // The route only runs behind `authenticated`, so the scope always names the caller.
    let Some(user) = request.scope().caller() else {
        return Ok(DurableResponse::internal_error(
            "the order route ran without an authenticated caller",
        ));
    };
    let Ok(body) = request.json() else {
        return Ok(DurableResponse::bad_request(
            "Request body must be a JSON object",
        ));
    };
    let product_id = match body.get("product_id") {
        Some(Value::String(id)) if !id.is_empty() => id.as_str(),
        _ => {
            return Ok(DurableResponse::bad_request(
                "Missing required field: product_id",
            ));
        }
    };
    let quantity = match body.get("quantity").and_then(Value::as_u64) {
        Some(quantity) if quantity > 0 => quantity,
        _ => {
            return Ok(DurableResponse::bad_request(
                "Field quantity must be greater than zero",
            ));
        }
    };

    let order_id = format!("ord_{user}_{}", request.idempotency_key());
    request.emit_to(
        &format!("user:{user}"),
        "order.created",
        OrderEvent {
            order_id: &order_id,
            product_id,
            quantity,
        },
    )?;
    Ok(DurableResponse::created(OrderCreated {
        ok: true,
        order_id: &order_id,
        user,
        product_id,
        quantity,
    }))
}
