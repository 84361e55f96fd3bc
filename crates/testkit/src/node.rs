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

/// A Node.js harness that asks the test to act: it prints `@@clientmq <what>` lines (and its
/// progress), and reads the test's answer on its stdin. Its output goes to `log`, tagged
/// `harness`.
pub struct Asking {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    log: Log,
}

impl Asking {
    /// Runs `node SCRIPT` in `dir` with `env`.
    pub fn spawn(script: &str, dir: &Path, env: &[(&str, String)], log: &Log) -> Asking {
        use tokio::io::AsyncBufReadExt;
        let mut child = Command::new("node")
            .arg(script)
            .current_dir(dir)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node starts (Node.js is needed for this test)");
        let stdin = child.stdin.take().expect("piped");
        let lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
        collect(child.stderr.take().expect("piped"), "harness".into(), log.clone());
        Asking { child, stdin, lines, log: log.clone() }
    }

    /// What the harness asks next (the `<what>` of its next `@@clientmq <what>` line), `None` once
    /// its output ends.
    pub async fn next_ask(&mut self) -> Option<String> {
        while let Some(line) = self.lines.next_line().await.expect("the harness's output") {
            self.log.lock().unwrap().push(format!("[harness] {line}"));
            if let Some(what) = line.trim().strip_prefix("@@clientmq ") {
                return Some(what.to_owned());
            }
        }
        None
    }

    /// Answers the harness's last ask. A harness that exited meanwhile (it failed) is judged by
    /// its exit and its transcript, not by this write.
    pub async fn answer(&mut self, text: &str) {
        use tokio::io::AsyncWriteExt;
        if let Err(e) = self.stdin.write_all(format!("{text}\n").as_bytes()).await {
            self.log.lock().unwrap().push(format!("[test] the harness did not take the answer: {e}"));
        }
    }

    /// Waits for the harness to exit.
    pub async fn exit(mut self) -> std::process::ExitStatus {
        self.child.wait().await.expect("the harness's exit")
    }
}

/// Judges a run of an asking harness that had `within` to finish: it must have exited 0 and
/// printed `passed`. Returns the transcript (printed too).
///
/// A failure ends with the harness's own lines and unwinds without the panic hook: a runner that
/// keeps only the head and tail of a long output (CI) still shows why, not a backtrace.
pub fn judged(
    outcome: Result<std::process::ExitStatus, tokio::time::error::Elapsed>,
    within: Duration,
    passed: &str,
    log: &Log,
) -> String {
    let transcript = log.lock().unwrap().join("\n");
    println!("{transcript}");
    let failure = match outcome {
        Ok(status) if !status.success() => Some(format!("the harness failed ({status:?})")),
        Ok(_) if !transcript.contains(passed) => Some(format!("the harness never printed {passed:?}")),
        Ok(_) => None,
        Err(_) => Some(format!("the harness did not finish in {within:?}")),
    };
    if let Some(failure) = failure {
        let own: Vec<&str> = transcript.lines().filter(|l| l.starts_with("[harness]")).collect();
        let tail = own[own.len().saturating_sub(HARNESS_LINES_SHOWN)..].join("\n");
        let failure = format!("{failure}; its last lines (the whole transcript is above):\n{tail}");
        eprintln!("{failure}");
        std::panic::resume_unwind(Box::new(failure));
    }
    transcript
}

/// How many of the harness's own lines a failure repeats at its end.
const HARNESS_LINES_SHOWN: usize = 20;

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;
    use std::process::ExitStatus;

    use super::*;

    fn log_of(lines: &[&str]) -> Log {
        let log = Log::default();
        log.lock().unwrap().extend(lines.iter().map(|&l| l.to_owned()));
        log
    }

    fn fails(outcome: Result<ExitStatus, tokio::time::error::Elapsed>, log: &Log) -> String {
        let within = Duration::from_secs(1);
        let unwound = std::panic::catch_unwind(|| judged(outcome, within, "ok - passed", log));
        *unwound.expect_err("a failure unwinds").downcast::<String>().expect("a message")
    }

    #[test]
    fn a_failed_harness_ends_with_its_own_last_lines() {
        let log = log_of(&["[nats] noise", "[harness] ok - a step", "[harness] not ok - why"]);
        let failure = fails(Ok(ExitStatus::from_raw(1 << 8)), &log);
        assert!(failure.starts_with("the harness failed"), "{failure}");
        assert!(failure.ends_with("[harness] ok - a step\n[harness] not ok - why"), "{failure}");
        assert!(!failure.contains("noise"), "{failure}");
    }

    #[test]
    fn a_harness_that_exits_0_must_have_printed_its_pass() {
        let log = log_of(&["[harness] ok - a step"]);
        let failure = fails(Ok(ExitStatus::from_raw(0)), &log);
        assert!(failure.contains("never printed \"ok - passed\""), "{failure}");
        let passed = log_of(&["[harness] ok - passed"]);
        let transcript = judged(Ok(ExitStatus::from_raw(0)), Duration::from_secs(1), "ok - passed", &passed);
        assert_eq!(transcript, "[harness] ok - passed");
    }
}
