//! The trace: gateway events and client observations in one ordered list, stamped with
//! simulated time, rendered one line each.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clientmq_chat::worker::WorkerEvent;
use clientmq_core::event::Secs;
use clientmq_core::{ConnectionId, EventKind};

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
    /// The simulator itself: faults and actions it applied.
    Sim,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Gateway { conn: Option<ConnectionId>, kind: EventKind },
    Worker(WorkerEvent),
    Note(String),
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
