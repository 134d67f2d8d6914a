//! The shutdown signal: SIGTERM or SIGINT, as a future `main` hands to
//! [`crate::app::run`]. Tests pass their own future instead; the stages of the
//! drain itself live in `app.rs`.

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received: draining"),
                    _ = int.recv() => tracing::info!("SIGINT received: draining"),
                }
            }
            (Err(error), _) | (_, Err(error)) => {
                tracing::error!(%error, "cannot install signal handlers; waiting for ctrl-c");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
