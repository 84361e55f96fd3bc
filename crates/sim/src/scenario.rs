//! The scenario file format (TOML). `scenarios/README.md` documents it for users.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One replayable scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What the scenario shows, in a sentence.
    pub description: String,
    /// Seed of everything random: turmoil's network, connection ids, client jitter.
    pub seed: u64,
    /// Simulated seconds to run.
    pub duration_secs: f64,
    /// Simulated time per step, in milliseconds.
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// turmoil's TCP capacity in segments: per-socket buffers and the listen backlog.
    #[serde(default = "default_tcp_capacity")]
    pub tcp_capacity: usize,
    /// What the snapshot holds: every trace line, or a timeline of counts (for huge scenarios).
    #[serde(default)]
    pub snapshot: SnapshotMode,
    #[serde(default)]
    pub server: ServerSettings,
    /// How the backend behaves at the start.
    #[serde(default)]
    pub backend: BackendMode,
    /// Gateways and chat workers on a simulated NATS bus, instead of one gateway with its
    /// embedded backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<Fleet>,
    #[serde(default)]
    pub clients: Vec<ClientGroup>,
    #[serde(default)]
    pub timeline: Vec<Step>,
    #[serde(default)]
    pub expect: Expect,
}

fn default_tick_ms() -> u64 {
    10
}

fn default_tcp_capacity() -> usize {
    64
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotMode {
    #[default]
    Full,
    Timeline,
}

/// Gateway settings; unset ones keep the production defaults (`ServerConfig::default()`, the
/// same values `clientmq-server --help` shows), whoever may authenticate included: nobody.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Static tokens that may authenticate (`--tokens`); the simulated clients send `sim-token`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<String>,
    /// Seconds after a drain starts at which the process exits. The simulator does not model
    /// that exit (the host's tasks stop where they are), so a scenario that drains and runs on
    /// past this sets it beyond its duration.
    pub drain_deadline_secs: Option<f64>,
    pub max_connections_per_address: Option<usize>,
    pub max_requests_per_sec: Option<u32>,
    pub request_burst: Option<u32>,
    pub max_handshakes: Option<usize>,
    pub max_connections: Option<usize>,
    pub heartbeat_secs: Option<f64>,
    pub close_timeout_secs: Option<f64>,
    pub request_timeout_secs: Option<f64>,
    pub drain_window_secs: Option<f64>,
    pub handshake_timeout_secs: Option<f64>,
    pub outbound_queue: Option<usize>,
    /// Sockets a shard writes in a turn (32 in production): low, a few clients' frames take
    /// several turns, with commands and reads in between.
    pub writes_per_turn: Option<usize>,
    pub max_frame_bytes: Option<usize>,
    pub max_pending_requests: Option<usize>,
    /// Gateway cores (production runs one per CPU core); above one, admission is global.
    pub shards: Option<usize>,
}

/// A fleet on a simulated bus (host `bus`): gateway hosts `gw1`, `gw2`, ... and chat worker hosts
/// `chat1`, ... running the same gateway and `clientmq-chat` code as production.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    pub gateways: usize,
    /// Chat workers: 0 or 1 keeping sessions in memory, 1 to 3 on the store.
    #[serde(default = "one")]
    pub workers: usize,
    /// The workers keep sessions, rooms and history in the bus's JetStream store
    /// (`clientmq-chat`'s default; `false` is its `--memory`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub store: bool,
    /// The workers' session grace period, seconds (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_secs: Option<f64>,
    /// The store is a clustered stream (nats-server 2.10 and later, three replicas) whose
    /// leader keeps each write in process this long, milliseconds: meanwhile it refuses a
    /// conditional write to the same key, or a message with the same id, as in flight
    /// (`StoreModel::set_flight`). Unset: one server, nothing ever in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_flight_ms: Option<u64>,
}

fn one() -> usize {
    1
}

impl Fleet {
    pub fn gateway_hosts(&self) -> Vec<String> {
        (1..=self.gateways).map(|i| format!("gw{i}")).collect()
    }

    pub fn worker_hosts(&self) -> Vec<String> {
        (1..=self.workers).map(|i| format!("chat{i}")).collect()
    }
}

/// A group of identical scripted clients on one simulated host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientGroup {
    /// Host name, also the prefix of each client's name in the trace.
    pub name: String,
    pub behaviour: Behaviour,
    pub count: usize,
    /// When the first client starts.
    #[serde(default)]
    pub start_secs: f64,
    /// Clients start evenly spread over this many seconds.
    #[serde(default)]
    pub spread_secs: f64,
    /// Requests each client sends (behaviours that send requests).
    #[serde(default = "default_requests")]
    pub requests: usize,
    /// Seconds a client stays before it leaves (polite, flood).
    #[serde(default = "default_stay")]
    pub stay_secs: f64,
    /// Seconds after its start at which a client stops answering pings (a frozen app).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mute_after_secs: Option<f64>,
    /// The gateway hosts its clients connect to: the first, and on each reconnect the next
    /// (a load balancer's choice). Default: the first gateway. See [`Scenario::gateways_of`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
}

