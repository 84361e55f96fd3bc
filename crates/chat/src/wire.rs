//! Wire helpers of the embedded backend: statuses, replies, events, ids, and input checks.

use clientmq_core::proto::{chat, mq};
use clientmq_core::{ConnectionId, Reply, Target, Topic};
use prost::Message;
use rand::RngExt;
use rand::rngs::StdRng;

/// Status strings of `*Response.status`. `ok` is what the SDK (and the gateway's subscription
/// tables) treat as success; `not-in-room` and `already-exists` are statuses the SDK knows by name.
pub mod status {
    pub const OK: &str = "ok";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const NOT_FOUND: &str = "not-found";
    pub const ALREADY_EXISTS: &str = "already-exists";
    pub const NOT_IN_ROOM: &str = "not-in-room";
    /// A bound of the backend is reached (sessions, rooms, members, memberships).
    pub const CAPACITY: &str = "capacity";
    /// A message or field over its size or count bound.
    pub const TOO_LARGE: &str = "too-large";
    /// A field is missing or out of range.
    pub const BAD_REQUEST: &str = "bad-request";
}

/// `mq.Error` reasons this backend answers with.
pub mod reason {
    /// A request other than `pcast.Authenticate` on a connection without a session.
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// A request type the embedded backend does not serve.
    pub const UNSUPPORTED: &str = "unsupported";
    /// A payload that does not decode as its type (the gateway uses the same word).
    pub const MALFORMED: &str = "malformed";
    /// The store did not answer (the gateway uses the same word while the bus is away).
    pub const UNAVAILABLE: &str = "unavailable";
}

/// An event for the gateway to push, in the order the backend produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub target: Target,
    pub event_type: &'static str,
    pub payload: Vec<u8>,
}

/// A change to the gateway's subscription tables that follows the backend's membership (a Bye,
/// a session taken over or resumed, a room left); see the `state` module doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub conn: ConnectionId,
    pub topic: Topic,
    pub room: String,
    /// `false` unsubscribes.
    pub subscribe: bool,
}

/// What the backend hands the gateway, in one queue so that a subscription change and the
/// events around it arrive in the order they happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    Event(Delivery),
    Subscription(Subscription),
}

pub fn subscription(conn: ConnectionId, topic: Topic, room: &str, subscribe: bool) -> Outgoing {
    Outgoing::Subscription(Subscription { conn, topic, room: room.to_owned(), subscribe })
}

/// Unsubscribes `conn` from a room and from its conversation (harmless where it held neither).
pub fn unsubscribe(conn: ConnectionId, room: &str) -> [Outgoing; 2] {
    [Topic::Room, Topic::Conversation].map(|topic| subscription(conn, topic, room, false))
}

pub fn reply<M: Message>(request_type: &str, msg: &M) -> Reply {
    Reply { reply_type: format!("{request_type}Response"), payload: msg.encode_to_vec() }
}

pub fn error(reason: &str) -> Reply {
    Reply {
        reply_type: "mq.Error".to_owned(),
        payload: mq::Error { reason: reason.to_owned() }.encode_to_vec(),
    }
}

pub fn room_event(
    actor: &str,
    room_id: &str,
    kind: chat::RoomEventType,
    members: Vec<chat::Member>,
    room: Option<chat::Room>,
    now_ms: u64,
) -> Outgoing {
    let event = chat::RoomEvent {
        session_id: actor.to_owned(),
        room_id: room_id.to_owned(),
        event_type: kind as i32,
        members,
        room,
        options: Vec::new(),
        timestamp: now_ms,
    };
    Outgoing::Event(Delivery {
        target: Target::Room(room_id.to_owned()),
        event_type: "chat.RoomEvent",
        payload: event.encode_to_vec(),
    })
}

pub fn conversation_event(actor: &str, room_id: &str, message: chat::ChatMessage) -> Outgoing {
    let event = chat::RoomConversationEvent {
        session_id: actor.to_owned(),
        room_id: room_id.to_owned(),
        event_type: chat::RoomConversationEventType::Message as i32,
        chat_messages: vec![message],
    };
    Outgoing::Event(Delivery {
        target: Target::Conversation(room_id.to_owned()),
        event_type: "chat.RoomConversationEvent",
        payload: event.encode_to_vec(),
    })
}

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `len` random letters and digits.
pub fn random_id(rng: &mut StdRng, len: usize) -> String {
    (0..len).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect()
}

/// A message id that sorts after every earlier one as a plain string: the SDK orders its chat
/// history by comparing ids with `<`. Fixed-width hex of (milliseconds, sequence number).
pub fn message_id(now_ms: u64, seq: u64) -> String {
    format!("{:011x}{seq:016x}", now_ms & 0xfff_ffff_ffff)
}

/// Bounds on client-supplied strings and lists, from the config.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub field_bytes: usize,
    pub list_len: usize,
}

