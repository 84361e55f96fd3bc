//! The trace: gateway events and client observations in one ordered list, stamped with
//! simulated time, rendered one line each.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clientmq_core::event::Secs;
use clientmq_core::{ConnectionId, EventKind};

/// Who recorded a line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Gateway,
    Client(String),
    /// The simulator itself: faults and actions it applied.
    Sim,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Gateway { conn: Option<ConnectionId>, kind: EventKind },
    Note(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub at: Duration,
    pub source: Source,
    pub body: Body,
}

impl Record {
    pub fn gateway(at: Duration, conn: Option<ConnectionId>, kind: EventKind) -> Self {
        Record { at, source: Source::Gateway, body: Body::Gateway { conn, kind } }
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
            (_, Body::Gateway { conn: Some(conn), kind }) => write!(f, "gateway {conn} {kind}"),
            (_, Body::Gateway { conn: None, kind }) => write!(f, "gateway {kind}"),
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
