//! The gateway's internal invariants, checked on demand by tests and the simulator.

use super::Gateway;
use super::requests::Intent;
use crate::ConnectionId;
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
        let holding = self.requests.values().filter(|r| matches!(r.intent, Some(Intent::Hear(..)))).count();
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

/// The checker's teeth: each invariant, broken by hand in a sound gateway, is reported as itself;
/// and a sound gateway passes at the very instant of each deadline.
#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use rand::SeedableRng;

    use super::*;
    use crate::codec::{self, Encoding};
    use crate::event::Topic;
    use crate::gateway::{Admission, Input, Peer};
    use crate::proto::mq;
    use crate::{Config, close};

    const NS: Duration = Duration::from_nanos(1);

    /// A gateway at `t0` with two connections, the first with a request pending.
    fn sound() -> (Gateway, [ConnectionId; 2], Instant) {
        let t0 = Instant::now();
        let rng = Box::new(rand::rngs::StdRng::seed_from_u64(1));
        let mut gw = Gateway::new(Config::default(), rng, t0).unwrap();
        let peer = Peer { addr: "10.0.0.1:5000".parse().unwrap(), headers: Vec::new() };
        let mut open = || match gw.open(&peer, t0) {
            Admission::Accepted(id) => id,
            other => panic!("{other:?}"),
        };
        let ids = [open(), open()];
        let request = mq::Message {
            request_id: Some("C0".into()),
            r#type: "x.Y".into(),
            message_type: Some(mq::message::MessageType::Request as i32),
            ..Default::default()
        };
        let frame = codec::encode(&request, Encoding::Binary);
        gw.handle(Input::Frame { conn: ids[0], frame }, t0);
        assert_eq!(gw.pending_requests(), 1);
        assert_eq!(gw.check_invariants(), Ok(()));
        (gw, ids, t0)
    }

    #[test]
    fn a_sound_gateway_passes_at_each_deadline_and_fails_just_after() {
        let (mut gw, [a, b], t0) = sound();
        let config = gw.config().clone();
        gw.handle(Input::Close { conn: b, close: close::DRAIN }, t0);
        // Exactly at the close deadline, before its timer is handled: sound.
        gw.handle(Input::Pong { conn: a, payload: Vec::new() }, t0 + config.close_timeout);
        assert_eq!(gw.check_invariants(), Ok(()));
        gw.now += NS;
        assert_eq!(gw.check_invariants(), Err(InvariantViolation::ClosingTooLong(b)));
        gw.now -= NS;
        gw.handle_timeout(t0 + config.close_timeout);
        gw.handle(Input::Pong { conn: a, payload: Vec::new() }, t0 + config.request_timeout);
        assert_eq!(gw.check_invariants(), Ok(()));
        gw.now += NS;
        assert!(matches!(gw.check_invariants(), Err(InvariantViolation::PendingTooLong(_))));
    }

    #[test]
    fn each_broken_invariant_is_reported_as_itself() {
        type Break = fn(&mut Gateway, [ConnectionId; 2]);
        type Expect = fn(&InvariantViolation) -> bool;
        let cases: [(Break, Expect); 9] = [
            (
                |gw, _| gw.stats.total += 1,
                |v| matches!(v, InvariantViolation::Count { open: 2, total: 3, .. }),
            ),
            (
                |gw, _| gw.config.max_connections = 1,
                |v| matches!(v, InvariantViolation::OverLimit { open: 2, limit: 1 }),
            ),
            (
                |gw, [a, _]| {
                    let at = gw.registry.get(&a).unwrap().heartbeat_at.unwrap();
                    gw.timers.disarm(at, Timer::Heartbeat(a));
                },
                |v| matches!(v, InvariantViolation::Timers(_)),
            ),
            (
                |gw, [a, _]| {
                    let token = *gw.requests.keys().next().unwrap();
                    gw.registry.get_mut(&a).unwrap().pending.remove(&token);
                },
                |v| matches!(v, InvariantViolation::OrphanRequest(_)),
            ),
            (
                |gw, _| gw.closing += 1,
                |v| matches!(v, InvariantViolation::ClosingCount { counted: 1, scanned: 0 }),
            ),
            (
                |gw, [_, b]| {
                    let now = gw.now;
                    gw.timers.arm(now, Timer::CloseDeadline(b));
                },
                |v| matches!(v, InvariantViolation::TimerCount { .. }),
            ),
            (
                |gw, [a, _]| {
                    gw.registry.get_mut(&a).unwrap().rooms.insert("r".into());
                },
                |v| matches!(v, InvariantViolation::Subscriptions),
            ),
            (
                // Listed in the table, not by the connection: the counts differ.
                |gw, [a, _]| {
                    gw.registry.subscribe(&a, Topic::Room, "r", 10);
                    gw.registry.get_mut(&a).unwrap().rooms.remove("r");
                },
                |v| matches!(v, InvariantViolation::Subscriptions),
            ),
            (
                // The same counts, the wrong member.
                |gw, [a, b]| {
                    gw.registry.subscribe(&b, Topic::Room, "r", 10);
                    gw.registry.get_mut(&b).unwrap().rooms.remove("r");
                    gw.registry.get_mut(&a).unwrap().rooms.insert("r".into());
                },
                |v| matches!(v, InvariantViolation::Subscriptions),
            ),
        ];
        for (i, (break_it, expected)) in cases.into_iter().enumerate() {
            let (mut gw, ids, _) = sound();
            break_it(&mut gw, ids);
            let found = gw.check_invariants();
            assert!(found.as_ref().is_err_and(expected), "case {i}: {found:?}");
        }
    }

    #[test]
    fn a_timer_missing_on_one_connection_is_named() {
        let (mut gw, [_, b], _) = sound();
        let at = gw.registry.get(&b).unwrap().heartbeat_at.unwrap();
        gw.timers.disarm(at, Timer::Heartbeat(b));
        assert_eq!(gw.check_invariants(), Err(InvariantViolation::Timers(b)));
    }
}
