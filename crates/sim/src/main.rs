//! clientmq-sim: replay, list and explore failure scenarios.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use clientmq_sim::{Scenario, explore, plot, run};

#[derive(Parser)]
#[command(name = "clientmq-sim", version, about = "Deterministic simulation of the clientmq gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay one scenario and check it.
    Replay {
        /// Path to a scenario file, or a name from scenarios/.
        scenario: String,
        /// Override the scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Write the trace (one event a line) to this file.
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Write an SVG timeline of open, closing and pending connections.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// List the scenarios in a folder.
    List {
        #[arg(long, default_value = "scenarios")]
        dir: PathBuf,
    },
    /// Run random scenarios (client mixes, shards, fleets, fault schedules), one per seed.
    Explore {
        /// How many seeds to try.
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// First seed.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Where a failing scenario is written, shrunk (`NAME-SEED.toml` when several fail).
        #[arg(long, default_value = "target/explore/explore-failure.toml")]
        out: PathBuf,
        /// Seeds run in parallel (each stays deterministic); 0 means one per CPU core.
        #[arg(long, default_value_t = 0)]
        jobs: usize,
        /// Collect every failure instead of stopping at the first.
        #[arg(long)]
        keep_going: bool,
        /// Runs a failure's shrinking may spend.
        #[arg(long, default_value_t = 400)]
        shrink_budget: usize,
    },
}

fn resolve(name: &str) -> PathBuf {
    let path = Path::new(name);
    if path.exists() {
        return path.to_owned();
    }
    let in_dir = Path::new("scenarios").join(name);
    if in_dir.extension().is_none() { in_dir.with_extension("toml") } else { in_dir }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Replay { scenario, seed, trace, plot: plot_path } => {
            let path = resolve(&scenario);
            let mut scenario = match Scenario::load(&path) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("clientmq-sim: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Some(seed) = seed {
                scenario.seed = seed;
            }
            let outcome = run(&scenario);
            let text = outcome.render(clientmq_sim::scenario::SnapshotMode::Full);
            let writes = [
                (trace, text),
                (plot_path, plot::svg(&outcome.samples, scenario.server.max_connections, &outcome.marks())),
            ];
            for (file, contents) in writes {
                if let Some(file) = file
                    && let Err(e) = std::fs::write(&file, contents)
                {
                    eprintln!("clientmq-sim: cannot write {}: {e}", file.display());
                    return ExitCode::from(2);
                }
            }
            let summary = outcome.render(clientmq_sim::scenario::SnapshotMode::Timeline);
            let tail = summary.split("--- end").nth(1).unwrap_or_default();
            println!("{}: seed {}, {} trace lines", path.display(), scenario.seed, outcome.records.len());
            print!("--- end{tail}");
            let ratio = outcome.simulated.as_secs_f64() / outcome.wall.as_secs_f64().max(1e-9);
            println!(
                "simulated {:.1}s in {:.2}s wall ({ratio:.0}x)",
                outcome.simulated.as_secs_f64(),
                outcome.wall.as_secs_f64()
            );
            if outcome.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Command::List { dir } => match clientmq_sim::scenario::list(&dir) {
            Ok(found) => {
                for (name, scenario) in found {
                    println!("{name:<36} {}", scenario.description);
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("clientmq-sim: {e}");
                ExitCode::from(2)
            }
        },
        Command::Explore { seeds, from, out, jobs, keep_going, shrink_budget } => {
            let jobs = match jobs {
                0 => std::thread::available_parallelism().map_or(1, usize::from),
                n => n,
            };
            explore::main(&explore::ExploreOpts { from, seeds, jobs, keep_going, out, shrink_budget })
        }
    }
}
