//! Messages: client requests to the backend and their answers, server-initiated requests to
//! clients, backend deliveries, and the subscription tables that successful replies update.

use std::time::Instant;

use prost::Message as _;

use crate::ConnectionId;
use crate::codec::{self, Encoding, Frame};
use crate::event::{DropReason, EventKind, RequestOutcome, Stray, Topic};
use crate::gateway::{Gateway, Output};
use crate::proto::{chat, mq, pcast};
use crate::registry::Subscribe;
use crate::timers::Timer;

use mq::message::MessageType;

/// A client request on its way to the backend.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendRequest {
    /// Answer with [`crate::Input::BackendReply`] carrying this token.
    pub token: u64,
    pub conn: ConnectionId,
    /// The session the connection authenticated as, if it has.
    pub session_id: Option<String>,
    pub remote: std::net::IpAddr,
    pub request_type: String,
    /// The request's payload; for `pcast.Authenticate`, with the gateway's fields filled in.
    pub payload: Vec<u8>,
}

/// A typed answer: the message type (empty means the request's type + `Response`) and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub reply_type: String,
    pub payload: Vec<u8>,
}

/// The backend could not answer; the client gets `mq.Error{failed}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error("backend failed: {0}")]
    Failed(String),
}

/// Why a server-initiated request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ServerRequestError {
    #[error("no such connection")]
    NotConnected,
    #[error("the connection is closing")]
    NotOpen,
    #[error("too many server requests pending on the connection")]
    TooManyPending,
    #[error("the client did not answer in time")]
    Timeout,
    #[error("the connection ended before the client answered")]
    Disconnected,
}

impl ServerRequestError {
    pub fn label(self) -> &'static str {
        match self {
            ServerRequestError::NotConnected => "not-connected",
            ServerRequestError::NotOpen => "not-open",
            ServerRequestError::TooManyPending => "too-many-pending",
            ServerRequestError::Timeout => "timeout",
            ServerRequestError::Disconnected => "disconnected",
        }
    }
}

/// Who a delivery goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Connection(ConnectionId),
    /// Every connection subscribed to the room (joined it).
    Room(String),
    /// Every connection subscribed to the room's conversation.
    Conversation(String),
}

/// What a successful reply changes in the gateway's own tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Intent {
    Authenticate,
    Join { room_id: Option<String> },
    Leave { room_id: String },
    SubscribeConversation { room_id: String },
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

