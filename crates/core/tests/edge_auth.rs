//! EdgeAuth digest tokens against vectors minted by the real `phenix-edge-auth` package
//! (`interop/edge-auth-vectors.js` writes `fixtures/edge-auth-vectors.json`), and properties.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clientmq_core::edge_auth::{
    Claims, EdgeAuth, MAX_TOKEN_LEN, RequiredTag, SecretTableError, TokenRefusal, TokenType, is_digest_token,
};
use hmac::{Hmac, KeyInit, Mac};
use proptest::prelude::*;
use serde_json::{Value, json};
use sha2::Sha512;

const VECTORS: &str = include_str!("fixtures/edge-auth-vectors.json");

struct Vector {
    name: String,
    secrets: Vec<(String, String)>,
    now_ms: u64,
    token: String,
    expect: Value,
    package_verdict: String,
}

fn vectors() -> Vec<Vector> {
    let fixture: Value = serde_json::from_str(VECTORS).expect("the fixture is JSON");
    assert_eq!(fixture["package"], "phenix-edge-auth@1.2.4");
    fixture["vectors"]
        .as_array()
        .expect("vectors")
        .iter()
        .map(|v| Vector {
            name: v["name"].as_str().expect("name").to_owned(),
            secrets: v["secrets"]
                .as_object()
                .expect("secrets")
                .iter()
                .map(|(id, secret)| (id.clone(), secret.as_str().expect("secret").to_owned()))
                .collect(),
            now_ms: v["now_ms"].as_u64().expect("now_ms"),
            token: v["token"].as_str().expect("token").to_owned(),
            expect: v["expect"].clone(),
            package_verdict: v["package_verdict"].as_str().expect("package_verdict").to_owned(),
        })
        .collect()
}

fn opt(value: &Value) -> Option<String> {
    value.as_str().map(str::to_owned)
}

fn list(value: &Value) -> Vec<String> {
    value.as_array().expect("array").iter().map(|v| v.as_str().expect("string").to_owned()).collect()
}

/// The claims the package decoded, in this crate's terms.
fn expected_claims(expected: &Value) -> Claims {
    let expires = &expected["expires"];
    Claims {
        application_id: opt(&expected["applicationId"]).expect("applicationId"),
        // Whole milliseconds as they are; a fractional value rounded up, saturating.
        expires_ms: expires.as_u64().unwrap_or_else(|| expires.as_f64().expect("number").ceil() as u64),
        token_type: match expected["type"].as_str() {
            None => TokenType::Unrestricted,
            Some("auth") => TokenType::Auth,
            Some(other) => panic!("an accepted token of type {other}"),
        },
        session_id: opt(&expected["sessionId"]),
        remote_address: opt(&expected["remoteAddress"]),
        origin_stream_id: opt(&expected["originStreamId"]),
        required_tag: opt(&expected["requiredTag"]).map(|t| RequiredTag::parse(&t)),
        capabilities: list(&expected["capabilities"]),
        apply_tags: list(&expected["applyTags"]),
        raw: opt(&expected["rawClaims"]).expect("rawClaims"),
    }
}

fn check_vector(v: &Vector, auth: &EdgeAuth) {
    let result = auth.verify(&v.token, v.now_ms);
    match (&result, v.expect.get("ok"), v.expect.get("refusal")) {
        (Ok(claims), Some(expected), None) => {
            assert_eq!(claims, &expected_claims(expected), "{}", v.name);
            assert_eq!(v.package_verdict, "verified", "{}: accepted what the package refuses", v.name);
        }
        (Err(refusal), None, Some(label)) => {
            assert_eq!(refusal.label(), label.as_str().expect("label"), "{}: {refusal}", v.name);
            let message = refusal.to_string();
            if let Some(encoded) = v.token.strip_prefix("DIGEST:").filter(|e| e.len() >= 4) {
                assert!(!message.contains(encoded), "{}: {message}", v.name);
            }
            for (_, secret) in &v.secrets {
                assert!(!message.contains(secret.as_str()), "{}: {message}", v.name);
            }
        }
        _ => panic!("{}: got {result:?}, expected {}", v.name, v.expect),
    }
    // Stricter than the package, never laxer: what it refuses is refused.
    if v.package_verdict != "verified" {
        assert!(result.is_err(), "{}: the package says {}", v.name, v.package_verdict);
    }
}

