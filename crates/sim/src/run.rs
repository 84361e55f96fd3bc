//! Runs one scenario: the gateway host runs `clientmq_server` unchanged on turmoil's sockets,
//! client hosts run scripted clients, and the runner applies faults between steps while the
//! checker reads every new trace record.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as WallInstant, UNIX_EPOCH};

use clientmq_server::chat::ChatConfig;
use clientmq_server::{EmbeddedBackend, InvariantSink, Listener, Server, ServerConfig, TraceSink};

use crate::backend::SimBackend;
use crate::check::{Checker, Limits, Sample, Violation};
use crate::client;
use crate::scenario::{Action, BackendMode, Scenario, SnapshotMode};
use crate::trace::{self, Proc, Record, Source, Trace};

/// turmoil's listener behind the server's [`Listener`] trait.
struct SimListener(turmoil::net::TcpListener);

impl Listener for SimListener {
    type Stream = turmoil::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)> {
        self.0.accept().await
    }
}

/// The end state of a run, as counted from the trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndState {
    pub open: usize,
    pub registered: u64,
    pub rejected: u64,
    pub max_open: usize,
    pub disconnects: BTreeMap<String, u64>,
    pub codes: BTreeMap<u16, u64>,
}

/// Everything a run produced.
pub struct Outcome {
    pub records: Vec<Record>,
    pub samples: Vec<Sample>,
    pub violation: Option<Violation>,
    /// Expectations of the scenario that the end state did not meet.
    pub unmet: Vec<String>,
    pub end: EndState,
    pub simulated: Duration,
    pub wall: Duration,
    /// Restarts whose dying process still recorded events in its last step: the instants
    /// where a restart is easiest to model wrong, which explore must hit often.
    pub busy_restarts: usize,
}

impl Outcome {
    /// The faults and actions of the timeline, when they happened: the simulator's own notes
    /// (not its per-connection reports of server requests).
    pub fn marks(&self) -> Vec<(Duration, String)> {
        self.records
            .iter()
            .filter_map(|r| match (&r.source, &r.body) {
                (Source::Sim, crate::trace::Body::Note(note))
                    if note
                        .split(' ')
                        .next()
                        .is_none_or(|w| w.parse::<clientmq_core::ConnectionId>().is_err()) =>
                {
                    Some((r.at, note.clone()))
                }
                _ => None,
            })
            .collect()
    }
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.violation.is_none() && self.unmet.is_empty()
    }

    /// The text that is snapshotted: the trace (or its timeline) and the end state.
    pub fn render(&self, mode: SnapshotMode) -> String {
        let mut out = String::new();
        match mode {
            SnapshotMode::Full => {
                for r in &self.records {
                    out.push_str(&r.to_string());
                    out.push('\n');
                }
            }
            SnapshotMode::Timeline => {
                out.push_str("      time   open closing pending\n");
                let mut next = Duration::ZERO;
                for s in &self.samples {
                    if s.at >= next {
                        out.push_str(&format!(
                            "{:>9}s {:>6} {:>7} {:>7}\n",
                            s.at.as_secs(),
                            s.open,
                            s.closing,
                            s.pending
                        ));
                        next = s.at + Duration::from_secs(10);
                    }
                }
            }
        }
        out.push_str(&format!("--- end after {}s simulated ---\n", self.simulated.as_secs()));
        let e = &self.end;
        out.push_str(&format!(
            "open={} registered={} rejected={} max_open={}\n",
            e.open, e.registered, e.rejected, e.max_open
        ));
        out.push_str(&format!("disconnects {:?}\ncodes {:?}\n", e.disconnects, e.codes));
        match &self.violation {
            Some(v) => out.push_str(&format!("VIOLATION {v}\n")),
            None => out.push_str("invariants held after every event\n"),
        }
        for u in &self.unmet {
            out.push_str(&format!("UNMET {u}\n"));
        }
        out
    }
}

/// What the gateways' checked mode found broken, first report only.
pub type Broken = Arc<Mutex<Option<String>>>;

/// Alters a gateway event before it is recorded: a bug planted in what the gateway reports,
/// for tests of the checker and of shrinking. Never set by scenarios.
pub type Plant = Arc<dyn Fn(&mut clientmq_core::EventKind) + Send + Sync>;

/// How to run a scenario beyond what its file says.
#[derive(Clone, Default)]
pub struct RunOptions {
    pub plant: Option<Plant>,
}

