//! The bus figures: the request load through gateway -> nats-server -> `clientmq-chat` worker,
//! next to the embedded backend in the same run, and what a second gateway on the same bus adds.
//! CPU time is read per process, so the table says where the time goes: gateways, nats-server,
//! worker.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::floor;
use crate::frame::{self, Answer};
use crate::plan::{GATEWAY_FLAGS, SuiteOpts, log, round};
use crate::procfs;
use crate::report::{BusRow, Results, SYSTEMS, runs};
use crate::request::{self, RequestOpts, RequestReport};
use crate::servers::Binaries;
use crate::stats::median;
use crate::target::{self, Target};

/// The systems compared, in the order of the bus table's columns.
/// Where a system's CPU time is spent, in the order of the table's rows.
const ROLES: [&str; 3] = ["gateways", "nats-server", "worker"];
const NATS_ONE: usize = 1;
/// How long a fresh fleet may take until a request through every gateway is answered by the worker.
const READY_WITHIN: Duration = Duration::from_secs(15);

/// One system under load: the gateways the connections are spread over, and every process of it
/// with its role (an index into [`ROLES`]).
struct System {
    targets: Vec<Target>,
    procs: Vec<(usize, u32)>,
}

#[derive(Debug, Clone)]
struct Run {
    report: RequestReport,
    /// CPU µs per answered request, per role.
    cpu_us: [f64; 3],
}

/// Measures the three systems with the same load and adds their table to `res`.
pub async fn rows(opts: &SuiteOpts, res: &mut Results) -> Result<(), String> {
    let bins: &Binaries = &opts.binaries;
    let nats = bins.nats_server("bus-nats-server").await?;
    let url = format!("nats://{}", nats.target.addr());
    let worker = bins.chat_worker_with("bus-worker", &url, &["--memory"])?;
    let gateway = async |name: &str| {
        let mut flags = GATEWAY_FLAGS.to_vec();
        flags.extend(["--nats", &url, "--gateway-name", name]);
        bins.clientmq(&format!("bus-{name}"), &flags).await
    };
    let (gw1, gw2) = (gateway("gw1").await?, gateway("gw2").await?);
    let embedded = bins.clientmq("bus-embedded", &GATEWAY_FLAGS).await?;
    for gw in [&gw1, &gw2] {
        answered_through(&gw.target).await?;
    }
    let bus = |gws: &[&crate::servers::ServerProc]| System {
        targets: gws.iter().map(|g| g.target.clone()).collect(),
        procs: gws.iter().map(|g| (0, g.pid)).chain([(1, nats.pid), (2, worker.pid)]).collect(),
    };
    let systems = [
        System { targets: vec![embedded.target.clone()], procs: vec![(0, embedded.pid)] },
        bus(&[&gw1]),
        bus(&[&gw1, &gw2]),
    ];
    let base = RequestOpts { warmup: opts.warmup, duration: opts.duration, ..RequestOpts::default() };
    let closed = RequestOpts { connections: 100, ..base.clone() };
    let peak = in_rounds(opts.repeats, &systems, &closed).await;
    let rps = values(&peak, |r| r.report.rps());
    res.bus.push(row("requests/s, 100 connections (closed loop)", &rps, 0));
    for (role, name) in ROLES.iter().enumerate() {
        let cpu = values(&peak, |r| r.cpu_us[role]);
        res.bus.push(row(&format!("CPU µs per request: {name}"), &cpu, 1));
    }
    let all = values(&peak, |r| r.cpu_us.iter().sum());
    res.bus.push(row("CPU µs per request: all processes", &all, 1));
    // One offered rate for all three: half of the slower bus system's peak.
    let rate = median(&rps[NATS_ONE]).unwrap_or(2000.0).min(median(&rps[2]).unwrap_or(f64::MAX)) / 2.0;
    let paced = RequestOpts { connections: 100, rate: Some(rate), ..base };
    let timed = in_rounds(opts.repeats, &systems, &paced).await;
    for (name, pick) in [("p50", 0), ("p99", 1)] {
        let ms = values(&timed, |r| {
            let l = &r.report.latency;
            [l.p50, l.p99][pick].as_secs_f64() * 1e3
        });
        res.bus.push(row(&format!("{name} latency ms at {rate:.0} req/s, 100 connections"), &ms, 3));
    }
    // The same figures at one offered rate: at full speed the embedded gateway answers several
    // times the requests, so each wake-up and each write carries more of them than on the bus.
    let mut paced_cpu = Vec::new();
    for (role, name) in ROLES.iter().enumerate() {
        let cpu = values(&timed, |r| r.cpu_us[role]);
        res.bus.push(row(&format!("CPU µs per request at {rate:.0} req/s: {name}"), &cpu, 1));
        paced_cpu.push(cpu);
    }
    res.notes.push(gateway_ratios(&values(&peak, |r| r.cpu_us[0]), &paced_cpu[0], rate));
    // What async-nats alone costs at the paced rate and at the bus gateway's full speed.
    let gateway_cpu =
        |runs: &[Vec<Run>; 3], i: usize| median(&values(runs, |r| r.cpu_us[0])[i]).unwrap_or(0.0);
    let full_rate = median(&rps[NATS_ONE]).unwrap_or(rate);
    for (what, at, runs) in
        [("the one offered rate", rate, &timed), ("the bus gateway's full speed", full_rate, &peak)]
    {
        // A floor that cannot be measured is said so; the figures above stand without it.
        res.notes.push(match floor::measure(&opts.load_bin, &url, at, opts.repeats, opts.duration).await {
            Ok(floor) => floor::note(what, &floor, gateway_cpu(runs, 0), gateway_cpu(runs, NATS_ONE)),
            Err(e) => format!("bus floor at {at:.0} req/s ({what}): not measured: {e}"),
        });
    }
    let errors: u64 =
        peak.iter().chain(&timed).flatten().map(|r| r.report.errors + r.report.connect_errors).sum();
    let answers: Vec<&str> =
        peak.iter().filter_map(|rs| rs.first()).map(|r| r.report.answer.as_str()).collect();
    res.notes.push(format!(
        "bus: nats-server `{}`, one `clientmq-chat` worker, gateways with `--nats`; the connections of the \
         2-gateway system are split evenly over both; answers {answers:?}; errors, all bus runs: {errors}",
        nats_version(bins).await
    ));
    Ok(())
}

