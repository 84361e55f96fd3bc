//! Random fault schedules: each seed enables a random subset of behaviours and faults over a
//! scenario, runs it, and reports failures shrunk to their essence with the exact replay
//! command.
//!
//! Faults land where they are hardest to get right: besides uniformly random instants, a fault
//! is often put on an instant where the gateway is known to act (a client's arrival, a heartbeat
//! or close deadline of it, another fault), because a restart or a partition that shares its
//! instant with the gateway's own step is where modelling and code alike go wrong. Uniform
//! instants alone hit one of those about once in a thousand seeds.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::RunOptions;
use crate::scenario::{
    Action, BackendMode, Behaviour, ClientGroup, Expect, Fleet, Scenario, ServerSettings, SnapshotMode, Step,
};
use crate::shrink::{self, Size};

/// Simulated time per step of explored scenarios, in milliseconds.
const TICK_MS: u64 = 10;

/// The scenario explored with `seed`: a small gateway of 1 to 4 shards, a random mix of client
/// groups, and a random timeline of faults and actions. Expectations are only the invariants
/// (always checked).
pub fn scenario_for(seed: u64) -> Scenario {
    let mut rng = StdRng::seed_from_u64(clientmq_core::seed::derive(seed, "explore/schedule"));
    let mut clients = Vec::new();
    for behaviour in Behaviour::ALL {
        if rng.random_bool(0.5) {
            clients.push(ClientGroup {
                name: format!("{behaviour:?}").to_lowercase(),
                behaviour,
                count: rng.random_range(1..=6),
                start_secs: ticks(&mut rng, 0.0..10.0),
                spread_secs: rng.random_range(0.0..5.0_f64).round(),
                requests: rng.random_range(0..4),
                stay_secs: rng.random_range(1.0..40.0),
                mute_after_secs: rng.random_bool(0.2).then(|| rng.random_range(0.0..30.0_f64).round()),
                gateways: Vec::new(),
            });
        }
    }
    if clients.is_empty() {
        clients.push(ClientGroup {
            name: "polite".into(),
            behaviour: Behaviour::Polite,
            count: 3,
            start_secs: 0.0,
            spread_secs: 1.0,
            requests: 2,
            stay_secs: 10.0,
            mute_after_secs: None,
            gateways: Vec::new(),
        });
    }
    let server = ServerSettings {
        max_connections: Some(rng.random_range(5..30)),
        heartbeat_secs: Some(rng.random_range(2.0..20.0_f64).round()),
        close_timeout_secs: Some(rng.random_range(1.0..6.0_f64).round()),
        request_timeout_secs: Some(rng.random_range(2.0..15.0_f64).round()),
        drain_window_secs: Some(rng.random_range(0.0..10.0_f64).round()),
        handshake_timeout_secs: Some(5.0),
        outbound_queue: Some(rng.random_range(2..64)),
        shards: Some(rng.random_range(1..=4)),
        // Explored mixes are a few dozen clients at most: a turn of a few sockets makes their
        // frames go out over several turns, as a large room's do.
        writes_per_turn: Some(rng.random_range(1..=8)),
        tokens: vec!["sim-token".into()],
        // Explored runs drain at any time and run on; the process's exit is not modelled.
        drain_deadline_secs: Some(3600.0),
        ..ServerSettings::default()
    };
    let mut timeline: Vec<Step> = Vec::new();
    for _ in 0..rng.random_range(0..6) {
        let at_secs = fault_instant(&mut rng, &clients, &server, &timeline);
        let group = clients[rng.random_range(0..clients.len())].name.clone();
        let action = match rng.random_range(0..10) {
            9 => Action::Bounce,
            0 => Action::Partition { group },
            1 => Action::Repair { group },
            2 => Action::Hold { group },
            3 => Action::Release { group },
            4 => Action::Latency { group, ms: rng.random_range(1..500) },
            5 => Action::Drain,
            6 => Action::ServerRequest,
            7 => Action::Backend(match rng.random_range(0..3) {
                0 => BackendMode::Slow { delay_secs: rng.random_range(0.1..20.0_f64).round() },
                1 => BackendMode::Fail,
                _ => BackendMode::Hang,
            }),
            _ => Action::Crash { group },
        };
        timeline.push(Step { at_secs, action });
    }
    let mut scenario = Scenario {
        description: format!("explore seed {seed}"),
        seed,
        duration_secs: 90.0,
        tick_ms: TICK_MS,
        tcp_capacity: 64,
        snapshot: SnapshotMode::Full,
        server,
        backend: BackendMode::Normal,
        fleet: None,
        clients,
        timeline,
        expect: Expect::default(),
    };
    // A separate stream, so a seed's single-gateway scenario stays what it was without fleets.
    let mut fleet_rng = StdRng::seed_from_u64(clientmq_core::seed::derive(seed, "explore/fleet"));
    let mut lose_orphans = false;
    if fleet_rng.random_bool(0.35) {
        make_fleet(&mut scenario, &mut fleet_rng);
        lose_orphans = fleet_rng.random_bool(0.5);
        // Its own stream again: half the stores are a cluster's, with writes in flight.
        let mut flight_rng = StdRng::seed_from_u64(clientmq_core::seed::derive(seed, "explore/flight"));
        if let Some(fleet) = scenario.fleet.as_mut().filter(|f| f.store)
            && flight_rng.random_bool(0.5)
        {
            fleet.store_flight_ms = Some(flight_rng.random_range(1..=30));
        }
    }
    aim_restarts(&mut scenario, &mut rng);
    if lose_orphans {
        aim_orphans_loss(&mut scenario, &mut fleet_rng);
    }
    scenario
}

