//! One test per row of DESIGN.md's table "Every path of the seed", named after the row.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clientmq_core::proto::{chat, mq, pcast};
use clientmq_core::{
    Admission, BackendError, Config, ConnectionId, DisconnectPath, DropReason, Encoding, Event, EventKind,
    Frame, Gateway, Input, LostReason, Output, Peer, Reply, RequestOutcome, ServerRequestError, Target,
    Topic, close, codec,
};
use mq::message::MessageType;
use prost::Message as _;
use rand::SeedableRng;
use rand::rngs::StdRng;

const SEC: Duration = Duration::from_secs(1);

struct Harness {
    gw: Gateway,
    start: Instant,
    now: Instant,
    outputs: Vec<Output>,
    events: Vec<Event>,
}

impl Harness {
    fn new(config: Config) -> Self {
        let start = Instant::now();
        let gw = Gateway::new(config, Box::new(StdRng::seed_from_u64(1)), start).unwrap();
        Harness { gw, start, now: start, outputs: Vec::new(), events: Vec::new() }
    }

    fn drain(&mut self) {
        while let Some(o) = self.gw.poll_output() {
            self.outputs.push(o);
        }
        while let Some(e) = self.gw.poll_event() {
            self.events.push(e);
        }
        self.gw.check_invariants().unwrap();
    }

    fn open_from(&mut self, addr: &str, headers: &[(&str, &str)]) -> Admission {
        let peer = Peer {
            addr: addr.parse::<SocketAddr>().unwrap(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        let a = self.gw.open(&peer, self.now);
        self.drain();
        a
    }

    fn open(&mut self) -> ConnectionId {
        match self.open_from("10.0.0.1:5000", &[]) {
            Admission::Accepted(id) => id,
            other => panic!("expected admission, got {other:?}"),
        }
    }

    fn input(&mut self, input: Input) {
        self.gw.handle(input, self.now);
        self.drain();
    }

    /// Advances time, firing every timer on the way at its own deadline.
    fn advance(&mut self, by: Duration) {
        let target = self.now + by;
        while let Some(at) = self.gw.poll_timeout().filter(|at| *at <= target) {
            self.now = at;
            self.gw.handle_timeout(at);
            self.drain();
        }
        self.now = target;
        self.gw.handle_timeout(target);
        self.drain();
    }

    fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    fn events_of(&self, id: ConnectionId) -> Vec<&EventKind> {
        self.events.iter().filter(|e| e.conn == Some(id)).map(|e| &e.kind).collect()
    }

    fn disconnects_of(&self, id: ConnectionId) -> Vec<(DisconnectPath, u16)> {
        self.events_of(id)
            .into_iter()
            .filter_map(|k| match k {
                EventKind::Disconnected { path, code, .. } => Some((*path, *code)),
                _ => None,
            })
            .collect()
    }

    fn request(&mut self, id: ConnectionId, request_id: &str, ty: &str, payload: Vec<u8>, enc: Encoding) {
        let msg = mq::Message {
            request_id: Some(request_id.into()),
            r#type: ty.into(),
            payload,
            message_type: Some(MessageType::Request as i32),
            ..Default::default()
        };
        self.input(Input::Frame { conn: id, frame: codec::encode(&msg, enc) });
    }

    fn backend_tokens(&self) -> Vec<(u64, String, Vec<u8>)> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Backend(b) => Some((b.token, b.request_type.clone(), b.payload.clone())),
                _ => None,
            })
            .collect()
    }

    /// Messages sent to `id`, decoded.
    fn sent_to(&self, id: ConnectionId) -> Vec<(Encoding, mq::Message)> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Send { conn, frame } if *conn == id => {
                    Some((frame.encoding(), codec::decode(frame, usize::MAX).unwrap()))
                }
                _ => None,
            })
            .collect()
    }

    fn closes_of(&self, id: ConnectionId) -> Vec<u16> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Close { conn, close } if *conn == id => Some(close.code),
                _ => None,
            })
            .collect()
    }
}

