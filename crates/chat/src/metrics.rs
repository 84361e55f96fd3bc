//! What `clientmq-chat` tells an operator on its `--listen` port: `/healthz`, `/readyz` (on the
//! bus) and `/metrics` (Prometheus text). The worker updates the counters as it goes and the
//! gauges once a second (they cost a pass over the state).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ChatStats;

type Labels = Vec<(&'static str, String)>;

/// The worker's metrics, all prefixed `clientmq_chat_`.
#[derive(Debug)]
pub struct WorkerMetrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    sessions: Gauge,
    detached: Gauge,
    rooms: Gauge,
    members: Gauge,
    gateways: Gauge,
    bus_connected: Gauge,
    bus_reconnects: Counter,
    connect_failures: Family<Labels, Counter>,
    reloads: Family<Labels, Counter>,
    connected: AtomicBool,
    /// Subscribed to the requests it serves: set up (the store checked), and not draining.
    serving: AtomicBool,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerMetrics {
    pub fn new() -> Self {
        let mut m = WorkerMetrics {
            registry: Registry::with_prefix("clientmq_chat"),
            requests: Family::default(),
            sessions: Gauge::default(),
            detached: Gauge::default(),
            rooms: Gauge::default(),
            members: Gauge::default(),
            gateways: Gauge::default(),
            bus_connected: Gauge::default(),
            bus_reconnects: Counter::default(),
            connect_failures: Family::default(),
            reloads: Family::default(),
            connected: AtomicBool::new(false),
            serving: AtomicBool::new(false),
        };
        let r = &mut m.registry;
        r.register(
            "requests",
            "Requests, by type and outcome (ok; error: answered an mq.Error; refused: too many queued on its connection; expired: left unserved, its gateway no longer waiting)",
            m.requests.clone(),
        );
        r.register("sessions", "Sessions, attached or in their grace period", m.sessions.clone());
        r.register(
            "sessions_detached",
            "Sessions in their grace period, without a connection",
            m.detached.clone(),
        );
        r.register("rooms", "Chat rooms", m.rooms.clone());
        r.register("members", "Memberships over all rooms", m.members.clone());
        r.register(
            "gateways",
            "Gateways this worker tracks (heard from, and not forgotten)",
            m.gateways.clone(),
        );
        r.register("bus_connected", "1 while the worker is connected to the bus", m.bus_connected.clone());
        r.register("bus_reconnects", "Times the worker came back to the bus", m.bus_reconnects.clone());
        r.register(
            "bus_connect_failures",
            "Connection attempts to the bus that failed, by reason (refused: the credentials; other)",
            m.connect_failures.clone(),
        );
        r.register(
            "reloads",
            "Reloads of the NATS credentials on SIGHUP, by outcome (ok, failed: the old stay)",
            m.reloads.clone(),
        );
        m
    }

    /// Connection attempts that failed since the last call: `refused` for the credentials.
    pub fn connect_failed(&self, refused: u64, other: u64) {
        for (reason, n) in [("refused", refused), ("other", other)] {
            if n > 0 {
                self.connect_failures.get_or_create(&vec![("reason", reason.to_owned())]).inc_by(n);
            }
        }
    }

    /// A SIGHUP reload of the NATS credentials (`ok`, or failed and the old ones stay).
    pub fn reloaded(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&vec![("what", "nats".to_owned()), ("outcome", outcome.to_owned())]).inc();
    }

    /// A request of `ty` was answered; `error` when the answer was an `mq.Error`.
    pub fn request(&self, ty: &str, error: bool) {
        let outcome = if error { "error" } else { "ok" };
        self.requests.get_or_create(&vec![("type", ty.to_owned()), ("outcome", outcome.to_owned())]).inc();
    }

    /// A request of `ty` not served: `expired` (its gateway no longer waits) or refused
    /// (answered `unavailable`: too many queued on its connection).
    pub fn unserved(&self, ty: &str, expired: bool) {
        let outcome = if expired { "expired" } else { "refused" };
        self.requests.get_or_create(&vec![("type", ty.to_owned()), ("outcome", outcome.to_owned())]).inc();
    }

    /// The state's sizes and the gateways tracked, once a second.
    pub fn sizes(&self, stats: &ChatStats, gateways: usize) {
        self.sessions.set(stats.sessions as i64);
        self.detached.set(stats.detached as i64);
        self.rooms.set(stats.rooms as i64);
        self.members.set(stats.members as i64);
        self.gateways.set(gateways as i64);
    }

    /// The worker's bus connection came (`connected`) or went; `back` when it came back after
    /// an absence.
    pub fn bus(&self, connected: bool, back: bool) {
        self.connected.store(connected, Ordering::Relaxed);
        self.bus_connected.set(i64::from(connected));
        if back {
            self.bus_reconnects.inc();
        }
    }

    /// The worker takes requests (`true` once subscribed to them), or no longer does
    /// (draining): `/readyz` says so.
    pub fn serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Answers `/healthz`, `/readyz` and `/metrics` on `listener` until the process ends: one
    /// request per connection, each bounded in time and size.
    pub async fn serve(self: std::sync::Arc<Self>, listener: tokio::net::TcpListener) {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let metrics = self.clone();
            tokio::spawn(async move {
                let Ok(Some(path)) =
                    tokio::time::timeout(Duration::from_secs(5), request_path(&mut stream)).await
                else {
                    return;
                };
                let connected = metrics.connected.load(Ordering::Relaxed);
                let serving = metrics.serving.load(Ordering::Relaxed);
                let unready = "503 Service Unavailable";
                let (status, body) = match path.as_str() {
                    "/healthz" => ("200 OK", "ok\n".to_owned()),
                    "/readyz" if !connected => (unready, "not connected to the bus\n".to_owned()),
                    "/readyz" if !serving => {
                        (unready, "not taking requests (setting up, or draining)\n".to_owned())
                    }
                    "/readyz" => ("200 OK", "ready\n".to_owned()),
                    "/metrics" => ("200 OK", metrics.render()),
                    _ => ("404 Not Found", "not found\n".to_owned()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
            });
        }
    }
}

/// The path of a `GET` request (its query dropped), once its head has arrived; `None` for
/// anything else or a head over 8 KiB.
async fn request_path(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 || head.len() + n > 8 * 1024 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = std::str::from_utf8(&head).ok()?.lines().next()?;
    let mut parts = line.split(' ');
    let (method, target) = (parts.next()?, parts.next()?);
    (method == "GET").then(|| target.split('?').next().unwrap_or_default().to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// One request to the metrics' listener: the status line's code (0: none) and the body.
    async fn get(port: u16, head: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        // Refused midway (a head too long), the connection may be reset: no answer.
        let _ = stream.write_all(head.as_bytes()).await;
        let mut out = String::new();
        let _ = stream.read_to_string(&mut out).await;
        let code = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (code, body)
    }

    fn path(p: &str) -> String {
        format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n")
    }

    /// The value of series `line` (name and labels, as rendered), 0 when absent.
    fn value(rendered: &str, series: &str) -> f64 {
        let prefix = format!("{series} ");
        rendered.lines().find_map(|l| l.strip_prefix(prefix.as_str())).map_or(0.0, |v| v.parse().unwrap())
    }

    #[tokio::test]
    async fn readiness_follows_the_bus_and_the_serving_and_the_counters_show() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let m = Arc::new(WorkerMetrics::new());
        tokio::spawn(m.clone().serve(listener));

        assert_eq!(get(port, &path("/healthz")).await, (200, "ok\n".to_owned()));
        assert_eq!(get(port, &path("/readyz")).await, (503, "not connected to the bus\n".to_owned()));
        m.bus(true, false);
        let not_serving = "not taking requests (setting up, or draining)\n".to_owned();
        assert_eq!(get(port, &path("/readyz")).await, (503, not_serving.clone()));
        m.serving(true);
        assert_eq!(get(port, &path("/readyz?x=1")).await, (200, "ready\n".to_owned()));
        m.serving(false);
        assert_eq!(get(port, &path("/readyz")).await.0, 503);
        m.serving(true);
        m.bus(false, false);
        assert_eq!(get(port, &path("/readyz")).await.0, 503);
        m.bus(true, true);
        assert_eq!(get(port, &path("/nope")).await.0, 404);
        // Not a GET, or a head past 8 KiB: no answer at all.
        assert_eq!(get(port, "POST /readyz HTTP/1.1\r\n\r\n").await.0, 0);
        let huge = format!("GET /readyz HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9 * 1024));
        assert_eq!(get(port, &huge).await.0, 0);
        // A head of 8 KiB exactly is read.
        let head = |len: usize| {
            let pad = len - "GET /healthz HTTP/1.1\r\nX: \r\n\r\n".len();
            format!("GET /healthz HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(pad))
        };
        assert_eq!(head(8 * 1024).len(), 8 * 1024);
        assert_eq!(get(port, &head(8 * 1024)).await.0, 200);
        assert_eq!(get(port, &head(8 * 1024 + 1)).await.0, 0);
        assert_eq!(get(port, &head(2 * 1024)).await.0, 200);

        m.request("chat.JoinRoom", false);
        m.request("chat.JoinRoom", true);
        m.unserved("chat.JoinRoom", true);
        m.unserved("chat.JoinRoom", false);
        m.connect_failed(0, 0);
        assert!(!m.render().contains("connect_failures_total{"), "no series for no failure");
        m.connect_failed(2, 0);
        m.connect_failed(0, 3);
        m.reloaded(true);
        m.reloaded(false);
        let stats = ChatStats { sessions: 5, detached: 2, connections: 3, rooms: 4, members: 6, messages: 0 };
        m.sizes(&stats, 7);
        let (code, body) = get(port, &path("/metrics")).await;
        assert_eq!(code, 200);
        for (series, want) in [
            (r#"clientmq_chat_requests_total{type="chat.JoinRoom",outcome="ok"}"#, 1.0),
            (r#"clientmq_chat_requests_total{type="chat.JoinRoom",outcome="error"}"#, 1.0),
            (r#"clientmq_chat_requests_total{type="chat.JoinRoom",outcome="expired"}"#, 1.0),
            (r#"clientmq_chat_requests_total{type="chat.JoinRoom",outcome="refused"}"#, 1.0),
            (r#"clientmq_chat_bus_connect_failures_total{reason="refused"}"#, 2.0),
            (r#"clientmq_chat_bus_connect_failures_total{reason="other"}"#, 3.0),
            (r#"clientmq_chat_reloads_total{what="nats",outcome="ok"}"#, 1.0),
            (r#"clientmq_chat_reloads_total{what="nats",outcome="failed"}"#, 1.0),
            ("clientmq_chat_sessions", 5.0),
            ("clientmq_chat_sessions_detached", 2.0),
            ("clientmq_chat_rooms", 4.0),
            ("clientmq_chat_members", 6.0),
            ("clientmq_chat_gateways", 7.0),
            ("clientmq_chat_bus_connected", 1.0),
            ("clientmq_chat_bus_reconnects_total", 1.0),
        ] {
            assert_eq!(value(&body, series), want, "{series} in\n{body}");
        }
    }
}