/// Cuts a gateway or the worker off the bus again just as the worker tells a returning gateway
/// its orphans (found by running the scenario once): the list or its answer is lost, and only
/// sending it again closes the orphans. Uniform instants almost never hit that moment.
fn aim_orphans_loss(scenario: &mut Scenario, rng: &mut StdRng) {
    let cuts_a_gateway = scenario
        .timeline
        .iter()
        .any(|s| matches!(&s.action, Action::PartitionBus { host } if host.starts_with("gw")));
    let Some(fleet) = scenario.fleet.clone() else { return };
    if !cuts_a_gateway {
        return;
    }
    let back = crate::run(scenario).records.into_iter().find_map(|r| match r.body {
        crate::trace::Body::Worker(clientmq_chat::worker::WorkerEvent::GatewayBack { gateway }) => {
            Some((r.at, gateway))
        }
        _ => None,
    });
    let Some((at, gateway)) = back else { return };
    let host = match rng.random_bool(0.5) {
        true => gateway.rsplit_once('.').map_or(gateway.clone(), |(host, _)| host.to_owned()),
        false => fleet.worker_hosts()[0].clone(),
    };
    let tick = TICK_MS as f64 / 1000.0;
    let at_secs = at.as_secs_f64() + tick * rng.random_range(0..3) as f64;
    let back_secs = (at_secs + rng.random_range(0.5..4.0_f64)).min(89.0);
    scenario.timeline.push(Step { at_secs, action: Action::PartitionBus { host: host.clone() } });
    scenario.timeline.push(Step { at_secs: back_secs, action: Action::RepairBus { host } });
}