fn default_requests() -> usize {
    2
}

fn default_stay() -> f64 {
    5.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    /// Authenticate, join a room, chat, leave, close 1000.
    Polite,
    /// Never answers the server's close frame and keeps TCP open.
    IgnoreClose,
    /// Never answers pings.
    MutePongs,
    /// Connected and answering pings; made to vanish by a partition or crash in the timeline.
    Vanish,
    /// Sends a request, then resets the connection (RST, no close frame) mid-stream.
    Reset,
    /// Sends two close frames, then drops the socket.
    DoubleClose,
    /// Opens TCP and never finishes the upgrade.
    Slowloris,
    /// Sends malformed frames, then a valid request.
    Garbage,
    /// Connects, holds the connection idle (answering pings) for `stay_secs`, closes 1000.
    Flood,
    /// The SDK's reconnect: on any close but 1000/4000/4001, back off attempt^2 s, 4 attempts.
    SdkReconnect,
    /// Upgrades, then never reads again.
    SlowReader,
    /// A chat member: enters the lobby, chats, leaves and re-enters on the same connection,
    /// takes its session over with a second connection (odd `requests`), resumes it after a
    /// server's close, leaves at `stay_secs`.
    Member,
    /// A [`Member`](Behaviour::Member) that ends its session with `pcast.Bye` at `stay_secs`
    /// instead of leaving, and keeps its connection open and read for five seconds more (a
    /// client that does not close at once must hear nothing more of its rooms).
    ByeMember,
}

impl Behaviour {
    pub const ALL: [Behaviour; 13] = [
        Behaviour::Polite,
        Behaviour::IgnoreClose,
        Behaviour::MutePongs,
        Behaviour::Vanish,
        Behaviour::Reset,
        Behaviour::DoubleClose,
        Behaviour::Slowloris,
        Behaviour::Garbage,
        Behaviour::Flood,
        Behaviour::SdkReconnect,
        Behaviour::SlowReader,
        Behaviour::Member,
        Behaviour::ByeMember,
    ];
}

/// How the backend answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "mode")]
pub enum BackendMode {
    #[default]
    Normal,
    /// Every answer waits this long first.
    Slow { delay_secs: f64 },
    /// Every request fails.
    Fail,
    /// No request is ever answered.
    Hang,
}

/// One thing that happens at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub at_secs: f64,
    #[serde(flatten)]
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "do")]
pub enum Action {
    /// Cut the network between a client group and the gateway (no FIN, no RST).
    Partition {
        group: String,
    },
    Repair {
        group: String,
    },
    /// Hold messages between a group and the gateway until released.
    Hold {
        group: String,
    },
    Release {
        group: String,
    },
    /// Set the link latency between a group and the gateway.
    Latency {
        group: String,
        ms: u64,
    },
    /// Crash a client group's host: its connections are gone without a close frame.
    Crash {
        group: String,
    },
    /// Restart the gateway process.
    Bounce,
    /// Start a drain.
    Drain,
    /// Send a server-initiated request to every open connection.
    ServerRequest,
    /// Push `count` events of `bytes` bytes to every open connection.
    Deliver {
        count: usize,
        bytes: usize,
    },
    /// Change how the backend answers from now on.
    Backend(BackendMode),
    /// Fleet: restart a gateway or worker host (a new process; what it held is gone).
    Restart {
        host: String,
    },
    /// Fleet: a gateway or worker host dies for good (SIGKILL).
    Kill {
        host: String,
    },
    /// Fleet: cut the network between a gateway or worker host and the bus.
    PartitionBus {
        host: String,
    },
    RepairBus {
        host: String,
    },
    /// Fleet: restart the bus (nats-server).
    RestartBus,
}

impl Action {
    /// The fleet host (gateway or worker) the action names, if any.
    pub fn host(&self) -> Option<&str> {
        match self {
            Action::Restart { host }
            | Action::Kill { host }
            | Action::PartitionBus { host }
            | Action::RepairBus { host } => Some(host),
            _ => None,
        }
    }

    /// Whether the action needs a fleet.
    pub fn is_fleet(&self) -> bool {
        self.host().is_some() || *self == Action::RestartBus
    }

