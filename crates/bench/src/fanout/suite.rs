//! The fan-out figures of the suite: the same rooms and publisher against clientmq (embedded
//! backend), the bare fan-out baseline, the Node seed's broadcast loop, clientmq through NATS
//! with one and with two gateways, and clientmq embedded with one shard (`--shards 1`, no target:
//! next to its default of a shard a core). Each topology starts fresh processes, so that the
//! first run of each system reads its memory per member from a process that held no connection
//! before.

use std::fmt::Write as _;

use super::{FanoutOpts, FanoutReport, Protocol};
use crate::plan::{GATEWAY_FLAGS, SuiteOpts, log};
use crate::report;
use crate::servers::{Binaries, ServerProc};
use crate::stats::median;
use crate::target::Target;

/// The systems, in the order of the table's columns.
pub const SYSTEMS: [&str; N] =
    ["clientmq", "baseline", "Node seed", "NATS, 1 gateway", "NATS, 2 gateways", "clientmq, 1 shard"];
/// Columns of the table.
const N: usize = 6;
const CLIENTMQ: usize = 0;
const BASELINE: usize = 1;
const SEED: usize = 2;
/// Rooms and members: one room of 10,000, then 100 rooms of 100.
pub const TOPOLOGIES: [(usize, usize); 2] = [(1, 10_000), (100, 10_000)];
/// Chat bounds the members need (the defaults allow 1,000 members a room), and a short grace so
/// that the sessions of one run are gone before the next.
const CHAT_FLAGS: [&str; 8] = [
    "--max-room-members",
    "20000",
    "--max-sessions",
    "40000",
    "--session-grace-secs",
    "1",
    "--max-rooms",
    "1000",
];

/// One figure for every system.
#[derive(Debug, Clone, Default)]
pub struct FanRow {
    pub figure: String,
    pub values: [Option<f64>; N],
    pub decimals: usize,
    pub target: String,
    pub met: Option<bool>,
    pub runs: String,
}

/// One system: its gateways (members spread over them), the processes whose CPU and memory
/// count (the gateways), and the nats-server monitoring port when on the bus.
struct System {
    targets: Vec<Target>,
    pids: Vec<u32>,
    protocol: Protocol,
    nats_monitor: Option<Target>,
}

/// The processes of one topology's systems; killed when dropped.
struct Fleet {
    _procs: Vec<ServerProc>,
    _worker: crate::servers::Worker,
    systems: Vec<System>,
}

/// Starts every system; `extra` flags go to every clientmq gateway.
async fn fleet(bins: &Binaries, tag: &str, extra: &[&str]) -> Result<Fleet, String> {
    let mut flags = GATEWAY_FLAGS.to_vec();
    flags.extend(CHAT_FLAGS);
    flags.extend(extra);
    let clientmq = bins.clientmq(&format!("fanout-{tag}-clientmq"), &flags).await?;
    // One shard, next to the default of one a core: the load generator takes a core here.
    let one_shard = [&flags[..], &["--shards", "1"]].concat();
    let one_shard = bins.clientmq(&format!("fanout-{tag}-clientmq-1-shard"), &one_shard).await?;
    let baseline = bins.baseline(&format!("fanout-{tag}-baseline"), &["--fanout"]).await?;
    let seed = bins.node_seed(&format!("fanout-{tag}-node-seed"), &GATEWAY_FLAGS).await?;
    let (nats, monitor) = bins.nats_server_monitored(&format!("fanout-{tag}-nats-server")).await?;
    let url = format!("nats://{}", nats.target.addr());
    // The in-memory worker: fan-out is the gateways' work, whatever keeps the room.
    let worker_flags = [&CHAT_FLAGS[..], &["--memory"]].concat();
    let worker = bins.chat_worker_with(&format!("fanout-{tag}-worker"), &url, &worker_flags)?;
    let mut gateways = Vec::new();
    for name in ["gw1", "gw2", "gw3"] {
        let mut flags = flags.clone();
        flags.extend(["--nats", &url, "--gateway-name", name]);
        gateways.push(bins.clientmq(&format!("fanout-{tag}-{name}"), &flags).await?);
    }
    for gw in &gateways {
        crate::bus::answered_through(&gw.target).await?;
    }
    let plain = |p: &ServerProc, protocol| System {
        targets: vec![p.target.clone()],
        pids: vec![p.pid],
        protocol,
        nats_monitor: None,
    };
    let bus = |gws: &[&ServerProc]| System {
        targets: gws.iter().map(|g| g.target.clone()).collect(),
        pids: gws.iter().map(|g| g.pid).collect(),
        protocol: Protocol::Clientmq,
        nats_monitor: Some(monitor.clone()),
    };
    let systems = vec![
        plain(&clientmq, Protocol::Clientmq),
        plain(&baseline, Protocol::Plain),
        plain(&seed, Protocol::Plain),
        bus(&[&gateways[0]]),
        bus(&[&gateways[1], &gateways[2]]),
        plain(&one_shard, Protocol::Clientmq),
    ];
    let mut procs = vec![clientmq, baseline, seed, nats, one_shard];
    procs.extend(gateways);
    Ok(Fleet { _procs: procs, _worker: worker, systems })
}

