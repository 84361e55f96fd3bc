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
    /// How the embedded backend behaves at the start.
    #[serde(default)]
    pub backend: BackendMode,
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

/// Gateway settings; unset ones keep the production defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub max_connections: Option<usize>,
    pub heartbeat_secs: Option<f64>,
    pub close_timeout_secs: Option<f64>,
    pub request_timeout_secs: Option<f64>,
    pub drain_window_secs: Option<f64>,
    pub handshake_timeout_secs: Option<f64>,
    pub outbound_queue: Option<usize>,
    pub max_frame_bytes: Option<usize>,
    pub max_pending_requests: Option<usize>,
    /// Gateway cores (production runs one per CPU core); above one, admission is global.
    pub shards: Option<usize>,
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
}

impl Behaviour {
    pub const ALL: [Behaviour; 11] = [
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
}

impl Action {
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
            if g.name.is_empty()
                || g.name == "gateway"
                || g.name == "control"
                || !names.insert(g.name.as_str())
            {
                return bad(format!("client group name {:?} is empty, reserved or used twice", g.name));
            }
            if [g.start_secs, g.spread_secs, g.stay_secs].iter().any(|t| t.is_nan() || *t < 0.0) {
                return bad(format!("group {}: times must not be negative", g.name));
            }
        }
        for step in &self.timeline {
            if step.at_secs.is_nan() || step.at_secs < 0.0 {
                return bad("timeline times must not be negative".into());
            }
            if let Some(group) = step.action.group()
                && !names.contains(group)
            {
                return bad(format!("timeline names unknown group {group:?}"));
            }
        }
        Ok(())
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