fn error_reason(msg: &mq::Message) -> String {
    assert_eq!(msg.r#type, "mq.Error");
    mq::Error::decode(msg.payload.as_slice()).unwrap().reason
}

fn ok_reply<M: prost::Message>(ty: &str, m: M) -> Result<Reply, BackendError> {
    Ok(Reply { reply_type: ty.into(), payload: m.encode_to_vec() })
}

fn auth_payload() -> Vec<u8> {
    pcast::Authenticate {
        client_version: "2022.0.2".into(),
        device_id: "d".into(),
        platform: "node".into(),
        platform_version: "20".into(),
        authentication_token: "t".into(),
        ..Default::default()
    }
    .encode_to_vec()
}

#[test]
fn upgrade_32_char_id_remote_address_from_x_forwarded_for() {
    let config = Config { trusted_proxies: vec!["127.0.0.1".parse().unwrap()], ..Config::default() };
    let mut h = Harness::new(config);
    let xff = [("X-Forwarded-For", "6.6.6.6, 203.0.113.9")];
    let direct = h.open_from("198.51.100.7:4000", &xff);
    let proxied = h.open_from("127.0.0.1:4000", &xff);
    let (Admission::Accepted(direct), Admission::Accepted(proxied)) = (direct, proxied) else { panic!() };
    assert_eq!(direct.as_str().len(), 32);
    assert!(direct.as_str().chars().all(|c| c.is_ascii_alphanumeric()));
    assert_ne!(direct, proxied);
    let remote = |id| match h.events_of(id)[0] {
        EventKind::Opened { remote, .. } => remote.to_string(),
        other => panic!("{other:?}"),
    };
    // From an untrusted peer the header is ignored; from a proxy its nearest hop is used.
    assert_eq!(remote(direct), "198.51.100.7");
    assert_eq!(remote(proxied), "203.0.113.9");
    // The backend sees the resolved address in pcast.Authenticate, with the id and route key.
    h.request(proxied, "C0", "pcast.Authenticate", auth_payload(), Encoding::Base64Text);
    let (_, _, payload) = h.backend_tokens().pop().unwrap();
    let auth = pcast::Authenticate::decode(payload.as_slice()).unwrap();
    assert_eq!(auth.remote_address.as_deref(), Some("203.0.113.9"));
    assert_eq!(auth.connection_id.as_deref(), Some(proxied.as_str()));
    assert_eq!(auth.connection_route_key.as_deref(), Some("clientmq"));
}

#[test]
fn open_connections_over_the_limit_closed_1013() {
    let mut h = Harness::new(Config { max_connections: 3, ..Config::default() });
    let ids: Vec<_> = (0..3).map(|_| h.open()).collect();
    for _ in 0..5 {
        match h.open_from("10.0.0.2:1", &[]) {
            Admission::Rejected { close, .. } => assert_eq!(close, close::CONCURRENCY_LIMIT),
            other => panic!("over the limit must be refused: {other:?}"),
        }
        assert_eq!(h.gw.open_connections(), 3);
    }
    assert_eq!(h.gw.stats().rejected, 5);
    assert_eq!(h.gw.stats().total, 3);
    // As soon as one leaves, there is room again.
    h.input(Input::TransportLost { conn: ids[0], reason: LostReason::Eof });
    assert!(matches!(h.open_from("10.0.0.2:1", &[]), Admission::Accepted(_)));
    assert_eq!(h.gw.open_connections(), 3);
}

#[test]
fn unsupported_message_format_or_socket_not_open_dropped_and_counted() {
    let mut h = Harness::new(Config::default());
    let id = h.open();
    h.input(Input::Frame { conn: id, frame: Frame::Text("not base64!".into()) });
    h.input(Input::Frame { conn: id, frame: Frame::Binary(vec![0xff, 0xff]) });
    h.input(Input::Frame { conn: id, frame: Frame::Binary(Vec::new()) });
    let stats = h.gw.stats().clone();
    assert_eq!(stats.dropped.get("invalid-base64"), Some(&1));
    assert_eq!(stats.dropped.get("invalid-message"), Some(&1));
    assert_eq!(stats.dropped.get("empty"), Some(&1));
    // The connection is fine after garbage.
    assert_eq!(h.gw.open_connections(), 1);
    h.input(Input::Drain);
    h.advance(Duration::ZERO);
    assert_eq!(h.closes_of(id), vec![3333]);
    // Closing: a request is dropped, never forwarded.
    h.request(id, "C1", "chat.GetRoomInfo", Vec::new(), Encoding::Binary);
    assert!(h.backend_tokens().is_empty());
    assert_eq!(h.gw.stats().dropped.get("not-open"), Some(&1));
    let unknown: ConnectionId = "0123456789abcdefghijABCDEFGHIJ01".parse().unwrap();
    h.input(Input::Frame { conn: unknown, frame: Frame::Binary(vec![1]) });
    assert_eq!(h.gw.stats().dropped.get("unknown-connection"), Some(&1));
    assert!(h.events_of(id).iter().any(|k| matches!(k, EventKind::Dropped { reason: DropReason::NotOpen })));
}

#[test]
fn client_request_to_backend_timeout_failure_success() {
    let mut h = Harness::new(Config::default());
    let id = h.open();
    h.request(id, "C0", "chat.GetRoomInfo", Vec::new(), Encoding::Base64Text);
    h.request(id, "C1", "chat.GetRoomInfo", Vec::new(), Encoding::Base64Text);
    h.request(id, "C2", "chat.GetRoomInfo", Vec::new(), Encoding::Binary);
    let tokens = h.backend_tokens();
    assert_eq!(tokens.len(), 3);
    h.input(Input::BackendReply {
        token: tokens[0].0,
        result: ok_reply("", chat::GetRoomInfoResponse { status: "ok".into(), ..Default::default() }),
    });
    h.input(Input::BackendReply { token: tokens[1].0, result: Err(BackendError::Failed("down".into())) });
    h.advance(15 * SEC);
    let sent = h.sent_to(id);
    assert_eq!(sent.len(), 3);
    // Success: the request's type + Response, in the encoding the client used for it.
    assert_eq!(sent[0].0, Encoding::Base64Text);
    assert_eq!(sent[0].1.r#type, "chat.GetRoomInfoResponse");
    assert_eq!(sent[0].1.request_id.as_deref(), Some("C0"));
    assert_eq!(sent[0].1.message_type, Some(MessageType::Response as i32));
    assert_eq!(error_reason(&sent[1].1), "failed");
    // The third went out binary and timed out at 15 s.
    assert_eq!(sent[2].0, Encoding::Binary);
    assert_eq!(sent[2].1.request_id.as_deref(), Some("C2"));
    assert_eq!(error_reason(&sent[2].1), "timeout");
    let r = &h.gw.stats().requests;
    assert_eq!((r[&RequestOutcome::Ok], r[&RequestOutcome::Failed], r[&RequestOutcome::Timeout]), (1, 1, 1));
    assert_eq!(h.gw.pending_requests(), 0);
    // A reply after the timeout is traced as late and sends nothing.
    h.take_outputs();
    h.input(Input::BackendReply { token: tokens[2].0, result: Err(BackendError::Failed("late".into())) });
    assert!(h.take_outputs().is_empty());
    assert!(matches!(h.events.last().unwrap().kind, EventKind::LateReply { .. }));
}

#[test]
fn response_ready_but_socket_no_longer_open_dropped() {
    let mut h = Harness::new(Config::default());
    let id = h.open();
    h.request(id, "C0", "chat.GetRoomInfo", Vec::new(), Encoding::Base64Text);
    let token = h.backend_tokens()[0].0;
    h.input(Input::SendFailed { conn: id });
    assert_eq!(h.closes_of(id), vec![3335]);
    h.take_outputs();
    h.input(Input::BackendReply { token, result: ok_reply("", chat::GetRoomInfoResponse::default()) });
    assert!(h.sent_to(id).is_empty());
    assert_eq!(h.gw.stats().requests[&RequestOutcome::Undeliverable], 1);
}

#[test]
fn successful_join_leave_and_conversation_subscribe_update_subscriptions() {
    let mut h = Harness::new(Config::default());
    let id = h.open();
    let join = chat::JoinRoom { alias: Some("lobby".into()), ..Default::default() };
    h.request(id, "C0", "chat.JoinRoom", join.encode_to_vec(), Encoding::Base64Text);
    let fetch = chat::FetchRoomConversation {
        room_id: "room-1".into(),
        options: vec![chat::RoomConversationOption::Subscribe as i32],
        limit: 10,
        ..Default::default()
    };
    h.request(id, "C1", "chat.FetchRoomConversation", fetch.encode_to_vec(), Encoding::Base64Text);
    // A failed join changes nothing.
    h.request(id, "C2", "chat.JoinRoom", join.encode_to_vec(), Encoding::Base64Text);
    let t = h.backend_tokens();
    let room = chat::Room { room_id: Some("room-1".into()), ..Default::default() };
    h.input(Input::BackendReply {
        token: t[0].0,
        result: ok_reply(
            "chat.JoinRoomResponse",
            chat::JoinRoomResponse { status: "ok".into(), room: Some(room), ..Default::default() },
        ),
    });
    h.input(Input::BackendReply {
        token: t[1].0,
        result: ok_reply(
            "",
            chat::FetchRoomConversationResponse { status: "ok".into(), ..Default::default() },
        ),
    });
    h.input(Input::BackendReply {
        token: t[2].0,
        result: ok_reply(
            "",
            chat::JoinRoomResponse { status: "room-not-found".into(), ..Default::default() },
        ),
    });
    assert_eq!(h.gw.subscribers(Topic::Room, "room-1"), vec![id]);
    assert_eq!(h.gw.subscribers(Topic::Conversation, "room-1"), vec![id]);
    assert_eq!(h.gw.subscriptions(), 2);
    // Room deliveries reach subscribers.
    h.take_outputs();
    h.input(Input::Deliver {
        target: Target::Room("room-1".into()),
        event_type: "chat.RoomEvent".into(),
        payload: vec![],
    });
    let sent = h.sent_to(id);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.message_type, Some(MessageType::Event as i32));
    assert_eq!(sent[0].1.r#type, "chat.RoomEvent");
    let leave = chat::LeaveRoom { room_id: "room-1".into(), ..Default::default() };
    h.request(id, "C3", "chat.LeaveRoom", leave.encode_to_vec(), Encoding::Base64Text);
    let token = h.backend_tokens()[0].0;
    h.input(Input::BackendReply {
        token,
        result: ok_reply("", chat::LeaveRoomResponse { status: "ok".into() }),
    });
    assert_eq!(h.gw.subscriptions(), 0);
}

#[test]
fn client_response_with_or_without_pending_server_request() {
    let mut h = Harness::new(Config::default());
    let id = h.open();
    h.input(Input::ServerRequest { token: 77, conn: id, request_type: "pcast.Ping".into(), payload: vec![] });
    let request_id = h.sent_to(id)[0].1.request_id.clone().unwrap();
    assert_eq!(request_id, "S0");
    let answer = |rid: &str| mq::Message {
        request_id: Some(rid.into()),
        r#type: "pcast.PingResponse".into(),
        payload: vec![9],
        message_type: Some(MessageType::Response as i32),
        ..Default::default()
    };
    h.input(Input::Frame { conn: id, frame: codec::encode(&answer("S0"), Encoding::Base64Text) });
    let done: Vec<_> = h.outputs.iter().filter(|o| matches!(o, Output::ServerRequestDone { .. })).collect();
    assert_eq!(
        done,
        vec![&Output::ServerRequestDone {
            token: 77,
            result: Ok(Reply { reply_type: "pcast.PingResponse".into(), payload: vec![9] })
        }]
    );
    // Without a pending request: traced and ignored.
    h.input(Input::Frame { conn: id, frame: codec::encode(&answer("S999"), Encoding::Base64Text) });
    h.input(Input::Frame { conn: id, frame: codec::encode(&answer("C5"), Encoding::Base64Text) });
    assert_eq!(h.gw.stats().dropped.get("unsolicited-response"), Some(&2));
    assert_eq!(h.gw.open_connections(), 1);
}

#[test]
fn client_event_traced_as_unsupported() {
    let mut h = Harness::new(Config::default());
    let id = h.open();
    let event = mq::Message {
        r#type: "chat.RoomEvent".into(),
        message_type: Some(MessageType::Event as i32),
        ..Default::default()
    };
    h.input(Input::Frame { conn: id, frame: codec::encode(&event, Encoding::Binary) });
    assert!(
        h.events_of(id).iter().any(|k| matches!(k, EventKind::Dropped { reason: DropReason::ClientEvent }))
    );
    assert!(h.backend_tokens().is_empty());
}

#[test]
fn server_request_counter_timeout_unknown_or_closed_socket_late_answer() {
    let mut h = Harness::new(Config::default());
    let id = h.open();
    h.input(Input::ServerRequest { token: 1, conn: id, request_type: "X".into(), payload: vec![] });
    h.input(Input::ServerRequest { token: 2, conn: id, request_type: "X".into(), payload: vec![] });
    let ids: Vec<_> = h.sent_to(id).into_iter().map(|(_, m)| m.request_id.unwrap()).collect();
    assert_eq!(ids, vec!["S0", "S1"]);
    h.advance(15 * SEC);
    let timeouts = h
        .outputs
        .iter()
        .filter(|o| matches!(o, Output::ServerRequestDone { result: Err(ServerRequestError::Timeout), .. }))
        .count();
    assert_eq!(timeouts, 2);
    // A late answer is traced as late, not as unknown.
    let late = mq::Message {
        request_id: Some("S1".into()),
        r#type: "XResponse".into(),
        message_type: Some(MessageType::Response as i32),
        ..Default::default()
    };
    h.input(Input::Frame { conn: id, frame: codec::encode(&late, Encoding::Base64Text) });
    assert_eq!(h.gw.stats().dropped.get("late-response"), Some(&1));
    // Unknown socket and closing socket: an error at once.
    h.take_outputs();
    let unknown: ConnectionId = "0123456789abcdefghijABCDEFGHIJ01".parse().unwrap();
    h.input(Input::ServerRequest { token: 3, conn: unknown, request_type: "X".into(), payload: vec![] });
    h.input(Input::SendFailed { conn: id });
    h.input(Input::ServerRequest { token: 4, conn: id, request_type: "X".into(), payload: vec![] });
    let results: Vec<_> = h
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::ServerRequestDone { token, result } => Some((*token, result.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        results,
        vec![(3, Err(ServerRequestError::NotConnected)), (4, Err(ServerRequestError::NotOpen))]
    );
}

#[test]
fn heartbeat_every_20s_no_pong_closes_3334_pong_updates_rtt() {
    let mut h = Harness::new(Config::default());
    let polite = h.open();
    let mute = h.open();
    for round in 0..3 {
        h.advance(20 * SEC);
        let pings: Vec<_> = h
            .take_outputs()
            .into_iter()
            .filter_map(|o| match o {
                Output::Ping { conn, payload } => Some((conn, payload)),
                _ => None,
            })
            .collect();
        if round == 0 {
            assert_eq!(pings.len(), 2, "both pinged at 20 s");
        }
        for (conn, payload) in pings {
            if conn == polite {
                h.now += Duration::from_millis(30);
                h.input(Input::Pong { conn, payload });
            }
        }
    }
    assert!(h.events_of(polite).iter().any(|k| **k == EventKind::Pong { rtt: Duration::from_millis(30) }));
    assert!(h.disconnects_of(polite).is_empty());
    // The mute one was closed with 3334 at 40 s, then forced after the close timeout.
    assert_eq!(h.disconnects_of(mute), vec![(DisconnectPath::Forced, 3334)]);
    let closed_at = h
        .events
        .iter()
        .find(|e| e.conn == Some(mute) && matches!(e.kind, EventKind::CloseSent { .. }))
        .unwrap()
        .at;
    assert_eq!(closed_at, 40 * SEC);
    assert_eq!(h.gw.open_connections(), 1);
}

#[test]
fn drain_closes_3333_after_in_flight_requests_spread_over_window() {
    let mut h = Harness::new(Config { drain_window: 10 * SEC, ..Config::default() });
    let ids: Vec<_> = (0..5).map(|_| h.open()).collect();
    let busy = ids[0];
    h.request(busy, "C0", "chat.GetRoomInfo", Vec::new(), Encoding::Base64Text);
    let token = h.backend_tokens()[0].0;
    h.input(Input::Drain);
    assert!(
        matches!(h.open_from("10.0.0.9:1", &[]), Admission::Rejected { close, .. } if close == close::DRAIN)
    );
    h.advance(10 * SEC);
    let close_times: Vec<Duration> = h
        .events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::CloseSent { code: 3333, .. }))
        .map(|e| e.at)
        .collect();
    // Four idle ones closed, spread at 0, 2, 4, 6, 8 s (one slot belongs to the busy one).
    assert_eq!(close_times.len(), 4);
    assert!(close_times.windows(2).all(|w| w[1] - w[0] >= 2 * SEC), "{close_times:?}");
    assert!(h.closes_of(busy).is_empty(), "busy connection waits for its request");
    h.input(Input::BackendReply { token, result: ok_reply("", chat::GetRoomInfoResponse::default()) });
    let order: Vec<&str> = h
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { conn, .. } if *conn == busy => Some("response"),
            Output::Close { conn, .. } if *conn == busy => Some("close"),
            _ => None,
        })
        .collect();
    assert_eq!(order, vec!["response", "close"]);
    assert_eq!(h.closes_of(busy), vec![3333]);
    for id in &ids {
        h.input(Input::PeerClosed { conn: *id, code: Some(3333) });
    }
    assert_eq!(h.gw.open_connections(), 0);
    // Early ones were forced by the 5 s close timeout, the rest answered: each once, with 3333.
    for id in &ids {
        assert!(matches!(h.disconnects_of(*id)[..], [(_, 3333)]));
    }
    assert_eq!(h.gw.stats().disconnects_by_code[&3333], 5);
}

