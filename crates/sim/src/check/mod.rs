//! The invariant checker: fed every trace record in order, it fails on the first broken
//! invariant with a message naming the process, the connection and the simulated time.
//!
//! State is kept per gateway process (host and incarnation): a restart ends a process and what
//! it did belongs to it, so its last records count against it, never against its successor.
//! Every check costs O(log n) per record: deadlines live in ordered sets and only the earliest
//! is ever compared with the clock.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

use clientmq_core::event::Secs;
use clientmq_core::{ConnectionId, DisconnectPath, EventKind, RequestOutcome};

use crate::trace::{Body, Proc, Record, Source};

mod fleet;
mod hearing;
mod weather;

pub use fleet::{FleetCheck, FleetLimits};
pub use hearing::HearingCheck;
pub use weather::Weather;

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

impl Violation {
    /// The kind of break, without the time, process or connection that vary between runs: what
    /// shrinking keeps constant while it makes a failing scenario smaller.
    pub fn class(&self) -> String {
        // Messages start with the process (`gateway#2: `); numbers are counts, times and ids.
        let body = self.message.split_once(": ").map_or(self.message.as_str(), |(_, body)| body);
        let words: Vec<&str> =
            body.split_whitespace().filter(|w| !w.chars().any(|c| c.is_ascii_digit())).collect();
        words.join(" ")
    }
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

/// What the checker knows of one registered connection.
#[derive(Debug, Clone, Default)]
struct Conn {
    shard: Option<u16>,
    /// When its close timeout runs out, once the gateway sent its close frame.
    closing: Option<Duration>,
    /// Forwarded requests by request id: (deadline, sequence number), oldest first.
    pending: BTreeMap<String, VecDeque<(Duration, u64)>>,
    pending_count: usize,
}

/// One gateway process.
#[derive(Debug, Clone, Default)]
struct ProcState {
    open: BTreeMap<ConnectionId, Conn>,
    ended: BTreeSet<ConnectionId>,
    /// Open connections per shard, for the count each shard reports.
    per_shard: BTreeMap<Option<u16>, usize>,
    closing: usize,
    pending: usize,
}

#[derive(Debug, Clone)]
pub struct Checker {
    limits: Limits,
    procs: BTreeMap<Proc, ProcState>,
    /// Restarts noted per host: a process of an earlier incarnation is dead.
    restarts: BTreeMap<String, u32>,
    /// Hosts killed and not started again.
    dead_hosts: BTreeSet<String>,
    closing_deadlines: BTreeSet<(Duration, Proc, ConnectionId)>,
    pending_deadlines: BTreeSet<(Duration, u64, Proc, ConnectionId, String)>,
    next_seq: u64,
    registered: u64,
    rejected: u64,
    disconnects: BTreeMap<DisconnectPath, u64>,
    codes: BTreeMap<u16, u64>,
    max_open: usize,
    /// A fleet's checks, and its worker hosts.
    fleet: Option<(FleetCheck, BTreeSet<String>)>,
    /// What a fleet's chat clients hear.
    hearing: Option<HearingCheck>,
    weather: Weather,
}

fn violation<T>(at: Duration, conn: Option<ConnectionId>, message: String) -> Result<T, Violation> {
    Err(Violation { at, conn, message })
}

impl Checker {
    pub fn new(limits: Limits) -> Self {
        Checker {
            limits,
            procs: BTreeMap::new(),
            restarts: BTreeMap::new(),
            dead_hosts: BTreeSet::new(),
            closing_deadlines: BTreeSet::new(),
            pending_deadlines: BTreeSet::new(),
            next_seq: 0,
            registered: 0,
            rejected: 0,
            disconnects: BTreeMap::new(),
            codes: BTreeMap::new(),
            max_open: 0,
            fleet: None,
            hearing: None,
            weather: Weather::default(),
        }
    }

    /// Also checks a fleet whose chat workers run on `workers` (host names).
    pub fn with_fleet(mut self, limits: FleetLimits, workers: impl IntoIterator<Item = String>) -> Self {
        let workers: BTreeSet<String> = workers.into_iter().collect();
        self.fleet = Some((FleetCheck::new(limits).with_workers(workers.iter().cloned()), workers));
        self.hearing = Some(HearingCheck::new(crate::run::PREFIX));
        self
    }