/// A run.
#[derive(Debug, Clone)]
struct Run {
    report: FanoutReport,
}

async fn measure(name: &str, system: &System, opts: &FanoutOpts, first_source: u8) -> Run {
    let opts = FanoutOpts {
        protocol: system.protocol,
        pids: system.pids.clone(),
        first_source,
        nats_monitor: system.nats_monitor.clone(),
        ..opts.clone()
    };
    let report = super::run(&system.targets, &opts).await;
    log(format!("fanout {name}: {}", report.summary()));
    Run { report }
}

/// Runs `opts` against every system `repeats` times, each going first in turn.
async fn in_rounds(repeats: usize, fleet: &Fleet, opts: &FanoutOpts, source: &mut u8) -> [Vec<Run>; N] {
    in_rounds_of(&std::array::from_fn::<usize, N, _>(|i| i), repeats, fleet, opts, source).await
}

/// `in_rounds` over the systems `which` only; the others' lists stay empty.
async fn in_rounds_of(
    which: &[usize],
    repeats: usize,
    fleet: &Fleet,
    opts: &FanoutOpts,
    source: &mut u8,
) -> [Vec<Run>; N] {
    let mut out: [Vec<Run>; N] = Default::default();
    for r in 0..repeats.max(1) {
        for k in 0..which.len() {
            let i = which[(r + k) % which.len()];
            // A fresh block of source addresses a run: no run waits on the last one's TIME_WAIT.
            *source = source.wrapping_add(opts.sources as u8).max(1);
            if u16::from(*source) + opts.sources as u16 > 250 {
                *source = 1;
            }
            out[i].push(measure(SYSTEMS[i], &fleet.systems[i], opts, *source).await);
        }
    }
    out
}

fn values(runs: &[Vec<Run>; N], pick: impl Fn(&Run) -> Option<f64>) -> [Vec<f64>; N] {
    runs.each_ref().map(|rs| rs.iter().filter_map(&pick).collect())
}

fn row(figure: String, values: &[Vec<f64>; N], decimals: usize) -> FanRow {
    let runs = SYSTEMS
        .iter()
        .zip(values)
        .filter(|(_, v)| !v.is_empty())
        .map(|(name, v)| format!("{name} {}", report::runs(v, decimals)))
        .collect::<Vec<_>>()
        .join("; ");
    FanRow { figure, values: values.each_ref().map(|v| median(v)), decimals, runs, ..FanRow::default() }
}

/// `row` with a target on clientmq's median against another column's.
fn judged(
    mut row: FanRow,
    against: usize,
    at_least: Option<f64>,
    at_most: Option<f64>,
    target: &str,
) -> FanRow {
    let ratio = row.values[CLIENTMQ].zip(row.values[against].filter(|v| *v != 0.0)).map(|(c, o)| c / o);
    row.met = ratio.map(|r| at_least.is_none_or(|l| r >= l) && at_most.is_none_or(|m| r <= m));
    row.target = target.to_owned();
    row
}