    /// The client group the action names, if any.
    pub fn group(&self) -> Option<&str> {
        match self {
            Action::Partition { group }
            | Action::Repair { group }
            | Action::Hold { group }
            | Action::Release { group }
            | Action::Latency { group, .. }
            | Action::Crash { group } => Some(group),
            _ => None,
        }
    }
}

/// The end state the scenario expects. Unset fields are not checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub open: Option<usize>,
    pub rejected: Option<u64>,
    /// Disconnects by path (`client`, `server`, `forced`, `lost`).
    #[serde(default)]
    pub disconnects: BTreeMap<String, u64>,
    /// Disconnects by close code.
    #[serde(default)]
    pub codes: BTreeMap<u16, u64>,
    /// Client observations that must appear at least this many times (`what` text -> count).
    #[serde(default)]
    pub observed: BTreeMap<String, u64>,
}

/// Why a scenario file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: String, source: Box<toml::de::Error> },
    #[error("{0}")]
    Invalid(String),
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ScenarioError::Read { path: shown.clone(), source })?;
        let scenario: Scenario = toml::from_str(&text)
            .map_err(|source| ScenarioError::Parse { path: shown, source: Box::new(source) })?;
        scenario.validate()?;
        Ok(scenario)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a scenario always serialises")
    }

    pub fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |m: String| Err(ScenarioError::Invalid(m));
        if self.duration_secs.is_nan() || self.duration_secs <= 0.0 || self.duration_secs.is_infinite() {
            return bad("duration_secs must be positive".into());
        }
        if self.tick_ms == 0 {
            return bad("tick_ms must be positive".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for g in &self.clients {
            // Host names of the simulation: a client group may not take one.
            let reserved = ["gateway", "control", "bus"].contains(&g.name.as_str())
                || (g.name.starts_with("gw") || g.name.starts_with("chat"))
                    && g.name.trim_start_matches(|c: char| c.is_ascii_alphabetic()).parse::<u32>().is_ok();
            if g.name.is_empty() || reserved || !names.insert(g.name.as_str()) {
                return bad(format!("client group name {:?} is empty, reserved or used twice", g.name));
            }
            if [g.start_secs, g.spread_secs, g.stay_secs].iter().any(|t| t.is_nan() || *t < 0.0) {
                return bad(format!("group {}: times must not be negative", g.name));
            }
        }
        let hosts: Vec<String> = match &self.fleet {
            Some(f) => {
                if !(1..=8).contains(&f.gateways) || f.workers > if f.store { 3 } else { 1 } {
                    return bad(
                        "a fleet has 1 to 8 gateways and at most one chat worker (three on the store)".into(),
                    );
                }
                if f.grace_secs.is_some_and(|g| g.is_nan() || g < 0.0) {
                    return bad("fleet grace_secs must not be negative".into());
                }
                f.gateway_hosts().into_iter().chain(f.worker_hosts()).collect()
            }
            None => Vec::new(),
        };
        let gateways: Vec<String> = match &self.fleet {
            Some(f) => f.gateway_hosts(),
            None => vec!["gateway".to_owned()],
        };
        for g in &self.clients {
            if let Some(unknown) = g.gateways.iter().find(|h| !gateways.contains(h)) {
                return bad(format!("group {}: no gateway host {unknown:?}", g.name));
            }
        }
        for step in &self.timeline {
            if step.at_secs.is_nan() || step.at_secs < 0.0 {
                return bad("timeline times must not be negative".into());
            }
            if step.action.is_fleet() && self.fleet.is_none() {
                return bad(format!("{:?} needs a [fleet]", step.action));
            }
            if step.action == Action::Bounce && self.fleet.is_some() {
                return bad("in a fleet, restart a host by name (do = \"restart\", host = ...)".into());
            }
            if let Some(host) = step.action.host()
                && !hosts.iter().any(|h| h == host)
            {
                return bad(format!("timeline names unknown host {host:?}"));
            }
            if let Some(group) = step.action.group()
                && !names.contains(group)
            {
                return bad(format!("timeline names unknown group {group:?}"));
            }
        }
        Ok(())
    }

    /// The gateway hosts a group's clients connect to, in order.
    pub fn gateways_of(&self, group: &ClientGroup) -> Vec<String> {
        if !group.gateways.is_empty() {
            return group.gateways.clone();
        }
        vec![self.fleet.as_ref().map_or("gateway".to_owned(), |_| "gw1".to_owned())]
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration_secs)
    }
}

/// Every `*.toml` scenario in `dir`, by file stem, in name order.
pub fn list(dir: &Path) -> Result<Vec<(String, Scenario)>, ScenarioError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|source| ScenarioError::Read { path: dir.display().to_string(), source })?;
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            Scenario::load(&p).map(|s| (name, s))
        })
        .collect()
}