/// The bus gateway's CPU per request over the embedded gateway's (target: at most 1.3 x), paired
/// run by run, at full speed and at one offered rate.
fn gateway_ratios(full: &[Vec<f64>; 3], paced: &[Vec<f64>; 3], rate: f64) -> String {
    let ratios = |cpu: &[Vec<f64>; 3]| -> Vec<f64> {
        cpu[0].iter().zip(&cpu[NATS_ONE]).filter(|(e, _)| **e > 0.0).map(|(e, n)| n / e).collect()
    };
    let (full, paced) = (ratios(full), ratios(paced));
    let median_of = |v: &[f64]| median(v).map_or("-".into(), |m| format!("{m:.2}"));
    format!(
        "bus: gateway CPU per request, NATS (1 gateway) over embedded, paired runs (target at most 1.3 x): \
         at full speed {} (median {}); at {rate:.0} req/s {} (median {})",
        runs(&full, 2),
        median_of(&full),
        runs(&paced, 2),
        median_of(&paced)
    )
}

/// Runs `opts` against each system `repeats` times, each going first in turn.
async fn in_rounds(repeats: usize, systems: &[System; 3], opts: &RequestOpts) -> [Vec<Run>; 3] {
    let mut out: [Vec<Run>; 3] = Default::default();
    for r in 0..repeats.max(1) {
        for i in round(r) {
            out[i].push(measure(SYSTEMS[i], &systems[i], opts).await);
        }
    }
    out
}

async fn measure(name: &str, system: &System, opts: &RequestOpts) -> Run {
    let cpu = || -> [f64; 3] {
        let mut by_role = [0.0; 3];
        for (role, pid) in &system.procs {
            let (user, sys) = procfs::cpu_secs(*pid).unwrap_or((0.0, 0.0));
            by_role[*role] += user + sys;
        }
        by_role
    };
    let before = cpu();
    let report = request::run_spread(&system.targets, opts).await;
    let after = cpu();
    let per_req = 1e6 / (report.rps() * (opts.warmup + opts.duration).as_secs_f64()).max(1.0);
    let cpu_us = std::array::from_fn(|i| (after[i] - before[i]) * per_req);
    log(format!("bus {name}: {} cpu_us={cpu_us:.1?}", report.summary()));
    Run { report, cpu_us }
}

fn values(runs: &[Vec<Run>; 3], pick: impl Fn(&Run) -> f64) -> [Vec<f64>; 3] {
    runs.each_ref().map(|rs| rs.iter().map(&pick).collect())
}

fn row(figure: &str, values: &[Vec<f64>; 3], decimals: usize) -> BusRow {
    BusRow {
        figure: figure.to_owned(),
        values: values.each_ref().map(|v| median(v)),
        decimals,
        runs: SYSTEMS
            .iter()
            .zip(values)
            .map(|(name, v)| format!("{name} {}", runs(v, decimals)))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// Waits until a request through `gateway` is answered by the worker (not `mq.Error`): the
/// gateway is on the bus and the worker has subscribed.
pub(crate) async fn answered_through(gateway: &Target) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + READY_WITHIN;
    let mut last = String::from("no answer");
    while tokio::time::Instant::now() < deadline {
        match probe(gateway).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{}: no worker answered through this gateway within {READY_WITHIN:?}: {last}", gateway.url()))
}

async fn probe(gateway: &Target) -> Result<(), String> {
    let mut ws = target::connect(gateway, None).await?;
    let id = frame::request_id(0);
    ws.send(Message::Text(frame::request_frame(&id, 0).into())).await.map_err(|e| e.to_string())?;
    let answer = tokio::time::timeout(Duration::from_secs(2), ws.next()).await.map_err(|_| "timed out")?;
    let text = match answer {
        Some(Ok(Message::Text(t))) => t.as_str().to_owned(),
        other => return Err(format!("{other:?}")),
    };
    request::close(ws).await;
    match frame::check_answer(&text, &id) {
        Answer::Matched(ty) if ty != "mq.Error" => Ok(()),
        other => Err(format!("{other:?} {:?}", frame::error_reason(&text))),
    }
}

pub(crate) async fn nats_version(bins: &Binaries) -> String {
    let out = tokio::process::Command::new(&bins.nats).arg("--version").output().await;
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_else(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_ratios_pair_runs_by_round() {
        // Embedded, NATS with one gateway, NATS with two; run i of each is in round i.
        let full = [vec![10.0, 8.0], vec![20.0, 12.0], vec![99.0, 99.0]];
        let paced = [vec![16.0, 0.0], vec![20.0, 30.0], vec![99.0, 99.0]];
        let note = gateway_ratios(&full, &paced, 20_000.0);
        assert!(note.contains("at full speed 2.00, 1.50 (median 1.75)"), "{note}");
        // A run without an embedded figure is left out, not divided by.
        assert!(note.contains("at 20000 req/s 1.25 (median 1.25)"), "{note}");
    }
}
