//! Every scenario in `scenarios/`: run twice (same seed, same bytes), checked against its
//! invariants and expectations, and snapshotted under `snapshots/` for review in pull requests.
//! Broken invariants are reported before any snapshot is compared, so a reviewer never accepts
//! a snapshot that hides one.

use std::path::Path;

use clientmq_sim::scenario::list;

#[test]
fn every_scenario_replays_byte_for_byte_passes_and_matches_its_snapshot() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let scenarios = list(&root.join("scenarios")).expect("scenarios load");
    assert!(
        scenarios.len() >= 17,
        "one scenario per seed path plus the incidents, found {}",
        scenarios.len()
    );
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(root.join("snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    let mut failures = Vec::new();
    let mut texts = Vec::new();
    for (name, scenario) in &scenarios {
        let first = clientmq_sim::run(scenario);
        let text = first.render(scenario.snapshot);
        let again = clientmq_sim::run(scenario).render(scenario.snapshot);
        if text != again {
            failures.push(format!("{name}: two runs with seed {} differ", scenario.seed));
        }
        if !first.passed() {
            failures.push(format!("{name}: {:?} {:?}", first.violation.map(|v| v.to_string()), first.unmet));
        }
        texts.push((name, scenario, text));
    }
    assert!(failures.is_empty(), "scenarios failed:\n{}", failures.join("\n"));
    for (name, scenario, text) in texts {
        settings.set_description(scenario.description.clone());
        settings.bind(|| insta::assert_snapshot!(name.as_str(), text));
    }
}