fn message(kind: MessageType, request_id: Option<&str>, ty: &str, payload: Vec<u8>) -> mq::Message {
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

fn is_ok(status: &str) -> bool {
    status == "ok"
}

impl Gateway {
    pub(crate) fn on_frame(&mut self, id: ConnectionId, frame: Frame) {
        let Some(conn) = self.registry.get_mut(&id) else {
            return self.drop_frame(id, DropReason::UnknownConnection);
        };
        if !conn.is_open() {
            return self.drop_frame(id, DropReason::NotOpen);
        }
        let msg = match codec::decode(&frame, self.config.max_message_size) {
            Ok(msg) => msg,
            Err(e) => return self.drop_frame(id, DropReason::Malformed(e.label())),
        };
        let encoding = frame.encoding();
        conn.encoding = encoding;
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
        let (payload, intent) = match self.prepare(id, &msg.r#type, msg.payload) {
            Ok(prepared) => prepared,
            Err(()) => return self.refuse_request(id, &request_id, &msg.r#type, encoding, "malformed"),
        };
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

    /// Fills in what the gateway owes the backend (the seed's adapter did the same) and reads
    /// what a successful reply will change. `Err` for a payload of the wrong shape.
    fn prepare(
        &self,
        id: ConnectionId,
        request_type: &str,
        payload: Vec<u8>,
    ) -> Result<(Vec<u8>, Option<Intent>), ()> {
        let conn = self.registry.get(&id).expect("caller checked");
        match request_type {
            "pcast.Authenticate" => {
                let mut auth = pcast::Authenticate::decode(payload.as_slice()).map_err(|_| ())?;
                auth.connection_id = Some(id.to_string());
                auth.connection_route_key = Some(self.config.route_key.clone());
                auth.remote_address = Some(conn.remote.to_string());
                Ok((auth.encode_to_vec(), Some(Intent::Authenticate)))
            }
            "chat.JoinRoom" => {
                let join = chat::JoinRoom::decode(payload.as_slice()).map_err(|_| ())?;
                Ok((payload, Some(Intent::Join { room_id: join.room_id })))
            }
            "chat.LeaveRoom" => {
                let leave = chat::LeaveRoom::decode(payload.as_slice()).map_err(|_| ())?;
                Ok((payload, Some(Intent::Leave { room_id: leave.room_id })))
            }
            "chat.FetchRoomConversation" => {
                let fetch = chat::FetchRoomConversation::decode(payload.as_slice()).map_err(|_| ())?;
                let subscribe = fetch.options.contains(&(chat::RoomConversationOption::Subscribe as i32));
                let intent = subscribe.then_some(Intent::SubscribeConversation { room_id: fetch.room_id });
                Ok((payload, intent))
            }
            _ => Ok((payload, None)),
        }
    }

    /// Answers a request with `mq.Error{reason}` without involving the backend.
    fn refuse_request(
        &mut self,
        id: ConnectionId,
        request_id: &str,
        request_type: &str,
        encoding: Encoding,
        reason: &str,
    ) {
        self.send_error(id, request_id, encoding, reason);
        self.count_answer(id, request_id, request_type, RequestOutcome::Refused, self.now);
    }

    fn send_error(&mut self, id: ConnectionId, request_id: &str, encoding: Encoding, reason: &str) {
        let payload = mq::Error { reason: reason.to_owned() }.encode_to_vec();
        let msg = message(MessageType::Response, Some(request_id), "mq.Error", payload);
        self.send_message(id, Some(encoding), msg);
    }

    /// Sends `msg` in `encoding`, or else in the encoding of the client's latest frame.
    fn send_message(&mut self, id: ConnectionId, encoding: Option<Encoding>, mut msg: mq::Message) {
        let Some(conn) = self.registry.get(&id) else { return };
        msg.session_id = conn.session_id.clone();
        let frame = codec::encode(&msg, encoding.unwrap_or(conn.encoding));
        self.push(Output::Send { conn: id, frame });
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
                if let Some(intent) = &req.intent
                    && reply_type == expected
                {
                    self.apply_intent(id, intent, &reply.payload);
                }
                let msg = message(MessageType::Response, Some(&req.request_id), &reply_type, reply.payload);
                self.send_message(id, Some(req.encoding), msg);
                RequestOutcome::Ok
            }
            Err(crate::BackendError::Failed(_)) => {
                self.send_error(id, &req.request_id, req.encoding, "failed");
                RequestOutcome::Failed
            }
        };
        self.count_answer(id, &req.request_id, &req.request_type, outcome, req.started);
        self.finish_drain_if_idle(id);
    }

    fn apply_intent(&mut self, id: ConnectionId, intent: &Intent, payload: &[u8]) {
        match intent {
            Intent::Authenticate => {
                let Ok(resp) = pcast::AuthenticateResponse::decode(payload) else {
                    return;
                };
                if let (true, Some(session)) = (is_ok(&resp.status), resp.session_id) {
                    if let Some(conn) = self.registry.get_mut(&id) {
                        conn.session_id = Some(session.clone());
                    }
                    self.trace(Some(id), EventKind::Authenticated { session_id: session });
                }
            }
            Intent::Join { room_id } => {
                let Ok(resp) = chat::JoinRoomResponse::decode(payload) else {
                    return;
                };
                // Joining by alias: the room id is only known from the answer.
                let room = resp.room.and_then(|r| r.room_id).or_else(|| room_id.clone());
                if let (true, Some(room)) = (is_ok(&resp.status), room) {
                    self.subscribe(id, Topic::Room, room);
                }
            }
            Intent::Leave { room_id } => {
                let Ok(resp) = chat::LeaveRoomResponse::decode(payload) else {
                    return;
                };
                if is_ok(&resp.status) {
                    for topic in [Topic::Room, Topic::Conversation] {
                        if self.registry.unsubscribe(&id, topic, room_id) {
                            self.trace(Some(id), EventKind::Unsubscribed { topic, room: room_id.clone() });
                        }
                    }
                }
            }
            Intent::SubscribeConversation { room_id } => {
                let Ok(resp) = chat::FetchRoomConversationResponse::decode(payload) else {
                    return;
                };
                if is_ok(&resp.status) {
                    self.subscribe(id, Topic::Conversation, room_id.clone());
                }
            }
        }
    }

    /// The backend adds or removes a subscription itself (a resumed session, `pcast.Bye`, a
    /// session taken over by another connection).
    pub(crate) fn on_subscription(&mut self, id: ConnectionId, topic: Topic, room: String, subscribe: bool) {
        if !self.registry.contains(&id) {
            return self.stray(id, Stray::Subscription);
        }
        if subscribe {
            self.subscribe(id, topic, room);
        } else if self.registry.unsubscribe(&id, topic, &room) {
            self.trace(Some(id), EventKind::Unsubscribed { topic, room });
        }
    }

    fn subscribe(&mut self, id: ConnectionId, topic: Topic, room: String) {
        match self.registry.subscribe(&id, topic, &room, self.config.max_subscriptions) {
            Subscribe::Added => self.trace(Some(id), EventKind::Subscribed { topic, room }),
            Subscribe::AlreadyThere => {}
            Subscribe::OverLimit => self.trace(Some(id), EventKind::SubscriptionLimit { room }),
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
        self.count_answer(id, &req.request_id, &req.request_type, outcome, req.started);
        self.finish_drain_if_idle(id);
    }

    /// A pending request of a connection that is ending: forget it; a late reply is traced.
    pub(crate) fn fail_request_on_disconnect(&mut self, token: u64) {
        if let Some(req) = self.requests.remove(&token) {
            self.timers.disarm(req.deadline, Timer::Request(token));
            self.count_answer(
                req.conn,
                &req.request_id,
                &req.request_type,
                RequestOutcome::Undeliverable,
                req.started,
            );
        }
    }

    fn on_client_response(&mut self, id: ConnectionId, msg: mq::Message) {
        let number =
            msg.request_id.as_deref().and_then(|r| r.strip_prefix('S')).and_then(|n| n.parse::<u64>().ok());
        let Some(n) = number else {
            return self.drop_frame(id, DropReason::UnsolicitedResponse);
        };
        match self.server_requests.get(&n) {
            Some(req) if req.conn == id => {
                let req = self.server_requests.remove(&n).expect("just seen");
                self.timers.disarm(req.deadline, Timer::ServerRequest(n));
                if let Some(conn) = self.registry.get_mut(&id) {
                    conn.server_requests.remove(&n);
                }
                let reply = Reply { reply_type: msg.r#type, payload: msg.payload };
                self.push(Output::ServerRequestDone { token: req.token, result: Ok(reply) });
                self.trace(
                    Some(id),
                    EventKind::ServerRequestDone { request_id: format!("S{n}"), outcome: "ok" },
                );
            }
            // Pending, but on another connection: not this client's to answer.
            Some(_) => self.drop_frame(id, DropReason::UnsolicitedResponse),
            // Numbers are issued in order: one below the counter was ours once, so it is late.
            None if n < self.next_server_request => self.drop_frame(id, DropReason::LateResponse),
            None => self.drop_frame(id, DropReason::UnsolicitedResponse),
        }
    }

    pub(crate) fn on_server_request(
        &mut self,
        token: u64,
        id: ConnectionId,
        request_type: String,
        payload: Vec<u8>,
    ) {
        let refusal = match self.registry.get(&id) {
            None => Some(ServerRequestError::NotConnected),
            Some(c) if !c.is_open() => Some(ServerRequestError::NotOpen),
            Some(c) if c.server_requests.len() >= self.config.max_pending_server_requests => {
                Some(ServerRequestError::TooManyPending)
            }
            Some(_) => None,
        };
        if let Some(error) = refusal {
            if error == ServerRequestError::NotConnected {
                self.stray(id, Stray::ServerRequest);
            }
            return self.push(Output::ServerRequestDone { token, result: Err(error) });
        }
        let n = self.next_server_request;
        self.next_server_request += 1;
        let deadline = self.now + self.config.server_request_timeout;
        let request_id = format!("S{n}");
        self.registry.get_mut(&id).expect("checked above").server_requests.insert(n);
        self.server_requests.insert(n, PendingServerRequest { conn: id, token, deadline });
        self.timers.arm(deadline, Timer::ServerRequest(n));
        self.send_message(id, None, message(MessageType::Request, Some(&request_id), &request_type, payload));
        self.trace(Some(id), EventKind::ServerRequestSent { request_id, request_type });
    }

    pub(crate) fn on_server_request_timeout(&mut self, n: u64) {
        self.end_server_request(n, ServerRequestError::Timeout, false);
    }

    pub(crate) fn fail_server_request_on_disconnect(&mut self, n: u64) {
        self.end_server_request(n, ServerRequestError::Disconnected, true);
    }

    fn end_server_request(&mut self, n: u64, error: ServerRequestError, disarm: bool) {
        let Some(req) = self.server_requests.remove(&n) else {
            return;
        };
        if disarm {
            self.timers.disarm(req.deadline, Timer::ServerRequest(n));
        }
        if let Some(conn) = self.registry.get_mut(&req.conn) {
            conn.server_requests.remove(&n);
        }
        self.push(Output::ServerRequestDone { token: req.token, result: Err(error) });
        self.trace(
            Some(req.conn),
            EventKind::ServerRequestDone { request_id: format!("S{n}"), outcome: error.label() },
        );
    }

    pub(crate) fn on_deliver(&mut self, target: Target, event_type: &str, payload: &[u8]) {
        let ids = match target {
            Target::Connection(id) => {
                if !self.registry.contains(&id) {
                    return self.stray(id, Stray::Delivery);
                }
                vec![id]
            }
            Target::Room(room) => self.registry.subscribers(Topic::Room, &room),
            Target::Conversation(room) => self.registry.subscribers(Topic::Conversation, &room),
        };
        for id in ids {
            if self.registry.get(&id).is_some_and(|c| c.is_open()) {
                self.send_message(id, None, message(MessageType::Event, None, event_type, payload.to_vec()));
                self.trace(Some(id), EventKind::Delivered { event_type: event_type.to_owned() });
            } else {
                self.drop_frame(id, DropReason::NotOpen);
            }
        }
    }
}