/// The configuration of gateway process `proc`: the scenario's settings, its trace going to
/// `trace` and its checked-mode reports to `broken`.
pub fn server_config(
    scenario: &Scenario,
    seed: u64,
    trace: &Trace,
    proc: &Proc,
    broken: &Broken,
    options: &RunOptions,
) -> ServerConfig {
    let s = &scenario.server;
    let secs = |v: Option<f64>, d: Duration| v.map_or(d, Duration::from_secs_f64);
    let shards = s.shards.unwrap_or(1).max(1);
    let mut c = ServerConfig { shards, seed: Some(seed), ..ServerConfig::default() };
    let g = &mut c.gateway;
    g.tokens = clientmq_core::TokenPolicy::AcceptAny;
    g.max_connections = s.max_connections.unwrap_or(g.max_connections);
    g.heartbeat_interval = secs(s.heartbeat_secs, g.heartbeat_interval);
    g.close_timeout = secs(s.close_timeout_secs, g.close_timeout);
    g.request_timeout = secs(s.request_timeout_secs, g.request_timeout);
    g.server_request_timeout = g.request_timeout;
    g.drain_window = secs(s.drain_window_secs, g.drain_window);
    g.max_pending_requests = s.max_pending_requests.unwrap_or(g.max_pending_requests);
    c.handshake_timeout = secs(s.handshake_timeout_secs, c.handshake_timeout);
    c.outbound_queue = s.outbound_queue.unwrap_or(c.outbound_queue);
    c.max_frame_bytes = s.max_frame_bytes.unwrap_or(c.max_frame_bytes);
    c.gateway.max_message_size = c.max_frame_bytes;
    // The run ends by the scenario's clock, not by a drain deadline.
    c.drain_deadline = Duration::from_secs(3600);
    let (sink, tag, plant) = (trace.clone(), proc.clone(), options.plant.clone());
    c.trace = Some(TraceSink(Arc::new(move |shard: usize, e: &clientmq_core::Event| {
        let shard = (shards > 1).then_some(shard as u16);
        let mut kind = e.kind.clone();
        if let Some(plant) = &plant {
            plant(&mut kind);
        }
        sink.push(Record::gateway(trace::now(), tag.clone(), shard, e.conn, kind))
    })));
    let (broken, tag) = (broken.clone(), proc.clone());
    c.check = Some(InvariantSink(Arc::new(move |what: String| {
        broken.lock().expect("broken cell").get_or_insert(format!("{tag}: {what}"));
    })));
    c
}

/// Runs `scenario` to its end and checks it.
pub fn run(scenario: &Scenario) -> Outcome {
    run_with(scenario, &RunOptions::default())
}

