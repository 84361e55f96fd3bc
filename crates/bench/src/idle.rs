//! Idle mode: N connections held open, doing nothing but answering the server's heartbeats, and
//! the server's resident memory (`VmRSS`) before they open and while they are held.
//!
//! One process may not hold more sockets than its open-file limit, so the connections are held
//! by `processes` worker processes (this binary's hidden `idle-worker` subcommand). A worker opens
//! its share, prints `ready opened=.. errors=..`, keeps reading (so pings are answered) until its
//! stdin closes, then prints `done pings=.. closed=..` and exits.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::helper::Helper;
use crate::procfs;
use crate::target::{self, Target};

/// Longest a run may take to open its connections.
const OPEN_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, Clone)]
pub struct IdleOpts {
    pub connections: usize,
    /// Worker processes holding the connections (each holds `connections / processes`).
    pub processes: usize,
    pub sources: usize,
    /// First loopback source address (127.0.0.`first_source`).
    pub first_source: u8,
    /// How long the connections are held before the second memory reading.
    pub hold: Duration,
    /// The server process whose memory is read.
    pub pid: Option<u32>,
    /// Read `clientmq_connections_open` from the target's `/metrics` while holding.
    pub metrics: bool,
    pub connect_concurrency: usize,
}

#[derive(Debug, Clone, Default)]
pub struct IdleReport {
    pub requested: usize,
    pub opened: u64,
    pub connect_errors: u64,
    /// Seconds it took to open every connection.
    pub open_secs: f64,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    /// Heartbeat pings the clients received while holding.
    pub pings: u64,
    /// Connections the server ended while they were held (should be 0).
    pub closed: u64,
    /// The server's open gauge while holding (clientmq only).
    pub open_gauge: Option<f64>,
}

impl IdleReport {
    /// Resident bytes per held connection.
    pub fn bytes_per_connection(&self) -> Option<f64> {
        let (before, after) = (self.rss_before_kib?, self.rss_after_kib?);
        (self.opened > 0).then(|| (after as f64 - before as f64) * 1024.0 / self.opened as f64)
    }

    pub fn summary(&self) -> String {
        let kib = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
        format!(
            "opened={} connect_errors={} open_secs={:.1} rss_before_kib={} rss_after_kib={} \
             bytes_per_conn={} pings={} closed_by_server={} open_gauge={}",
            self.opened,
            self.connect_errors,
            self.open_secs,
            kib(self.rss_before_kib),
            kib(self.rss_after_kib),
            self.bytes_per_connection().map_or("-".into(), |b| format!("{b:.0}")),
            self.pings,
            self.closed,
            self.open_gauge.map_or("-".into(), |g| g.to_string()),
        )
    }
}

/// The `key=value` pairs of a worker's line.
pub fn parse_pairs(line: &str) -> Vec<(&str, &str)> {
    line.split_whitespace().filter_map(|w| w.split_once('=')).collect()
}

fn pair(line: &str, key: &str) -> u64 {
    parse_pairs(line).into_iter().find(|(k, _)| *k == key).and_then(|(_, v)| v.parse().ok()).unwrap_or(0)
}

/// How `total` connections are shared by `processes` workers: (count, first source index).
pub fn shares(total: usize, processes: usize) -> Vec<(usize, usize)> {
    let processes = processes.max(1);
    let mut offset = 0;
    (0..processes)
        .map(|k| {
            let n = total / processes + usize::from(k < total % processes);
            let share = (n, offset);
            offset += n;
            share
        })
        .filter(|(n, _)| *n > 0)
        .collect()
}

