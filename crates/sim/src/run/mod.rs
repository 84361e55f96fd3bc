//! Runs one scenario: gateway hosts run `clientmq_server` unchanged on turmoil's sockets (with
//! the embedded backend, or in a fleet with chat workers on a simulated bus), client hosts run
//! scripted clients, and the runner applies faults between steps while the checker reads every
//! new trace record.

mod faults;
mod hosts;
mod world;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as WallInstant, UNIX_EPOCH};

use faults::{Crash, instant};
use world::World;

use crate::check::{Checker, FleetLimits, Limits, Sample, Violation};
use crate::scenario::{Scenario, SnapshotMode};
use crate::trace::{Record, Source, Trace};

pub use hosts::{BUS, PREFIX, SimListener, bus as bus_host, server_config};

/// The longest a message takes between two hosts (turmoil's default, set explicitly because the
/// fleet's bound below counts on it).
pub const MAX_LATENCY: Duration = Duration::from_millis(100);
/// What the store adds to a stored worker's deadlines (a session's end after its grace, a dead
/// gateway's sessions detached): its timer, then a read and two writes per room (each a round
/// trip to the store), with the bus latency at its bound.
pub const STORE_WITHIN: Duration = Duration::from_secs(5);

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

/// Runs `scenario` to its end and checks it.
pub fn run(scenario: &Scenario) -> Outcome {
    run_with(scenario, &RunOptions::default())
}

/// [`run`], with a bug planted in what the gateway reports.
pub fn run_with(scenario: &Scenario, options: &RunOptions) -> Outcome {
    let wall = WallInstant::now();
    let duration = scenario.duration();
    let tick = Duration::from_millis(scenario.tick_ms);
    let mut sim = turmoil::Builder::new()
        .max_message_latency(MAX_LATENCY)
        .simulation_duration(duration + Duration::from_secs(3600))
        .tick_duration(tick)
        .rng_seed(clientmq_core::seed::derive(scenario.seed, "net"))
        .epoch(UNIX_EPOCH)
        .tcp_capacity(scenario.tcp_capacity)
        .build();
    let world = World {
        scenario: scenario.clone(),
        trace: Trace::default(),
        broken: Broken::default(),
        options: options.clone(),
        mode: Arc::new(Mutex::new(scenario.backend)),
        servers: Arc::default(),
    };
    let trace = world.trace.clone();
    let broken = world.broken.clone();
    if let Some(fleet) = &scenario.fleet {
        let flight = fleet.store_flight_ms.map(Duration::from_millis);
        hosts::bus(&mut sim, Some(world.trace.clone()), flight);
        let grace = fleet.grace_secs.map_or(Duration::from_secs(30), Duration::from_secs_f64);
        for host in fleet.worker_hosts() {
            hosts::chat_worker(&mut sim, &world, &host, grace, fleet.store);
        }
    }
    for host in world.gateway_hosts() {
        hosts::gateway(&mut sim, &world, &host);
    }
    let crashes: BTreeMap<String, Arc<Crash>> = (0..scenario.clients.len())
        .map(|i| (scenario.clients[i].name.clone(), hosts::clients(&mut sim, &world, i)))
        .collect();
    hosts::control(&mut sim, &world);

    let mut faults: Vec<_> = scenario
        .timeline
        .iter()
        .filter_map(|s| Some((s.at_secs, faults::note(&s.action)?, s.action.clone())))
        .collect();
    faults.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut pending = faults.into_iter().peekable();
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
    if let Some(fleet) = &scenario.fleet {
        let grace = fleet.grace_secs.map_or(Duration::from_secs(30), Duration::from_secs_f64);
        let mut fleet_limits = FleetLimits::contract(MAX_LATENCY, grace, tick * 2);
        if fleet.store {
            fleet_limits.store_within = STORE_WITHIN;
        }
        checker = checker.with_fleet(fleet_limits, fleet.worker_hosts());
        if fleet.store {
            checker = checker.with_store();
        }
    }
    let mut violation = None;
    let mut seen = 0;
    let mut samples = Vec::new();
    let mut next_sample = Duration::ZERO;
    let mut unmet = Vec::new();
    let mut busy_restarts = 0;
    'run: while sim.elapsed() < duration {
        while let Some((_, note, action)) = pending.next_if(|f| instant(f.0) <= sim.elapsed()) {
            match faults::apply(&mut sim, &world, &crashes, &action, note) {
                Ok(acted) => busy_restarts += usize::from(acted),
                Err(e) => {
                    unmet.push(e);
                    break 'run;
                }
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
            .filter(|r| match &r.body {
                crate::trace::Body::Note(note) => note.contains(what.as_str()),
                crate::trace::Body::Worker(event) => event.to_string().contains(what.as_str()),
                crate::trace::Body::Seen { seen, .. } => seen.to_string().contains(what.as_str()),
                crate::trace::Body::Gateway { .. } | crate::trace::Body::Published { .. } => false,
            })
            .count() as u64;
        if got < *n {
            unmet.push(format!("observed {what:?}: expected at least {n}, got {got}"));
        }
    }
    unmet
}