    /// The fleet's workers keep everything in the store (see [`FleetCheck::with_store`]).
    pub fn with_store(mut self) -> Self {
        if let Some((fleet, workers)) = self.fleet.take() {
            self.fleet = Some((fleet.with_store(true), workers));
        }
        self.hearing = self.hearing.take().map(HearingCheck::with_store);
        self
    }

    fn live(&self) -> impl Iterator<Item = &ProcState> {
        self.procs.iter().filter(|(p, _)| !self.is_dead(p)).map(|(_, s)| s)
    }

    fn is_dead(&self, proc: &Proc) -> bool {
        proc.incarnation < self.restarts.get(&*proc.host).copied().unwrap_or(0)
    }

    /// Open connections of the live gateway processes.
    pub fn open(&self) -> usize {
        self.live().map(|s| s.open.len()).sum()
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
        let (mut open, mut closing, mut pending) = (0, 0, 0);
        for s in self.live() {
            open += s.open.len();
            closing += s.closing;
            pending += s.pending;
        }
        Sample { at, open, closing, pending }
    }

    /// Deadline checks at time `at`: nothing closing or pending past its timeout.
    pub fn check_time(&self, at: Duration) -> Result<(), Violation> {
        let late = |deadline: Duration| deadline + self.limits.tolerance < at;
        if let Some((deadline, proc, conn)) = self.closing_deadlines.first()
            && late(*deadline)
        {
            let since = *deadline - self.limits.close_timeout;
            return violation(
                at,
                Some(*conn),
                format!("{proc}: closing since {} and past the close timeout", Secs(since)),
            );
        }
        if let Some((deadline, _, proc, conn, request_id)) = self.pending_deadlines.first()
            && late(*deadline)
        {
            return violation(
                at,
                Some(*conn),
                format!("{proc}: request {request_id} pending past the request timeout"),
            );
        }
        if let Some(hearing) = &self.hearing {
            hearing.check_time(at)?;
        }
        match &self.fleet {
            Some((fleet, _)) => fleet.check_time(at),
            None => Ok(()),
        }
    }

