//! Server settings: a clap CLI whose every flag can also come from a `CLIENTMQ_*` variable.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use clap::builder::FalseyValueParser;
use clientmq_bus::process::{LogFormat, env_var};

use crate::observe::{InvariantSink, TraceSink};

use crate::tokens::TokenError;
use clientmq_chat::{ChatArgs, ChatConfig};

/// The production defaults, written once in [`ServerConfig::default`] (and the core's
/// `Config::default`); every flag's default reads them.
static DEFAULT: std::sync::LazyLock<ServerConfig> = std::sync::LazyLock::new(ServerConfig::default);

/// clientmq-server: a WebSocket gateway for the MQ protocol.
#[derive(Debug, Clone, Parser)]
#[command(name = "clientmq-server", version, about)]
pub struct Args {
    /// Address to listen on (HTTP and WebSocket on one port).
    #[arg(long, env = "CLIENTMQ_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Serve /metrics, /healthz and /readyz on this address (plain HTTP, for operators) and no
    /// longer on the public port; without it they are on the public port.
    #[arg(long, env = "CLIENTMQ_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Open connections allowed at once; more are closed with 1013.
    #[arg(long, env = "CLIENTMQ_MAX_CONNECTIONS", default_value_t = DEFAULT.gateway.max_connections)]
    pub max_connections: usize,
    /// Heartbeat (ping) interval in seconds; no pong by the next one closes with 3334.
    #[arg(long, env = "CLIENTMQ_HEARTBEAT_SECS", default_value_t = DEFAULT.gateway.heartbeat_interval.as_secs_f64())]
    pub heartbeat_secs: f64,
    /// Seconds a server-initiated close waits for the client's close frame before abort.
    #[arg(long, env = "CLIENTMQ_CLOSE_TIMEOUT_SECS", default_value_t = DEFAULT.gateway.close_timeout.as_secs_f64())]
    pub close_timeout_secs: f64,
    /// Seconds a request may wait on the backend before `mq.Error{timeout}`.
    #[arg(long, env = "CLIENTMQ_REQUEST_TIMEOUT_SECS", default_value_t = DEFAULT.gateway.request_timeout.as_secs_f64())]
    pub request_timeout_secs: f64,
    /// Client requests in flight per connection.
    #[arg(long, env = "CLIENTMQ_MAX_PENDING_REQUESTS", default_value_t = DEFAULT.gateway.max_pending_requests)]
    pub max_pending_requests: usize,
    /// Seconds over which drain spreads its closes.
    #[arg(long, env = "CLIENTMQ_DRAIN_WINDOW_SECS", default_value_t = DEFAULT.gateway.drain_window.as_secs_f64())]
    pub drain_window_secs: f64,
    /// Seconds after drain starts at which the process exits even if connections remain.
    #[arg(long, env = "CLIENTMQ_DRAIN_DEADLINE_SECS", default_value_t = DEFAULT.drain_deadline.as_secs_f64())]
    pub drain_deadline_secs: f64,
    /// Seconds a client has to complete the HTTP upgrade.
    #[arg(long, env = "CLIENTMQ_HANDSHAKE_TIMEOUT_SECS", default_value_t = DEFAULT.handshake_timeout.as_secs_f64())]
    pub handshake_timeout_secs: f64,
    /// Largest WebSocket message in bytes; larger ones close with 1009.
    #[arg(long, env = "CLIENTMQ_MAX_FRAME_BYTES", default_value_t = DEFAULT.max_frame_bytes)]
    pub max_frame_bytes: usize,
    /// Frames queued per connection before it counts as a slow consumer (closed with 3335).
    #[arg(long, env = "CLIENTMQ_OUTBOUND_QUEUE", default_value_t = DEFAULT.outbound_queue)]
    pub outbound_queue: usize,
    /// Bytes queued per connection (frames the socket has not taken) before it counts as a slow
    /// consumer (closed with 3335), whatever the frame count.
    #[arg(long, env = "CLIENTMQ_OUTBOUND_QUEUE_BYTES", default_value_t = DEFAULT.outbound_queue_bytes)]
    pub outbound_queue_bytes: usize,
    /// The kernel send buffer of every client socket, in bytes (SO_SNDBUF; Linux doubles it).
    /// 0 keeps the kernel's own, which grows up to `net.ipv4.tcp_wmem`'s maximum (4 MiB by
    /// default): a client that stops reading holds that much kernel memory before the queue
    /// above starts to fill.
    #[arg(long, env = "CLIENTMQ_SOCKET_SEND_BUFFER", default_value_t = 0)]
    pub socket_send_buffer: usize,
    /// Largest message the server sends, in bytes: a larger answer becomes mq.Error{too-large},
    /// a larger event is dropped.
    #[arg(long, env = "CLIENTMQ_MAX_OUTBOUND_BYTES", default_value_t = DEFAULT.gateway.max_outbound_message_size)]
    pub max_outbound_bytes: usize,
    /// Frames a connection may send per second, sustained; over it requests get
    /// mq.Error{rate-limited}. 0: no limit.
    #[arg(long, env = "CLIENTMQ_MAX_REQUESTS_PER_SEC", default_value_t = DEFAULT.gateway.max_requests_per_sec)]
    pub max_requests_per_sec: u32,
    /// Frames a connection may send at once above its rate; a burst more of refused frames in a
    /// row closes it with 1008 rate-limit-exceeded.
    #[arg(long, env = "CLIENTMQ_REQUEST_BURST", default_value_t = DEFAULT.gateway.request_burst)]
    pub request_burst: u32,
    /// Connections one client address (after trusted proxies) may hold; more are closed with
    /// 1008 address-limit-exceeded. 0: no limit.
    #[arg(long, env = "CLIENTMQ_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = DEFAULT.max_connections_per_address)]
    pub max_connections_per_address: usize,
    /// Upgrades and plain HTTP requests still reading their head at once; more sockets are
    /// dropped at accept.
    #[arg(long, env = "CLIENTMQ_MAX_HANDSHAKES", default_value_t = DEFAULT.max_handshakes)]
    pub max_handshakes: usize,
    /// PEM certificate chain: with --tls-key, the port serves wss:// and https:// (rustls).
    #[arg(long, env = "CLIENTMQ_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "CLIENTMQ_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Peers whose X-Forwarded-For is believed (comma separated).
    #[arg(long, env = "CLIENTMQ_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpAddr>,
    /// Origins allowed to upgrade (comma separated); empty allows any. Others get 403.
    #[arg(long, env = "CLIENTMQ_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Gateway shards (core instances); 0 means one per CPU core.
    #[arg(long, env = "CLIENTMQ_SHARDS", default_value_t = 0)]
    pub shards: usize,
    /// Seed for connection ids; random from the OS when absent.
    #[arg(long, env = "CLIENTMQ_SEED")]
    pub seed: Option<u64>,
    /// Log format.
    #[arg(long, env = "CLIENTMQ_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Development only: accept any non-empty authentication token (the log says so at start).
    #[arg(long, env = "CLIENTMQ_DEV_ACCEPT_ANY_TOKEN", value_parser = FalseyValueParser::new())]
    pub dev_accept_any_token: bool,
    /// Authentication tokens that open a session (comma separated). With no token source and
    /// no dev mode, every pcast.Authenticate is refused.
    #[arg(long, env = "CLIENTMQ_TOKENS", value_delimiter = ',', hide_env_values = true)]
    pub tokens: Vec<String>,
    /// File of accepted tokens, one a line (blank lines and # comments ignored).
    #[arg(long, env = "CLIENTMQ_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// File of EdgeAuth applications whose digest tokens are accepted: lines `APPLICATION_ID
    /// SECRET` (blank lines and # comments ignored). Digests, expiry, type, bound address,
    /// session and room are checked here; workers get the verified claims.
    #[arg(long, env = "CLIENTMQ_EDGE_AUTH_FILE")]
    pub edge_auth_file: Option<PathBuf>,
    /// The embedded backend's (or the chat worker's) bounds.
    #[command(flatten)]
    pub chat: ChatArgs,
    /// NATS: with `--nats`, backend workers on the bus serve every client request; without it
    /// the embedded backend serves them in this process. Credentials and TLS: docs/nats.md.
    #[command(flatten)]
    pub nats: clientmq_bus::access::NatsArgs,
    /// Prefix of every subject on the bus (docs/nats.md).
    #[arg(long, env = "CLIENTMQ_NATS_PREFIX", default_value = clientmq_bus::contract::DEFAULT_PREFIX)]
    pub nats_prefix: String,
    /// This gateway's name on the bus; a random suffix makes each process unique, since a
    /// restarted gateway is a new one to the workers.
    #[arg(long, env = "CLIENTMQ_GATEWAY_NAME", default_value = "gw")]
    pub gateway_name: String,
}

