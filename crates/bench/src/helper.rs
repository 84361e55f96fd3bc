//! A helper process: this binary, started in one of its hidden modes, speaking in lines. It says
//! what it has to say on stdout, a line each, starting with a word (`ready ...`, `done ...`);
//! closing its stdin tells it to finish.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

pub struct Helper {
    /// The hidden mode it runs, to name it in errors.
    mode: String,
    child: Child,
    pid: u32,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Helper {
    /// Starts `exe` with `args`, the first of which names the mode.
    pub fn start(exe: &Path, args: &[String]) -> Result<Helper, String> {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let mode = args.first().cloned().unwrap_or_default();
        let pid = child.id().ok_or_else(|| format!("{mode} exited at once"))?;
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        Ok(Helper { mode, child, pid, stdin, lines })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its next line, which must start with `word`.
    pub async fn line(&mut self, word: &str) -> Result<String, String> {
        let mode = &self.mode;
        match self.lines.next_line().await {
            Ok(Some(line)) if line.starts_with(word) => Ok(line),
            Ok(Some(other)) => Err(format!("{mode} said {other:?}, not `{word}`")),
            Ok(None) => Err(format!("{mode} ended before `{word}`")),
            Err(e) => Err(format!("{mode} output: {e}")),
        }
    }

    /// Writes `line` to its stdin.
    pub async fn say(&mut self, line: &str) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or_else(|| format!("{} told to finish already", self.mode))?;
        stdin.write_all(format!("{line}\n").as_bytes()).await.map_err(|e| format!("{}: {e}", self.mode))
    }

    /// Closes its stdin: the signal to finish.
    pub fn finish(&mut self) {
        self.stdin = None;
    }

    /// Tells it to finish and waits `within` for it to exit, then kills it.
    pub async fn stop(mut self, within: Duration) {
        self.finish();
        if tokio::time::timeout(within, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}
