//! Request mode: N connections, each sending one request at a time and waiting for its answer.
//!
//! Without a rate this is a closed loop at full speed (throughput). With a rate, each connection
//! sends on a fixed schedule of `connections / rate` seconds, its slots spread over the interval
//! across connections. A request whose slot came while the previous answer was still outstanding
//! is timed from its slot, not from when it could be sent (coordinated-omission correction, as
//! wrk2 does); one sent on time is timed from its send, so the coarse timer of the load generator
//! itself does not count as server latency.
//!
//! Timeline: every connection opens (and, for chat work, sets up its session and room: see
//! [`Work`]) first; then `warmup` (nothing recorded), then `duration` (answers received in it
//! count for throughput, requests started and answered in it for latency); then each
//! connection sends a close and is dropped, all within bounded time.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::frame;
use crate::stats::{self, Latency};
use crate::target::{self, Target, Ws};

pub(crate) mod work;
#[cfg(test)]
mod work_tests;

pub use work::Work;
use work::{Load, Verdict};

/// An answer not there this long after the end of the run counts as an error.
const ANSWER_GRACE: Duration = Duration::from_secs(2);
/// Time allowed to each connection's close at the end.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Time allowed to each connection's chat setup (session, room) before the run.
const SETUP_WITHIN: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct RequestOpts {
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Requests per second over all connections; `None` for a closed loop at full speed.
    pub rate: Option<f64>,
    /// Loopback source addresses to spread the client sockets over.
    pub sources: usize,
    /// Connections being opened at once.
    pub connect_concurrency: usize,
    /// What each request is.
    pub work: Work,
}