/// Turns an explored scenario into a fleet: 2 or 3 gateways and a chat worker on the bus (or, half
/// the time, one to three workers on the bus's store),
/// each client group behind one or two gateways (reconnects go to the next), restarts of the
/// gateway become restarts of one of them, and faults of the fleet join the timeline: a gateway
/// or the worker killed, restarted or cut off from the bus (and often repaired), the bus restarted.
fn make_fleet(s: &mut Scenario, rng: &mut StdRng) {
    let store = rng.random_bool(0.5);
    let fleet = Fleet {
        gateways: rng.random_range(2..=3),
        workers: if store { rng.random_range(1..=3) } else { 1 },
        store,
        grace_secs: Some(rng.random_range(3.0..30.0_f64).round()),
        store_flight_ms: None,
    };
    let gateways = fleet.gateway_hosts();
    let pick = |rng: &mut StdRng| gateways[rng.random_range(0..gateways.len())].clone();
    for group in &mut s.clients {
        let first = pick(rng);
        group.gateways = vec![first.clone()];
        let second = pick(rng);
        if second != first && rng.random_bool(0.5) {
            group.gateways.push(second);
        }
    }
    for step in &mut s.timeline {
        if step.action == Action::Bounce {
            step.action = Action::Restart { host: pick(rng) };
        }
    }
    let hosts: Vec<String> = gateways.iter().cloned().chain(fleet.worker_hosts()).collect();
    for _ in 0..rng.random_range(1..=3) {
        let at_secs = ticks(rng, 2.0..60.0);
        let host = hosts[rng.random_range(0..hosts.len())].clone();
        let action = match rng.random_range(0..6) {
            0 => Action::Kill { host },
            1 => Action::Restart { host },
            2 => Action::RestartBus,
            _ => {
                if rng.random_bool(0.7) {
                    let back = (at_secs + rng.random_range(1.0..20.0_f64)).min(85.0);
                    s.timeline.push(Step { at_secs: back, action: Action::RepairBus { host: host.clone() } });
                }
                Action::PartitionBus { host }
            }
        };
        s.timeline.push(Step { at_secs, action });
    }
    s.fleet = Some(fleet);
}

/// Whether a step ends a process (and on which host): what restarts are aimed at.
fn ending(action: &Action) -> Option<&str> {
    match action {
        Action::Bounce => Some("gateway"),
        Action::Restart { host } | Action::Kill { host } => Some(host),
        _ => None,
    }
}

/// Moves most restarts and kills onto an instant where the dying process acts, found by
/// running the scenario once without them: up to the first one both runs are the same, so the
/// dying process is caught in the middle of its own step. Guessing such instants from client
/// start times and timers alone hit one restart in fourteen.
fn aim_restarts(scenario: &mut Scenario, rng: &mut StdRng) {
    aim(scenario, |_| rng.random_bool(0.75));
}

/// Moves every restart and kill of `scenario` onto the next instant where the dying process
/// acts (how the kept regression scenarios were aimed).
pub fn aim_every_restart(scenario: &mut Scenario) {
    aim(scenario, |_| true);
}

/// Moves the restarts and kills `choose` picks onto the next instant where the dying process
/// acts. `choose` is asked once per restart (with `Some(host)`).
fn aim(scenario: &mut Scenario, mut choose: impl FnMut(Option<&str>) -> bool) {
    if !scenario.timeline.iter().any(|s| ending(&s.action).is_some()) {
        return;
    }
    let mut dry = scenario.clone();
    dry.timeline.retain(|s| ending(&s.action).is_none());
    let mut acted: std::collections::BTreeMap<String, std::collections::BTreeSet<u64>> = Default::default();
    for r in crate::run(&dry).records {
        if let crate::trace::Source::Gateway { proc, .. } | crate::trace::Source::Worker(proc) = &r.source {
            acted.entry(proc.host.to_string()).or_default().insert(r.at.as_millis() as u64);
        }
    }
    for step in &mut scenario.timeline {
        let Some(host) = ending(&step.action) else { continue };
        let from = (step.at_secs * 1000.0).round() as u64;
        if choose(Some(host))
            && let Some(at) = acted.get(host).and_then(|times| times.range(from..).next())
        {
            step.at_secs = *at as f64 / 1000.0;
        }
    }
}

/// A uniformly random instant in `range` seconds, on the step grid.
fn ticks(rng: &mut StdRng, range: std::ops::Range<f64>) -> f64 {
    let tick = TICK_MS as f64 / 1000.0;
    (rng.random_range(range) / tick).round() * tick
}

