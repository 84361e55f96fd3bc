//! Prometheus metrics. Gauges of live state are read from the shards' registries at scrape
//! time; counters are fed from the gateway's trace events, each of which happens exactly once.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use clientmq_core::{EventKind, RequestOutcome};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Request types with their own label value; anything else is `other`, so a client cannot
/// grow the label set.
const KNOWN_TYPES: &[&str] = &[
    "pcast.Authenticate",
    "pcast.Bye",
    "chat.CreateRoom",
    "chat.GetRoomInfo",
    "chat.JoinRoom",
    "chat.LeaveRoom",
    "chat.UpdateMember",
    "chat.UpdateRoom",
    "chat.DestroyRoom",
    "chat.SendMessageToRoom",
    "chat.FetchRoomConversation",
];

/// Live state of one shard, written by the shard after every step.
#[derive(Debug, Default)]
pub struct ShardGauges {
    pub open: AtomicUsize,
    pub closing: AtomicUsize,
    pub pending: AtomicUsize,
    pub subscriptions: AtomicUsize,
    /// Global admission permits held by its connections (several shards only).
    pub permits: AtomicUsize,
}

pub struct Metrics {
    registry: Registry,
    open: Gauge,
    closing: Gauge,
    pending: Gauge,
    subscriptions: Gauge,
    total: Counter,
    rejected: Family<Labels, Counter>,
    disconnects: Family<Labels, Counter>,
    requests: Family<Labels, Counter>,
    /// `requests` series by (type, outcome) index, made on first use: answers are the hot path,
    /// and building and hashing a label set for each one showed up in profiles.
    request_series: Vec<OnceLock<Counter>>,
    duration: Histogram,
    rtt: Histogram,
    dropped: Family<Labels, Counter>,
    token_refusals: Family<Labels, Counter>,
    requests_refused: Family<Labels, Counter>,
    backend_refusals: Family<Labels, Counter>,
    handshakes_refused: Counter,
    tls_refused: Counter,
    handshakes_timed_out: Counter,
    http_responses: Family<Labels, Counter>,
    reloads: Family<Labels, Counter>,
    pub(crate) bus: BusMetrics,
}

/// What the bus backend reports (all zero with the embedded backend).
#[derive(Default)]
pub(crate) struct BusMetrics {
    connected: Gauge,
    reconnects: Counter,
    answers: Family<Labels, Counter>,
    publish_failures: Counter,
    announcements: Counter,
    connect_failures: Family<Labels, Counter>,
    dropped: Family<Labels, Counter>,
    resubscribes: Family<Labels, Counter>,
}

