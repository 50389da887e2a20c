//! Logging of the example services: to standard error, `RUST_LOG` or `info`, in colour
//! only when standard error is a terminal.

use std::io::IsTerminal;

/// Installs the services' log subscriber.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
