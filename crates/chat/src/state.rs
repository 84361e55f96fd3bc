//! The embedded backend as a synchronous state machine: sessions, connections, rooms, and the
//! timers that end detached sessions and forget idle rooms. No I/O, no clock: callers pass `now`,
//! and drain the events and subscription changes it produced with [`ChatState::take_outgoing`].
//!
//! Every change to which connection hears a room is decided here and emitted as
//! [`Outgoing::Subscription`], in order with the events: a connection is subscribed to a room
//! when its session joins it (and to the conversation when it subscribes to it), to all of its
//! session's rooms when it binds to a session that has some (resume, takeover), and unsubscribed
//! from a room whenever its session stops being a member there or stops being its session (Bye,
//! LeaveRoom, takeover, authenticating as another session). A session without a connection has
//! nothing subscribed: the gateway dropped it when the connection ended.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use clientmq_core::edge_auth::Claims;
use clientmq_core::proto::{chat, pcast};
use clientmq_core::{ConnectionId, Reply, Topic};
use prost::Message;
use rand::rngs::StdRng;

use crate::config::ChatConfig;
use crate::wire::{self, Limits, Outgoing, reason, status};

/// Connection ids remembered after they end, so a request that raced past its connection's end
/// cannot bind a session to a connection that is already gone.
const ENDED_MEMORY: usize = 4096;
const SESSION_ID_LEN: usize = 32;
pub(super) const ROOM_ID_LEN: usize = 24;

#[derive(Debug)]
pub(super) struct Session {
    /// The connection it is attached to; `None` while in its grace period.
    pub conn: Option<ConnectionId>,
    pub rooms: BTreeSet<String>,
    /// The rooms whose conversation it subscribed to (a subset of `rooms`), so that a connection
    /// that resumes it is subscribed to them again.
    pub conversations: BTreeSet<String>,
    /// When it ends unless a connection resumes it.
    pub expires: Option<Instant>,
}

#[derive(Debug)]
pub(super) struct Room {
    /// `room_id` is always set.
    pub info: chat::Room,
    pub members: BTreeMap<String, chat::Member>,
    /// A broadcast room (created as a channel or town hall): its audience is not announced or
    /// listed, or every join would cost a frame to every member (see [`Room::announced`]).
    pub quiet_audience: bool,
    pub history: VecDeque<chat::ChatMessage>,
    /// When it is forgotten if still empty.
    pub idle_until: Option<Instant>,
}

impl Room {
    /// Whether the other members hear of `member` (its joins, changes and departure) and see it
    /// in member lists: everyone but the audience of a broadcast room.
    pub fn announced(&self, member: &chat::Member) -> bool {
        announced(self.quiet_audience, member)
    }

    /// The members others see, in session order.
    pub fn listed(&self) -> Vec<chat::Member> {
        self.members.values().filter(|m| self.announced(m)).cloned().collect()
    }
}

/// Whether the other members of a room hear of `member` and see it listed: everyone but the
/// audience of a broadcast room (`quiet_audience`).
pub(crate) fn announced(quiet_audience: bool, member: &chat::Member) -> bool {
    !(quiet_audience && member.role == chat::MemberRole::Audience as i32)
}

