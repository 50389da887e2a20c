//! How a [`PostgresStore`](crate::PostgresStore) names its tables and sizes its pool.

use std::time::Duration;

use crate::error::ConnectError;

/// Longest schema name or table prefix accepted, in bytes. PostgreSQL truncates identifiers
/// at 63 bytes; the longest table name the store derives adds 20 bytes to the prefix.
const MAX_PREFIX_LEN: usize = 40;
const MAX_SCHEMA_LEN: usize = 63;

/// Options of [`PostgresStore::connect`](crate::PostgresStore::connect).
///
/// The defaults put the store's tables into the `public` schema, named with the prefix
/// `cnerium_` (`cnerium_records`, `cnerium_fences`, `cnerium_schema_version`), behind a pool
/// of 16 connections. Give each application, or each test, its own schema or prefix to keep
/// their records apart.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresOptions {
    pub(crate) schema: String,
    pub(crate) table_prefix: String,
    pub(crate) pool_size: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) purge_batch_size: u32,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            schema: "public".to_owned(),
            table_prefix: "cnerium_".to_owned(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            purge_batch_size: 1000,
        }
    }
}

impl PostgresOptions {
    /// The default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// The schema holding the store's tables; created at connect when missing.
    ///
    /// Lower-case ASCII letters, digits and `_`, not starting with a digit, at most 63 bytes.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The prefix of every table, index and sequence name the store creates.
    ///
    /// Lower-case ASCII letters, digits and `_`, at most 40 bytes; may be empty.
    pub fn table_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.table_prefix = prefix.into();
        self
    }

    /// The most connections the pool opens (default 16).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// How long to wait for a new connection, or for a free one when the pool is exhausted,
    /// before a call fails (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How many expired records one statement of
    /// [`purge_expired`](cnerium_core::Store::purge_expired) deletes (default 1000). Smaller
    /// batches hold row locks for a shorter time.
    pub fn purge_batch_size(mut self, size: u32) -> Self {
        self.purge_batch_size = size;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConnectError> {
        let identifier = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        let schema_ok = !self.schema.is_empty()
            && self.schema.len() <= MAX_SCHEMA_LEN
            && identifier(&self.schema)
            && !self.schema.starts_with(|c: char| c.is_ascii_digit());
        if !schema_ok {
            return Err(ConnectError::InvalidOption {
                option: "schema",
                reason: "use 1 to 63 lower-case letters, digits and '_', not starting with a digit",
            });
        }
        if self.table_prefix.len() > MAX_PREFIX_LEN || !identifier(&self.table_prefix) {
            return Err(ConnectError::InvalidOption {
                option: "table_prefix",
                reason: "use at most 40 lower-case letters, digits and '_'",
            });
        }
        if self.pool_size == 0 {
            return Err(ConnectError::InvalidOption {
                option: "pool_size",
                reason: "the pool needs at least one connection",
            });
        }
        if self.purge_batch_size == 0 {
            return Err(ConnectError::InvalidOption {
                option: "purge_batch_size",
                reason: "a purge batch holds at least one record",
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
        assert!(PostgresOptions::new().validate().is_ok());
    }

    #[test]
    fn identifiers_that_would_need_escaping_are_refused() {
        for schema in ["", "Public", "a-b", "a\"b", "1abc", &"s".repeat(64)] {
            let err = PostgresOptions::new()
                .schema(schema)
                .validate()
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    ConnectError::InvalidOption {
                        option: "schema",
                        ..
                    }
                ),
                "{schema:?} was accepted"
            );
        }
        for prefix in ["A_", "x;", &"p".repeat(41)] {
            let err = PostgresOptions::new()
                .table_prefix(prefix)
                .validate()
                .unwrap_err();
            assert!(matches!(
                err,
                ConnectError::InvalidOption {
                    option: "table_prefix",
                    ..
                }
            ));
        }
        assert!(PostgresOptions::new().table_prefix("").validate().is_ok());
    }

    #[test]
    fn empty_pool_and_purge_batch_are_refused() {
        assert!(PostgresOptions::new().pool_size(0).validate().is_err());
        assert!(
            PostgresOptions::new()
                .purge_batch_size(0)
                .validate()
                .is_err()
        );
    }
}
