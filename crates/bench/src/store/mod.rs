//! The store figures: chat sends and joins through `clientmq-chat` on the store (state in JetStream)
//! with one and with two workers, next to the in-memory worker, on one nats-server with
//! JetStream. Each system is a fleet of its own (a gateway and its workers on their own
//! `--nats-prefix`, so no two fleets share a queue group or a bucket); CPU time is read per
//! process over the loaded window only (not the connections' setup), per role.

use std::fmt::Write as _;
use std::time::Duration;

use crate::plan::{SuiteOpts, log, round};
use crate::procfs;
use crate::report;
use crate::request::{self, RequestOpts, RequestReport, Work};
use crate::stats::median;

mod fleet;

use fleet::{Fleet, System};

/// The systems, in the order of the table's columns.
pub const SYSTEMS: [&str; 3] = ["in-memory worker", "JetStream, 1 worker", "JetStream, 2 workers"];
const MEMORY: usize = 0;
const ONE: usize = 1;
const TWO: usize = 2;
/// Where a system's CPU time goes, in the order of the rows; the load generator last, apart.
const ROLES: [&str; 4] = ["gateway", "nats-server", "workers", "load generator"];
const LOAD: usize = 3;
const CONNECTIONS: usize = 100;
/// Targets of the issue: a send through the store at p99 at most this times the in-memory
/// worker's, and two workers serving at least this times one's sends.
const P99_AT_MOST: f64 = 3.0;
const SCALE_AT_LEAST: f64 = 1.6;
/// How long the sessions of a run may take to end before the next run starts regardless.
const SETTLE_WITHIN: Duration = Duration::from_secs(10);

/// One figure for each system.
#[derive(Debug, Clone, Default)]
pub struct StoreRow {
    pub figure: String,
    pub values: [Option<f64>; 3],
    pub decimals: usize,
    pub target: String,
    pub met: Option<bool>,
    pub runs: String,
}

#[derive(Debug, Clone)]
struct Run {
    report: RequestReport,
    /// CPU µs per answered request, per role.
    cpu_us: [f64; 4],
    /// Cores kept busy over the loaded window, every role included.
    cores: f64,
    /// Cores busy over the same window machine-wide: other jobs' too.
    machine: f64,
    /// Each worker's requests served in the run.
    served: Vec<f64>,
}

/// Measures both workloads on the three systems; the rows of the store table and notes.
pub async fn rows(opts: &SuiteOpts) -> Result<(Vec<StoreRow>, Vec<String>), String> {
    let fleet = fleet::start(&opts.binaries).await?;
    let (mut rows, mut notes) = (Vec::new(), Vec::new());
    let mut all_runs = Vec::new();
    let mut shares = Vec::new();
    for work in [Work::ChatSend, Work::ChatJoin] {
        let w = work.name();
        let base = RequestOpts {
            connections: CONNECTIONS,
            warmup: opts.warmup,
            duration: opts.duration,
            work,
            ..RequestOpts::default()
        };
        let peak = in_rounds(opts.repeats, &fleet, &base).await;
        let rps = values(&peak, |r| r.report.rps());
        rows.push(row(format!("{w}: requests/s, {CONNECTIONS} connections (closed loop)"), &rps, 0));
        for (role, name) in ROLES.iter().enumerate().take(LOAD) {
            let cpu = values(&peak, |r| r.cpu_us[role]);
            rows.push(row(format!("{w}: CPU µs per request: {name}"), &cpu, 1));
        }
        let all = values(&peak, |r| r.cpu_us[..LOAD].iter().sum());
        rows.push(row(format!("{w}: CPU µs per request: gateway + nats-server + workers"), &all, 1));
        let load = values(&peak, |r| r.cpu_us[LOAD]);
        rows.push(row(format!("{w}: CPU µs per request: {}", ROLES[LOAD]), &load, 1));
        let cores = values(&peak, |r| r.cores);
        rows.push(row(format!("{w}: cores busy in the closed loop (every process above)"), &cores, 2));
        let machine = values(&peak, |r| r.machine);
        let of = format!("of {}, other jobs included", available_cores());
        rows.push(row(format!("{w}: cores busy machine-wide in the closed loop ({of})"), &machine, 2));
        // One offered rate for all three: half of the slowest system's peak.
        let slowest = rps.iter().filter_map(|v| median(v)).filter(|r| *r > 0.0).fold(f64::MAX, f64::min);
        let rate = if slowest == f64::MAX { 100.0 } else { slowest / 2.0 };
        let paced = RequestOpts { rate: Some(rate), ..base };
        let timed = in_rounds(opts.repeats, &fleet, &paced).await;
        let [p50, p99] = [0, 1].map(|pick| {
            values(&timed, |r| {
                let l = &r.report.latency;
                [l.p50, l.p99][pick].as_secs_f64() * 1e3
            })
        });
        for (name, ms) in [("p50", &p50), ("p99", &p99)] {
            let figure = format!("{w}: {name} latency ms at {rate:.0} req/s, {CONNECTIONS} connections");
            rows.push(row(figure, ms, 3));
        }
        if work == Work::ChatSend {
            let at = format!("{w}: p99 at {rate:.0} req/s, JetStream 1 worker / in-memory worker");
            rows.push(judged(at, &p99, ONE, MEMORY, |r| r <= P99_AT_MOST, &format!("<= {P99_AT_MOST} x")));
            let scale = format!("{w}: requests/s, JetStream 2 workers / 1 worker");
            rows.push(judged(
                scale,
                &rps,
                TWO,
                ONE,
                |r| r >= SCALE_AT_LEAST,
                &format!(">= {SCALE_AT_LEAST} x"),
            ));
            notes.push(scaling_note(&rps, &cores, &machine));
        }
        shares.extend(peak[TWO].iter().map(|r| (w, r.served.clone())));
        all_runs.extend(peak.into_iter().chain(timed).flatten().map(|r| (w, r.report)));
    }
    notes.extend(run_notes(&fleet, &all_runs, &shares));
    Ok((rows, notes))
}

