//! The gateway checks every authentication before a backend sees it: static tokens, and EdgeAuth
//! digest tokens minted by the real `phenix-edge-auth` package (tests/fixtures), whose expiry is
//! judged by the injected clock and whose claims are enforced or passed on.

use std::time::Duration;

use clientmq_core::edge_auth::{EdgeAuth, StaticTokens};
use clientmq_core::proto::{chat, pcast};
use clientmq_core::{Config, ConnectionId, Encoding, EventKind, Output, TokenPolicy};
use prost::Message as _;
use serde_json::Value;

use crate::harness::{Harness, SEC, error_reason};

const START_MS: u64 = 1_700_000_000_000;

/// A token minted by the package, by the name of its vector.
fn vector(name: &str) -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/edge-auth-vectors.json"
    ))
    .unwrap();
    let all: Value = serde_json::from_str(&text).unwrap();
    let found = all["vectors"].as_array().unwrap().iter().find(|v| v["name"] == name).unwrap();
    found["token"].as_str().unwrap().to_owned()
}

fn harness() -> Harness {
    harness_with("my-secret", START_MS)
}

/// A gateway knowing application `my-application-id` with `secret`, started at `start_ms`.
fn harness_with(secret: &str, start_ms: u64) -> Harness {
    let tokens = TokenPolicy::Check {
        tokens: StaticTokens::new(["static-one"]),
        edge: EdgeAuth::new([("my-application-id", secret)]).unwrap(),
    };
    Harness::new(Config { tokens, wall_clock_start_ms: start_ms, ..Config::default() })
}

