//! The trace: gateway events and client observations in one ordered list, stamped with
//! simulated time, rendered one line each.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clientmq_chat::worker::WorkerEvent;
use clientmq_core::event::Secs;
use clientmq_core::{ConnectionId, EventKind, Topic};

/// One process of a simulated host: the host's name and how many times it was restarted before
/// this process started. A restart starts a new process; what the old one did belongs to it,
/// whatever order its last records reach the trace in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Proc {
    /// Shared: every record of the process carries it.
    pub host: Arc<str>,
    pub incarnation: u32,
}

impl Proc {
    pub fn new(host: &str, incarnation: u32) -> Self {
        Proc { host: host.into(), incarnation }
    }
}

/// `gateway`, then `gateway#1` after its first restart.
impl fmt::Display for Proc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.incarnation {
            0 => f.write_str(&self.host),
            n => write!(f, "{}#{n}", self.host),
        }
    }
}

/// Who recorded a line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// A gateway process, and the shard whose core emitted the event (`None` for a gateway of
    /// one shard).
    Gateway {
        proc: Proc,
        shard: Option<u16>,
    },
    /// A chat worker process of a fleet.
    Worker(Proc),
    Client(String),
    /// The simulated bus's broker.
    Bus,
    /// The simulator itself: faults and actions it applied.
    Sim,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Gateway {
        conn: Option<ConnectionId>,
        kind: EventKind,
    },
    Worker(WorkerEvent),
    Note(String),
    /// What a chat client saw on its `conn`-th connection (counted from 0), in the form the
    /// checker reads.
    Seen {
        conn: u32,
        seen: Seen,
    },
    /// The broker routed a message published on a room subject to these bus clients (by the name
    /// they connected with).
    Published {
        subject: String,
        digest: Digest,
        to: Vec<String>,
    },
}

/// A digest of an event's type and payload: how a client's copy is matched to its publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub u32);

impl Digest {
    /// FNV-1a over the type, a zero byte and the payload, folded to 32 bits.
    pub fn of(event_type: &str, payload: &[u8]) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in event_type.bytes().chain([0]).chain(payload.iter().copied()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Digest((h ^ (h >> 32)) as u32)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{:08x}", self.0)
    }
}

/// A request that changes what a session hears.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// `chat.JoinRoom`: the session hears the room's events.
    Join(String),
    /// `chat.FetchRoomConversation` with `Subscribe`: the session hears its conversation.
    Listen(String),
    /// `chat.LeaveRoom`: the session hears neither any more.
    Leave(String),
    /// `pcast.Bye`: the session is over and hears none of its rooms any more.
    Bye,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Join(room) => write!(f, "join room={room}"),
            Change::Listen(room) => write!(f, "listen room={room}"),
            Change::Leave(room) => write!(f, "leave room={room}"),
            Change::Bye => write!(f, "bye"),
        }
    }
}

/// A room or conversation event as a client received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heard {
    pub topic: Topic,
    pub room: String,
    /// The session whose action it reports.
    pub actor: String,
    /// `member-joined`, `member-left`, ..., `message`.
    pub what: String,
    pub digest: Digest,
}

/// A chat client's observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Upgraded by gateway host `gateway`.
    Connected {
        gateway: String,
    },
    /// Asks to resume this session (authenticating with its id).
    Resume(String),
    /// Authenticated as this session.
    Session(String),
    Asked(Change),
    /// The request was answered `ok`.
    Done(Change),
    Event(Heard),
    /// The connection is over for the client: how it saw it end.
    Ended(String),
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seen::Connected { .. } => f.write_str("connected"),
            Seen::Resume(session) => write!(f, "resumes {session}"),
            Seen::Session(session) => write!(f, "session {session}"),
            Seen::Asked(change) => write!(f, "asks {change}"),
            Seen::Done(change) => write!(f, "done {change}"),
            Seen::Event(h) => {
                write!(f, "event {} room={} {} by={} {}", h.topic.label(), h.room, h.what, h.actor, h.digest)
            }
            Seen::Ended(how) => f.write_str(how),
        }
    }
}

