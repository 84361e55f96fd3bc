//! Model-based property test of the gateway.
//!
//! Random sequences of inputs (opens, frames of every kind, pongs, peer closes, transport losses,
//! send failures, backend replies and deliveries, server requests, drains, time jumps) are fed to
//! a [`Gateway`] with a small [`Config`], so that limits and timers are actually hit. A harness
//! keeps an independent model of what the gateway must have done (which connections exist and in
//! which phase, which requests and server requests are in flight, who is subscribed to what) and,
//! after every single call into the gateway, drains every output and trace event, checks each one
//! against the model and then checks the invariants of docs/ARCHITECTURE.md ("The one rule"):
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

mod absorb;
mod backend;
mod client;
mod fixtures;
mod harness;
mod invariants;
mod ops;
mod state;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clientmq_core::{
    Admission, BackendError, ConnectionId, DisconnectPath, Encoding, EventKind, Frame, Gateway, Input,
    LostReason, Output, Reply, RequestOutcome, Stray, Topic, close, codec,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::fixtures::{SEC, build_reply, config, error_reason, message, peer, request_payload};
use crate::harness::Harness;
use crate::ops::{ReplyKind, ReplyTy, ReqKind, config_strategy, op};

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

/// The token of the one request forwarded (after the interest it holds, if any).
fn token_of(outs: &[Output]) -> u64 {
    match outs {
        [Output::Backend(req)] | [Output::Interest { on: true, .. }, Output::Backend(req)] => req.token,
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

    // A reply while the connection is closing is undeliverable; the room the join named is no
    // longer heard.
    gw.handle(Input::Frame { conn: a, frame: join("C1") }, t0);
    let t1 = token_of(&drain_all(&mut gw).0);
    gw.handle(Input::SendFailed { conn: a }, t0);
    drain_all(&mut gw);
    gw.handle(Input::BackendReply { token: t1, result: ok_join() }, t0 + SEC);
    let (outs, evs) = drain_all(&mut gw);
    assert_eq!(outs, vec![Output::Interest { topic: Topic::Room, room: "r0".into(), on: false }]);
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
