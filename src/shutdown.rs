//! The shutdown signal: SIGTERM or SIGINT, as a future `main` hands to
//! [`crate::app::run`]. Tests pass their own future instead; the stages of the
//! drain itself live in `app`.

use std::future::Future;

/// Installs the SIGTERM and SIGINT handlers now (so a signal that arrives
/// while the node starts is not lost to the default action) and returns a
/// future resolving on the first of them. Call it inside the runtime.
pub fn signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let handlers = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        async move {
            match handlers {
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
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
