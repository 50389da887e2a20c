//! Why a Redis store, sink or relay could not be set up.

use std::fmt;

/// Why [`RedisStore::connect`](crate::RedisStore::connect),
/// [`RedisEventSink::connect`](crate::RedisEventSink::connect) or
/// [`RedisEventRelay::subscribe`](crate::RedisEventRelay::subscribe) failed.
///
/// [`InvalidUrl`](ConnectError::InvalidUrl) and [`InvalidOption`](ConnectError::InvalidOption)
/// are the caller's to fix; [`Unreachable`](ConnectError::Unreachable) comes from the server
/// or the network.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnectError {
    /// The connection URL does not parse.
    InvalidUrl(redis::RedisError),
    /// An option cannot work; nothing was sent to the server.
    InvalidOption {
        /// Which option.
        option: &'static str,
        /// What a valid value looks like.
        reason: &'static str,
    },
    /// The server could not be reached, or refused the connection or the subscription.
    Unreachable(redis::RedisError),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidUrl(e) => write!(f, "invalid redis url: {e}"),
            Self::InvalidOption { option, reason } => {
                write!(f, "invalid redis option {option}: {reason}")
            }
            Self::Unreachable(e) => write!(f, "cannot connect to redis: {e}"),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::InvalidUrl(e) | Self::Unreachable(e) => Some(e),
            Self::InvalidOption { .. } => None,
        }
    }
}
