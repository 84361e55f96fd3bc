//! The real binary: configured from the environment, drained by SIGTERM, exits 0.

mod common;

use std::process::Stdio;
use std::time::Duration;

use clientmq_testkit::procs::free_port;
use futures_util::StreamExt;
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn sigterm_drains_with_3333_and_exits_zero() {
    clientmq_testkit::deadline::bounded(async {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_clientmq-server"))
            .env("CLIENTMQ_LISTEN", format!("127.0.0.1:{port}"))
            .env("CLIENTMQ_DRAIN_WINDOW_SECS", "0.2")
            .env("CLIENTMQ_SHARDS", "2")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut ws = common::connect_when_up(port).await;
        let pid = child.id().unwrap().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
        assert!(killed.success());
        let code = loop {
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap() {
                Some(Ok(Message::Close(Some(frame)))) => break u16::from(frame.code),
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        };
        assert_eq!(code, 3333);
        // Reading on lets tungstenite answer the close; then the server has nothing left.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(1), ws.next()).await {}
        let status =
            tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("exits").unwrap();
        assert!(status.success(), "{status:?}");
    })
    .await
}

/// Every setting that cannot work is refused before anything starts, with exit code 2 and a
/// message naming its flag and its environment variable.
#[tokio::test]
async fn bad_settings_are_refused_naming_the_flag_and_its_variable() {
    clientmq_testkit::deadline::bounded(async {
        for (flag, value, said) in [
            (
                "--close-timeout-secs",
                "0",
                "--close-timeout-secs (CLIENTMQ_CLOSE_TIMEOUT_SECS) must be a positive",
            ),
            (
                "--max-frame-bytes",
                "0",
                "--max-frame-bytes (CLIENTMQ_MAX_FRAME_BYTES) must be greater than zero",
            ),
            (
                "--max-connections",
                "0",
                "--max-connections (CLIENTMQ_MAX_CONNECTIONS) must be greater than zero",
            ),
            ("--max-pending-requests", "0", "(CLIENTMQ_MAX_PENDING_REQUESTS) must be greater than zero"),
            ("--max-sessions", "0", "--max-sessions (CLIENTMQ_MAX_SESSIONS) must be greater than zero"),
        ] {
            let out = Command::new(env!("CARGO_BIN_EXE_clientmq-server"))
                .args([flag, value])
                .kill_on_drop(true)
                .output()
                .await
                .unwrap();
            assert_eq!(out.status.code(), Some(2), "{flag} {value}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(said), "{flag} {value}: {stderr}");
        }
    })
    .await
}

/// The README's run command, `cargo run --release -p clientmq-server -- ...`, needs cargo to know
/// which of the package's binaries to run.
#[tokio::test]
async fn cargo_run_of_the_package_runs_the_server() {
    clientmq_testkit::deadline::bounded(async {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
        assert!(
            readme.contains("cargo run --release -p clientmq-server -- "),
            "the README's run command changed"
        );
        let out = Command::new(env!("CARGO"))
            .args(["metadata", "--no-deps", "--offline", "--format-version", "1", "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let metadata = String::from_utf8(out.stdout).unwrap();
        assert!(
            metadata.contains(r#""default_run":"clientmq-server""#),
            "no default-run for clientmq-server"
        );
    })
    .await
}

/// Logs written to a pipe (a file, a collector) carry no colour codes.
#[tokio::test]
async fn logs_to_a_pipe_have_no_colour_codes() {
    clientmq_testkit::deadline::bounded(async {
        // The port is taken: the binary logs why it cannot listen, and exits.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = taken.local_addr().unwrap().to_string();
        let out = Command::new(env!("CARGO_BIN_EXE_clientmq-server"))
            .args(["--listen", &listen, "--dev-accept-any-token"])
            .env("CLIENTMQ_LOG", "info")
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        assert!(!out.status.success());
        let logs = String::from_utf8_lossy(&out.stdout);
        assert!(logs.contains("cannot listen"), "{logs}");
        assert!(!logs.contains('\u{1b}'), "escape codes in piped logs: {logs:?}");
    })
    .await
}

/// On a bus the chat settings belong to `clientmq-chat`: a gateway given them says it ignores
/// them, and says nothing when none is given.
#[tokio::test]
async fn chat_settings_given_to_a_gateway_on_a_bus_are_named_as_ignored() {
    use clientmq_testkit::procs::{Log, Proc, wait_for};
    clientmq_testkit::deadline::bounded(async {
        const IGNORED: &str =
            "chat settings (--session-grace-secs, --max-sessions, ...) are ignored with --nats";
        let run = |extra: &[&str]| {
            let log = Log::default();
            let mut args = vec!["--nats", "nats://127.0.0.1:1", "--listen", "127.0.0.1:0"];
            args.extend_from_slice(extra);
            let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
            (Proc::spawn(env!("CARGO_BIN_EXE_clientmq-server"), &args, "gateway", &log), log)
        };
        let (with, log) = run(&["--session-grace-secs", "5"]);
        wait_for(Duration::from_secs(10), "the warning", &log, || {
            let said = log.lock().unwrap().iter().any(|l| l.contains(IGNORED));
            async move { said }
        })
        .await;
        with.kill().await;
        let (without, log) = run(&[]);
        wait_for(Duration::from_secs(10), "the bus line", &log, || {
            let said =
                log.lock().unwrap().iter().any(|l| l.contains("client requests go to workers on the bus"));
            async move { said }
        })
        .await;
        without.kill().await;
        assert!(!log.lock().unwrap().iter().any(|l| l.contains(IGNORED)), "{:?}", log.lock().unwrap());
    })
    .await
}

/// With --admin-listen the operator endpoints move to the admin port: the public port serves
/// WebSockets and 404 for them, the admin port serves them and nothing else.
#[tokio::test]
async fn the_operator_endpoints_move_to_the_admin_port() {
    use clientmq_testkit::client::Client;
    use clientmq_testkit::procs::{Log, Proc, http_get, scrape, wait_listening};
    clientmq_testkit::deadline::bounded(async {
        let (public, admin) = (free_port(), free_port());
        let log = Log::default();
        let args =
            ["--listen", &format!("127.0.0.1:{public}"), "--admin-listen", &format!("127.0.0.1:{admin}")]
                .map(str::to_owned);
        let server = Proc::spawn(env!("CARGO_BIN_EXE_clientmq-server"), &args, "server", &log);
        wait_listening(public, "the public port").await;
        wait_listening(admin, "the admin port").await;
        for path in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(http_get(admin, path).await.0, 200, "{path} on the admin port");
            assert_eq!(http_get(public, path).await.0, 404, "{path} on the public port");
        }
        assert_eq!(http_get(admin, "/ws").await.0, 404, "no WebSocket on the admin port");
        let _client = Client::connect(("127.0.0.1", public)).await;
        let open = "clientmq_connections_open";
        for _ in 0..100 {
            if scrape(admin, open).await == 1.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(scrape(admin, open).await, 1.0, "the admin port counts the public port's connection");
        server.kill().await;
    })
    .await
}
