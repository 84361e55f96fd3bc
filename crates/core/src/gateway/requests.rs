//! Client requests to the backend and their answers; the types the backend port speaks.

use std::time::Instant;

use prost::Message as _;

use super::{Gateway, Output};
use crate::ConnectionId;
use crate::auth::{self, Refusal};
use crate::codec::{self, Encoding, Frame};
use crate::config::close;
use crate::edge_auth::{Claims, RequiredTag};
use crate::event::{DropReason, EventKind, RequestOutcome, Topic};
use crate::port::{BackendRequest, Reply};
use crate::proto::{chat, mq, pcast};
use crate::timers::Timer;

use mq::message::MessageType;

/// What [`Gateway::charge`] found.
pub(crate) enum Charge {
    Within,
    Over,
    /// Over for too long: the connection is closing now.
    Closed,
}

/// A request made ready for the backend.
pub(crate) struct Prepared {
    payload: Vec<u8>,
    intent: Option<Intent>,
    claims: Option<Claims>,
}

/// Why a request does not go to the backend.
pub(crate) enum Unfit {
    /// Its payload is not its type.
    Malformed,
    /// The token does not allow it.
    Token(Refusal),
}

/// What the gateway does around a request besides forwarding it. Subscriptions are the
/// backend's to decide ([`crate::Input::Subscription`]); the gateway reads only the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Intent {
    /// A successful reply names the connection's session; the connection gets the room limit
    /// of its token.
    Authenticate { room_tag: Option<RequiredTag> },
    /// A join or a subscribing fetch that names its room: the gateway hears the room while the
    /// request is in flight, so nothing published right after the backend's decision is missed
    /// (see [`crate::Output::Interest`]).
    Hear(Topic, String),
}

#[derive(Debug, Clone)]
pub(crate) struct PendingRequest {
    pub conn: ConnectionId,
    /// The answer goes out the way the request came in.
    pub encoding: Encoding,
    pub request_id: String,
    pub request_type: String,
    pub started: Instant,
    pub deadline: Instant,
    pub intent: Option<Intent>,
}

#[derive(Debug, Clone)]
pub(crate) struct PendingServerRequest {
    pub conn: ConnectionId,
    pub token: u64,
    pub deadline: Instant,
}

pub(crate) fn message(
    kind: MessageType,
    request_id: Option<&str>,
    ty: &str,
    payload: Vec<u8>,
) -> mq::Message {
    mq::Message {
        session_id: None,
        request_id: request_id.map(str::to_owned),
        r#type: ty.to_owned(),
        encoding: None,
        payload,
        wall_time: Vec::new(),
        message_type: Some(kind as i32),
    }
}

/// The reasons clientmq's backends answer `mq.Error` with; any other is `other` (a worker's
/// reason is a metric label: it must not grow without bound).
const BACKEND_REASONS: [&str; 7] =
    ["unauthorized", "unsupported", "malformed", "no-worker", "unavailable", "failed", "timeout"];

fn refusal_reason(payload: &[u8]) -> &'static str {
    let reason = mq::Error::decode(payload).map(|e| e.reason).unwrap_or_default();
    BACKEND_REASONS.iter().find(|r| **r == reason).copied().unwrap_or("other")
}

