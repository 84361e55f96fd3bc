//! Draining every output and event of one call and checking each against the model.

use std::collections::{BTreeMap, BTreeSet};

use clientmq_core::proto::{mq, pcast};
use clientmq_core::{
    CloseReason, ConnectionId, DisconnectPath, EventKind, Frame, LostReason, Output, RequestOutcome,
    ServerRequestError, close, codec,
};
use prost::Message as _;

use crate::fixtures::error_reason;
use crate::harness::Harness;
use crate::state::{Batch, Ctx, Pending, Phase, ServerReq};

impl Harness {
    /// Drains every output and event of the last call, checks each against the model and updates
    /// it, then checks the invariants.
    pub(crate) fn absorb(&mut self, ctx: &Ctx) -> Batch {
        let mut outs = Vec::new();
        while let Some(o) = self.gw.poll_output() {
            outs.push(o);
        }
        let mut evs = Vec::new();
        while let Some(e) = self.gw.poll_event() {
            evs.push(e);
        }
        for key in outs.iter().map(output_key).chain(evs.iter().map(|e| event_key(&e.kind))) {
            *self.tally.entry(key).or_default() += 1;
        }
        let now = self.now;
        let mut ended_out = Vec::new();
        let mut responses: BTreeMap<String, mq::Message> = BTreeMap::new();
        let mut sr_disconnected = Vec::new();
        for (i, out) in outs.iter().enumerate() {
            match out {
                Output::Send { .. } | Output::Deliver(_) => {
                    for (conn, frame) in out.data_frames() {
                        self.on_send(ctx, conn, &frame, &mut responses);
                    }
                }
                Output::Ping { conn, payload } => {
                    assert!(matches!(ctx, Ctx::Timeout), "ping during {ctx:?}");
                    let hb = self.cfg.heartbeat_interval;
                    let c = self.conn_mut(conn);
                    assert_eq!(c.phase, Phase::Open, "ping to {conn} while {:?}", c.phase);
                    assert_eq!(now, c.next_heartbeat, "ping off its heartbeat");
                    assert!(c.ping.is_none(), "ping while one is unanswered");
                    assert_ne!(c.last_ping.as_ref(), Some(payload), "ping payload reused");
                    c.ping = Some((payload.clone(), now));
                    c.last_ping = Some(payload.clone());
                    c.next_heartbeat = now + hb;
                    self.pings += 1;
                }
                Output::Close { conn, close } => self.on_close(ctx, *conn, *close),
                Output::Abort { conn } | Output::Release { conn } => {
                    let c = self.conn_mut(conn);
                    assert_ne!(c.phase, Phase::Ended, "{conn} ended twice");
                    assert!(
                        c.server_requests.is_empty(),
                        "{conn} ended before its server requests were failed"
                    );
                    c.before_end = Some(c.phase);
                    c.phase = Phase::Ended;
                    c.aborted = matches!(out, Output::Abort { .. });
                    c.rooms.clear();
                    c.conversations.clear();
                    ended_out.push(*conn);
                    assert!(
                        matches!(outs.get(i + 1), Some(Output::Publish(p)) if p.connection_id == conn.to_string()),
                        "end of {conn} not published"
                    );
                }
                Output::Backend(req) => self.on_backend(ctx, req),
                Output::Publish(p) => assert!(
                    i > 0
                        && matches!(&outs[i - 1], Output::Abort { conn } | Output::Release { conn }
                            if conn.to_string() == p.connection_id),
                    "publish without an end: {p:?}"
                ),
                Output::Interest { topic, room, on } => {
                    let key = (*topic, room.clone());
                    let changed = if *on { self.interest.insert(key) } else { self.interest.remove(&key) };
                    assert!(changed, "interest in {topic:?} {room} reported {on} twice");
                }
                Output::Pong { .. } => panic!("a pong without a client ping: {out:?}"),
                Output::ServerRequestDone { token, result } => {
                    assert!(self.sr_issued.contains(token), "unknown token {token}");
                    assert!(self.sr_done.insert(*token), "server request {token} ended twice");
                    let found = self
                        .server_reqs
                        .iter()
                        .find(|(_, r)| r.token == *token)
                        .map(|(n, r)| (*n, r.clone()));
                    match (found, result) {
                        (Some((n, r)), Ok(_)) => assert!(
                            matches!(ctx, Ctx::Frame { conn, sr_answer: Some(m), .. } if *m == n && *conn == r.conn),
                            "S{n} resolved during {ctx:?}"
                        ),
                        (Some((n, r)), Err(ServerRequestError::Timeout)) => {
                            assert!(matches!(ctx, Ctx::Timeout));
                            assert_eq!(
                                now,
                                r.at + self.cfg.server_request_timeout,
                                "S{n} timed out late or early"
                            );
                        }
                        (Some((_, r)), Err(ServerRequestError::Disconnected)) => sr_disconnected.push(r.conn),
                        (
                            None,
                            Err(
                                ServerRequestError::NotConnected
                                | ServerRequestError::NotOpen
                                | ServerRequestError::TooManyPending,
                            ),
                        ) => assert!(
                            matches!(ctx, Ctx::ServerRequest { token: t, .. } if t == token),
                            "refusal of {token} during {ctx:?}"
                        ),
                        (found, result) => {
                            panic!("server request {token} ({found:?}) ended with {result:?}")
                        }
                    }
                    if let Some((n, r)) =
                        self.server_reqs.iter().find(|(_, r)| r.token == *token).map(|(n, r)| (*n, r.conn))
                    {
                        self.server_reqs.remove(&n);
                        self.conn_mut(&r).server_requests.remove(&n);
                    }
                }
            }
        }

        let mut answered_now = BTreeSet::new();
        let mut disconnected_now = Vec::new();
        for ev in &evs {
            assert_eq!(ev.at, now - self.start, "event stamped with the wrong time");
            match &ev.kind {
                EventKind::Opened { open, .. } => {
                    assert!(matches!(ctx, Ctx::Open));
                    assert_eq!(*open, self.open_count());
                }
                EventKind::Disconnected { path, code, open } => {
                    let id = ev.conn.expect("disconnects name their connection");
                    self.on_disconnected(ctx, id, *path, *code, &outs);
                    assert_eq!(*open, self.open_count());
                    disconnected_now.push(id);
                }
                EventKind::Answered { request_id, outcome, .. } => {
                    assert!(self.answered.insert(request_id.clone()), "{request_id} answered twice");
                    answered_now.insert(request_id.clone());
                    assert_eq!(
                        ev.conn.as_ref(),
                        self.issued.get(request_id),
                        "answer on the wrong connection"
                    );
                    self.on_answered(request_id, *outcome, &responses);
                }
                EventKind::DrainDeferred { pending } => {
                    let id = ev.conn.expect("names its connection");
                    let start = self.draining.expect("deferred while not draining");
                    assert!(*pending > 0);
                    assert!(now >= start && now <= start + self.cfg.drain_window);
                    self.conn_mut(&id).drain_due = true;
                }
                EventKind::Stray { after_end, .. } => {
                    let id = ev.conn.expect("names its connection");
                    assert!(self.registered(&id).is_none(), "stray about a live {id}");
                    assert_eq!(*after_end, self.recent_ended.contains(&id));
                }
                _ => {}
            }
        }
        ended_out.sort();
        disconnected_now.sort();
        assert_eq!(ended_out, disconnected_now, "Abort/Release and Disconnected events disagree");
        for id in &ended_out {
            assert!(self.conns[id].pending.is_empty(), "{id} ended with requests not failed");
        }
        for id in &sr_disconnected {
            assert!(ended_out.contains(id), "server request failed, {id} alive");
        }
        for rid in responses.keys() {
            assert!(answered_now.contains(rid), "{rid} sent without an Answered");
        }
        self.check();
        // Interest is checked against the model's own above and in the invariants; the callers
        // check the rest.
        outs.retain(|o| !matches!(o, Output::Interest { .. }));
        Batch { outs, evs }
    }

