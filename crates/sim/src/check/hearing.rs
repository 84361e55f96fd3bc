//! What chat clients hear, held to what the bus carried and what their sessions asked for:
//!
//! - **At most once.** A connection hears an event no more often than the broker routed it
//!   (every copy of an event is matched to its publication by a digest of type and payload).
//! - **Only what was asked.** A connection hears a room's events, or its conversation, only
//!   while its session has asked for them (from the join, or subscribing fetch, it sent until
//!   its leave was answered).
//! - **Everything that was asked.** An event published to a room at least [`SURE_AFTER`]
//!   after a connection knew it hears that room (its join or fetch answered `ok`, or its session
//!   resumed on it) reaches that connection within [`DELIVER_WITHIN`] (plus the latency set on
//!   its links), unless the connection ends, leaves, loses its session, or its path (its
//!   client group, its gateway, the bus) is cut off or restarted in between
//!   ([`Weather`]). A connection open while its client group was partitioned is owed nothing
//!   more: the simulated network drops the segments a partition catches and never resends
//!   them, so its stream may be dead until the gateway's heartbeat ends it. So a reply that overtakes the subscription it promised, a room reader
//!   dropped while members remain, or a subscription not restored after a reconnect, fails.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clientmq_bus::contract::Subjects;
use clientmq_chat::Fact;
use clientmq_core::event::Secs;
use clientmq_core::{ConnectionId, Topic};

use super::weather::Weather;
use super::{Violation, violation};
use crate::trace::{Change, Digest, Heard, Seen};

/// How long after a connection knew it hears a room the room's events must reach it: the
/// gateway's subscription travels to the bus in at most one hop (100 ms) after the answer left.
pub const SURE_AFTER: Duration = Duration::from_millis(150);
/// How long an event may take from the broker to a client: two hops and the gateway's queue.
pub const DELIVER_WITHIN: Duration = Duration::from_secs(3);

/// A client's connection: client name and its number.
type ListenerId = (String, u32);
type Subject = (Topic, String);

#[derive(Debug, Clone, Default)]
struct Listener {
    gateway: String,
    group: String,
    session: Option<String>,
    /// Since when it holds its session for sure (its authentication was answered); `None` while
    /// it does not (not yet, or the worker unbound it).
    holds_since: Option<Duration>,
    /// A partition of its group may have cut its stream for good (see the module's doc).
    cut: bool,
    heard: BTreeMap<Digest, u32>,
}

#[derive(Debug, Clone)]
struct Due {
    deadline: Duration,
    listener: ListenerId,
    subject: Subject,
    digest: Digest,
    published: Duration,
}

#[derive(Debug, Clone)]
pub struct HearingCheck {
    subjects: Subjects,
    listeners: BTreeMap<ListenerId, Listener>,
    /// What each session asked to hear, and since when for sure (its answer came).
    wants: BTreeMap<String, BTreeMap<Subject, Option<Duration>>>,
    published: BTreeMap<Digest, u32>,
    /// Which gateway connection holds each session, by the worker's facts, both ways.
    conn_session: BTreeMap<ConnectionId, String>,
    session_conn: BTreeMap<String, ConnectionId>,
    /// Connections their gateway is closing (or closed).
    closing: BTreeSet<ConnectionId>,
    due: BTreeSet<(Duration, u64)>,
    dues: BTreeMap<u64, Due>,
    next_due: u64,
    /// On the store: a session's member leaves a room only once the session asked to, or once
    /// the session is over (its key is deleted before its rooms are left). The sessions over.
    store: Option<BTreeSet<String>>,
}

impl HearingCheck {
    pub fn new(prefix: &str) -> Self {
        HearingCheck {
            subjects: Subjects::new(prefix),
            listeners: BTreeMap::new(),
            wants: BTreeMap::new(),
            published: BTreeMap::new(),
            conn_session: BTreeMap::new(),
            session_conn: BTreeMap::new(),
            closing: BTreeSet::new(),
            due: BTreeSet::new(),
            dues: BTreeMap::new(),
            next_due: 0,
            store: None,
        }
    }

    /// The fleet keeps its state in the store (see the `store` field).
    pub fn with_store(mut self) -> Self {
        self.store = Some(BTreeSet::new());
        self
    }

    pub fn check_time(&self, at: Duration) -> Result<(), Violation> {
        if let Some((deadline, n)) = self.due.first()
            && *deadline < at
        {
            let d = &self.dues[n];
            let (client, conn) = &d.listener;
            return violation(
                at,
                None,
                format!(
                    "client {client}/{conn} did not hear {} {} of room {} published at {}",
                    d.subject.0.label(),
                    d.digest,
                    d.subject.1,
                    Secs(d.published)
                ),
            );
        }
        Ok(())
    }