/// Measures every topology; the rows of the fan-out table and notes.
pub async fn rows(opts: &SuiteOpts) -> Result<(Vec<FanRow>, Vec<String>), String> {
    let (mut rows, mut notes) = (Vec::new(), Vec::new());
    let mut source = 1u8;
    for (rooms, members) in TOPOLOGIES {
        let shape = if rooms == 1 {
            format!("1 room of {members}")
        } else {
            format!("{rooms} rooms of {}", members / rooms)
        };
        let fleet = fleet(&opts.binaries, &format!("{rooms}x{}", members / rooms), &[]).await?;
        let base = FanoutOpts {
            members,
            rooms,
            warmup: opts.warmup,
            duration: opts.duration,
            sources: 8,
            ..FanoutOpts::default()
        };
        let peak = in_rounds(opts.repeats, &fleet, &base, &mut source).await;
        let dps = values(&peak, |r| Some(r.report.deliveries_per_sec()));
        let full = row(format!("deliveries/s at full speed, {shape}"), &dps, 0);
        rows.push(judged(full.clone(), BASELINE, Some(0.8), None, ">= 0.8 x baseline"));
        rows.push(judged(
            FanRow { figure: format!("{} (against the Node seed)", full.figure), ..full },
            SEED,
            Some(3.0),
            None,
            ">= 3 x Node seed",
        ));
        let cpu = values(&peak, |r| r.report.cpu_us_per_delivery());
        rows.push(row(format!("gateway CPU µs per delivery at full speed, {shape}"), &cpu, 2));
        // Memory from each system's first run, on a process that held nothing before.
        let first: [Vec<Run>; N] = peak.each_ref().map(|rs| rs.iter().take(1).cloned().collect());
        let mem = values(&first, |r| r.report.kib_per_member());
        rows.push(row(format!("gateway memory KiB per member (first run), {shape}"), &mem, 2));
        let bus = values(&peak, |r| r.report.bus_out_per_publish());
        rows.push(row(format!("nats-server messages out per published message, {shape}"), &bus, 2));

        // Half of clientmq's peak, the same offered rate for every system.
        let per_message = (members / rooms) as f64;
        let rate = median(&dps[CLIENTMQ]).unwrap_or(10_000.0) / 2.0 / per_message;
        let paced = FanoutOpts { rate: Some(rate), ..base };
        let timed = in_rounds(opts.repeats, &fleet, &paced, &mut source).await;
        let at = format!("at {rate:.0} messages/s ({:.0} deliveries/s), {shape}", rate * per_message);
        for (name, pick) in [("p50", 0), ("p99", 1), ("p999", 2)] {
            let ms = values(&timed, |r| {
                let l = &r.report.latency;
                Some([l.p50, l.p99, l.p999][pick].as_secs_f64() * 1e3)
            });
            let row = row(format!("{name} ms from publish to receipt {at}"), &ms, 3);
            rows.push(if pick == 1 {
                judged(row, BASELINE, None, Some(1.5), "<= 1.5 x baseline")
            } else {
                row
            });
        }
        let all = peak.iter().chain(&timed).flatten();
        let faults: Vec<String> = all.filter(|r| !r.report.clean()).map(|r| r.report.summary()).collect();
        notes.push(format!(
            "fan-out, {shape}: {} runs; every member heard every message once and in order in all but {} of them{}",
            peak.iter().chain(&timed).map(Vec::len).sum::<usize>(),
            faults.len(),
            faults.first().map(|f| format!(" (first: {f})")).unwrap_or_default()
        ));
        let bytes = peak[CLIENTMQ].first().map_or(0, |r| r.report.frame_bytes);
        let plain = peak[BASELINE].first().map_or(0, |r| r.report.frame_bytes);
        notes.push(format!(
            "fan-out, {shape}: delivered frame {bytes} bytes from clientmq, {plain} from the plain servers"
        ));
    }
    let (slow, slow_notes) = slow_rows(opts, &mut source).await?;
    rows.extend(slow);
    notes.extend(slow_notes);
    Ok((rows, notes))
}

/// Slow members: one room of this many, every 100th never reading (1%).
const SLOW_MEMBERS: usize = 2_000;
const SLOW_EVERY: usize = 100;
/// About half of what one room of this size takes at full speed here, and enough for a stalled
/// member's socket and queue to fill well within the window.
const SLOW_RATE: f64 = 50.0;
const SLOW_WINDOW: std::time::Duration = std::time::Duration::from_secs(20);
/// The gateways' kernel send buffer in these runs (`--socket-send-buffer`): with the kernel's
/// own, which grows to 4 MiB, a stalled member takes minutes to fill it before its queue
/// starts to.
const SLOW_SEND_BUFFER: &str = "65536";
/// The systems with a slow-consumer bound to measure: clientmq embedded and on NATS.
const SLOW_SYSTEMS: [usize; 2] = [CLIENTMQ, 3];

