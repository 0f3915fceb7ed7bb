//! The signal that starts a graceful shutdown.

use tokio::signal::unix::{SignalKind, signal};

/// Resolves when the process receives SIGINT (Ctrl-C) or SIGTERM.
///
/// # Panics
/// Panics when the signal handlers cannot be installed, which only happens outside a
/// tokio runtime with signal support; `main` calls this at start-up.
pub async fn shutdown_signal() {
    let mut terminate = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    let which = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    tracing::info!(signal = which, "shutdown requested");
}