#[test]
fn vectors_minted_by_the_package() {
    let vectors = vectors();
    assert!(vectors.len() >= 30, "{} vectors", vectors.len());
    for v in &vectors {
        let auth = EdgeAuth::new(v.secrets.iter().map(|(id, s)| (id, s))).expect(&v.name);
        check_vector(v, &auth);
        // The same table, read from a secrets file.
        let file: String = v.secrets.iter().map(|(id, s)| format!("# {}\n{id} {s}\n\n", v.name)).collect();
        check_vector(v, &EdgeAuth::parse(&file).expect(&v.name));
    }
}

#[test]
fn the_vectors_cover_every_case() {
    let vectors = vectors();
    let outcome = |name: &str| {
        let v = vectors.iter().find(|v| v.name == name).unwrap_or_else(|| panic!("no vector {name}"));
        v.expect.get("refusal").and_then(Value::as_str).unwrap_or("ok").to_owned()
    };
    for (name, expected) in [
        ("auth-only", "ok"),
        ("unrestricted", "ok"),
        ("remote-address", "ok"),
        ("session", "ok"),
        ("room", "ok"),
        ("room-alias", "ok"),
        ("channel", "ok"),
        ("channel-alias", "ok"),
        ("capabilities-and-apply-tags", "ok"),
        ("expired", "expired"),
        ("expires-now", "expired"),
        ("tampered-claims", "bad-digest"),
        ("tampered-digest", "bad-digest"),
        ("wrong-secret", "bad-digest"),
        ("unknown-application", "unknown-application"),
        ("stream", "wrong-type"),
        ("publish", "wrong-type"),
        ("claims-with-application-id", "bad-claims"),
        ("bad-token", "malformed"),
        ("static-token", "not-digest"),
    ] {
        assert_eq!(outcome(name), expected, "{name}");
    }
    let labels: std::collections::BTreeSet<_> =
        vectors.iter().filter_map(|v| v.expect.get("refusal").and_then(Value::as_str)).collect();
    for label in TokenRefusal::LABELS {
        assert!(label == "too-long" || labels.contains(label), "no vector refused as {label}");
    }
}

#[test]
fn claims_of_a_token_bound_to_everything() {
    let v = vectors().into_iter().find(|v| v.name == "everything").expect("vector");
    let auth = EdgeAuth::new(v.secrets.iter().map(|(id, s)| (id, s))).expect("table");
    let claims = auth.verify(&v.token, v.now_ms).expect("verifies");
    assert_eq!(claims.application_id, "my-application-id");
    assert_eq!(claims.expires_ms, 1_800_000_000_000);
    assert_eq!(claims.token_type, TokenType::Auth);
    assert_eq!(claims.session_id.as_deref(), Some("session-id"));
    assert_eq!(claims.remote_address.as_deref(), Some("10.1.2.3"));
    assert_eq!(claims.origin_stream_id.as_deref(), Some("origin"));
    assert_eq!(claims.required_tag, Some(RequiredTag::RoomAlias("my-room".into())));
    assert_eq!(claims.capabilities, ["multi-bitrate"]);
    assert_eq!(claims.apply_tags, ["customer1"]);
    let raw: Value = serde_json::from_str(&claims.raw).expect("raw claims are JSON");
    assert_eq!(raw["sessionId"], "session-id");
    // One millisecond before expiry it verifies; at expiry it is refused.
    assert!(auth.verify(&v.token, claims.expires_ms - 1).is_ok());
    assert_eq!(
        auth.verify(&v.token, claims.expires_ms),
        Err(TokenRefusal::Expired { expires_ms: claims.expires_ms, now_ms: claims.expires_ms })
    );
}

#[test]
fn is_digest_token_is_the_prefix() {
    assert!(is_digest_token("DIGEST:"));
    assert!(is_digest_token("DIGEST:anything"));
    assert!(!is_digest_token(""));
    assert!(!is_digest_token("digest:x"));
    assert!(!is_digest_token(" DIGEST:x"));
    assert!(!is_digest_token("interop-token"));
}

#[test]
fn over_long_tokens_are_not_decoded() {
    let auth = EdgeAuth::new([("app", "secret")]).expect("table");
    let token = format!("DIGEST:{}", "A".repeat(MAX_TOKEN_LEN));
    assert_eq!(auth.verify(&token, 0), Err(TokenRefusal::TooLong { len: token.len(), max: MAX_TOKEN_LEN }));
    assert_eq!(auth.verify(&token, 0).unwrap_err().label(), "too-long");
    // The bound is inclusive: a token of exactly the limit is read (and refused for what it is).
    let at_limit = &token[..MAX_TOKEN_LEN];
    assert_eq!(auth.verify(at_limit, 0).unwrap_err().label(), "malformed");
}