    /// The broker routed an event on `subject`: every listener sure to hear it must.
    pub fn published(&mut self, at: Duration, subject: &str, digest: Digest, weather: &Weather) {
        let Some(subject) = self.subjects.parse_room(subject) else { return };
        *self.published.entry(digest).or_default() += 1;
        let mut new = Vec::new();
        for (id, l) in &self.listeners {
            let (Some(session), Some(holds), false) = (&l.session, l.holds_since, l.cut) else { continue };
            let Some(Some(asked)) = self.wants.get(session).and_then(|w| w.get(&subject)) else { continue };
            let Some(calm) = weather.calm_from([l.gateway.as_str(), l.group.as_str()]) else { continue };
            if holds.max(*asked).max(calm) + SURE_AFTER <= at {
                let deadline = at + DELIVER_WITHIN + weather.latency(&l.group);
                let listener = id.clone();
                new.push(Due { deadline, listener, subject: subject.clone(), digest, published: at });
            }
        }
        for due in new {
            self.due.insert((due.deadline, self.next_due));
            self.dues.insert(self.next_due, due);
            self.next_due += 1;
        }
    }

    pub fn seen(&mut self, at: Duration, client: &str, conn: u32, seen: &Seen) -> Result<(), Violation> {
        let id = (client.to_owned(), conn);
        let fail = |message: String| violation(at, None, format!("client {client}/{conn}: {message}"));
        match seen {
            Seen::Connected { gateway } => {
                let group = client.rsplit_once('-').map_or(client, |(g, _)| g).to_owned();
                let l = Listener { gateway: gateway.clone(), group, ..Listener::default() };
                self.listeners.insert(id, l);
            }
            Seen::Resume(session) => {
                if let Some(l) = self.listeners.get_mut(&id) {
                    l.session = Some(session.clone());
                }
            }
            Seen::Session(session) => {
                // It holds the session now; any other connection of the session does not.
                let mut others = Vec::new();
                for (other, l) in &mut self.listeners {
                    if l.session.as_ref() == Some(session) && *other != id {
                        l.holds_since = None;
                        others.push(other.clone());
                    }
                }
                self.forget_dues(|d| others.contains(&d.listener));
                // Its gateway may have started closing it before the answer got here.
                let closing = self.session_conn.get(session).is_some_and(|c| self.closing.contains(c));
                if let Some(l) = self.listeners.get_mut(&id) {
                    l.session = Some(session.clone());
                    l.holds_since = (!closing).then_some(at);
                }
            }
            Seen::Asked(change) => {
                let Some(session) = self.session_of(&id) else { return Ok(()) };
                let wants = self.wants.entry(session).or_default();
                match change {
                    Change::Join(room) => {
                        wants.entry((Topic::Room, room.clone())).or_insert(None);
                    }
                    Change::Listen(room) => {
                        wants.entry((Topic::Conversation, room.clone())).or_insert(None);
                    }
                    Change::Leave(room) => {
                        // Still allowed (it may be on its way), no longer due.
                        for topic in [Topic::Room, Topic::Conversation] {
                            if let Some(since) = wants.get_mut(&(topic, room.clone())) {
                                *since = None;
                            }
                        }
                        let (room, same) = (room.clone(), self.connections_of_session_of(&id));
                        self.forget_dues(|d| d.subject.1 == room && same.contains(&d.listener));
                    }
                    Change::Bye => {
                        // Everything still allowed (it may be on its way), nothing due.
                        wants.values_mut().for_each(|since| *since = None);
                        let same = self.connections_of_session_of(&id);
                        self.forget_dues(|d| same.contains(&d.listener));
                    }
                }
            }
            Seen::Done(change) => {
                let Some(session) = self.session_of(&id) else { return Ok(()) };
                let wants = self.wants.entry(session).or_default();
                match change {
                    Change::Join(room) => {
                        wants.insert((Topic::Room, room.clone()), Some(at));
                    }
                    Change::Listen(room) => {
                        wants.insert((Topic::Conversation, room.clone()), Some(at));
                    }
                    Change::Leave(room) => {
                        wants.remove(&(Topic::Room, room.clone()));
                        wants.remove(&(Topic::Conversation, room.clone()));
                    }
                    Change::Bye => wants.clear(),
                }
            }
            Seen::Event(heard) => return self.heard(&id, heard).or_else(fail),
            Seen::Ended(_) => self.end(|l| l == &id),
        }
        Ok(())
    }

    /// Every connection of the session connection `id` is on (`id` included).
    fn connections_of_session_of(&self, id: &ListenerId) -> Vec<ListenerId> {
        let session = self.session_of(id);
        (self.listeners.iter()).filter(|(_, l)| l.session == session).map(|(id, _)| id.clone()).collect()
    }

