//! Constants, the test config, peers, and the request and reply messages the tests build.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clientmq_core::TokenPolicy;
use clientmq_core::edge_auth::{EdgeAuth, StaticTokens};
use clientmq_core::proto::{chat, mq, pcast};
use clientmq_core::{BackendError, Config, Peer, Reply};
use prost::Message as _;

use crate::ops::{ReplyKind, ReplyTy, ReqKind};

pub(crate) const SEC: Duration = Duration::from_secs(1);
pub(crate) const ROOMS: [&str; 4] = ["r0", "r1", "r2", "nobody-here"];
pub(crate) const PROXY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub(crate) const NEVER_SEEN: &str = "NeverSeenNeverSeenNeverSeen00000";
pub(crate) const MISSING_TOKEN: u64 = 1 << 40;
/// A payload no protobuf message decodes from (a truncated varint).
pub(crate) const BAD_PAYLOAD: [u8; 2] = [0xff, 0xff];

pub(crate) fn config() -> Config {
    Config {
        max_connections: 5,
        heartbeat_interval: 20 * SEC,
        close_timeout: 5 * SEC,
        request_timeout: 15 * SEC,
        server_request_timeout: 15 * SEC,
        max_pending_requests: 3,
        max_pending_server_requests: 2,
        max_subscriptions: 2,
        max_message_size: 512,
        max_outbound_message_size: 4096,
        // No rate limit: the model sends frames at no particular pace; path tests cover the limit.
        max_requests_per_sec: 0,
        request_burst: 1,
        drain_window: 10 * SEC,
        trusted_proxies: vec![IpAddr::V4(PROXY)],
        route_key: "model-route".to_owned(),
        ended_memory: 4,
        // The model's own token "t" is accepted: refusals have their own path tests.
        tokens: TokenPolicy::Check { tokens: StaticTokens::new(["t"]), edge: EdgeAuth::default() },
        wall_clock_start_ms: 0,
        trace_deliveries: true,
    }
}

/// A peer for `Open`, with the remote address the gateway must derive from it.
pub(crate) fn peer(i: usize) -> (Peer, IpAddr) {
    let ip = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
    let proxy = IpAddr::V4(PROXY);
    let xff = |v: &str| vec![("X-Forwarded-For".to_owned(), v.to_owned())];
    let (addr, headers, remote) = match i % 6 {
        0 => (ip(192, 0, 2, 1), vec![], ip(192, 0, 2, 1)),
        // An untrusted peer cannot choose its address.
        1 => (ip(192, 0, 2, 2), xff("6.6.6.6"), ip(192, 0, 2, 2)),
        2 => (proxy, xff("1.2.3.4"), ip(1, 2, 3, 4)),
        // Rightmost untrusted hop; the client-supplied leftmost one is not believed.
        3 => (
            proxy,
            vec![("x-forwarded-for".to_owned(), "6.6.6.6, 1.2.3.4, 10.0.0.1".to_owned())],
            ip(1, 2, 3, 4),
        ),
        4 => (proxy, xff("not-an-ip"), proxy),
        _ => (proxy, vec![], proxy),
    };
    (Peer { addr: SocketAddr::new(addr, 40_000), headers }, remote)
}

pub(crate) fn message(
    request_id: Option<String>,
    ty: &str,
    payload: Vec<u8>,
    kind: Option<i32>,
) -> mq::Message {
    mq::Message {
        session_id: None,
        request_id,
        r#type: ty.to_owned(),
        encoding: None,
        payload,
        wall_time: Vec::new(),
        message_type: kind,
    }
}

/// The `reason` of an `mq.Error` message, `None` for any other message.
pub(crate) fn error_reason(msg: &mq::Message) -> Option<String> {
    (msg.r#type == "mq.Error")
        .then(|| mq::Error::decode(msg.payload.as_slice()).expect("mq.Error payload decodes").reason)
}

pub(crate) fn request_payload(kind: ReqKind) -> (&'static str, Vec<u8>) {
    match kind {
        ReqKind::Auth => (
            "pcast.Authenticate",
            pcast::Authenticate {
                client_version: "1".into(),
                device_id: "d".into(),
                platform: "p".into(),
                platform_version: "1".into(),
                authentication_token: "t".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ReqKind::Join(room) => (
            "chat.JoinRoom",
            chat::JoinRoom {
                room_id: room.map(|r| ROOMS[r].to_owned()),
                alias: room.is_none().then(|| "lobby".to_owned()),
                session_id: "s".into(),
                timestamp: 1,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ReqKind::Leave(room) => (
            "chat.LeaveRoom",
            chat::LeaveRoom { room_id: ROOMS[room].to_owned(), session_id: "s".into(), timestamp: 1 }
                .encode_to_vec(),
        ),
        ReqKind::Fetch { room, subscribe } => (
            "chat.FetchRoomConversation",
            chat::FetchRoomConversation {
                session_id: "s".into(),
                room_id: ROOMS[room].to_owned(),
                limit: 10,
                options: if subscribe {
                    vec![chat::RoomConversationOption::Subscribe as i32]
                } else {
                    vec![]
                },
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ReqKind::Other => ("x.Other", vec![1, 2, 3]),
    }
}

/// The room a successful reply would change, and whether it subscribes to the conversation.
pub(crate) fn request_intent(kind: ReqKind) -> (Option<String>, bool) {
    match kind {
        ReqKind::Join(room) => (room.map(|r| ROOMS[r].to_owned()), false),
        ReqKind::Leave(room) => (Some(ROOMS[room].to_owned()), false),
        ReqKind::Fetch { room, subscribe } => (Some(ROOMS[room].to_owned()), subscribe),
        ReqKind::Auth | ReqKind::Other => (None, false),
    }
}

/// The backend's answer for a request of `request_type`, and the type the client must see.
pub(crate) fn build_reply(request_type: &str, kind: ReplyKind) -> (Result<Reply, BackendError>, String) {
    let ReplyKind::Ok { ok, ty, room, session } = kind else {
        return (Err(BackendError::Failed("backend down".into())), "mq.Error".into());
    };
    let status = if ok { "ok" } else { "denied" }.to_owned();
    let payload = match request_type {
        "pcast.Authenticate" => pcast::AuthenticateResponse {
            status,
            session_id: session.map(|s| format!("session-{s}")),
            ..Default::default()
        }
        .encode_to_vec(),
        "chat.JoinRoom" => chat::JoinRoomResponse {
            status,
            room: room.map(|r| chat::Room {
                room_id: Some(ROOMS[r].to_owned()),
                name: "room".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec(),
        "chat.LeaveRoom" => chat::LeaveRoomResponse { status }.encode_to_vec(),
        "chat.FetchRoomConversation" => {
            chat::FetchRoomConversationResponse { status, chat_messages: vec![] }.encode_to_vec()
        }
        _ => vec![4, 5, 6],
    };
    let (reply_type, seen) = match ty {
        ReplyTy::Default => (String::new(), format!("{request_type}Response")),
        ReplyTy::Explicit => (format!("{request_type}Response"), format!("{request_type}Response")),
        ReplyTy::Other => ("x.Unrelated".to_owned(), "x.Unrelated".to_owned()),
    };
    (Ok(Reply { reply_type, payload }), seen)
}