#[test]
fn labels_are_distinct_and_listed() {
    let refusals = [
        TokenRefusal::NotDigest,
        TokenRefusal::TooLong { len: 1, max: 0 },
        TokenRefusal::Malformed { part: "json" },
        TokenRefusal::UnknownApplication,
        TokenRefusal::BadDigest,
        TokenRefusal::BadClaims { claim: "expires" },
        TokenRefusal::WrongType { token_type: TokenType::Stream },
        TokenRefusal::Expired { expires_ms: 1, now_ms: 2 },
    ];
    let labels: Vec<_> = refusals.iter().map(TokenRefusal::label).collect();
    assert_eq!(labels, TokenRefusal::LABELS);
    assert_eq!(
        TokenRefusal::WrongType { token_type: TokenType::Publish }.to_string(),
        "digest token of type `publish` does not allow authentication"
    );
}

#[test]
fn secrets_file() {
    let text =
        "\u{feff}# applications\n\napp-1 s3cret-one\r\n   # indented comment\n\tapp-2\t s3cret#two  \n";
    let auth = EdgeAuth::parse(text).expect("parses");
    assert_eq!(auth.application_ids().collect::<Vec<_>>(), ["app-1", "app-2"]);
    assert_eq!(auth.len(), 2);
    let debug = format!("{auth:?}");
    assert_eq!(debug, r#"EdgeAuth { applications: ["app-1", "app-2"] }"#);
    assert!(!auth.is_empty());
    assert!(EdgeAuth::parse("").expect("empty").is_empty());
    assert!(EdgeAuth::parse("# only\n\n").expect("comments").is_empty());
}

#[test]
fn secrets_file_errors_name_the_line_and_never_the_secret() {
    let cases = [
        ("app-1 s3cret\napp-2\n", SecretTableError::Malformed { line: 2, fields: 1 }),
        ("\n\napp-1 s3cret extra\n", SecretTableError::Malformed { line: 3, fields: 3 }),
        (
            "app-1 s3cret\n# x\napp-1 s3cret-again\n",
            SecretTableError::Duplicate { line: 3, first_line: 1, application_id: "app-1".into() },
        ),
    ];
    for (text, expected) in cases {
        let error = EdgeAuth::parse(text).unwrap_err();
        assert_eq!(error, expected, "{text:?}");
        let message = error.to_string();
        assert!(message.starts_with(&format!("line {}:", expected_line(&expected))), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
    }
    assert_eq!(EdgeAuth::new([("app", "")]).unwrap_err(), SecretTableError::Empty { line: 1 });
    assert_eq!(EdgeAuth::new([("a", "x"), ("", "s")]).unwrap_err(), SecretTableError::Empty { line: 2 });
    assert_eq!(
        EdgeAuth::new([("a", "x"), ("b", "y"), ("a", "z")]).unwrap_err(),
        SecretTableError::Duplicate { line: 3, first_line: 1, application_id: "a".into() }
    );
}

fn expected_line(error: &SecretTableError) -> usize {
    match error {
        SecretTableError::Malformed { line, .. }
        | SecretTableError::Empty { line }
        | SecretTableError::Duplicate { line, .. }
        | SecretTableError::Key { line } => *line,
    }
}

/// Mints a token the way the package does, for claims the package's builder could not write.
fn mint(application_id: &str, secret: &str, claims: &str) -> String {
    let mut mac =
        Hmac::<Sha512>::new_from_slice(format!("{application_id}{secret}").as_bytes()).expect("key");
    mac.update(claims.as_bytes());
    let digest = STANDARD.encode(mac.finalize().into_bytes());
    let envelope = json!({"applicationId": application_id, "digest": digest, "token": claims});
    format!("DIGEST:{}", STANDARD.encode(envelope.to_string()))
}

#[test]
fn mint_agrees_with_the_package() {
    let v = vectors().into_iter().find(|v| v.name == "auth-only").expect("vector");
    assert_eq!(mint("my-application-id", "my-secret", r#"{"expires":1800000000000,"type":"auth"}"#), v.token);
}

/// Text that is often JSON-like: braces, quotes, claim names and numbers.
fn jsonish() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just(",".to_owned()),
        Just(":".to_owned()),
        Just("null".to_owned()),
        Just("\"expires\"".to_owned()),
        Just("\"type\"".to_owned()),
        Just("\"auth\"".to_owned()),
        Just("\"applicationId\"".to_owned()),
        Just("\"digest\"".to_owned()),
        Just("\"token\"".to_owned()),
        Just("\"capabilities\"".to_owned()),
        Just("\"requiredTag\"".to_owned()),
        Just("\"\\ud800\"".to_owned()),
        any::<f64>().prop_map(|f| f.to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        "\"[a-zA-Z0-9:=#. -]{0,12}\"",
        "[ -~]{0,4}",
    ];
    prop::collection::vec(atom, 0..40).prop_map(|atoms| atoms.concat())
}

fn table() -> EdgeAuth {
    EdgeAuth::new([("app", "secret"), ("my-application-id", "my-secret")]).expect("table")
}

proptest! {
    #[test]
    fn verify_never_panics_on_any_string(token in any::<String>(), now in any::<u64>()) {
        let _ = table().verify(&token, now);
        let _ = table().verify(&format!("DIGEST:{token}"), now);
    }

    #[test]
    fn verify_never_panics_on_base64_of_jsonish_bytes(
        text in jsonish(),
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        now in any::<u64>(),
    ) {
        let auth = table();
        for payload in [text.as_bytes(), bytes.as_slice()] {
            let result = auth.verify(&format!("DIGEST:{}", STANDARD.encode(payload)), now);
            prop_assert!(result.is_err(), "unsigned input verified: {result:?}");
        }
    }

    #[test]
    fn verify_never_panics_on_envelopes_of_jsonish_fields(
        application_id in prop_oneof![Just("app".to_owned()), jsonish()],
        digest in jsonish(),
        claims in jsonish(),
        now in any::<u64>(),
    ) {
        let envelope = json!({"applicationId": application_id, "digest": digest, "token": claims});
        let result = table().verify(&format!("DIGEST:{}", STANDARD.encode(envelope.to_string())), now);
        prop_assert!(result.is_err(), "unsigned input verified: {result:?}");
    }

    /// Past the digest: whatever JSON-ish claims the secret's holder signs, no panic, and an
    /// accepted token forwards its claims byte for byte.
    #[test]
    fn signed_jsonish_claims_never_panic(claims in jsonish(), now in any::<u64>()) {
        let token = mint("app", "secret", &claims);
        match table().verify(&token, now) {
            Ok(verified) => {
                prop_assert_eq!(verified.raw, claims);
                prop_assert!(verified.token_type.allows_authentication());
                prop_assert!(verified.expires_ms > now);
            }
            Err(refusal) => prop_assert!(
                ["malformed", "bad-claims", "wrong-type", "expired", "too-long"].contains(&refusal.label()),
                "{}", refusal
            ),
        }
    }

    #[test]
    fn signed_claims_of_any_values_verify_until_they_expire(
        expires in 1u64..=(1 << 53),
        now in any::<u64>(),
        session in any::<String>(),
        tag in any::<String>(),
        capabilities in prop::collection::vec(any::<String>(), 0..4),
    ) {
        let claims = json!({
            "expires": expires, "type": "auth", "sessionId": session, "requiredTag": tag,
            "capabilities": capabilities,
        })
        .to_string();
        let result = table().verify(&mint("app", "secret", &claims), now);
        if now < expires {
            let verified = result.expect("verifies");
            prop_assert_eq!(verified.session_id, Some(session));
            prop_assert_eq!(verified.required_tag.map(|t| t.to_tag()), Some(tag));
            prop_assert_eq!(verified.capabilities, capabilities);
        } else {
            prop_assert_eq!(result, Err(TokenRefusal::Expired { expires_ms: expires, now_ms: now }));
        }
    }
}

#[test]
fn required_tags_are_read_by_kind_and_written_back_whole() {
    let cases = [
        ("roomId:r1", RequiredTag::RoomId("r1".into())),
        ("roomAlias:lobby", RequiredTag::RoomAlias("lobby".into())),
        ("channelId:c1", RequiredTag::ChannelId("c1".into())),
        ("channelAlias:news", RequiredTag::ChannelAlias("news".into())),
        ("roomId:a:b", RequiredTag::RoomId("a:b".into())),
        ("other:x", RequiredTag::Tag("other:x".into())),
        ("plain", RequiredTag::Tag("plain".into())),
    ];
    for (tag, parsed) in cases {
        assert_eq!(RequiredTag::parse(tag), parsed, "{tag}");
        assert_eq!(parsed.to_tag(), tag);
    }
}
