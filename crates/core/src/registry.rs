//! The registry: the single source of truth for which connections exist. The open count is its
//! size; subscription tables live beside it and are cleaned by the same removal.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::time::Instant;

use crate::ConnectionId;
use crate::codec::Encoding;
use crate::config::CloseReason;
use crate::event::Topic;
use crate::gateway::Revision;

/// How many ended subscriptions' revisions a connection keeps (see
/// [`Registry::admit_revision`]).
pub const ENDED_SUBSCRIPTIONS_KEPT: usize = 32;

/// Per-connection protocol state (the seed adapter's bookkeeping for one socket).
#[derive(Debug)]
pub(crate) struct Connection {
    pub remote: IpAddr,
    pub encoding: Encoding,
    pub state: State,
    /// When the next heartbeat fires; `None` once closing.
    pub heartbeat_at: Option<Instant>,
    /// The unanswered ping: its sequence number and when it went out.
    pub ping: Option<(u64, Instant)>,
    pub ping_seq: u64,
    /// Tokens of client requests waiting on the backend.
    pub pending: BTreeSet<u64>,
    /// Numbers of server-initiated requests waiting on the client.
    pub server_requests: BTreeSet<u64>,
    pub rooms: BTreeSet<String>,
    pub conversations: BTreeSet<String>,
    /// The revision of the last change applied to each subscription (see
    /// [`Registry::admit_revision`]), kept a while after the subscription ends.
    pub revisions: BTreeMap<(Topic, String), (u64, u64)>,
    /// The newest binding of a change applied to it (see [`Registry::admit_revision`]).
    pub binding: u64,
    pub session_id: Option<String>,
    /// The room a verified token limits this connection's joins to.
    pub room_tag: Option<crate::edge_auth::RequiredTag>,
    /// When drain will close this connection.
    pub drain_at: Option<Instant>,
    /// Drain wants it closed as soon as its in-flight requests are answered.
    pub drain_due: bool,
    /// It flooded past a burst of refusals: closed 1008 as soon as the requests it had sent
    /// before are answered (or time out); until then its frames are dropped.
    pub flood_due: bool,
    /// The request rate's token bucket, in thousandths of a frame, and when it was last filled.
    pub bucket: (u64, Instant),
    /// Frames refused in a row for the rate.
    pub strikes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Open,
    /// The server sent a close frame and waits for the client's, until `deadline`.
    Closing {
        close: CloseReason,
        deadline: Instant,
    },
}

impl Connection {
    pub fn new(remote: IpAddr, heartbeat_at: Instant, now: Instant, burst: u32) -> Self {
        Connection {
            remote,
            encoding: Encoding::default(),
            state: State::Open,
            heartbeat_at: Some(heartbeat_at),
            ping: None,
            ping_seq: 0,
            pending: BTreeSet::new(),
            server_requests: BTreeSet::new(),
            rooms: BTreeSet::new(),
            conversations: BTreeSet::new(),
            revisions: BTreeMap::new(),
            binding: 0,
            session_id: None,
            room_tag: None,
            drain_at: None,
            drain_due: false,
            flood_due: false,
            bucket: (u64::from(burst) * 1000, now),
            strikes: 0,
        }
    }

    /// Takes one frame's token from the rate's bucket, refilled at `per_sec` frames a second up
    /// to `burst`; `false` when it is empty. Integer arithmetic, so a replay is exact.
    pub fn take_token(&mut self, now: Instant, per_sec: u32, burst: u32) -> bool {
        if per_sec == 0 {
            return true;
        }
        let (tokens, filled) = self.bucket;
        let ms = u64::try_from(now.saturating_duration_since(filled).as_millis()).unwrap_or(u64::MAX);
        let tokens =
            tokens.saturating_add(ms.saturating_mul(u64::from(per_sec))).min(u64::from(burst) * 1000);
        // Only whole milliseconds were counted; the rest carries over to the next fill.
        let filled = filled + std::time::Duration::from_millis(ms);
        match tokens.checked_sub(1000) {
            Some(left) => {
                self.bucket = (left, filled);
                true
            }
            None => {
                self.bucket = (tokens, filled);
                false
            }
        }
    }

    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    fn topic(&mut self, topic: Topic) -> &mut BTreeSet<String> {
        match topic {
            Topic::Room => &mut self.rooms,
            Topic::Conversation => &mut self.conversations,
        }
    }

