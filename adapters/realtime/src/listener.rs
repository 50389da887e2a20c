//! The accept loop every standalone listener shares; runtimes supply accept, spawn and
//! sleep.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use futures_channel::{mpsc, oneshot};
use futures_io::{AsyncRead, AsyncWrite};
use futures_util::StreamExt;
use futures_util::future::{self, BoxFuture, Either, FutureExt};
use tracing::{debug, warn};

use crate::config::ConfigError;
use crate::connection::{self, Sleep};
use crate::hub::Hub;

/// Pause after a failed accept (such as running out of file descriptors), so the loop
/// does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a runtime provides to the shared accept loop.
#[cfg_attr(not(any(feature = "tokio", feature = "async-std")), allow(dead_code))]
pub(crate) struct Runtime {
    pub(crate) sleep: Sleep,
    pub(crate) spawn: fn(BoxFuture<'static, ()>),
}

/// Accepts connections and serves each on its own task until `shutdown` completes, then
/// closes every connection it accepted (code 1001) and waits for their tasks to end.
#[cfg_attr(not(any(feature = "tokio", feature = "async-std")), allow(dead_code))]
pub(crate) async fn accept_until<A, Fut, S>(
    hub: &Hub,
    runtime: Runtime,
    mut accept: A,
    shutdown: impl Future<Output = ()>,
) where
    A: FnMut() -> Fut,
    Fut: Future<Output = io::Result<(S, SocketAddr)>>,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Dropping `stop` tells every connection task to close; each task holds a clone of
    // `alive`, so `tasks_done` ends once all of them are gone.
    let (stop, stopped) = oneshot::channel::<()>();
    let stopped = stopped.map(|_| ()).shared();
    let (alive, mut tasks_done) = mpsc::channel::<()>(0);
    let mut shutdown = pin!(shutdown);

    loop {
        let accepted = match future::select(pin!(accept()), shutdown.as_mut()).await {
            Either::Left((accepted, _)) => accepted,
            Either::Right(_) => break,
        };
        match accepted {
            Ok((io, peer)) => {
                debug!(%peer, "accepted a tcp connection");
                let hub = hub.clone();
                let stopped = stopped.clone();
                let alive = alive.clone();
                let sleep = runtime.sleep;
                (runtime.spawn)(Box::pin(async move {
                    connection::accept(hub, io, Some(peer), sleep, stopped).await;
                    drop(alive);
                }));
            }
            Err(error) => {
                warn!(%error, "realtime listener failed to accept a connection");
                (runtime.sleep)(ACCEPT_BACKOFF).await;
            }
        }
    }

    debug!("realtime listener stopping");
    drop(stop);
    drop(alive);
    while tasks_done.next().await.is_some() {}
    debug!("realtime listener stopped");
}

/// Why a configured listener could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum ListenError {
    /// The configuration was refused.
    Config(ConfigError),
    /// The address could not be bound.
    Bind {
        /// The `host:port` that was tried.
        address: String,
        /// What the operating system said.
        source: io::Error,
    },
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(error) => error.fmt(f),
            Self::Bind { address, source } => {
                write!(
                    f,
                    "cannot bind the realtime listener to {address}: {source}"
                )
            }
        }
    }
}

impl std::error::Error for ListenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Config(error) => Some(error),
            Self::Bind { source, .. } => Some(source),
        }
    }
}

impl From<ConfigError> for ListenError {
    fn from(error: ConfigError) -> Self {
        Self::Config(error)
    }
}
