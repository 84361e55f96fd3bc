//! clientmq-chat: sessions and chat rooms served as a worker on the NATS bus, so the Phenix
//! SDK works through any number of gateways (`clientmq-server --nats`). The same chat logic as
//! the gateway's embedded backend. The contract it keeps is docs/nats.md.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use clientmq_bus::access::{Access, NatsArgs};
use clientmq_bus::nats::NatsBus;
use clientmq_bus::process::{LogFormat, bind, each_sighup, init_logging, shutdown_signal};
use clientmq_chat::ChatArgs;
use clientmq_chat::metrics::WorkerMetrics;
use clientmq_chat::worker::{self, WorkerConfig};

/// clientmq-chat: sessions and chat rooms as a worker on the NATS bus.
#[derive(Debug, Parser)]
#[command(name = "clientmq-chat", version, about)]
struct Args {
    /// The bus (--nats is required); credentials and TLS: docs/nats.md.
    #[command(flatten)]
    nats: NatsArgs,
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
    /// Keep sessions, rooms and chat history in this worker's memory instead of NATS JetStream
    /// (docs/nats.md, "The store"): no JetStream needed, but run only one such worker, and its
    /// death loses them all. Without it, workers keep nothing but a cache, any number of them
    /// serve one fleet and any of them may die.
    #[arg(long, env = "CLIENTMQ_CHAT_MEMORY")]
    memory: bool,
    /// Copies of each of the store's streams: 3 on a three-node NATS cluster, 1 on one server.
    #[arg(long, env = "CLIENTMQ_STORE_REPLICAS", default_value_t = 1, conflicts_with = "memory", value_parser = clap::value_parser!(u8).range(1..=5))]
    store_replicas: u8,
    #[command(flatten)]
    chat: ChatArgs,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    // Gateways verify tokens before anything reaches a worker.
    let configs =
        args.chat.chat_config().map_err(|e| e.to_string()).and_then(|chat| match args.nats.access() {
            Ok(Some(access)) => Ok((chat, access)),
            Ok(None) => Err("--nats (CLIENTMQ_NATS) is required: the worker serves on the bus".to_owned()),
            Err(e) => Err(e.to_string()),
        });
    let (mut chat, access) = match configs {
        Ok(configs) => configs,
        Err(e) => {
            eprintln!("clientmq-chat: {e}");
            return ExitCode::from(2);
        }
    };
    chat.wall_clock_start_ms =
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
    init_logging(args.log_format);
    // Unique on the bus: workers on two hosts may share a process id.
    let name = format!("chat-{}-{:08x}", std::process::id(), rand::random::<u32>());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    // The worker runs as a task, not as `block_on`'s future: that one runs on the main thread,
    // outside the pool, so every message the NATS client handed to it, and every answer back,
    // crossed threads.
    let serve = runtime.spawn(async move {
        let Some(bus) = NatsBus::open_logged(&access, &name).await else { return ExitCode::FAILURE };
        let bus = Arc::new(bus);
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
        tokio::spawn(reload_on_sighup(access, metrics.clone()));
        let config =
            WorkerConfig { prefix: args.nats_prefix, chat, seed: args.seed, name, observer: None, metrics };
        if args.memory {
            worker::run(bus, config, shutdown_signal()).await;
            return ExitCode::SUCCESS;
        }
        match clientmq_chat::stored::worker::run(
            bus,
            config,
            usize::from(args.store_replicas),
            shutdown_signal(),
        )
        .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "cannot serve from the store");
                eprintln!("clientmq-chat: {e}");
                ExitCode::FAILURE
            }
        }
    });
    runtime.block_on(serve).unwrap_or(ExitCode::FAILURE)
}

/// On each SIGHUP, loads the NATS credentials again: the next connection to NATS uses them; the
/// one in place stays. A file that does not read keeps the previous credentials.
async fn reload_on_sighup(access: Access, metrics: Option<Arc<WorkerMetrics>>) {
    each_sighup(move || {
        let took = access.reload_logged();
        if let Some(m) = &metrics {
            m.reloaded(took);
        }
        std::future::ready(())
    })
    .await
}