#[test]
fn send_error_on_socket_closes_3335() {
    let mut h = Harness::new(Config::default());
    let id = h.open();
    h.input(Input::SendFailed { conn: id });
    assert_eq!(h.closes_of(id), vec![3335]);
    h.advance(5 * SEC);
    assert_eq!(h.disconnects_of(id), vec![(DisconnectPath::Forced, 3335)]);
    assert!(h.outputs.contains(&Output::Abort { conn: id }));
}

#[test]
fn server_close_client_answers_disconnected_once() {
    let mut h = Harness::new(Config::default());
    let id = h.open();
    h.input(Input::Drain);
    h.advance(Duration::ZERO);
    h.input(Input::PeerClosed { conn: id, code: Some(3333) });
    h.advance(10 * SEC);
    assert_eq!(h.disconnects_of(id), vec![(DisconnectPath::Server, 3333)]);
    assert!(h.outputs.contains(&Output::Release { conn: id }));
    assert!(!h.outputs.contains(&Output::Abort { conn: id }));
}

#[test]
fn server_close_client_never_answers_forced_after_close_timeout() {
    let mut h = Harness::new(Config::default());
    let id = h.open();
    h.input(Input::Drain);
    h.advance(Duration::ZERO);
    h.advance(4999 * Duration::from_millis(1));
    assert_eq!(h.gw.open_connections(), 1, "still within the close timeout");
    h.advance(Duration::from_millis(1));
    assert_eq!(h.gw.open_connections(), 0);
    assert_eq!(h.disconnects_of(id), vec![(DisconnectPath::Forced, 3333)]);
    assert_eq!(h.outputs.iter().filter(|o| **o == Output::Abort { conn: id }).count(), 1);
    assert_eq!(h.gw.stats().total - h.gw.stats().disconnected(), 0);
}