/// Everything `serve` needs, in typed form.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub gateway: clientmq_core::Config,
    pub shards: usize,
    pub handshake_timeout: Duration,
    pub max_frame_bytes: usize,
    pub outbound_queue: usize,
    /// Bytes a connection may have queued before it is a slow consumer.
    pub outbound_queue_bytes: usize,
    /// Sockets a shard writes in a turn before it takes commands and reads again (at least 1).
    /// Not a flag: the simulator sets it low so that a few clients take several turns.
    pub writes_per_turn: usize,
    pub allowed_origins: Vec<String>,
    /// The operator endpoints (/metrics, /healthz, /readyz) are served on an admin port
    /// ([`crate::Server::serve_admin`]), not on the public one.
    pub admin_port: bool,
    pub drain_deadline: Duration,
    /// Connections one client address (after trusted proxies) may hold; more are closed with
    /// 1008 `address-limit-exceeded`. 0: no limit.
    pub max_connections_per_address: usize,
    /// Upgrades (and plain HTTP requests) still reading their head; more sockets are dropped at
    /// accept.
    pub max_handshakes: usize,
    /// Serve `wss://` and `https://` on the port (`--tls-cert`, `--tls-key`).
    pub tls: Option<crate::tls::Acceptor>,
    pub seed: Option<u64>,
    pub trace: Option<TraceSink>,
    pub check: Option<InvariantSink>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            gateway: clientmq_core::Config::default(),
            shards: 1,
            handshake_timeout: Duration::from_secs(10),
            max_frame_bytes: 256 * 1024,
            outbound_queue: 256,
            // The answers to every request a connection may have in flight (64 of up to 1 MiB)
            // fit: only events can fill it.
            outbound_queue_bytes: 64 * 1024 * 1024,
            writes_per_turn: 32,
            allowed_origins: Vec::new(),
            admin_port: false,
            drain_deadline: Duration::from_secs(30),
            max_connections_per_address: 100,
            max_handshakes: 1024,
            tls: None,
            seed: None,
            trace: None,
            check: None,
        }
    }
}

