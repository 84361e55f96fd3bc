//! Explored seeds that once failed, kept as scenarios: each must pass, replay byte for byte,
//! and still reach the situation it was kept for.
//!
//! `explore-seed-*`: seven seeds of the first explore generator (`--from 1000000`) whose restart
//! shared its instant with the dying gateway's last step (an accept, a heartbeat close). The
//! trace recorded the restart first, so the checker counted that step's events against the new
//! process: "gateway reports open=N but registered - disconnected = 1" and "closing since T and
//! past the close timeout". Now every gateway record names its process, the restart is recorded
//! after the dying process's last step, and each must still show such a step.

use std::path::Path;

use clientmq_sim::Scenario;

#[test]
fn once_failing_seeds_pass_and_still_restart_in_a_busy_instant() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/regressions");
    let mut paths: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    assert_eq!(paths.len(), 7, "{paths:?}");
    for path in paths {
        let scenario = Scenario::load(&path).unwrap();
        let first = clientmq_sim::run(&scenario);
        let name = path.display();
        assert!(first.passed(), "{name}: {:?} {:?}", first.violation.map(|v| v.to_string()), first.unmet);
        assert!(first.busy_restarts >= 1, "{name}: no restart met the dying gateway acting");
        let again = clientmq_sim::run(&scenario);
        assert!(first.render(scenario.snapshot) == again.render(scenario.snapshot), "{name}: runs differ");
    }
}
