//! The hard states of a fleet that explored seeds must reach, read off a run's trace: how often
//! each is hit is what `explore` reports, so a generator that stops reaching one shows.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clientmq_core::{ConnectionId, EventKind, Topic};

use crate::trace::{Body, Proc, Record, Seen, Source};

/// Which hard states a run reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reach {
    /// An orphans list or its answer was lost (more lists than answers crossed the bus).
    pub orphans_lost: bool,
    /// A client took its session over while its older connection was still open.
    pub takeover_while_open: bool,
    /// A connection joined a room on a gateway whose last reader of that room had just been
    /// dropped (within 2 s).
    pub rejoin_after_reader_dropped: bool,
    /// The bus restarted while connections were ending (within 1 s either way).
    pub bus_restart_while_ending: bool,
}

impl Reach {
    pub const NAMES: [&str; 4] = [
        "orphans-list-lost",
        "takeover-while-open",
        "rejoin-after-reader-dropped",
        "bus-restart-while-ending",
    ];

    pub fn hits(&self) -> [bool; 4] {
        [
            self.orphans_lost,
            self.takeover_while_open,
            self.rejoin_after_reader_dropped,
            self.bus_restart_while_ending,
        ]
    }
}

const REJOIN_WITHIN: Duration = Duration::from_secs(2);
const ENDING_WITHIN: Duration = Duration::from_secs(1);

pub fn reached(records: &[Record]) -> Reach {
    let mut reach = Reach::default();
    let (mut lists, mut answers) = (0usize, 0usize);
    // Client connections not seen ending, by client.
    let mut open: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();
    // Per gateway process: each connection's subscriptions, and when a room's last one went.
    let mut subs: BTreeMap<(&Proc, ConnectionId), BTreeSet<(Topic, &str)>> = BTreeMap::new();
    let mut dropped: BTreeMap<(&Proc, Topic, &str), Duration> = BTreeMap::new();
    let mut restarts = Vec::new();
    let mut endings = Vec::new();
    for r in records {
        match (&r.source, &r.body) {
            (_, Body::Published { subject, .. }) => {
                if subject.ends_with(".orphans") {
                    lists += 1;
                } else if subject.contains(".orphans.") {
                    answers += 1;
                }
            }
            (Source::Client(name), Body::Seen { conn, seen }) => match seen {
                Seen::Connected { .. } => {
                    open.entry(name).or_default().insert(*conn);
                }
                Seen::Session(_) if open.get(name.as_str()).is_some_and(|o| o.iter().any(|c| c < conn)) => {
                    reach.takeover_while_open = true;
                }
                Seen::Ended(_) => {
                    open.entry(name).or_default().remove(conn);
                    endings.push(r.at);
                }
                _ => {}
            },
            (Source::Gateway { proc, .. }, Body::Gateway { conn: Some(conn), kind }) => match kind {
                EventKind::Subscribed { topic, room } => {
                    if dropped.get(&(proc, *topic, room.as_str())).is_some_and(|t| r.at <= *t + REJOIN_WITHIN)
                    {
                        reach.rejoin_after_reader_dropped = true;
                    }
                    subs.entry((proc, *conn)).or_default().insert((*topic, room));
                }
                EventKind::Unsubscribed { topic, room } => {
                    if let Some(s) = subs.get_mut(&(proc, *conn)) {
                        s.remove(&(*topic, room.as_str()));
                    }
                    let others =
                        subs.iter().any(|((p, _), s)| *p == proc && s.contains(&(*topic, room.as_str())));
                    if !others {
                        dropped.insert((proc, *topic, room), r.at);
                    }
                }
                EventKind::Disconnected { .. } => {
                    for (topic, room) in subs.remove(&(proc, *conn)).unwrap_or_default() {
                        if !subs.iter().any(|((p, _), s)| *p == proc && s.contains(&(topic, room))) {
                            dropped.insert((proc, topic, room), r.at);
                        }
                    }
                    endings.push(r.at);
                }
                _ => {}
            },
            (Source::Sim, Body::Note(note)) if note == "bus restarted" => restarts.push(r.at),
            _ => {}
        }
    }
    reach.orphans_lost = lists > answers;
    reach.bus_restart_while_ending =
        restarts.iter().any(|t| endings.iter().any(|e| e.abs_diff(*t) <= ENDING_WITHIN));
    reach
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Digest;

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn id(c: char) -> ConnectionId {
        c.to_string().repeat(32).parse().unwrap()
    }

    fn gw(ms: u64, conn: char, kind: EventKind) -> Record {
        Record::gateway(at(ms), Proc::new("gw1", 0), None, Some(id(conn)), kind)
    }

    fn seen(ms: u64, conn: u32, seen: Seen) -> Record {
        Record { at: at(ms), source: Source::Client("m-0".into()), body: Body::Seen { conn, seen } }
    }

    fn published(ms: u64, subject: &str) -> Record {
        let body = Body::Published { subject: subject.into(), digest: Digest(1), to: Vec::new() };
        Record { at: at(ms), source: Source::Bus, body }
    }

    #[test]
    fn each_hard_state_is_recognised_and_only_when_it_happens() {
        let sub = |ms, c, on: bool| {
            let (topic, room) = (Topic::Room, "r".to_owned());
            let kind = if on {
                EventKind::Subscribed { topic, room }
            } else {
                EventKind::Unsubscribed { topic, room }
            };
            gw(ms, c, kind)
        };
        let records = vec![
            published(100, "p.gw.gw1.0.orphans"),
            published(200, "p.wk.w.orphans.gw1.0.1"),
            seen(300, 0, Seen::Connected { gateway: "gw1".into() }),
            seen(400, 0, Seen::Session("s".into())),
            sub(500, 'a', true),
            sub(600, 'a', false),
            sub(3000, 'a', true),
        ];
        assert_eq!(reached(&records), Reach::default(), "answered, no takeover, re-joined late");
        let mut hard = records;
        hard.extend([
            published(4000, "p.gw.gw1.0.orphans"),
            seen(4100, 1, Seen::Connected { gateway: "gw1".into() }),
            seen(4200, 1, Seen::Session("s".into())),
            sub(4300, 'a', false),
            sub(5000, 'a', true),
            Record::sim(at(6000), "bus restarted"),
            gw(
                6500,
                'a',
                EventKind::Disconnected { path: clientmq_core::DisconnectPath::Forced, code: 1001, open: 0 },
            ),
        ]);
        assert_eq!(reached(&hard).hits(), [true; 4]);
    }
}
