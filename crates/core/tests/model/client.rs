//! Client-side operations (opens, frames, pongs, closes, losses, send failures) and what each must produce.

use base64::Engine as _;
use clientmq_core::{
    Admission, ConnectionId, DropReason, Encoding, EventKind, Frame, Input, LostReason, Output, Reply,
    RequestOutcome, Stray, close, codec,
};

use crate::fixtures::{BAD_PAYLOAD, error_reason, message, peer, request_intent, request_payload};
use crate::harness::Harness;
use crate::ops::{Body, ReqKind, Sel, SrSel};
use crate::state::{Conn, Ctx, Phase};

/// A request frame as the harness built it.
#[derive(Debug, Clone)]
struct SentRequest {
    rid: Option<String>,
    kind: ReqKind,
    /// The payload does not decode as the request type's message.
    bad: bool,
    ty: String,
    payload: Vec<u8>,
}

enum FrameExpect {
    Drop(DropReason),
    Refuse(&'static str),
    Forward,
    Done { token: u64, reply: Reply },
}

impl Harness {
    pub(crate) fn op_open(&mut self, i: usize) {
        let (peer, remote) = peer(i);
        let refusal = if self.draining.is_some() {
            Some(close::DRAIN)
        } else if self.open_count() >= self.cfg.max_connections {
            Some(close::CONCURRENCY_LIMIT)
        } else {
            None
        };
        let admission = self.gw.open(&peer, self.stamp());
        let id = match (admission, refusal) {
            (Admission::Accepted(id), None) => {
                assert!(!self.ids.contains(&id), "id {id} issued twice");
                self.accepted += 1;
                let hb = self.now + self.cfg.heartbeat_interval;
                self.conns.insert(id, Conn::new(remote, hb));
                id
            }
            (Admission::Rejected { id, close }, Some(expected)) => {
                assert_eq!(close, expected);
                assert!(!self.ids.contains(&id), "id {id} issued twice");
                self.rejected += 1;
                id
            }
            (admission, refusal) => panic!(
                "admission {admission:?} with {} open (draining: {}), model expected refusal {refusal:?}",
                self.open_count(),
                self.draining.is_some()
            ),
        };
        self.ids.push(id);
        let b = self.absorb(&Ctx::Open);
        assert!(b.outs.is_empty(), "open produced outputs: {:?}", b.outs);
        let expected = match refusal {
            None => EventKind::Opened { remote, open: self.open_count() },
            Some(close) => EventKind::Rejected { code: close.code, open: self.open_count() },
        };
        assert_eq!(b.kinds(), vec![&expected]);
        assert_eq!(b.evs[0].conn, Some(id));
    }

    pub(crate) fn op_refuse(&mut self) {
        // Judged elsewhere against a full gateway: the count travels into the trace as given.
        let judged = self.cfg.max_connections + 3;
        let id = self.gw.refuse(close::CONCURRENCY_LIMIT, judged, self.stamp());
        assert!(!self.ids.contains(&id), "id {id} issued twice");
        self.ids.push(id);
        self.rejected += 1;
        let b = self.absorb(&Ctx::Open);
        assert!(b.outs.is_empty(), "{:?}", b.outs);
        let expected = EventKind::Rejected { code: close::CONCURRENCY_LIMIT.code, open: judged };
        assert_eq!(b.kinds(), vec![&expected]);
        assert_eq!(b.evs[0].conn, Some(id));
    }

