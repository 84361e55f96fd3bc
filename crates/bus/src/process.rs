//! What every clientmq process shares: its log format, logging set-up and the shutdown signal.

use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs to stdout in `format`; `CLIENTMQ_LOG` sets the filter (default `info`). Colours only
/// when stdout is a terminal: a log file or collector gets no escape codes.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("CLIENTMQ_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    match format {
        LogFormat::Text => tracing_subscriber::fmt().with_ansi(ansi).with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
    }
}

/// The environment variable of a flag (`max-frame-bytes` -> `CLIENTMQ_MAX_FRAME_BYTES`): every
/// flag of the binaries has one, named so; errors about a setting name both.
pub fn env_var(flag: &str) -> String {
    format!("CLIENTMQ_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

/// Binds `addr`, or logs why it cannot (`what` names the flag) and returns `None`: the binary
/// then exits with a failure.
pub async fn bind(addr: std::net::SocketAddr, what: &str) -> Option<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => Some(listener),
        Err(e) => {
            tracing::error!(%addr, flag = what, error = %e, "cannot listen");
            None
        }
    }
}

/// Runs `reload` on every SIGHUP, one at a time, for as long as the process lives (at once done
/// where there are no signals).
pub async fn each_sighup<F, Fut>(mut reload: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("no SIGHUP handler: secrets reload only with a restart");
            return;
        };
        while hup.recv().await.is_some() {
            reload().await;
        }
    }
    #[cfg(not(unix))]
    let _ = &mut reload;
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal");
}
