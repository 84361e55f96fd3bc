//! The facts of a fleet on the store, read off the store itself: which connection holds which
//! session, which sessions hear which rooms, which sessions ended, which connections ended (and
//! which of those a gateway is to be told to close: orphans). Workers on the store keep
//! nothing, and one may die between a write the store took and anything it would have said
//! about it; the store's own record is the truth the checks hold gateways and clients to.
//!
//! And what the history must never hold, checked as each message is stored: a room's member
//! events alternate for each session (`MemberJoined` only for one not announced, `MemberLeft`
//! and `MemberUpdated` only for one announced: so `MemberLeft` once per departure, and nobody a
//! member twice), and no send (`Nats-Msg-Id`) is stored twice.

use std::collections::{BTreeMap, BTreeSet};

use clientmq_bus::store::StoredMsg;
use clientmq_bus::store::wire::header;
use clientmq_chat::Fact;
use clientmq_chat::stored::records::{EndedRecord, RoomKey, RoomRecord, SessionRecord, session_of_key};
use clientmq_chat::worker::WorkerEvent;
use clientmq_core::Topic;
use clientmq_core::proto::chat;
use prost::Message;

/// What the facts so far say, to tell the next change from.
#[derive(Debug, Default)]
pub struct StoreFacts {
    sessions_prefix: String,
    rooms_prefix: String,
    /// Each session and the connection holding it, if any.
    sessions: BTreeMap<String, Option<String>>,
    /// Each room's members, and which of them hear its conversation.
    rooms: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>,
    history_prefix: String,
    /// By room token: the members its history has announced and not seen leave.
    announced: BTreeMap<String, BTreeSet<String>>,
    /// Every message id the history stored.
    sends: BTreeSet<String>,
    /// Connections whose end is recorded, until the mark is forgotten.
    ended: BTreeSet<String>,
}

impl StoreFacts {
    /// For the buckets of the fleet on `prefix`.
    pub fn new(prefix: &str) -> StoreFacts {
        let name = prefix.replace('.', "_");
        StoreFacts {
            sessions_prefix: format!("$KV.{name}_sessions."),
            rooms_prefix: format!("$KV.{name}_rooms."),
            history_prefix: format!("{prefix}.history."),
            ..StoreFacts::default()
        }
    }

    /// What a stored message says, in order: facts, or a broken invariant.
    pub fn stored(&mut self, msg: &StoredMsg) -> Vec<WorkerEvent> {
        if let Some(rest) = msg.subject.strip_prefix(&self.history_prefix) {
            return self.history(rest, msg).map(WorkerEvent::Broken).into_iter().collect();
        }
        if let Some(conn) = msg.subject.strip_prefix(&self.sessions_prefix).and_then(|k| k.strip_prefix("e."))
        {
            return self.ended_mark(conn, msg).into_iter().collect();
        }
        self.facts(msg).into_iter().map(WorkerEvent::Fact).collect()
    }

    /// A change to connection `conn`'s ended mark: news if the mark is new.
    fn ended_mark(&mut self, conn: &str, msg: &StoredMsg) -> Option<WorkerEvent> {
        let deleted = matches!(msg.header(header::KV_OPERATION), Some("DEL" | "PURGE"));
        if deleted {
            self.ended.remove(conn);
            return None;
        }
        if !self.ended.insert(conn.to_owned()) {
            return None;
        }
        let orphan_of = EndedRecord::decode(msg.data.as_slice()).ok().and_then(|m| m.orphan_of);
        Some(WorkerEvent::EndRecorded { conn: conn.parse().ok()?, orphan_of })
    }

    /// A message appended to a room's history (`<room token>.<kind>`): what it breaks, if anything.
    fn history(&mut self, rest: &str, msg: &StoredMsg) -> Option<String> {
        if let Some(id) = msg.header(header::MSG_ID)
            && !self.sends.insert(id.to_owned())
        {
            return Some(format!("history: message id {id} stored twice"));
        }
        let (room, kind) = rest.split_once('.')?;
        let event = (kind == "room").then(|| chat::RoomEvent::decode(msg.data.as_slice()).ok())??;
        let session = event.members.first()?.session_id.clone();
        let announced = self.announced.entry(room.to_owned()).or_default();
        let kind = chat::RoomEventType::try_from(event.event_type).ok()?;
        let fine = match kind {
            chat::RoomEventType::MemberJoined => announced.insert(session.clone()),
            chat::RoomEventType::MemberLeft => announced.remove(&session),
            chat::RoomEventType::MemberUpdated => announced.contains(&session),
            _ => true,
        };
        (!fine).then(|| format!("history: {kind:?} of {session} in room {room} (seq {})", msg.seq))
    }

    /// The facts a change to a bucket makes, in order.
    fn facts(&mut self, msg: &StoredMsg) -> Vec<Fact> {
        let deleted = matches!(msg.header(header::KV_OPERATION), Some("DEL" | "PURGE"));
        let value = (!deleted).then_some(msg.data.as_slice());
        if let Some(key) = msg.subject.strip_prefix(&self.sessions_prefix) {
            let Some(session) = session_of_key(key).filter(|_| !key.contains('.')) else { return Vec::new() };
            let record = value.and_then(|v| SessionRecord::decode(v).ok());
            return self.session(session, record);
        }
        if let Some(key) = msg.subject.strip_prefix(&self.rooms_prefix)
            && let Some(RoomKey::Room(room)) = RoomKey::parse(key)
        {
            let record = value.and_then(|v| RoomRecord::decode(v).ok());
            return self.room(room, record);
        }
        Vec::new()
    }

    fn session(&mut self, session: String, record: Option<SessionRecord>) -> Vec<Fact> {
        let mut facts = Vec::new();
        let before = self.sessions.get(&session).cloned().flatten();
        let after = record.as_ref().and_then(|r| r.conn.clone());
        if before != after {
            if let Some(conn) = before.and_then(|c| c.parse().ok()) {
                facts.push(Fact::Unbound { conn, session: session.clone() });
            }
            if let Some(conn) = after.as_ref().and_then(|c| c.parse().ok()) {
                facts.push(Fact::Bound { conn, session: session.clone() });
            }
        }
        match record {
            Some(_) => {
                self.sessions.insert(session, after);
            }
            None => {
                if self.sessions.remove(&session).is_some() {
                    facts.push(Fact::Ended { session });
                }
            }
        }
        facts
    }

    fn room(&mut self, room: String, record: Option<RoomRecord>) -> Vec<Fact> {
        let (members, listeners): (BTreeSet<String>, BTreeSet<String>) = match &record {
            Some(r) => (
                r.members.iter().map(|m| m.session_id.clone()).collect(),
                r.listeners.iter().cloned().collect(),
            ),
            None => Default::default(),
        };
        let (was, heard) = self.rooms.remove(&room).unwrap_or_default();
        let mut facts = Vec::new();
        for gone in was.difference(&members) {
            facts.push(Fact::Left { session: gone.clone(), room: room.clone() });
        }
        for new in members.difference(&was) {
            facts.push(Fact::Hears { session: new.clone(), topic: Topic::Room, room: room.clone() });
        }
        for new in listeners.difference(&heard) {
            facts.push(Fact::Hears { session: new.clone(), topic: Topic::Conversation, room: room.clone() });
        }
        if record.is_some() {
            self.rooms.insert(room, (members, listeners));
        }
        facts
    }
}
