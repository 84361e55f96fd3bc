//! The facts of a fleet on the store, read off the store itself: which connection holds which
//! session, which sessions hear which rooms, which sessions ended. Workers on the store keep
//! nothing, and one may die between a write the store took and anything it would have said
//! about it; the store's own record is the truth the checks hold gateways and clients to.

use std::collections::{BTreeMap, BTreeSet};

use clientmq_bus::store::StoredMsg;
use clientmq_bus::store::wire::header;
use clientmq_chat::Fact;
use clientmq_chat::stored::records::{RoomKey, RoomRecord, SessionRecord, session_of_key};
use clientmq_core::Topic;
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
}

impl StoreFacts {
    /// For the buckets of the fleet on `prefix`.
    pub fn new(prefix: &str) -> StoreFacts {
        let name = prefix.replace('.', "_");
        StoreFacts {
            sessions_prefix: format!("$KV.{name}_sessions."),
            rooms_prefix: format!("$KV.{name}_rooms."),
            ..StoreFacts::default()
        }
    }

    /// The facts a stored message makes, in order.
    pub fn stored(&mut self, msg: &StoredMsg) -> Vec<Fact> {
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
