//! Service configuration profiles.

use std::fmt;
use std::path::PathBuf;

/// Where the realtime WebSocket listener accepts clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealtimeEndpoint {
    /// URL path of the WebSocket endpoint, such as `/ws`.
    pub path: String,
    /// Host or address the listener binds.
    pub host: String,
    /// TCP port the listener binds.
    pub port: u16,
}

/// How a Cnerium service is set up: its name, data directory, node id and realtime
/// endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppConfig {
    /// Service name, used in logs and health answers.
    pub name: String,
    /// Directory of the file store.
    pub data_dir: PathBuf,
    /// Identity of this process among replicas.
    pub node_id: String,
    /// The realtime endpoint, or `None` when realtime is off.
    pub realtime: Option<RealtimeEndpoint>,
}

impl AppConfig {
    /// For a developer's machine: data in `data/cnerium`, realtime on `/ws` at
    /// `0.0.0.0:9090`.
    pub fn development() -> Self {
        Self {
            name: "cnerium".to_owned(),
            data_dir: PathBuf::from("data/cnerium"),
            node_id: "node-1".to_owned(),
            realtime: Some(RealtimeEndpoint {
                path: "/ws".to_owned(),
                host: "0.0.0.0".to_owned(),
                port: 9090,
            }),
        }
    }

    /// For production: the same, with realtime off until enabled.
    pub fn production() -> Self {
        Self {
            realtime: None,
            ..Self::development()
        }
    }

    /// Sets the service name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the data directory.
    pub fn with_data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = dir.into();
        self
    }

    /// Sets the node id.
    pub fn with_node_id(mut self, node_id: impl Into<String>) -> Self {
        self.node_id = node_id.into();
        self
    }

    /// Turns realtime on at `path` on `host:port`.
    pub fn enable_realtime(mut self, path: &str, host: &str, port: u16) -> Self {
        self.realtime = Some(RealtimeEndpoint {
            path: path.to_owned(),
            host: host.to_owned(),
            port,
        });
        self
    }

    /// Checks the configuration before a service starts with it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.trim().is_empty() {
            return Err(ConfigError("the service name is empty".to_owned()));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError("the data directory is empty".to_owned()));
        }
        if let Some(realtime) = &self.realtime {
            if realtime.path.is_empty() || !realtime.path.starts_with('/') {
                return Err(ConfigError(format!(
                    "the realtime endpoint path {:?} must start with '/', such as \"/ws\"",
                    realtime.path
                )));
            }
            if realtime.host.trim().is_empty() {
                return Err(ConfigError("the realtime host is empty".to_owned()));
            }
            if realtime.port == 0 {
                return Err(ConfigError(
                    "the realtime port is 0; choose a port such as 9090".to_owned(),
                ));
            }
        }
        Ok(())
    }
}

/// A configuration a service cannot start with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_profile_has_realtime_on_ws_9090() {
        let config = AppConfig::development();
        assert_eq!(config.data_dir, PathBuf::from("data/cnerium"));
        let realtime = config.realtime.clone().unwrap();
        assert_eq!(
            (
                realtime.path.as_str(),
                realtime.host.as_str(),
                realtime.port
            ),
            ("/ws", "0.0.0.0", 9090)
        );
        assert!(config.validate().is_ok());
        assert!(AppConfig::production().realtime.is_none());
    }

    #[test]
    fn enabled_realtime_with_empty_fields_or_port_zero_is_refused() {
        let base = AppConfig::production();
        assert!(
            base.clone()
                .enable_realtime("", "0.0.0.0", 9090)
                .validate()
                .is_err()
        );
        assert!(
            base.clone()
                .enable_realtime("/ws", "", 9090)
                .validate()
                .is_err()
        );
        assert!(
            base.enable_realtime("/ws", "0.0.0.0", 0)
                .validate()
                .is_err()
        );
    }
}
