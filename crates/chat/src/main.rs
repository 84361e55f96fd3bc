//! clientmq-chat: sessions and chat rooms served as a worker on the NATS bus, so the Phenix
//! SDK works through any number of gateways (`clientmq-server --nats`). The same chat logic as
//! the gateway's embedded backend. The contract it keeps is docs/nats.md.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use clientmq_bus::nats::NatsBus;
use clientmq_bus::process::{LogFormat, bind, init_logging, shutdown_signal};
use clientmq_chat::ChatArgs;
use clientmq_chat::metrics::WorkerMetrics;
use clientmq_chat::worker::{self, WorkerConfig};

/// clientmq-chat: sessions and chat rooms as a worker on the NATS bus.
#[derive(Debug, Parser)]
#[command(name = "clientmq-chat", version, about)]
struct Args {
    /// NATS server (nats://HOST:PORT).
    #[arg(long, env = "CLIENTMQ_NATS")]
    nats: String,
    /// Prefix of every subject on the bus; the gateways' must be the same.
    #[arg(long, env = "CLIENTMQ_NATS_PREFIX", default_value = clientmq_bus::contract::DEFAULT_PREFIX)]
    nats_prefix: String,
    /// Serve /healthz, /readyz (connected to the bus) and /metrics here (plain HTTP); none when
    /// absent. Its own variable: a gateway's CLIENTMQ_LISTEN may be in the same environment.
    #[arg(long, env = "CLIENTMQ_CHAT_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Seed for session and room ids; random from the OS when absent.
    #[arg(long, env = "CLIENTMQ_SEED")]
    seed: Option<u64>,
    /// Log format.
    #[arg(long, env = "CLIENTMQ_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(flatten)]
    chat: ChatArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Gateways verify tokens before anything reaches a worker.
    let mut chat = match args.chat.chat_config() {
        Ok(chat) => chat,
        Err(e) => {
            eprintln!("clientmq-chat: {e}");
            return ExitCode::from(2);
        }
    };
    chat.wall_clock_start_ms =
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
    init_logging(args.log_format);
    let name = format!("chat-{}", std::process::id());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async move {
        let bus = match NatsBus::connect(&args.nats, &name).await {
            Ok(bus) => Arc::new(bus),
            Err(e) => {
                tracing::error!(nats = %args.nats, error = %e, "cannot use the bus");
                return ExitCode::FAILURE;
            }
        };
        let metrics = match args.listen {
            None => None,
            Some(addr) => {
                let Some(listener) = bind(addr, "--listen").await else { return ExitCode::FAILURE };
                tracing::info!(listen = %addr, "/healthz, /readyz and /metrics");
                let metrics = Arc::new(WorkerMetrics::new());
                tokio::spawn(metrics.clone().serve(listener));
                Some(metrics)
            }
        };
        let config =
            WorkerConfig { prefix: args.nats_prefix, chat, seed: args.seed, name, observer: None, metrics };
        worker::run(bus, config, shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}