fn auth(token: &str, session: Option<&str>) -> Vec<u8> {
    pcast::Authenticate {
        client_version: "2022.0.2".into(),
        device_id: "d".into(),
        platform: "node".into(),
        platform_version: "20".into(),
        authentication_token: token.into(),
        session_id: session.map(str::to_owned),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Authenticates on a fresh connection from `addr`: the status the client got straight from the
/// gateway (`None` when the request went to the backend) and the reason traced.
fn try_auth(
    h: &mut Harness,
    addr: &str,
    token: &str,
    session: Option<&str>,
) -> (ConnectionId, Option<String>) {
    let conn = match h.open_from(addr, &[]) {
        clientmq_core::Admission::Accepted(id) => id,
        other => panic!("{other:?}"),
    };
    h.take_outputs();
    h.request(conn, "C0", "pcast.Authenticate", auth(token, session), Encoding::Base64Text);
    let answered = h.sent_to(conn).into_iter().next().map(|(_, msg)| {
        assert_eq!(msg.r#type, "pcast.AuthenticateResponse");
        pcast::AuthenticateResponse::decode(msg.payload.as_slice()).unwrap().status
    });
    (conn, answered)
}

fn refusal_of(h: &Harness, conn: ConnectionId) -> Option<&'static str> {
    h.events_of(conn).into_iter().find_map(|k| match k {
        EventKind::TokenRefused { reason } => Some(*reason),
        _ => None,
    })
}

fn forwarded_claims(h: &Harness) -> Option<Option<String>> {
    h.outputs.iter().rev().find_map(|o| match o {
        Output::Backend(b) => Some(b.claims.as_ref().map(|c| c.raw.clone())),
        _ => None,
    })
}

#[test]
fn static_tokens_and_digest_tokens_are_checked_before_the_backend() {
    let mut h = harness();
    let (_, answered) = try_auth(&mut h, "10.0.0.1:1", "static-one", None);
    assert_eq!(answered, None, "a known static token goes to the backend");
    assert_eq!(forwarded_claims(&h), Some(None));
    let (_, answered) = try_auth(&mut h, "10.0.0.1:1", &vector("auth-only"), None);
    assert_eq!(answered, None);
    assert!(forwarded_claims(&h).unwrap().unwrap().contains("\"type\":\"auth\""), "claims go with it");
    for (name, token, reason) in [
        ("unknown static", "static-two".to_owned(), "unknown-token"),
        ("streaming only", vector("stream"), "wrong-type"),
        ("unknown application", vector("unknown-application"), "unknown-application"),
        ("tampered", vector("tampered-claims"), "bad-digest"),
        ("empty", String::new(), "empty"),
    ] {
        let (conn, answered) = try_auth(&mut h, "10.0.0.1:1", &token, None);
        assert_eq!(answered.as_deref(), Some("unauthorized"), "{name}");
        assert_eq!(refusal_of(&h, conn), Some(reason), "{name}");
        assert!(!h.outputs.iter().any(|o| matches!(o, Output::Backend(_))), "{name}: never forwarded");
        let traced: Vec<String> = h.events_of(conn).iter().map(|k| k.to_string()).collect();
        assert!(
            traced.iter().all(|line| token.len() < 8 || !line.contains(&token[..8])),
            "{name}: token traced"
        );
    }
}

#[test]
fn expiry_is_judged_by_the_injected_clock() {
    // Minted to expire at 1_800_000_000_000 ms; the gateway starts one millisecond before.
    let mut h = harness_with("my-secret", 1_799_999_999_999);
    let token = vector("expires-one-ms-after-now");
    let (_, answered) = try_auth(&mut h, "10.0.0.1:1", &token, None);
    assert_eq!(answered, None, "valid at start");
    h.advance(Duration::from_millis(1));
    let (conn, answered) = try_auth(&mut h, "10.0.0.1:1", &token, None);
    assert_eq!(answered.as_deref(), Some("unauthorized"), "expired one millisecond later");
    assert_eq!(refusal_of(&h, conn), Some("expired"));
}

#[test]
fn address_and_session_claims_are_enforced() {
    let mut h = harness();
    let (_, answered) = try_auth(&mut h, "10.1.2.3:9", &vector("remote-address"), None);
    assert_eq!(answered, None, "from the bound address");
    let (conn, answered) = try_auth(&mut h, "10.9.9.9:9", &vector("remote-address"), None);
    assert_eq!((answered.as_deref(), refusal_of(&h, conn)), (Some("unauthorized"), Some("remote-address")));
    let (_, answered) = try_auth(&mut h, "10.0.0.1:1", &vector("session"), Some("session-id"));
    assert_eq!(answered, None, "resuming the bound session");
    for other in [None, Some("another")] {
        let (conn, answered) = try_auth(&mut h, "10.0.0.1:1", &vector("session"), other);
        assert_eq!(
            (answered.as_deref(), refusal_of(&h, conn)),
            (Some("unauthorized"), Some("session")),
            "{other:?}"
        );
    }
}

#[test]
fn a_room_claim_limits_joins_once_authenticated() {
    let mut h = harness();
    let (conn, _) = try_auth(&mut h, "10.0.0.1:1", &vector("room"), None);
    let token = h.backend_tokens()[0].0;
    let ok = pcast::AuthenticateResponse {
        status: "ok".into(),
        session_id: Some("s".into()),
        ..Default::default()
    };
    h.input(clientmq_core::Input::BackendReply {
        token,
        result: Ok(clientmq_core::Reply { reply_type: String::new(), payload: ok.encode_to_vec() }),
    });
    let join =
        |room: &str| chat::JoinRoom { room_id: Some(room.into()), ..Default::default() }.encode_to_vec();
    h.take_outputs();
    h.request(conn, "C1", "chat.JoinRoom", join("other-room"), Encoding::Base64Text);
    assert_eq!(error_reason(&h.sent_to(conn)[0].1), "unauthorized");
    assert!(h.events_of(conn).iter().any(|k| matches!(k, EventKind::TokenRefused { reason: "room" })));
    h.take_outputs();
    h.request(conn, "C2", "chat.JoinRoom", join("my-room.123456"), Encoding::Base64Text);
    assert_eq!(h.backend_tokens().len(), 1, "the named room goes to the backend");
    h.advance(SEC);
}