/// [`run`], with a bug planted in what the gateway reports.
pub fn run_with(scenario: &Scenario, options: &RunOptions) -> Outcome {
    let wall = WallInstant::now();
    let trace = Trace::default();
    let duration = scenario.duration();
    let tick = Duration::from_millis(scenario.tick_ms);
    let mut sim = turmoil::Builder::new()
        .simulation_duration(duration + Duration::from_secs(3600))
        .tick_duration(tick)
        .rng_seed(scenario.seed)
        .epoch(UNIX_EPOCH)
        .tcp_capacity(scenario.tcp_capacity)
        .build();

    let mode = Arc::new(Mutex::new(scenario.backend));
    let current: Arc<Mutex<Option<Server>>> = Arc::default();
    let incarnation = Arc::new(AtomicU64::new(0));
    let broken = Broken::default();
    {
        let (trace, current, scenario, mode, broken, options) =
            (trace.clone(), current.clone(), scenario.clone(), mode.clone(), broken.clone(), options.clone());
        sim.host("gateway", move || {
            // Each restart gets its own seed, so connection ids never repeat across restarts.
            let n = incarnation.fetch_add(1, Ordering::Relaxed);
            let seed = scenario.seed.wrapping_add(n * 7919);
            let proc = Proc::new("gateway", n as u32);
            let config = server_config(&scenario, seed, &trace, &proc, &broken, &options);
            // A restarted process starts with an empty backend too.
            let chat = ChatConfig::default();
            let backend = SimBackend::sharing(EmbeddedBackend::new(chat, Some(seed)), mode.clone());
            let current = current.clone();
            async move {
                let listener = SimListener(turmoil::net::TcpListener::bind("0.0.0.0:8080").await?);
                let server = Server::start(config, Arc::new(backend));
                *current.lock().expect("server cell") = Some(server.clone());
                server.run(listener).await;
                Ok(())
            }
        });
    }
    // A crash drops a group's sockets from inside, in client order: turmoil's own crash drops a
    // runtime's tasks in an order that depends on process-global task ids.
    let mut crashes = BTreeMap::new();
    for group in &scenario.clients {
        let (group, trace) = (group.clone(), trace.clone());
        let crashed = Arc::new(Crash::default());
        crashes.insert(group.name.clone(), crashed.clone());
        sim.host(group.name.clone(), move || {
            let (group, trace, crashed) = (group.clone(), trace.clone(), crashed.clone());
            async move {
                let start = tokio::time::Instant::now();
                let mut tasks = Vec::new();
                for i in 0..group.count {
                    let offset = group.start_secs + group.spread_secs * i as f64 / group.count.max(1) as f64;
                    let (group, trace, crashed) = (group.clone(), trace.clone(), crashed.clone());
                    tasks.push(tokio::spawn(async move {
                        let client = async {
                            tokio::time::sleep_until(start + Duration::from_secs_f64(offset)).await;
                            client::run(group, i, trace).await;
                        };
                        tokio::select! {
                            biased;
                            () = crashed.wait() => {}
                            () = client => {}
                        }
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
                Ok(())
            }
        });
    }
    let control: Vec<_> =
        scenario.timeline.iter().filter(|s| fault_note(&s.action).is_none()).cloned().collect();
    {
        let (trace, current) = (trace.clone(), current.clone());
        sim.client("control", async move {
            let start = tokio::time::Instant::now();
            let mut spawned = Vec::new();
            for step in control {
                tokio::time::sleep_until(start + instant(step.at_secs)).await;
                let server = current.lock().expect("server cell").clone();
                let Some(server) = server else { continue };
                spawned.extend(act(&step.action, &server, &mode, &trace).await);
            }
            // The host's tasks end with it: wait for the server requests still in flight.
            for task in spawned {
                let _ = task.await;
            }
            Ok(())
        });
    }

    let mut faults: Vec<_> = scenario
        .timeline
        .iter()
        .filter_map(|s| Some((s.at_secs, fault_note(&s.action)?, s.action.clone())))
        .collect();
    faults.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut faults = faults.into_iter().peekable();
    let limits = Limits {
        max_connections: scenario.server.max_connections.unwrap_or(2000),
        close_timeout: scenario
            .server
            .close_timeout_secs
            .map_or(Duration::from_secs(5), Duration::from_secs_f64),
        request_timeout: scenario
            .server
            .request_timeout_secs
            .map_or(Duration::from_secs(15), Duration::from_secs_f64),
        tolerance: tick * 2,
    };
    let mut checker = Checker::new(limits);
    let mut violation = None;
    let mut seen = 0;
    let mut samples = Vec::new();
    let mut next_sample = Duration::ZERO;
    let mut unmet = Vec::new();
    let mut busy_restarts = 0;
    'run: while sim.elapsed() < duration {
        while let Some((_, note, action)) = faults.next_if(|f| instant(f.0) <= sim.elapsed()) {
            if let Action::Bounce = action {
                // The old process's connections die in a fixed order during its last step;
                // what it does in that step is its own, and only then does the new one start.
                if let Some(server) = current.lock().expect("server cell").take() {
                    server.abort_connections();
                }
                let before = trace.len();
                if let Err(e) = sim.step() {
                    unmet.push(format!("simulation failed: {e}"));
                    break 'run;
                }
                let acted = trace.since(before).iter().any(|r| matches!(r.source, Source::Gateway { .. }));
                busy_restarts += usize::from(acted);
                trace.push(Record::sim(sim.elapsed(), note));
                sim.bounce("gateway");
                continue;
            }
            trace.push(Record::sim(sim.elapsed(), note));
            match &action {
                Action::Crash { group } => crashes[group].fire(),
                action => network_fault(&mut sim, action),
            }
        }
        if let Err(e) = sim.step() {
            unmet.push(format!("simulation failed: {e}"));
            break;
        }
        let new = trace.since(seen);
        seen += new.len();
        for r in &new {
            if let Err(v) = checker.observe(r) {
                violation = Some(v);
                break 'run;
            }
        }
        if let Some(what) = broken.lock().expect("broken cell").take() {
            violation = Some(Violation { at: sim.elapsed(), conn: None, message: what });
            break;
        }
        if let Err(v) = checker.check_time(sim.elapsed()) {
            violation = Some(v);
            break;
        }
        if sim.elapsed() >= next_sample {
            samples.push(checker.sample(sim.elapsed()));
            next_sample += Duration::from_secs(1);
        }
    }
    let end = EndState {
        open: checker.open(),
        registered: checker.registered(),
        rejected: checker.rejected(),
        max_open: checker.max_open(),
        disconnects: checker.disconnects().iter().map(|(p, n)| (p.label().to_owned(), *n)).collect(),
        codes: checker.codes().clone(),
    };
    let records = trace.records();
    unmet.extend(expectations(scenario, &end, &records));
    Outcome {
        records,
        samples,
        violation,
        unmet,
        end,
        simulated: sim.elapsed(),
        wall: wall.elapsed(),
        busy_restarts,
    }
}

/// A timeline instant: seconds rounded to the microsecond, so `6.03` is exactly the step that
/// starts at 6.03 s, whichever way its binary fraction rounds.
fn instant(secs: f64) -> Duration {
    Duration::from_micros((secs * 1e6).round() as u64)
}

/// A group's crash signal. Not a `tokio::sync::watch`: that spreads its waiters over several
/// queues by a per-process random choice, so wake-up order would differ between runs.
#[derive(Default)]
struct Crash {
    fired: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Crash {
    fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.fired.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// The trace line of a fault, which the runner applies between steps; `None` for an action
/// the control client carries out inside the simulation.
fn fault_note(action: &Action) -> Option<String> {
    Some(match action {
        Action::Partition { group } => format!("partition {group}"),
        Action::Repair { group } => format!("repair {group}"),
        Action::Hold { group } => format!("hold {group}"),
        Action::Release { group } => format!("release {group}"),
        Action::Latency { group, ms } => format!("latency {group} {ms}ms"),
        Action::Crash { group } => format!("crash {group}"),
        Action::Bounce => "gateway restarted".to_owned(),
        Action::Drain | Action::ServerRequest | Action::Deliver { .. } | Action::Backend(_) => return None,
    })
}

/// Applies a fault between a client group and the gateway.
fn network_fault(sim: &mut turmoil::Sim<'_>, action: &Action) {
    match action {
        Action::Partition { group } => sim.partition(group.as_str(), "gateway"),
        Action::Repair { group } => sim.repair(group.as_str(), "gateway"),
        Action::Hold { group } => sim.hold(group.as_str(), "gateway"),
        Action::Release { group } => sim.release(group.as_str(), "gateway"),
        Action::Latency { group, ms } => {
            sim.set_link_latency(group.as_str(), "gateway", Duration::from_millis(*ms))
        }
        _ => {}
    }
}

/// Carries out a control action; returns the tasks it left running.
async fn act(
    action: &Action,
    server: &Server,
    mode: &Arc<Mutex<BackendMode>>,
    trace: &Trace,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut spawned = Vec::new();
    match action {
        Action::Drain => {
            trace.push(Record::sim(trace::now(), "drain"));
            server.drain().await;
        }
        Action::Backend(m) => {
            trace.push(Record::sim(trace::now(), format!("backend {m:?}")));
            *mode.lock().expect("mode lock") = *m;
        }
        Action::ServerRequest => {
            let ids = server.handle().connection_ids();
            trace.push(Record::sim(trace::now(), format!("server-request to {} connections", ids.len())));
            for id in ids {
                let (handle, trace) = (server.handle().clone(), trace.clone());
                spawned.push(tokio::spawn(async move {
                    let result = handle.server_request(id, "pcast.SendRequestToClient", Vec::new()).await;
                    let what = match result {
                        Ok(reply) => format!("server-request answered type={}", reply.reply_type),
                        Err(e) => format!("server-request failed {}", e.label()),
                    };
                    trace.push(Record::sim(trace::now(), format!("{id} {what}")));
                }));
            }
        }
        Action::Deliver { count, bytes } => {
            let ids = server.handle().connection_ids();
            trace.push(Record::sim(
                trace::now(),
                format!("deliver {count}x{bytes}B to {} connections", ids.len()),
            ));
            for id in ids {
                for _ in 0..*count {
                    let target = clientmq_core::Target::Connection(id);
                    server.handle().deliver(target, "sim.Blob", vec![0u8; *bytes]).await;
                }
            }
        }
        _ => {}
    }
    spawned
}

fn expectations(scenario: &Scenario, end: &EndState, records: &[Record]) -> Vec<String> {
    let x = &scenario.expect;
    let mut unmet = Vec::new();
    if let Some(open) = x.open
        && open != end.open
    {
        unmet.push(format!("open: expected {open}, got {}", end.open));
    }
    if let Some(rejected) = x.rejected
        && rejected != end.rejected
    {
        unmet.push(format!("rejected: expected {rejected}, got {}", end.rejected));
    }
    for (path, n) in &x.disconnects {
        let got = end.disconnects.get(path).copied().unwrap_or(0);
        if got != *n {
            unmet.push(format!("disconnects {path}: expected {n}, got {got}"));
        }
    }
    for (code, n) in &x.codes {
        let got = end.codes.get(code).copied().unwrap_or(0);
        if got != *n {
            unmet.push(format!("code {code}: expected {n}, got {got}"));
        }
    }
    for (what, n) in &x.observed {
        let got = records
            .iter()
            .filter(|r| matches!(&r.body, crate::trace::Body::Note(note) if note.contains(what.as_str())))
            .count() as u64;
        if got < *n {
            unmet.push(format!("observed {what:?}: expected at least {n}, got {got}"));
        }
    }
    unmet
}
