//! clientmq-load: the load generator. `request`, `idle`, `churn` and `fanout` drive one running server
//! (clientmq, the baseline or the Node seed gateway) over loopback; `suite` starts all three and
//! runs everything, as `just bench` does. Every mode stops by itself.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use clientmq_bench::churn::{self, ChurnOpts};
use clientmq_bench::fanout::{self, FanoutOpts, Protocol};
use clientmq_bench::floor::{self, FloorLoad, Publish};
use clientmq_bench::idle::{self, IdleOpts};
use clientmq_bench::plan::SuiteOpts;
use clientmq_bench::report;
use clientmq_bench::request::{self, RequestOpts, Work};
use clientmq_bench::servers::Binaries;
use clientmq_bench::suite;
use clientmq_bench::target::Target;

#[derive(Parser)]
#[command(
    name = "clientmq-load",
    version,
    about = "Load generator for clientmq, its echo baseline and the Node seed gateway (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// N connections sending requests in a loop: requests/s, latency percentiles, errors.
    Request {
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        url: String,
        #[arg(long, default_value_t = 100)]
        connections: usize,
        #[arg(long, default_value_t = 1.0)]
        warmup_secs: f64,
        #[arg(long, default_value_t = 3.0)]
        duration_secs: f64,
        /// Total requests per second (rate-limited, coordinated-omission corrected); full speed without.
        #[arg(long)]
        rate: Option<f64>,
        /// Loopback source addresses to spread client sockets over (127.0.0.1, .2, ...).
        #[arg(long, default_value_t = 1)]
        sources: usize,
        /// What each request is: `mq.PingPong`, or chat sends or joins on a room of each
        /// connection's own (set up before the warm-up).
        #[arg(long, value_enum, default_value_t = Work::Ping)]
        work: Work,
    },
    /// N idle connections held while heartbeats run; the server's resident memory per connection.
    Idle {
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        url: String,
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// The server's process id, whose VmRSS is read before and after.
        #[arg(long)]
        pid: Option<u32>,
        /// Worker processes holding the connections (each needs a descriptor per connection).
        #[arg(long, default_value_t = 1)]
        processes: usize,
        #[arg(long, default_value_t = 4)]
        sources: usize,
        /// First source address: 127.0.0.N.
        #[arg(long, default_value_t = 1)]
        first_source: u8,
        /// Seconds the connections are held before the second reading.
        #[arg(long, default_value_t = 5.0)]
        hold_secs: f64,
        /// Also read clientmq's open gauge from /metrics.
        #[arg(long)]
        metrics: bool,
    },
    /// Holds connections for `idle` (started by it; not for direct use).
    #[command(hide = true)]
    IdleWorker {
        #[arg(long)]
        url: String,
        #[arg(long)]
        connections: usize,
        #[arg(long, default_value_t = 1)]
        sources: usize,
        #[arg(long, default_value_t = 1)]
        first_source: u8,
        #[arg(long, default_value_t = 0)]
        source_offset: usize,
        #[arg(long, default_value_t = 128)]
        connect_concurrency: usize,
        #[arg(long, default_value_t = 600)]
        max_hold_secs: u64,
    },
    /// Connections opened and closed in loops: cycles per second.
    Churn {
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        url: String,
        /// Concurrent open-close loops.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 1.0)]
        warmup_secs: f64,
        #[arg(long, default_value_t = 3.0)]
        duration_secs: f64,
        #[arg(long, default_value_t = 4)]
        sources: usize,
        /// Then check clientmq's open gauge on /metrics.
        #[arg(long)]
        metrics: bool,
    },
    /// Members in rooms and one publisher: deliveries/s, latency from publish to each receipt,
    /// every message heard once and in order, CPU per delivery and memory per member of `--pid`.
    Fanout {
        /// A gateway of the system (repeat for several: members are spread over them).
        #[arg(long = "url", default_value = "ws://127.0.0.1:8080/ws")]
        urls: Vec<String>,
        #[arg(long, default_value_t = 1000)]
        members: usize,
        #[arg(long, default_value_t = 1)]
        rooms: usize,
        #[arg(long, default_value_t = 1.0)]
        warmup_secs: f64,
        #[arg(long, default_value_t = 3.0)]
        duration_secs: f64,
        /// Messages per second over all rooms; full speed without.
        #[arg(long)]
        rate: Option<f64>,
        /// At full speed, messages whose deliveries may be under way at once.
        #[arg(long, default_value_t = 4)]
        window: usize,
        /// The plain protocol (`sub:`/`pub:`) of `clientmq-baseline --fanout` and the Node seed.
        #[arg(long)]
        plain: bool,
        #[arg(long, default_value_t = 4)]
        sources: usize,
        /// A process whose memory and CPU are read (repeat for several).
        #[arg(long = "pid")]
        pids: Vec<u32>,
        /// Every N-th member never reads (a stalled client); 0 for none.
        #[arg(long, default_value_t = 0)]
        slow_every: usize,
        /// Bytes added to every chat message.
        #[arg(long, default_value_t = 0)]
        pad_bytes: usize,
    },
    /// The bus's floor: a bare async-nats requester and responder on the load's schedule, CPU µs
    /// per request of each (`floor` in the library's docs).
    BusFloor {
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats: String,
        #[arg(long, default_value_t = 20_000.0)]
        rate: f64,
        #[arg(long, default_value_t = 100)]
        connections: usize,
        #[arg(long, default_value_t = 4.0)]
        secs: f64,
        #[arg(long, value_enum, default_value_t = Publish::Headers)]
        publish: Publish,
        /// Requests per bus message, standing for a contract that batches (1: the contract's).
        #[arg(long, default_value_t = 1)]
        batch: usize,
    },
    /// The floor's responder (started by `bus-floor`).
    #[command(hide = true)]
    BusFloorResponder {
        #[arg(long)]
        nats: String,
    },
    /// The floor's requester (started by `bus-floor`).
    #[command(hide = true)]
    BusFloorRequester {
        #[arg(long)]
        nats: String,
        #[arg(long)]
        rate: f64,
        #[arg(long)]
        connections: usize,
        #[arg(long)]
        secs: f64,
        #[arg(long, value_enum)]
        publish: Publish,
        #[arg(long)]
        batch: usize,
    },
    /// Everything, against clientmq-server, clientmq-baseline and the Node seed gateway started
    /// here; writes the table.
    Suite(Box<SuiteArgs>),
}

