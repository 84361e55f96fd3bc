//! Processes the bus tests start: nats-server on a free loopback port, the server and worker
//! binaries, each killed when dropped and their output kept for the failure message.
#![allow(dead_code)] // each test binary uses a part

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// Every line the processes of a test printed, tagged by process.
pub type Log = Arc<Mutex<Vec<String>>>;

const NATS_HELP: &str = "\
These tests run a real NATS server, and `nats-server` was not found on PATH.
Install it (Debian/Ubuntu: `apt-get install nats-server`; .ci/run does this), then run the tests again.";

/// The Node.js side of the tests: the SDK harnesses, the worker written from docs/nats.md, and
/// their npm packages.
pub fn interop_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop")
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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Collects a child's output lines into `log`, prefixed with `tag`.
pub fn collect(stream: impl AsyncRead + Unpin + Send + 'static, tag: String, log: Log) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            log.lock().unwrap().push(format!("[{tag}] {line}"));
        }
    });
}

/// A child process whose output goes to the log; killed when dropped.
pub struct Proc {
    pub child: Child,
    pub tag: String,
}

impl Proc {
    pub fn spawn(program: &str, args: &[String], tag: &str, log: &Log) -> Proc {
        let mut cmd = Command::new(program);
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("CLIENTMQ_")) {
            cmd.env_remove(key);
        }
        let mut child = cmd
            .args(args)
            .env("CLIENTMQ_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        collect(child.stdout.take().unwrap(), tag.to_owned(), log.clone());
        collect(child.stderr.take().unwrap(), tag.to_owned(), log.clone());
        Proc { child, tag: tag.to_owned() }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let sent = std::process::Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(sent.success(), "kill {signal} {pid}");
    }

    /// SIGKILL, and waits for the process to be gone.
    pub async fn kill(mut self) {
        self.signal("-KILL");
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.expect("killed");
    }

    /// SIGTERM; the process must exit 0 within `within`.
    pub async fn terminate(mut self, within: Duration) {
        self.signal("-TERM");
        let status = tokio::time::timeout(within, self.child.wait()).await.expect("exits in time").unwrap();
        assert!(status.success(), "{} exits 0 on SIGTERM: {status:?}", self.tag);
    }
}

/// A nats-server on a loopback port of its own.
pub struct Nats {
    pub port: u16,
    proc: Option<Proc>,
    log: Log,
}

impl Nats {
    /// Starts nats-server and waits until it accepts connections.
    pub async fn start(log: &Log) -> Nats {
        let mut nats = Nats { port: free_port(), proc: None, log: log.clone() };
        nats.restart().await;
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server at once (SIGKILL: clients see their connections reset).
    pub async fn stop(&mut self) {
        if let Some(proc) = self.proc.take() {
            proc.kill().await;
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        if std::process::Command::new("nats-server").arg("--version").output().is_err() {
            panic!("{NATS_HELP}");
        }
        let args = ["-a", "127.0.0.1", "-p", &self.port.to_string()].map(str::to_owned);
        self.proc = Some(Proc::spawn("nats-server", &args, "nats", &self.log));
        wait_listening(self.port, "nats-server").await;
    }
}

/// Waits up to 10 s for something to accept TCP connections on `port`.
pub async fn wait_listening(port: u16, what: &str) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not listen on port {port}");
}

/// `GET path` on a loopback port: the status code and the body (0 and empty when nothing answers).
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(("127.0.0.1", port)))
            .await
    else {
        return (0, String::new());
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    if s.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out)).await;
    let status = out.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// A series' value in a running binary's `/metrics`; a series never written reads 0.
pub async fn scrape(port: u16, series: &str) -> f64 {
    let (_, body) = http_get(port, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Polls `check` every 50 ms until it holds; panics with `what` and the log after `within`.
pub async fn wait_for<F, Fut>(within: Duration, what: &str, log: &Log, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}:\n{}", log.lock().unwrap().join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
