//! Churn mode: `concurrency` loops, each opening a connection (TCP and upgrade), closing it from
//! the client side and waiting for the server to end it, again and again. Cycles that finish in
//! the measured window count. A cycle whose close is not completed by the server in time is an
//! error.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use crate::stats::{self, Latency};
use crate::target::{self, Target, Ws};

/// Time the server has to end a connection after the client's close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct ChurnOpts {
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub sources: usize,
}

impl Default for ChurnOpts {
    fn default() -> Self {
        ChurnOpts {
            concurrency: 32,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(3),
            sources: 4,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ChurnReport {
    /// Open-close cycles finished in the measured window.
    pub cycles: u64,
    /// Cycles started over the whole run (warmup included).
    pub started: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub window: Duration,
    /// Time to open (TCP connect and upgrade), for cycles started in the window.
    pub open: Latency,
}

impl ChurnReport {
    pub fn per_sec(&self) -> f64 {
        self.cycles as f64 / self.window.as_secs_f64().max(1e-9)
    }

    pub fn summary(&self) -> String {
        format!(
            "cycles_per_sec={:.0} cycles={} started={} errors={} open_p50_ms={} open_p99_ms={}{}",
            self.per_sec(),
            self.cycles,
            self.started,
            self.errors,
            stats::ms(self.open.p50),
            stats::ms(self.open.p99),
            self.first_error.as_ref().map(|e| format!(" first_error=\"{e}\"")).unwrap_or_default(),
        )
    }
}

/// Runs churn mode against `target`.
pub async fn run(target: &Target, opts: &ChurnOpts) -> ChurnReport {
    let start = Instant::now();
    let measure_from = start + opts.warmup;
    let end = measure_from + opts.duration;
    let tasks: Vec<_> = (0..opts.concurrency.max(1))
        .map(|w| {
            let target = target.clone();
            let (concurrency, sources) = (opts.concurrency.max(1), opts.sources);
            tokio::spawn(async move {
                let mut out = ChurnReport::default();
                let mut hist = stats::histogram();
                for cycle in 0usize.. {
                    let began = Instant::now();
                    if began >= end {
                        break;
                    }
                    out.started += 1;
                    let source = target::source_addr(w + cycle * concurrency, sources, 1);
                    let ws = match target::connect(&target, source).await {
                        Ok(ws) => ws,
                        Err(e) => {
                            out.errors += 1;
                            out.first_error.get_or_insert(e);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let opened = Instant::now();
                    if !close(ws).await {
                        out.errors += 1;
                        out.first_error
                            .get_or_insert("server did not end the connection after a close".into());
                        continue;
                    }
                    let done = Instant::now();
                    if done >= measure_from && done < end {
                        out.cycles += 1;
                        if began >= measure_from {
                            stats::record(&mut hist, opened - began);
                        }
                    }
                }
                (out, hist)
            })
        })
        .collect();
    let mut total = ChurnReport { window: opts.duration, ..ChurnReport::default() };
    let mut hist = stats::histogram();
    for task in tasks {
        let Ok((out, h)) = task.await else {
            total.errors += 1;
            continue;
        };
        total.cycles += out.cycles;
        total.started += out.started;
        total.errors += out.errors;
        if total.first_error.is_none() {
            total.first_error = out.first_error;
        }
        hist.add(&h).expect("same histogram bounds");
    }
    total.open = Latency::of(&hist);
    total
}

/// Client-initiated close; true when the server ended the connection in time.
async fn close(mut ws: Ws) -> bool {
    tokio::time::timeout(CLOSE_GRACE, async {
        ws.close(None).await.ok()?;
        // Until the server's close frame has come back...
        while let Some(Ok(_)) = ws.next().await {}
        // ...and the server has ended the TCP stream (RFC 6455: the server closes first, so the
        // client's ephemeral port is not held in TIME_WAIT).
        let mut buf = [0u8; 64];
        while ws.get_mut().read(&mut buf).await.ok()? > 0 {}
        Some(())
    })
    .await
    .is_ok_and(|r| r.is_some())
}
