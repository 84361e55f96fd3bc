//! The abstract operations and the proptest strategies that generate them and the config.

use std::time::Duration;

use clientmq_core::{Config, LostReason, Topic};
use proptest::prelude::*;

use crate::fixtures::config;

/// Mostly the small config above, sometimes other timings and limits: close timeout longer than
/// the request timeout, no memory of ended ids, a drain with no window, a limit of one.
pub(crate) fn config_strategy() -> impl Strategy<Value = Config> {
    let secs = |choices: &'static [u64]| proptest::sample::select(choices).prop_map(Duration::from_secs);
    prop_oneof![
        3 => Just(config()),
        1 => (
            1..=5usize,
            secs(&[5, 20]),
            secs(&[1, 5, 25]),
            secs(&[3, 15]),
            secs(&[3, 15]),
            (1..=3usize, 1..=2usize, 1..=3usize),
            secs(&[0, 10]),
            proptest::sample::select(&[0usize, 1, 4][..]),
        )
            .prop_map(
                |(max_connections, hb, close, request, server_request, (pending, sr, subs), window, memory)| {
                    Config {
                        max_connections,
                        heartbeat_interval: hb,
                        close_timeout: close,
                        request_timeout: request,
                        server_request_timeout: server_request,
                        max_pending_requests: pending,
                        max_pending_server_requests: sr,
                        max_subscriptions: subs,
                        drain_window: window,
                        ended_memory: memory,
                        ..config()
                    }
                },
            ),
    ]
}

/// Which connection an operation is about.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Sel {
    /// Index into the registered connections (falls back to `Any` when there are none).
    Live(usize),
    /// Index into the connections waiting for the client's close frame (falls back to `Live`).
    Closing(usize),
    /// Index into every id the harness has seen: accepted, ended and rejected ones.
    Any(usize),
    /// An id the gateway never issued.
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReqKind {
    Auth,
    Join(Option<usize>),
    Leave(usize),
    Fetch { room: usize, subscribe: bool },
    Other,
}

/// Which `S<n>` a client response names.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SrSel {
    /// A server request still pending; the response comes from its own connection.
    Pending(usize),
    /// Any number the harness has seen.
    Observed(usize),
    /// A number the gateway has not issued yet.
    Unobserved(u64),
}

