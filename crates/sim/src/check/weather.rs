//! The faults of the timeline as the delivery checks read them: which hosts and client groups
//! are cut off now, and until when each may still be recovering from its last fault.
//!
//! A check that requires something to arrive exempts a path while it is cut off and for
//! [`SETTLE`] after it is restored: a bus client notices a dead connection within three pings
//! and reconnects within a second, and what was published meanwhile is lost (NATS core).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How long a path may take to recover after a fault ends: a bus client's three missed pings
/// (1 s apart), its longest back-off (1 s) and a second to resubscribe and sync.
pub const SETTLE: Duration = Duration::from_secs(5);

/// Who every host shares: a restart of the bus disturbs everyone.
const EVERYONE: &str = "*";

/// The kind of cut a fault makes or ends.
fn how(fault: &str) -> &'static str {
    match fault {
        "partition-bus" | "repair-bus" => "bus",
        "hold" | "release" => "hold",
        _ => "partition",
    }
}

#[derive(Debug, Clone, Default)]
pub struct Weather {
    /// Hosts and client groups cut off now, by how (a partition not yet repaired, a hold not
    /// yet released: a release does not repair a partition).
    cut: BTreeSet<(&'static str, String)>,
    /// When each may be counted recovered from its last fault.
    calm_at: BTreeMap<String, Duration>,
    /// Latency set on a client group's links.
    latency: BTreeMap<String, Duration>,
}

impl Weather {
    /// Reads one of the simulator's notes (others are ignored).
    pub fn note(&mut self, at: Duration, note: &str) {
        let mut words = note.split(' ');
        let (Some(first), second) = (words.next(), words.next()) else { return };
        let calm = |w: &mut Weather, who: &str| {
            w.calm_at.insert(who.to_owned(), at + SETTLE);
        };
        match (first, second) {
            ("partition-bus" | "partition" | "hold", Some(who)) => {
                self.cut.insert((how(first), who.to_owned()));
                calm(self, who);
            }
            ("repair-bus" | "repair" | "release", Some(who)) => {
                self.cut.remove(&(how(first), who.to_owned()));
                calm(self, who);
            }
            ("latency", Some(who)) => {
                let ms = words.next().and_then(|w| w.strip_suffix("ms")?.parse().ok()).unwrap_or(0);
                self.latency.insert(who.to_owned(), Duration::from_millis(ms));
                calm(self, who);
            }
            ("bus", Some("restarted")) => calm(self, EVERYONE),
            _ => {}
        }
    }

    /// From when a path through `who` (hosts and groups) counts as calm: `None` while one of them
    /// is cut off.
    pub fn calm_from<'a>(&self, who: impl IntoIterator<Item = &'a str>) -> Option<Duration> {
        let mut from = self.calm_at.get(EVERYONE).copied().unwrap_or_default();
        for w in who {
            if self.cut.iter().any(|(_, who)| who == w) {
                return None;
            }
            from = from.max(self.calm_at.get(w).copied().unwrap_or_default());
        }
        Some(from)
    }

    /// Latency added to a client group's links.
    pub fn latency(&self, group: &str) -> Duration {
        self.latency.get(group).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_calm_a_settling_time_after_its_last_fault_and_never_while_cut() {
        let s = Duration::from_secs;
        let mut w = Weather::default();
        assert_eq!(w.calm_from(["gw1", "east"]), Some(Duration::ZERO));
        w.note(s(10), "partition-bus gw1");
        assert_eq!(w.calm_from(["gw1", "east"]), None);
        assert_eq!(w.calm_from(["gw2"]), Some(Duration::ZERO));
        w.note(s(20), "repair-bus gw1");
        assert_eq!(w.calm_from(["gw1", "east"]), Some(s(20) + SETTLE));
        w.note(s(30), "bus restarted");
        assert_eq!(w.calm_from(["gw2"]), Some(s(30) + SETTLE));
        w.note(s(40), "latency east 300ms");
        assert_eq!(w.latency("east"), Duration::from_millis(300));
        assert_eq!(w.calm_from(["gw1", "east"]), Some(s(40) + SETTLE));
        w.note(s(45), "partition east");
        w.note(s(46), "release east");
        assert_eq!(w.calm_from(["east"]), None, "a release does not repair a partition");
        w.note(s(47), "repair east");
        assert_eq!(w.calm_from(["east"]), Some(s(47) + SETTLE));
        w.note(s(50), "gw1 restarted");
        assert_eq!(w.calm_from(["gw1"]), Some(s(30) + SETTLE));
    }
}