impl Default for RequestOpts {
    fn default() -> Self {
        RequestOpts {
            connections: 100,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(3),
            rate: None,
            sources: 1,
            connect_concurrency: 128,
            work: Work::Ping,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RequestReport {
    /// Connections that opened (and were set up).
    pub connections: usize,
    pub connect_errors: u64,
    /// Answers received in the measured window (an `mq.Error` is not an answer here).
    pub completed: u64,
    /// Wrong or missing answers, `mq.Error`s, chat statuses other than `ok`, closed or failed
    /// connections, failed setups, over the whole run.
    pub errors: u64,
    /// The `mq.Error` answers (by reason: `rate-limited`, ...) and chat answers whose status is
    /// not `ok` (by status) among the errors.
    pub refused: BTreeMap<String, u64>,
    pub first_error: Option<String>,
    pub window: Duration,
    pub latency: Latency,
    /// Size of a request frame and of its answer, in bytes (the first ones seen).
    pub request_bytes: usize,
    pub answer_bytes: usize,
    /// Type of the first answer, with the reason of an `mq.Error`.
    pub answer: String,
    /// The offered rate, when rate-limited.
    pub rate: Option<f64>,
}

impl RequestReport {
    pub fn rps(&self) -> f64 {
        self.completed as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// One line for logs.
    pub fn summary(&self) -> String {
        let rate = self.rate.map(|r| format!(" offered={r:.0}/s")).unwrap_or_default();
        format!(
            "connections={} rps={:.0}{rate} p50_ms={} p99_ms={} p999_ms={} max_ms={} errors={}{} \
             connect_errors={} request_bytes={} answer_bytes={} answer={}{}",
            self.connections,
            self.rps(),
            stats::ms(self.latency.p50),
            stats::ms(self.latency.p99),
            stats::ms(self.latency.p999),
            stats::ms(self.latency.max),
            self.errors,
            refused(&self.refused),
            self.connect_errors,
            self.request_bytes,
            self.answer_bytes,
            self.answer,
            self.first_error.as_ref().map(|e| format!(" first_error=\"{e}\"")).unwrap_or_default(),
        )
    }
}

/// When a run measures, shared by its connections.
#[derive(Debug, Clone, Copy)]
struct Plan {
    start: Instant,
    measure_from: Instant,
    end: Instant,
    /// Per-connection interval between requests, when rate-limited.
    interval: Option<Duration>,
}

/// ` refused={reason:count,...}`, or nothing when there were none.
fn refused(by_reason: &BTreeMap<String, u64>) -> String {
    if by_reason.is_empty() {
        return String::new();
    }
    let list: Vec<String> = by_reason.iter().map(|(reason, n)| format!("{reason}:{n}")).collect();
    format!(" refused={{{}}}", list.join(","))
}

#[derive(Default)]
struct Outcome {
    completed: u64,
    errors: u64,
    refused: BTreeMap<String, u64>,
    first_error: Option<String>,
    hist: Option<Histogram<u64>>,
    request_bytes: usize,
    answer_bytes: usize,
    answer: Option<String>,
}

impl Outcome {
    fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }
}

/// Runs request mode against `target`.
pub async fn run(target: &Target, opts: &RequestOpts) -> RequestReport {
    run_spread(std::slice::from_ref(target), opts).await
}

/// Runs request mode with the connections spread evenly over `targets` (several gateways of one
/// system), measured as one run.
pub async fn run_spread(targets: &[Target], opts: &RequestOpts) -> RequestReport {
    run_prepared(prepare(targets, opts).await, opts).await
}

/// Connections opened and set up for a run, not loaded yet.
pub struct Prepared {
    conns: Vec<(Ws, Load)>,
    connect_errors: u64,
    setup_errors: u64,
    first_error: Option<String>,
}

/// Opens the connections of a run over `targets` and sets each up for `opts.work`: what
/// [`run_prepared`] then loads. Separate so that a caller can time the load alone.
pub async fn prepare(targets: &[Target], opts: &RequestOpts) -> Prepared {
    let (mut conns, mut connect_errors, mut first_error) = (Vec::new(), 0, None);
    for (i, target) in targets.iter().enumerate() {
        let share = opts.connections / targets.len() + usize::from(i < opts.connections % targets.len());
        let (open, errors, first) =
            target::open_many(target, share, opts.sources, 0, opts.connect_concurrency).await;
        conns.extend(open);
        connect_errors += errors;
        first_error = first_error.or(first);
    }
    let nonce = work::run_nonce();
    let set_up: Vec<Result<(Ws, Load), String>> = futures_util::stream::iter(conns.into_iter().enumerate())
        .map(|(i, mut ws)| {
            let alias = format!("{nonce}-{i}");
            async move {
                match tokio::time::timeout(SETUP_WITHIN, work::setup(&mut ws, opts.work, &alias)).await {
                    Ok(Ok(load)) => Ok((ws, load)),
                    Ok(Err(e)) => Err(format!("setup: {e}")),
                    Err(_) => Err(format!("setup: not done within {SETUP_WITHIN:?}")),
                }
            }
        })
        .buffer_unordered(opts.connect_concurrency.max(1))
        .collect()
        .await;
    let (mut ready, mut setup_errors) = (Vec::new(), 0);
    for r in set_up {
        match r {
            Ok(conn) => ready.push(conn),
            Err(e) => {
                setup_errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    Prepared { conns: ready, connect_errors, setup_errors, first_error }
}

/// Loads prepared connections: warm-up, measured window, close.
pub async fn run_prepared(prepared: Prepared, opts: &RequestOpts) -> RequestReport {
    let Prepared { conns, connect_errors, setup_errors, first_error } = prepared;
    let connections = conns.len();
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + opts.warmup;
    let plan = Plan {
        start,
        measure_from,
        end: measure_from + opts.duration,
        interval: opts.rate.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(conns.len() as f64 / r)),
    };
    let n = conns.len().max(1);
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, (ws, load))| {
            // Spread the connections' slots over one interval.
            let offset = plan.interval.map_or(Duration::ZERO, |iv| iv.mul_f64(i as f64 / n as f64));
            tokio::spawn(connection(ws, load, plan, offset))
        })
        .collect();
    let mut total = Outcome { errors: setup_errors, first_error, ..Outcome::default() };
    let mut hist = stats::histogram();
    for task in tasks {
        let Ok(o) = task.await else {
            total.error("connection task panicked".into());
            continue;
        };
        total.completed += o.completed;
        total.errors += o.errors;
        for (reason, n) in o.refused {
            *total.refused.entry(reason).or_default() += n;
        }
        if total.first_error.is_none() {
            total.first_error = o.first_error;
        }
        if let Some(h) = &o.hist {
            hist.add(h).expect("same histogram bounds");
        }
        if total.answer.is_none() {
            total.request_bytes = o.request_bytes;
            total.answer_bytes = o.answer_bytes;
            total.answer = o.answer;
        }
    }
    RequestReport {
        connections,
        connect_errors,
        completed: total.completed,
        errors: total.errors,
        refused: total.refused,
        first_error: total.first_error,
        window: opts.duration,
        latency: Latency::of(&hist),
        request_bytes: total.request_bytes,
        answer_bytes: total.answer_bytes,
        answer: total.answer.unwrap_or_else(|| "none".into()),
        rate: opts.rate,
    }
}

/// The next text or binary message, skipping control frames; `None` once the connection is over.
async fn next_data(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Binary(b))) => return Ok(String::from_utf8_lossy(&b).into_owned()),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Close(c))) => return Err(format!("closed by server: {c:?}")),
            Some(Err(e)) => return Err(format!("read: {e}")),
            None => return Err("connection ended".into()),
        }
    }
}

