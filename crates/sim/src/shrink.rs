//! Shrinking: a failing scenario made as small as it can be while the same invariant still
//! breaks. Greedy delta debugging over the scenario's parts: whole client groups, timeline
//! steps, group sizes, then the run's length and the groups' timings. A candidate is kept only
//! if it fails the same way (the same violation class, or the same unmet expectation).

use crate::run::{Outcome, RunOptions, run_with};
use crate::scenario::Scenario;

/// How a run failed, in a form two runs of different scenarios can be compared by.
pub fn failure(outcome: &Outcome) -> Option<String> {
    if let Some(v) = &outcome.violation {
        return Some(format!("violation: {}", v.class()));
    }
    outcome.unmet.first().map(|u| format!("unmet: {u}"))
}

/// The size of a scenario as shrinking counts it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Size {
    pub groups: usize,
    pub clients: usize,
    pub steps: usize,
    pub secs: f64,
}

impl Size {
    pub fn of(s: &Scenario) -> Size {
        Size {
            groups: s.clients.len(),
            clients: s.clients.iter().map(|g| g.count).sum(),
            steps: s.timeline.len(),
            secs: s.duration_secs,
        }
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} client groups, {} clients, {} timeline steps, {}s",
            self.groups, self.clients, self.steps, self.secs
        )
    }
}

/// Shrinks `scenario`, which fails as `target` (see [`failure`]), within `budget` runs.
pub fn shrink(scenario: &Scenario, target: &str, options: &RunOptions, budget: usize) -> Scenario {
    let mut best = scenario.clone();
    // When the invariant broke in the best scenario so far: the run need not go on after it.
    let mut broke_at = failed_at(&run_with(&best, options));
    let mut runs = 0;
    loop {
        let before = Size::of(&best);
        for candidate in candidates(&best, broke_at) {
            if runs >= budget {
                return best;
            }
            if candidate.validate().is_err() {
                continue;
            }
            runs += 1;
            let outcome = run_with(&candidate, options);
            if failure(&outcome).as_deref() == Some(target) {
                best = candidate;
                broke_at = failed_at(&outcome);
                break; // restart from the smaller scenario: earlier reductions may apply now
            }
        }
        if Size::of(&best) == before {
            return best;
        }
    }
}

fn failed_at(outcome: &Outcome) -> Option<f64> {
    outcome.violation.as_ref().map(|v| v.at.as_secs_f64())
}

/// Every one-step reduction of `s`, biggest first.
fn candidates(s: &Scenario, broke_at: Option<f64>) -> Vec<Scenario> {
    let mut out = Vec::new();
    for i in 0..s.clients.len() {
        let mut c = s.clone();
        let gone = c.clients.remove(i).name;
        c.timeline.retain(|step| step.action.group() != Some(gone.as_str()));
        out.push(c);
    }
    for i in 0..s.timeline.len() {
        let mut c = s.clone();
        c.timeline.remove(i);
        out.push(c);
    }
    for i in 0..s.clients.len() {
        let count = s.clients[i].count;
        for smaller in [1, count / 2, count.saturating_sub(1)] {
            if smaller >= 1 && smaller < count {
                let mut c = s.clone();
                c.clients[i].count = smaller;
                out.push(c);
            }
        }
    }
    // Shorter runs: end just after the break, or after the last step, or halve.
    let last = s.timeline.iter().map(|t| t.at_secs).fold(0.0_f64, f64::max);
    let after_break = broke_at.map_or(s.duration_secs, |at| at.floor() + 1.0);
    for secs in [after_break, (last + 5.0).ceil(), (s.duration_secs / 2.0).ceil()] {
        if secs >= 1.0 && secs < s.duration_secs {
            let mut c = s.clone();
            c.duration_secs = secs;
            out.push(c);
        }
    }
    for i in 0..s.clients.len() {
        let g = &s.clients[i];
        if g.spread_secs > 0.0 {
            let mut c = s.clone();
            c.clients[i].spread_secs = 0.0;
            out.push(c);
        }
        if g.requests > 0 {
            let mut c = s.clone();
            c.clients[i].requests = 0;
            out.push(c);
        }
        if g.mute_after_secs.is_some() {
            let mut c = s.clone();
            c.clients[i].mute_after_secs = None;
            out.push(c);
        }
    }
    out
}