/// The event that tells a room's other members of a change to `member`: it arrived (`before`
/// none), changed, or left (`after` none), as they see it. A member that becomes announced (an
/// audience member made presenter) joins, one that stops being announced leaves, an unannounced
/// one is not heard of.
pub(crate) fn announcement<'a>(
    quiet_audience: bool,
    before: Option<&'a chat::Member>,
    after: Option<&'a chat::Member>,
) -> Option<(chat::RoomEventType, &'a chat::Member)> {
    let before = before.filter(|m| announced(quiet_audience, m));
    let after = after.filter(|m| announced(quiet_audience, m));
    match (before, after) {
        (None, Some(m)) => Some((chat::RoomEventType::MemberJoined, m)),
        (Some(_), Some(m)) => Some((chat::RoomEventType::MemberUpdated, m)),
        (Some(m), None) => Some((chat::RoomEventType::MemberLeft, m)),
        (None, None) => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Deadline {
    Session(String),
    Room(String),
}

/// Counts of what the backend holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatStats {
    pub sessions: usize,
    /// Sessions in their grace period, without a connection.
    pub detached: usize,
    /// Connections bound to a session.
    pub connections: usize,
    pub rooms: usize,
    /// Memberships over all rooms.
    pub members: usize,
    pub messages: usize,
}

/// A broken internal invariant, found by [`ChatState::check_invariants`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatInvariant {
    #[error("connection {0} and its session disagree")]
    Binding(ConnectionId),
    #[error("session {session} and room {room} disagree on membership")]
    Membership { session: String, room: String },
    #[error("session {session} subscribed to the conversation of {room} without being a member")]
    Conversation { session: String, room: String },
    #[error("alias {0} and its room disagree")]
    Alias(String),
    #[error("timers disagree with sessions and rooms")]
    Timers,
    #[error("a bound is exceeded: {0}")]
    Bound(&'static str),
}

/// Sessions and chat rooms in memory. See the module doc.
pub struct ChatState {
    pub(super) config: ChatConfig,
    pub(super) limits: Limits,
    pub(super) rng: StdRng,
    epoch: Instant,
    pub(super) now: Instant,
    pub(super) sessions: BTreeMap<String, Session>,
    pub(super) conns: BTreeMap<ConnectionId, String>,
    ended: VecDeque<ConnectionId>,
    ended_set: BTreeSet<ConnectionId>,
    pub(super) rooms: BTreeMap<String, Room>,
    pub(super) aliases: BTreeMap<String, String>,
    pub(super) deadlines: BTreeSet<(Instant, Deadline)>,
    pub(super) outbox: Vec<Outgoing>,
    pub(super) next_message: u64,
    /// Which connection holds which session, as it changes (kept only when asked for).
    journal: Option<Vec<Fact>>,
}

/// A change of which connection holds which session: what a simulator checks across a fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    Bound {
        conn: ConnectionId,
        session: String,
    },
    Unbound {
        conn: ConnectionId,
        session: String,
    },
    /// The session is over (Bye, or its grace period ran out): its member left every room.
    Ended {
        session: String,
    },
    /// The session now hears a room's events (it joined) or its conversation (it subscribed).
    Hears {
        session: String,
        topic: Topic,
        room: String,
    },
    /// The session left a room: it hears neither its events nor its conversation.
    Left {
        session: String,
        room: String,
    },
}

impl std::fmt::Display for Fact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fact::Bound { conn, session } => write!(f, "bound {conn} session={session}"),
            Fact::Unbound { conn, session } => write!(f, "unbound {conn} session={session}"),
            Fact::Ended { session } => write!(f, "session-ended session={session}"),
            Fact::Hears { session, topic, room } => {
                write!(f, "hears {} room={room} session={session}", topic.label())
            }
            Fact::Left { session, room } => write!(f, "left room={room} session={session}"),
        }
    }
}

/// Decodes a request, calls `f` with it, and encodes its answer as `<type>Response`.
fn respond<Req: Message + Default, Resp: Message>(
    request_type: &str,
    payload: &[u8],
    f: impl FnOnce(Req) -> Resp,
) -> Reply {
    match Req::decode(payload) {
        Ok(req) => wire::reply(request_type, &f(req)),
        Err(_) => wire::error(reason::MALFORMED),
    }
}

impl ChatState {
    /// An empty backend; `now` is its time zero (for wire timestamps).
    pub fn new(config: ChatConfig, rng: StdRng, now: Instant) -> Self {
        let limits = Limits { field_bytes: config.max_field_bytes, list_len: config.max_list_len };
        ChatState {
            config,
            limits,
            rng,
            epoch: now,
            now,
            sessions: BTreeMap::new(),
            conns: BTreeMap::new(),
            ended: VecDeque::new(),
            ended_set: BTreeSet::new(),
            rooms: BTreeMap::new(),
            aliases: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            outbox: Vec::new(),
            next_message: 0,
            journal: None,
        }
    }

    /// Starts keeping [`Fact`]s, for [`ChatState::take_facts`].
    pub fn keep_facts(&mut self) {
        self.journal.get_or_insert_with(Vec::new);
    }

    /// The facts since the last call, in order.
    pub fn take_facts(&mut self) -> Vec<Fact> {
        self.journal.as_mut().map(std::mem::take).unwrap_or_default()
    }

    pub(super) fn note(&mut self, fact: Fact) {
        if let Some(journal) = &mut self.journal {
            journal.push(fact);
        }
    }

