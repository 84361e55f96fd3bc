//! Backend and operator operations (replies, deliveries, server requests, drain) and what each must produce.

use clientmq_core::{
    ConnectionId, DropReason, EventKind, Input, Output, RequestOutcome, ServerRequestError, Stray, Target,
    Topic, close, codec,
};

use crate::fixtures::{MISSING_TOKEN, ROOMS, build_reply, error_reason};
use crate::harness::Harness;
use crate::ops::{DeliverTo, ReplyKind, ReplyTy, Sel, TokSel};
use crate::state::{Ctx, Phase};

impl Harness {
    pub(crate) fn op_reply(&mut self, sel: TokSel, kind: ReplyKind) {
        let token = match sel {
            TokSel::Pending(i) if !self.pending.is_empty() => {
                *self.pending.keys().nth(i % self.pending.len()).expect("in range")
            }
            TokSel::Pending(i) | TokSel::Any(i) if !self.tokens.is_empty() => {
                self.tokens[i % self.tokens.len()]
            }
            _ => MISSING_TOKEN,
        };
        let p = self.pending.get(&token).cloned();
        let request_type = p.as_ref().map_or("x.Other", |p| p.request_type.as_str()).to_owned();
        let (result, reply_type) = build_reply(&request_type, kind);
        let open = p.as_ref().is_some_and(|p| self.conns[&p.conn].phase == Phase::Open);
        let mut sub_events = Vec::new();
        let mut expect_drain_close = false;
        // What a backend decides before it answers: the subscriptions the request brings.
        let mut decided: Vec<(Topic, String, bool)> = Vec::new();
        if let (Some(p), true) = (&p, open) {
            let c = self.conns.get_mut(&p.conn).expect("pending on a known conn");
            expect_drain_close = c.drain_due && c.pending.len() == 1;
            if let ReplyKind::Ok { ok: true, ty: ReplyTy::Default | ReplyTy::Explicit, room, session } = kind
            {
                match p.request_type.as_str() {
                    // The only thing the gateway reads from a reply: the session.
                    "pcast.Authenticate" => {
                        if let Some(s) = session {
                            let session_id = format!("session-{s}");
                            c.session = Some(session_id.clone());
                            sub_events.push(EventKind::Authenticated { session_id });
                        }
                    }
                    "chat.JoinRoom" => {
                        let room = room.map(|r| ROOMS[r].to_owned()).or(p.room.clone());
                        decided.extend(room.map(|room| (Topic::Room, room, true)));
                    }
                    "chat.LeaveRoom" => {
                        let room = p.room.clone().expect("leave names its room");
                        for topic in [Topic::Room, Topic::Conversation] {
                            decided.push((topic, room.clone(), false));
                        }
                    }
                    "chat.FetchRoomConversation" if p.subscribe => {
                        let room = p.room.clone().expect("fetch names its room");
                        decided.push((Topic::Conversation, room, true));
                    }
                    _ => {}
                }
            }
        }
        if let Some(p) = &p {
            for (topic, room, subscribe) in decided {
                self.decide_subscription(p.conn, topic, room, subscribe);
            }
        }
        self.gw.handle(Input::BackendReply { token, result: result.clone() }, self.stamp());
        let b = self.absorb(&Ctx::Reply { token });
        let Some(p) = p else {
            assert!(b.outs.is_empty(), "{:?}", b.outs);
            assert_eq!(b.kinds(), vec![&EventKind::LateReply { token }]);
            return;
        };
        if !open {
            assert!(b.outs.is_empty(), "{:?}", b.outs);
            assert!(matches!(
                b.kinds()[..],
                [EventKind::Answered { outcome: RequestOutcome::Undeliverable, .. }]
            ));
            return;
        }
        assert_eq!(b.outs.len(), 1 + usize::from(expect_drain_close), "{:?}", b.outs);
        let Output::Send { conn, frame } = &b.outs[0] else { panic!("reply not sent: {:?}", b.outs) };
        assert_eq!(*conn, p.conn);
        let msg = codec::decode(frame, usize::MAX).expect("decodes");
        assert_eq!(msg.request_id.as_deref(), Some(p.request_id.as_str()));
        match &result {
            Ok(reply) => {
                assert_eq!(msg.r#type, reply_type);
                assert_eq!(msg.payload, reply.payload);
            }
            Err(_) => assert_eq!(error_reason(&msg).as_deref(), Some("failed")),
        }
        if expect_drain_close {
            assert_eq!(b.outs[1], Output::Close { conn: p.conn, close: close::DRAIN });
        }
        let subs: Vec<&EventKind> = b
            .kinds()
            .into_iter()
            .filter(|k| {
                matches!(
                    k,
                    EventKind::Authenticated { .. }
                        | EventKind::Subscribed { .. }
                        | EventKind::Unsubscribed { .. }
                        | EventKind::SubscriptionLimit { .. }
                )
            })
            .collect();
        assert_eq!(subs, sub_events.iter().collect::<Vec<_>>());
    }

    pub(crate) fn op_deliver(&mut self, to: DeliverTo) {
        let (target, recipients) = match to {
            DeliverTo::Conn(sel) => {
                let id = self.resolve(sel);
                let r = if self.registered(&id).is_some() { vec![id] } else { vec![] };
                (Target::Connection(id), r)
            }
            DeliverTo::Room(i) | DeliverTo::Conversation(i) => {
                let room = ROOMS[i].to_owned();
                let rooms = matches!(to, DeliverTo::Room(_));
                let r = self
                    .conns
                    .iter()
                    .filter(|(_, c)| {
                        c.phase != Phase::Ended
                            && if rooms { c.rooms.contains(&room) } else { c.conversations.contains(&room) }
                    })
                    .map(|(id, _)| *id)
                    .collect();
                let target = if rooms { Target::Room(room) } else { Target::Conversation(room) };
                (target, r)
            }
        };
        let open: Vec<ConnectionId> =
            recipients.iter().filter(|id| self.conns[*id].phase == Phase::Open).copied().collect();
        let stray = match &target {
            Target::Connection(id) if recipients.is_empty() => {
                Some(EventKind::Stray { what: Stray::Delivery, after_end: self.recent_ended.contains(id) })
            }
            _ => None,
        };
        let event_type = "x.Event".to_owned();
        let payload = vec![8];
        self.gw.handle(
            Input::Deliver { target, event_type: event_type.clone(), payload: payload.clone() },
            self.stamp(),
        );
        let b = self.absorb(&Ctx::Deliver { recipients: open.clone(), event_type, payload });
        let sent: Vec<ConnectionId> = b
            .outs
            .iter()
            .flat_map(|o| match o {
                Output::Deliver(delivery) => delivery.iter().map(|(conn, ..)| conn).collect::<Vec<_>>(),
                other => panic!("delivery produced {other:?}"),
            })
            .collect();
        assert_eq!(sent, open, "delivered to the wrong connections");
        let dropped =
            b.kinds().iter().filter(|k| ***k == EventKind::Dropped { reason: DropReason::NotOpen }).count();
        assert_eq!(dropped, recipients.len() - open.len());
        if let Some(stray) = stray {
            assert_eq!(b.kinds(), vec![&stray]);
        }
    }

    pub(crate) fn op_subscription(&mut self, sel: Sel, topic: Topic, room: usize, subscribe: bool) {
        let conn = self.resolve(sel);
        self.decide_subscription(conn, topic, ROOMS[room].to_owned(), subscribe);
    }

    /// The backend subscribes `conn` (or unsubscribes it): the gateway's tables follow, up to
    /// the limit, for a connection still registered (closing ones too); anything else is stray.
    fn decide_subscription(&mut self, conn: ConnectionId, topic: Topic, room: String, subscribe: bool) {
        let limit = self.cfg.max_subscriptions;
        let mut expected = Vec::new();
        match self.conns.get_mut(&conn).filter(|c| c.phase != Phase::Ended) {
            Some(c) if subscribe => c.subscribe(topic, room.clone(), limit, &mut expected),
            Some(c) => {
                if c.topic(topic).remove(&room) {
                    expected.push(EventKind::Unsubscribed { topic, room: room.clone() });
                }
            }
            None => expected.push(EventKind::Stray {
                what: Stray::Subscription,
                after_end: self.recent_ended.contains(&conn),
            }),
        }
        self.gw.handle(Input::Subscription { conn, topic, room, subscribe, revision: None }, self.stamp());
        let b = self.absorb(&Ctx::Subscription);
        assert!(b.outs.iter().all(|o| matches!(o, Output::Interest { .. })), "{:?}", b.outs);
        assert_eq!(b.kinds(), expected.iter().collect::<Vec<_>>());
    }

    pub(crate) fn op_server_request(&mut self, sel: Sel) {
        let conn = self.resolve(sel);
        let token = self.sr_next_token;
        self.sr_next_token += 1;
        self.sr_issued.insert(token);
        let refusal = match self.registered(&conn) {
            None => Some(ServerRequestError::NotConnected),
            Some(c) if c.phase != Phase::Open => Some(ServerRequestError::NotOpen),
            Some(c) if c.server_requests.len() >= self.cfg.max_pending_server_requests => {
                Some(ServerRequestError::TooManyPending)
            }
            Some(_) => None,
        };
        let request_type = "test.Ask".to_owned();
        let payload = vec![9];
        self.gw.handle(
            Input::ServerRequest {
                token,
                conn,
                request_type: request_type.clone(),
                payload: payload.clone(),
            },
            self.stamp(),
        );
        let b = self.absorb(&Ctx::ServerRequest { conn, token, request_type, payload });
        match refusal {
            Some(error) => assert_eq!(b.outs, vec![Output::ServerRequestDone { token, result: Err(error) }]),
            None => {
                assert!(matches!(&b.outs[..], [Output::Send { conn: to, .. }] if *to == conn), "{:?}", b.outs)
            }
        }
    }

    pub(crate) fn op_drain(&mut self) {
        let first = self.draining.is_none();
        if first {
            self.draining = Some(self.now);
        }
        self.gw.handle(Input::Drain, self.stamp());
        let b = self.absorb(&Ctx::Drain);
        assert!(b.outs.is_empty(), "{:?}", b.outs);
        if first {
            assert_eq!(b.kinds(), vec![&EventKind::DrainStarted { open: self.open_count() }]);
        } else {
            assert!(b.evs.is_empty(), "{:?}", b.evs);
        }
    }
}