/// When a fault happens: a quarter of the time anywhere, otherwise on or just after an instant
/// where the gateway acts: a client's arrival, a heartbeat or close deadline counted from it, or
/// another fault.
fn fault_instant(
    rng: &mut StdRng,
    clients: &[ClientGroup],
    server: &ServerSettings,
    earlier: &[Step],
) -> f64 {
    let tick = TICK_MS as f64 / 1000.0;
    let group = &clients[rng.random_range(0..clients.len())];
    let i = rng.random_range(0..group.count);
    let arrival = group.start_secs + group.spread_secs * i as f64 / group.count as f64;
    let heartbeat = server.heartbeat_secs.unwrap_or(20.0);
    let close = server.close_timeout_secs.unwrap_or(5.0);
    let base = match rng.random_range(0..8) {
        0..2 => return ticks(rng, 1.0..60.0),
        2 => arrival,
        3..5 => arrival + heartbeat * rng.random_range(1..4) as f64,
        5 => arrival + heartbeat * 2.0 + close,
        _ => match earlier.last() {
            Some(step) => step.at_secs,
            None => rng.random_range(1..60) as f64,
        },
    };
    // A client wakes on the first step after its start and the gateway registers it
    // three steps later (connect, upgrade request, upgrade answer); its timers count from there.
    // Sometimes a little off.
    let after = if rng.random_bool(0.6) { 3 } else { rng.random_range(0..6) };
    ((base / tick).ceil() * tick + after as f64 * tick).clamp(0.0, 89.0)
}

/// What `explore` is asked to do.
#[derive(Debug, Clone)]
pub struct ExploreOpts {
    pub from: u64,
    pub seeds: u64,
    pub jobs: usize,
    pub keep_going: bool,
    /// Where a failing scenario is written (with `-SEED` before the extension when several are).
    pub out: PathBuf,
    /// Runs a failing scenario's shrinking may spend.
    pub shrink_budget: usize,
}

/// One failing seed, shrunk.
#[derive(Debug, Clone)]
pub struct Failure {
    pub seed: u64,
    pub failure: String,
    pub original: Size,
    pub shrunk: Scenario,
}

/// What an explore run found.
#[derive(Debug, Default)]
pub struct Report {
    /// Seeds that reached each of [`crate::reach::Reach::NAMES`].
    pub reached: [u64; 4],
    pub passed: u64,
    pub failures: Vec<Failure>,
    pub restarts_busy: usize,
    pub restarts: usize,
}

/// Runs the seeds on `jobs` threads (each seed's run is deterministic whichever thread runs
/// it), shrinking every failure; stops at the first unless `keep_going`.
pub fn explore(opts: &ExploreOpts, options: &RunOptions, progress: bool) -> Report {
    let next = AtomicU64::new(opts.from);
    let end = opts.from + opts.seeds;
    let done = AtomicUsize::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let report = Mutex::new(Report::default());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.max(1) {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    let scenario = scenario_for(seed);
                    let outcome = crate::run_with(&scenario, options);
                    let restarts = scenario.timeline.iter().filter(|s| ending(&s.action).is_some()).count();
                    let failed = shrink::failure(&outcome);
                    let shrunk = failed.as_ref().map(|f| {
                        if progress {
                            eprintln!("\nseed {seed}: {f}; shrinking");
                        }
                        shrink::shrink(&scenario, f, options, opts.shrink_budget)
                    });
                    let reach = crate::reach::reached(&outcome.records).hits();
                    let mut r = report.lock().expect("report lock");
                    for (n, hit) in r.reached.iter_mut().zip(reach) {
                        *n += u64::from(hit);
                    }
                    r.restarts += restarts;
                    r.restarts_busy += outcome.busy_restarts;
                    match (failed, shrunk) {
                        (Some(failure), Some(shrunk)) => {
                            r.failures.push(Failure { seed, failure, original: Size::of(&scenario), shrunk });
                            if !opts.keep_going {
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                        _ => r.passed += 1,
                    }
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if progress {
                        bar(n as u64, opts.seeds, started.elapsed().as_secs_f64(), r.failures.len());
                    }
                }
            });
        }
    });
    let mut report = report.into_inner().expect("report lock");
    report.failures.sort_by_key(|f| f.seed);
    report
}

