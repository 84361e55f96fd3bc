//! The processes of the store figures: one nats-server with JetStream and three fleets on it,
//! each a gateway and its workers on a `--nats-prefix` of its own; when each is ready, what its
//! workers served, and when a run's sessions are over.

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use crate::plan::GATEWAY_FLAGS;
use crate::procfs;
use crate::request::{self, Work, work};
use crate::servers::{Binaries, ServerProc, Worker, free_port};
use crate::target::{self, Target};

/// The fleets, in the order of [`super::SYSTEMS`]: name, prefix, workers, kept in JetStream.
const FLEETS: [(&str, &str, usize, bool); 3] =
    [("memory", "bench_mem", 1, false), ("js1", "bench_js1", 1, true), ("js2", "bench_js2", 2, true)];
/// Every run creates a room and a session per connection, and rooms are kept an hour: room
/// for all of them (the defaults allow 1,000 rooms). A short grace ends a run's sessions soon
/// after, before the next run.
const CHAT_FLAGS: [&str; 6] =
    ["--max-rooms", "100000", "--max-sessions", "100000", "--session-grace-secs", "1"];
/// A stored worker sets up its buckets first (1-2 s); the deadline is generous for a busy machine.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A worker process and its `--listen` port (`/readyz`, `/metrics`).
pub(super) struct WorkerProc {
    _proc: Worker,
    pub pid: u32,
    http: Target,
    log: String,
}

/// One system under load: its gateway and workers.
pub(super) struct System {
    pub target: Target,
    pub gateway_pid: u32,
    pub workers: Vec<WorkerProc>,
}

/// Every process of the figures, killed when dropped (and the JetStream directory removed).
pub(super) struct Fleet {
    pub systems: Vec<System>,
    pub nats_pid: u32,
    pub nats_version: String,
    procs: Vec<ServerProc>,
    dir: PathBuf,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.systems.clear();
        self.procs.clear();
        // Killed just now: let nats-server go before its files do.
        std::thread::sleep(Duration::from_millis(100));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts nats-server and the three fleets, and waits until each answers chat requests.
pub(super) async fn start(bins: &Binaries) -> Result<Fleet, String> {
    let dir = bins.logs.join("store-jetstream");
    let nats = bins.nats_server_js("store-nats-server", &dir).await?;
    let url = format!("nats://{}", nats.target.addr());
    let mut fleet = Fleet {
        systems: Vec::new(),
        nats_pid: nats.pid,
        nats_version: crate::bus::nats_version(bins).await,
        procs: vec![nats],
        dir,
    };
    for (i, (name, prefix, workers, stored)) in FLEETS.into_iter().enumerate() {
        let mut procs = Vec::new();
        for w in 0..workers {
            let port = free_port()?;
            let listen = format!("127.0.0.1:{port}");
            let mut flags = vec!["--nats-prefix", prefix, "--listen", &listen];
            flags.extend(CHAT_FLAGS);
            if !stored {
                flags.push("--memory");
            }
            let log = format!("store-{name}-worker{w}");
            let seed = 1 + (2 * i + w) as u64;
            let proc = bins.chat_worker_seeded(&log, &url, seed, &flags)?;
            let http = Target::parse(&format!("ws://{listen}/"))?;
            procs.push(WorkerProc { pid: proc.pid, _proc: proc, http, log });
        }
        let mut flags = GATEWAY_FLAGS.to_vec();
        flags.extend(["--nats", &url, "--nats-prefix", prefix, "--gateway-name", "gw"]);
        let gateway = bins.clientmq(&format!("store-{name}-gateway"), &flags).await?;
        fleet.systems.push(System {
            target: gateway.target.clone(),
            gateway_pid: gateway.pid,
            workers: procs,
        });
        fleet.procs.push(gateway);
    }
    // Started together: stored workers set up their buckets meanwhile.
    for system in &fleet.systems {
        ready(system, bins).await?;
        settled(system, READY_WITHIN).await?;
    }
    Ok(fleet)
}

/// Waits until every worker of `system` is on the bus and a chat session and room are made
/// through its gateway.
async fn ready(system: &System, bins: &Binaries) -> Result<(), String> {
    let deadline = Instant::now() + READY_WITHIN;
    for w in &system.workers {
        loop {
            let body = w.http.http_get("/readyz").await.map_err(|e| e.to_string());
            if body.as_deref().is_ok_and(|b| b.starts_with("ready")) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{}: not ready within {READY_WITHIN:?} (/readyz: {body:?}); see {}",
                    w.log,
                    bins.logs.join(format!("{}.log", w.log)).display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match probe(&system.target).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "{}: no chat session and room made through this gateway within {READY_WITHIN:?}: {last}",
        system.target.url()
    ))
}

/// A session, a room, a join and a subscription to its conversation, all answered `ok`.
async fn probe(gateway: &Target) -> Result<(), String> {
    let mut ws = target::connect(gateway, None).await?;
    let alias = format!("{}-ready", work::run_nonce());
    let set_up =
        tokio::time::timeout(Duration::from_secs(5), work::setup(&mut ws, Work::ChatSend, &alias)).await;
    request::close(ws).await;
    set_up.map_err(|_| "timed out".to_owned())?.map(|_| ())
}

/// Requests each worker of `system` has served (its `clientmq_chat_requests_total`, every type
/// and outcome); 0 where unreadable.
pub(super) async fn served(system: &System) -> Vec<f64> {
    let mut out = Vec::new();
    for w in &system.workers {
        let page = w.http.http_get("/metrics").await.unwrap_or_default();
        let total = page
            .lines()
            .filter(|l| l.starts_with("clientmq_chat_requests_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        out.push(total);
    }
    out
}

/// Waits until no worker of `system` holds a session (the gauge is updated once a second).
pub(super) async fn settled(system: &System, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        let mut open = 0.0;
        for w in &system.workers {
            let page = w.http.http_get("/metrics").await.unwrap_or_default();
            open += procfs::metric(&page, "clientmq_chat_sessions").unwrap_or(f64::NAN);
        }
        if open == 0.0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("sessions still held after {within:?}: {open}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