/// Runs `opts` against each system `repeats` times, each going first in turn.
async fn in_rounds(repeats: usize, fleet: &Fleet, opts: &RequestOpts) -> [Vec<Run>; 3] {
    let mut out: [Vec<Run>; 3] = Default::default();
    for r in 0..repeats.max(1) {
        for i in round(r) {
            out[i].push(measure(SYSTEMS[i], &fleet.systems[i], fleet.nats_pid, opts).await);
        }
    }
    out
}

async fn measure(name: &str, system: &System, nats_pid: u32, opts: &RequestOpts) -> Run {
    let mut pids = vec![(0, system.gateway_pid), (1, nats_pid), (LOAD, std::process::id())];
    pids.extend(system.workers.iter().map(|w| (2, w.pid)));
    // Per role, then the machine's.
    let cpu = || -> [f64; 5] {
        let mut by_role = [0.0; 5];
        for (role, pid) in &pids {
            let (user, sys) = procfs::cpu_secs(*pid).unwrap_or((0.0, 0.0));
            by_role[*role] += user + sys;
        }
        by_role[4] = procfs::machine_busy_secs().unwrap_or(0.0);
        by_role
    };
    let served_before = fleet::served(system).await;
    let prepared = request::prepare(std::slice::from_ref(&system.target), opts).await;
    let window = opts.warmup + opts.duration;
    // Sampled at the load's start (20 ms after it is called, as it plans) and end: the CPU of
    // the loaded window alone, not of the sessions and rooms set up before it.
    let (report, (before, after)) = tokio::join!(request::run_prepared(prepared, opts), async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let before = cpu();
        tokio::time::sleep(window).await;
        (before, cpu())
    });
    let served: Vec<f64> =
        fleet::served(system).await.iter().zip(&served_before).map(|(a, b)| a - b).collect();
    let per_req = 1e6 / (report.rps() * window.as_secs_f64()).max(1.0);
    let cpu_us = std::array::from_fn(|i| (after[i] - before[i]) * per_req);
    let secs = window.as_secs_f64();
    let cores = (0..4).map(|i| after[i] - before[i]).sum::<f64>() / secs;
    let machine = (after[4] - before[4]) / secs;
    log(format!(
        "store {} {name}: {} cpu_us={cpu_us:.1?} cores={cores:.2} machine_cores={machine:.2} served={served:?}",
        opts.work.name(),
        report.summary()
    ));
    // The next run starts once this one's sessions have ended (their grace, then their rooms
    // left): that work is not the next system's.
    if let Err(e) = fleet::settled(system, SETTLE_WITHIN).await {
        log(format!("store {name}: {e}"));
    }
    Run { report, cpu_us, cores, machine, served }
}

fn values(runs: &[Vec<Run>; 3], pick: impl Fn(&Run) -> f64) -> [Vec<f64>; 3] {
    runs.each_ref().map(|rs| rs.iter().map(&pick).collect())
}

fn row(figure: String, values: &[Vec<f64>; 3], decimals: usize) -> StoreRow {
    let runs = SYSTEMS
        .iter()
        .zip(values)
        .map(|(name, v)| format!("{name} {}", report::runs(v, decimals)))
        .collect::<Vec<_>>()
        .join("; ");
    StoreRow { figure, values: values.each_ref().map(|v| median(v)), decimals, runs, ..StoreRow::default() }
}