    pub fn subscription_count(&self) -> usize {
        self.rooms.len() + self.conversations.len()
    }
}

/// Result of [`Registry::subscribe`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Subscribe {
    Added,
    AlreadyThere,
    OverLimit,
}

#[derive(Debug, Default)]
pub(crate) struct Registry {
    conns: BTreeMap<ConnectionId, Connection>,
    rooms: BTreeMap<String, BTreeSet<ConnectionId>>,
    conversations: BTreeMap<String, BTreeSet<ConnectionId>>,
    /// Recently ended ids, oldest first, so stray events can be told apart from unknown ids.
    ended: VecDeque<ConnectionId>,
    ended_set: BTreeSet<ConnectionId>,
    /// Requests in flight that will likely subscribe their connection, per room or conversation:
    /// interest is held for them so the events that follow the backend's decision are heard.
    pending_interest: BTreeMap<(Topic, String), usize>,
}

impl Registry {
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn contains(&self, id: &ConnectionId) -> bool {
        self.conns.contains_key(id)
    }

    pub fn was_seen(&self, id: &ConnectionId) -> bool {
        self.conns.contains_key(id) || self.ended_set.contains(id)
    }

    pub fn recently_ended(&self, id: &ConnectionId) -> bool {
        self.ended_set.contains(id)
    }

    pub fn insert(&mut self, id: ConnectionId, conn: Connection) {
        let previous = self.conns.insert(id, conn);
        debug_assert!(previous.is_none(), "connection ids are unique");
    }

    pub fn get(&self, id: &ConnectionId) -> Option<&Connection> {
        self.conns.get(id)
    }

