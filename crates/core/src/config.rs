//! Gateway configuration and the close codes of the MQ protocol.

use std::net::IpAddr;
use std::time::Duration;

/// A WebSocket close code with the reason text the gateway sends with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

impl CloseReason {
    pub const fn new(code: u16, reason: &'static str) -> Self {
        CloseReason { code, reason }
    }
}

/// Close codes the gateway sends (docs/PROTOCOL.md, "Server close codes") and the standard ones it reports.
pub mod close {
    use super::CloseReason;

    /// Open connections would exceed the limit.
    pub const CONCURRENCY_LIMIT: CloseReason = CloseReason::new(1013, "concurrency-limit-exceeded");
    /// The server is draining.
    pub const DRAIN: CloseReason = CloseReason::new(3333, "drain");
    /// A ping got no pong before the next heartbeat.
    pub const TIMEOUT: CloseReason = CloseReason::new(3334, "timeout");
    /// A send failed, or the transport could not keep up.
    pub const UNEXPECTED: CloseReason = CloseReason::new(3335, "unexpected-close");
    /// A frame over the size limit.
    pub const TOO_BIG: CloseReason = CloseReason::new(1009, "message-too-big");
    /// The backend ended the connection's session while it could not reach this gateway; the
    /// client reconnects and resumes it.
    pub const SESSION_LOST: CloseReason = CloseReason::new(3336, "session-lost");
    /// A connection kept sending past its request rate after being told (policy violation).
    pub const RATE_LIMIT: CloseReason = CloseReason::new(1008, "rate-limit-exceeded");
    /// Its client address already holds as many connections as allowed.
    pub const ADDRESS_LIMIT: CloseReason = CloseReason::new(1008, "address-limit-exceeded");
    /// Reported for a client close frame that carried no code.
    pub const NO_STATUS: u16 = 1005;
    /// Reported for a transport that ended without a close handshake.
    pub const ABNORMAL: u16 = 1006;
}

/// Gateway settings. [`Config::default`] holds the seed's values (and refuses every token).
#[derive(Debug, Clone)]
pub struct Config {
    /// Open connections allowed at once; one more is closed with 1013.
    pub max_connections: usize,
    /// Ping period; a ping still unanswered at the next heartbeat closes with 3334.
    pub heartbeat_interval: Duration,
    /// How long a server-initiated close may wait for the client's close frame before abort.
    pub close_timeout: Duration,
    /// Deadline of a client request at the backend; then the client gets `mq.Error{timeout}`.
    pub request_timeout: Duration,
    /// Deadline of a server-initiated request at the client.
    pub server_request_timeout: Duration,
    /// Client requests in flight per connection; more are answered `mq.Error{too-many-requests}`.
    pub max_pending_requests: usize,
    /// Server-initiated requests in flight per connection.
    pub max_pending_server_requests: usize,
    /// Room plus conversation subscriptions per connection.
    pub max_subscriptions: usize,
    /// Largest encoded frame the codec accepts, in bytes.
    pub max_message_size: usize,
    /// Largest frame the gateway sends, in bytes: a larger answer becomes `mq.Error{too-large}`,
    /// a larger event is dropped (and counted).
    pub max_outbound_message_size: usize,
    /// Frames a connection may send per second, sustained (a token bucket refilled at this rate;
    /// 0: no limit). Over it a request is answered `mq.Error{rate-limited}`, anything else dropped.
    pub max_requests_per_sec: u32,
    /// Frames a connection may send at once above its rate (the bucket's size). Refused frames in
    /// a row beyond this close the connection with 1008 `rate-limit-exceeded`.
    pub request_burst: u32,
    /// Drain closes are spread evenly over this window.
    pub drain_window: Duration,
    /// Peers whose X-Forwarded-For header is believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// Written into `pcast.Authenticate.connectionRouteKey` so the backend can route back here.
    pub route_key: String,
    /// Ended connection ids remembered, so a late event about one is traced as late, not unknown.
    pub ended_memory: usize,
    /// Who may authenticate; checked here before the backend sees a `pcast.Authenticate`.
    pub tokens: crate::auth::TokenPolicy,
    /// Milliseconds since the Unix epoch at the gateway's start (its `now` at
    /// [`crate::Gateway::new`]): token expiry is judged by it plus elapsed time, so a simulated
    /// run judges by simulated time.
    pub wall_clock_start_ms: u64,
    /// Trace every delivery of a room's event (`EventKind::Delivered`, one per subscriber). A
    /// driver with nothing reading the trace turns it off: for a room of thousands, those events
    /// cost more than anything else the core does per delivery.
    pub trace_deliveries: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_connections: 2000,
            heartbeat_interval: Duration::from_secs(20),
            close_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            server_request_timeout: Duration::from_secs(15),
            max_pending_requests: 64,
            max_pending_server_requests: 16,
            max_subscriptions: 256,
            max_message_size: 256 * 1024,
            max_outbound_message_size: 1024 * 1024,
            max_requests_per_sec: 50,
            request_burst: 100,
            drain_window: Duration::from_secs(10),
            trusted_proxies: Vec::new(),
            route_key: "clientmq".to_owned(),
            ended_memory: 4096,
            tokens: crate::auth::TokenPolicy::DenyAll,
            wall_clock_start_ms: 0,
            trace_deliveries: true,
        }
    }
}

/// A setting that makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
}

impl Config {
    /// Checks that every limit and timeout is positive.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let counts = [
            ("max_connections", self.max_connections),
            ("max_pending_requests", self.max_pending_requests),
            ("max_pending_server_requests", self.max_pending_server_requests),
            ("max_message_size", self.max_message_size),
            ("max_outbound_message_size", self.max_outbound_message_size),
            ("request_burst", self.request_burst as usize),
        ];
        let durations = [
            ("heartbeat_interval", self.heartbeat_interval),
            ("close_timeout", self.close_timeout),
            ("request_timeout", self.request_timeout),
            ("server_request_timeout", self.server_request_timeout),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Zero(name));
        }
        if let Some((name, _)) = durations.iter().find(|(_, v)| v.is_zero()) {
            return Err(ConfigError::Zero(name));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_zero_limit_or_timeout_is_refused_by_name() {
        assert_eq!(Config::default().validate(), Ok(()));
        type Zero = fn(&mut Config);
        let zeroed: [(&str, Zero); 10] = [
            ("max_connections", |c| c.max_connections = 0),
            ("max_pending_requests", |c| c.max_pending_requests = 0),
            ("max_pending_server_requests", |c| c.max_pending_server_requests = 0),
            ("max_message_size", |c| c.max_message_size = 0),
            ("max_outbound_message_size", |c| c.max_outbound_message_size = 0),
            ("request_burst", |c| c.request_burst = 0),
            ("heartbeat_interval", |c| c.heartbeat_interval = Duration::ZERO),
            ("close_timeout", |c| c.close_timeout = Duration::ZERO),
            ("request_timeout", |c| c.request_timeout = Duration::ZERO),
            ("server_request_timeout", |c| c.server_request_timeout = Duration::ZERO),
        ];
        for (name, zero) in zeroed {
            let mut c = Config::default();
            zero(&mut c);
            assert_eq!(c.validate(), Err(ConfigError::Zero(name)));
        }
    }
}