/// The ratio of column `of`'s median to column `to`'s, in column `of`, with its target; the
/// paired ratios (run i of each, same round) in the details.
fn judged(
    figure: String,
    values: &[Vec<f64>; 3],
    of: usize,
    to: usize,
    meets: impl Fn(f64) -> bool,
    target: &str,
) -> StoreRow {
    let ratio = median(&values[of]).zip(median(&values[to]).filter(|v| *v != 0.0)).map(|(a, b)| a / b);
    let paired: Vec<f64> =
        values[of].iter().zip(&values[to]).filter(|(_, b)| **b != 0.0).map(|(a, b)| a / b).collect();
    let mut row_values = [None; 3];
    row_values[of] = ratio;
    StoreRow {
        figure,
        values: row_values,
        decimals: 2,
        target: target.to_owned(),
        met: ratio.map(meets),
        runs: format!("ratio of the medians; paired runs {}", report::runs(&paired, 2)),
    }
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// What limits two workers' sends on this machine, from the cores busy in their closed loop.
fn scaling_note(rps: &[Vec<f64>; 3], cores: &[Vec<f64>; 3], machine: &[Vec<f64>; 3]) -> String {
    let available = available_cores() as f64;
    let (one, two) = (median(&rps[ONE]).unwrap_or(0.0), median(&rps[TWO]).unwrap_or(0.0));
    let (ours, all) = (median(&cores[TWO]).unwrap_or(0.0), median(&machine[TWO]).unwrap_or(0.0));
    let limit = if all >= 0.9 * available {
        "the cores were the limit: the gateway, nats-server, the workers and the load generator (and \
         any other job) all run on them, so a second worker can add throughput only with cores to \
         spare; the target is for a machine with the cores for it"
    } else {
        "the cores were not all busy: the limit is the latency of a request's path with 100 in flight \
         (the store's round trips), not the machine"
    };
    format!(
        "store scaling: chat sends at {one:.0}/s with one JetStream worker and {two:.0}/s with two; in the \
         closed loop with two, {all:.2} of this machine's {available:.0} cores were busy ({ours:.2} by the \
         system and the load generator): {limit}"
    )
}

fn run_notes(fleet: &Fleet, runs: &[(&str, RequestReport)], shares: &[(&str, Vec<f64>)]) -> Vec<String> {
    let errors: u64 = runs.iter().map(|(_, r)| r.errors + r.connect_errors).sum();
    let first = runs.iter().find_map(|(w, r)| r.first_error.as_ref().map(|e| format!(" (first, {w}: {e})")));
    let mut answers: Vec<String> = runs.iter().map(|(w, r)| format!("{w}: {}", r.answer)).collect();
    answers.dedup();
    let split: Vec<String> = shares
        .iter()
        .map(|(w, served)| {
            let total: f64 = served.iter().sum::<f64>().max(1.0);
            let parts: Vec<String> = served.iter().map(|s| format!("{:.0}%", s / total * 100.0)).collect();
            format!("{w} {}", parts.join("/"))
        })
        .collect();
    vec![
        format!(
            "store: one nats-server `{}` with JetStream (`-js`, its store in a fresh directory under the \
             logs); each system a gateway and its `clientmq-chat` workers on a `--nats-prefix` of its own \
             (`--memory` for the in-memory one), all three fleets up throughout: nats-server's CPU is \
             shared, and includes the idle fleets' announcements and the stored workers' sweeps",
            fleet.nats_version
        ),
        format!(
            "store: each connection authenticates and creates and joins a room of its own before the \
             warm-up (not counted, nor its CPU); a send's sender also hears its message as an event, a \
             join its own arrival; answers {answers:?}; errors, all store runs: {errors}{}",
            first.unwrap_or_default()
        ),
        format!("store: two workers' shares of the requests, closed loop, by run: {}", split.join("; ")),
    ]
}

/// The store table, for the generated block.
pub fn render(rows: &[StoreRow]) -> String {
    let mut s = String::new();
    let [a, b, c] = SYSTEMS;
    let _ = writeln!(s, "| figure | {a} | {b} | {c} | target | verdict |");
    let _ = writeln!(s, "|---|---:|---:|---:|---|---|");
    for row in rows {
        let [a, b, c] = row.values.map(|v| report::value(v, row.decimals));
        let verdict = report::verdict(row.met);
        let _ = writeln!(s, "| {} | {a} | {b} | {c} | {} | {verdict} |", row.figure, row.target);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_sit_in_their_column_with_paired_runs() {
        let values = [vec![1.0, 2.0, 4.0], vec![3.0, 5.0, 6.0], vec![]];
        let row = judged("p99".into(), &values, ONE, MEMORY, |r| r <= 3.0, "<= 3 x");
        assert_eq!(row.values, [None, Some(2.5), None]);
        assert_eq!(row.met, Some(true));
        assert_eq!(row.runs, "ratio of the medians; paired runs 3.00, 2.50, 1.50");
        let none = judged("x".into(), &values, TWO, ONE, |r| r >= 1.6, ">= 1.6 x");
        assert_eq!((none.values, none.met), ([None; 3], None));
        let text = render(&[row]);
        assert!(text.contains("| p99 | - | 2.50 | - | <= 3 x | met |"), "{text}");
    }
}