impl BusMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "bus_connected",
            "1 while the gateway is connected to the bus",
            self.connected.clone(),
        );
        registry.register(
            "bus_reconnects",
            "Times the gateway came back to the bus",
            self.reconnects.clone(),
        );
        registry.register(
            "bus_answers",
            "Requests the bus backend answered itself, by reason (no-worker, unavailable)",
            self.answers.clone(),
        );
        registry.register(
            "bus_publish_failures",
            "Messages the bus did not take",
            self.publish_failures.clone(),
        );
        registry.register("bus_announcements", "Announcements published", self.announcements.clone());
        registry.register(
            "bus_connect_failures",
            "Connection attempts to the bus that failed, by reason (refused: the credentials; other)",
            self.connect_failures.clone(),
        );
        registry.register(
            "bus_dropped",
            "Messages from workers not applied, by reason (docs/bad-inputs.md, the bus rows)",
            self.dropped.clone(),
        );
        registry.register(
            "bus_resubscribes",
            "Resubscribe lists sent after coming back to the bus, by outcome (told: a worker told \
             the connections again; restored: nobody would, they got back what they had)",
            self.resubscribes.clone(),
        );
    }

    /// A resubscribe list ended with `outcome` (`told` or `restored`).
    pub fn resubscribed(&self, outcome: &str) {
        self.resubscribes.get_or_create(&vec![("outcome", outcome.to_owned())]).inc();
    }

    /// A worker's message was not applied, for `reason`.
    pub fn dropped(&self, reason: &str) {
        self.dropped.get_or_create(&vec![("reason", reason.to_owned())]).inc();
    }

    /// Connection attempts that failed since the last call: `refused` for the credentials.
    pub fn connect_failed(&self, refused: u64, other: u64) {
        for (reason, n) in [("refused", refused), ("other", other)] {
            if n > 0 {
                self.connect_failures.get_or_create(&vec![("reason", reason.to_owned())]).inc_by(n);
            }
        }
    }

    pub fn connected(&self, connected: bool) {
        self.connected.set(i64::from(connected));
    }

    pub fn reconnected(&self) {
        self.reconnects.inc();
    }

    /// The backend answered a request itself with `mq.Error{reason}`.
    pub fn answered(&self, reason: &str) {
        self.answers.get_or_create(&vec![("reason", reason.to_owned())]).inc();
    }

    pub fn publish_failed(&self) {
        self.publish_failures.inc();
    }

    pub fn announced(&self) {
        self.announcements.inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("clientmq");
        let m = Metrics {
            open: Gauge::default(),
            closing: Gauge::default(),
            pending: Gauge::default(),
            subscriptions: Gauge::default(),
            total: Counter::default(),
            rejected: Family::default(),
            disconnects: Family::default(),
            requests: Family::default(),
            request_series: (0..(KNOWN_TYPES.len() + 1) * RequestOutcome::ALL.len())
                .map(|_| OnceLock::new())
                .collect(),
            duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            rtt: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            dropped: Family::default(),
            token_refusals: Family::default(),
            requests_refused: Family::default(),
            backend_refusals: Family::default(),
            handshakes_refused: Counter::default(),
            tls_refused: Counter::default(),
            handshakes_timed_out: Counter::default(),
            http_responses: Family::default(),
            reloads: Family::default(),
            bus: BusMetrics::default(),
            registry: Registry::default(),
        };
        registry.register("connections_open", "Open connections (the registries' size)", m.open.clone());
        registry.register("connections_closing", "Connections waiting for a close frame", m.closing.clone());
        registry.register("connections", "Connections ever registered", m.total.clone());
        registry.register("connections_rejected", "Connections refused, by close code", m.rejected.clone());
        registry.register("disconnects", "Ended connections, by path and close code", m.disconnects.clone());
        registry.register("requests", "Client requests, by type and outcome", m.requests.clone());
        registry.register("requests_pending", "Client requests waiting on the backend", m.pending.clone());
        registry.register("request_duration_seconds", "Time from request to answer", m.duration.clone());
        registry.register("rtt_seconds", "Heartbeat round trip time", m.rtt.clone());
        registry.register("frames_dropped", "Incoming frames dropped, by reason", m.dropped.clone());
        registry.register("subscriptions", "Room and conversation subscriptions", m.subscriptions.clone());
        m.bus.register(&mut registry);
        registry.register(
            "reloads",
            "Reloads of secrets on SIGHUP, by what (tokens, tls, nats) and outcome (ok, failed: the old stay)",
            m.reloads.clone(),
        );
        registry.register(
            "requests_refused",
            "Requests the gateway answered itself with mq.Error, by reason",
            m.requests_refused.clone(),
        );
        registry.register(
            "backend_refusals",
            "Requests the backend answered with mq.Error, by reason (outcome=\"error\" in requests)",
            m.backend_refusals.clone(),
        );
        registry.register(
            "handshakes_refused",
            "Sockets dropped at accept: too many handshakes in flight",
            m.handshakes_refused.clone(),
        );
        registry.register(
            "tls_handshakes_failed",
            "Sockets dropped because their TLS handshake failed or did not finish in time",
            m.tls_refused.clone(),
        );
        registry.register(
            "handshakes_timed_out",
            "Sockets dropped because their HTTP upgrade did not finish within the handshake timeout",
            m.handshakes_timed_out.clone(),
        );
        registry.register(
            "http_responses",
            "Plain HTTP answers and refused upgrades, by status",
            m.http_responses.clone(),
        );
        registry.register(
            "token_refusals",
            "Authentications and joins refused by the token policy, by reason",
            m.token_refusals.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Updates counters from one trace event.
    pub fn observe(&self, kind: &EventKind) {
        match kind {
            EventKind::Opened { .. } => {
                self.total.inc();
            }
            EventKind::Rejected { code, .. } => {
                self.rejected.get_or_create(&vec![("code", code.to_string())]).inc();
            }
            EventKind::Disconnected { path, code, .. } => {
                let labels = vec![("path", path.label().to_owned()), ("code", code.to_string())];
                self.disconnects.get_or_create(&labels).inc();
            }
            EventKind::Answered { request_type, outcome, elapsed, .. } => {
                let ty = KNOWN_TYPES.iter().position(|t| *t == request_type).unwrap_or(KNOWN_TYPES.len());
                let oc =
                    RequestOutcome::ALL.iter().position(|o| o == outcome).expect("ALL lists every outcome");
                let series = self.request_series[ty * RequestOutcome::ALL.len() + oc].get_or_init(|| {
                    let ty = KNOWN_TYPES.get(ty).copied().unwrap_or("other");
                    let labels = vec![("type", ty.to_owned()), ("outcome", outcome.label().to_owned())];
                    self.requests.get_or_create(&labels).clone()
                });
                series.inc();
                if *outcome != RequestOutcome::Refused {
                    self.duration.observe(elapsed.as_secs_f64());
                }
            }
            EventKind::Pong { rtt } => self.rtt.observe(rtt.as_secs_f64()),
            EventKind::Dropped { reason } => {
                self.dropped.get_or_create(&vec![("reason", reason.label().to_owned())]).inc();
            }
            EventKind::BackendRefused { reason } => {
                self.backend_refusals.get_or_create(&vec![("reason", (*reason).to_owned())]).inc();
            }
            EventKind::RequestRefused { reason } => {
                self.requests_refused.get_or_create(&vec![("reason", (*reason).to_owned())]).inc();
            }
            EventKind::TokenRefused { reason } => {
                self.token_refusals.get_or_create(&vec![("reason", (*reason).to_owned())]).inc();
            }
            _ => {}
        }
    }

    pub fn handshake_refused(&self) {
        self.handshakes_refused.inc();
    }

    /// A reload of `what` (`tokens`, `tls`) took effect (`ok`) or was refused.
    pub fn reloaded(&self, what: &str, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&vec![("what", what.to_owned()), ("outcome", outcome.to_owned())]).inc();
    }

    pub fn tls_refused(&self) {
        self.tls_refused.inc();
    }

    pub fn handshake_timed_out(&self) {
        self.handshakes_timed_out.inc();
    }

    /// A plain HTTP answer or a refused upgrade went out with `status` (`"404 Not Found"`).
    pub fn http_response(&self, status: &str) {
        let code = status.split(' ').next().unwrap_or(status).to_owned();
        self.http_responses.get_or_create(&vec![("status", code)]).inc();
    }

    /// Renders the text exposition format, with gauges summed over `shards`.
    pub fn render(&self, shards: &[ShardGauges]) -> String {
        let sum = |f: fn(&ShardGauges) -> &AtomicUsize| {
            shards.iter().map(|s| f(s).load(Ordering::Relaxed) as i64).sum::<i64>()
        };
        self.open.set(sum(|s| &s.open));
        self.closing.set(sum(|s| &s.closing));
        self.pending.set(sum(|s| &s.pending));
        self.subscriptions.set(sum(|s| &s.subscriptions));
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
