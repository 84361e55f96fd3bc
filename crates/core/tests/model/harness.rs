//! The harness: the gateway under test, its bookkeeping, op dispatch and the clock.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use clientmq_core::{Config, ConnectionId, DisconnectPath, Gateway, LostReason, RequestOutcome, Topic};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::fixtures::NEVER_SEEN;
use crate::ops::{Op, Sel};
use crate::state::{Conn, Ctx, Pending, Phase, ServerReq};

pub(crate) struct Harness {
    pub(crate) cfg: Config,
    pub(crate) gw: Gateway,
    pub(crate) start: Instant,
    pub(crate) now: Instant,
    /// Every id seen: accepted and rejected, in order.
    pub(crate) ids: Vec<ConnectionId>,
    /// Every accepted connection, ended ones included.
    pub(crate) conns: BTreeMap<ConnectionId, Conn>,
    pub(crate) accepted: u64,
    pub(crate) rejected: u64,
    pub(crate) disconnected: BTreeSet<ConnectionId>,
    pub(crate) recent_ended: VecDeque<ConnectionId>,
    pub(crate) draining: Option<Instant>,
    pub(crate) next_rid: u64,
    /// Request ids the gateway owes an answer, with their connection.
    pub(crate) issued: BTreeMap<String, ConnectionId>,
    pub(crate) forwarded: BTreeMap<String, u64>,
    pub(crate) tokens: Vec<u64>,
    pub(crate) pending: BTreeMap<u64, Pending>,
    pub(crate) responded: BTreeSet<String>,
    pub(crate) answered: BTreeSet<String>,
    pub(crate) outcomes: BTreeMap<RequestOutcome, u64>,
    pub(crate) paths: BTreeMap<DisconnectPath, u64>,
    pub(crate) pings: u64,
    pub(crate) pongs: u64,
    pub(crate) sr_numbers: Vec<u64>,
    pub(crate) server_reqs: BTreeMap<u64, ServerReq>,
    pub(crate) sr_next_token: u64,
    pub(crate) sr_issued: BTreeSet<u64>,
    pub(crate) sr_done: BTreeSet<u64>,
    /// The rooms and conversations the gateway said it has an interest in
    /// ([`clientmq_core::Output::Interest`]).
    pub(crate) interest: BTreeSet<(Topic, String)>,
    /// What happened, by kind: shows the generator reaches every path.
    pub(crate) tally: BTreeMap<String, u64>,
    /// How far in the past the current operation's inputs are stamped.
    pub(crate) late: Duration,
}

impl Harness {
    pub(crate) fn new(seed: u64, cfg: Config) -> Self {
        // Only an origin: the gateway never reads a clock.
        let start = Instant::now();
        let gw =
            Gateway::new(cfg.clone(), Box::new(StdRng::seed_from_u64(seed)), start).expect("valid config");
        Harness {
            cfg,
            gw,
            start,
            now: start,
            ids: Vec::new(),
            conns: BTreeMap::new(),
            accepted: 0,
            rejected: 0,
            disconnected: BTreeSet::new(),
            recent_ended: VecDeque::new(),
            draining: None,
            next_rid: 0,
            issued: BTreeMap::new(),
            forwarded: BTreeMap::new(),
            tokens: Vec::new(),
            pending: BTreeMap::new(),
            responded: BTreeSet::new(),
            answered: BTreeSet::new(),
            outcomes: BTreeMap::new(),
            paths: BTreeMap::new(),
            pings: 0,
            pongs: 0,
            sr_numbers: Vec::new(),
            server_reqs: BTreeMap::new(),
            sr_next_token: 0,
            sr_issued: BTreeSet::new(),
            sr_done: BTreeSet::new(),
            interest: BTreeSet::new(),
            tally: BTreeMap::new(),
            late: Duration::ZERO,
        }
    }

    /// The time inputs are stamped with: usually now, sometimes earlier (inputs that queued up in
    /// a channel), which the gateway must treat as now.
    pub(crate) fn stamp(&self) -> Instant {
        self.now.checked_sub(self.late).map_or(self.start, |t| t.max(self.start))
    }

    pub(crate) fn open_count(&self) -> usize {
        (self.accepted - self.disconnected.len() as u64) as usize
    }

    pub(crate) fn registered(&self, id: &ConnectionId) -> Option<&Conn> {
        self.conns.get(id).filter(|c| c.phase != Phase::Ended)
    }

    pub(crate) fn conn_mut(&mut self, id: &ConnectionId) -> &mut Conn {
        self.conns.get_mut(id).unwrap_or_else(|| panic!("{id} was never accepted"))
    }

    pub(crate) fn live_ids(&self) -> Vec<ConnectionId> {
        self.conns.iter().filter(|(_, c)| c.phase != Phase::Ended).map(|(id, _)| *id).collect()
    }

    pub(crate) fn resolve(&self, sel: Sel) -> ConnectionId {
        match sel {
            Sel::Live(i) => {
                let live = self.live_ids();
                if live.is_empty() { self.resolve(Sel::Any(i)) } else { live[i % live.len()] }
            }
            Sel::Closing(i) => {
                let closing: Vec<ConnectionId> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| matches!(c.phase, Phase::Closing { .. }))
                    .map(|(id, _)| *id)
                    .collect();
                if closing.is_empty() { self.resolve(Sel::Live(i)) } else { closing[i % closing.len()] }
            }
            Sel::Any(i) if !self.ids.is_empty() => self.ids[i % self.ids.len()],
            _ => NEVER_SEEN.parse().expect("a valid id"),
        }
    }

    pub(crate) fn run(&mut self, op: &Op) {
        match op {
            Op::Open(i) => self.op_open(*i),
            Op::Refuse => self.op_refuse(),
            Op::Frame { conn, text, body } => self.op_frame(*conn, *text, body),
            Op::Pong { conn, right } => self.op_pong(*conn, *right),
            Op::PongAll => {
                let waiting: Vec<ConnectionId> =
                    self.conns.iter().filter(|(_, c)| c.ping.is_some()).map(|(id, _)| *id).collect();
                for id in waiting {
                    self.op_pong_to(id, true);
                }
            }
            Op::PeerClosed { conn, code } => self.op_end(*conn, Some(*code), LostReason::Eof),
            Op::TransportLost { conn, reason } => self.op_end(*conn, None, *reason),
            Op::SendFailed(conn) => self.op_send_failed(*conn),
            Op::Reply { token, kind } => self.op_reply(*token, *kind),
            Op::Deliver(to) => self.op_deliver(*to),
            Op::Subscription { conn, topic, room, subscribe } => {
                self.op_subscription(*conn, *topic, *room, *subscribe)
            }
            Op::ServerRequest(conn) => self.op_server_request(*conn),
            Op::Drain => self.op_drain(),
            Op::Advance(ms) => self.advance_to(self.now + Duration::from_millis(*ms)),
        }
    }

    /// Fires every timer in order, at its exact deadline, up to `target`; then sets the clock
    /// to `target`.
    pub(crate) fn advance_to(&mut self, target: Instant) {
        while let Some(at) = self.gw.poll_timeout() {
            if at > target {
                break;
            }
            assert!(at >= self.now, "a timer armed in the past");
            self.now = at;
            self.gw.handle_timeout(at);
            self.absorb(&Ctx::Timeout);
        }
        self.now = target;
        self.gw.handle_timeout(target);
        self.absorb(&Ctx::Timeout);
    }
}