    /// Feeds one record; checks every invariant after it.
    pub fn observe(&mut self, record: &Record) -> Result<(), Violation> {
        self.check_time(record.at)?;
        match (&record.source, &record.body) {
            (Source::Sim, Body::Note(note)) => {
                self.weather.note(record.at, note);
                if let Some((fleet, _)) = &mut self.fleet {
                    fleet.note(record.at, note);
                }
                if let Some(hearing) = &mut self.hearing {
                    hearing.note(note);
                }
                if let Some(host) = note.strip_suffix(" restarted") {
                    // A killed host that is restarted only starts: no process ends.
                    if !self.dead_hosts.remove(host) {
                        self.ended(record.at, host);
                    }
                } else if let Some(host) = note.strip_suffix(" killed")
                    && self.dead_hosts.insert(host.to_owned())
                {
                    self.ended(record.at, host);
                }
                Ok(())
            }
            (Source::Gateway { proc, shard }, Body::Gateway { conn, kind }) => {
                self.gateway_event(record.at, proc, *shard, *conn, kind)?;
                if let (
                    Some(hearing),
                    Some(conn),
                    EventKind::CloseSent { .. } | EventKind::Disconnected { .. },
                ) = (&mut self.hearing, conn, kind)
                {
                    hearing.closing(*conn);
                }
                match (&mut self.fleet, conn) {
                    (Some((fleet, _)), Some(conn)) => fleet.gateway_event(record.at, proc, *conn, kind),
                    _ => Ok(()),
                }
            }
            (Source::Worker(proc), Body::Worker(event)) => {
                self.alive(record.at, proc, None)?;
                if let (Some(hearing), clientmq_chat::worker::WorkerEvent::Fact(fact)) =
                    (&mut self.hearing, event)
                {
                    hearing.fact(record.at, fact)?;
                }
                match &mut self.fleet {
                    Some((fleet, _)) => fleet.worker_event(record.at, &proc.host, event),
                    None => Ok(()),
                }
            }
            (Source::Client(client), Body::Seen { conn, seen }) => match &mut self.hearing {
                Some(hearing) => hearing.seen(record.at, client, *conn, seen),
                None => Ok(()),
            },
            (_, Body::Published { subject, digest, .. }) => {
                if let Some(hearing) = &mut self.hearing {
                    hearing.published(record.at, subject, *digest, &self.weather);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A host's process died (and perhaps a new one starts): the old gateway's connections, close
    /// deadlines and pending requests died with it; a worker's state too.
    fn ended(&mut self, at: Duration, host: &str) {
        let ended = self.restarts.entry(host.to_owned()).or_default();
        let dead = Proc::new(host, *ended);
        *ended += 1;
        if let Some((fleet, workers)) = &mut self.fleet
            && workers.contains(host)
        {
            fleet.worker_died(at, host);
            return;
        }
        let Some(state) = self.procs.get_mut(&dead) else { return };
        if let Some((fleet, _)) = &mut self.fleet {
            fleet.gateway_died(at, state.open.keys().copied());
        }
        for (id, conn) in std::mem::take(&mut state.open) {
            if let Some(deadline) = conn.closing {
                self.closing_deadlines.remove(&(deadline, dead.clone(), id));
            }
            for (request_id, deadlines) in conn.pending {
                for (deadline, seq) in deadlines {
                    self.pending_deadlines.remove(&(deadline, seq, dead.clone(), id, request_id.clone()));
                }
            }
        }
        state.per_shard.clear();
        state.closing = 0;
        state.pending = 0;
    }

    /// A record of `proc` must come from its host's running process.
    fn alive(&self, at: Duration, proc: &Proc, conn: Option<ConnectionId>) -> Result<(), Violation> {
        let restarts = self.restarts.get(&*proc.host).copied().unwrap_or(0);
        if proc.incarnation != restarts {
            let when = if proc.incarnation < restarts { "after it died" } else { "before it started" };
            return violation(at, conn, format!("{proc}: an event {when}"));
        }
        Ok(())
    }

    fn gateway_event(
        &mut self,
        at: Duration,
        proc: &Proc,
        shard: Option<u16>,
        conn: Option<ConnectionId>,
        kind: &EventKind,
    ) -> Result<(), Violation> {
        self.alive(at, proc, conn)?;
        let limits = self.limits;
        if !self.procs.contains_key(proc) {
            self.procs.insert(proc.clone(), ProcState::default());
        }
        let state = self.procs.get_mut(proc).expect("just ensured");
        let fail = |message: String| violation(at, conn, format!("{proc}: {message}"));
        match kind {
            EventKind::Opened { open, .. } => {
                let Some(id) = conn else { return fail("opened without an id".into()) };
                if state.open.contains_key(&id) || state.ended.contains(&id) {
                    return fail("registered twice".into());
                }
                state.open.insert(id, Conn { shard, ..Conn::default() });
                *state.per_shard.entry(shard).or_default() += 1;
                self.registered += 1;
                let total = state.open.len();
                self.max_open = self.max_open.max(total);
                check_count(state, shard, *open).or_else(&fail)?;
                if total > limits.max_connections {
                    return fail(format!("open {total} is above the limit {}", limits.max_connections));
                }
            }
            EventKind::Rejected { code, open } => {
                self.rejected += 1;
                if *code == clientmq_core::close::CONCURRENCY_LIMIT.code {
                    // A limit refusal is judged against the whole gateway (every shard plus
                    // admissions in flight), which the trace cannot see the in-flight part of:
                    // the judged count must reach the limit and cannot be below what is open.
                    let open_now = state.open.len();
                    if *open < limits.max_connections || *open < open_now {
                        return fail(format!(
                            "refused with 1013 while only {open} of {} were open ({open_now} registered)",
                            limits.max_connections
                        ));
                    }
                }
            }
            EventKind::Disconnected { path, code, open } => {
                let Some(id) = conn else { return fail("disconnected without an id".into()) };
                if state.ended.contains(&id) {
                    return fail("disconnected twice".into());
                }
                let Some(ended) = state.open.remove(&id) else {
                    return fail("disconnected but never registered".into());
                };
                state.ended.insert(id);
                if let Some(n) = state.per_shard.get_mut(&ended.shard) {
                    *n -= 1;
                }
                *self.disconnects.entry(*path).or_default() += 1;
                *self.codes.entry(*code).or_default() += 1;
                if let Some(deadline) = ended.closing {
                    state.closing -= 1;
                    self.closing_deadlines.remove(&(deadline, proc.clone(), id));
                }
                if ended.pending_count > 0 {
                    let ids: Vec<&str> = ended.pending.keys().map(String::as_str).collect();
                    return fail(format!("ended with requests still pending: {}", ids.join(",")));
                }
                check_count(state, ended.shard, *open).or_else(&fail)?;
            }
            EventKind::CloseSent { .. } => {
                let Some(id) = conn else { return fail("close without an id".into()) };
                let deadline = at + limits.close_timeout;
                let Some(c) = state.open.get_mut(&id) else {
                    return fail(format!("{kind} on a connection that is not registered"));
                };
                if c.closing.is_some() {
                    return fail("a second close on a closing connection".into());
                }
                c.closing = Some(deadline);
                state.closing += 1;
                self.closing_deadlines.insert((deadline, proc.clone(), id));
            }
            EventKind::Forwarded { request_id, .. } => {
                let Some(id) = conn else { return fail("forwarded without a connection".into()) };
                let Some(c) = state.open.get_mut(&id) else {
                    return fail(format!("{kind} for a connection that is not registered"));
                };
                let deadline = at + limits.request_timeout;
                let seq = self.next_seq;
                self.next_seq += 1;
                c.pending.entry(request_id.clone()).or_default().push_back((deadline, seq));
                c.pending_count += 1;
                state.pending += 1;
                self.pending_deadlines.insert((deadline, seq, proc.clone(), id, request_id.clone()));
            }
            EventKind::Answered { request_id, outcome, .. } => {
                let Some(id) = conn else { return fail("answered without a connection".into()) };
                let Some(c) = state.open.get_mut(&id) else {
                    return fail(format!("{kind} for a connection that is not registered"));
                };
                if c.closing.is_some() && *outcome != RequestOutcome::Undeliverable {
                    return fail(format!("an answer sent to a closing connection: {kind}"));
                }
                if *outcome == RequestOutcome::Refused {
                    return Ok(()); // never forwarded, so never pending
                }
                if let Some(deadlines) = c.pending.get_mut(request_id)
                    && let Some((deadline, seq)) = deadlines.pop_front()
                {
                    if deadlines.is_empty() {
                        c.pending.remove(request_id);
                    }
                    c.pending_count -= 1;
                    state.pending -= 1;
                    self.pending_deadlines.remove(&(deadline, seq, proc.clone(), id, request_id.clone()));
                }
            }
            EventKind::Delivered { .. } | EventKind::ServerRequestSent { .. } | EventKind::PingSent => {
                let Some(id) = conn else { return Ok(()) };
                match state.open.get(&id) {
                    None => return fail(format!("{kind} to a connection that is not registered")),
                    Some(c) if c.closing.is_some() => return fail(format!("{kind} to a closing connection")),
                    Some(_) => {}
                }
            }
            // Late and unknown inputs are what these events report: any id is fine.
            EventKind::Stray { .. } | EventKind::Dropped { .. } | EventKind::LateReply { .. } => {}
            _ => {
                if let Some(id) = conn
                    && !state.open.contains_key(&id)
                {
                    return fail(format!("{kind} about a connection that is not registered"));
                }
            }
        }
        Ok(())
    }
}

/// A shard's reported open count must equal what the trace shows registered and not yet
/// disconnected on that shard.
fn check_count(state: &ProcState, shard: Option<u16>, reported: usize) -> Result<(), String> {
    let counted = state.per_shard.get(&shard).copied().unwrap_or(0);
    if reported != counted {
        return Err(format!("gateway reports open={reported} but registered - disconnected = {counted}"));
    }
    Ok(())
}
