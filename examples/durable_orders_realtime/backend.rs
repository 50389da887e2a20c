//! Where the orders service keeps its records (`--store`) and how its events reach the
//! WebSocket clients of every replica (`--events`).
//!
//! One process alone keeps records in a file store and hands events straight to its hub.
//! Several replicas behind a load balancer share a PostgreSQL or Redis store, so that a
//! retry sent to any of them replays, and publish events to a Redis channel: each replica
//! relays what the channel carries to its own clients, so every client gets each event
//! once, whichever replica ran the request.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use cnerium::realtime::Hub;
use cnerium::{EventSink, Store};
use tokio::task::JoinHandle;

/// Where records are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreChoice {
    /// The file store in `--data-dir`.
    File,
    /// Process memory: gone on stop, seen by this process only.
    Memory,
    /// PostgreSQL at this URL.
    Postgres(String),
    /// Redis at this URL.
    Redis(String),
}

impl FromStr for StoreChoice {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "file" => Ok(Self::File),
            "memory" => Ok(Self::Memory),
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Self::Postgres(url.to_owned()))
            }
            url if url.starts_with("redis://") => Ok(Self::Redis(url.to_owned())),
            _ => Err("expected file, memory, postgres://... or redis://...".to_owned()),
        }
    }
}

/// How committed events reach WebSocket clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventsChoice {
    /// Straight to this process's hub.
    Local,
    /// Through a channel of the Redis server at this URL, to the hub of every replica.
    Redis(String),
}

impl FromStr for EventsChoice {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "local" => Ok(Self::Local),
            url if url.starts_with("redis://") => Ok(Self::Redis(url.to_owned())),
            _ => Err("expected local or redis://...".to_owned()),
        }
    }
}

impl EventsChoice {
    /// What `--events` means when it is not given: the Redis server of a Redis store,
    /// this process's hub otherwise.
    pub fn default_for(store: &StoreChoice) -> Self {
        match store {
            StoreChoice::Redis(url) => Self::Redis(url.clone()),
            _ => Self::Local,
        }
    }
}

/// The names a shared store keeps its records under; replicas that share records use the
/// same ones.
#[derive(Clone, Debug)]
pub struct StoreNames<'a> {
    /// Directory of the file store.
    pub data_dir: &'a Path,
    /// PostgreSQL schema of the store's tables.
    #[cfg_attr(not(feature = "postgres-store"), allow(dead_code))]
    pub pg_schema: &'a str,
    /// Prefix of the store's PostgreSQL table names.
    #[cfg_attr(not(feature = "postgres-store"), allow(dead_code))]
    pub pg_table_prefix: &'a str,
    /// Prefix of the store's Redis keys.
    #[cfg_attr(not(feature = "redis-store"), allow(dead_code))]
    pub redis_key_prefix: &'a str,
}

/// An open store, and a description of it for the start line.
pub struct OpenStore {
    pub store: Arc<dyn Store>,
    pub description: String,
}

/// Opens the store `choice` names.
pub async fn open_store(choice: &StoreChoice, names: &StoreNames<'_>) -> Result<OpenStore, String> {
    match choice {
        StoreChoice::File => {
            let store = cnerium::stores::FileStore::open(names.data_dir)
                .map_err(|e| format!("cannot open the file store: {e}"))?;
            Ok(OpenStore {
                store: Arc::new(store),
                description: format!("data in {}", names.data_dir.display()),
            })
        }
        StoreChoice::Memory => Ok(OpenStore {
            store: Arc::new(cnerium::stores::MemoryStore::new()),
            description: "records in memory".to_owned(),
        }),
        StoreChoice::Postgres(url) => open_postgres(url, names).await,
        StoreChoice::Redis(url) => open_redis(url, names).await,
    }
}

