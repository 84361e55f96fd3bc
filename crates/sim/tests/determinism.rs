//! Same seed, same trace, byte for byte, within one process too: runs with crashes and
//! gateway restarts used to depend on process-global task ids and tokio's per-process RNG.

use clientmq_sim::explore::scenario_for;
use clientmq_sim::scenario::Action;

#[test]
fn crashes_and_restarts_replay_identically_in_one_process() {
    let scenarios: Vec<_> = (0..40)
        .map(scenario_for)
        .filter(|s| s.timeline.iter().any(|t| matches!(t.action, Action::Bounce | Action::Crash { .. })))
        .collect();
    assert!(scenarios.len() >= 5, "explore seeds 0..40 should include crashes and restarts");
    for s in &scenarios {
        let runs: Vec<String> = (0..3).map(|_| clientmq_sim::run(s).render(s.snapshot)).collect();
        assert!(runs[0] == runs[1] && runs[1] == runs[2], "{}: runs differ", s.description);
    }
}