impl Gateway {
    pub(crate) fn on_frame(&mut self, id: ConnectionId, frame: Frame) {
        let Some(conn) = self.registry.get(&id) else {
            return self.drop_frame(id, DropReason::UnknownConnection);
        };
        if !conn.is_open() {
            return self.drop_frame(id, DropReason::NotOpen);
        }
        if conn.flood_due {
            return self.drop_frame(id, DropReason::RateLimited);
        }
        let within_rate = match self.charge(id) {
            Charge::Within => true,
            Charge::Over => false,
            Charge::Closed => return,
        };
        let decoded = codec::decode(&frame, self.config.max_message_size);
        let encoding = frame.encoding();
        if !within_rate {
            // Over the rate, only a request that can be answered is; anything else is dropped.
            return match decoded {
                Ok(msg)
                    if msg.message_type.unwrap_or(MessageType::Request as i32)
                        == MessageType::Request as i32 =>
                {
                    match msg.request_id.as_deref().filter(|r| !r.is_empty()) {
                        Some(request_id) => {
                            self.refuse_request(id, request_id, &msg.r#type, encoding, "rate-limited")
                        }
                        None => self.drop_frame(id, DropReason::RateLimited),
                    }
                }
                _ => self.drop_frame(id, DropReason::RateLimited),
            };
        }
        let msg = match decoded {
            Ok(msg) => msg,
            Err(e) => return self.drop_frame(id, DropReason::Malformed(e.label())),
        };
        if let Some(conn) = self.registry.get_mut(&id) {
            conn.encoding = encoding;
        }
        match MessageType::try_from(msg.message_type.unwrap_or(MessageType::Request as i32)) {
            Ok(MessageType::Request) => self.on_request(id, msg, encoding),
            Ok(MessageType::Response) => self.on_client_response(id, msg),
            Ok(MessageType::Event) => self.drop_frame(id, DropReason::ClientEvent),
            Err(_) => self.drop_frame(id, DropReason::UnknownMessageType),
        }
    }

    fn on_request(&mut self, id: ConnectionId, msg: mq::Message, encoding: Encoding) {
        let Some(request_id) = msg.request_id.filter(|r| !r.is_empty()) else {
            return self.drop_frame(id, DropReason::MissingRequestId);
        };
        let (drain_due, pending) = match self.registry.get(&id) {
            Some(c) => (c.drain_due, c.pending.len()),
            None => return,
        };
        let refusal = if drain_due {
            Some("draining")
        } else if pending >= self.config.max_pending_requests {
            Some("too-many-requests")
        } else {
            None
        };
        if let Some(reason) = refusal {
            return self.refuse_request(id, &request_id, &msg.r#type, encoding, reason);
        }
        let Prepared { payload, intent, claims } = match self.prepare(id, &msg.r#type, msg.payload) {
            Ok(prepared) => prepared,
            Err(Unfit::Malformed) => {
                return self.refuse_request(id, &request_id, &msg.r#type, encoding, "malformed");
            }
            Err(Unfit::Token(refusal)) => {
                return self.refuse_token(id, &request_id, &msg.r#type, encoding, &refusal);
            }
        };
        if let Some(Intent::Hear(topic, room)) = &intent {
            self.hold_interest(*topic, room);
        }
        let token = self.next_token;
        self.next_token += 1;
        let deadline = self.now + self.config.request_timeout;
        let conn = self.registry.get_mut(&id).expect("checked above");
        conn.pending.insert(token);
        let backend = BackendRequest {
            token,
            conn: id,
            session_id: conn.session_id.clone(),
            remote: conn.remote,
            request_type: msg.r#type.clone(),
            payload,
            claims: claims.map(Box::new),
        };
        self.timers.arm(deadline, Timer::Request(token));
        self.trace(
            Some(id),
            EventKind::Forwarded { request_id: request_id.clone(), request_type: msg.r#type.clone(), token },
        );
        self.requests.insert(
            token,
            PendingRequest {
                conn: id,
                encoding,
                request_id,
                request_type: msg.r#type,
                started: self.now,
                deadline,
                intent,
            },
        );
        self.push(Output::Backend(backend));
    }

    /// Charges one frame (of any kind: data, ping, pong, garbage) to the connection's rate. A
    /// burst more refused in a row after the bucket ran dry closes the connection with 1008.
    /// Nothing is charged to a connection that is not open (`Closed`).
    pub(crate) fn charge(&mut self, id: ConnectionId) -> Charge {
        let (now, per_sec, burst) = (self.now, self.config.max_requests_per_sec, self.config.request_burst);
        let Some(conn) = self.registry.get_mut(&id).filter(|c| c.is_open()) else { return Charge::Closed };
        if conn.flood_due {
            return Charge::Closed; // its close waits for answers owed; nothing more is taken
        }
        let within = conn.take_token(now, per_sec, burst);
        conn.strikes = if within { 0 } else { conn.strikes + 1 };
        if conn.strikes > burst {
            // A full burst more after being refused: it is not listening. What it was promised
            // (requests accepted before) is answered first, then the close goes out.
            let pending = conn.pending.len();
            if pending == 0 {
                self.start_close(id, close::RATE_LIMIT);
            } else {
                conn.flood_due = true;
                self.trace(Some(id), EventKind::FloodDeferred { pending });
            }
            return Charge::Closed;
        }
        if within { Charge::Within } else { Charge::Over }
    }

    /// Fills in what the gateway owes the backend (the seed's adapter did the same), checks the
    /// token of an authentication and the room of a join against it, and reads what a successful
    /// reply will change.
    fn prepare(&self, id: ConnectionId, request_type: &str, payload: Vec<u8>) -> Result<Prepared, Unfit> {
        let conn = self.registry.get(&id).expect("caller checked");
        let plain = |payload, intent| Ok(Prepared { payload, intent, claims: None });
        match request_type {
            "pcast.Authenticate" => {
                let mut auth =
                    pcast::Authenticate::decode(payload.as_slice()).map_err(|_| Unfit::Malformed)?;
                let claims = self
                    .config
                    .tokens
                    .check(&auth.authentication_token, conn.remote, auth.session_id.as_deref(), self.now_ms())
                    .map_err(Unfit::Token)?;
                auth.connection_id = Some(id.to_string());
                auth.connection_route_key = Some(self.config.route_key.clone());
                auth.remote_address = Some(conn.remote.to_string());
                let room_tag = claims.as_ref().and_then(|c| c.required_tag.clone());
                Ok(Prepared {
                    payload: auth.encode_to_vec(),
                    intent: Some(Intent::Authenticate { room_tag }),
                    claims,
                })
            }
            "chat.JoinRoom" => {
                let join = chat::JoinRoom::decode(payload.as_slice()).map_err(|_| Unfit::Malformed)?;
                if !auth::may_join(conn.room_tag.as_ref(), join.room_id.as_deref(), join.alias.as_deref()) {
                    return Err(Unfit::Token(Refusal::Room));
                }
                let hear =
                    join.room_id.filter(|room| !room.is_empty()).map(|room| Intent::Hear(Topic::Room, room));
                plain(payload, hear)
            }
            "chat.LeaveRoom" => {
                chat::LeaveRoom::decode(payload.as_slice()).map_err(|_| Unfit::Malformed)?;
                plain(payload, None)
            }
            "chat.FetchRoomConversation" => {
                let fetch =
                    chat::FetchRoomConversation::decode(payload.as_slice()).map_err(|_| Unfit::Malformed)?;
                let subscribe = fetch.options.contains(&(chat::RoomConversationOption::Subscribe as i32));
                let hear = (subscribe && !fetch.room_id.is_empty())
                    .then_some(Intent::Hear(Topic::Conversation, fetch.room_id));
                plain(payload, hear)
            }
            _ => plain(payload, None),
        }
    }

    /// Refuses a request the token does not allow: an authentication gets the
    /// `pcast.AuthenticateResponse{status: "unauthorized"}` the SDK understands, anything else
    /// `mq.Error{unauthorized}`. The reason is traced and counted; the token is not.
    fn refuse_token(
        &mut self,
        id: ConnectionId,
        request_id: &str,
        request_type: &str,
        encoding: Encoding,
        refusal: &Refusal,
    ) {
        self.trace(Some(id), EventKind::TokenRefused { reason: refusal.label() });
        if request_type == "pcast.Authenticate" {
            let payload = pcast::AuthenticateResponse { status: "unauthorized".into(), ..Default::default() };
            let msg = message(
                MessageType::Response,
                Some(request_id),
                "pcast.AuthenticateResponse",
                payload.encode_to_vec(),
            );
            self.send_message(id, Some(encoding), msg);
            self.count_answer(id, request_id, request_type, RequestOutcome::Refused, self.now);
        } else {
            self.refuse_request(id, request_id, request_type, encoding, "unauthorized");
        }
    }

    /// Milliseconds since the Unix epoch, by the injected clock.
    pub(crate) fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.elapsed_since_start().as_millis()).unwrap_or(u64::MAX);
        self.config.wall_clock_start_ms.saturating_add(elapsed)
    }

    /// Answers a request with `mq.Error{reason}` without involving the backend.
    fn refuse_request(
        &mut self,
        id: ConnectionId,
        request_id: &str,
        request_type: &str,
        encoding: Encoding,
        reason: &'static str,
    ) {
        self.trace(Some(id), EventKind::RequestRefused { reason });
        self.send_error(id, request_id, encoding, reason);
        self.count_answer(id, request_id, request_type, RequestOutcome::Refused, self.now);
    }

    fn send_error(&mut self, id: ConnectionId, request_id: &str, encoding: Encoding, reason: &str) {
        let payload = mq::Error { reason: reason.to_owned() }.encode_to_vec();
        let msg = message(MessageType::Response, Some(request_id), "mq.Error", payload);
        self.send_message(id, Some(encoding), msg);
    }

    /// Sends `msg` in `encoding`, or else in the encoding of the client's latest frame.
    pub(crate) fn send_message(
        &mut self,
        id: ConnectionId,
        encoding: Option<Encoding>,
        mut msg: mq::Message,
    ) {
        let Some(conn) = self.registry.get(&id) else { return };
        msg.session_id = conn.session_id.clone();
        let encoding = encoding.unwrap_or(conn.encoding);
        let mut frame = codec::encode(&msg, encoding);
        if self.dropped_as_too_large(id, frame.len()) {
            if msg.message_type != Some(MessageType::Response as i32) {
                return;
            }
            // The client waits for an answer: it gets one, saying why not the real one.
            let payload = mq::Error { reason: "too-large".into() }.encode_to_vec();
            let error = mq::Message { r#type: "mq.Error".into(), payload, ..msg };
            frame = codec::encode(&error, encoding);
        }
        self.push(Output::Send { conn: id, frame });
    }

    /// Whether `frame` is over `--max-outbound-bytes`: then it is counted as dropped and must not
    /// be sent.
    pub(crate) fn dropped_as_too_large(&mut self, id: ConnectionId, len: usize) -> bool {
        let over = len > self.config.max_outbound_message_size;
        if over {
            self.drop_frame(id, DropReason::OutboundTooLarge);
        }
        over
    }

    fn count_answer(
        &mut self,
        id: ConnectionId,
        request_id: &str,
        request_type: &str,
        outcome: RequestOutcome,
        started: Instant,
    ) {
        *self.stats.requests.entry(outcome).or_default() += 1;
        let elapsed = self.elapsed_since(started);
        self.trace(
            Some(id),
            EventKind::Answered {
                request_id: request_id.to_owned(),
                request_type: request_type.to_owned(),
                outcome,
                elapsed,
            },
        );
    }

    /// Ends a pending request: forgets it (disarming its timer unless that timer is what fired)
    /// and returns it with whether its connection is still open to receive the answer.
    fn take_request(&mut self, token: u64, disarm: bool) -> Option<(PendingRequest, bool)> {
        let req = self.requests.remove(&token)?;
        if disarm {
            self.timers.disarm(req.deadline, Timer::Request(token));
        }
        let open = self.registry.get_mut(&req.conn).is_some_and(|conn| {
            conn.pending.remove(&token);
            conn.is_open()
        });
        Some((req, open))
    }

    pub(crate) fn on_backend_reply(&mut self, token: u64, result: Result<Reply, crate::BackendError>) {
        let Some((req, open)) = self.take_request(token, true) else {
            return self.trace(None, EventKind::LateReply { token });
        };
        let id = req.conn;
        if !open {
            self.release_request_interest(&req);
            return self.count_answer(
                id,
                &req.request_id,
                &req.request_type,
                RequestOutcome::Undeliverable,
                req.started,
            );
        }
        let outcome = match result {
            Ok(reply) => {
                let expected = format!("{}Response", req.request_type);
                let reply_type =
                    if reply.reply_type.is_empty() { expected.clone() } else { reply.reply_type };
                if let Some(Intent::Authenticate { room_tag }) = &req.intent
                    && reply_type == expected
                {
                    self.read_session(id, room_tag, &reply.payload);
                }
                // The backend's own mq.Error: an error to the operator, by its reason.
                let refused = (reply_type == "mq.Error").then(|| refusal_reason(&reply.payload));
                let msg = message(MessageType::Response, Some(&req.request_id), &reply_type, reply.payload);
                self.send_message(id, Some(req.encoding), msg);
                match refused {
                    Some(reason) => {
                        self.trace(Some(id), EventKind::BackendRefused { reason });
                        RequestOutcome::Error
                    }
                    None => RequestOutcome::Ok,
                }
            }
            Err(error) => {
                self.send_error(id, &req.request_id, req.encoding, error.reason());
                RequestOutcome::Failed
            }
        };
        self.release_request_interest(&req);
        self.count_answer(id, &req.request_id, &req.request_type, outcome, req.started);
        self.close_when_idle(id);
    }

    /// A request left `requests`: the interest it held goes (after its reply, so a subscription
    /// the backend sent before it keeps the interest without a gap).
    fn release_request_interest(&mut self, req: &PendingRequest) {
        if let Some(Intent::Hear(topic, room)) = &req.intent {
            self.release_interest(*topic, room);
        }
    }

    pub(crate) fn on_request_timeout(&mut self, token: u64) {
        let Some((req, open)) = self.take_request(token, false) else { return };
        let id = req.conn;
        let outcome = if open {
            self.send_error(id, &req.request_id, req.encoding, "timeout");
            RequestOutcome::Timeout
        } else {
            RequestOutcome::Undeliverable
        };
        self.release_request_interest(&req);
        self.count_answer(id, &req.request_id, &req.request_type, outcome, req.started);
        self.close_when_idle(id);
    }

    /// A pending request of a connection that is ending: forget it; a late reply is traced.
    pub(crate) fn fail_request_on_disconnect(&mut self, token: u64) {
        if let Some(req) = self.requests.remove(&token) {
            self.timers.disarm(req.deadline, Timer::Request(token));
            self.release_request_interest(&req);
            self.count_answer(
                req.conn,
                &req.request_id,
                &req.request_type,
                RequestOutcome::Undeliverable,
                req.started,
            );
        }
    }
}