/// The suite's flags (boxed in [`Mode`]: they outweigh every other mode's).
#[derive(Args)]
struct SuiteArgs {
    #[arg(long, default_value = "target/release/clientmq-server")]
    server_bin: PathBuf,
    #[arg(long, default_value = "target/release/clientmq-baseline")]
    baseline_bin: PathBuf,
    /// The chat worker, for the bus figures.
    #[arg(long, default_value = "target/release/clientmq-chat")]
    chat_bin: PathBuf,
    /// nats-server, for the bus figures.
    #[arg(long, default_value = "nats-server")]
    nats_bin: PathBuf,
    /// Node.js (20 or later), which runs the seed gateway.
    #[arg(long, default_value = "node")]
    node_bin: PathBuf,
    /// The seed gateway's project; `npm ci --ignore-scripts` runs there when needed.
    #[arg(long, default_value = "bench/seed-gateway")]
    seed_gateway: PathBuf,
    /// The simulator binary; its figures are skipped without it.
    #[arg(long)]
    sim_bin: Option<PathBuf>,
    /// Repository root (for scenarios and git).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    #[arg(long, default_value = "target/bench")]
    logs: PathBuf,
    /// File whose bench:begin/bench:end block receives the table (BENCHMARKS.md).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    #[arg(long, default_value_t = 3.0)]
    duration_secs: f64,
    /// Idle connections (capped by the open-file limit); 20,000 by default.
    #[arg(long)]
    idle_connections: Option<usize>,
    #[arg(long, default_value_t = 5.0)]
    idle_hold_secs: f64,
    #[arg(long, default_value_t = 32)]
    churn_concurrency: usize,
    #[arg(long, default_value_t = 100)]
    explore_seeds: u64,
    /// Only the fan-out figures (their own block of the file).
    #[arg(long, conflicts_with_all = ["no_fanout", "only_store"])]
    only_fanout: bool,
    /// Everything but the fan-out figures.
    #[arg(long)]
    no_fanout: bool,
    /// Only the store figures: chat through JetStream workers (their own block of the file).
    #[arg(long, conflicts_with = "no_store")]
    only_store: bool,
    /// Everything but the store figures.
    #[arg(long)]
    no_store: bool,
    /// The command line recorded in the file.
    #[arg(long, default_value = "just bench")]
    command: String,
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO)
}

/// Says why a mode failed; its exit code.
fn failed(e: String) -> ExitCode {
    eprintln!("clientmq-load: {e}");
    ExitCode::FAILURE
}

fn target(url: &str) -> Result<Target, ExitCode> {
    Target::parse(url).map_err(|e| {
        eprintln!("clientmq-load: {e}");
        ExitCode::from(2)
    })
}

