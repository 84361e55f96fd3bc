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
use clientmq_core::ConnectionId;

use super::{Violation, violation};

/// docs/nats.md, "Liveness, loss and recovery", as the checker reads it: a gateway announces
/// itself every second, and a worker counts it gone 5 s after its last announcement reached it
/// (checking every second). Written here from the contract, never read from the production
/// constants (`clientmq_bus::contract`) the checker holds the code to: a bound changed there must
/// fail here, not move the check with it.
pub const CONTRACT_ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
pub const CONTRACT_SILENT_AFTER: Duration = Duration::from_secs(5);

/// What the fleet checker holds the fleet to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetLimits {
    /// A dead gateway's sessions are detached this long after its death (or the worker's return).
    pub gone_within: Duration,
    pub grace: Duration,
    pub tolerance: Duration,
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
}

impl FleetLimits {
    /// The contract's bounds on a bus that delivers within `latency`, for sessions with `grace`:
    /// a dead gateway's last announcement may still be on its way when it dies.
    pub fn contract(latency: Duration, grace: Duration, tolerance: Duration) -> Self {
        FleetLimits {
            gone_within: latency + CONTRACT_SILENT_AFTER + CONTRACT_ANNOUNCE_EVERY,
            grace,
            tolerance,
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
        }
    }

    pub fn check_time(&self, at: Duration) -> Result<(), Violation> {
        let l = &self.limits;
        if self.worker_connected
            && let Some((died, conn)) = self.detach_due.first()
            && (*died).max(self.worker_since) + l.gone_within + l.tolerance < at
        {
            let session = self.conn_session.get(conn).cloned().unwrap_or_default();
            return violation(
                at,
                Some(*conn),
                format!("session {session} of a dead gateway's connection still attached"),
            );
        }
        if let Some((detached, session)) = self.end_due.first()
            && *detached + l.grace + l.tolerance < at
        {
            return violation(at, None, format!("session {session} outlived its grace period"));
        }
        Ok(())
    }

    /// A gateway process died with these connections open.
    pub fn gateway_died(&mut self, at: Duration, conns: impl IntoIterator<Item = ConnectionId>) {
        for conn in conns {
            if self.conn_session.contains_key(&conn) {
                self.detach_due.insert((at, conn));
                self.detach_due_of.insert(conn, at);
            }
        }
    }

    /// The worker process died: what it knew is gone, and so are its obligations.
    pub fn worker_died(&mut self) {
        let limits = self.limits;
        *self = FleetCheck::new(limits);
    }

    pub fn worker_event(&mut self, at: Duration, event: &WorkerEvent) -> Result<(), Violation> {
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
            }
            WorkerEvent::Fact(Fact::Ended { session }) => {
                self.clear_end_due(session);
                if let Some(conn) = self.session_conn.remove(session) {
                    self.conn_session.remove(&conn);
                }
            }
            WorkerEvent::Bus { connected } => {
                if *connected && !self.worker_connected {
                    self.worker_since = at;
                }
                self.worker_connected = *connected;
            }
            WorkerEvent::Broken(what) => return violation(at, None, format!("worker: {what}")),
            WorkerEvent::GatewayGone { .. } | WorkerEvent::GatewayBack { .. } => {}
        }
        Ok(())
    }

    fn clear_end_due(&mut self, session: &str) {
        if let Some(since) = self.end_due_of.remove(session) {
            self.end_due.remove(&(since, session.to_owned()));
        }
    }
}
