//! Why [`PostgresStore::connect`](crate::PostgresStore::connect) failed.

use std::fmt;

/// Why a store could not be opened.
///
/// [`InvalidUrl`](ConnectError::InvalidUrl) and [`InvalidOption`](ConnectError::InvalidOption)
/// are the caller's to fix; the others come from the server.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnectError {
    /// The connection URL does not parse.
    InvalidUrl(tokio_postgres::Error),
    /// An option cannot work; nothing was sent to the server.
    InvalidOption {
        /// Which option.
        option: &'static str,
        /// What a valid value looks like.
        reason: &'static str,
    },
    /// The server could not be reached, or refused the connection.
    Unreachable(Box<dyn std::error::Error + Send + Sync>),
    /// Creating or checking the store's tables failed.
    Migration(tokio_postgres::Error),
    /// The tables were created by a newer version of this crate.
    UnsupportedSchemaVersion {
        /// The version recorded in the database.
        found: i32,
        /// The newest version this crate knows.
        supported: i32,
    },
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidUrl(e) => write!(f, "invalid postgres url: {e}"),
            Self::InvalidOption { option, reason } => {
                write!(f, "invalid postgres store option {option}: {reason}")
            }
            Self::Unreachable(e) => write!(f, "cannot connect to postgres: {e}"),
            Self::Migration(e) => write!(f, "cannot create the store's tables: {e}"),
            Self::UnsupportedSchemaVersion { found, supported } => write!(
                f,
                "store tables have schema version {found}, this crate knows up to {supported}"
            ),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::InvalidUrl(e) | Self::Migration(e) => Some(e),
            Self::Unreachable(e) => Some(e.as_ref()),
            Self::InvalidOption { .. } | Self::UnsupportedSchemaVersion { .. } => None,
        }
    }
}
