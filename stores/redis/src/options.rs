//! How a [`RedisStore`](crate::RedisStore) names its keys and how long it waits on Redis.

use std::time::Duration;

use crate::error::ConnectError;

/// Options of [`RedisStore::connect`](crate::RedisStore::connect).
///
/// Every key the store writes starts with the key prefix (default `cnerium:`). Give each
/// application, or each test, its own prefix to keep their records apart. On a Redis
/// Cluster, put a hash tag into the prefix (`{cnerium}:`): the store's scripts touch a
/// record, the fence counter and the indexes together, so they must share a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisOptions {
    pub(crate) key_prefix: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) purge_batch_size: u32,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            key_prefix: "cnerium:".to_owned(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(2),
            purge_batch_size: 500,
        }
    }
}

impl RedisOptions {
    /// The default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// The prefix of every key the store writes; non-empty.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// How long to wait for a connection, at connect and on reconnect (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for the answer to one command or script (default 2 s).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How many index entries one script of
    /// [`purge_expired`](cnerium_core::Store::purge_expired) looks at (default 500). A
    /// script blocks Redis while it runs, so keep batches small.
    pub fn purge_batch_size(mut self, size: u32) -> Self {
        self.purge_batch_size = size;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConnectError> {
        if self.key_prefix.is_empty() {
            return Err(ConnectError::InvalidOption {
                option: "key_prefix",
                reason: "a prefix keeps the store's keys apart from others; use e.g. \"cnerium:\"",
            });
        }
        if self.purge_batch_size == 0 {
            return Err(ConnectError::InvalidOption {
                option: "purge_batch_size",
                reason: "a purge batch looks at one entry at least",
            });
        }
        if self.connect_timeout.is_zero() || self.response_timeout.is_zero() {
            return Err(ConnectError::InvalidOption {
                option: "timeout",
                reason: "timeouts must be longer than zero",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(RedisOptions::new().validate().is_ok());
    }

    #[test]
    fn empty_prefix_zero_batch_and_zero_timeouts_are_refused() {
        let refused = |options: RedisOptions| match options.validate() {
            Err(ConnectError::InvalidOption { option, .. }) => option,
            other => panic!("expected an invalid option, got {other:?}"),
        };
        assert_eq!(refused(RedisOptions::new().key_prefix("")), "key_prefix");
        assert_eq!(
            refused(RedisOptions::new().purge_batch_size(0)),
            "purge_batch_size"
        );
        assert_eq!(
            refused(RedisOptions::new().response_timeout(Duration::ZERO)),
            "timeout"
        );
    }
}
