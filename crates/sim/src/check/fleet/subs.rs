//! What each connection is subscribed to at its gateway, held to what the worker decided its
//! session hears (its [`Fact::Hears`] and [`Fact::Left`]):
//!
//! - **Subscribed before answered.** When a gateway answers a request on a connection, the
//!   connection is subscribed to everything the worker had decided its session hears: the
//!   subscriptions a worker sends go out before its reply. A reply that overtakes them would
//!   let the client act on a room it does not hear yet. Not what a decision after a request the
//!   gateway gave up on (timed out) decided: that decision may land at any later time, and
//!   another worker's answer to the connection's next request is not ordered with its
//!   subscriptions (explore seed 500,017,884); the quiet rule below holds them.
//! - **Quiet instants agree.** A connection's subscriptions differ from its session's rooms and
//!   conversations (nothing, once its session is gone or taken over) for at most
//!   [`FleetLimits::quiet_within`], unless the bus between its gateway and the worker is cut off
//!   or settling ([`Weather`]), the worker died since it opened (in its memory: what it knew is
//!   gone), or its gateway was counted gone (the next rule's business). On the store, a
//!   difference pending when a worker dies, or starting within `quiet_within` of the death (a
//!   decision in flight), is what the dead worker did not tell: a worker's sweep, once a second,
//!   tells it, so it is owed a sweep and `quiet_within` after some worker is connected again
//!   (and after the death).
//! - **Orphans are closed.** A connection whose gateway was counted gone while it had a session
//!   is closed (or ends) within [`FleetLimits::orphans_within`] of its gateway's return (on the
//!   store: of the record there of its end, which every worker reads, and which for an open
//!   connection only a gateway counted gone explains), counted from when the path between
//!   the gateway and the workers is calm again and some worker can tell it, whatever lists or
//!   answers the bus lost on the way.
//!
//! [`Fact::Hears`]: clientmq_chat::Fact::Hears
//! [`Fact::Left`]: clientmq_chat::Fact::Left

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clientmq_core::{ConnectionId, Topic};

use super::super::weather::Weather;
use super::super::{Violation, violation};
use super::{CONTRACT_ANNOUNCE_EVERY, FleetLimits};
use crate::trace::Proc;

type Subject = (Topic, String);

#[derive(Debug, Clone)]
struct Conn {
    proc: Proc,
    subs: BTreeSet<Subject>,
    /// Open when the worker died: the worker that followed knows nothing of it.
    unknown: bool,
    /// Had a session when its gateway was counted gone: an orphan if the gateway comes back.
    orphan: bool,
    /// Its gateway is closing it.
    closing: bool,
    /// When the first request on it that the gateway gave up on (timed out) was forwarded: what
    /// was decided since is not ordered with other answers.
    gave_up_from: Option<Duration>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Subs {
    conns: BTreeMap<ConnectionId, Conn>,
    /// What each session hears, and since when.
    hears: BTreeMap<String, BTreeMap<Subject, Duration>>,
    /// Connections whose subscriptions disagree with their session's, by when they must agree.
    mismatch: BTreeSet<(Duration, ConnectionId)>,
    mismatch_of: BTreeMap<ConnectionId, Duration>,
    /// Of those, the ones a dead worker left for a sweep to repair.
    repairs: BTreeSet<ConnectionId>,
    /// On the store: when a worker last died.
    worker_died_at: Option<Duration>,
    /// Orphans of a gateway that came back, by when they must be closed.
    orphans: BTreeSet<(Duration, ConnectionId)>,
    orphan_of: BTreeMap<ConnectionId, Duration>,
    /// The faults so far, and the worker hosts (a path to the worker runs through them).
    pub(super) weather: Weather,
    pub(super) workers: Vec<String>,
}

impl Subs {
    pub(super) fn opened(&mut self, proc: &Proc, conn: ConnectionId) {
        let c = Conn {
            proc: proc.clone(),
            subs: BTreeSet::new(),
            unknown: false,
            orphan: false,
            closing: false,
            gave_up_from: None,
        };
        self.conns.insert(conn, c);
    }

    pub(super) fn ended(&mut self, conn: ConnectionId) {
        self.conns.remove(&conn);
        self.clear(conn);
        if let Some(due) = self.orphan_of.remove(&conn) {
            self.orphans.remove(&(due, conn));
        }
    }

    /// The gateway is closing the connection (3336 for an orphan): owed nothing more, whether
    /// or not the client answers its close frame.
    pub(super) fn closing(&mut self, conn: ConnectionId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.closing = true;
        }
        if let Some(due) = self.orphan_of.remove(&conn) {
            self.orphans.remove(&(due, conn));
        }
    }