#[test]
fn second_close_close_after_forced_close_close_of_unknown_id_traced_only() {
    let mut h = Harness::new(Config::default());
    let a = h.open();
    let b = h.open();
    h.input(Input::PeerClosed { conn: a, code: Some(1000) });
    h.input(Input::PeerClosed { conn: a, code: Some(1000) });
    h.input(Input::SendFailed { conn: b });
    h.advance(5 * SEC);
    h.input(Input::PeerClosed { conn: b, code: None });
    h.input(Input::TransportLost { conn: b, reason: LostReason::Error });
    let unknown: ConnectionId = "0123456789abcdefghijABCDEFGHIJ01".parse().unwrap();
    h.input(Input::PeerClosed { conn: unknown, code: None });
    assert_eq!(h.disconnects_of(a).len(), 1);
    assert_eq!(h.disconnects_of(b).len(), 1);
    assert_eq!(h.gw.stats().disconnected(), 2);
    assert_eq!(h.gw.stats().total, 2);
    let strays: Vec<_> = h
        .events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Stray { what, after_end } => Some((e.conn.unwrap(), what.label(), after_end)),
            _ => None,
        })
        .collect();
    assert_eq!(
        strays,
        vec![(a, "close", true), (b, "close", true), (b, "transport-lost", true), (unknown, "close", false)]
    );
}