async fn open_gauge(target: &Target) -> String {
    for _ in 0..100 {
        if let Ok(text) = target.http_get("/metrics").await
            && let Some(open) = clientmq_bench::procfs::metric(&text, "clientmq_connections_open")
        {
            if open == 0.0 {
                return "0".into();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        return "unavailable".into();
    }
    "not 0 after 5 s".into()
}

async fn run(mode: Mode) -> Result<(), ExitCode> {
    match mode {
        Mode::Request { url, connections, warmup_secs, duration_secs, rate, sources, work } => {
            let opts = RequestOpts {
                connections,
                warmup: secs(warmup_secs),
                duration: secs(duration_secs),
                rate,
                sources,
                work,
                ..RequestOpts::default()
            };
            println!("{}", request::run(&target(&url)?, &opts).await.summary());
        }
        Mode::Idle { url, connections, pid, processes, sources, first_source, hold_secs, metrics } => {
            let exe = std::env::current_exe().map_err(|_| ExitCode::FAILURE)?;
            let opts = IdleOpts {
                connections,
                processes,
                sources,
                first_source,
                hold: secs(hold_secs),
                pid,
                metrics,
                connect_concurrency: 128,
            };
            match idle::run(&exe, &target(&url)?, &opts).await {
                Ok(report) => println!("{}", report.summary()),
                Err(e) => {
                    eprintln!("clientmq-load: {e}");
                    return Err(ExitCode::FAILURE);
                }
            }
        }
        Mode::IdleWorker {
            url,
            connections,
            sources,
            first_source,
            source_offset,
            connect_concurrency,
            max_hold_secs,
        } => {
            let t = target(&url)?;
            idle::worker(
                &t,
                connections,
                sources,
                first_source,
                source_offset,
                connect_concurrency,
                Duration::from_secs(max_hold_secs),
            )
            .await;
        }
        Mode::Fanout {
            urls,
            members,
            rooms,
            warmup_secs,
            duration_secs,
            rate,
            window,
            plain,
            sources,
            pids,
            slow_every,
            pad_bytes,
        } => {
            let targets = urls.iter().map(|u| target(u)).collect::<Result<Vec<_>, _>>()?;
            let opts = FanoutOpts {
                members,
                rooms,
                warmup: secs(warmup_secs),
                duration: secs(duration_secs),
                rate,
                window,
                protocol: if plain { Protocol::Plain } else { Protocol::Clientmq },
                sources,
                pids,
                slow_every,
                pad_bytes,
                ..FanoutOpts::default()
            };
            let report = fanout::run(&targets, &opts).await;
            println!("{}", report.summary());
            if !report.clean() {
                return Err(ExitCode::FAILURE);
            }
        }
        Mode::Churn { url, concurrency, warmup_secs, duration_secs, sources, metrics } => {
            let t = target(&url)?;
            let opts =
                ChurnOpts { concurrency, warmup: secs(warmup_secs), duration: secs(duration_secs), sources };
            let report = churn::run(&t, &opts).await;
            let gauge = if metrics { format!(" open_gauge={}", open_gauge(&t).await) } else { String::new() };
            println!("{}{gauge}", report.summary());
        }
        Mode::BusFloor { nats, rate, connections, secs: s, publish, batch } => {
            let exe = std::env::current_exe().map_err(|_| ExitCode::FAILURE)?;
            let offered = FloorLoad { publish, rate, connections, load: secs(s), batch };
            let r = floor::run(&exe, &nats, &offered).await.map_err(failed)?;
            println!(
                "publish={publish:?} batch={batch} rate={rate:.0} answered={} requester_cpu_us={:.2} \
                 responder_cpu_us={:.2}",
                r.answered, r.requester_us, r.responder_us
            );
        }
        Mode::BusFloorResponder { nats } => floor::responder(&nats).await.map_err(failed)?,
        Mode::BusFloorRequester { nats, rate, connections, secs: s, publish, batch } => {
            let offered = FloorLoad { publish, rate, connections, load: secs(s), batch };
            floor::requester(&nats, &offered).await.map_err(failed)?
        }
        Mode::Suite(args) => {
            let SuiteArgs {
                server_bin,
                baseline_bin,
                chat_bin,
                nats_bin,
                node_bin,
                seed_gateway,
                sim_bin,
                repo,
                logs,
                out,
                repeats,
                warmup_secs,
                duration_secs,
                idle_connections,
                idle_hold_secs,
                churn_concurrency,
                explore_seeds,
                only_fanout,
                no_fanout,
                only_store,
                no_store,
                command,
            } = *args;
            let opts = SuiteOpts {
                binaries: Binaries {
                    server: server_bin,
                    baseline: baseline_bin,
                    chat: chat_bin,
                    nats: nats_bin,
                    node: node_bin,
                    seed_gateway,
                    logs,
                },
                sim_bin,
                load_bin: std::env::current_exe().map_err(|_| ExitCode::FAILURE)?,
                repo,
                out,
                repeats,
                warmup: secs(warmup_secs),
                duration: secs(duration_secs),
                idle_connections,
                idle_hold: secs(idle_hold_secs),
                churn_concurrency,
                explore_seeds,
                main: !only_fanout && !only_store,
                fanout: !no_fanout && !only_store,
                store: !no_store && !only_fanout,
                command,
            };
            match suite::run(&opts).await {
                Ok(res) => {
                    if !res.fanout.is_empty() {
                        print!("{}", report::render_fanout(&res));
                    }
                    if !res.store.is_empty() {
                        print!("{}", report::render_store(&res));
                    }
                    if !res.rows.is_empty() {
                        print!("{}", report::render(&res));
                    }
                }
                Err(e) => {
                    eprintln!("clientmq-load: {e}");
                    return Err(ExitCode::FAILURE);
                }
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}
