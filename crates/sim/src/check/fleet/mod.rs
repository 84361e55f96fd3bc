//! The fleet's invariants, across gateways and the chat worker: which connection holds which
//! session (from the worker's facts), and what must follow a gateway's death.
//!
//! - A session is attached to at most one connection at a time.
//! - The sessions of a dead gateway's connections are detached within the documented bound: 5 s
//!   without announcements plus the worker's 1 s tick plus the bus's delivery time (its last
//!   announcement may still be on the way), counted from the death or from the worker's return
//!   to the bus, whichever is later (a worker away from the bus counts nobody gone).
//! - A detached session ends (its member leaves every room: the worker's own invariants hold
//!   after every step) within its grace period, unless a connection resumes it first.
//! - The worker's state keeps its invariants after every step.
//!
//! Each check looks only at the earliest obligation: O(log n) per record.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clientmq_chat::Fact;
use clientmq_chat::worker::WorkerEvent;
use clientmq_core::{ConnectionId, EventKind, RequestOutcome};

use super::{Violation, violation};
use crate::trace::Proc;

mod subs;

/// docs/nats.md, "Liveness, loss and recovery", as the checker reads it: a gateway announces
/// itself every second, and a worker counts it gone 5 s after its last announcement reached it
/// (checking every second). Written here from the contract, never read from the production
/// constants (`clientmq_bus::contract`) the checker holds the code to: a bound changed there must
/// fail here, not move the check with it.
pub const CONTRACT_ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
pub const CONTRACT_SILENT_AFTER: Duration = Duration::from_secs(5);
/// docs/nats.md: a worker sends a returning gateway its orphans list, and again every ~2 s
/// (with an announcement) until answered.
pub const CONTRACT_ORPHANS_AGAIN: Duration = Duration::from_secs(2);
/// How long the gateway's subscriptions may lag what the worker decided: one hop of the bus
/// (the worker's subscription message) and the gateway's step, with room to spare.
pub const QUIET_AFTER_HOPS: Duration = Duration::from_secs(1);

/// What the fleet checker holds the fleet to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetLimits {
    /// A dead gateway's sessions are detached this long after its death (or the worker's return).
    pub gone_within: Duration,
    pub grace: Duration,
    /// What the store adds to a worker's deadlines (a session ended after its grace, a dead
    /// gateway's sessions detached): nothing in one worker's memory; a few round trips to the
    /// store, and a worker's timer, on the store.
    pub store_within: Duration,
    pub tolerance: Duration,
    /// A connection's subscriptions agree with its session's rooms this long after a change.
    pub quiet_within: Duration,
    /// An orphan of a gateway that came back is closed this long after (the path being calm).
    pub orphans_within: Duration,
}

#[derive(Debug, Clone)]
pub struct FleetCheck {
    limits: FleetLimits,
    conn_session: BTreeMap<ConnectionId, String>,
    session_conn: BTreeMap<String, ConnectionId>,
    worker_connected: bool,
    /// Since when the worker has been connected to the bus.
    worker_since: Duration,
    /// Connections of dead gateways whose sessions are still attached, by time of death.
    detach_due: BTreeSet<(Duration, ConnectionId)>,
    detach_due_of: BTreeMap<ConnectionId, Duration>,
    /// Detached sessions, by when they were detached: each must end or be resumed in time.
    end_due: BTreeSet<(Duration, String)>,
    end_due_of: BTreeMap<String, Duration>,
    /// Connections' subscriptions against their sessions'.
    subs: subs::Subs,
    /// The worker hosts: a path to the worker runs through them.
    workers: Vec<String>,
    /// The workers keep everything in the store: one's death loses nothing.
    store: bool,
    /// On the store: since when each worker host has been connected to the bus, while it is.
    connected_since: BTreeMap<String, Duration>,
}

impl FleetLimits {
    /// The contract's bounds on a bus that delivers within `latency`, for sessions with `grace`:
    /// a dead gateway's last announcement may still be on its way when it dies.
    pub fn contract(latency: Duration, grace: Duration, tolerance: Duration) -> Self {
        FleetLimits {
            gone_within: latency + CONTRACT_SILENT_AFTER + CONTRACT_ANNOUNCE_EVERY,
            grace,
            store_within: Duration::ZERO,
            tolerance,
            quiet_within: QUIET_AFTER_HOPS + latency,
            // The list may be lost once more on the way back: a second one, riding the
            // announcement after ~2 s, and its hop.
            orphans_within: CONTRACT_ORPHANS_AGAIN + CONTRACT_ANNOUNCE_EVERY + latency * 2,
        }
    }
}

