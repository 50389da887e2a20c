//! The standalone listener on tokio (feature `tokio`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ::tokio::net::TcpListener;
use async_tungstenite::tokio::TokioAdapter;
use futures_util::future::BoxFuture;

use crate::hub::Hub;
use crate::listener::{self, ListenError, Runtime};

/// tokio's timer as a [`Sleep`](crate::Sleep) function.
pub fn sleep(duration: Duration) -> BoxFuture<'static, ()> {
    Box::pin(::tokio::time::sleep(duration))
}

fn spawn(task: BoxFuture<'static, ()>) {
    ::tokio::spawn(task);
}

/// A bound TCP listener that serves a [`Hub`]'s WebSocket endpoint on tokio.
///
/// ```no_run
/// # async fn start() -> Result<(), Box<dyn std::error::Error>> {
/// use cnerium_realtime::{Hub, RealtimeConfig};
///
/// let hub = Hub::new(RealtimeConfig::default());
/// let listener = cnerium_realtime::tokio::Listener::bind_configured(hub.clone()).await?;
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let server = tokio::spawn(listener.run_until(async {
///     let _ = stopped.await;
/// }));
/// // ... publish with `hub`, then:
/// let _ = stop.send(());
/// server.await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Listener {
    hub: Hub,
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl Listener {
    /// Binds `addr` (port 0 picks a free port) without checking the hub's host and port.
    pub async fn bind(addr: SocketAddr, hub: Hub) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            hub,
            listener,
            local_addr,
        })
    }

    /// Validates the hub's [`RealtimeConfig`](crate::RealtimeConfig) and binds its host
    /// and port.
    pub async fn bind_configured(hub: Hub) -> Result<Self, ListenError> {
        let config = hub.config();
        config.validate()?;
        let bind_error = |source| ListenError::Bind {
            address: format!("{}:{}", config.host, config.port),
            source,
        };
        let listener = TcpListener::bind((config.host.as_str(), config.port))
            .await
            .map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(Self {
            hub,
            listener,
            local_addr,
        })
    }

    /// The address the listener is bound to, with the real port when 0 was asked.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The hub this listener serves.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Serves connections until the task is dropped.
    pub async fn run(self) {
        self.run_until(std::future::pending()).await;
    }

    /// Serves connections until `shutdown` completes, then stops accepting, closes the
    /// connections it accepted with code 1001, and returns once their tasks have ended
    /// (about a second at most).
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) {
        let runtime = Runtime { sleep, spawn };
        let path = &self.hub.config().path;
        tracing::debug!(addr = %self.local_addr, %path, "realtime listening");
        let this = &self;
        let accept = move || async move {
            let (stream, peer) = this.listener.accept().await?;
            stream.set_nodelay(true)?;
            Ok((TokioAdapter::new(stream), peer))
        };
        listener::accept_until(&self.hub, runtime, accept, shutdown).await;
    }
}
