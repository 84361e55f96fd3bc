//! A fixed block of explored seeds on every test run: random mixes of misbehaving clients,
//! shards, restarts, partitions, drains and backend faults, each checked after every event.
//! Larger blocks run with `clientmq-sim explore` (BENCHMARKS.md reports 100,000).

use clientmq_sim::RunOptions;
use clientmq_sim::explore::{ExploreOpts, explore};
use clientmq_sim::shrink::Size;

#[test]
fn a_block_of_explored_seeds_runs_clean() {
    let jobs = std::thread::available_parallelism().map_or(2, usize::from);
    let opts = ExploreOpts {
        from: 7_000_000,
        seeds: 300,
        jobs,
        keep_going: true,
        out: "unused.toml".into(),
        shrink_budget: 100,
    };
    let report = explore(&opts, &RunOptions::default(), false);
    let failures: Vec<String> = report
        .failures
        .iter()
        .map(|f| {
            format!(
                "seed {}: {} (shrunk to {}):\n{}",
                f.seed,
                f.failure,
                Size::of(&f.shrunk),
                f.shrunk.to_toml()
            )
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(report.passed, 300);
    assert!(report.restarts > 0 && report.restarts_busy > 0, "the block restarts gateways mid-step");
}