/// A flag that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArgsError {
    #[error("--{0} ({env}) must be a positive number of seconds", env = env_var(.0))]
    Seconds(&'static str),
    #[error(transparent)]
    Gateway(#[from] clientmq_core::ConfigError),
    #[error("--{0} ({env}) must be greater than zero", env = env_var(.0))]
    Zero(&'static str),
    #[error(transparent)]
    Tokens(#[from] TokenError),
    #[error(transparent)]
    Chat(#[from] clientmq_chat::ConfigError),
    #[error(
        "--gateway-name (CLIENTMQ_GATEWAY_NAME) and --nats-prefix (CLIENTMQ_NATS_PREFIX) may hold only letters, digits, - and _ (and dots in the prefix)"
    )]
    BusName,
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Nats(#[from] clientmq_bus::access::AccessError),
}

fn secs(name: &'static str, value: f64) -> Result<Duration, ArgsError> {
    Duration::try_from_secs_f64(value).ok().filter(|d| !d.is_zero()).ok_or(ArgsError::Seconds(name))
}

fn positive(name: &'static str, value: usize) -> Result<usize, ArgsError> {
    if value == 0 { Err(ArgsError::Zero(name)) } else { Ok(value) }
}

impl Args {
    /// Settings of the embedded backend. `wall_clock_start_ms` is left at 0 for the caller to
    /// set from the system clock.
    pub fn chat_config(&self) -> Result<ChatConfig, ArgsError> {
        Ok(self.chat.chat_config()?)
    }

    /// The gateway's route key on the bus, `NAME.INSTANCE` (a random instance), or `None`
    /// without a bus.
    pub fn bus_route_key(&self) -> Result<Option<String>, ArgsError> {
        if self.nats.nats.is_none() {
            return Ok(None);
        }
        if !clientmq_bus::contract::token_ok(&self.gateway_name)
            || !clientmq_bus::contract::token_ok(&self.nats_prefix.replace('.', ""))
        {
            return Err(ArgsError::BusName);
        }
        let suffix: String = {
            use rand::RngExt;
            let mut rng = rand::rng();
            (0..8)
                .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
                .collect()
        };
        // Two tokens: NATS permissions can then name every instance of a gateway (docs/nats.md).
        Ok(Some(format!("{}.{suffix}", self.gateway_name)))
    }

    /// Who may authenticate: the dev flag, `--tokens` and the token files, read now (at start,
    /// and again on each SIGHUP).
    pub fn token_policy(&self) -> Result<clientmq_core::TokenPolicy, TokenError> {
        let files = (self.tokens_file.as_deref(), self.edge_auth_file.as_deref());
        crate::tokens::policy(self.dev_accept_any_token, &self.tokens, files.0, files.1)
    }

    /// The TLS certificate and key, read now (at start, and again on each SIGHUP); `None` for a
    /// plain port.
    pub fn tls_acceptor(&self) -> Result<Option<crate::tls::Acceptor>, crate::tls::TlsError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(crate::tls::Acceptor(crate::tls::acceptor(cert, key)?))),
            (None, None) => Ok(None),
            _ => Err(crate::tls::TlsError::Half),
        }
    }

    pub fn server_config(&self) -> Result<ServerConfig, ArgsError> {
        let gateway = clientmq_core::Config {
            heartbeat_interval: secs("heartbeat-secs", self.heartbeat_secs)?,
            close_timeout: secs("close-timeout-secs", self.close_timeout_secs)?,
            request_timeout: secs("request-timeout-secs", self.request_timeout_secs)?,
            server_request_timeout: secs("request-timeout-secs", self.request_timeout_secs)?,
            max_connections: positive("max-connections", self.max_connections)?,
            max_pending_requests: positive("max-pending-requests", self.max_pending_requests)?,
            max_message_size: positive("max-frame-bytes", self.max_frame_bytes)?,
            max_outbound_message_size: positive("max-outbound-bytes", self.max_outbound_bytes)?,
            max_requests_per_sec: self.max_requests_per_sec,
            request_burst: u32::try_from(positive("request-burst", self.request_burst as usize)?)
                .unwrap_or(u32::MAX),
            drain_window: Duration::try_from_secs_f64(self.drain_window_secs)
                .map_err(|_| ArgsError::Seconds("drain-window-secs"))?,
            trusted_proxies: self.trusted_proxies.clone(),
            route_key: self.listen.to_string(),
            tokens: self.token_policy()?,
            ..clientmq_core::Config::default()
        };
        gateway.validate()?;
        if self.outbound_queue == 0 {
            return Err(ArgsError::Zero("outbound-queue"));
        }
        if self.outbound_queue_bytes == 0 {
            return Err(ArgsError::Zero("outbound-queue-bytes"));
        }
        let shards = match self.shards {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        Ok(ServerConfig {
            gateway,
            shards,
            handshake_timeout: secs("handshake-timeout-secs", self.handshake_timeout_secs)?,
            max_frame_bytes: self.max_frame_bytes,
            outbound_queue: self.outbound_queue,
            outbound_queue_bytes: self.outbound_queue_bytes,
            writes_per_turn: DEFAULT.writes_per_turn,
            allowed_origins: self.allowed_origins.clone(),
            admin_port: self.admin_listen.is_some(),
            drain_deadline: secs("drain-deadline-secs", self.drain_deadline_secs)?,
            max_connections_per_address: self.max_connections_per_address,
            max_handshakes: positive("max-handshakes", self.max_handshakes)?,
            tls: self.tls_acceptor()?,
            seed: self.seed,
            trace: None,
            check: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(flags: &[&str]) -> Result<ServerConfig, ArgsError> {
        let args = Args::try_parse_from(std::iter::once("clientmq-server").chain(flags.iter().copied()))
            .expect("flags parse");
        args.server_config()
    }

    #[test]
    fn the_outbound_queue_is_bounded_in_frames_and_bytes_and_neither_bound_may_be_zero() {
        let config = parse(&["--outbound-queue", "8", "--outbound-queue-bytes", "4096"]).expect("valid");
        assert_eq!((config.outbound_queue, config.outbound_queue_bytes), (8, 4096));
        let default = parse(&[]).expect("valid");
        assert_eq!(default.outbound_queue_bytes, 64 * 1024 * 1024);
        // Answers alone never fill it: every request in flight answered at the largest size.
        assert!(
            default.outbound_queue_bytes
                >= default.gateway.max_pending_requests * default.gateway.max_outbound_message_size
        );
        for flag in ["--outbound-queue", "--outbound-queue-bytes"] {
            let refused = parse(&[flag, "0"]).expect_err("0 refused");
            assert!(refused.to_string().contains(&flag[2..]), "{refused}");
        }
    }
}