    fn heard(&mut self, id: &ListenerId, h: &Heard) -> Result<(), String> {
        let published = self.published.get(&h.digest).copied().unwrap_or(0);
        let session = self.session_of(id);
        let Some(l) = self.listeners.get_mut(id) else { return Ok(()) };
        let n = l.heard.entry(h.digest).or_default();
        *n += 1;
        if *n > published {
            return Err(format!(
                "heard {} {} {} {} times; the bus carried it {published} times",
                h.topic.label(),
                h.what,
                h.digest,
                *n
            ));
        }
        let subject = (h.topic, h.room.clone());
        let asked =
            session.as_ref().and_then(|s| self.wants.get(s)).is_some_and(|w| w.contains_key(&subject));
        if !asked {
            return Err(format!(
                "heard {} {} {} of room {}, which its session {} did not ask to hear",
                h.topic.label(),
                h.what,
                h.digest,
                h.room,
                session.unwrap_or_default()
            ));
        }
        let digest = h.digest;
        self.forget_dues(|d| &d.listener == id && d.digest == digest);
        Ok(())
    }

    /// The gateway closes a connection: whoever holds its session is owed nothing more (a
    /// slow consumer's close may never reach it).
    pub fn closing(&mut self, conn: ConnectionId) {
        self.closing.insert(conn);
        let Some(session) = self.conn_session.get(&conn).cloned() else { return };
        let held: Vec<ListenerId> = (self.listeners.iter())
            .filter(|(_, l)| l.session.as_ref() == Some(&session) && l.holds_since.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        self.end(|id| held.contains(id));
    }

    /// A fact of the worker: a session that changes hands or ends is not sure to be heard.
    pub fn fact(&mut self, at: Duration, fact: &Fact) -> Result<(), Violation> {
        if let (Some(over), Fact::Left { session, room }) = (&self.store, fact) {
            let joined = self.wants.get(session).and_then(|w| w.get(&(Topic::Room, room.clone())));
            if joined.is_some_and(Option::is_some) && !over.contains(session) {
                return violation(
                    at,
                    None,
                    format!(
                        "session {session} left room {room}, which it did not ask to leave, while it lives"
                    ),
                );
            }
        }
        if let (Some(over), Fact::Ended { session }) = (&mut self.store, fact) {
            over.insert(session.clone());
        }
        self.unbind(fact);
        Ok(())
    }

    fn unbind(&mut self, fact: &Fact) {
        let session = match fact {
            Fact::Bound { conn, session } => {
                self.conn_session.insert(*conn, session.clone());
                self.session_conn.insert(session.clone(), *conn);
                return;
            }
            Fact::Unbound { conn, session } => {
                self.conn_session.remove(conn);
                if self.session_conn.get(session) == Some(conn) {
                    self.session_conn.remove(session);
                }
                session
            }
            Fact::Ended { session } => session,
            _ => return,
        };
        let mut dropped = Vec::new();
        for (id, l) in &mut self.listeners {
            if l.session.as_ref() == Some(session) {
                l.holds_since = None;
                dropped.push(id.clone());
            }
        }
        self.forget_dues(|d| dropped.contains(&d.listener));
    }

    /// A fault: the listeners it cuts off or ends forget what they were due.
    pub fn note(&mut self, note: &str) {
        let mut words = note.split(' ');
        let (Some(first), Some(second)) = (words.next(), words.next()) else { return };
        let on = |what: &str, of: fn(&Listener) -> &str| {
            self.listeners.iter().filter(|(_, l)| of(l) == what).map(|(id, _)| id.clone()).collect::<Vec<_>>()
        };
        match (first, second) {
            ("bus", "restarted") => self.forget_dues(|_| true),
            // A gateway's end ends its connections; a crashed client group's end its own.
            (host, "restarted" | "killed") => {
                let ended = on(host, |l| &l.gateway);
                self.end(|id| ended.contains(id));
            }
            ("crash", group) => {
                let ended = on(group, |l| &l.group);
                self.end(|id| ended.contains(id));
            }
            ("partition", group) => {
                let cut = on(group, |l| &l.group);
                for id in &cut {
                    self.listeners.get_mut(id).expect("listed above").cut = true;
                }
                self.forget_dues(|d| cut.contains(&d.listener));
            }
            ("hold" | "latency", group) => {
                let cut = on(group, |l| &l.group);
                self.forget_dues(|d| cut.contains(&d.listener));
            }
            ("partition-bus", host) => {
                let cut = on(host, |l| &l.gateway);
                self.forget_dues(|d| cut.contains(&d.listener));
            }
            _ => {}
        }
    }

    fn session_of(&self, id: &ListenerId) -> Option<String> {
        self.listeners.get(id).and_then(|l| l.session.clone())
    }

    /// Forgets the listeners `ended` picks, with what they were due (dues exist only for
    /// listeners still known).
    fn end(&mut self, ended: impl Fn(&ListenerId) -> bool) {
        self.listeners.retain(|id, _| !ended(id));
        self.forget_dues(|d| ended(&d.listener));
    }

    fn forget_dues(&mut self, which: impl Fn(&Due) -> bool) {
        let gone: Vec<u64> = self.dues.iter().filter(|(_, d)| which(d)).map(|(n, _)| *n).collect();
        for n in gone {
            self.forget(n);
        }
    }

    fn forget(&mut self, n: u64) {
        if let Some(d) = self.dues.remove(&n) {
            self.due.remove(&(d.deadline, n));
        }
    }
}