fn bar(done: u64, total: u64, secs: f64, failures: usize) {
    let width = 30;
    let filled = (done * width / total.max(1)) as usize;
    eprint!(
        "\r[{}{}] {done}/{total} seeds, {:.1} seeds/s, {failures} failures",
        "#".repeat(filled),
        " ".repeat(width as usize - filled),
        done as f64 / secs.max(1e-9),
    );
    let _ = std::io::stderr().flush();
}

/// Where the failing scenario of `seed` is written.
fn failure_path(out: &Path, seed: u64, several: bool) -> PathBuf {
    if !several {
        return out.to_owned();
    }
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = out.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_else(|| "toml".into());
    out.with_file_name(format!("{stem}-{seed}.{ext}"))
}

/// The CLI: explores, prints the summary and every failure's replay command.
pub fn main(opts: &ExploreOpts) -> ExitCode {
    let started = Instant::now();
    let report = explore(opts, &RunOptions::default(), true);
    eprintln!();
    let several = report.failures.len() > 1;
    for f in &report.failures {
        let path = failure_path(&opts.out, f.seed, several);
        eprintln!("seed {}: {}", f.seed, f.failure);
        eprintln!("  shrunk from {} to {}", f.original, Size::of(&f.shrunk));
        let mut shrunk = f.shrunk.clone();
        shrunk.description = format!("explore seed {} shrunk: {}", f.seed, f.failure);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            eprintln!("cannot create {}: {e}", dir.display());
            return ExitCode::from(2);
        }
        if let Err(e) = std::fs::write(&path, shrunk.to_toml()) {
            eprintln!("cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
        eprintln!(
            "  written to {}; replay with: cargo run -p clientmq-sim -- replay {}",
            path.display(),
            path.display()
        );
    }
    let secs = started.elapsed().as_secs_f64();
    let ran = report.passed + report.failures.len() as u64;
    println!(
        "{ran} seeds run, {} passed, {} failed, in {secs:.1}s ({:.0} seeds per minute, {} jobs); \
         {} of {} restarts hit an instant where the dying gateway still acted",
        report.passed,
        report.failures.len(),
        ran as f64 * 60.0 / secs.max(1e-9),
        opts.jobs,
        report.restarts_busy,
        report.restarts
    );
    let reached: Vec<String> = crate::reach::Reach::NAMES
        .iter()
        .zip(report.reached)
        .map(|(name, n)| format!("{name} {n} ({:.0} per 10,000)", n as f64 * 10_000.0 / ran.max(1) as f64))
        .collect();
    println!("reached: {}", reached.join(", "));
    if report.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_scenarios_are_valid_and_round_trip_through_toml() {
        for seed in 0..50 {
            let s = scenario_for(seed);
            s.validate().unwrap();
            let back: Scenario = toml::from_str(&s.to_toml()).unwrap();
            assert_eq!(back, s, "seed {seed}");
        }
        assert_ne!(scenario_for(1), scenario_for(2));
    }

    #[test]
    fn a_good_share_of_seeds_are_fleets_with_fleet_faults() {
        let fleets: Vec<Scenario> = (0..100).map(scenario_for).filter(|s| s.fleet.is_some()).collect();
        assert!((20..=50).contains(&fleets.len()), "{} fleets in 100 seeds", fleets.len());
        assert!(fleets.iter().all(|s| !s.timeline.iter().any(|t| t.action == Action::Bounce)));
        let faults: usize =
            fleets.iter().map(|s| s.timeline.iter().filter(|t| t.action.is_fleet()).count()).sum();
        assert!(faults >= fleets.len(), "every fleet gets at least one fleet fault");
    }

    #[test]
    fn shards_vary_from_one_to_four() {
        let shards: std::collections::BTreeSet<_> =
            (0..200).filter_map(|seed| scenario_for(seed).server.shards).collect();
        assert_eq!(shards, (1..=4).collect());
    }

    #[test]
    fn several_failures_get_a_file_each() {
        let out = Path::new("dir/explore-failure.toml");
        assert_eq!(failure_path(out, 7, false), out);
        assert_eq!(failure_path(out, 7, true), Path::new("dir/explore-failure-7.toml"));
    }
}
