//! The invariant checker: fed every trace record in order, it fails on the first broken
//! invariant with a message naming the connection and the simulated time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

use clientmq_core::event::Secs;
use clientmq_core::{ConnectionId, DisconnectPath, EventKind, RequestOutcome};

use crate::trace::{Body, Record, Source};

/// What the checker holds the gateway to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub close_timeout: Duration,
    pub request_timeout: Duration,
    /// Slack for deadlines: timers fire on the first step at or after their deadline.
    pub tolerance: Duration,
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub at: Duration,
    pub conn: Option<ConnectionId>,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.conn {
            Some(conn) => write!(f, "at {}: connection {conn}: {}", Secs(self.at), self.message),
            None => write!(f, "at {}: {}", Secs(self.at), self.message),
        }
    }
}

/// Counts at one moment, for timelines and plots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    pub at: Duration,
    pub open: usize,
    pub closing: usize,
    pub pending: usize,
}

#[derive(Debug, Clone)]
pub struct Checker {
    limits: Limits,
    open: BTreeSet<ConnectionId>,
    ended: BTreeSet<ConnectionId>,
    /// Closing connections by the time their close timeout runs out.
    closing: BTreeMap<ConnectionId, Duration>,
    closing_deadlines: BTreeSet<(Duration, ConnectionId)>,
    /// Forwarded requests per (connection, request id), oldest first, by deadline.
    pending: BTreeMap<(ConnectionId, String), VecDeque<Duration>>,
    pending_count: usize,
    registered: u64,
    disconnected: u64,
    rejected: u64,
    disconnects: BTreeMap<DisconnectPath, u64>,
    codes: BTreeMap<u16, u64>,
    max_open: usize,
}

impl Checker {
    pub fn new(limits: Limits) -> Self {
        Checker {
            limits,
            open: BTreeSet::new(),
            ended: BTreeSet::new(),
            closing: BTreeMap::new(),
            closing_deadlines: BTreeSet::new(),
            pending: BTreeMap::new(),
            pending_count: 0,
            registered: 0,
            disconnected: 0,
            rejected: 0,
            disconnects: BTreeMap::new(),
            codes: BTreeMap::new(),
            max_open: 0,
        }
    }

    pub fn open(&self) -> usize {
        self.open.len()
    }
    pub fn registered(&self) -> u64 {
        self.registered
    }
    pub fn rejected(&self) -> u64 {
        self.rejected
    }
    pub fn max_open(&self) -> usize {
        self.max_open
    }
    pub fn disconnects(&self) -> &BTreeMap<DisconnectPath, u64> {
        &self.disconnects
    }
    pub fn codes(&self) -> &BTreeMap<u16, u64> {
        &self.codes
    }

    pub fn sample(&self, at: Duration) -> Sample {
        Sample { at, open: self.open.len(), closing: self.closing.len(), pending: self.pending_count }
    }

    /// Deadline checks at time `at`: nothing closing or pending past its timeout.
    pub fn check_time(&self, at: Duration) -> Result<(), Violation> {
        let late = |deadline: Duration| deadline + self.limits.tolerance < at;
        if let Some((deadline, conn)) = self.closing_deadlines.first()
            && late(*deadline)
        {
            let since = *deadline - self.limits.close_timeout;
            return Err(Violation {
                at,
                conn: Some(*conn),
                message: format!("closing since {} and past the close timeout", Secs(since)),
            });
        }
        for ((conn, request_id), deadlines) in &self.pending {
            if let Some(deadline) = deadlines.front()
                && late(*deadline)
            {
                return Err(Violation {
                    at,
                    conn: Some(*conn),
                    message: format!("request {request_id} pending past the request timeout"),
                });
            }
        }
        Ok(())
    }

