//! What the buckets hold, as protobuf (the chat types are protobuf already) and under which key.
//!
//! - bucket `<P>_sessions`, key `<session token>`: a [`SessionRecord`]; and key `e.<connection>`:
//!   an [`EndedRecord`], the mark that connection ended (see `sessions`);
//! - bucket `<P>_rooms`, key `r.<room token>`: a [`RoomRecord`], and key `a.<alias token>`: the
//!   id of the room the alias names (written only while absent: one room per alias).
//!
//! Tokens are [`contract::room_token`]'s: an id of letters, digits and `-` as it is, anything else
//! as `_` and hex, so every id is one key token and none collide.

use clientmq_bus::contract;
use clientmq_core::proto::chat;

/// A session. Its rooms are not here: membership (and the subscription to a room's conversation
/// that goes with it) lives in the rooms' records only, so that every decision writes one key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionRecord {
    /// The connection holding it, none while detached.
    #[prost(string, optional, tag = "1")]
    pub conn: Option<String>,
    /// That connection's gateway (its route key).
    #[prost(string, optional, tag = "2")]
    pub gateway: Option<String>,
    /// While detached: Unix milliseconds when its grace runs out.
    #[prost(uint64, optional, tag = "3")]
    pub expires_ms: Option<u64>,
    /// Connections that held it until it moved (taken over, let go) and may still hear its
    /// rooms: kept until they are told to stop (`tell`), by the mover or, if it died first, by
    /// any worker's sweep.
    #[prost(message, repeated, tag = "4")]
    pub released: Vec<Released>,
    /// The connection holding it may not hear its rooms yet: an existing session was bound to
    /// it (a resume, a takeover) by a worker that tells it next. Cleared once told, by the
    /// binder or, if it died first, by any worker's sweep.
    #[prost(bool, tag = "5")]
    pub untold: bool,
}

impl SessionRecord {
    /// Whether connection `conn` on `gateway` holds the session.
    pub fn held_by(&self, conn: &str, gateway: &str) -> bool {
        self.conn.as_deref() == Some(conn) && self.gateway.as_deref() == Some(gateway)
    }
}

/// A connection a session moved away from, still open.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Released {
    #[prost(string, tag = "1")]
    pub conn: String,
    /// Its gateway (route key).
    #[prost(string, tag = "2")]
    pub gateway: String,
}

/// The mark that a connection ended.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EndedRecord {
    /// Unix milliseconds when it was marked.
    #[prost(uint64, tag = "1")]
    pub at_ms: u64,
    /// The gateway (route key) the connection was on, while that gateway is still to be told to
    /// close it: the connection held a session when its gateway was counted gone, so it is an
    /// orphan the gateway may still have open. Cleared once the gateway says it closed it.
    #[prost(string, optional, tag = "2")]
    pub orphan_of: Option<String>,
}

impl EndedRecord {
    /// Whether the mark is old enough to forget: written at `before_ms` or earlier, or for an
    /// orphan still to be told, at `orphans_before_ms` or earlier.
    pub fn is_old(&self, before_ms: u64, orphans_before_ms: u64) -> bool {
        let before = if self.orphan_of.is_some() { orphans_before_ms } else { before_ms };
        self.at_ms <= before
    }
}

/// A room and its members.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RoomRecord {
    /// `room_id` is always set.
    #[prost(message, optional, tag = "1")]
    pub info: Option<chat::Room>,
    /// In session order, one per session.
    #[prost(message, repeated, tag = "2")]
    pub members: Vec<chat::Member>,
    /// A broadcast room: its audience is neither announced nor listed.
    #[prost(bool, tag = "3")]
    pub quiet_audience: bool,
    /// Unix milliseconds since it has been empty, while it is.
    #[prost(uint64, optional, tag = "4")]
    pub empty_since_ms: Option<u64>,
    /// The room events the decision that wrote this record made, kept until they are surely in
    /// the history: the next decision on the room appends them (again, for all it knows; their
    /// ids make the stream keep one) before it writes.
    #[prost(message, repeated, tag = "5")]
    pub pending: Vec<PendingEvent>,
    /// The alias the room is being renamed to, from before the alias's key is claimed until the
    /// room carries it: a creator of that alias meanwhile finds it taken.
    #[prost(string, optional, tag = "6")]
    pub renaming: Option<String>,
    /// Members subscribed to the room's conversation, in session order: a member's leave ends
    /// its subscription in the same write.
    #[prost(string, repeated, tag = "7")]
    pub listeners: Vec<String>,
    /// Sessions whose subscriptions to the room the decisions still pending here changed, kept
    /// until their connections are surely told: the decider tells its own, and if it died
    /// first, the next worker's sweep tells them what the room says now.
    #[prost(message, repeated, tag = "8")]
    pub touched: Vec<Touched>,
}

/// A session a decision changed the subscriptions of.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Touched {
    #[prost(string, tag = "1")]
    pub session: String,
    /// The revision the deciding write expected: which decision it was.
    #[prost(uint64, tag = "2")]
    pub by: u64,
}

/// A room event waiting to be appended to the room's history.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PendingEvent {
    /// Its `Nats-Msg-Id`: the room, the revision the decision expected, the event's place.
    #[prost(string, tag = "1")]
    pub id: String,
    /// A `chat.RoomEvent`.
    #[prost(bytes = "vec", tag = "2")]
    pub event: Vec<u8>,
}

impl RoomRecord {
    pub fn room_id(&self) -> &str {
        self.info.as_ref().and_then(|i| i.room_id.as_deref()).unwrap_or_default()
    }

    pub fn alias(&self) -> Option<&str> {
        self.info.as_ref().and_then(|i| i.alias.as_deref())
    }

    pub fn member(&self, session: &str) -> Option<&chat::Member> {
        self.members.iter().find(|m| m.session_id == session)
    }

    /// The members others see, in session order.
    pub fn listed(&self) -> Vec<chat::Member> {
        self.members.iter().filter(|m| crate::state::announced(self.quiet_audience, m)).cloned().collect()
    }
}

/// What a key of the rooms bucket names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomKey {
    Room(String),
    Alias(String),
}

pub fn session_key(session: &str) -> String {
    contract::room_token(session)
}

pub fn session_of_key(key: &str) -> Option<String> {
    contract::room_from_token(key)
}

/// The key of the mark that connection `conn` ended.
pub fn ended_key(conn: &str) -> String {
    format!("e.{conn}")
}

impl RoomKey {
    pub fn key(&self) -> String {
        match self {
            RoomKey::Room(id) => format!("r.{}", contract::room_token(id)),
            RoomKey::Alias(alias) => format!("a.{}", contract::room_token(alias)),
        }
    }

    pub fn parse(key: &str) -> Option<RoomKey> {
        let (kind, token) = key.split_once('.')?;
        let name = contract::room_from_token(token)?;
        match kind {
            "r" => Some(RoomKey::Room(name)),
            "a" => Some(RoomKey::Alias(name)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back_as_what_they_name() {
        for key in [
            RoomKey::Room("abc-1".into()),
            RoomKey::Room("a b/é".into()),
            RoomKey::Alias("lobby.main".into()),
        ] {
            let written = key.key();
            assert!(clientmq_bus::store::kv::valid_key(&written), "{written}");
            assert_eq!(RoomKey::parse(&written), Some(key));
        }
        assert_eq!(RoomKey::parse("x.abc"), None);
        let session = "Zq9-x_1";
        assert_eq!(session_of_key(&session_key(session)).as_deref(), Some(session));
    }
}