    pub fn get_mut(&mut self, id: &ConnectionId) -> Option<&mut Connection> {
        self.conns.get_mut(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ConnectionId, &Connection)> {
        self.conns.iter()
    }

    pub fn ids(&self) -> Vec<ConnectionId> {
        self.conns.keys().copied().collect()
    }

    /// Removes a connection and every subscription it held; remembers the id as ended.
    pub fn remove(&mut self, id: &ConnectionId, ended_memory: usize) -> Option<Connection> {
        let conn = self.conns.remove(id)?;
        for room in &conn.rooms {
            Self::table_remove(&mut self.rooms, room, id);
        }
        for room in &conn.conversations {
            Self::table_remove(&mut self.conversations, room, id);
        }
        if ended_memory > 0 {
            if self.ended.len() >= ended_memory
                && let Some(old) = self.ended.pop_front()
            {
                self.ended_set.remove(&old);
            }
            self.ended.push_back(*id);
            self.ended_set.insert(*id);
        }
        Some(conn)
    }

    fn table(&mut self, topic: Topic) -> &mut BTreeMap<String, BTreeSet<ConnectionId>> {
        match topic {
            Topic::Room => &mut self.rooms,
            Topic::Conversation => &mut self.conversations,
        }
    }

    fn table_remove(table: &mut BTreeMap<String, BTreeSet<ConnectionId>>, room: &str, id: &ConnectionId) {
        if let Some(members) = table.get_mut(room) {
            members.remove(id);
            if members.is_empty() {
                table.remove(room);
            }
        }
    }

    pub fn subscribe(&mut self, id: &ConnectionId, topic: Topic, room: &str, limit: usize) -> Subscribe {
        let Some(conn) = self.conns.get_mut(id) else {
            return Subscribe::AlreadyThere;
        };
        if conn.topic(topic).contains(room) {
            return Subscribe::AlreadyThere;
        }
        if conn.subscription_count() >= limit {
            return Subscribe::OverLimit;
        }
        conn.topic(topic).insert(room.to_owned());
        self.table(topic).entry(room.to_owned()).or_default().insert(*id);
        Subscribe::Added
    }

    /// Whether a change to `id`'s subscription to `room` decided at `revision` is as new as the
    /// last one applied to it, or newer, and, for a subscribe, read off a binding as new as any
    /// applied to the connection (see [`Revision`]); if so, it is the last one now. The
    /// revisions of subscriptions no longer held are kept for the last
    /// [`ENDED_SUBSCRIPTIONS_KEPT`] of them, long enough for any older change still on its way.
    pub fn admit_revision(
        &mut self,
        id: &ConnectionId,
        topic: Topic,
        room: &str,
        revision: Revision,
        subscribe: bool,
    ) -> bool {
        let Some(conn) = self.conns.get_mut(id) else { return true };
        let key = (topic, room.to_owned());
        let binding = revision.binding.unwrap_or(0);
        let order = (binding, revision.room);
        if subscribe && binding < conn.binding {
            return false;
        }
        if conn.revisions.get(&key).is_some_and(|last| *last > order) {
            return false;
        }
        conn.binding = conn.binding.max(binding);
        conn.revisions.insert(key.clone(), order);
        let held = |(t, r): &(Topic, String)| match t {
            Topic::Room => conn.rooms.contains(r),
            Topic::Conversation => conn.conversations.contains(r),
        };
        // The ended ones besides the one this change is about; counted first, as being over the
        // bound is rare.
        let ended_now = conn.revisions.keys().filter(|k| !held(k) && **k != key).count();
        if ended_now > ENDED_SUBSCRIPTIONS_KEPT {
            let mut ended: Vec<((u64, u64), (Topic, String))> = (conn.revisions.iter())
                .filter(|(k, _)| !held(k) && **k != key)
                .map(|(k, rev)| (*rev, k.clone()))
                .collect();
            ended.sort_unstable();
            for (_, k) in ended.drain(..ended.len() - ENDED_SUBSCRIPTIONS_KEPT) {
                conn.revisions.remove(&k);
            }
        }
        true
    }

    /// Returns whether the subscription existed.
    pub fn unsubscribe(&mut self, id: &ConnectionId, topic: Topic, room: &str) -> bool {
        let Some(conn) = self.conns.get_mut(id) else {
            return false;
        };
        if !conn.topic(topic).remove(room) {
            return false;
        }
        Self::table_remove(self.table(topic), room, id);
        true
    }

    /// Subscribers of a room or conversation, in id order.
    pub fn subscribers(&self, topic: Topic, room: &str) -> Vec<ConnectionId> {
        let table = match topic {
            Topic::Room => &self.rooms,
            Topic::Conversation => &self.conversations,
        };
        table.get(room).map(|m| m.iter().copied().collect()).unwrap_or_default()
    }

    /// Whether anything here wants a room's or conversation's events: a subscriber, or a
    /// request in flight that may subscribe one.
    pub fn has_interest(&self, topic: Topic, room: &str) -> bool {
        let table = match topic {
            Topic::Room => &self.rooms,
            Topic::Conversation => &self.conversations,
        };
        table.contains_key(room) || self.pending_interest.contains_key(&(topic, room.to_owned()))
    }

    pub fn hold_interest(&mut self, topic: Topic, room: &str) {
        *self.pending_interest.entry((topic, room.to_owned())).or_default() += 1;
    }

    pub fn release_interest(&mut self, topic: Topic, room: &str) {
        let key = (topic, room.to_owned());
        if let Some(n) = self.pending_interest.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.pending_interest.remove(&key);
            }
        }
    }

    /// Interest held by requests in flight, summed (checked against the requests).
    pub fn pending_interest(&self) -> usize {
        self.pending_interest.values().sum()
    }

    /// Subscriptions held, counted from the tables (not from the connections), so a mismatch
    /// between the two shows up in [`Registry::check`].
    pub fn table_subscriptions(&self) -> usize {
        self.rooms.values().chain(self.conversations.values()).map(BTreeSet::len).sum()
    }

    /// The subscription tables mirror the connections' own sets exactly.
    pub fn tables_consistent(&self) -> bool {
        let held: usize = self.conns.values().map(Connection::subscription_count).sum();
        held == self.table_subscriptions()
            && self.conns.iter().all(|(id, c)| {
                c.rooms.iter().all(|r| self.rooms.get(r).is_some_and(|m| m.contains(id)))
                    && c.conversations
                        .iter()
                        .all(|r| self.conversations.get(r).is_some_and(|m| m.contains(id)))
            })
    }
}
