//! Model-based property test of the gateway.
//!
//! Random sequences of inputs (opens, frames of every kind, pongs, peer closes, transport losses,
//! send failures, backend replies and deliveries, server requests, drains, time jumps) are fed to
//! a [`Gateway`] with a small [`Config`], so that limits and timers are actually hit. A harness
//! keeps an independent model of what the gateway must have done (which connections exist and in
//! which phase, which requests and server requests are in flight, who is subscribed to what) and,
//! after every single call into the gateway, drains every output and trace event, checks each one
//! against the model and then checks the invariants of DESIGN.md ("The one rule"):
//!
//! - `check_invariants` holds; open == registry size == total - disconnected == accepted ids -
//!   distinct disconnected ids; the limit is never exceeded;
//! - no id is disconnected twice; every `Disconnected` event comes with exactly one `Abort` (forced)
//!   or `Release` and one `Publish`, and with the right path and close code;
//! - nothing is Closing longer than the close timeout, nothing pending longer than its timeout;
//! - every client request with an id is answered exactly once (or traced undeliverable), every
//!   server request ends exactly once;
//! - drain closes (3333) only go out once the connection has no request in flight;
//! - once every client stops talking and time passes, open, pending and subscriptions are all zero
//!   and no timer is left.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use base64::Engine as _;
use clientmq_core::proto::{chat, mq, pcast};
use clientmq_core::{
    Admission, BackendError, CloseReason, Config, ConnectionId, DisconnectPath, DropReason, Encoding, Event,
    EventKind, Frame, Gateway, Input, LostReason, Output, Peer, Reply, RequestOutcome, ServerRequestError,
    Stray, Target, Topic, close, codec,
};
use proptest::prelude::*;
use prost::Message as _;
use rand::SeedableRng;
use rand::rngs::StdRng;

const SEC: Duration = Duration::from_secs(1);
const ROOMS: [&str; 4] = ["r0", "r1", "r2", "nobody-here"];
const PROXY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const NEVER_SEEN: &str = "NeverSeenNeverSeenNeverSeen00000";
const MISSING_TOKEN: u64 = 1 << 40;
/// A payload no protobuf message decodes from (a truncated varint).
const BAD_PAYLOAD: [u8; 2] = [0xff, 0xff];

fn config() -> Config {
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
        drain_window: 10 * SEC,
        trusted_proxies: vec![IpAddr::V4(PROXY)],
        route_key: "model-route".to_owned(),
        ended_memory: 4,
    }
}