    pub(super) fn subscribed(
        &mut self,
        at: Duration,
        limits: &FleetLimits,
        conn: ConnectionId,
        subject: Subject,
        on: bool,
        session: Option<&String>,
    ) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if on {
                c.subs.insert(subject);
            } else {
                c.subs.remove(&subject);
            }
        }
        self.recheck(at, limits, conn, session);
    }

    /// What a session hears changed at `at` (`on`: it hears `subject`; off: it left the room).
    pub(super) fn hears(&mut self, at: Duration, session: &str, subject: Subject, on: bool) {
        let hears = self.hears.entry(session.to_owned()).or_default();
        if on {
            hears.entry(subject).or_insert(at);
        } else {
            hears.retain(|(_, room), _| *room != subject.1);
        }
    }

    /// The gateway gave up on a request on `conn` forwarded at `forwarded` (it timed out).
    pub(super) fn gave_up(&mut self, conn: ConnectionId, forwarded: Duration) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.gave_up_from.get_or_insert(forwarded);
        }
    }

    pub(super) fn session_ended(&mut self, session: &str) {
        self.hears.remove(session);
    }

    /// A gateway answered a request on `conn`, bound to `session`.
    pub(super) fn answered(
        &self,
        at: Duration,
        conn: ConnectionId,
        request_type: &str,
        session: Option<&String>,
    ) -> Result<(), Violation> {
        let Some(c) = self.conns.get(&conn) else { return Ok(()) };
        let Some(session) = session.filter(|_| !c.unknown && !c.orphan) else { return Ok(()) };
        let missing: Vec<String> = self
            .hears
            .get(session)
            .into_iter()
            .flatten()
            .filter(|(_, since)| c.gave_up_from.is_none_or(|from| **since < from))
            .filter(|(s, _)| !c.subs.contains(*s))
            .map(|((topic, room), _)| format!("{} {room}", topic.label()))
            .collect();
        if !missing.is_empty() {
            return violation(
                at,
                Some(conn),
                format!(
                    "{}: answered {request_type} before subscribing it to {}",
                    c.proc,
                    missing.join(", ")
                ),
            );
        }
        Ok(())
    }

    /// Compares a connection's subscriptions with its session's.
    pub(super) fn recheck(
        &mut self,
        at: Duration,
        limits: &FleetLimits,
        conn: ConnectionId,
        session: Option<&String>,
    ) {
        let agree = match self.conns.get(&conn) {
            None => true,
            Some(c) if c.unknown || c.orphan => true,
            Some(c) => {
                let hears = session.and_then(|s| self.hears.get(s));
                hears.map_or(c.subs.is_empty(), |h| h.keys().eq(c.subs.iter()))
            }
        };
        if agree {
            self.clear(conn);
        } else if self.calm_from(&conn).is_none_or(|calm| at < calm) {
            // Disagreeing while the path is cut off or settling: what is on its way may be lost.
            if let Some(c) = self.conns.get_mut(&conn) {
                c.unknown = true;
            }
            self.clear(conn);
        } else if !self.mismatch_of.contains_key(&conn) {
            let due = at + limits.quiet_within;
            self.mismatch.insert((due, conn));
            self.mismatch_of.insert(conn, due);
            if self.worker_died_at.is_some_and(|died| at <= died + limits.quiet_within) {
                self.repairs.insert(conn);
            }
        }
    }

    fn clear(&mut self, conn: ConnectionId) {
        if let Some(due) = self.mismatch_of.remove(&conn) {
            self.mismatch.remove(&(due, conn));
        }
        self.repairs.remove(&conn);
    }

    /// On the store, a worker died at `at`: what it was about to tell, pending or in flight,
    /// is a sweep's to repair.
    pub(super) fn worker_died_on_store(&mut self, at: Duration) {
        self.worker_died_at = Some(at);
        self.repairs.extend(self.mismatch_of.keys().copied());
    }

    /// The path between the worker and the gateways `on` picks was disturbed: a connection whose
    /// subscriptions were on their way may never get them.
    pub(super) fn disturbed(&mut self, on: impl Fn(&Proc) -> bool) {
        let waiting: Vec<ConnectionId> = self.mismatch_of.keys().copied().collect();
        for id in waiting {
            if let Some(c) = self.conns.get_mut(&id)
                && on(&c.proc)
            {
                c.unknown = true;
                self.clear(id);
            }
        }
    }

    /// The worker died: what it decided is gone with it, and nothing is due.
    pub(super) fn worker_died(&mut self) {
        for c in self.conns.values_mut() {
            c.unknown = true;
            // Its orphans died with it: the next worker tells a returning gateway only its own.
            c.orphan = false;
        }
        self.hears.clear();
        self.mismatch.clear();
        self.mismatch_of.clear();
        self.repairs.clear();
        self.orphans.clear();
        self.orphan_of.clear();
    }

    /// Gateway process `proc` was counted gone: its connections with a session are orphans.
    pub(super) fn gateway_gone(&mut self, proc: &Proc, bound: impl Fn(&ConnectionId) -> bool) {
        let orphans: Vec<ConnectionId> =
            self.conns.iter().filter(|(id, c)| c.proc == *proc && bound(id)).map(|(id, _)| *id).collect();
        for id in orphans {
            if let Some(c) = self.conns.get_mut(&id) {
                c.orphan = true;
            }
            self.clear(id);
        }
    }

    /// Gateway process `proc` is back: its orphans are to be closed.
    pub(super) fn gateway_back(&mut self, at: Duration, limits: &FleetLimits, proc: &Proc) {
        let orphans: Vec<ConnectionId> =
            self.conns.iter().filter(|(_, c)| c.proc == *proc && c.orphan).map(|(id, _)| *id).collect();
        for id in orphans {
            self.due_closed(at, limits, id);
        }
    }

    /// On the store: `conn`'s end is recorded while it is open, so it can never hold a session
    /// again. Its gateway had said nothing of its end, so it was counted gone: `conn` is an
    /// orphan any worker that hears the gateway tells it to close, due now, whether or not a
    /// worker counted its gateway gone or back.
    pub(super) fn end_recorded(&mut self, at: Duration, limits: &FleetLimits, conn: ConnectionId) {
        let Some(c) = self.conns.get_mut(&conn).filter(|c| !c.closing) else { return };
        c.orphan = true;
        self.clear(conn);
        self.due_closed(at, limits, conn);
    }

    fn due_closed(&mut self, at: Duration, limits: &FleetLimits, conn: ConnectionId) {
        if !self.orphan_of.contains_key(&conn) {
            let due = at + limits.orphans_within;
            self.orphans.insert((due, conn));
            self.orphan_of.insert(conn, due);
        }
    }

    /// From when the path between a connection's gateway and the worker counts as calm.
    fn calm_from(&self, conn: &ConnectionId) -> Option<Duration> {
        let c = self.conns.get(conn)?;
        let path = std::iter::once(&*c.proc.host).chain(self.workers.iter().map(String::as_str));
        self.weather.calm_from(path)
    }

    /// `able`: since when some worker could tell a gateway its orphans (none: no worker can).
    pub(super) fn check_time(
        &self,
        at: Duration,
        limits: &FleetLimits,
        able: Option<Duration>,
    ) -> Result<(), Violation> {
        let late = |due: Duration, conn: &ConnectionId, within: Duration| {
            self.calm_from(conn).is_some_and(|calm| due.max(calm + within) + limits.tolerance < at)
        };
        // Past due but exempt (its path is not calm) is skipped, not a stop: a gateway cut off
        // for good must not hide the others.
        let overdue = |set: &BTreeSet<(Duration, ConnectionId)>| {
            set.iter()
                .take_while(|(due, _)| *due + limits.tolerance < at)
                .map(|(due, c)| (*due, *c))
                .collect::<Vec<_>>()
        };
        let within = limits.quiet_within;
        // A repair is owed a sweep and a quiet bound after the death, once some worker can make
        // it (`able`: connected, and its path calm).
        let died = self.worker_died_at.unwrap_or_default();
        let mismatch_late = |due: Duration, c: &ConnectionId| match self.repairs.contains(c) {
            false => late(due, c, within),
            true => able.is_some_and(|able| {
                late(due.max(died.max(able) + CONTRACT_ANNOUNCE_EVERY + within), c, within)
            }),
        };
        if let Some((due, conn)) = overdue(&self.mismatch).into_iter().find(|(due, c)| mismatch_late(*due, c))
        {
            let conn = &conn;
            let c = &self.conns[conn];
            let subs: Vec<String> = c.subs.iter().map(|(t, r)| format!("{} {r}", t.label())).collect();
            return violation(
                at,
                Some(*conn),
                format!(
                    "{}: subscribed to [{}], which is not what its session hears, since {:?}",
                    c.proc,
                    subs.join(", "),
                    due - limits.quiet_within
                ),
            );
        }
        let within = limits.orphans_within;
        let Some(able) = able else { return Ok(()) };
        let late = |due: Duration, c: &ConnectionId| late(due.max(able + within), c, within);
        if let Some((_, conn)) = overdue(&self.orphans).into_iter().find(|(due, c)| late(*due, c)) {
            let c = &self.conns[&conn];
            return violation(
                at,
                Some(conn),
                format!(
                    "{}: orphaned and still open {:?} after its gateway came back (on the store: after its end was recorded)",
                    c.proc, limits.orphans_within
                ),
            );
        }
        Ok(())
    }
}