#[test]
fn client_close_tcp_reset_eof_without_close_frame_disconnected_once() {
    let mut h = Harness::new(Config::default());
    let (a, b, c) = (h.open(), h.open(), h.open());
    h.input(Input::PeerClosed { conn: a, code: Some(1000) });
    h.input(Input::TransportLost { conn: b, reason: LostReason::Error });
    h.input(Input::TransportLost { conn: c, reason: LostReason::Eof });
    assert_eq!(h.disconnects_of(a), vec![(DisconnectPath::Client, 1000)]);
    assert_eq!(h.disconnects_of(b), vec![(DisconnectPath::Lost, 1006)]);
    assert_eq!(h.disconnects_of(c), vec![(DisconnectPath::Lost, 1006)]);
    assert_eq!(h.gw.open_connections(), 0);
    assert_eq!(h.gw.poll_timeout(), None, "no timer outlives its connection");
}

#[test]
fn disconnect_cleanup_subscriptions_removed_connection_disconnected_published() {
    let mut h = Harness::new(Config::default());
    let id = h.open();
    let join = chat::JoinRoom { room_id: Some("r".into()), ..Default::default() };
    h.request(id, "C0", "chat.JoinRoom", join.encode_to_vec(), Encoding::Base64Text);
    let token = h.backend_tokens()[0].0;
    h.input(Input::BackendReply {
        token,
        result: ok_reply("", chat::JoinRoomResponse { status: "ok".into(), ..Default::default() }),
    });
    h.request(id, "C1", "chat.GetRoomInfo", Vec::new(), Encoding::Base64Text);
    assert_eq!((h.gw.subscriptions(), h.gw.pending_requests()), (1, 1));
    h.input(Input::TransportLost { conn: id, reason: LostReason::Eof });
    assert_eq!((h.gw.subscriptions(), h.gw.pending_requests()), (0, 0));
    let published: Vec<_> = h
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        published,
        vec![pcast::ConnectionDisconnected {
            connection_id: id.to_string(),
            reason_code: 1006,
            description: Some("lost".into())
        }]
    );
    assert_eq!(h.gw.poll_timeout(), None);
    let _ = h.start;
}