/// Runs idle mode, holding the connections in worker processes started from `exe`.
pub async fn run(exe: &Path, target: &Target, opts: &IdleOpts) -> Result<IdleReport, String> {
    let mut report = IdleReport { requested: opts.connections, ..IdleReport::default() };
    report.rss_before_kib = opts.pid.and_then(|pid| procfs::rss_kib(pid).ok());
    let started = Instant::now();
    let mut workers = Vec::new();
    for (n, offset) in shares(opts.connections, opts.processes) {
        let args = [
            "idle-worker".to_owned(),
            "--url".into(),
            target.url().into(),
            "--connections".into(),
            n.to_string(),
            "--sources".into(),
            opts.sources.to_string(),
            "--source-offset".into(),
            offset.to_string(),
            "--first-source".into(),
            opts.first_source.to_string(),
            "--connect-concurrency".into(),
            opts.connect_concurrency.to_string(),
            "--max-hold-secs".into(),
            (opts.hold.as_secs() + 300).to_string(),
        ];
        workers.push(Helper::start(exe, &args)?);
    }
    for w in &mut workers {
        let ready = tokio::time::timeout(OPEN_TIMEOUT, w.line("ready"))
            .await
            .map_err(|_| "workers did not open their connections in time".to_owned())??;
        report.opened += pair(&ready, "opened");
        report.connect_errors += pair(&ready, "errors");
    }
    report.open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(opts.hold).await;
    report.rss_after_kib = opts.pid.and_then(|pid| procfs::rss_kib(pid).ok());
    if opts.metrics
        && let Ok(text) = target.http_get("/metrics").await
    {
        report.open_gauge = procfs::metric(&text, "clientmq_connections_open");
    }
    for w in &mut workers {
        w.finish();
    }
    for mut w in workers {
        if let Ok(Ok(done)) = tokio::time::timeout(Duration::from_secs(30), w.line("done")).await {
            report.pings += pair(&done, "pings");
            report.closed += pair(&done, "closed");
        }
        w.stop(Duration::from_secs(30)).await;
    }
    Ok(report)
}

/// The worker side: opens `connections`, reports, holds them until stdin closes (or `max_hold`).
/// Each connection starts reading as soon as it is open, so no ping goes unanswered while the
/// others are still opening.
pub async fn worker(
    target: &Target,
    connections: usize,
    sources: usize,
    first_source: u8,
    source_offset: usize,
    concurrency: usize,
    max_hold: Duration,
) {
    let pings = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let (opened_tx, mut opened_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            let (pings, closed, gate, opened) =
                (pings.clone(), closed.clone(), gate.clone(), opened_tx.clone());
            let target = target.clone();
            tokio::spawn(async move {
                let permit = gate.acquire_owned().await;
                let ws =
                    target::connect(&target, target::source_addr(source_offset + i, sources, first_source))
                        .await;
                drop(permit);
                let mut ws = match ws {
                    Ok(ws) => ws,
                    Err(e) => {
                        let _ = opened.send(Err(e));
                        return;
                    }
                };
                let _ = opened.send(Ok(()));
                // Reading is what answers pings (tungstenite queues the pong and flushes it on
                // the next read).
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Ping(_))) => {
                            pings.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Ok(Message::Close(_)) | Err(_)) | None => {
                            closed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Some(Ok(_)) => {}
                    }
                }
                std::future::pending::<()>().await;
            })
        })
        .collect();
    let (mut opened, mut errors, mut first_error) = (0, 0, None);
    for _ in 0..connections {
        match opened_rx.recv().await {
            Some(Ok(())) => opened += 1,
            Some(Err(e)) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
            None => break,
        }
    }
    if let Some(e) = first_error {
        eprintln!("idle-worker: {errors} connections failed; first: {e}");
    }
    println!("ready opened={opened} errors={errors}");
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(max_hold, tokio::io::stdin().read_to_end(&mut sink)).await;
    println!("done pings={} closed={}", pings.load(Ordering::Relaxed), closed.load(Ordering::Relaxed));
    for t in tasks {
        t.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_shared_evenly_with_disjoint_sources() {
        assert_eq!(shares(10, 3), vec![(4, 0), (3, 4), (3, 7)]);
        assert_eq!(shares(19_900, 2), vec![(9_950, 0), (9_950, 9_950)]);
        assert_eq!(shares(2, 4), vec![(1, 0), (1, 1)]);
        assert_eq!(shares(5, 0), vec![(5, 0)]);
    }

    #[test]
    fn worker_lines() {
        assert_eq!(pair("ready opened=9950 errors=0", "opened"), 9950);
        assert_eq!(pair("done pings=3 closed=0", "pings"), 3);
        assert_eq!(pair("done", "pings"), 0);
        let report = IdleReport {
            opened: 1000,
            rss_before_kib: Some(1000),
            rss_after_kib: Some(11_000),
            ..IdleReport::default()
        };
        assert_eq!(report.bytes_per_connection(), Some(10_240.0));
        assert_eq!(IdleReport::default().bytes_per_connection(), None);
    }
}
