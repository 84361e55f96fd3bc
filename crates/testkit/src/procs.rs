//! Processes the tests start (the server and worker binaries, Node.js harnesses), each killed
//! when dropped and their output kept for the failure message; loopback ports and HTTP probes.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// Every line the processes of a test printed, tagged by process.
pub type Log = Arc<Mutex<Vec<String>>>;

/// The workspace's root directory.
pub fn workspace_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The workspace's target directory (`CARGO_TARGET_DIR` when the build set one): where tools the
/// tests install for themselves are kept.
pub fn target_dir() -> std::path::PathBuf {
    match option_env!("CARGO_TARGET_DIR") {
        Some(dir) => Path::new(dir).to_owned(),
        None => workspace_dir().join("target"),
    }
}

/// A binary of another package of the workspace, from the profile directory the running test
/// was built into. `cargo test --workspace` builds every package's binaries before it runs any
/// test (each package with a binary has integration tests); a test run on its own needs
/// `cargo build -p PACKAGE` first, which the panic says.
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test>: the binaries sit in target/<profile>.
    let profile_dir = exe.parent().and_then(Path::parent).expect("a profile directory");
    let binary = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is not built: run `cargo build -p {name}` (or the whole `cargo test --workspace`)",
        binary.display()
    );
    binary
}

/// The ports [`free_port`] hands out: below Linux's ephemeral range (32768 and up; Windows' and
/// macOS's start at 49152), so that no outgoing connection takes one as its local port between
/// the pick and the bind of the process it is for. The OS's own pick (port 0) comes from that
/// range, and a test's clients open thousands of connections.
const PORTS: std::ops::Range<u32> = 20_000..32_000;

/// A loopback port nobody listens on now. Ports are handed out in turn from an offset of this
/// process's own (two test binaries at once start apart), each checked free by binding it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = PORTS.end - PORTS.start;
    let offset = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (PORTS.start + (offset + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
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
        Proc::spawn_with_env(program, args, &[], tag, log)
    }

    /// [`Proc::spawn`] with more environment variables.
    pub fn spawn_with_env(
        program: &str,
        args: &[String],
        env: &[(&str, &str)],
        tag: &str,
        log: &Log,
    ) -> Proc {
        let mut cmd = Command::new(program);
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("CLIENTMQ_")) {
            cmd.env_remove(key);
        }
        let mut child = cmd
            .args(args)
            .envs(env.iter().copied())
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

    /// Sends `signal` (`-HUP`, `-TERM`, ...) with kill(1).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let sent = std::process::Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(sent.success(), "kill {signal} {pid}");
    }

    /// SIGKILL, and waits for the process to be gone (at once if it already is).
    pub async fn kill(mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        self.signal("-KILL");
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.expect("killed");
    }

    /// [`wait_listening`] for this process: panics at once if it exits first, with its exit
    /// status and the last lines of `log`.
    pub async fn wait_listening(&mut self, port: u16, log: &Log) {
        let mut exited = None;
        if listening_within(port, || {
            exited = self.child.try_wait().ok().flatten();
            exited.is_some()
        })
        .await
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // its last lines
        let said: Vec<String> = log.lock().unwrap().iter().rev().take(20).rev().cloned().collect();
        panic!("{} did not listen on port {port} ({exited:?}):\n{}", self.tag, said.join("\n"));
    }

    /// SIGTERM; the process must exit 0 within `within`.
    pub async fn terminate(mut self, within: Duration) {
        self.signal("-TERM");
        let status = tokio::time::timeout(within, self.child.wait()).await.expect("exits in time").unwrap();
        assert!(status.success(), "{} exits 0 on SIGTERM: {status:?}", self.tag);
    }
}

/// Waits up to 10 s for something to accept TCP connections on `port`.
pub async fn wait_listening(port: u16, what: &str) {
    if !listening_within(port, || false).await {
        panic!("{what} did not listen on port {port}");
    }
}

/// Polls `port` every 50 ms for up to 10 s, giving up early once `gone`; whether it listens.
async fn listening_within(port: u16, mut gone: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return true;
        }
        if gone() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
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