/// The same room and rate with 1% of members never reading and with none: the others' p99,
/// the stalled members closed with 3335 within the window, and the gateways' memory for them.
async fn slow_rows(opts: &SuiteOpts, source: &mut u8) -> Result<(Vec<FanRow>, Vec<String>), String> {
    let fleet = fleet(&opts.binaries, "slow", &["--socket-send-buffer", SLOW_SEND_BUFFER]).await?;
    let base = FanoutOpts {
        members: SLOW_MEMBERS,
        rooms: 1,
        warmup: opts.warmup,
        duration: SLOW_WINDOW,
        rate: Some(SLOW_RATE),
        sources: 8,
        ..FanoutOpts::default()
    };
    let slow_opts = FanoutOpts { slow_every: SLOW_EVERY, ..base.clone() };
    let (mut none, mut slow): ([Vec<Run>; N], [Vec<Run>; N]) = Default::default();
    // Paired: each repeat runs both, so a ratio compares runs of the same moment.
    for _ in 0..opts.repeats.max(1) {
        let [a, b] = [&base, &slow_opts];
        let (n, s) = (
            in_rounds_of(&SLOW_SYSTEMS, 1, &fleet, a, source).await,
            in_rounds_of(&SLOW_SYSTEMS, 1, &fleet, b, source).await,
        );
        for i in 0..SYSTEMS.len() {
            none[i].extend(n[i].iter().cloned());
            slow[i].extend(s[i].iter().cloned());
        }
    }
    let stalled = SLOW_MEMBERS / SLOW_EVERY;
    let shape = format!("1 room of {SLOW_MEMBERS} at {SLOW_RATE:.0} messages/s");
    let p99 = |runs: &[Vec<Run>; N]| values(runs, |r| Some(r.report.latency.p99.as_secs_f64() * 1e3));
    let mut rows = vec![
        row(format!("others' p99 ms with none stalled, {shape}"), &p99(&none), 3),
        row(format!("others' p99 ms with {stalled} (1%) never reading, {shape}"), &p99(&slow), 3),
    ];
    let ratios: [Vec<f64>; N] = std::array::from_fn(|i| {
        none[i]
            .iter()
            .zip(&slow[i])
            .map(|(n, s)| s.report.latency.p99.as_secs_f64() / n.report.latency.p99.as_secs_f64().max(1e-9))
            .collect()
    });
    let mut ratio = row(
        format!("others' p99 with {stalled} never reading / with none (paired runs), {shape}"),
        &ratios,
        2,
    );
    ratio.met = ratio.values[CLIENTMQ].map(|r| r <= 1.2);
    ratio.target = "<= 1.2".to_owned();
    rows.push(ratio);
    let closed = values(&slow, |r| r.report.closed_3335.map(|n| n as f64));
    let mut closed_row = row(
        format!("stalled members closed with 3335 within the window (of {stalled}), {shape}"),
        &closed,
        0,
    );
    closed_row.met = Some(
        SLOW_SYSTEMS
            .iter()
            .all(|i| !closed[*i].is_empty() && closed[*i].iter().all(|n| *n == stalled as f64)),
    );
    closed_row.target = "all, every run".to_owned();
    rows.push(closed_row);
    // What the stalled members cost the gateways at most: the peak growth over the window, less
    // that of the paired run with none stalled.
    let extra: [Vec<f64>; N] = std::array::from_fn(|i| {
        none[i]
            .iter()
            .zip(&slow[i])
            .map(|(n, s)| {
                let growth = |r: &FanoutReport| r.rss_peak_kib as f64 - r.rss_ready_kib as f64;
                (growth(&s.report) - growth(&n.report)) / stalled as f64
            })
            .collect()
    });
    rows.push(row(
        format!("gateway peak memory growth KiB per stalled member, over the run with none, {shape}"),
        &extra,
        1,
    ));
    let frames = values(&slow, |r| Some(r.report.slow_frames as f64 / r.report.slow_members.max(1) as f64));
    rows.push(row(format!("frames a stalled member found waiting when it read again, {shape}"), &frames, 0));
    let all = none.iter().chain(&slow).flatten();
    let faults: Vec<String> = all.filter(|r| !r.report.clean()).map(|r| r.report.summary()).collect();
    let notes = vec![format!(
        "slow members, {shape}: gateways with `--socket-send-buffer {SLOW_SEND_BUFFER}` and the default queue (256 frames, 64 MiB); stalled members with a {} byte receive buffer; {} runs, every reading member heard every message once and in order in all but {}{}",
        super::slow::RECEIVE_BUFFER,
        none.iter().chain(&slow).map(Vec::len).sum::<usize>(),
        faults.len(),
        faults.first().map(|f| format!(" (first: {f})")).unwrap_or_default()
    )];
    Ok((rows, notes))
}

/// The fan-out table, for the generated block.
pub fn render(rows: &[FanRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| figure | {} | target | verdict |", SYSTEMS.join(" | "));
    let _ = writeln!(s, "|---|{}---|---|", "---:|".repeat(N));
    for row in rows {
        let values = row.values.map(|v| report::value(v, row.decimals)).join(" | ");
        let verdict = report::verdict(row.met);
        let _ = writeln!(s, "| {} | {values} | {} | {verdict} |", row.figure, row.target);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_column_for_every_system_and_its_verdict_last() {
        let row = FanRow {
            figure: "deliveries/s".into(),
            values: [Some(1.0), Some(2.0), None, Some(4.0), Some(5.0), Some(6.0)],
            decimals: 0,
            target: ">= 0.8 x baseline".into(),
            met: Some(false),
            runs: String::new(),
        };
        let table = render(&[row]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines,
            [
                "| figure | clientmq | baseline | Node seed | NATS, 1 gateway | NATS, 2 gateways | clientmq, 1 shard | target | verdict |",
                "|---|---:|---:|---:|---:|---:|---:|---|---|",
                "| deliveries/s | 1 | 2 | - | 4 | 5 | 6 | >= 0.8 x baseline | **missed** |",
            ]
        );
    }
}
