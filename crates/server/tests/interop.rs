//! The real client: runs `interop/harness.js`, which drives the unmodified Phenix web SDK
//! (`phenix-web-sdk` 2022.0.2, Node build) against the server binary, and restarts the binary on
//! the same port when the harness asks for the drain step.
//!
//! Needs Node.js and npm (`npm ci --ignore-scripts` runs once if `interop/node_modules` is
//! missing). `CLIENTMQ_SKIP_INTEROP=1` skips it explicitly; CI never sets it.

use std::sync::Arc;
use std::time::Duration;

use clientmq_testkit::node::{Asking, interop_dir, judged, npm_ci};
use clientmq_testkit::procs::{Log, Proc, free_port, http_get};
use tokio::process::Command;

const TOKEN: &str = "interop-token";
const HARNESS_TIMEOUT: Duration = Duration::from_secs(60);

const INSTALL_HELP: &str = "\
The interop test drives the Phenix web SDK with Node.js, and Node.js (>= 16.14) with npm is needed.
Install it, then run the tests again:
  Debian/Ubuntu: sudo apt-get install nodejs npm
  macOS:         brew install node
  any system:    https://nodejs.org/en/download (or nvm: https://github.com/nvm-sh/nvm)
To skip this test explicitly (never in CI), set CLIENTMQ_SKIP_INTEROP=1.";

async fn tool_version(tool: &str) -> Option<String> {
    let out = Command::new(tool).arg("--version").output().await.ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Starts the server binary on `port` with a known token, its settings all from flags, and waits
/// until it answers; retries while the port is still being released.
async fn start_healthy_server(port: u16, log: &Log) -> Proc {
    let args = ["--listen", &format!("127.0.0.1:{port}"), "--tokens", TOKEN, "--shards", "2"]
        .into_iter()
        .chain(["--drain-window-secs", "0.2", "--close-timeout-secs", "2", "--drain-deadline-secs", "10"])
        .map(str::to_owned)
        .collect::<Vec<_>>();
    for _ in 0..20 {
        let mut server = Proc::spawn(env!("CARGO_BIN_EXE_clientmq-server"), &args, "server", log);
        for _ in 0..100 {
            if http_get(port, "/healthz").await.0 == 200 {
                return server;
            }
            if server.child.try_wait().unwrap().is_some() {
                break; // e.g. the port was not free yet
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.kill().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the server did not come up on port {port}:\n{}", log.lock().unwrap().join("\n"));
}

/// SIGTERM, which drains the server; it must exit 0.
async fn drain(server: Proc) {
    server.terminate(Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phenix_web_sdk_works_against_the_server() {
    clientmq_testkit::deadline::bounded(async {
        if std::env::var("CLIENTMQ_SKIP_INTEROP").is_ok_and(|v| v == "1") {
            // Straight to stderr: libtest captures eprintln!, and this must not go unnoticed.
            let bar = "!".repeat(72);
            let banner = format!(
                "\n{bar}\n!!! CLIENTMQ_SKIP_INTEROP=1: the Phenix web SDK interop test was SKIPPED !!!\n{bar}\n"
            );
            let _ = std::io::Write::write_all(&mut std::io::stderr(), banner.as_bytes());
            return;
        }
        let Some(node) = tool_version("node").await else {
            panic!("Node.js was not found on PATH.\n{INSTALL_HELP}");
        };
        let dir = interop_dir();
        npm_ci(&dir, "phenix-web-sdk/dist/phenix-node-sdk.js").await;

        let log: Log = Arc::default();
        log.lock().unwrap().push(format!("[test] node {node}"));
        let port = free_port();
        let mut server = Some(start_healthy_server(port, &log).await);
        let env = [("CLIENTMQ_PORT", port.to_string()), ("CLIENTMQ_TOKEN", TOKEN.to_owned())];
        let mut harness = Asking::spawn("harness.js", &dir, &env, &log);
        let run = async {
            while let Some(what) = harness.next_ask().await {
                if what == "drain" {
                    drain(server.take().expect("one drain")).await;
                    log.lock().unwrap().push("[test] drained; starting again on the same port".into());
                    server = Some(start_healthy_server(port, &log).await);
                    harness.answer("restarted").await;
                }
            }
            harness.exit().await
        };
        let outcome = tokio::time::timeout(HARNESS_TIMEOUT, run).await;
        judged(outcome, HARNESS_TIMEOUT, "ok - interop harness passed", &log);
        drain(server.take().expect("restarted")).await;
    })
    .await
}