#[cfg(feature = "postgres-store")]
async fn open_postgres(url: &str, names: &StoreNames<'_>) -> Result<OpenStore, String> {
    use cnerium::stores::postgres::{PostgresOptions, PostgresStore};

    let options = PostgresOptions::new()
        .schema(names.pg_schema)
        .table_prefix(names.pg_table_prefix);
    let store = PostgresStore::connect(url, options)
        .await
        .map_err(|e| format!("cannot open the PostgreSQL store: {e}"))?;
    Ok(OpenStore {
        store: Arc::new(store),
        description: format!(
            "records in PostgreSQL schema {} (tables {}*)",
            names.pg_schema, names.pg_table_prefix
        ),
    })
}

#[cfg(not(feature = "postgres-store"))]
async fn open_postgres(_url: &str, _names: &StoreNames<'_>) -> Result<OpenStore, String> {
    Err(missing_feature("--store postgres://", "postgres-store"))
}

#[cfg(feature = "redis-store")]
async fn open_redis(url: &str, names: &StoreNames<'_>) -> Result<OpenStore, String> {
    use cnerium::stores::redis::{RedisOptions, RedisStore};

    let options = RedisOptions::new().key_prefix(names.redis_key_prefix);
    let store = RedisStore::connect(url, options)
        .await
        .map_err(|e| format!("cannot open the Redis store: {e}"))?;
    Ok(OpenStore {
        store: Arc::new(store),
        description: format!("records in Redis (keys {}*)", names.redis_key_prefix),
    })
}

#[cfg(not(feature = "redis-store"))]
async fn open_redis(_url: &str, _names: &StoreNames<'_>) -> Result<OpenStore, String> {
    Err(missing_feature("--store redis://", "redis-store"))
}

/// Where the engine publishes, and what feeds the hub.
pub struct EventPath {
    /// The engine's sink.
    pub sink: Arc<dyn EventSink>,
    /// The task relaying a Redis channel into the hub, if events go through Redis.
    pub relay: Option<JoinHandle<()>>,
    /// A description for the start line; empty for local events.
    pub description: String,
}

/// Wires `choice`: local events go to `hub` directly; Redis events go to `channel`, which a
/// relay task subscribed before this returns hands to `hub`.
pub async fn event_path(
    choice: &EventsChoice,
    channel: &str,
    hub: &Hub,
) -> Result<EventPath, String> {
    match choice {
        EventsChoice::Local => Ok(EventPath {
            sink: Arc::new(hub.clone()),
            relay: None,
            description: String::new(),
        }),
        EventsChoice::Redis(url) => redis_events(url, channel, hub).await,
    }
}

#[cfg(feature = "redis-store")]
async fn redis_events(url: &str, channel: &str, hub: &Hub) -> Result<EventPath, String> {
    use cnerium::stores::redis::{RedisEventRelay, RedisEventSink};

    // Subscribed first, so that this replica's clients also get what it publishes from
    // the first event on (recovery included).
    let relay = RedisEventRelay::subscribe(url, channel, Arc::new(hub.clone()))
        .await
        .map_err(|e| format!("cannot subscribe to Redis channel {channel}: {e}"))?;
    let sink = RedisEventSink::connect(url, channel)
        .await
        .map_err(|e| format!("cannot connect to Redis to publish events: {e}"))?;
    Ok(EventPath {
        sink: Arc::new(sink),
        relay: Some(tokio::spawn(relay.run())),
        description: format!(", events via Redis channel {channel}"),
    })
}

#[cfg(not(feature = "redis-store"))]
async fn redis_events(_url: &str, _channel: &str, _hub: &Hub) -> Result<EventPath, String> {
    Err(missing_feature("--events redis://", "redis-store"))
}

#[cfg(any(not(feature = "postgres-store"), not(feature = "redis-store")))]
fn missing_feature(flag: &str, feature: &str) -> String {
    format!(
        "{flag} needs the {feature} feature; run \
         `cargo run --example durable_orders_realtime --features {feature} -- ...`"
    )
}