impl FleetCheck {
    pub fn new(limits: FleetLimits) -> Self {
        FleetCheck {
            limits,
            conn_session: BTreeMap::new(),
            session_conn: BTreeMap::new(),
            worker_connected: false,
            worker_since: Duration::ZERO,
            detach_due: BTreeSet::new(),
            detach_due_of: BTreeMap::new(),
            end_due: BTreeSet::new(),
            end_due_of: BTreeMap::new(),
            subs: subs::Subs::default(),
            workers: Vec::new(),
            store: false,
            connected_since: BTreeMap::new(),
        }
    }

    /// The worker hosts, whose faults the delivery checks take into account.
    pub fn with_workers(mut self, workers: impl IntoIterator<Item = String>) -> Self {
        self.workers = workers.into_iter().collect();
        self.subs.workers = self.workers.clone();
        self
    }

    /// The workers keep sessions in the store, so a worker's death ends nothing.
    pub fn with_store(mut self, store: bool) -> Self {
        self.store = store;
        self
    }

    pub fn check_time(&self, at: Duration) -> Result<(), Violation> {
        self.subs.check_time(at, &self.limits, self.able_since())?;
        let l = &self.limits;
        let worker = match self.store {
            true => self.able_since(),
            false => self.worker_connected.then_some(self.worker_since),
        };
        if let Some(since) = worker
            && let Some((died, conn)) = self.detach_due.first()
            && (*died).max(since) + l.gone_within + l.store_within + l.tolerance < at
        {
            let session = self.conn_session.get(conn).cloned().unwrap_or_default();
            return violation(
                at,
                Some(*conn),
                format!("session {session} of a dead gateway's connection still attached"),
            );
        }
        if let Some((detached, session)) = self.end_due.first()
            && let Some(able) = self.able_since()
            && (*detached + l.grace).max(able) + l.store_within + l.tolerance < at
        {
            return violation(at, None, format!("session {session} outlived its grace period"));
        }
        Ok(())
    }

    /// Since when some worker has been able to end sessions: in its memory, always (its timers
    /// run cut off or not, and its death resets what is owed); on the store, since some worker
    /// has been connected to the bus and not cut off from it.
    fn able_since(&self) -> Option<Duration> {
        if !self.store {
            return Some(Duration::ZERO);
        }
        (self.connected_since.iter())
            .filter_map(|(host, since)| Some((*since).max(self.subs.weather.calm_from([host.as_str()])?)))
            .min()
    }

    /// A gateway process died with these connections open.
    pub fn gateway_died(&mut self, at: Duration, conns: impl IntoIterator<Item = ConnectionId>) {
        for conn in conns {
            self.subs.ended(conn);
            if self.conn_session.contains_key(&conn) {
                self.detach_due.insert((at, conn));
                self.detach_due_of.insert(conn, at);
            }
        }
    }

    /// A worker process died: on the store, only what it was about to tell is lost, and a
    /// worker's sweep tells it later (see `Subs::worker_died_on_store`); in its memory, what it
    /// knew is gone, and so are its obligations.
    pub fn worker_died(&mut self, at: Duration, host: &str) {
        if self.store {
            self.connected_since.remove(host);
            self.subs.worker_died_on_store(at);
            return;
        }
        let mut subs = std::mem::take(&mut self.subs);
        subs.worker_died();
        let workers = std::mem::take(&mut self.workers);
        *self = FleetCheck { subs, workers, store: self.store, ..FleetCheck::new(self.limits) };
    }

    /// A fault of the timeline: what the worker sent over a disturbed path may be lost (NATS
    /// core), so connections then waiting for the worker's subscriptions are no longer held
    /// to them.
    pub fn note(&mut self, at: Duration, note: &str) {
        self.subs.weather.note(at, note);
        let mut words = note.split(' ');
        match (words.next(), words.next()) {
            (Some("bus"), Some("restarted")) => self.subs.disturbed(|_| true),
            (Some("partition-bus"), Some(host)) if self.workers.iter().any(|w| w == host) => {
                self.subs.disturbed(|_| true)
            }
            (Some("partition-bus"), Some(host)) => self.subs.disturbed(|proc| &*proc.host == host),
            _ => {}
        }
    }

