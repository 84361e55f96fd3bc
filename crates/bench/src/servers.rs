//! The servers under test, as child processes on free loopback ports, killed when dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

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
    pub logs: PathBuf,
}

impl Binaries {
    /// clientmq-server with the embedded backend (dev tokens: the load never authenticates, but
    /// the binary wants a token policy), seeded, logging warnings only, plus `extra` flags.
    pub async fn clientmq(&self, log: &str, extra: &[&str]) -> Result<ServerProc, String> {
        let port = free_port()?;
        let mut args = vec!["--dev-accept-any-token".to_owned(), "--seed".into(), "1".into()];
        args.extend(["--listen".to_owned(), format!("127.0.0.1:{port}")]);
        args.extend(extra.iter().map(|s| s.to_string()));
        spawn(&self.server, &args, &self.logs.join(format!("{log}.log")), port).await
    }

    /// The echo baseline, plus `extra` flags.
    pub async fn baseline(&self, log: &str, extra: &[&str]) -> Result<ServerProc, String> {
        let port = free_port()?;
        let mut args = vec!["--listen".to_owned(), format!("127.0.0.1:{port}")];
        args.extend(extra.iter().map(|s| s.to_string()));
        spawn(&self.baseline, &args, &self.logs.join(format!("{log}.log")), port).await
    }
}

fn free_port() -> Result<u16, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port());
    port.map_err(|e| format!("no free loopback port: {e}"))
}

async fn spawn(bin: &Path, args: &[String], log: &Path, port: u16) -> Result<ServerProc, String> {
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
    let pid = child.id().ok_or("server exited at once")?;
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
