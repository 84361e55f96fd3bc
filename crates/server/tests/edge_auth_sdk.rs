//! EdgeAuth digest tokens end to end: `interop/edge-auth.js` drives the unmodified Phenix web SDK
//! against the server binary (embedded backend) started with `--edge-auth-file` (a secrets file
//! written here) and a static `--tokens` token. Every token is minted while the test runs by the
//! real `phenix-edge-auth` package, with expiries relative to now. The harness checks each case
//! from the SDK's side and from `/metrics`; this test checks its transcript, the refusal counters
//! the server ends with, and that the server logged no secret and no token.
//!
//! Needs Node.js and npm (`npm ci --ignore-scripts` runs once in interop/ when the packages are
//! missing).

mod common;

use std::time::Duration;

use clientmq_testkit::node::{interop_dir, node_harness, npm_ci};
use clientmq_testkit::procs::{Log, Proc, free_port, http_get, scrape, wait_for};

const APP: &str = "clientmq-edge-app";
const SECRET: &str = "edge-s3cret-for-the-sdk-test";
const STATIC_TOKEN: &str = "edge-static-token";
/// The harness has a watchdog of 60 s; this is the test's own.
const HARNESS_DEADLINE: Duration = Duration::from_secs(90);

/// What the harness must have printed, in this order.
const STEPS: [&str; 14] = [
    "ok - a static --tokens token authenticates alongside --edge-auth-file",
    "ok - digest tokens minted now (auth-only and unrestricted) authenticate",
    "ok - with digest tokens the SDK creates a room, both enter it and chat both ways",
    "ok - a token valid for 2 s authenticates at once and is refused (expired)",
    "ok - a token minted already expired is refused (expired)",
    "ok - claims edited after signing (a day longer), digest kept: refused (bad-digest)",
    "ok - a token of an application the server has no secret for is refused (unknown-application)",
    "ok - a token signed with another secret than the file's is refused (bad-digest)",
    "ok - a streaming-only token is refused (wrong-type)",
    "ok - a token bound to 10.9.9.9 is refused (remote-address); one bound to 127.0.0.1 authenticates",
    "ok - after a dropped transport the SDK resumes its session with a token minted forSession(its id)",
    "ok - a resume with a token minted for another session (bob's) is refused (session)",
    "ok - a token minted forRoom(id) enters that room and chats; another room, and its own room by alias, get mq.Error{unauthorized} (room)",
    "ok - every client stops cleanly; the server holds no connection",
];

/// `clientmq_token_refusals_total{reason}` at the end: one per refused case above.
const REFUSALS: [(&str, f64); 9] = [
    ("unknown-token", 1.0),
    ("expired", 2.0),
    ("bad-digest", 2.0),
    ("unknown-application", 1.0),
    ("wrong-type", 1.0),
    ("remote-address", 1.0),
    ("session", 1.0),
    ("room", 2.0),
    ("malformed", 0.0),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_authenticates_with_edge_auth_tokens_and_the_server_enforces_their_claims() {
    clientmq_testkit::deadline::bounded(async {
        let dir = std::env::temp_dir().join(format!("clientmq-edge-auth-sdk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secrets = dir.join("edge-auth");
        // Two applications: the harness's, and one it never uses.
        std::fs::write(
            &secrets,
            format!("# EdgeAuth applications\n{APP} {SECRET}\nanother-app another-secret\n"),
        )
        .unwrap();

        let log = Log::default();
        let port = free_port();
        let args = [
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--edge-auth-file".into(),
            secrets.display().to_string(),
            "--tokens".into(),
            STATIC_TOKEN.into(),
            "--shards".into(),
            "2".into(),
            "--close-timeout-secs".into(),
            "2".into(),
            "--drain-window-secs".into(),
            "0.2".into(),
        ];
        let server = Proc::spawn(env!("CARGO_BIN_EXE_clientmq-server"), &args, "server", &log);
        wait_for(Duration::from_secs(10), "the server to answer /healthz", &log, || async {
            http_get(port, "/healthz").await.0 == 200
        })
        .await;

        npm_ci(&interop_dir(), "phenix-edge-auth/package.json").await;
        npm_ci(&interop_dir(), "phenix-web-sdk/dist/phenix-node-sdk.js").await;
        let started = tokio::time::Instant::now();
        let port_text = port.to_string();
        let env = [
            ("CLIENTMQ_PORT", port_text.as_str()),
            ("CLIENTMQ_EDGE_APP", APP),
            ("CLIENTMQ_EDGE_SECRET", SECRET),
            ("CLIENTMQ_TOKEN", STATIC_TOKEN),
        ];
        let transcript = node_harness("edge-auth.js", &interop_dir(), &env, HARNESS_DEADLINE, &log).await;
        println!("--- transcript ({:?}) ---\n{transcript}\n--- end ---", started.elapsed());

        // Every step, in order, then the verdict.
        let lines: Vec<&str> = transcript.lines().filter_map(|l| l.strip_prefix("[harness] ")).collect();
        let mut at = 0;
        for step in STEPS {
            match lines[at..].iter().position(|l| l.starts_with(step)) {
                Some(i) => at += i + 1,
                None => panic!("the harness did not print `{step}` (after line {at}):\n{transcript}"),
            }
        }
        assert!(lines[at..].contains(&"ok - edge-auth harness passed"), "{transcript}");

        // The server's own count of each refusal.
        for (reason, expected) in REFUSALS {
            let series = format!("clientmq_token_refusals_total{{reason=\"{reason}\"}}");
            assert_eq!(scrape(port, &series).await, expected, "{series}");
        }
        assert_eq!(scrape(port, "clientmq_connections_open").await, 0.0);

        // Neither the secret nor a token (a digest token starts with DIGEST:) in the server's log.
        let server_log: Vec<&str> = transcript.lines().filter(|l| l.starts_with("[server] ")).collect();
        assert!(!server_log.is_empty(), "the server logs something at info");
        for line in server_log {
            assert!(
                !line.contains(SECRET) && !line.contains("DIGEST:"),
                "a secret or token in the log: {line}"
            );
        }

        server.terminate(Duration::from_secs(15)).await;
        std::fs::remove_dir_all(&dir).unwrap();
    })
    .await
}