    fn on_send(
        &mut self,
        ctx: &Ctx,
        conn: ConnectionId,
        frame: &Frame,
        responses: &mut BTreeMap<String, mq::Message>,
    ) {
        let now = self.now;
        let c = &self.conns[&conn];
        assert_eq!(c.phase, Phase::Open, "send to {conn} while {:?}", c.phase);
        let latest = c.encoding;
        let msg = codec::decode(frame, usize::MAX).expect("the gateway's frames decode");
        assert_eq!(msg.session_id, c.session, "wrong session on an outgoing message");
        match msg.message_type {
            Some(1) => {
                let rid = msg.request_id.clone().expect("responses carry request ids");
                assert_eq!(self.issued.get(&rid), Some(&conn), "response {rid} misrouted");
                assert!(self.responded.insert(rid.clone()), "{rid} responded twice");
                if let Some(&token) = self.forwarded.get(&rid) {
                    let p = self
                        .pending
                        .remove(&token)
                        .unwrap_or_else(|| panic!("response to {rid}, no longer pending"));
                    self.conn_mut(&conn).pending.remove(&token);
                    assert_eq!(frame.encoding(), p.encoding, "answer not in its request's encoding");
                    match ctx {
                        Ctx::Reply { token: t } if *t == token => {}
                        Ctx::Timeout => {
                            assert_eq!(error_reason(&msg).as_deref(), Some("timeout"));
                            assert_eq!(now, p.at + self.cfg.request_timeout, "timed out off time");
                        }
                        other => panic!("response to {rid} during {other:?}"),
                    }
                } else {
                    assert!(
                        matches!(ctx, Ctx::Frame { request_id: Some(r), .. } if *r == rid),
                        "refusal of {rid} during {ctx:?}"
                    );
                    // The refused frame is the latest one.
                    assert_eq!(frame.encoding(), latest, "refusal not in its request's encoding");
                }
                responses.insert(rid, msg);
            }
            Some(0) => {
                let Ctx::ServerRequest { conn: to, token, request_type, payload } = ctx else {
                    panic!("server request sent during {ctx:?}")
                };
                assert_eq!(*to, conn);
                assert_eq!(frame.encoding(), latest, "server request not in the latest encoding");
                let n = self.sr_numbers.len() as u64;
                assert_eq!(msg.request_id, Some(format!("S{n}")));
                assert_eq!(&msg.r#type, request_type);
                assert_eq!(&msg.payload, payload);
                self.sr_numbers.push(n);
                self.server_reqs.insert(n, ServerReq { conn, token: *token, at: now });
                self.conn_mut(&conn).server_requests.insert(n);
            }
            Some(2) => {
                let Ctx::Deliver { recipients, event_type, payload } = ctx else {
                    panic!("event sent during {ctx:?}")
                };
                assert!(recipients.contains(&conn));
                assert_eq!(frame.encoding(), latest, "event not in the latest encoding");
                assert_eq!(msg.request_id, None);
                assert_eq!(&msg.r#type, event_type);
                assert_eq!(&msg.payload, payload);
            }
            other => panic!("sent a message of kind {other:?}"),
        }
    }

    fn on_close(&mut self, ctx: &Ctx, conn: ConnectionId, reason: CloseReason) {
        let now = self.now;
        let draining = self.draining;
        let c = self.conn_mut(&conn);
        assert_eq!(c.phase, Phase::Open, "close of {conn} while {:?}", c.phase);
        match reason {
            close::TIMEOUT => {
                assert!(matches!(ctx, Ctx::Timeout), "3334 during {ctx:?}");
                assert_eq!(now, c.next_heartbeat, "3334 off its heartbeat");
                assert!(c.ping.is_some(), "3334 while the last ping was answered");
            }
            close::DRAIN => {
                let start = draining.expect("3333 while not draining");
                assert!(now >= start);
                assert!(c.pending.is_empty(), "drain closed {conn} with requests in flight");
                assert!(matches!(ctx, Ctx::Timeout | Ctx::Reply { .. }));
            }
            close::UNEXPECTED => {
                assert!(matches!(ctx, Ctx::SendFailed { conn: c } if *c == conn))
            }
            other => panic!("unexpected close {other:?}"),
        }
        c.phase = Phase::Closing { code: reason.code, since: now };
    }

    fn on_backend(&mut self, ctx: &Ctx, req: &clientmq_core::BackendRequest) {
        let Ctx::Frame { conn, request_id: Some(rid), request_type, payload, room, subscribe, .. } = ctx
        else {
            panic!("backend request during {ctx:?}")
        };
        assert_eq!(req.conn, *conn);
        let c = &self.conns[conn];
        assert_eq!(c.phase, Phase::Open);
        assert_eq!(req.session_id, c.session);
        assert_eq!(req.remote, c.remote);
        assert_eq!(&req.request_type, request_type);
        if request_type == "pcast.Authenticate" {
            let auth = pcast::Authenticate::decode(req.payload.as_slice()).expect("decodes");
            assert_eq!(auth.connection_id, Some(conn.to_string()));
            assert_eq!(auth.connection_route_key.as_ref(), Some(&self.cfg.route_key));
            assert_eq!(auth.remote_address, Some(c.remote.to_string()));
        } else {
            assert_eq!(&req.payload, payload);
        }
        assert!(!self.tokens.contains(&req.token), "token {} reused", req.token);
        self.tokens.push(req.token);
        self.forwarded.insert(rid.clone(), req.token);
        self.pending.insert(
            req.token,
            Pending {
                conn: *conn,
                request_id: rid.clone(),
                request_type: request_type.clone(),
                room: room.clone(),
                subscribe: *subscribe,
                at: self.now,
                encoding: c.encoding,
            },
        );
        self.conn_mut(conn).pending.insert(req.token);
        // The room a request names is heard before the request goes out.
        if let Some(hear) = self.pending[&req.token].hears() {
            assert!(self.interest.contains(&hear), "{hear:?} not heard before {} went out", req.token);
        }
    }

    fn on_disconnected(
        &mut self,
        ctx: &Ctx,
        id: ConnectionId,
        path: DisconnectPath,
        code: u16,
        outs: &[Output],
    ) {
        assert!(self.disconnected.insert(id), "{id} disconnected twice");
        let close_timeout = self.cfg.close_timeout;
        let now = self.now;
        let c = &self.conns[&id];
        assert_eq!(c.phase, Phase::Ended, "{id} disconnected without Abort/Release");
        let before = c.before_end.expect("set at Abort/Release");
        let expected = match (ctx, before) {
            (Ctx::PeerClosed { conn, code }, Phase::Open) if *conn == id => {
                (DisconnectPath::Client, code.unwrap_or(close::NO_STATUS))
            }
            (Ctx::PeerClosed { conn, .. }, Phase::Closing { code, .. }) if *conn == id => {
                (DisconnectPath::Server, code)
            }
            (Ctx::Lost { conn, reason }, Phase::Open) if *conn == id => {
                let code = match reason {
                    LostReason::Eof | LostReason::Error => close::ABNORMAL,
                    LostReason::Protocol => 1002,
                    LostReason::NotUtf8 => 1007,
                    LostReason::TooBig => close::TOO_BIG.code,
                };
                (DisconnectPath::Lost, code)
            }
            (Ctx::Lost { conn, .. }, Phase::Closing { code, .. }) if *conn == id => {
                (DisconnectPath::Lost, code)
            }
            (Ctx::Timeout, Phase::Closing { code, since }) => {
                assert_eq!(now, since + close_timeout, "forced off the close deadline");
                (DisconnectPath::Forced, code)
            }
            (ctx, before) => panic!("{id} disconnected ({path:?}) from {before:?} during {ctx:?}"),
        };
        assert_eq!((path, code), expected, "wrong path or code for {id}");
        assert_eq!(c.aborted, path == DisconnectPath::Forced, "Abort iff forced");
        let publish = outs
            .iter()
            .find_map(|o| match o {
                Output::Publish(p) if p.connection_id == id.to_string() => Some(p),
                _ => None,
            })
            .expect("published");
        assert_eq!(publish.reason_code, u32::from(code));
        assert_eq!(publish.description.as_deref(), Some(path.label()));
        self.recent_ended.push_back(id);
        if self.recent_ended.len() > self.cfg.ended_memory {
            self.recent_ended.pop_front();
        }
        *self.paths.entry(path).or_default() += 1;
    }

    fn on_answered(&mut self, rid: &str, outcome: RequestOutcome, responses: &BTreeMap<String, mq::Message>) {
        let reason = responses.get(rid).map(error_reason);
        match outcome {
            RequestOutcome::Undeliverable => {
                assert!(!self.responded.contains(rid), "{rid} both sent and undeliverable");
                let token = self.forwarded[rid];
                let p = self
                    .pending
                    .remove(&token)
                    .unwrap_or_else(|| panic!("{rid} undeliverable, no longer pending"));
                assert_ne!(
                    self.conns[&p.conn].phase,
                    Phase::Open,
                    "{rid} undeliverable to an open connection"
                );
                self.conn_mut(&p.conn).pending.remove(&token);
            }
            RequestOutcome::Refused => {
                assert!(!self.forwarded.contains_key(rid));
                let reason = reason.flatten().expect("refusals are mq.Error");
                assert!(["draining", "too-many-requests", "malformed"].contains(&reason.as_str()));
            }
            RequestOutcome::Timeout => assert_eq!(reason, Some(Some("timeout".to_owned()))),
            RequestOutcome::Failed => assert_eq!(reason, Some(Some("failed".to_owned()))),
            RequestOutcome::Ok => assert_eq!(reason, Some(None), "{rid} ok without a reply"),
            // The model's backend answers with its types or fails; it never decides an mq.Error.
            RequestOutcome::Error => panic!("{rid}: the model's backend never answers mq.Error"),
        }
        *self.outcomes.entry(outcome).or_default() += 1;
    }
}

fn output_key(out: &Output) -> String {
    match out {
        Output::Send { .. } | Output::Deliver(_) => {
            let frames = out.data_frames();
            let msg = codec::decode(&frames[0].1, usize::MAX).expect("decodes");
            match error_reason(&msg) {
                Some(reason) => format!("send error {reason}"),
                None => format!("send kind {:?}", msg.message_type),
            }
        }
        Output::Ping { .. } => "ping".into(),
        Output::Close { close, .. } => format!("close {}", close.code),
        Output::Abort { .. } => "abort".into(),
        Output::Release { .. } => "release".into(),
        Output::Backend(_) => "backend".into(),
        Output::Publish(_) => "publish".into(),
        Output::Interest { on, .. } => format!("interest {on}"),
        Output::Pong { .. } => "pong".into(),
        Output::ServerRequestDone { result: Ok(_), .. } => "server-request-done ok".into(),
        Output::ServerRequestDone { result: Err(e), .. } => format!("server-request-done {}", e.label()),
    }
}

fn event_key(kind: &EventKind) -> String {
    match kind {
        EventKind::Disconnected { path, code, .. } => format!("disconnected {} {code}", path.label()),
        EventKind::Rejected { code, .. } => format!("rejected {code}"),
        EventKind::Dropped { reason } => format!("dropped {}", reason.label()),
        EventKind::Answered { outcome, .. } => format!("answered {}", outcome.label()),
        EventKind::Stray { what, after_end } => format!("stray {} {after_end}", what.label()),
        EventKind::Subscribed { topic, .. } => format!("subscribed {}", topic.label()),
        EventKind::Unsubscribed { topic, .. } => format!("unsubscribed {}", topic.label()),
        other => other.to_string().split(' ').next().unwrap_or_default().to_owned(),
    }
}