/// The next data frame that is not an event, when `skip_events`.
async fn next_answer(ws: &mut Ws, skip_events: bool) -> Result<String, String> {
    loop {
        let text = next_data(ws).await?;
        if !(skip_events && work::is_event(&text)) {
            return Ok(text);
        }
    }
}

async fn connection(mut ws: Ws, load: Load, plan: Plan, offset: Duration) -> Outcome {
    let mut out = Outcome { hist: Some(stats::histogram()), ..Outcome::default() };
    let mut answered_at = plan.start;
    for n in 0u64.. {
        let slot = plan.interval.map(|iv| plan.start + offset + iv.mul_f64(n as f64));
        if let Some(slot) = slot {
            if slot >= plan.end {
                break;
            }
            tokio::time::sleep_until(slot).await;
        }
        let sent_at = Instant::now();
        if sent_at >= plan.end {
            break;
        }
        // Late because the previous answer was: the server's delay, timed from the slot.
        let timed_from = match slot {
            Some(slot) if answered_at > slot => slot,
            _ => sent_at,
        };
        let id = frame::request_id(n);
        let text = load.frame(&id, n);
        let request_bytes = text.len();
        if let Err(e) = ws.send(Message::Text(text.into())).await {
            out.error(format!("send: {e}"));
            return out;
        }
        let next = next_answer(&mut ws, load.hears_events());
        let answer = match tokio::time::timeout_at(plan.end + ANSWER_GRACE, next).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                out.error(e);
                return out;
            }
            Err(_) => {
                out.error("no answer before the end of the run".into());
                return out;
            }
        };
        answered_at = Instant::now();
        let mut first_answer = |shown: &str| {
            if out.answer.is_none() {
                out.answer = Some(shown.to_owned());
                out.request_bytes = request_bytes;
                out.answer_bytes = answer.len();
            }
        };
        match load.check(&answer, &id, n) {
            Verdict::Served(shown) => {
                first_answer(&shown);
                if answered_at >= plan.measure_from && answered_at < plan.end {
                    out.completed += 1;
                    if timed_from >= plan.measure_from
                        && let Some(h) = out.hist.as_mut()
                    {
                        stats::record(h, answered_at - timed_from);
                    }
                }
            }
            // A refusal (rate-limited, a status other than ok, ...) is not service: an error, by
            // reason, out of the throughput and the latencies.
            Verdict::Refused { shown, reason } => {
                first_answer(&shown);
                out.error(shown);
                *out.refused.entry(reason).or_default() += 1;
            }
            Verdict::Wrong(e) => out.error(e),
        }
    }
    close(ws).await;
    out
}

/// Sends a close and waits (briefly) for the server to end the connection.
pub(crate) async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use clientmq_core::codec;
    use clientmq_core::proto::mq;
    use prost::Message as _;

    use super::*;

    /// A server that refuses every other request with `mq.Error{rate-limited}` and answers the
    /// rest.
    async fn half_refusing() -> Target {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(socket).await else { return };
                    let mut n = 0u64;
                    while let Some(Ok(Message::Text(text))) = ws.next().await {
                        let frame = codec::Frame::Text(text.as_str().to_owned());
                        let request = codec::decode(&frame, usize::MAX).unwrap();
                        n += 1;
                        let (ty, payload) = if n.is_multiple_of(2) {
                            ("mq.Error", mq::Error { reason: "rate-limited".into() }.encode_to_vec())
                        } else {
                            ("mq.PingPongResponse", request.payload)
                        };
                        let answer = mq::Message {
                            request_id: request.request_id,
                            r#type: ty.into(),
                            payload,
                            message_type: Some(mq::message::MessageType::Response as i32),
                            ..Default::default()
                        };
                        let codec::Frame::Text(out) = codec::encode(&answer, codec::Encoding::Base64Text)
                        else {
                            unreachable!()
                        };
                        if ws.send(Message::Text(out.into())).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Target::parse(&url).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refusals_are_errors_by_reason_and_not_throughput() {
        let opts = RequestOpts {
            connections: 2,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(400),
            ..RequestOpts::default()
        };
        let report = run(&half_refusing().await, &opts).await;
        let refused = report.refused.get("rate-limited").copied().unwrap_or(0);
        assert!(refused > 10, "{}", report.summary());
        assert_eq!(report.refused.len(), 1, "{:?}", report.refused);
        assert_eq!(report.errors, refused, "{}", report.summary());
        // Every other answer is a refusal: what is counted as served is about the other half of
        // all answers, and never includes a refusal.
        assert!(report.completed > 0 && report.completed <= refused + 2, "{}", report.summary());
        assert!(
            report.summary().contains(&format!("refused={{rate-limited:{refused}}}")),
            "{}",
            report.summary()
        );
        assert_eq!(report.first_error.as_deref(), Some("mq.Error{rate-limited}"));
    }
}
