//! The Node.js side of the tests: the unmodified SDK's harnesses and the worker written from
//! docs/nats.md (`interop/`), their npm packages installed on first use.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::nats::Nats;
use crate::procs::{Log, Proc, collect, wait_for, workspace_dir};

/// The Node.js side of the tests: the SDK harnesses, the worker written from docs/nats.md, and
/// their npm packages.
pub fn interop_dir() -> std::path::PathBuf {
    workspace_dir().join("interop")
}

/// `node interop/worker.js` (the worker written from docs/nats.md) on `nats` under `prefix`,
/// once it says it is ready.
pub async fn node_worker(nats: &Nats, prefix: &str, log: &Log) -> Proc {
    npm_ci(&interop_dir(), "nats").await;
    let worker_js = interop_dir().join("worker.js").display().to_string();
    let worker = Proc::spawn("node", &[worker_js, nats.url(), prefix.to_owned()], "worker", log);
    wait_for(Duration::from_secs(20), "@@worker ready", log, || {
        let ready = log.lock().unwrap().iter().any(|l| l == "[worker] @@worker ready");
        async move { ready }
    })
    .await;
    worker
}

/// `npm ci --ignore-scripts` in `dir` from its lock file, unless `marker` is already installed.
pub async fn npm_ci(dir: &Path, marker: &str) {
    if dir.join("node_modules").join(marker).exists() {
        return;
    }
    let install = Command::new("npm")
        .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), install)
        .await
        .unwrap_or_else(|_| panic!("`npm ci` in {} did not finish within 3 minutes", dir.display()))
        .expect("npm runs (Node.js with npm is needed for this test)");
    assert!(
        out.status.success(),
        "`npm ci --ignore-scripts` in {} failed:\n{}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `node SCRIPT` in `dir` with `env` until it exits 0, within `within`; its output goes to
/// `log` tagged `harness`. Panics with the transcript otherwise; returns the transcript.
pub async fn node_harness(
    script: &str,
    dir: &Path,
    env: &[(&str, &str)],
    within: Duration,
    log: &Log,
) -> String {
    let mut harness = Command::new("node")
        .arg(script)
        .current_dir(dir)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts (Node.js is needed for this test)");
    collect(harness.stdout.take().unwrap(), "harness".into(), log.clone());
    collect(harness.stderr.take().unwrap(), "harness".into(), log.clone());
    let status = tokio::time::timeout(within, harness.wait()).await;
    // Let the collectors take the last lines.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let transcript = log.lock().unwrap().join("\n");
    match status {
        Ok(Ok(s)) => assert!(s.success(), "{script} failed ({s}):\n{transcript}"),
        Ok(Err(e)) => panic!("waiting for {script}: {e}"),
        Err(_) => panic!("{script} did not finish within {within:?}:\n{transcript}"),
    }
    transcript
}
