//! Random fault schedules: each seed enables a random subset of behaviours and faults over a
//! base scenario, runs it, and stops at the first failure with the exact replay command.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::scenario::{
    Action, BackendMode, Behaviour, ClientGroup, Expect, Scenario, ServerSettings, SnapshotMode, Step,
};

/// The scenario explored with `seed`: a small gateway, a random mix of client groups, and a
/// random timeline of faults and actions. Expectations are only the invariants (always checked).
pub fn scenario_for(seed: u64) -> Scenario {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut clients = Vec::new();
    for behaviour in Behaviour::ALL {
        if rng.random_bool(0.5) {
            clients.push(ClientGroup {
                name: format!("{behaviour:?}").to_lowercase(),
                behaviour,
                count: rng.random_range(1..=6),
                start_secs: rng.random_range(0.0..10.0),
                spread_secs: rng.random_range(0.0..5.0),
                requests: rng.random_range(0..4),
                stay_secs: rng.random_range(1.0..40.0),
                mute_after_secs: rng.random_bool(0.2).then(|| rng.random_range(0.0..30.0_f64).round()),
            });
        }
    }
    if clients.is_empty() {
        clients.push(ClientGroup {
            name: "polite".into(),
            behaviour: Behaviour::Polite,
            count: 3,
            start_secs: 0.0,
            spread_secs: 1.0,
            requests: 2,
            stay_secs: 10.0,
            mute_after_secs: None,
        });
    }
    let mut timeline = Vec::new();
    for _ in 0..rng.random_range(0..6) {
        let at_secs = rng.random_range(1.0..60.0_f64).round();
        let group = clients[rng.random_range(0..clients.len())].name.clone();
        let action = match rng.random_range(0..10) {
            9 => Action::Bounce,
            0 => Action::Partition { group },
            1 => Action::Repair { group },
            2 => Action::Hold { group },
            3 => Action::Release { group },
            4 => Action::Latency { group, ms: rng.random_range(1..500) },
            5 => Action::Drain,
            6 => Action::ServerRequest,
            7 => Action::Backend(match rng.random_range(0..3) {
                0 => BackendMode::Slow { delay_secs: rng.random_range(0.1..20.0_f64).round() },
                1 => BackendMode::Fail,
                _ => BackendMode::Hang,
            }),
            _ => Action::Crash { group },
        };
        timeline.push(Step { at_secs, action });
    }
    Scenario {
        description: format!("explore seed {seed}"),
        seed,
        duration_secs: 90.0,
        tick_ms: 10,
        tcp_capacity: 64,
        snapshot: SnapshotMode::Full,
        server: ServerSettings {
            max_connections: Some(rng.random_range(5..30)),
            heartbeat_secs: Some(rng.random_range(2.0..20.0_f64).round()),
            close_timeout_secs: Some(rng.random_range(1.0..6.0_f64).round()),
            request_timeout_secs: Some(rng.random_range(2.0..15.0_f64).round()),
            drain_window_secs: Some(rng.random_range(0.0..10.0_f64).round()),
            handshake_timeout_secs: Some(5.0),
            outbound_queue: Some(rng.random_range(2..64)),
            ..ServerSettings::default()
        },
        backend: BackendMode::Normal,
        clients,
        timeline,
        expect: Expect::default(),
    }
}

/// Runs seeds `from..from + count`; on the first failure writes the scenario to `out` and
/// prints how to replay it.
pub fn main(from: u64, count: u64, out: &Path) -> ExitCode {
    let started = std::time::Instant::now();
    for (done, seed) in (from..from + count).enumerate() {
        let scenario = scenario_for(seed);
        let outcome = crate::run(&scenario);
        let bar_width = 30;
        let filled = (done + 1) * bar_width / count.max(1) as usize;
        eprint!(
            "\r[{}{}] {}/{} seed {seed}",
            "#".repeat(filled),
            " ".repeat(bar_width - filled),
            done + 1,
            count
        );
        let _ = std::io::stderr().flush();
        if !outcome.passed() {
            eprintln!();
            if let Some(v) = &outcome.violation {
                eprintln!("seed {seed}: invariant broken: {v}");
            }
            for u in &outcome.unmet {
                eprintln!("seed {seed}: {u}");
            }
            if let Err(e) = std::fs::write(out, scenario.to_toml()) {
                eprintln!("cannot write {}: {e}", out.display());
                return ExitCode::from(2);
            }
            eprintln!("replay with: cargo run -p clientmq-sim -- replay {}", out.display());
            return ExitCode::FAILURE;
        }
    }
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    eprintln!();
    println!(
        "{count} seeds passed in {:.1}s ({:.1} seeds per minute)",
        minutes * 60.0,
        count as f64 / minutes.max(1e-9)
    );
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_scenarios_are_valid_and_round_trip_through_toml() {
        for seed in 0..50 {
            let s = scenario_for(seed);
            s.validate().unwrap();
            let back: Scenario = toml::from_str(&s.to_toml()).unwrap();
            assert_eq!(back, s, "seed {seed}");
        }
        assert_ne!(scenario_for(1), scenario_for(2));
    }
}
