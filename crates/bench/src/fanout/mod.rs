//! Fan-out mode: members split over rooms (and over the gateways of one system), one publisher
//! sending chat messages to the rooms in turn, every member checking it hears each message of its
//! room once and in order.
//!
//! Without a rate the publisher goes at full speed, limited end to end: it sends only while fewer
//! than `window` messages' worth of deliveries are still on their way, so the figure is what the
//! server sustains, not how deep its queues are. With a rate, message `k` is due at
//! `start + k / rate` and its latency is timed from then, however late the publisher got to it
//! (coordinated-omission correction).
//!
//! Timeline: publishers, then members are set up (not measured); `warmup`; `duration`, in which
//! deliveries count for throughput and messages due count for latency; then the publisher stops
//! and members read until they have heard every message of their room, or a grace ends.

pub mod client;
pub mod slow;
pub mod suite;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::SinkExt;
use futures_util::stream::{SplitSink, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

pub use client::Protocol;

use crate::procfs;
use crate::stats::{self, Latency};
use crate::target::{self, Target, Ws};

/// How long members may take after the end to hear the messages still on their way, by default.
pub const HEAR_GRACE: Duration = Duration::from_secs(5);
/// Latency histograms members record into (fewer locks contended than one).
const HISTOGRAMS: usize = 16;
/// Latencies a member keeps before it takes a histogram's lock.
const LOCAL_BATCH: usize = 64;
/// At full speed, deliveries that may be on their way whatever the window: enough to keep many
/// small rooms busy at once.
const MIN_WINDOW_DELIVERIES: u64 = 4_000;

#[derive(Debug, Clone)]
pub struct FanoutOpts {
    pub members: usize,
    pub rooms: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Messages per second over all rooms; `None` for full speed.
    pub rate: Option<f64>,
    /// At full speed, messages whose deliveries may be on their way at once.
    pub window: usize,
    /// How long members may take after the end to hear what is still on its way.
    pub hear_grace: Duration,
    pub protocol: Protocol,
    pub sources: usize,
    /// The first loopback source address, 127.0.0.N.
    pub first_source: u8,
    pub connect_concurrency: usize,
    /// Processes whose memory and CPU time are read (the gateways).
    pub pids: Vec<u32>,
    /// nats-server's monitoring endpoint, whose messages out are counted over the window.
    pub nats_monitor: Option<Target>,
    /// Every `slow_every`-th member never reads (see [`slow`]); 0 for none.
    pub slow_every: usize,
    /// Bytes added to every chat message (larger frames).
    pub pad_bytes: usize,
}

impl Default for FanoutOpts {
    fn default() -> Self {
        FanoutOpts {
            members: 1000,
            rooms: 1,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(3),
            rate: None,
            window: 4,
            hear_grace: HEAR_GRACE,
            protocol: Protocol::Clientmq,
            sources: 4,
            first_source: 1,
            connect_concurrency: 64,
            pids: Vec::new(),
            nats_monitor: None,
            slow_every: 0,
            pad_bytes: 0,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct FanoutReport {
    /// Members that were set up and heard the run (slow ones apart).
    pub members: usize,
    pub rooms: usize,
    /// Members and publishers that could not be set up.
    pub setup_errors: u64,
    pub setup: Duration,
    /// Messages published over the whole run.
    pub published: u64,
    /// Deliveries in the measured window.
    pub delivered: u64,
    pub window: Duration,
    /// From a message's due time to each member's receipt, for messages due in the window.
    pub latency: Latency,
    /// Messages a member never heard, heard twice, or heard after a later one (or after a gap);
    /// failed members and sends.
    pub missing: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Size of a delivered frame.
    pub frame_bytes: usize,
    pub rate: Option<f64>,
    /// Resident memory of the watched processes (KiB, summed) before connecting and once set up.
    pub rss_before_kib: u64,
    pub rss_ready_kib: u64,
    /// CPU seconds (user + system) of the watched processes over the measured window, and of the
    /// load generator itself.
    pub cpu_secs: f64,
    pub load_cpu_secs: f64,
    /// Slow members, and what they found when they read again: how many were closed with
    /// 3335, and the frames they read in all.
    pub slow_members: usize,
    pub slow_closed_3335: usize,
    pub slow_frames: u64,
    /// Resident memory of the watched processes (KiB, summed) at the end of the window, and the
    /// most it reached in the window (sampled every 100 ms).
    pub rss_end_kib: u64,
    pub rss_peak_kib: u64,
    /// Connections the gateways closed with 3335 (slow consumers) in the window, from their
    /// `/metrics` (clientmq only).
    pub closed_3335: Option<u64>,
    /// Messages published in the measured window, and nats-server's messages out meanwhile.
    pub published_in_window: u64,
    pub bus_out: Option<f64>,
}

impl FanoutReport {
    pub fn deliveries_per_sec(&self) -> f64 {
        self.delivered as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// CPU microseconds of the watched processes per delivery.
    pub fn cpu_us_per_delivery(&self) -> Option<f64> {
        (self.delivered > 0 && self.cpu_secs > 0.0).then(|| self.cpu_secs * 1e6 / self.delivered as f64)
    }

    /// Memory the watched processes took per member, in KiB.
    pub fn kib_per_member(&self) -> Option<f64> {
        (self.members > 0 && self.rss_ready_kib > 0)
            .then(|| self.rss_ready_kib.saturating_sub(self.rss_before_kib) as f64 / self.members as f64)
    }

    /// nats-server's messages out per message published in the window, on the bus.
    pub fn bus_out_per_publish(&self) -> Option<f64> {
        self.bus_out.filter(|_| self.published_in_window > 0).map(|out| out / self.published_in_window as f64)
    }

    /// Whether every member heard every message once, in order, and nothing failed.
    pub fn clean(&self) -> bool {
        self.missing + self.duplicated + self.reordered + self.errors + self.setup_errors == 0
    }

    /// One line for logs.
    pub fn summary(&self) -> String {
        let rate = self.rate.map(|r| format!(" offered={r:.0}msg/s")).unwrap_or_default();
        let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
        format!(
            "members={} rooms={} deliveries/s={:.0}{rate} published={} p50_ms={} p99_ms={} p999_ms={} \
             max_ms={} missing={} duplicated={} reordered={} errors={} setup_errors={} setup_s={:.1} \
             frame_bytes={} cpu_us/delivery={} load_cpu_us/delivery={} kib/member={} bus_out/publish={}{}{}",
            self.members,
            self.rooms,
            self.deliveries_per_sec(),
            self.published,
            stats::ms(self.latency.p50),
            stats::ms(self.latency.p99),
            stats::ms(self.latency.p999),
            stats::ms(self.latency.max),
            self.missing,
            self.duplicated,
            self.reordered,
            self.errors,
            self.setup_errors,
            self.setup.as_secs_f64(),
            self.frame_bytes,
            opt(self.cpu_us_per_delivery()),
            opt((self.delivered > 0).then(|| self.load_cpu_secs * 1e6 / self.delivered as f64)),
            opt(self.kib_per_member()),
            opt(self.bus_out_per_publish()),
            if self.slow_members > 0 {
                format!(
                    " slow={} closed_3335={} slow_read_3335={} slow_frames={} rss_growth_kib={} rss_peak_growth_kib={}",
                    self.slow_members,
                    self.closed_3335.map_or("-".to_owned(), |n| n.to_string()),
                    self.slow_closed_3335,
                    self.slow_frames,
                    self.rss_end_kib as i64 - self.rss_ready_kib as i64,
                    self.rss_peak_kib as i64 - self.rss_ready_kib as i64
                )
            } else {
                String::new()
            },
            self.first_error.as_ref().map(|e| format!(" first_error=\"{e}\"")).unwrap_or_default(),
        )
    }
}

/// What members and the publisher share.
struct Shared {
    base: Instant,
    measure_from: Instant,
    end: Instant,
    /// Deliveries so far, and the count at which the publisher wants to be woken.
    delivered: AtomicU64,
    delivered_in_window: AtomicU64,
    wake_at: AtomicU64,
    progress: Notify,
    histograms: Vec<Mutex<Histogram<u64>>>,
    frame_bytes: AtomicU64,
    published_in_window: AtomicU64,
}

impl Shared {
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// What one member found.
#[derive(Default)]
struct Heard {
    missing: u64,
    duplicated: u64,
    reordered: u64,
    error: Option<String>,
}

/// Runs fan-out mode with the members spread evenly over `targets`; publishers use the first.
pub async fn run(targets: &[Target], opts: &FanoutOpts) -> FanoutReport {
    let rooms = opts.rooms.clamp(1, opts.members.max(1));
    let rss = || procfs::total_rss_kib(&opts.pids);
    let mut report =
        FanoutReport { rooms, rate: opts.rate, rss_before_kib: rss(), ..FanoutReport::default() };
    let setup_started = Instant::now();
    let note = |report: &mut FanoutReport, e: String| {
        report.setup_errors += 1;
        report.first_error.get_or_insert(e);
    };

    // Publishers first: on clientmq they create the rooms the members join.
    let mut publishers = Vec::new();
    for r in 0..rooms {
        let setup = async {
            let mut ws =
                target::connect(&targets[0], target::source_addr(r, opts.sources, opts.first_source)).await?;
            let room_id = client::publisher(&mut ws, opts.protocol, r).await?;
            Ok::<_, String>((ws, room_id))
        };
        match setup.await {
            Ok(p) => publishers.push(p),
            Err(e) => note(&mut report, format!("publisher {r}: {e}")),
        }
    }
    if publishers.len() < rooms {
        return report;
    }
    let members: Vec<Result<(Ws, usize, bool), String>> = futures_util::stream::iter(0..opts.members)
        .map(|n| {
            let target = &targets[n % targets.len()];
            let room = n % rooms;
            let slow = opts.slow_every > 0 && n % opts.slow_every == opts.slow_every - 1;
            async move {
                let source = target::source_addr(rooms + n, opts.sources, opts.first_source);
                let mut ws =
                    target::connect_with(target, source, slow.then_some(slow::RECEIVE_BUFFER)).await?;
                client::member(&mut ws, opts.protocol, room, n)
                    .await
                    .map_err(|e| format!("member {n}: {e}"))?;
                Ok((ws, room, slow))
            }
        })
        .buffer_unordered(opts.connect_concurrency.max(1))
        .collect()
        .await;
    let mut per_room = vec![0u64; rooms];
    let mut ready = Vec::with_capacity(members.len());
    let mut stalled = Vec::new();
    for m in members {
        match m {
            Ok((ws, _, true)) => stalled.push(ws),
            Ok((ws, room, false)) => {
                per_room[room] += 1;
                ready.push((ws, room));
            }
            Err(e) => note(&mut report, e),
        }
    }
    report.slow_members = stalled.len();
    report.setup = setup_started.elapsed();
    report.members = ready.len();
    report.rss_ready_kib = rss();

    let base = Instant::now() + Duration::from_millis(50);
    let measure_from = base + opts.warmup;
    let shared = Arc::new(Shared {
        base,
        measure_from,
        end: measure_from + opts.duration,
        delivered: AtomicU64::new(0),
        delivered_in_window: AtomicU64::new(0),
        wake_at: AtomicU64::new(u64::MAX),
        progress: Notify::new(),
        histograms: (0..HISTOGRAMS).map(|_| Mutex::new(stats::histogram())).collect(),
        frame_bytes: AtomicU64::new(0),
        published_in_window: AtomicU64::new(0),
    });
    // The number of messages published to each room, once the publisher is done.
    let (sent_tx, sent_rx) = watch::channel(None::<Vec<u64>>);
    let listeners: Vec<_> = ready
        .into_iter()
        .enumerate()
        .map(|(i, (ws, room))| {
            let deadline = shared.end + opts.hear_grace;
            tokio::spawn(listen(ws, room, i % HISTOGRAMS, shared.clone(), sent_rx.clone(), deadline))
        })
        .collect();

    let stalled: Vec<_> = stalled.into_iter().map(|ws| tokio::spawn(slow::hold(ws, shared.end))).collect();
    // CPU time over the measured window: the watched processes', and this load generator's own.
    let cpu_probe = {
        let shared = shared.clone();
        let (pids, monitor) = (opts.pids.clone(), opts.nats_monitor.clone());
        let gateways = (opts.protocol == Protocol::Clientmq).then(|| targets.to_vec());
        tokio::spawn(async move {
            let own = [std::process::id()];
            tokio::time::sleep_until(shared.measure_from).await;
            let (watched, load) = (procfs::total_cpu_secs(&pids), procfs::total_cpu_secs(&own));
            let out = nats_out_msgs(monitor.as_ref()).await;
            let closed = closed_3335(gateways.as_deref()).await;
            let mut rss_peak = procfs::total_rss_kib(&pids);
            while Instant::now() < shared.end {
                let next = (Instant::now() + Duration::from_millis(100)).min(shared.end);
                tokio::time::sleep_until(next).await;
                rss_peak = rss_peak.max(procfs::total_rss_kib(&pids));
            }
            let cpu = (procfs::total_cpu_secs(&pids) - watched, procfs::total_cpu_secs(&own) - load);
            let rss_end = procfs::total_rss_kib(&pids);
            let out_after = nats_out_msgs(monitor.as_ref()).await;
            let closed_after = closed_3335(gateways.as_deref()).await;
            let closed = closed.zip(closed_after).map(|(b, a)| a.saturating_sub(b));
            (cpu, out.zip(out_after).map(|(b, a)| a - b), (rss_end, rss_peak.max(rss_end)), closed)
        })
    };
    let (sent, publish_errors, publish_error) = publish(publishers, &per_room, opts, &shared).await;
    (
        (report.cpu_secs, report.load_cpu_secs),
        report.bus_out,
        (report.rss_end_kib, report.rss_peak_kib),
        report.closed_3335,
    ) = cpu_probe.await.unwrap_or_default();

    report.published_in_window = shared.published_in_window.load(Ordering::Relaxed);
    report.published = sent.iter().sum();
    report.errors += publish_errors;
    if let Some(e) = publish_error {
        report.first_error.get_or_insert(e);
    }
    let _ = sent_tx.send(Some(sent));
    for task in stalled {
        let found = task.await.unwrap_or_default();
        report.slow_frames += found.frames;
        report.slow_closed_3335 += usize::from(found.close == Some(3335));
    }
    for task in listeners {
        let heard = task
            .await
            .unwrap_or_else(|_| Heard { error: Some("member task panicked".into()), ..Heard::default() });
        report.missing += heard.missing;
        report.duplicated += heard.duplicated;
        report.reordered += heard.reordered;
        if let Some(e) = heard.error {
            report.errors += 1;
            report.first_error.get_or_insert(e);
        }
    }
    let mut all = stats::histogram();
    for h in &shared.histograms {
        all.add(&*h.lock().expect("histogram")).expect("same bounds");
    }
    report.latency = Latency::of(&all);
    report.delivered = shared.delivered_in_window.load(Ordering::Relaxed);
    report.window = opts.duration;
    report.frame_bytes = shared.frame_bytes.load(Ordering::Relaxed) as usize;
    report
}

type Sink = SplitSink<Ws, Message>;

/// nats-server's count of messages it sent (`out_msgs` of `/varz`), when there is one to ask.
async fn nats_out_msgs(monitor: Option<&Target>) -> Option<f64> {
    let page = monitor?.http_get("/varz").await.ok()?;
    let at = page.find("\"out_msgs\":")? + "\"out_msgs\":".len();
    page[at..].split([',', '}']).next()?.trim().parse().ok()
}

/// Connections the gateways have closed with 3335 so far (`/metrics`), summed; `None` when
/// there are none to ask or one does not answer.
async fn closed_3335(gateways: Option<&[Target]>) -> Option<u64> {
    let mut sum = 0.0;
    for gw in gateways? {
        let page = gw.http_get("/metrics").await.ok()?;
        sum +=
            procfs::metric(&page, r#"clientmq_disconnects_total{path="forced",code="3335"}"#).unwrap_or(0.0);
    }
    Some(sum as u64)
}

/// Publishes until the end; the messages sent to each room, and the errors seen.
async fn publish(
    publishers: Vec<(Ws, String)>,
    per_room: &[u64],
    opts: &FanoutOpts,
    shared: &Arc<Shared>,
) -> (Vec<u64>, u64, Option<String>) {
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let mut sinks: Vec<(Sink, String)> = Vec::new();
    let mut readers = Vec::new();
    for (ws, room_id) in publishers {
        let (sink, mut stream) = ws.split();
        sinks.push((sink, room_id));
        // Reads the answers (clientmq) and keeps the socket's pongs flowing.
        let (errors, first_error, protocol) = (errors.clone(), first_error.clone(), opts.protocol);
        readers.push(tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                if let (Message::Text(text), Protocol::Clientmq) = (&msg, protocol)
                    && let Some(Err(e)) = client::send_answered_ok(text.as_str())
                {
                    errors.fetch_add(1, Ordering::Relaxed);
                    first_error.lock().expect("errors").get_or_insert(e);
                }
            }
        }));
    }
    let rooms = sinks.len();
    let mut sent = vec![0u64; rooms];
    let mut owed = 0u64; // deliveries the members have to hear of what was sent
    let most = per_room.iter().copied().max().unwrap_or(1);
    let window_deliveries = (opts.window.max(1) as u64 * most).max(MIN_WINDOW_DELIVERIES);
    let wall_ms = || {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    };
    for k in 0u64.. {
        let room = (k % rooms as u64) as usize;
        let due = match opts.rate.filter(|r| *r > 0.0) {
            Some(rate) => {
                let due = shared.base + Duration::from_secs_f64(k as f64 / rate);
                tokio::time::sleep_until(due).await;
                due
            }
            None => {
                // Full speed: wait until the members are close enough behind.
                while owed.saturating_sub(shared.delivered.load(Ordering::Acquire)) > window_deliveries
                    && Instant::now() < shared.end
                {
                    shared.wake_at.store(owed - window_deliveries, Ordering::Release);
                    let woken = shared.progress.notified();
                    if owed.saturating_sub(shared.delivered.load(Ordering::Acquire)) <= window_deliveries {
                        break;
                    }
                    let _ = tokio::time::timeout(Duration::from_millis(20), woken).await;
                }
                Instant::now()
            }
        };
        if due >= shared.end {
            break;
        }
        let text = client::padded_text(room, sent[room], shared.nanos(due), opts.pad_bytes);
        let (sink, room_id) = &mut sinks[room];
        let frame = client::publish_frame(opts.protocol, room_id, &format!("C{}", k + 10), text, wall_ms());
        if let Err(e) = sink.send(Message::Text(frame.into())).await {
            errors.fetch_add(1, Ordering::Relaxed);
            first_error.lock().expect("errors").get_or_insert(format!("publish: {e}"));
            break;
        }
        sent[room] += 1;
        owed += per_room[room];
        if due >= shared.measure_from {
            shared.published_in_window.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Answers to the last sends, then the publishers close.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (mut sink, _) in sinks {
        let _ = sink.close().await;
    }
    for r in readers {
        r.abort();
    }
    let first = first_error.lock().expect("errors").take();
    (sent, errors.load(Ordering::Relaxed), first)
}

/// One member: hears its room until it has heard everything published there, or the grace ends.
async fn listen(
    mut ws: Ws,
    room: usize,
    histogram: usize,
    shared: Arc<Shared>,
    mut sent: watch::Receiver<Option<Vec<u64>>>,
    deadline: Instant,
) -> Heard {
    let mut heard = Heard::default();
    // Which of the room's messages were heard (a bit each), how many, and the highest.
    let mut seen: Vec<u64> = Vec::new();
    let (mut distinct, mut highest) = (0u64, None::<u64>);
    let mut batch: Vec<Duration> = Vec::with_capacity(LOCAL_BATCH);
    let mut expected = None;
    // One timer for the whole run, not one a frame.
    let grace_over = tokio::time::sleep_until(deadline);
    tokio::pin!(grace_over);
    loop {
        if expected.is_some_and(|n| distinct >= n) {
            break;
        }
        let frame = tokio::select! {
            frame = client::next_text(&mut ws) => frame,
            _ = sent.changed(), if expected.is_none() => {
                expected = sent.borrow().as_ref().map(|s| s[room]);
                continue;
            }
            _ = &mut grace_over => break,
        };
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                heard.error = Some(e);
                break;
            }
        };
        let now = Instant::now();
        let Some((r, seq, nanos)) = client::heard(&frame).as_deref().and_then(client::parse_text) else {
            continue; // another event (a presenter joining, say)
        };
        if r != room {
            heard.error.get_or_insert(format!("a member of room {room} heard room {r}"));
            continue;
        }
        shared.frame_bytes.store(frame.len() as u64, Ordering::Relaxed);
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if seen.len() <= word {
            seen.resize(word + 1, 0);
        }
        if seen[word] & bit != 0 {
            heard.duplicated += 1;
            continue;
        }
        seen[word] |= bit;
        distinct += 1;
        if seq != highest.map_or(0, |h| h + 1) {
            heard.reordered += 1;
        }
        highest = highest.max(Some(seq));
        let total = shared.delivered.fetch_add(1, Ordering::AcqRel) + 1;
        if total >= shared.wake_at.load(Ordering::Acquire) {
            shared.progress.notify_one();
        }
        if now >= shared.measure_from && now < shared.end {
            shared.delivered_in_window.fetch_add(1, Ordering::Relaxed);
        }
        let due = shared.base + Duration::from_nanos(nanos);
        if due >= shared.measure_from && due < shared.end {
            batch.push(now.saturating_duration_since(due));
            if batch.len() == LOCAL_BATCH {
                flush(&shared, histogram, &mut batch);
            }
        }
    }
    flush(&shared, histogram, &mut batch);
    if let Some(n) = expected {
        heard.missing += n.saturating_sub(distinct);
    } else {
        heard.error.get_or_insert("the run ended before the publisher did".into());
    }
    crate::request::close(ws).await;
    heard
}

fn flush(shared: &Shared, histogram: usize, batch: &mut Vec<Duration>) {
    if batch.is_empty() {
        return;
    }
    let mut h = shared.histograms[histogram].lock().expect("histogram");
    for latency in batch.drain(..) {
        stats::record(&mut h, latency);
    }
}

#[cfg(test)]
mod tests;
