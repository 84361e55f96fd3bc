//! The gateway's internal invariants, checked on demand by tests and the simulator.

use crate::ConnectionId;
use crate::gateway::Gateway;
use crate::registry::State;
use crate::timers::Timer;

/// A broken invariant, found by [`Gateway::check_invariants`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvariantViolation {
    #[error("open {open} != total {total} - disconnected {disconnected}")]
    Count { open: usize, total: u64, disconnected: u64 },
    #[error("open {open} is over the limit {limit}")]
    OverLimit { open: usize, limit: usize },
    #[error("connection {0} is closing past its deadline")]
    ClosingTooLong(ConnectionId),
    #[error("request token {0} is pending past its deadline")]
    PendingTooLong(u64),
    #[error("connection {0} lacks a timer it needs, or has one it must not")]
    Timers(ConnectionId),
    #[error("request token {0} is not owned by a live connection")]
    OrphanRequest(u64),
    #[error("subscription tables disagree with the connections")]
    Subscriptions,
    #[error("closing count {counted} but {scanned} connections are closing")]
    ClosingCount { counted: usize, scanned: usize },
    #[error("{armed} timers armed, {expected} expected")]
    TimerCount { armed: usize, expected: usize },
    #[error("interest held for {held} requests in flight, {holding} requests hold some")]
    Interest { held: usize, holding: usize },
}

impl Gateway {
    /// Checks every invariant of the registry, timers and requests against `self`'s latest time.
    /// Cheap enough for tests and the simulator to run after every step; O(connections).
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let open = self.registry.len();
        let disconnected = self.stats.disconnected();
        if open as u64 + disconnected != self.stats.total {
            return Err(InvariantViolation::Count { open, total: self.stats.total, disconnected });
        }
        if open > self.config.max_connections {
            return Err(InvariantViolation::OverLimit { open, limit: self.config.max_connections });
        }
        let mut expected = 0;
        for (id, conn) in self.registry.iter() {
            let heartbeat_ok = match (conn.state, conn.heartbeat_at) {
                (State::Open, Some(at)) => self.timers.contains(at, Timer::Heartbeat(*id)),
                (State::Closing { .. }, None) => true,
                _ => false,
            };
            let close_ok = match conn.state {
                State::Closing { deadline, .. } => {
                    if deadline < self.now {
                        return Err(InvariantViolation::ClosingTooLong(*id));
                    }
                    self.timers.contains(deadline, Timer::CloseDeadline(*id))
                }
                State::Open => true,
            };
            let drain_ok = conn.drain_at.is_none_or(|at| self.timers.contains(at, Timer::DrainClose(*id)));
            if !(heartbeat_ok && close_ok && drain_ok) {
                return Err(InvariantViolation::Timers(*id));
            }
            expected += 1 + usize::from(conn.drain_at.is_some());
        }
        for (token, req) in &self.requests {
            if req.deadline < self.now {
                return Err(InvariantViolation::PendingTooLong(*token));
            }
            if !self.registry.get(&req.conn).is_some_and(|c| c.pending.contains(token)) {
                return Err(InvariantViolation::OrphanRequest(*token));
            }
        }
        let owned: usize = self.registry.iter().map(|(_, c)| c.pending.len() + c.server_requests.len()).sum();
        if owned != self.requests.len() + self.server_requests.len() {
            return Err(InvariantViolation::OrphanRequest(u64::MAX));
        }
        let scanned = self.registry.iter().filter(|(_, c)| !c.is_open()).count();
        if scanned != self.closing {
            return Err(InvariantViolation::ClosingCount { counted: self.closing, scanned });
        }
        if !self.registry.tables_consistent() {
            return Err(InvariantViolation::Subscriptions);
        }
        let holding = self.requests.values().filter(|r| r.interest.is_some()).count();
        let held = self.registry.pending_interest();
        if holding != held {
            return Err(InvariantViolation::Interest { held, holding });
        }
        expected += self.requests.len() + self.server_requests.len();
        if self.timers.len() != expected {
            return Err(InvariantViolation::TimerCount { armed: self.timers.len(), expected });
        }
        Ok(())
    }
}
