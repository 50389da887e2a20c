//! Listener settings and their validation.

use std::fmt;
use std::time::Duration;

/// Settings of the realtime WebSocket endpoint.
///
/// [`Default`] gives the documented defaults: `/ws` on `0.0.0.0:9090`, a ping every 30 s,
/// a close after 60 s without any frame from the client, frames up to 64 KiB, 1024 queued
/// outgoing frames per connection, 64 rooms per connection, and a catch-up of at most
/// 10,000 events looking back as far as the [`Backlog`](crate::Backlog) asks.
///
/// The idle timer is reset by every frame the client sends, including the pong that
/// answers a server ping, so keep `ping_interval` shorter than `idle_timeout`: a client
/// that only answers pings then stays connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealtimeConfig {
    /// Request path of the WebSocket endpoint; a handshake on any other path gets a 404.
    pub path: String,
    /// Host name or address the standalone listener binds.
    pub host: String,
    /// Port the standalone listener binds.
    pub port: u16,
    /// How often the server sends a ping to each client.
    pub ping_interval: Duration,
    /// How long a client may stay silent (no frame at all) before it is closed; also the
    /// time a client gets to complete the opening handshake, and the longest a catch-up
    /// waits for the backlog before the connection goes on with live events only.
    pub idle_timeout: Duration,
    /// Largest frame and message a client may send, in bytes; a larger one closes the
    /// connection with code 1009.
    pub max_frame_size: usize,
    /// Outgoing frames queued per connection; a client whose queue is full is disconnected
    /// (code 1008) instead of slowing anyone down.
    pub queue_capacity: usize,
    /// Rooms one connection may be a member of at the same time.
    pub max_rooms_per_connection: usize,
    /// How far before a client's `since` cursor the catch-up looks. `None` uses the
    /// backlog's [`commit_delay`](crate::Backlog::commit_delay), the lease for an engine:
    /// an event's `ts` is taken when the handler emits it, and its record may commit up to
    /// that much later.
    pub catch_up_margin: Option<Duration>,
    /// Most events one connection reads from the backlog when it catches up; the oldest
    /// come first, and a connection that missed more gets a `catch_up_truncated` error
    /// frame after the last one. The ids of the events sent are kept for the connection's
    /// lifetime, so this also bounds that memory.
    pub max_catch_up_events: usize,
}

impl RealtimeConfig {
    /// Default endpoint path.
    pub const DEFAULT_PATH: &'static str = "/ws";
    /// Default listener host.
    pub const DEFAULT_HOST: &'static str = "0.0.0.0";
    /// Default listener port.
    pub const DEFAULT_PORT: u16 = 9090;
    /// Default interval between server pings.
    pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
    /// Default silence after which a client is closed.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default largest incoming frame, 64 KiB.
    pub const DEFAULT_MAX_FRAME_SIZE: usize = 64 * 1024;
    /// Default outgoing queue length per connection.
    pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;
    /// Default number of rooms per connection.
    pub const DEFAULT_MAX_ROOMS_PER_CONNECTION: usize = 64;
    /// Default number of events one connection catches up on.
    pub const DEFAULT_MAX_CATCH_UP_EVENTS: usize = 10_000;

    /// Checks the settings a standalone listener needs before it starts.
    ///
    /// Refuses an empty path or host, a path not starting with `/`, port 0, and zero
    /// timers or limits. The lower-level `Listener::bind` of each runtime takes any socket
    /// address, port 0 included, and does not call this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.path.is_empty() {
            return Err(ConfigError::Empty { field: "path" });
        }
        if !self.path.starts_with('/') {
            return Err(ConfigError::PathWithoutSlash(self.path.clone()));
        }
        if self.host.is_empty() {
            return Err(ConfigError::Empty { field: "host" });
        }
        if self.port == 0 {
            return Err(ConfigError::PortZero);
        }
        let zero_fields = [
            ("ping_interval", self.ping_interval.is_zero()),
            ("idle_timeout", self.idle_timeout.is_zero()),
            ("max_frame_size", self.max_frame_size == 0),
            ("queue_capacity", self.queue_capacity == 0),
            (
                "max_rooms_per_connection",
                self.max_rooms_per_connection == 0,
            ),
            ("max_catch_up_events", self.max_catch_up_events == 0),
        ];
        match zero_fields.into_iter().find(|(_, zero)| *zero) {
            Some((field, _)) => Err(ConfigError::Zero { field }),
            None => Ok(()),
        }
    }
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        Self {
            path: Self::DEFAULT_PATH.to_owned(),
            host: Self::DEFAULT_HOST.to_owned(),
            port: Self::DEFAULT_PORT,
            ping_interval: Self::DEFAULT_PING_INTERVAL,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            max_frame_size: Self::DEFAULT_MAX_FRAME_SIZE,
            queue_capacity: Self::DEFAULT_QUEUE_CAPACITY,
            max_rooms_per_connection: Self::DEFAULT_MAX_ROOMS_PER_CONNECTION,
            catch_up_margin: None,
            max_catch_up_events: Self::DEFAULT_MAX_CATCH_UP_EVENTS,
        }
    }
}

/// Why a [`RealtimeConfig`] was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A required text setting (`path` or `host`) is empty.
    Empty {
        /// The setting's field name.
        field: &'static str,
    },
    /// The path does not start with `/`.
    PathWithoutSlash(String),
    /// The port is 0; a configured listener needs a fixed port.
    PortZero,
    /// A timer or limit is zero.
    Zero {
        /// The setting's field name.
        field: &'static str,
    },
}

impl ConfigError {
    /// The name of the [`RealtimeConfig`] field that was refused.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Empty { field } | Self::Zero { field } => field,
            Self::PathWithoutSlash(_) => "path",
            Self::PortZero => "port",
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty { field } => write!(f, "realtime {field} must not be empty"),
            Self::PathWithoutSlash(path) => {
                write!(f, "realtime path must start with '/', got {path:?}")
            }
            Self::PortZero => write!(f, "realtime port must not be 0"),
            Self::Zero { field } => write!(f, "realtime {field} must be greater than zero"),
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_endpoint_and_pass_validation() {
        let config = RealtimeConfig::default();
        assert_eq!(config.path, "/ws");
        assert_eq!(config.host, "0.0.0.0");
        assert_eq!(config.port, 9090);
        assert_eq!(config.ping_interval, Duration::from_secs(30));
        assert_eq!(config.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.max_frame_size, 64 * 1024);
        assert_eq!(config.catch_up_margin, None);
        assert_eq!(config.max_catch_up_events, 10_000);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn empty_path_host_and_port_zero_are_refused_naming_the_field() {
        let refused = |change: fn(&mut RealtimeConfig)| {
            let mut config = RealtimeConfig::default();
            change(&mut config);
            config.validate().unwrap_err()
        };
        assert_eq!(refused(|c| c.path.clear()).field(), "path");
        assert_eq!(refused(|c| c.path = "ws".into()).field(), "path");
        assert_eq!(refused(|c| c.host.clear()).field(), "host");
        assert_eq!(refused(|c| c.port = 0).field(), "port");
        assert_eq!(refused(|c| c.queue_capacity = 0).field(), "queue_capacity");
        assert_eq!(
            refused(|c| c.max_catch_up_events = 0).field(),
            "max_catch_up_events"
        );
        assert_eq!(
            refused(|c| c.idle_timeout = Duration::ZERO).field(),
            "idle_timeout"
        );
        assert_eq!(
            refused(|c| c.port = 0).to_string(),
            "realtime port must not be 0"
        );
    }
}