    pub(crate) fn op_frame(&mut self, sel: Sel, text: bool, body: &Body) {
        let mut conn = self.resolve(sel);
        let encoding = if text { Encoding::Base64Text } else { Encoding::Binary };
        let max = self.cfg.max_message_size;
        let mut request: Option<SentRequest> = None;
        let frame = match body {
            Body::Request { id, typed, kind, bad_payload } => {
                let rid = id.then(|| {
                    self.next_rid += 1;
                    format!("C{}", self.next_rid)
                });
                let (ty, mut payload) = request_payload(*kind);
                if *bad_payload {
                    payload = BAD_PAYLOAD.to_vec();
                }
                let msg = message(rid.clone(), ty, payload.clone(), typed.then_some(0));
                request =
                    Some(SentRequest { rid, kind: *kind, bad: *bad_payload, ty: ty.to_owned(), payload });
                codec::encode(&msg, encoding)
            }
            Body::Response(sr) => {
                let next = self.sr_numbers.len() as u64;
                let n = match *sr {
                    SrSel::Pending(i) if !self.server_reqs.is_empty() => {
                        let (n, r) =
                            self.server_reqs.iter().nth(i % self.server_reqs.len()).expect("in range");
                        conn = r.conn;
                        *n
                    }
                    SrSel::Observed(i) if !self.sr_numbers.is_empty() => {
                        self.sr_numbers[i % self.sr_numbers.len()]
                    }
                    SrSel::Unobserved(k) => next + k,
                    _ => next,
                };
                let msg = message(Some(format!("S{n}")), "test.AskResponse", vec![7, n as u8], Some(1));
                codec::encode(&msg, encoding)
            }
            Body::Event => codec::encode(&message(None, "x.ClientEvent", vec![1], Some(2)), encoding),
            Body::UnknownKind => {
                codec::encode(&message(Some("weird".into()), "x.Weird", vec![], Some(7)), encoding)
            }
            Body::Garbage(bytes) if text => {
                Frame::Text(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            Body::Garbage(bytes) => Frame::Binary(bytes.clone()),
            Body::BadBase64(s) => Frame::Text(s.clone()),
            Body::Empty if text => Frame::Text(String::new()),
            Body::Empty => Frame::Binary(Vec::new()),
            Body::TooLarge if text => Frame::Text("A".repeat(max + 1)),
            Body::TooLarge => Frame::Binary(vec![0; max + 1]),
        };
        // Random bytes that happen to decode would be real messages with arbitrary request ids.
        let garbage = matches!(body, Body::Garbage(_) | Body::BadBase64(_));
        let frame = if garbage && codec::decode(&frame, max).is_ok() {
            Frame::Binary(BAD_PAYLOAD.to_vec())
        } else {
            frame
        };

        let mut ctx_request_id = None;
        let mut ctx_type = String::new();
        let mut ctx_payload = Vec::new();
        let mut ctx_room = None;
        let mut ctx_subscribe = false;
        let mut sr_answer = None;
        let expect = match self.registered(&conn).map(|c| c.phase) {
            None => FrameExpect::Drop(DropReason::UnknownConnection),
            Some(Phase::Closing { .. }) => FrameExpect::Drop(DropReason::NotOpen),
            Some(Phase::Ended) => unreachable!("registered() filters ended connections"),
            Some(Phase::Open) => match codec::decode(&frame, max) {
                Err(e) => FrameExpect::Drop(DropReason::Malformed(e.label())),
                Ok(msg) => {
                    self.conn_mut(&conn).encoding = frame.encoding();
                    match msg.message_type.unwrap_or(0) {
                        0 => {
                            let SentRequest { rid, kind, bad, ty, payload } =
                                request.clone().expect("only Body::Request decodes as a request");
                            match rid {
                                None => FrameExpect::Drop(DropReason::MissingRequestId),
                                Some(rid) => {
                                    let prev = self.issued.insert(rid.clone(), conn);
                                    assert!(prev.is_none(), "harness reused {rid}");
                                    ctx_request_id = Some(rid);
                                    ctx_type = ty;
                                    ctx_payload = payload;
                                    let c = &self.conns[&conn];
                                    if c.drain_due {
                                        FrameExpect::Refuse("draining")
                                    } else if c.pending.len() >= self.cfg.max_pending_requests {
                                        FrameExpect::Refuse("too-many-requests")
                                    } else if bad && kind != ReqKind::Other {
                                        FrameExpect::Refuse("malformed")
                                    } else {
                                        (ctx_room, ctx_subscribe) = request_intent(kind);
                                        FrameExpect::Forward
                                    }
                                }
                            }
                        }
                        1 => {
                            let n = msg
                                .request_id
                                .as_deref()
                                .and_then(|r| r.strip_prefix('S'))
                                .and_then(|n| n.parse::<u64>().ok())
                                .expect("harness responses name S<n>");
                            match self.server_reqs.get(&n) {
                                Some(r) if r.conn == conn => {
                                    sr_answer = Some(n);
                                    FrameExpect::Done {
                                        token: r.token,
                                        reply: Reply {
                                            reply_type: msg.r#type.clone(),
                                            payload: msg.payload.clone(),
                                        },
                                    }
                                }
                                // Pending on another connection: not this client's to answer.
                                Some(_) => FrameExpect::Drop(DropReason::UnsolicitedResponse),
                                None if n < self.sr_numbers.len() as u64 => {
                                    FrameExpect::Drop(DropReason::LateResponse)
                                }
                                None => FrameExpect::Drop(DropReason::UnsolicitedResponse),
                            }
                        }
                        2 => FrameExpect::Drop(DropReason::ClientEvent),
                        _ => FrameExpect::Drop(DropReason::UnknownMessageType),
                    }
                }
            },
        };
        let ctx = Ctx::Frame {
            conn,
            request_id: ctx_request_id.clone(),
            request_type: ctx_type.clone(),
            payload: ctx_payload,
            room: ctx_room,
            subscribe: ctx_subscribe,
            sr_answer,
        };
        self.gw.handle(Input::Frame { conn, frame }, self.stamp());
        let b = self.absorb(&ctx);
        match expect {
            FrameExpect::Drop(reason) => {
                assert!(b.outs.is_empty(), "dropped frame produced {:?}", b.outs);
                assert_eq!(b.kinds(), vec![&EventKind::Dropped { reason }]);
                assert_eq!(b.evs[0].conn, Some(conn));
            }
            FrameExpect::Refuse(reason) => {
                assert_eq!(b.outs.len(), 1, "{:?}", b.outs);
                let Output::Send { conn: to, frame } = &b.outs[0] else {
                    panic!("refusal is not a send: {:?}", b.outs)
                };
                assert_eq!(*to, conn);
                let msg = codec::decode(frame, usize::MAX).expect("decodes");
                assert_eq!(msg.request_id, ctx_request_id);
                assert_eq!(error_reason(&msg).as_deref(), Some(reason));
                assert!(matches!(
                    b.kinds()[..],
                    [
                        EventKind::RequestRefused { reason: traced },
                        EventKind::Answered { outcome: RequestOutcome::Refused, .. }
                    ] if *traced == reason
                ));
            }
            FrameExpect::Forward => {
                let [Output::Backend(req)] = &b.outs[..] else {
                    panic!("request not forwarded: {:?}", b.outs)
                };
                assert_eq!(
                    b.kinds(),
                    vec![&EventKind::Forwarded {
                        request_id: ctx_request_id.expect("forwarded requests have ids"),
                        request_type: ctx_type,
                        token: req.token,
                    }]
                );
            }
            FrameExpect::Done { token, reply } => {
                assert_eq!(b.outs, vec![Output::ServerRequestDone { token, result: Ok(reply) }]);
                assert_eq!(
                    b.kinds(),
                    vec![&EventKind::ServerRequestDone {
                        request_id: format!("S{}", sr_answer.expect("set with Done")),
                        outcome: "ok",
                    }]
                );
            }
        }
    }

    pub(crate) fn op_pong(&mut self, sel: Sel, right: bool) {
        self.op_pong_to(self.resolve(sel), right)
    }

    pub(crate) fn op_pong_to(&mut self, conn: ConnectionId, right: bool) {
        let payload = match (right, self.conns.get(&conn)) {
            (true, Some(c)) => c.last_ping.clone().unwrap_or_else(|| vec![0; 8]),
            _ => vec![0xaa; 8],
        };
        let now = self.now;
        let expected = match self.registered(&conn) {
            None => EventKind::Stray { what: Stray::Pong, after_end: self.recent_ended.contains(&conn) },
            Some(c) => match &c.ping {
                Some((p, at)) if *p == payload => EventKind::Pong { rtt: now - *at },
                _ => EventKind::UnexpectedPong,
            },
        };
        if matches!(expected, EventKind::Pong { .. }) {
            self.conn_mut(&conn).ping = None;
            self.pongs += 1;
        }
        self.gw.handle(Input::Pong { conn, payload }, self.stamp());
        let b = self.absorb(&Ctx::Pong);
        assert!(b.outs.is_empty(), "{:?}", b.outs);
        assert_eq!(b.kinds(), vec![&expected]);
    }

    /// `PeerClosed` (with `Some(code)`) or `TransportLost`.
    pub(crate) fn op_end(&mut self, sel: Sel, peer_close: Option<Option<u16>>, reason: LostReason) {
        let conn = self.resolve(sel);
        let registered = self.registered(&conn).is_some();
        let after_end = self.recent_ended.contains(&conn);
        let (input, ctx, stray) = match peer_close {
            Some(code) => (Input::PeerClosed { conn, code }, Ctx::PeerClosed { conn, code }, Stray::Close),
            None => (Input::TransportLost { conn, reason }, Ctx::Lost { conn, reason }, Stray::TransportLost),
        };
        self.gw.handle(input, self.stamp());
        let b = self.absorb(&ctx);
        if registered {
            assert!(self.disconnected.contains(&conn), "{conn} did not end");
            assert!(b.outs.contains(&Output::Release { conn }));
        } else {
            assert!(b.outs.is_empty(), "{:?}", b.outs);
            assert_eq!(b.kinds(), vec![&EventKind::Stray { what: stray, after_end }]);
        }
    }

    pub(crate) fn op_send_failed(&mut self, sel: Sel) {
        let conn = self.resolve(sel);
        let phase = self.registered(&conn).map(|c| c.phase);
        let after_end = self.recent_ended.contains(&conn);
        self.gw.handle(Input::SendFailed { conn }, self.stamp());
        let b = self.absorb(&Ctx::SendFailed { conn });
        match phase {
            Some(Phase::Open) => assert_eq!(b.outs, vec![Output::Close { conn, close: close::UNEXPECTED }]),
            Some(_) => {
                assert!(b.outs.is_empty());
                assert_eq!(b.kinds(), vec![&EventKind::SendFailed]);
            }
            None => {
                assert!(b.outs.is_empty());
                assert_eq!(b.kinds(), vec![&EventKind::Stray { what: Stray::SendFailed, after_end }]);
            }
        }
    }
}