/// Mostly the small config above, sometimes other timings and limits: close timeout longer than
/// the request timeout, no memory of ended ids, a drain with no window, a limit of one.
fn config_strategy() -> impl Strategy<Value = Config> {
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

/// A peer for `Open`, with the remote address the gateway must derive from it.
fn peer(i: usize) -> (Peer, IpAddr) {
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

fn message(request_id: Option<String>, ty: &str, payload: Vec<u8>, kind: Option<i32>) -> mq::Message {
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
fn error_reason(msg: &mq::Message) -> Option<String> {
    (msg.r#type == "mq.Error")
        .then(|| mq::Error::decode(msg.payload.as_slice()).expect("mq.Error payload decodes").reason)
}

// ---------------------------------------------------------------------------------------------
// Abstract operations
// ---------------------------------------------------------------------------------------------

/// Which connection an operation is about.
#[derive(Debug, Clone, Copy)]
enum Sel {
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
enum ReqKind {
    Auth,
    Join(Option<usize>),
    Leave(usize),
    Fetch { room: usize, subscribe: bool },
    Other,
}

/// Which `S<n>` a client response names.
#[derive(Debug, Clone, Copy)]
enum SrSel {
    /// A server request still pending; the response comes from its own connection.
    Pending(usize),
    /// Any number the harness has seen.
    Observed(usize),
    /// A number the gateway has not issued yet.
    Unobserved(u64),
}

#[derive(Debug, Clone)]
enum Body {
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
enum TokSel {
    Pending(usize),
    Any(usize),
    Unknown,
}

#[derive(Debug, Clone, Copy)]
enum ReplyTy {
    /// Empty reply type: the request's type + `Response`.
    Default,
    /// The request's type + `Response`, spelled out.
    Explicit,
    /// An unrelated type: no subscription change.
    Other,
}

#[derive(Debug, Clone, Copy)]
enum ReplyKind {
    Ok { ok: bool, ty: ReplyTy, room: Option<usize>, session: Option<u8> },
    Failed,
}

#[derive(Debug, Clone, Copy)]
enum DeliverTo {
    Conn(Sel),
    Room(usize),
    Conversation(usize),
}

#[derive(Debug, Clone)]
enum Op {
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
    ServerRequest(Sel),
    Drain,
    /// Milliseconds.
    Advance(u64),
}

fn sel() -> impl Strategy<Value = Sel> {
    prop_oneof![
        12 => any::<usize>().prop_map(Sel::Live),
        2 => any::<usize>().prop_map(Sel::Closing),
        4 => any::<usize>().prop_map(Sel::Any),
        1 => Just(Sel::Never),
    ]
}

fn req_kind() -> impl Strategy<Value = ReqKind> {
    prop_oneof![
        1 => Just(ReqKind::Auth),
        3 => proptest::option::of(0..3usize).prop_map(ReqKind::Join),
        2 => (0..3usize).prop_map(ReqKind::Leave),
        3 => (0..3usize, prop::bool::weighted(0.75))
            .prop_map(|(room, subscribe)| ReqKind::Fetch { room, subscribe }),
        1 => Just(ReqKind::Other),
    ]
}

fn body() -> impl Strategy<Value = Body> {
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

fn reply_kind() -> impl Strategy<Value = ReplyKind> {
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

fn op() -> impl Strategy<Value = Op> {
    let code = prop_oneof![Just(None), Just(Some(1000u16)), Just(Some(1001)), Just(Some(4000))];
    let reason = prop_oneof![
        Just(LostReason::Eof),
        Just(LostReason::Error),
        Just(LostReason::Protocol),
        Just(LostReason::TooBig),
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
        12 => sel().prop_map(Op::ServerRequest),
        1 => Just(Op::Drain),
        24 => prop_oneof![3 => 0..1_000u64, 1 => 0..30_000u64].prop_map(Op::Advance),
    ]
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    Closing { code: u16, since: Instant },
    Ended,
}

#[derive(Debug)]
struct Conn {
    remote: IpAddr,
    phase: Phase,
    /// The phase the connection was in when its `Abort`/`Release` went out.
    before_end: Option<Phase>,
    aborted: bool,
    next_heartbeat: Instant,
    /// The unanswered ping: payload and when it went out.
    ping: Option<(Vec<u8>, Instant)>,
    last_ping: Option<Vec<u8>>,
    encoding: Encoding,
    session: Option<String>,
    rooms: BTreeSet<String>,
    conversations: BTreeSet<String>,
    /// Backend tokens in flight.
    pending: BTreeSet<u64>,
    /// Server request numbers in flight.
    server_requests: BTreeSet<u64>,
    /// Drain found requests in flight and waits for them.
    drain_due: bool,
}

impl Conn {
    fn new(remote: IpAddr, next_heartbeat: Instant) -> Self {
        Conn {
            remote,
            phase: Phase::Open,
            before_end: None,
            aborted: false,
            next_heartbeat,
            ping: None,
            last_ping: None,
            encoding: Encoding::default(),
            session: None,
            rooms: BTreeSet::new(),
            conversations: BTreeSet::new(),
            pending: BTreeSet::new(),
            server_requests: BTreeSet::new(),
            drain_due: false,
        }
    }

    fn topic(&mut self, topic: Topic) -> &mut BTreeSet<String> {
        match topic {
            Topic::Room => &mut self.rooms,
            Topic::Conversation => &mut self.conversations,
        }
    }

    fn subscribe(&mut self, topic: Topic, room: String, limit: usize, evs: &mut Vec<EventKind>) {
        if self.topic(topic).contains(&room) {
            return;
        }
        if self.rooms.len() + self.conversations.len() >= limit {
            evs.push(EventKind::SubscriptionLimit { room });
            return;
        }
        self.topic(topic).insert(room.clone());
        evs.push(EventKind::Subscribed { topic, room });
    }
}

#[derive(Debug, Clone)]
struct Pending {
    conn: ConnectionId,
    request_id: String,
    request_type: String,
    room: Option<String>,
    subscribe: bool,
    at: Instant,
    /// The answer goes out the way the request came in.
    encoding: Encoding,
}

#[derive(Debug, Clone)]
struct ServerReq {
    conn: ConnectionId,
    token: u64,
    at: Instant,
}

/// The call whose outputs are being checked.
#[derive(Debug, Clone)]
enum Ctx {
    Open,
    Timeout,
    Frame {
        conn: ConnectionId,
        request_id: Option<String>,
        request_type: String,
        payload: Vec<u8>,
        room: Option<String>,
        subscribe: bool,
        sr_answer: Option<u64>,
    },
    Pong,
    PeerClosed {
        conn: ConnectionId,
        code: Option<u16>,
    },
    Lost {
        conn: ConnectionId,
        reason: LostReason,
    },
    SendFailed {
        conn: ConnectionId,
    },
    Reply {
        token: u64,
    },
    Deliver {
        recipients: Vec<ConnectionId>,
        event_type: String,
        payload: Vec<u8>,
    },
    ServerRequest {
        conn: ConnectionId,
        token: u64,
        request_type: String,
        payload: Vec<u8>,
    },
    Drain,
}

/// What one call produced.
struct Batch {
    outs: Vec<Output>,
    evs: Vec<Event>,
}

impl Batch {
    fn kinds(&self) -> Vec<&EventKind> {
        self.evs.iter().map(|e| &e.kind).collect()
    }
}

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

struct Harness {
    cfg: Config,
    gw: Gateway,
    start: Instant,
    now: Instant,
    /// Every id seen: accepted and rejected, in order.
    ids: Vec<ConnectionId>,
    /// Every accepted connection, ended ones included.
    conns: BTreeMap<ConnectionId, Conn>,
    accepted: u64,
    rejected: u64,
    disconnected: BTreeSet<ConnectionId>,
    recent_ended: VecDeque<ConnectionId>,
    draining: Option<Instant>,
    next_rid: u64,
    /// Request ids the gateway owes an answer, with their connection.
    issued: BTreeMap<String, ConnectionId>,
    forwarded: BTreeMap<String, u64>,
    tokens: Vec<u64>,
    pending: BTreeMap<u64, Pending>,
    responded: BTreeSet<String>,
    answered: BTreeSet<String>,
    outcomes: BTreeMap<RequestOutcome, u64>,
    paths: BTreeMap<DisconnectPath, u64>,
    pings: u64,
    pongs: u64,
    sr_numbers: Vec<u64>,
    server_reqs: BTreeMap<u64, ServerReq>,
    sr_next_token: u64,
    sr_issued: BTreeSet<u64>,
    sr_done: BTreeSet<u64>,
    /// What happened, by kind: shows the generator reaches every path.
    tally: BTreeMap<String, u64>,
    /// How far in the past the current operation's inputs are stamped.
    late: Duration,
}

impl Harness {
    fn new(seed: u64, cfg: Config) -> Self {
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
            tally: BTreeMap::new(),
            late: Duration::ZERO,
        }
    }

    /// The time inputs are stamped with: usually now, sometimes earlier (inputs that queued up in
    /// a channel), which the gateway must treat as now.
    fn stamp(&self) -> Instant {
        self.now.checked_sub(self.late).map_or(self.start, |t| t.max(self.start))
    }

    fn open_count(&self) -> usize {
        (self.accepted - self.disconnected.len() as u64) as usize
    }

    fn registered(&self, id: &ConnectionId) -> Option<&Conn> {
        self.conns.get(id).filter(|c| c.phase != Phase::Ended)
    }

    fn conn_mut(&mut self, id: &ConnectionId) -> &mut Conn {
        self.conns.get_mut(id).unwrap_or_else(|| panic!("{id} was never accepted"))
    }

    fn live_ids(&self) -> Vec<ConnectionId> {
        self.conns.iter().filter(|(_, c)| c.phase != Phase::Ended).map(|(id, _)| *id).collect()
    }

    fn resolve(&self, sel: Sel) -> ConnectionId {
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

    fn run(&mut self, op: &Op) {
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
            Op::ServerRequest(conn) => self.op_server_request(*conn),
            Op::Drain => self.op_drain(),
            Op::Advance(ms) => self.advance_to(self.now + Duration::from_millis(*ms)),
        }
    }

    // ---- time ----

    /// Fires every timer in order, at its exact deadline, up to `target`; then sets the clock
    /// to `target`.
    fn advance_to(&mut self, target: Instant) {
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

    /// Clients stop talking and answer nothing: heartbeats must close every connection, close
    /// timeouts must force them, and nothing may be left behind.
    fn quiesce(&mut self) {
        let c = &self.cfg;
        let span = c.close_timeout + c.request_timeout + c.heartbeat_interval * 3 + c.drain_window;
        self.advance_to(self.now + span);
        let gw = &self.gw;
        assert_eq!(gw.open_connections(), 0, "connections leaked");
        assert_eq!(gw.closing_connections(), 0);
        assert_eq!(gw.pending_requests(), 0, "requests leaked");
        assert_eq!(gw.pending_server_requests(), 0, "server requests leaked");
        assert_eq!(gw.subscriptions(), 0, "subscriptions leaked");
        assert_eq!(gw.poll_timeout(), None, "timers leaked");
        let stats = gw.stats();
        assert_eq!(stats.disconnected(), stats.total);
        assert!(self.conns.values().all(|c| c.phase == Phase::Ended));
        assert!(self.pending.is_empty() && self.server_reqs.is_empty());
        assert_eq!(self.sr_done, self.sr_issued, "a server request never ended");
        let issued: BTreeSet<String> = self.issued.keys().cloned().collect();
        assert_eq!(issued, self.answered, "a client request was never answered");
    }

    // ---- operations ----

    fn op_open(&mut self, i: usize) {
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

    fn op_refuse(&mut self) {
        let id = self.gw.refuse(close::CONCURRENCY_LIMIT, self.stamp());
        assert!(!self.ids.contains(&id), "id {id} issued twice");
        self.ids.push(id);
        self.rejected += 1;
        let b = self.absorb(&Ctx::Open);
        assert!(b.outs.is_empty(), "{:?}", b.outs);
        let expected = EventKind::Rejected { code: close::CONCURRENCY_LIMIT.code, open: self.open_count() };
        assert_eq!(b.kinds(), vec![&expected]);
        assert_eq!(b.evs[0].conn, Some(id));
    }

    fn op_frame(&mut self, sel: Sel, text: bool, body: &Body) {
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
                    [EventKind::Answered { outcome: RequestOutcome::Refused, .. }]
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

    fn op_pong(&mut self, sel: Sel, right: bool) {
        self.op_pong_to(self.resolve(sel), right)
    }

    fn op_pong_to(&mut self, conn: ConnectionId, right: bool) {
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
    fn op_end(&mut self, sel: Sel, peer_close: Option<Option<u16>>, reason: LostReason) {
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

    fn op_send_failed(&mut self, sel: Sel) {
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

    fn op_reply(&mut self, sel: TokSel, kind: ReplyKind) {
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
        if let (Some(p), true) = (&p, open) {
            let limit = self.cfg.max_subscriptions;
            let c = self.conns.get_mut(&p.conn).expect("pending on a known conn");
            expect_drain_close = c.drain_due && c.pending.len() == 1;
            // A successful reply of the request's own type changes the gateway's tables.
            if let ReplyKind::Ok { ok: true, ty: ReplyTy::Default | ReplyTy::Explicit, room, session } = kind
            {
                match p.request_type.as_str() {
                    "pcast.Authenticate" => {
                        if let Some(s) = session {
                            let session_id = format!("session-{s}");
                            c.session = Some(session_id.clone());
                            sub_events.push(EventKind::Authenticated { session_id });
                        }
                    }
                    "chat.JoinRoom" => {
                        let room = room.map(|r| ROOMS[r].to_owned()).or(p.room.clone());
                        if let Some(room) = room {
                            c.subscribe(Topic::Room, room, limit, &mut sub_events);
                        }
                    }
                    "chat.LeaveRoom" => {
                        let room = p.room.clone().expect("leave names its room");
                        for topic in [Topic::Room, Topic::Conversation] {
                            if c.topic(topic).remove(&room) {
                                sub_events.push(EventKind::Unsubscribed { topic, room: room.clone() });
                            }
                        }
                    }
                    "chat.FetchRoomConversation" if p.subscribe => {
                        let room = p.room.clone().expect("fetch names its room");
                        c.subscribe(Topic::Conversation, room, limit, &mut sub_events);
                    }
                    _ => {}
                }
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

    fn op_deliver(&mut self, to: DeliverTo) {
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
            .map(|o| match o {
                Output::Send { conn, .. } => *conn,
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

    fn op_server_request(&mut self, sel: Sel) {
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

    fn op_drain(&mut self) {
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

    // ---- checking every output and event ----

    /// Drains every output and event of the last call, checks each against the model and updates
    /// it, then checks the invariants.
    fn absorb(&mut self, ctx: &Ctx) -> Batch {
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
                Output::Send { conn, frame } => self.on_send(ctx, *conn, frame, &mut responses),
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
        }
        *self.outcomes.entry(outcome).or_default() += 1;
    }

    /// The invariants, after every call.
    fn check(&self) {
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
}

fn request_payload(kind: ReqKind) -> (&'static str, Vec<u8>) {
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
fn request_intent(kind: ReqKind) -> (Option<String>, bool) {
    match kind {
        ReqKind::Join(room) => (room.map(|r| ROOMS[r].to_owned()), false),
        ReqKind::Leave(room) => (Some(ROOMS[room].to_owned()), false),
        ReqKind::Fetch { room, subscribe } => (Some(ROOMS[room].to_owned()), subscribe),
        ReqKind::Auth | ReqKind::Other => (None, false),
    }
}

/// The backend's answer for a request of `request_type`, and the type the client must see.
fn build_reply(request_type: &str, kind: ReplyKind) -> (Result<Reply, BackendError>, String) {
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

fn output_key(out: &Output) -> String {
    match out {
        Output::Send { frame, .. } => {
            let msg = codec::decode(frame, usize::MAX).expect("decodes");
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

/// Guards against a vacuous property: the generator must reach every path the model checks.
#[test]
fn the_generator_reaches_every_path() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let strategy = (any::<u64>(), prop::collection::vec(op(), 1..200));
    let mut tally: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..200 {
        let (seed, ops) = strategy.new_tree(&mut runner).expect("generates").current();
        let mut h = Harness::new(seed, config());
        for op in &ops {
            h.run(op);
        }
        h.quiesce();
        for (k, n) in h.tally {
            *tally.entry(k).or_default() += n;
        }
    }
    let expected = [
        "opened",
        "rejected 1013",
        "rejected 3333",
        "disconnected client 1000",
        "disconnected client 1005",
        "disconnected server 3333",
        "disconnected server 3334",
        "disconnected server 3335",
        "disconnected forced 3333",
        "disconnected forced 3334",
        "disconnected forced 3335",
        "disconnected lost 1006",
        "disconnected lost 1002",
        "disconnected lost 1009",
        "disconnected lost 3334",
        "answered ok",
        "answered failed",
        "answered timeout",
        "answered refused",
        "answered undeliverable",
        "send error draining",
        "send error too-many-requests",
        "send error malformed",
        "dropped unknown-connection",
        "dropped not-open",
        "dropped missing-request-id",
        "dropped client-event",
        "dropped unknown-message-type",
        "dropped unsolicited-response",
        "dropped late-response",
        "dropped empty",
        "dropped too-large",
        "dropped invalid-base64",
        "dropped invalid-message",
        "late-reply",
        "authenticated",
        "subscribed room",
        "subscribed conversation",
        "unsubscribed room",
        "unsubscribed conversation",
        "subscription-limit",
        "delivered",
        "server-request-done ok",
        "server-request-done timeout",
        "server-request-done disconnected",
        "server-request-done not-connected",
        "server-request-done not-open",
        "server-request-done too-many-pending",
        "pong",
        "unexpected-pong",
        "stray close true",
        "stray close false",
        "stray transport-lost true",
        "stray pong true",
        "stray send-failed true",
        "stray delivery true",
        "stray server-request false",
        "drain-started",
        "drain-deferred",
        "close 3333",
        "close 3334",
        "close 3335",
        "abort",
        "release",
        "publish",
    ];
    let missing: Vec<&str> = expected.iter().copied().filter(|k| !tally.contains_key(*k)).collect();
    assert!(missing.is_empty(), "never reached: {missing:?}\nreached: {tally:#?}");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1024,
        // Only create this file: no regression files next to it. A failure prints its minimal case.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_inputs_never_break_the_invariants(
        seed in any::<u64>(),
        cfg in config_strategy(),
        ops in prop::collection::vec((op(), prop_oneof![9 => Just(0u64), 1 => 1..5_000u64]), 1..200),
    ) {
        let mut h = Harness::new(seed, cfg);
        for (op, late) in &ops {
            h.late = Duration::from_millis(*late);
            h.run(op);
        }
        h.late = Duration::ZERO;
        h.quiesce();
    }
}

// ---------------------------------------------------------------------------------------------
// Specific interleavings
// ---------------------------------------------------------------------------------------------

fn drain_all(gw: &mut Gateway) -> (Vec<Output>, Vec<EventKind>) {
    let mut outs = Vec::new();
    while let Some(o) = gw.poll_output() {
        outs.push(o);
    }
    let mut evs = Vec::new();
    while let Some(e) = gw.poll_event() {
        evs.push(e.kind);
    }
    gw.check_invariants().expect("invariants hold");
    (outs, evs)
}

/// Fires every timer up to `target`, collecting what came out.
fn run_until(gw: &mut Gateway, target: Instant) -> (Vec<Output>, Vec<EventKind>) {
    let (mut outs, mut evs) = (Vec::new(), Vec::new());
    while let Some(at) = gw.poll_timeout().filter(|at| *at <= target) {
        gw.handle_timeout(at);
        let (o, e) = drain_all(gw);
        outs.extend(o);
        evs.extend(e);
    }
    gw.handle_timeout(target);
    let (o, e) = drain_all(gw);
    outs.extend(o);
    evs.extend(e);
    (outs, evs)
}

fn new_gateway(seed: u64) -> (Gateway, Instant) {
    let t0 = Instant::now();
    let gw = Gateway::new(config(), Box::new(StdRng::seed_from_u64(seed)), t0).unwrap();
    (gw, t0)
}

fn accept(gw: &mut Gateway, now: Instant) -> ConnectionId {
    let Admission::Accepted(id) = gw.open(&peer(0).0, now) else { panic!("refused") };
    drain_all(gw);
    id
}

fn request(rid: &str, ty: &str, payload: Vec<u8>) -> Frame {
    codec::encode(&message(Some(rid.into()), ty, payload, Some(0)), Encoding::Binary)
}

fn token_of(outs: &[Output]) -> u64 {
    match outs {
        [Output::Backend(req)] => req.token,
        other => panic!("not forwarded: {other:?}"),
    }
}

fn disconnects(evs: &[EventKind]) -> Vec<(DisconnectPath, u16)> {
    evs.iter()
        .filter_map(|e| match e {
            EventKind::Disconnected { path, code, .. } => Some((*path, *code)),
            _ => None,
        })
        .collect()
}

#[test]
fn peer_close_twice_then_transport_lost_counts_once() {
    let (mut gw, t0) = new_gateway(1);
    let a = accept(&mut gw, t0);
    gw.handle(Input::PeerClosed { conn: a, code: Some(1000) }, t0 + SEC);
    let (outs, evs) = drain_all(&mut gw);
    assert!(matches!(&outs[..], [Output::Release { conn }, Output::Publish(_)] if *conn == a));
    assert_eq!(disconnects(&evs), vec![(DisconnectPath::Client, 1000)]);

    // Everything after the end is traced as stray and changes nothing.
    let late = [
        Input::PeerClosed { conn: a, code: None },
        Input::TransportLost { conn: a, reason: LostReason::Eof },
        Input::SendFailed { conn: a },
        Input::Pong { conn: a, payload: 1u64.to_be_bytes().to_vec() },
    ];
    for input in late {
        gw.handle(input, t0 + 2 * SEC);
        let (outs, evs) = drain_all(&mut gw);
        assert!(outs.is_empty(), "{outs:?}");
        assert!(matches!(&evs[..], [EventKind::Stray { after_end: true, .. }]), "{evs:?}");
    }
    let stats = gw.stats();
    assert_eq!((stats.total, stats.disconnected()), (1, 1));
    assert_eq!(gw.open_connections(), 0);
    assert_eq!(gw.poll_timeout(), None);

    // A server-initiated close answered twice: one Server disconnect, no forced one later.
    let b = accept(&mut gw, t0 + 3 * SEC);
    gw.handle(Input::SendFailed { conn: b }, t0 + 3 * SEC);
    drain_all(&mut gw);
    for code in [Some(3335), Some(3335)] {
        gw.handle(Input::PeerClosed { conn: b, code }, t0 + 4 * SEC);
    }
    let (_, evs) = drain_all(&mut gw);
    assert_eq!(disconnects(&evs), vec![(DisconnectPath::Server, 3335)]);
    let (outs, evs) = run_until(&mut gw, t0 + 60 * SEC);
    assert!(outs.is_empty() && disconnects(&evs).is_empty());
    assert_eq!(gw.stats().disconnected(), 2);
    assert_eq!(gw.poll_timeout(), None);
}

#[test]
fn backend_reply_after_the_end_changes_nothing() {
    let (mut gw, t0) = new_gateway(2);
    let a = accept(&mut gw, t0);
    let join = |rid: &str| request(rid, "chat.JoinRoom", request_payload(ReqKind::Join(Some(0))).1);
    let ok_join = || {
        build_reply(
            "chat.JoinRoom",
            ReplyKind::Ok { ok: true, ty: ReplyTy::Default, room: Some(0), session: None },
        )
        .0
    };

    // A reply while the connection is closing is undeliverable and subscribes nothing.
    gw.handle(Input::Frame { conn: a, frame: join("C1") }, t0);
    let t1 = token_of(&drain_all(&mut gw).0);
    gw.handle(Input::SendFailed { conn: a }, t0);
    drain_all(&mut gw);
    gw.handle(Input::BackendReply { token: t1, result: ok_join() }, t0 + SEC);
    let (outs, evs) = drain_all(&mut gw);
    assert!(outs.is_empty(), "{outs:?}");
    assert!(matches!(&evs[..], [EventKind::Answered { outcome: RequestOutcome::Undeliverable, .. }]));
    assert_eq!(gw.subscriptions(), 0);

    // A request in flight when the transport is lost fails once, then every reply is late.
    let b = accept(&mut gw, t0 + SEC);
    gw.handle(Input::Frame { conn: b, frame: join("C2") }, t0 + SEC);
    let t2 = token_of(&drain_all(&mut gw).0);
    gw.handle(Input::TransportLost { conn: b, reason: LostReason::Error }, t0 + 2 * SEC);
    let (_, evs) = drain_all(&mut gw);
    assert_eq!(disconnects(&evs), vec![(DisconnectPath::Lost, close::ABNORMAL)]);
    let before = gw.stats().clone();
    for result in [ok_join(), Err(BackendError::Failed("x".into())), ok_join()] {
        gw.handle(Input::BackendReply { token: t2, result }, t0 + 3 * SEC);
        let (outs, evs) = drain_all(&mut gw);
        assert!(outs.is_empty(), "{outs:?}");
        assert_eq!(evs, vec![EventKind::LateReply { token: t2 }]);
    }
    assert_eq!(gw.stats(), &before);
    assert_eq!(gw.subscriptions(), 0);
    assert_eq!(gw.pending_requests(), 0);
    assert_eq!(gw.stats().requests, BTreeMap::from([(RequestOutcome::Undeliverable, 2)]));
}

#[test]
fn drain_closes_only_after_the_in_flight_reply_went_out() {
    let (mut gw, t0) = new_gateway(3);
    let busy = accept(&mut gw, t0);
    let idle = accept(&mut gw, t0);
    gw.handle(Input::Frame { conn: busy, frame: request("C1", "x.Other", vec![1]) }, t0);
    let token = token_of(&drain_all(&mut gw).0);

    gw.handle(Input::Drain, t0 + SEC);
    assert!(drain_all(&mut gw).0.is_empty());
    assert!(matches!(
        gw.open(&peer(0).0, t0 + SEC),
        Admission::Rejected { close, .. } if close == close::DRAIN
    ));
    drain_all(&mut gw);

    // Through the whole window: the idle one is closed (and, never answering, forced); the busy
    // one is deferred.
    let (outs, evs) = run_until(&mut gw, t0 + 11 * SEC);
    assert!(outs.contains(&Output::Close { conn: idle, close: close::DRAIN }));
    assert!(outs.contains(&Output::Abort { conn: idle }));
    assert!(
        !outs.iter().any(|o| matches!(o, Output::Close { conn, .. } if *conn == busy)),
        "drain closed a connection with a request in flight: {outs:?}"
    );
    assert!(evs.contains(&EventKind::DrainDeferred { pending: 1 }));

    // New requests are refused meanwhile, without reaching the backend.
    gw.handle(Input::Frame { conn: busy, frame: request("C2", "x.Other", vec![2]) }, t0 + 11 * SEC);
    let (outs, _) = drain_all(&mut gw);
    let [Output::Send { conn, frame }] = &outs[..] else { panic!("{outs:?}") };
    assert_eq!(*conn, busy);
    let msg = codec::decode(frame, usize::MAX).unwrap();
    assert_eq!(error_reason(&msg).as_deref(), Some("draining"));

    // The reply goes out first, then the drain close.
    let reply = Reply { reply_type: String::new(), payload: vec![5] };
    gw.handle(Input::BackendReply { token, result: Ok(reply) }, t0 + 12 * SEC);
    let (outs, _) = drain_all(&mut gw);
    assert_eq!(outs.len(), 2, "{outs:?}");
    let Output::Send { conn, frame } = &outs[0] else { panic!("{outs:?}") };
    assert_eq!(*conn, busy);
    let msg = codec::decode(frame, usize::MAX).unwrap();
    assert_eq!(msg.request_id.as_deref(), Some("C1"));
    assert_eq!(msg.r#type, "x.OtherResponse");
    assert_eq!(outs[1], Output::Close { conn: busy, close: close::DRAIN });

    gw.handle(Input::PeerClosed { conn: busy, code: Some(3333) }, t0 + 12 * SEC);
    let (_, evs) = drain_all(&mut gw);
    assert_eq!(disconnects(&evs), vec![(DisconnectPath::Server, 3333)]);
    assert_eq!(gw.open_connections(), 0);
    assert_eq!(gw.pending_requests(), 0);
    assert_eq!(gw.poll_timeout(), None);
}

#[test]
fn silent_client_is_forced_exactly_once_at_the_close_deadline() {
    let (mut gw, t0) = new_gateway(4);
    let a = accept(&mut gw, t0);
    let (outs, _) = run_until(&mut gw, t0 + 20 * SEC);
    assert!(matches!(&outs[..], [Output::Ping { conn, .. }] if *conn == a));
    let (outs, _) = run_until(&mut gw, t0 + 40 * SEC);
    assert_eq!(outs, vec![Output::Close { conn: a, close: close::TIMEOUT }]);
    let (outs, _) = run_until(&mut gw, t0 + 45 * SEC - Duration::from_millis(1));
    assert!(outs.is_empty());
    let (outs, evs) = run_until(&mut gw, t0 + 45 * SEC);
    assert_eq!(outs[0], Output::Abort { conn: a });
    assert_eq!(disconnects(&evs), vec![(DisconnectPath::Forced, close::TIMEOUT.code)]);
    gw.handle(Input::PeerClosed { conn: a, code: Some(3334) }, t0 + 46 * SEC);
    let (outs, evs) = drain_all(&mut gw);
    assert!(outs.is_empty());
    assert_eq!(evs, vec![EventKind::Stray { what: Stray::Close, after_end: true }]);
    assert_eq!(gw.stats().disconnected(), 1);
    assert_eq!(gw.poll_timeout(), None);
}