impl Source {
    fn name(&self) -> &str {
        match self {
            Source::Gateway { proc, .. } | Source::Worker(proc) => &proc.host,
            Source::Client(name) => name,
            Source::Bus => "bus",
            Source::Sim => "sim",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub at: Duration,
    pub source: Source,
    pub body: Body,
}

impl Record {
    pub fn gateway(
        at: Duration,
        proc: Proc,
        shard: Option<u16>,
        conn: Option<ConnectionId>,
        kind: EventKind,
    ) -> Self {
        Record { at, source: Source::Gateway { proc, shard }, body: Body::Gateway { conn, kind } }
    }

    pub fn worker(at: Duration, proc: Proc, event: WorkerEvent) -> Self {
        Record { at, source: Source::Worker(proc), body: Body::Worker(event) }
    }

    pub fn sim(at: Duration, note: impl Into<String>) -> Self {
        Record { at, source: Source::Sim, body: Body::Note(note.into()) }
    }

    pub fn client(at: Duration, client: &str, note: impl Into<String>) -> Self {
        Record { at, source: Source::Client(client.to_owned()), body: Body::Note(note.into()) }
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>12} ", Secs(self.at).to_string())?;
        match (&self.source, &self.body) {
            (Source::Gateway { proc, shard }, Body::Gateway { conn, kind }) => {
                write!(f, "{proc}")?;
                if let Some(shard) = shard {
                    write!(f, "/{shard}")?;
                }
                match conn {
                    Some(conn) => write!(f, " {conn} {kind}"),
                    None => write!(f, " {kind}"),
                }
            }
            (_, Body::Gateway { conn: Some(conn), kind }) => write!(f, "gateway {conn} {kind}"),
            (_, Body::Gateway { conn: None, kind }) => write!(f, "gateway {kind}"),
            (Source::Worker(proc), Body::Worker(event)) => write!(f, "{proc} {event}"),
            (_, Body::Worker(event)) => write!(f, "worker {event}"),
            (Source::Client(name), Body::Note(note)) => write!(f, "client {name} {note}"),
            (_, Body::Note(note)) => write!(f, "sim {note}"),
            (_, Body::Seen { conn: 0, seen }) => write!(f, "client {} {seen}", self.source.name()),
            (_, Body::Seen { conn, seen }) => write!(f, "client {}/{conn} {seen}", self.source.name()),
            (_, Body::Published { subject, digest, to }) => {
                write!(f, "bus published {subject} {digest} to [{}]", to.join(","))
            }
        }
    }
}

/// The shared, append-only trace of one run. Every host appends to it from inside the
/// simulation, which runs on one thread in a fixed order, so the order is deterministic.
#[derive(Clone, Default)]
pub struct Trace {
    records: Arc<Mutex<Vec<Record>>>,
}

impl Trace {
    pub fn push(&self, record: Record) {
        self.records.lock().expect("trace lock").push(record);
    }

    /// Appends what a chat client saw, at the current simulated time.
    pub fn seen(&self, client: &str, conn: u32, seen: Seen) {
        let record =
            Record { at: now(), source: Source::Client(client.to_owned()), body: Body::Seen { conn, seen } };
        self.push(record);
    }

    /// Appends a client observation at the current simulated time.
    pub fn client(&self, client: &str, note: impl Into<String>) {
        self.push(Record::client(now(), client, note));
    }

    pub fn len(&self) -> usize {
        self.records.lock().expect("trace lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records from `from` on.
    pub fn since(&self, from: usize) -> Vec<Record> {
        self.records.lock().expect("trace lock")[from..].to_vec()
    }

    pub fn records(&self) -> Vec<Record> {
        self.since(0)
    }
}

/// Simulated time on the current host (zero outside the simulation).
pub fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_lines_name_the_process_and_the_shard_only_when_there_is_a_choice() {
        let kind = EventKind::PingSent;
        let first =
            Record::gateway(Duration::from_secs(1), Proc::new("gateway", 0), None, None, kind.clone());
        assert_eq!(first.to_string(), "   1.000000s gateway ping");
        let later = Record::gateway(Duration::from_secs(1), Proc::new("gw2", 3), Some(1), None, kind);
        assert_eq!(later.to_string(), "   1.000000s gw2#3/1 ping");
    }
}
