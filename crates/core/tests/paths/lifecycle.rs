//! Rows about a connection's life: admission, heartbeats, closes, drain, cleanup.

use std::time::Duration;

use clientmq_core::proto::{chat, pcast};
use clientmq_core::{
    Admission, Config, ConnectionId, DisconnectPath, Encoding, EventKind, Input, LostReason, Output,
    TokenPolicy, Topic, close,
};
use prost::Message as _;

use crate::harness::*;

#[test]
fn upgrade_32_char_id_remote_address_from_x_forwarded_for() {
    let config = Config {
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        tokens: TokenPolicy::AcceptAny,
        ..Config::default()
    };
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
    h.input(Input::Subscription {
        conn: id,
        topic: Topic::Room,
        room: "r".into(),
        subscribe: true,
        revision: None,
    });
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
