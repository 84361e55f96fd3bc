//! The clientmq-server binary: parse flags, start logging, serve until SIGTERM/SIGINT, drain.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use clientmq_bus::access::Access;
use clientmq_bus::nats::NatsBus;
use clientmq_bus::process::{bind, each_sighup, init_logging, shutdown_signal};
use clientmq_server::{Args, Backend, BusBackend, EmbeddedBackend, Server, ServerConfig};

fn main() -> ExitCode {
    let args = Args::parse();
    let configs = args
        .server_config()
        .and_then(|server| Ok((server, args.chat_config()?, args.bus_route_key()?, args.nats.access()?)));
    let (mut config, mut chat, route_key, access) = match configs {
        Ok(configs) => configs,
        Err(e) => {
            eprintln!("clientmq-server: {e}");
            return ExitCode::from(2);
        }
    };
    // Read once here: every later wire timestamp and token expiry counts from tokio's clock.
    let start_ms =
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
    chat.wall_clock_start_ms = start_ms;
    config.gateway.wall_clock_start_ms = start_ms;
    init_logging(args.log_format);
    if access.is_some()
        && chat != (clientmq_chat::ChatConfig { wall_clock_start_ms: start_ms, ..Default::default() })
    {
        // Shared environment files set them for both binaries; on a bus only the worker uses them.
        tracing::warn!(
            "chat settings (--session-grace-secs, --max-sessions, ...) are ignored with --nats: \
             set them on clientmq-chat, which serves the chat on the bus"
        );
    }
    clientmq_server::tokens::announce(&config.gateway.tokens);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async move {
        let Some(listener) = bind(args.listen, "--listen").await else { return ExitCode::FAILURE };
        if let Err(e) = clientmq_server::set_send_buffer(&listener, args.socket_send_buffer) {
            tracing::error!(error = %e, "cannot set --socket-send-buffer");
            return ExitCode::FAILURE;
        }
        let admin = match args.admin_listen {
            None => None,
            Some(addr) => {
                let Some(admin) = bind(addr, "--admin-listen").await else { return ExitCode::FAILURE };
                tracing::info!(admin = %addr, "operator endpoints (/metrics, /healthz, /readyz) on the admin port");
                Some(admin)
            }
        };
        tracing::info!(listen = %args.listen, shards = config.shards, max_connections = config.gateway.max_connections, "clientmq-server listening; WebSocket at /ws");
        let left = match (access, route_key) {
            (Some(access), Some(route_key)) => {
                let Some(bus) = NatsBus::open_logged(&access, &route_key).await else {
                    return ExitCode::FAILURE;
                };
                let bus = Arc::new(bus);
                tracing::info!(gateway = %route_key, prefix = %args.nats_prefix, "client requests go to workers on the bus");
                config.gateway.route_key = route_key.clone();
                let timeout = config.gateway.request_timeout;
                let backend = Arc::new(BusBackend::new(bus, &args.nats_prefix, &route_key, timeout));
                run(listener, admin, config, backend, &args, Some(access)).await
            }
            _ => {
                let backend = Arc::new(EmbeddedBackend::new(chat, config.seed));
                run(listener, admin, config, backend, &args, None).await
            }
        };
        tracing::info!(left, "drained; exiting");
        ExitCode::SUCCESS
    })
}

/// Serves until SIGTERM or SIGINT, then drains; the operator endpoints on `admin` if given.
async fn run<B: Backend>(
    listener: tokio::net::TcpListener,
    admin: Option<tokio::net::TcpListener>,
    config: ServerConfig,
    backend: Arc<B>,
    args: &Args,
    access: Option<Access>,
) -> usize {
    let server = Server::start(config, backend);
    if let Some(admin) = admin {
        server.serve_admin(admin);
    }
    tokio::spawn(reload_on_sighup(server.clone(), args.clone(), access));
    server.serve_until(listener, shutdown_signal()).await
}

/// On each SIGHUP, reads the token files (`--tokens-file`, `--edge-auth-file`), the TLS
/// certificate and key, and the NATS credentials again. What reads cleanly takes effect for new
/// authentications, handshakes and connections to NATS; open connections stay. What does not
/// keeps the previous material, says why in the log and counts
/// `clientmq_reloads_total{what,outcome="failed"}`.
async fn reload_on_sighup(server: Server, args: Args, access: Option<Access>) {
    each_sighup(move || {
        let (server, args, access) = (server.clone(), args.clone(), access.clone());
        async move { reload(&server, &args, access.as_ref()).await }
    })
    .await
}

async fn reload(server: &Server, args: &Args, access: Option<&Access>) {
    if args.tokens_file.is_some() || args.edge_auth_file.is_some() {
        match args.token_policy() {
            Ok(tokens) => {
                clientmq_server::tokens::announce(&tokens);
                server.set_tokens(tokens).await;
                server.reloaded("tokens", true);
                tracing::info!("SIGHUP: token files reloaded");
            }
            Err(e) => {
                server.reloaded("tokens", false);
                tracing::error!(error = %e, "SIGHUP: token files not reloaded; the previous tokens stay");
            }
        }
    }
    if args.tls_cert.is_some() {
        match args.tls_acceptor() {
            // Half the pair cannot happen here: the flags were checked at start.
            Ok(None) => {}
            Ok(Some(acceptor)) => {
                server.set_tls(acceptor);
                server.reloaded("tls", true);
                tracing::info!("SIGHUP: TLS certificate and key reloaded");
            }
            Err(e) => {
                server.reloaded("tls", false);
                tracing::error!(error = %e, "SIGHUP: TLS certificate not reloaded; the previous one stays");
            }
        }
    }
    if let Some(access) = access {
        server.reloaded("nats", access.reload_logged());
    }
}
