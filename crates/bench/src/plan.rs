//! What a suite run is given and what its parts share: the options, the flags every gateway
//! under test takes, the order of each round, and progress logging.

use std::path::PathBuf;
use std::time::Duration;

use crate::servers::Binaries;

/// Flags clientmq-server and the seed gateway both take: room for every connection the suite
/// opens (the seed's default limit is 2,000).
pub const GATEWAY_FLAGS: [&str; 2] = ["--max-connections", "20000"];

#[derive(Debug, Clone)]
pub struct SuiteOpts {
    pub binaries: Binaries,
    pub sim_bin: Option<PathBuf>,
    /// This binary, for the idle workers.
    pub load_bin: PathBuf,
    /// The repository root (the simulator's scenarios are read from it).
    pub repo: PathBuf,
    pub out: Option<PathBuf>,
    pub repeats: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub idle_connections: Option<usize>,
    pub idle_hold: Duration,
    pub churn_concurrency: usize,
    pub explore_seeds: u64,
    /// Which parts run: the main block (requests, churn, bus, idle, simulator), fan-out, and
    /// the store (chat through JetStream).
    pub main: bool,
    pub fanout: bool,
    pub store: bool,
    /// The command line recorded in the file.
    pub command: String,
}

/// Progress, to stderr.
pub fn log(line: impl AsRef<str>) {
    eprintln!("[bench] {}", line.as_ref());
}

/// The order of round `r`: each server goes first in turn, and the others follow in column order.
pub fn round(r: usize) -> [usize; 3] {
    [r % 3, (r + 1) % 3, (r + 2) % 3]
}