    /// Feeds one record; checks every invariant after it.
    pub fn observe(&mut self, record: &Record) -> Result<(), Violation> {
        let at = record.at;
        self.check_time(at)?;
        let fail = |conn: Option<ConnectionId>, message: String| Err(Violation { at, conn, message });
        match (&record.source, &record.body) {
            (Source::Sim, Body::Note(note)) if note.starts_with("gateway restarted") => {
                // The old process died with its connections; the new one starts from zero.
                self.open.clear();
                self.closing.clear();
                self.closing_deadlines.clear();
                self.pending.clear();
                self.pending_count = 0;
            }
            (_, Body::Gateway { conn, kind }) => {
                let id = *conn;
                match kind {
                    EventKind::Opened { open, .. } => {
                        let Some(id) = id else { return fail(None, "opened without an id".into()) };
                        if self.open.contains(&id) || self.ended.contains(&id) {
                            return fail(Some(id), "registered twice".into());
                        }
                        self.open.insert(id);
                        self.registered += 1;
                        self.max_open = self.max_open.max(self.open.len());
                        self.check_count(at, id, *open)?;
                        if self.open.len() > self.limits.max_connections {
                            return fail(
                                Some(id),
                                format!(
                                    "open {} is above the limit {}",
                                    self.open.len(),
                                    self.limits.max_connections
                                ),
                            );
                        }
                    }
                    EventKind::Rejected { code, open } => {
                        self.rejected += 1;
                        // One shard admits exactly: a limit refusal means the registry was full.
                        if *code == clientmq_core::close::CONCURRENCY_LIMIT.code
                            && *open < self.limits.max_connections
                        {
                            return fail(
                                id,
                                format!(
                                    "refused with 1013 while only {open} of {} were open",
                                    self.limits.max_connections
                                ),
                            );
                        }
                    }
                    EventKind::Disconnected { path, code, open } => {
                        let Some(id) = id else { return fail(None, "disconnected without an id".into()) };
                        if self.ended.contains(&id) {
                            return fail(Some(id), "disconnected twice".into());
                        }
                        if !self.open.remove(&id) {
                            return fail(Some(id), "disconnected but never registered".into());
                        }
                        self.ended.insert(id);
                        self.disconnected += 1;
                        *self.disconnects.entry(*path).or_default() += 1;
                        *self.codes.entry(*code).or_default() += 1;
                        if let Some(deadline) = self.closing.remove(&id) {
                            self.closing_deadlines.remove(&(deadline, id));
                        }
                        // The gateway fails a disconnected connection's pending requests.
                        let keys: Vec<_> = self
                            .pending
                            .range((id, String::new())..)
                            .take_while(|((c, _), _)| *c == id)
                            .map(|(k, _)| k.clone())
                            .collect();
                        for key in keys {
                            if let Some(d) = self.pending.remove(&key) {
                                self.pending_count -= d.len();
                            }
                        }
                        self.check_count(at, id, *open)?;
                    }
                    EventKind::CloseSent { .. } => {
                        let Some(id) = id else { return Ok(()) };
                        let deadline = at + self.limits.close_timeout;
                        if self.closing.insert(id, deadline).is_none() {
                            self.closing_deadlines.insert((deadline, id));
                        }
                    }
                    EventKind::Forwarded { request_id, .. } => {
                        let Some(id) = id else { return Ok(()) };
                        self.pending
                            .entry((id, request_id.clone()))
                            .or_default()
                            .push_back(at + self.limits.request_timeout);
                        self.pending_count += 1;
                    }
                    EventKind::Answered { request_id, outcome, .. }
                        if *outcome != RequestOutcome::Refused =>
                    {
                        let Some(id) = id else { return Ok(()) };
                        let key = (id, request_id.clone());
                        if let Some(deadlines) = self.pending.get_mut(&key)
                            && deadlines.pop_front().is_some()
                        {
                            self.pending_count -= 1;
                            if deadlines.is_empty() {
                                self.pending.remove(&key);
                            }
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The gateway's own count must equal registered minus disconnected, as seen in the trace.
    fn check_count(&self, at: Duration, id: ConnectionId, reported: usize) -> Result<(), Violation> {
        if reported != self.open.len() {
            return Err(Violation {
                at,
                conn: Some(id),
                message: format!(
                    "gateway reports open={reported} but registered - disconnected = {}",
                    self.open.len()
                ),
            });
        }
        Ok(())
    }
}