    /// What a gateway process reported about one of its connections.
    pub fn gateway_event(
        &mut self,
        at: Duration,
        proc: &Proc,
        conn: ConnectionId,
        kind: &EventKind,
    ) -> Result<(), Violation> {
        let session = self.conn_session.get(&conn);
        match kind {
            EventKind::Opened { .. } => self.subs.opened(proc, conn),
            EventKind::Disconnected { .. } => self.subs.ended(conn),
            EventKind::CloseSent { .. } => self.subs.closing(conn),
            EventKind::Subscribed { topic, room } => {
                self.subs.subscribed(at, &self.limits, conn, (*topic, room.clone()), true, session)
            }
            EventKind::Unsubscribed { topic, room } => {
                self.subs.subscribed(at, &self.limits, conn, (*topic, room.clone()), false, session)
            }
            EventKind::Answered { request_type, outcome: RequestOutcome::Ok, .. } => {
                return self.subs.answered(at, conn, request_type, session);
            }
            EventKind::Answered { outcome: RequestOutcome::Timeout, elapsed, .. } => {
                self.subs.gave_up(conn, at.saturating_sub(*elapsed));
            }
            _ => {}
        }
        Ok(())
    }

    /// Rechecks the connection holding `session`, if any.
    fn recheck_session(&mut self, at: Duration, session: &str) {
        if let Some(conn) = self.session_conn.get(session).copied() {
            self.subs.recheck(at, &self.limits, conn, Some(&session.to_owned()));
        }
    }

    /// What worker host `host` reported.
    pub fn worker_event(&mut self, at: Duration, host: &str, event: &WorkerEvent) -> Result<(), Violation> {
        match event {
            WorkerEvent::Fact(Fact::Bound { conn, session }) => {
                if let Some(other) = self.session_conn.get(session)
                    && other != conn
                {
                    return violation(at, Some(*conn), format!("session {session} attached to {other} too"));
                }
                self.clear_end_due(session);
                self.session_conn.insert(session.clone(), *conn);
                self.conn_session.insert(*conn, session.clone());
                self.subs.recheck(at, &self.limits, *conn, Some(session));
            }
            WorkerEvent::Fact(Fact::Unbound { conn, session }) => {
                self.conn_session.remove(conn);
                if self.session_conn.get(session) == Some(conn) {
                    self.session_conn.remove(session);
                }
                if let Some(died) = self.detach_due_of.remove(conn) {
                    self.detach_due.remove(&(died, *conn));
                }
                self.clear_end_due(session);
                self.end_due.insert((at, session.clone()));
                self.end_due_of.insert(session.clone(), at);
                self.subs.recheck(at, &self.limits, *conn, None);
            }
            WorkerEvent::Fact(Fact::Ended { session }) => {
                self.clear_end_due(session);
                self.subs.session_ended(session);
                if let Some(conn) = self.session_conn.remove(session) {
                    self.conn_session.remove(&conn);
                    self.subs.recheck(at, &self.limits, conn, None);
                }
            }
            WorkerEvent::Fact(Fact::Hears { session, topic, room }) => {
                self.subs.hears(at, session, (*topic, room.clone()), true);
                self.recheck_session(at, session);
            }
            WorkerEvent::Fact(Fact::Left { session, room }) => {
                self.subs.hears(at, session, (clientmq_core::Topic::Room, room.clone()), false);
                self.recheck_session(at, session);
            }
            WorkerEvent::GatewayGone { gateway, .. } => {
                if let Some(proc) = proc_of(gateway) {
                    let bound = &self.conn_session;
                    self.subs.gateway_gone(&proc, |c| bound.contains_key(c));
                }
            }
            // On the store, orphans are due when recorded (below), told by any worker.
            WorkerEvent::GatewayBack { gateway } if !self.store => {
                if let Some(proc) = proc_of(gateway) {
                    self.subs.gateway_back(at, &self.limits, &proc);
                }
            }
            WorkerEvent::GatewayBack { .. } => {}
            WorkerEvent::EndRecorded { conn, .. } => self.subs.end_recorded(at, &self.limits, *conn),
            WorkerEvent::Bus { connected } => {
                if *connected && !self.worker_connected {
                    self.worker_since = at;
                }
                self.worker_connected = *connected;
                if !*connected {
                    self.connected_since.remove(host);
                } else {
                    self.connected_since.entry(host.to_owned()).or_insert(at);
                }
            }
            WorkerEvent::Broken(what) => return violation(at, None, format!("worker: {what}")),
        }
        Ok(())
    }

    fn clear_end_due(&mut self, session: &str) {
        if let Some(since) = self.end_due_of.remove(session) {
            self.end_due.remove(&(since, session.to_owned()));
        }
    }
}

/// The gateway process a route key (`HOST.INCARNATION`, as the simulator names them) names.
fn proc_of(route_key: &str) -> Option<Proc> {
    let (host, n) = route_key.rsplit_once('.')?;
    Some(Proc::new(host, n.parse().ok()?))
}
