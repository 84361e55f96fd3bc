//! Authentication tokens: static tokens and EdgeAuth digest tokens minted by the real
//! `phenix-edge-auth` package (crates/core/tests/fixtures/edge-auth-vectors.json), refused at
//! the gateway before a backend sees them.

use std::sync::Arc;

use clientmq_core::TokenPolicy;
use clientmq_core::edge_auth::{EdgeAuth, StaticTokens};
use clientmq_core::proto::{chat, pcast};
use prost::Message as _;

use crate::harness::{Gw, Raw, TestBackend, config, error_reason, start};

/// When the vectors were minted for: most expire at 1_800_000_000_000.
const NOW_MS: u64 = 1_700_000_000_000;

/// The token of the vector called `name`.
fn vector(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/tests/fixtures/edge-auth-vectors.json");
    let text = std::fs::read_to_string(path).unwrap();
    let at = text.find(&format!("\"name\": \"{name}\"")).unwrap_or_else(|| panic!("no vector {name}"));
    let rest = &text[at..];
    let start = rest.find("\"token\": \"").expect("a token") + "\"token\": \"".len();
    rest[start..start + rest[start..].find('"').unwrap()].to_owned()
}

async fn start_with(tokens: TokenPolicy) -> Gw<TestBackend> {
    let mut c = config();
    c.max_frame_bytes = 64 * 1024;
    c.gateway.max_message_size = 64 * 1024;
    c.gateway.tokens = tokens;
    c.gateway.wall_clock_start_ms = NOW_MS;
    start(c, Arc::default()).await
}

fn checked() -> TokenPolicy {
    TokenPolicy::Check {
        tokens: StaticTokens::new(["good-static"]),
        edge: EdgeAuth::new([("my-application-id", "my-secret")]).unwrap(),
    }
}

/// Authenticates with `token` (resuming `session`); the status of the answer.
async fn authenticate(raw: &mut Raw<tokio::net::TcpStream>, token: &str, session: Option<&str>) -> String {
    let auth = pcast::Authenticate {
        authentication_token: token.into(),
        session_id: session.map(str::to_owned),
        ..Default::default()
    };
    let answer = raw.call("pcast.Authenticate", auth.encode_to_vec()).await;
    assert_eq!(answer.r#type, "pcast.AuthenticateResponse", "{answer:?}");
    pcast::AuthenticateResponse::decode(answer.payload.as_slice()).unwrap().status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_unauthorized_with_their_reason() {
    clientmq_testkit::deadline::bounded(async {
        let gw = start_with(checked()).await;
        let mut raw = gw.raw().await;
        let cases: [(&str, Option<&str>, &str); 14] = [
            ("", None, "empty"),
            ("not-a-known-token", None, "unknown-token"),
            ("DIGEST:!!! garbage !!!", None, "malformed"),
            ("DIGEST:e30=", None, "malformed"),
            (&format!("DIGEST:{}", "A".repeat(20_000)), None, "too-long"),
            (&vector("unknown-application"), None, "unknown-application"),
            (&vector("tampered-claims"), None, "bad-digest"),
            (&vector("digest-not-base64"), None, "bad-digest"),
            (&vector("stream"), None, "wrong-type"),
            (&vector("negative-expires"), None, "expired"),
            (&vector("claims-without-expires"), None, "bad-claims"),
            // Bound to 10.1.2.3; this client is 127.0.0.1.
            (&vector("remote-address"), None, "remote-address"),
            // Bound to session `session-id`: without it, and with another.
            (&vector("session"), None, "session"),
            (&vector("session"), Some("another"), "session"),
        ];
        for (token, session, reason) in &cases {
            assert_eq!(authenticate(&mut raw, token, *session).await, "unauthorized", "{reason}");
        }
        let mut counts = std::collections::BTreeMap::new();
        for (_, _, reason) in &cases {
            *counts.entry(*reason).or_insert(0.0) += 1.0;
        }
        for (reason, n) in counts {
            let series = format!("clientmq_token_refusals_total{{reason=\"{reason}\"}}");
            gw.expect(&series, n).await;
        }
        let refused = r#"clientmq_requests_total{type="pcast.Authenticate",outcome="refused"}"#;
        gw.expect(refused, cases.len() as f64).await;
        assert!(gw.backend.seen.lock().unwrap().is_empty(), "no refused token reached the backend");
        // The good ones pass, on the same connection.
        assert_eq!(authenticate(&mut raw, "good-static", None).await, "ok");
        assert_eq!(authenticate(&mut raw, &vector("auth-only"), None).await, "ok");
        gw.still_serves(1).await;
        raw.close_politely().await;
        gw.settles(0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_outside_the_tokens_room_is_unauthorized() {
    clientmq_testkit::deadline::bounded(async {
        let gw = start_with(checked()).await;
        let mut raw = gw.raw().await;
        // Limited to room `my-room.123456`.
        assert_eq!(authenticate(&mut raw, &vector("room"), None).await, "ok");
        let join =
            |room: &str| chat::JoinRoom { room_id: Some(room.into()), ..Default::default() }.encode_to_vec();
        let answer = raw.call("chat.JoinRoom", join("another-room")).await;
        assert_eq!(error_reason(&answer).as_deref(), Some("unauthorized"));
        gw.expect(r#"clientmq_token_refusals_total{reason="room"}"#, 1.0).await;
        gw.expect(r#"clientmq_requests_refused_total{reason="unauthorized"}"#, 1.0).await;
        let answer = raw.call("chat.JoinRoom", join("my-room.123456")).await;
        assert_eq!(answer.r#type, "chat.JoinRoomResponse", "its own room goes through");
        gw.still_serves(1).await;
        raw.close_politely().await;
        gw.settles(0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_source_every_token_is_denied() {
    clientmq_testkit::deadline::bounded(async {
        let gw = start_with(TokenPolicy::DenyAll).await;
        let mut raw = gw.raw().await;
        assert_eq!(authenticate(&mut raw, "anything", None).await, "unauthorized");
        assert_eq!(authenticate(&mut raw, &vector("auth-only"), None).await, "unauthorized");
        gw.expect(r#"clientmq_token_refusals_total{reason="denied"}"#, 2.0).await;
        gw.still_serves(1).await;
        raw.close_politely().await;
        gw.settles(0).await;
    })
    .await
}
