//! The invariants: after every call, and once the clients stop talking at the end of a case.

use std::collections::BTreeSet;

use clientmq_core::{ConnectionId, Topic};

use crate::fixtures::ROOMS;
use crate::harness::Harness;
use crate::state::Phase;

impl Harness {
    /// The invariants, after every call.
    pub(crate) fn check(&self) {
        let gw = &self.gw;
        if let Err(e) = gw.check_invariants() {
            panic!("check_invariants: {e}");
        }
        let stats = gw.stats();
        let open = gw.open_connections();
        assert_eq!(open as u64 + stats.disconnected(), stats.total, "open != total - disconnected");
        assert!(open <= self.cfg.max_connections, "over the limit");
        assert_eq!(stats.total, self.accepted);
        assert_eq!(stats.rejected, self.rejected);
        assert_eq!(open, self.open_count(), "open != accepted - disconnected ids");
        assert_eq!(gw.connection_ids(), self.live_ids());
        let closing = self.conns.values().filter(|c| matches!(c.phase, Phase::Closing { .. })).count();
        assert_eq!(gw.closing_connections(), closing);
        assert_eq!(gw.pending_requests(), self.pending.len());
        assert_eq!(gw.pending_server_requests(), self.server_reqs.len());
        assert_eq!(gw.is_draining(), self.draining.is_some());
        assert_eq!(stats.disconnects, self.paths);
        assert_eq!(stats.requests, self.outcomes);
        assert_eq!((stats.pings, stats.pongs), (self.pings, self.pongs));
        let mut held = 0;
        for (topic, room) in
            [Topic::Room, Topic::Conversation].into_iter().flat_map(|t| ROOMS.iter().map(move |r| (t, *r)))
        {
            let model: Vec<ConnectionId> = self
                .conns
                .iter()
                .filter(|(_, c)| match topic {
                    Topic::Room => c.rooms.contains(room),
                    Topic::Conversation => c.conversations.contains(room),
                })
                .map(|(id, _)| *id)
                .collect();
            held += model.len();
            assert_eq!(gw.subscribers(topic, room), model, "{topic:?} {room}");
        }
        assert_eq!(gw.subscriptions(), held);
        // Interest: exactly the rooms some connection is subscribed to or a request in flight
        // names.
        let mut wanted: BTreeSet<(Topic, String)> = BTreeSet::new();
        for c in self.conns.values().filter(|c| c.phase != Phase::Ended) {
            wanted.extend(c.rooms.iter().map(|r| (Topic::Room, r.clone())));
            wanted.extend(c.conversations.iter().map(|r| (Topic::Conversation, r.clone())));
        }
        wanted.extend(self.pending.values().filter_map(|p| p.hears()));
        assert_eq!(self.interest, wanted, "interest reported");

        // Nothing overstays its deadline.
        let now = self.now;
        for (id, c) in &self.conns {
            match c.phase {
                Phase::Open => {
                    assert!(c.next_heartbeat >= now, "{id} missed its heartbeat");
                    if let Some(start) = self.draining
                        && now > start + self.cfg.drain_window
                    {
                        assert!(
                            c.drain_due && !c.pending.is_empty(),
                            "{id} still open after the drain window"
                        );
                    }
                }
                Phase::Closing { since, .. } => {
                    assert!(now <= since + self.cfg.close_timeout, "{id} closing too long")
                }
                Phase::Ended => {}
            }
        }
        for (token, p) in &self.pending {
            assert!(now <= p.at + self.cfg.request_timeout, "token {token} pending too long");
        }
        for (n, r) in &self.server_reqs {
            assert!(now <= r.at + self.cfg.server_request_timeout, "S{n} pending too long");
        }
    }

    /// Clients stop talking and answer nothing: heartbeats must close every connection, close
    /// timeouts must force them, and nothing may be left behind.
    pub(crate) fn quiesce(&mut self) {
        let c = &self.cfg;
        let span = c.close_timeout + c.request_timeout + c.heartbeat_interval * 3 + c.drain_window;
        self.advance_to(self.now + span);
        let gw = &self.gw;
        assert_eq!(gw.open_connections(), 0, "connections leaked");
        assert_eq!(gw.closing_connections(), 0);
        assert_eq!(gw.pending_requests(), 0, "requests leaked");
        assert_eq!(gw.pending_server_requests(), 0, "server requests leaked");
        assert_eq!(gw.subscriptions(), 0, "subscriptions leaked");
        assert!(self.interest.is_empty(), "interest leaked: {:?}", self.interest);
        assert_eq!(gw.poll_timeout(), None, "timers leaked");
        let stats = gw.stats();
        assert_eq!(stats.disconnected(), stats.total);
        assert!(self.conns.values().all(|c| c.phase == Phase::Ended));
        assert!(self.pending.is_empty() && self.server_reqs.is_empty());
        assert_eq!(self.sr_done, self.sr_issued, "a server request never ended");
        let issued: BTreeSet<String> = self.issued.keys().cloned().collect();
        assert_eq!(issued, self.answered, "a client request was never answered");
    }
}
