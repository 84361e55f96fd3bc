//! A failure found by explore is shrunk before it is written: with a bug planted in what the
//! gateway reports (the seed's leak: a connection that ends after a heartbeat timeout is not
//! subtracted), the scenario explore writes is small and still breaks the same invariant.

use std::sync::Arc;

use clientmq_core::EventKind;
use clientmq_sim::RunOptions;
use clientmq_sim::explore::{ExploreOpts, explore};
use clientmq_sim::shrink::{Size, failure};

fn seeds_leak() -> RunOptions {
    let plant = |kind: &mut EventKind| {
        if let EventKind::Disconnected { code: 3334, open, .. } = kind {
            *open += 1;
        }
    };
    RunOptions { plant: Some(Arc::new(plant)) }
}

#[test]
fn a_planted_leak_is_found_and_shrunk_to_its_essence() {
    let opts = ExploreOpts {
        from: 500,
        seeds: 40,
        jobs: 2,
        keep_going: false,
        out: "unused.toml".into(),
        shrink_budget: 300,
    };
    let report = explore(&opts, &seeds_leak(), false);
    let found = report.failures.first().expect("40 seeds include a heartbeat timeout");
    assert!(found.failure.contains("gateway reports but registered - disconnected ="), "{}", found.failure);
    let shrunk = Size::of(&found.shrunk);
    eprintln!("seed {}: shrunk from {} to {shrunk}", found.seed, found.original);
    assert!(shrunk.groups <= 2 && shrunk.steps <= 2, "not small: {shrunk}");
    assert!(shrunk.clients <= 2 && shrunk.secs < found.original.secs, "not small: {shrunk}");
    // Still the same failure, and only because of the planted bug.
    let again = clientmq_sim::run_with(&found.shrunk, &seeds_leak());
    assert_eq!(failure(&again).as_deref(), Some(found.failure.as_str()));
    assert!(clientmq_sim::run(&found.shrunk).passed());
}