#[derive(Debug, Clone)]
pub(crate) enum Body {
    Request { id: bool, typed: bool, kind: ReqKind, bad_payload: bool },
    Response(SrSel),
    Event,
    UnknownKind,
    Garbage(Vec<u8>),
    BadBase64(String),
    Empty,
    TooLarge,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum TokSel {
    Pending(usize),
    Any(usize),
    Unknown,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum ReplyTy {
    /// Empty reply type: the request's type + `Response`.
    Default,
    /// The request's type + `Response`, spelled out.
    Explicit,
    /// An unrelated type: no subscription change.
    Other,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum ReplyKind {
    Ok { ok: bool, ty: ReplyTy, room: Option<usize>, session: Option<u8> },
    Failed,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum DeliverTo {
    Conn(Sel),
    Room(usize),
    Conversation(usize),
}

#[derive(Debug, Clone)]
pub(crate) enum Op {
    Open(usize),
    /// A refusal decided outside the shard ([`Gateway::refuse`]).
    Refuse,
    Frame {
        conn: Sel,
        text: bool,
        body: Body,
    },
    Pong {
        conn: Sel,
        right: bool,
    },
    /// Every connection with a ping outstanding answers it (well-behaved clients).
    PongAll,
    PeerClosed {
        conn: Sel,
        code: Option<u16>,
    },
    TransportLost {
        conn: Sel,
        reason: LostReason,
    },
    SendFailed(Sel),
    Reply {
        token: TokSel,
        kind: ReplyKind,
    },
    Deliver(DeliverTo),
    /// The backend subscribes a connection to `ROOMS[room]`, or unsubscribes it.
    Subscription {
        conn: Sel,
        topic: Topic,
        room: usize,
        subscribe: bool,
    },
    ServerRequest(Sel),
    Drain,
    /// Milliseconds.
    Advance(u64),
}

pub(crate) fn sel() -> impl Strategy<Value = Sel> {
    prop_oneof![
        12 => any::<usize>().prop_map(Sel::Live),
        2 => any::<usize>().prop_map(Sel::Closing),
        4 => any::<usize>().prop_map(Sel::Any),
        1 => Just(Sel::Never),
    ]
}

pub(crate) fn req_kind() -> impl Strategy<Value = ReqKind> {
    prop_oneof![
        1 => Just(ReqKind::Auth),
        3 => proptest::option::of(0..3usize).prop_map(ReqKind::Join),
        2 => (0..3usize).prop_map(ReqKind::Leave),
        3 => (0..3usize, prop::bool::weighted(0.75))
            .prop_map(|(room, subscribe)| ReqKind::Fetch { room, subscribe }),
        1 => Just(ReqKind::Other),
    ]
}

pub(crate) fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        14 => (
            prop::bool::weighted(0.95),
            any::<bool>(),
            req_kind(),
            prop::bool::weighted(0.1),
        )
            .prop_map(|(id, typed, kind, bad_payload)| Body::Request {
                id,
                typed,
                kind,
                bad_payload,
            }),
        4 => prop_oneof![
            3 => any::<usize>().prop_map(SrSel::Pending),
            1 => any::<usize>().prop_map(SrSel::Observed),
            1 => (0..3u64).prop_map(SrSel::Unobserved),
        ]
        .prop_map(Body::Response),
        1 => Just(Body::Event),
        1 => Just(Body::UnknownKind),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(Body::Garbage),
        1 => "[a-z0-9!]{0,20}%".prop_map(Body::BadBase64),
        1 => Just(Body::Empty),
        1 => Just(Body::TooLarge),
    ]
}

pub(crate) fn reply_kind() -> impl Strategy<Value = ReplyKind> {
    prop_oneof![
        5 => (
            prop::bool::weighted(0.85),
            prop_oneof![
                4 => Just(ReplyTy::Default),
                2 => Just(ReplyTy::Explicit),
                1 => Just(ReplyTy::Other),
            ],
            proptest::option::of(0..3usize),
            proptest::option::of(0..3u8),
        )
            .prop_map(|(ok, ty, room, session)| ReplyKind::Ok { ok, ty, room, session }),
        1 => Just(ReplyKind::Failed),
    ]
}

pub(crate) fn op() -> impl Strategy<Value = Op> {
    let code = prop_oneof![Just(None), Just(Some(1000u16)), Just(Some(1001)), Just(Some(4000))];
    let reason = prop_oneof![
        Just(LostReason::Eof),
        Just(LostReason::Error),
        Just(LostReason::Protocol),
        Just(LostReason::TooBig),
        Just(LostReason::NotUtf8),
    ];
    let token = prop_oneof![
        6 => any::<usize>().prop_map(TokSel::Pending),
        3 => any::<usize>().prop_map(TokSel::Any),
        1 => Just(TokSel::Unknown),
    ];
    let deliver = prop_oneof![
        sel().prop_map(DeliverTo::Conn),
        (0..4usize).prop_map(DeliverTo::Room),
        (0..4usize).prop_map(DeliverTo::Conversation),
    ];
    prop_oneof![
        20 => (0..6usize).prop_map(Op::Open),
        1 => Just(Op::Refuse),
        70 => (sel(), any::<bool>(), body()).prop_map(|(conn, text, body)| Op::Frame { conn, text, body }),
        8 => (sel(), prop::bool::weighted(0.85)).prop_map(|(conn, right)| Op::Pong { conn, right }),
        12 => Just(Op::PongAll),
        5 => (sel(), code).prop_map(|(conn, code)| Op::PeerClosed { conn, code }),
        3 => (sel(), reason).prop_map(|(conn, reason)| Op::TransportLost { conn, reason }),
        3 => sel().prop_map(Op::SendFailed),
        35 => (token, reply_kind()).prop_map(|(token, kind)| Op::Reply { token, kind }),
        10 => deliver.prop_map(Op::Deliver),
        6 => (sel(), prop_oneof![Just(Topic::Room), Just(Topic::Conversation)], 0..4usize, any::<bool>())
            .prop_map(|(conn, topic, room, subscribe)| Op::Subscription { conn, topic, room, subscribe }),
        12 => sel().prop_map(Op::ServerRequest),
        1 => Just(Op::Drain),
        24 => prop_oneof![3 => 0..1_000u64, 1 => 0..30_000u64].prop_map(Op::Advance),
    ]
}