impl Limits {
    pub fn field(&self, value: &str) -> Result<(), &'static str> {
        if value.len() > self.field_bytes { Err(status::TOO_LARGE) } else { Ok(()) }
    }

    fn opt(&self, value: Option<&String>) -> Result<(), &'static str> {
        value.map_or(Ok(()), |v| self.field(v))
    }

    fn list(&self, values: &[String]) -> Result<(), &'static str> {
        if values.len() > self.list_len {
            return Err(status::TOO_LARGE);
        }
        values.iter().try_for_each(|v| self.field(v))
    }

    pub fn room(&self, room: &chat::Room) -> Result<(), &'static str> {
        if room.name.is_empty() || chat::RoomType::try_from(room.r#type).is_err() {
            return Err(status::BAD_REQUEST);
        }
        self.field(&room.name)?;
        self.field(&room.description)?;
        self.opt(room.room_id.as_ref())?;
        self.opt(room.alias.as_ref())?;
        self.opt(room.bridge_id.as_ref())?;
        self.opt(room.pin.as_ref())?;
        self.list(&room.options)
    }

    pub fn streams(&self, streams: &[chat::Stream]) -> Result<(), &'static str> {
        if streams.len() > self.list_len {
            return Err(status::TOO_LARGE);
        }
        for s in streams {
            let valid = chat::StreamType::try_from(s.r#type).is_ok()
                && chat::TrackState::try_from(s.audio_state).is_ok()
                && chat::TrackState::try_from(s.video_state).is_ok();
            if !valid {
                return Err(status::BAD_REQUEST);
            }
            self.field(&s.uri)?;
        }
        Ok(())
    }

    pub fn member(&self, m: &chat::Member) -> Result<(), &'static str> {
        if chat::MemberRole::try_from(m.role).is_err() || chat::MemberState::try_from(m.state).is_err() {
            return Err(status::BAD_REQUEST);
        }
        self.field(&m.screen_name)?;
        self.streams(&m.streams)
    }

    pub fn member_update(&self, m: &chat::MemberUpdate) -> Result<(), &'static str> {
        let role_ok = m.role.is_none_or(|r| chat::MemberRole::try_from(r).is_ok());
        let state_ok = m.state.is_none_or(|s| chat::MemberState::try_from(s).is_ok());
        if !(role_ok && state_ok) {
            return Err(status::BAD_REQUEST);
        }
        self.opt(m.screen_name.as_ref())?;
        self.streams(&m.streams)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn message_ids_sort_as_strings_in_the_order_they_were_issued() {
        let ids = [message_id(9, 1), message_id(9, 2), message_id(10, 3), message_id(1 << 40, 4)];
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        assert!(ids.iter().all(|id| id.len() == 27));
    }

    #[test]
    fn random_ids_are_seeded() {
        let a = random_id(&mut StdRng::seed_from_u64(1), 32);
        assert_eq!(a, random_id(&mut StdRng::seed_from_u64(1), 32));
        assert!(a.len() == 32 && a.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn limits_reject_oversize_and_out_of_range_input() {
        let limits = Limits { field_bytes: 4, list_len: 1 };
        let room = chat::Room { name: "abc".into(), ..Default::default() };
        assert_eq!(limits.room(&room), Ok(()));
        assert_eq!(limits.room(&chat::Room { name: "abcde".into(), ..room.clone() }), Err(status::TOO_LARGE));
        assert_eq!(limits.room(&chat::Room { r#type: 99, ..room.clone() }), Err(status::BAD_REQUEST));
        assert_eq!(
            limits.room(&chat::Room { name: String::new(), ..room.clone() }),
            Err(status::BAD_REQUEST)
        );
        let two = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(limits.room(&chat::Room { options: two, ..room }), Err(status::TOO_LARGE));
        let member = chat::Member { state: 7, ..Default::default() };
        assert_eq!(limits.member(&member), Err(status::BAD_REQUEST));
    }

    /// Each bound holds exactly: a value at the bound passes, one past it does not; and every
    /// field of a stream and a member update is checked.
    #[test]
    fn limits_hold_at_their_bound_and_check_every_field() {
        let limits = Limits { field_bytes: 4, list_len: 2 };
        assert_eq!(limits.field("abcd"), Ok(()));
        assert_eq!(limits.field("abcde"), Err(status::TOO_LARGE));
        let room = chat::Room { name: "abc".into(), ..Default::default() };
        let pin = |pin: &str| chat::Room { pin: Some(pin.into()), ..room.clone() };
        assert_eq!(limits.room(&pin("abcd")), Ok(()));
        assert_eq!(limits.room(&pin("abcde")), Err(status::TOO_LARGE), "an optional field too");
        let options = |n: usize| chat::Room { options: vec!["o".into(); n], ..room.clone() };
        assert_eq!(limits.room(&options(2)), Ok(()));
        assert_eq!(limits.room(&options(3)), Err(status::TOO_LARGE));

        let stream = chat::Stream { uri: "u".into(), ..Default::default() };
        assert_eq!(limits.streams(&[stream.clone(), stream.clone()]), Ok(()));
        assert_eq!(limits.streams(&[stream.clone(), stream.clone(), stream.clone()]), Err(status::TOO_LARGE));
        assert_eq!(
            limits.streams(&[chat::Stream { uri: "abcde".into(), ..stream.clone() }]),
            Err(status::TOO_LARGE)
        );
        for bad in [
            chat::Stream { r#type: 99, ..stream.clone() },
            chat::Stream { audio_state: 99, ..stream.clone() },
            chat::Stream { video_state: 99, ..stream.clone() },
        ] {
            assert_eq!(limits.streams(std::slice::from_ref(&bad)), Err(status::BAD_REQUEST), "{bad:?}");
        }

        let update = chat::MemberUpdate::default();
        assert_eq!(limits.member_update(&update), Ok(()));
        for bad in [
            chat::MemberUpdate { role: Some(99), ..update.clone() },
            chat::MemberUpdate { state: Some(99), ..update.clone() },
        ] {
            assert_eq!(limits.member_update(&bad), Err(status::BAD_REQUEST), "{bad:?}");
        }
        let named = |name: &str| chat::MemberUpdate { screen_name: Some(name.into()), ..update.clone() };
        assert_eq!(limits.member_update(&named("abcd")), Ok(()));
        assert_eq!(limits.member_update(&named("abcde")), Err(status::TOO_LARGE));
        let streams = chat::MemberUpdate { streams: vec![stream; 3], ..update };
        assert_eq!(limits.member_update(&streams), Err(status::TOO_LARGE));
    }
}