    pub fn config(&self) -> &ChatConfig {
        &self.config
    }

    /// Time that goes backwards is ignored.
    fn advance(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// Milliseconds since the Unix epoch, from the configured start and elapsed time.
    pub(super) fn now_ms(&self) -> u64 {
        let elapsed = self.now.saturating_duration_since(self.epoch).as_millis();
        self.config.wall_clock_start_ms.saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX))
    }

    /// Answers one client request of connection `conn`. `claims` are those of the verified
    /// digest token of a `pcast.Authenticate` (the gateway checked the token itself).
    pub fn handle(
        &mut self,
        conn: ConnectionId,
        request_type: &str,
        payload: &[u8],
        claims: Option<&Claims>,
        now: Instant,
    ) -> Reply {
        self.advance(now);
        if request_type == "pcast.Authenticate" {
            return respond(request_type, payload, |auth| self.authenticate(conn, auth, claims));
        }
        let Some(session) = self.conns.get(&conn).cloned() else {
            return wire::error(reason::UNAUTHORIZED);
        };
        let s = session.as_str();
        match request_type {
            "pcast.Bye" => respond(request_type, payload, |_: pcast::Bye| self.bye(s)),
            "chat.CreateRoom" => respond(request_type, payload, |r| self.create_room(s, r)),
            "chat.GetRoomInfo" => respond(request_type, payload, |r| self.get_room_info(r)),
            "chat.JoinRoom" => respond(request_type, payload, |r| self.join_room(s, r)),
            "chat.LeaveRoom" => respond(request_type, payload, |r| self.leave_room(s, r)),
            "chat.UpdateMember" => respond(request_type, payload, |r| self.update_member(s, r)),
            "chat.UpdateRoom" => respond(request_type, payload, |r| self.update_room(s, r)),
            "chat.SendMessageToRoom" => respond(request_type, payload, |r| self.send_message(s, r)),
            "chat.FetchRoomConversation" => respond(request_type, payload, |r| self.fetch_conversation(s, r)),
            _ => wire::error(reason::UNSUPPORTED),
        }
    }

    /// The events and subscription changes produced since the last call, in order.
    pub fn take_outgoing(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.outbox)
    }

    fn authenticate(
        &mut self,
        conn: ConnectionId,
        auth: pcast::Authenticate,
        claims: Option<&Claims>,
    ) -> pcast::AuthenticateResponse {
        let refuse =
            |status: &str| pcast::AuthenticateResponse { status: status.to_owned(), ..Default::default() };
        // A request that raced past its connection's end must not bind anything to it.
        if self.ended_set.contains(&conn) {
            return refuse(status::UNAUTHORIZED);
        }
        let resumed = auth.session_id.filter(|id| self.sessions.contains_key(id));
        // A token minted for one session resumes that session or nothing: the gateway checked it
        // is the one asked for; here, that it still exists.
        if claims.is_some_and(|c| c.session_id.is_some()) && resumed.is_none() {
            return refuse(status::UNAUTHORIZED);
        }
        let id = match resumed {
            Some(id) => id,
            None if self.sessions.len() >= self.config.max_sessions => return refuse(status::CAPACITY),
            None => {
                let id = loop {
                    let id = wire::random_id(&mut self.rng, SESSION_ID_LEN);
                    if !self.sessions.contains_key(&id) {
                        break id;
                    }
                };
                let session = Session {
                    conn: None,
                    rooms: BTreeSet::new(),
                    conversations: BTreeSet::new(),
                    expires: None,
                };
                self.sessions.insert(id.clone(), session);
                id
            }
        };
        self.bind(conn, &id);
        pcast::AuthenticateResponse {
            status: status::OK.to_owned(),
            session_id: Some(id),
            redirect: None,
            roles: Vec::new(),
        }
    }

    /// Attaches `conn` to session `id`. A connection holds one session and a session one
    /// connection: the newest wins, and what it replaced is detached (or just unbound). The
    /// gateway's tables move with the binding: whoever lost the session stops hearing its rooms,
    /// `conn` starts hearing them without having to join again.
    fn bind(&mut self, conn: ConnectionId, id: &str) {
        if let Some(old) = self.conns.get(&conn).cloned() {
            if old == id {
                return; // authenticating again as itself changes nothing
            }
            self.conns.remove(&conn);
            self.note(Fact::Unbound { conn, session: old.clone() });
            self.emit_subscriptions(conn, &old, false);
            self.detach(&old);
        }
        let session = self.sessions.get_mut(id).expect("caller checked");
        let previous = session.conn.replace(conn);
        if let Some(at) = session.expires.take() {
            self.deadlines.remove(&(at, Deadline::Session(id.to_owned())));
        }
        if let Some(previous) = previous {
            // Taken over, typically by a reconnect the server noticed before the old socket's end.
            self.conns.remove(&previous);
            self.note(Fact::Unbound { conn: previous, session: id.to_owned() });
            self.emit_subscriptions(previous, id, false);
        }
        self.conns.insert(conn, id.to_owned());
        self.note(Fact::Bound { conn, session: id.to_owned() });
        self.emit_subscriptions(conn, id, true);
    }

    /// Subscribes `conn` to every room of session `id` and to the conversations it subscribed
    /// to, or unsubscribes it from every room and conversation of the session.
    fn emit_subscriptions(&mut self, conn: ConnectionId, id: &str, subscribe: bool) {
        let Some(session) = self.sessions.get(id) else { return };
        for room in &session.rooms {
            if !subscribe {
                self.outbox.extend(wire::unsubscribe(conn, room));
                continue;
            }
            self.outbox.push(wire::subscription(conn, Topic::Room, room, true));
            if session.conversations.contains(room) {
                self.outbox.push(wire::subscription(conn, Topic::Conversation, room, true));
            }
        }
    }

    /// Starts the grace period of a session that lost its connection.
    fn detach(&mut self, id: &str) {
        let expires = self.now + self.config.session_grace;
        if let Some(session) = self.sessions.get_mut(id) {
            session.conn = None;
            if session.expires.is_none() {
                session.expires = Some(expires);
                self.deadlines.insert((expires, Deadline::Session(id.to_owned())));
            }
        }
    }

    fn bye(&mut self, session: &str) -> pcast::ByeResponse {
        self.end_session(session);
        pcast::ByeResponse { status: status::OK.to_owned() }
    }

    /// Ends a session: its member leaves every room (its connection, if any, is unsubscribed
    /// and the others get MemberLeft) and its connection is unbound (later requests on it are
    /// unauthorized).
    fn end_session(&mut self, id: &str) {
        let Some(session) = self.sessions.get(id) else { return };
        let rooms: Vec<String> = session.rooms.iter().cloned().collect();
        for room in &rooms {
            self.remove_member(id, room);
        }
        let session = self.sessions.remove(id).expect("just seen");
        if let Some(at) = session.expires {
            self.deadlines.remove(&(at, Deadline::Session(id.to_owned())));
        }
        if let Some(conn) = session.conn {
            self.conns.remove(&conn);
            self.note(Fact::Unbound { conn, session: id.to_owned() });
        }
        self.note(Fact::Ended { session: id.to_owned() });
    }

    /// A connection ended (`pcast.ConnectionDisconnected`): its session's grace period starts.
    pub fn disconnected(&mut self, conn: ConnectionId, now: Instant) {
        self.advance(now);
        if self.ended_set.insert(conn) {
            self.ended.push_back(conn);
            if self.ended.len() > ENDED_MEMORY
                && let Some(old) = self.ended.pop_front()
            {
                self.ended_set.remove(&old);
            }
        }
        if let Some(id) = self.conns.remove(&conn) {
            self.note(Fact::Unbound { conn, session: id.clone() });
            self.detach(&id);
        }
    }

    /// When [`ChatState::expire`] has work next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Ends the sessions whose grace period is over and forgets rooms idle for too long.
    pub fn expire(&mut self, now: Instant) {
        self.advance(now);
        while let Some((at, _)) = self.deadlines.first()
            && *at <= self.now
        {
            let (_, deadline) = self.deadlines.pop_first().expect("just seen");
            match deadline {
                Deadline::Session(id) => {
                    tracing::debug!(session = %id, "session grace period over");
                    self.end_session(&id);
                }
                Deadline::Room(id) => {
                    if let Some(room) = self.rooms.remove(&id) {
                        debug_assert!(room.members.is_empty());
                        if let Some(alias) = room.info.alias {
                            self.aliases.remove(&alias);
                        }
                    }
                }
            }
        }
    }

    pub fn stats(&self) -> ChatStats {
        ChatStats {
            sessions: self.sessions.len(),
            detached: self.sessions.values().filter(|s| s.conn.is_none()).count(),
            connections: self.conns.len(),
            rooms: self.rooms.len(),
            members: self.rooms.values().map(|r| r.members.len()).sum(),
            messages: self.rooms.values().map(|r| r.history.len()).sum(),
        }
    }

    /// A gateway back from an absence lost what it was told meanwhile: `conn`, if it still
    /// holds `session`, is told again every room and conversation it hears; if the session
    /// moved away from it, to stop hearing them.
    pub fn resubscribe(&mut self, conn: ConnectionId, session: &str) {
        let holds = self.session_of(&conn) == Some(session);
        self.emit_subscriptions(conn, session, holds);
    }

    /// The session a connection is bound to.
    pub fn session_of(&self, conn: &ConnectionId) -> Option<&str> {
        self.conns.get(conn).map(String::as_str)
    }

    /// Session ids of a room's members, in order.
    pub fn members(&self, room_id: &str) -> Vec<String> {
        self.rooms.get(room_id).map(|r| r.members.keys().cloned().collect()).unwrap_or_default()
    }

    /// Checks that sessions, connections, rooms, aliases and timers agree and bounds hold.
    pub fn check_invariants(&self) -> Result<(), ChatInvariant> {
        for (conn, id) in &self.conns {
            if self.sessions.get(id).is_none_or(|s| s.conn != Some(*conn)) {
                return Err(ChatInvariant::Binding(*conn));
            }
        }
        let mut timers = 0;
        for (id, s) in &self.sessions {
            if let Some(conn) = s.conn
                && self.conns.get(&conn) != Some(id)
            {
                return Err(ChatInvariant::Binding(conn));
            }
            if s.conn.is_some() == s.expires.is_some() {
                return Err(ChatInvariant::Timers);
            }
            if let Some(at) = s.expires {
                timers += 1;
                if !self.deadlines.contains(&(at, Deadline::Session(id.clone()))) {
                    return Err(ChatInvariant::Timers);
                }
            }
            if s.rooms.len() > self.config.max_rooms_per_session {
                return Err(ChatInvariant::Bound("rooms per session"));
            }
            for room in &s.rooms {
                if self.rooms.get(room).is_none_or(|r| !r.members.contains_key(id)) {
                    return Err(ChatInvariant::Membership { session: id.clone(), room: room.clone() });
                }
            }
            if let Some(room) = s.conversations.difference(&s.rooms).next() {
                return Err(ChatInvariant::Conversation { session: id.clone(), room: room.clone() });
            }
        }
        for (id, room) in &self.rooms {
            for member in room.members.keys() {
                if self.sessions.get(member).is_none_or(|s| !s.rooms.contains(id)) {
                    return Err(ChatInvariant::Membership { session: member.clone(), room: id.clone() });
                }
            }
            if room.members.is_empty() != room.idle_until.is_some() {
                return Err(ChatInvariant::Timers);
            }
            if let Some(at) = room.idle_until {
                timers += 1;
                if !self.deadlines.contains(&(at, Deadline::Room(id.clone()))) {
                    return Err(ChatInvariant::Timers);
                }
            }
            if let Some(alias) = &room.info.alias
                && self.aliases.get(alias) != Some(id)
            {
                return Err(ChatInvariant::Alias(alias.clone()));
            }
            if room.members.len() > self.config.max_members_per_room {
                return Err(ChatInvariant::Bound("members per room"));
            }
            if room.history.len() > self.config.max_history {
                return Err(ChatInvariant::Bound("history"));
            }
        }
        for (alias, id) in &self.aliases {
            if self.rooms.get(id).is_none_or(|r| r.info.alias.as_deref() != Some(alias)) {
                return Err(ChatInvariant::Alias(alias.clone()));
            }
        }
        if timers != self.deadlines.len() {
            return Err(ChatInvariant::Timers);
        }
        if self.sessions.len() > self.config.max_sessions {
            return Err(ChatInvariant::Bound("sessions"));
        }
        if self.rooms.len() > self.config.max_rooms {
            return Err(ChatInvariant::Bound("rooms"));
        }
        Ok(())
    }
}
