//! The servers under test, as child processes on free loopback ports, killed when dropped:
//! clientmq-server, the echo baseline, and the Node gateway of the seed's design
//! (`bench/seed-gateway`, run by `node`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use tokio::process::{Child, Command};

use crate::target::Target;

/// A running server process.
pub struct ServerProc {
    child: Child,
    pub pid: u32,
    pub target: Target,
}

/// What a measurement needs of a server (cheap to clone into a task).
#[derive(Debug, Clone)]
pub struct Handle {
    pub name: &'static str,
    pub pid: u32,
    pub target: Target,
}

impl ServerProc {
    pub fn handle(&self, name: &'static str) -> Handle {
        Handle { name, pid: self.pid, target: self.target.clone() }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Where the server binaries are and where their logs go.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub server: PathBuf,
    pub baseline: PathBuf,
    /// The chat worker for the bus (`clientmq-chat`).
    pub chat: PathBuf,
    /// `nats-server`, for the bus figures.
    pub nats: PathBuf,
    /// The Node.js runtime that runs the seed gateway.
    pub node: PathBuf,
    /// The seed gateway's project directory (`bench/seed-gateway`: `server.js`, its lock file).
    pub seed_gateway: PathBuf,
    pub logs: PathBuf,
}

impl Binaries {
    /// clientmq-server with the embedded backend (dev tokens: the load never authenticates, but
    /// the binary wants a token policy), seeded, logging warnings only, plus `extra` flags. The
    /// abuse limits are off: every load connection comes from loopback, and a closed loop sends
    /// far more than a person's 50 requests a second.
    pub async fn clientmq(&self, log: &str, extra: &[&str]) -> Result<ServerProc, String> {
        let port = free_port()?;
        // Seeded for repeatable runs, each process from its own name: gateways on one bus with
        // one seed would draw the same connection ids.
        let seed = log.bytes().fold(1u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        let mut args = vec!["--dev-accept-any-token".to_owned(), "--seed".into(), seed.to_string()];
        args.extend(["--max-connections-per-address", "0", "--max-requests-per-sec", "0"].map(str::to_owned));
        args.extend(["--listen".to_owned(), format!("127.0.0.1:{port}")]);
        args.extend(extra.iter().map(|s| s.to_string()));
        spawn(&self.server, &args, &self.logs.join(format!("{log}.log")), port).await
    }

    /// nats-server on a free loopback port; its client URL is `nats://` + the target's address.
    pub async fn nats_server(&self, log: &str) -> Result<ServerProc, String> {
        let port = free_port()?;
        let args = ["-a", "127.0.0.1", "-p", &port.to_string()].map(str::to_owned);
        spawn(&self.nats, &args, &self.logs.join(format!("{log}.log")), port).await.map_err(|e| {
            format!("{e} (the bus figures need nats-server: `apt-get install nats-server`, or --nats-bin)")
        })
    }

    /// nats-server with JetStream, keeping its store in `dir`, emptied first: every run starts
    /// from no streams.
    pub async fn nats_server_js(&self, log: &str, dir: &Path) -> Result<ServerProc, String> {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let port = free_port()?;
        let args = ["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd", &dir.display().to_string()]
            .map(str::to_owned);
        spawn(&self.nats, &args, &self.logs.join(format!("{log}.log")), port).await.map_err(|e| {
            format!("{e} (the store figures need nats-server 2.9 or later: `apt-get install nats-server`, or --nats-bin)")
        })
    }

    /// nats-server with its monitoring endpoint (`/varz`) on a second port: (server, monitor).
    pub async fn nats_server_monitored(&self, log: &str) -> Result<(ServerProc, Target), String> {
        let (port, monitor) = (free_port()?, free_port()?);
        let args =
            ["-a", "127.0.0.1", "-p", &port.to_string(), "-m", &monitor.to_string()].map(str::to_owned);
        let server =
            spawn(&self.nats, &args, &self.logs.join(format!("{log}.log")), port).await.map_err(|e| {
                format!(
                    "{e} (the bus figures need nats-server: `apt-get install nats-server`, or --nats-bin)"
                )
            })?;
        Ok((server, Target::parse(&format!("ws://127.0.0.1:{monitor}/"))?))
    }

    /// The chat worker on the bus at `nats_url`, plus `extra` flags.
    pub fn chat_worker_with(&self, log: &str, nats_url: &str, extra: &[&str]) -> Result<Worker, String> {
        self.chat_worker_seeded(log, nats_url, 1, extra)
    }

    /// The same with its own `seed`: workers sharing a store with one seed would draw the same
    /// session and room ids.
    pub fn chat_worker_seeded(
        &self,
        log: &str,
        nats_url: &str,
        seed: u64,
        extra: &[&str],
    ) -> Result<Worker, String> {
        let mut args = ["--nats", nats_url, "--seed", &seed.to_string()].map(str::to_owned).to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        let (child, pid) = start(&self.chat, &args, &self.logs.join(format!("{log}.log")))?;
        Ok(Worker { child, pid })
    }

    /// The echo baseline, plus `extra` flags.
    pub async fn baseline(&self, log: &str, extra: &[&str]) -> Result<ServerProc, String> {
        let port = free_port()?;
        let mut args = vec!["--listen".to_owned(), format!("127.0.0.1:{port}")];
        args.extend(extra.iter().map(|s| s.to_string()));
        spawn(&self.baseline, &args, &self.logs.join(format!("{log}.log")), port).await
    }

    /// The Node gateway of the seed's design, plus `extra` flags (it takes clientmq-server's
    /// `--max-connections` and `--heartbeat-secs`). Its npm packages are installed first if needed.
    pub async fn node_seed(&self, log: &str, extra: &[&str]) -> Result<ServerProc, String> {
        self.install_seed_gateway().await?;
        let port = free_port()?;
        let script = self.seed_gateway.join("server.js").display().to_string();
        let mut args = vec![script, "--listen".to_owned(), format!("127.0.0.1:{port}")];
        args.extend(extra.iter().map(|s| s.to_string()));
        spawn(&self.node, &args, &self.logs.join(format!("{log}.log")), port).await
    }

    /// `node --version`, or why Node.js cannot be run.
    pub async fn node_version(&self) -> Result<String, String> {
        let out = Command::new(&self.node).arg("--version").output().await.map_err(|e| {
            format!(
                "cannot run `{}` ({e}): the Node seed peer needs Node.js 20 or later on PATH (or --node-bin)",
                self.node.display()
            )
        })?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Runs `npm ci --ignore-scripts` in the seed gateway's project unless its packages are
    /// already installed from the current lock file. `--ignore-scripts`: nothing there needs an
    /// install script, and scripts may fetch from outside the npm registry.
    async fn install_seed_gateway(&self) -> Result<(), String> {
        self.node_version().await?;
        let dir = &self.seed_gateway;
        if !dir.join("package-lock.json").is_file() {
            return Err(format!("{}: no package-lock.json (is --seed-gateway right?)", dir.display()));
        }
        if !needs_install(dir) {
            return Ok(());
        }
        let out = Command::new("npm")
            .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("cannot run `npm` ({e}): the Node seed peer needs npm on PATH"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = err.lines().collect();
            let tail = lines[lines.len().saturating_sub(10)..].join("\n");
            return Err(format!("`npm ci --ignore-scripts` failed in {}:\n{tail}", dir.display()));
        }
        Ok(())
    }
}

/// Whether `dir`'s packages must be (re)installed: npm writes `node_modules/.package-lock.json`
/// on every install, so it is missing, or older than `package-lock.json`, when the lock file
/// changed since (or nothing was ever installed).
pub fn needs_install(dir: &Path) -> bool {
    let modified = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let lock = modified(dir.join("package-lock.json")).unwrap_or(SystemTime::UNIX_EPOCH);
    modified(dir.join("node_modules").join(".package-lock.json")).is_none_or(|installed| installed < lock)
}

pub(crate) fn free_port() -> Result<u16, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port());
    port.map_err(|e| format!("no free loopback port: {e}"))
}

/// A process that listens on no port of its own (a bus worker); killed when dropped.
pub struct Worker {
    #[allow(dead_code)] // held to be killed on drop
    child: Child,
    pub pid: u32,
}

fn start(bin: &Path, args: &[String], log: &Path) -> Result<(Child, u32), String> {
    let file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = file.try_clone().map_err(|e| e.to_string())?;
    let child = Command::new(bin)
        .args(args)
        .env("CLIENTMQ_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let pid = child.id().ok_or_else(|| format!("{} exited at once", bin.display()))?;
    Ok((child, pid))
}

async fn spawn(bin: &Path, args: &[String], log: &Path, port: u16) -> Result<ServerProc, String> {
    let (child, pid) = start(bin, args, log)?;
    let target = Target::parse(&format!("ws://127.0.0.1:{port}/ws"))?;
    let server = ServerProc { child, pid, target };
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(server.target.addr()).await.is_ok() {
            // Let it finish starting (shards, backend) before the first reading of its memory.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Ok(server);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(format!("{} did not start listening; see {}", bin.display(), log.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_are_installed_when_missing_or_older_than_the_lock_file() {
        let dir = std::env::temp_dir().join(format!("clientmq-bench-npm-{}", std::process::id()));
        let modules = dir.join("node_modules");
        std::fs::create_dir_all(&modules).unwrap();
        let lock = dir.join("package-lock.json");
        let installed = modules.join(".package-lock.json");
        let set_mtime = |p: &Path, secs: u64| {
            let f = std::fs::File::options().write(true).create(true).truncate(false).open(p).unwrap();
            f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)).unwrap();
        };
        set_mtime(&lock, 1_000);
        assert!(needs_install(&dir), "nothing installed");
        set_mtime(&installed, 2_000);
        assert!(!needs_install(&dir), "installed after the lock file was written");
        set_mtime(&lock, 3_000);
        assert!(needs_install(&dir), "the lock file changed since");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