#[test]
fn backend_driven_subscriptions_and_answers_from_the_wrong_connection() {
    let mut h = Harness::new(Config::default());
    let a = h.open();
    let b = h.open();
    // The backend subscribes and unsubscribes a connection itself (resume, Bye, takeover).
    let set = |conn, topic, subscribe| Input::Subscription { conn, topic, room: "r".into(), subscribe };
    h.input(set(a, Topic::Room, true));
    h.input(set(a, Topic::Conversation, true));
    assert_eq!(h.gw.subscribers(Topic::Room, "r"), vec![a]);
    h.input(set(a, Topic::Room, false));
    assert_eq!((h.gw.subscriptions(), h.gw.subscribers(Topic::Room, "r")), (1, vec![]));
    let unknown: ConnectionId = "0123456789abcdefghijABCDEFGHIJ01".parse().unwrap();
    h.input(set(unknown, Topic::Room, true));
    assert_eq!(h.gw.subscriptions(), 1);
    // S0 is pending on a; b answering it is unsolicited and a's request stays pending.
    h.input(Input::ServerRequest { token: 5, conn: a, request_type: "X".into(), payload: vec![] });
    let answer = mq::Message {
        request_id: Some("S0".into()),
        r#type: "XResponse".into(),
        message_type: Some(MessageType::Response as i32),
        ..Default::default()
    };
    h.input(Input::Frame { conn: b, frame: codec::encode(&answer, Encoding::Base64Text) });
    assert_eq!(h.gw.stats().dropped.get("unsolicited-response"), Some(&1));
    assert_eq!(h.gw.pending_server_requests(), 1);
    h.input(Input::Frame { conn: a, frame: codec::encode(&answer, Encoding::Base64Text) });
    assert_eq!(h.gw.pending_server_requests(), 0);
}
