//! The clientmq-server binary: parse flags, start logging, serve until SIGTERM/SIGINT, drain.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use clientmq_server::{Args, EmbeddedBackend, LogFormat, serve};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = Args::parse();
    let configs = args.server_config().and_then(|server| Ok((server, args.chat_config()?)));
    let (config, mut chat) = match configs {
        Ok(configs) => configs,
        Err(e) => {
            eprintln!("clientmq-server: {e}");
            return ExitCode::from(2);
        }
    };
    // Read once here: the backend derives every later wire timestamp from tokio's clock.
    chat.wall_clock_start_ms =
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
    let filter = EnvFilter::try_from_env("CLIENTMQ_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(listen = %args.listen, error = %e, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(listen = %args.listen, shards = config.shards, max_connections = config.gateway.max_connections, "clientmq-server listening; WebSocket at /ws");
        let backend = Arc::new(EmbeddedBackend::new(chat, config.seed));
        let left = serve(listener, config, backend, shutdown_signal()).await;
        tracing::info!(left, "drained; exiting");
        ExitCode::SUCCESS
    })
}

async fn shutdown_signal() {
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
    tracing::info!("shutdown signal: draining");
}
