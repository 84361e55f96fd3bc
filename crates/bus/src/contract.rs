//! The contract between gateways and workers on the bus: subjects, headers and small payload
//! forms. docs/nats.md explains it for someone writing a worker in another language; this
//! module is the one place the code spells it.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clientmq_core::edge_auth::Claims;
use clientmq_core::{ConnectionId, Topic};

use crate::BusMessage;

/// Subject prefix unless configured (`--nats-prefix`).
pub const DEFAULT_PREFIX: &str = "clientmq";

/// Queue group of the chat worker (sessions and rooms).
pub const CHAT_QUEUE: &str = "chat";

/// How often a gateway announces itself.
pub const ANNOUNCE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// After this long without an announcement a worker counts a gateway as gone and detaches its
/// connections' sessions (their grace period starts).
pub const GATEWAY_SILENT_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// Connection ids per sync or orphans message (33 bytes each, far below NATS's 1 MB payload).
pub const IDS_PER_MESSAGE: usize = 4096;

/// Header names. NATS headers are case-insensitive on read; these are written as shown.
pub mod header {
    /// The gateway's route key (also `pcast.Authenticate.connectionRouteKey`).
    pub const GATEWAY: &str = "Clientmq-Gateway";
    pub const CONNECTION: &str = "Clientmq-Connection";
    /// The session the connection authenticated as, when it has.
    pub const SESSION: &str = "Clientmq-Session";
    /// The client's address (after trusted proxies).
    pub const REMOTE: &str = "Clientmq-Remote";
    /// A message type: of a reply (default: the request's type + `Response`), an event, a
    /// server request or its answer.
    pub const TYPE: &str = "Clientmq-Type";
    /// Milliseconds the gateway will wait for the reply.
    pub const TIMEOUT_MS: &str = "Clientmq-Timeout-Ms";
    /// Claims of the verified EdgeAuth token of a `pcast.Authenticate`: base64 (standard, padded)
    /// of the claims JSON exactly as signed.
    pub const CLAIMS: &str = "Clientmq-Claims";
    /// The application whose secret signed those claims.
    pub const APPLICATION: &str = "Clientmq-Application";
    /// `room ROOM` or `conversation ROOM`; may repeat.
    pub const SUBSCRIBE: &str = "Clientmq-Subscribe";
    pub const UNSUBSCRIBE: &str = "Clientmq-Unsubscribe";
    /// On a `.subscription`: the order of the decision behind it among the workers' decisions
    /// about the same subscriptions (the room's revision in the store). The gateway drops a
    /// change older than one it applied to the connection's subscription.
    pub const REVISION: &str = "Clientmq-Revision";
    /// On a `.subscription` with a revision: the revision of the record binding the connection
    /// to its session, as the decision read it. The gateway drops a change made with an older
    /// binding than one it applied to the connection (the session moved since).
    pub const BINDING: &str = "Clientmq-Binding";
    /// Why a server request failed (`not-connected`, `not-open`, `timeout`, ...).
    pub const ERROR: &str = "Clientmq-Error";
    /// Open connections of an announcing gateway.
    pub const CONNECTIONS: &str = "Clientmq-Connections";
    /// How many times the announcing gateway has connected to the bus: a new value means it
    /// may have lost messages while it was away.
    pub const BUS_EPOCH: &str = "Clientmq-Bus-Epoch";
}

/// What a message under a gateway's own subjects is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToGateway {
    /// The answer to the client request of this token.
    Reply(u64),
    /// An event for one connection.
    Event,
    /// Subscription changes for one connection.
    Subscription,
    /// A server-initiated request to a client.
    Request,
    /// Which of these connections are gone?
    Sync,
    /// These connections lost their sessions: close them.
    Orphans,
    /// The answer to the gateway's resubscribe list of this number.
    Resubscribed(u64),
}

/// The subjects of one deployment (one prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> Self {
        Subjects { prefix: prefix.to_owned() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Where a client request of `request_type` goes; `None` for a type that is not a valid
    /// subject (the gateway answers it `mq.Error{malformed}`).
    pub fn request(&self, request_type: &str) -> Option<String> {
        type_ok(request_type).then(|| format!("{}.req.{request_type}", self.prefix))
    }

    /// Every request type of a service (`chat` serves `chat.*`).
    pub fn requests_of(&self, service: &str) -> String {
        format!("{}.req.{service}.>", self.prefix)
    }

    /// Everything addressed to gateway `g`: one subscription, so it is applied in publish order.
    pub fn to_gateway(&self, g: &str) -> String {
        format!("{}.gw.{g}.>", self.prefix)
    }

    pub fn reply(&self, g: &str, token: u64) -> String {
        format!("{}.gw.{g}.reply.{token}", self.prefix)
    }

    pub fn gateway(&self, g: &str, what: ToGateway) -> String {
        let p = &self.prefix;
        match what {
            ToGateway::Reply(token) => self.reply(g, token),
            ToGateway::Event => format!("{p}.gw.{g}.event"),
            ToGateway::Subscription => format!("{p}.gw.{g}.subscription"),
            ToGateway::Request => format!("{p}.gw.{g}.request"),
            ToGateway::Sync => format!("{p}.gw.{g}.sync"),
            ToGateway::Orphans => format!("{p}.gw.{g}.orphans"),
            ToGateway::Resubscribed(n) => format!("{p}.gw.{g}.resubscribed.{n}"),
        }
    }

    /// Reads a subject under gateway `g`'s own subjects.
    pub fn parse_to_gateway(&self, g: &str, subject: &str) -> Option<ToGateway> {
        let rest =
            subject.strip_prefix(&self.prefix)?.strip_prefix(".gw.")?.strip_prefix(g)?.strip_prefix('.')?;
        Some(match rest {
            "event" => ToGateway::Event,
            "subscription" => ToGateway::Subscription,
            "request" => ToGateway::Request,
            "sync" => ToGateway::Sync,
            "orphans" => ToGateway::Orphans,
            _ => match rest.split_once('.')? {
                ("reply", n) => ToGateway::Reply(n.parse().ok()?),
                ("resubscribed", n) => ToGateway::Resubscribed(n.parse().ok()?),
                _ => return None,
            },
        })
    }

    /// Events for a room's members (`Topic::Room`) or its conversation's subscribers.
    pub fn room(&self, topic: Topic, room: &str) -> String {
        let kind = match topic {
            Topic::Room => "room",
            Topic::Conversation => "conv",
        };
        format!("{}.{kind}.{}", self.prefix, room_token(room))
    }

    /// Reads a room subject back.
    pub fn parse_room(&self, subject: &str) -> Option<(Topic, String)> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix('.')?;
        let (kind, token) = rest.split_once('.')?;
        let topic = match kind {
            "room" => Topic::Room,
            "conv" => Topic::Conversation,
            _ => return None,
        };
        Some((topic, room_from_token(token)?))
    }

    /// A gateway back on the bus asks the workers to tell its connections again what they
    /// hear (each line `CONNECTION SESSION`).
    pub fn resubscribe(&self) -> String {
        format!("{}.resubscribe", self.prefix)
    }

    /// `pcast.ConnectionDisconnected`, for every ended connection.
    pub fn disconnected(&self) -> String {
        format!("{}.disconnected", self.prefix)
    }

    pub fn alive(&self, g: &str) -> String {
        format!("{}.gateway.{g}.alive", self.prefix)
    }

    /// Every gateway's announcement (a gateway's route key may be more than one token).
    pub fn alive_all(&self) -> String {
        format!("{}.gateway.>", self.prefix)
    }

    /// The gateway an announcement came from.
    pub fn parse_alive<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".gateway.")?;
        rest.strip_suffix(".alive").filter(|g| route_key_ok(g))
    }
}

/// Whether `ty` is a message type name: subject tokens joined by dots (`chat.RoomEvent`). Request
/// types must be (they become subjects); a worker's event and reply types must be too.
pub fn type_ok(ty: &str) -> bool {
    !ty.is_empty() && ty.split('.').all(token_ok)
}

/// Whether `g` is a gateway route key: subject tokens joined by dots. `clientmq-server`'s are
/// `NAME.INSTANCE`, so that NATS permissions can be given per gateway name (docs/nats.md).
pub fn route_key_ok(g: &str) -> bool {
    type_ok(g)
}

/// Characters a subject token may hold here.
pub fn token_ok(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A room id as one subject token: as it is when it is letters, digits and `-` only, otherwise
/// `_` and the lowercase hex of its UTF-8 bytes (so the two forms never collide).
pub fn room_token(room: &str) -> String {
    if !room.is_empty() && room.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return room.to_owned();
    }
    let mut out = String::with_capacity(1 + room.len() * 2);
    out.push('_');
    for b in room.bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

pub fn room_from_token(token: &str) -> Option<String> {
    let Some(hex) = token.strip_prefix('_') else {
        return token_ok(token).then(|| token.to_owned());
    };
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

/// A worker's answer, to `reply`, to a request of type `request_type`. `Clientmq-Type` is set
/// only when `reply_type` is not the default (`request_type` + `Response`): most answers then
/// carry no header at all, which the NATS client neither encodes nor parses, on either side.
pub fn answer(reply: String, request_type: &str, reply_type: String, payload: Vec<u8>) -> BusMessage {
    let msg = BusMessage::new(reply, payload);
    if reply_type.strip_suffix("Response") == Some(request_type) {
        msg
    } else {
        msg.with(header::TYPE, reply_type)
    }
}

/// The type of an answer to a request of type `request_type`: its `Clientmq-Type`, or the
/// default when that is absent or empty.
pub fn answer_type(answer: &BusMessage, request_type: &str) -> String {
    match answer.header(header::TYPE) {
        Some(ty) if !ty.is_empty() => ty.to_owned(),
        _ => format!("{request_type}Response"),
    }
}

/// The claims headers of a verified token.
pub fn claims_headers(claims: &Claims) -> [(&'static str, String); 2] {
    [(header::APPLICATION, claims.application_id.clone()), (header::CLAIMS, STANDARD.encode(&claims.raw))]
}

/// Reads the claims a gateway verified back from a request's headers.
pub fn parse_claims(application: &str, encoded: &str) -> Option<Claims> {
    let raw = String::from_utf8(STANDARD.decode(encoded).ok()?).ok()?;
    Claims::from_verified(application, &raw).ok()
}

/// The value of a subscribe or unsubscribe header.
pub fn topic_value(topic: Topic, room: &str) -> String {
    format!("{} {room}", topic.label())
}

pub fn parse_topic_value(value: &str) -> Option<(Topic, String)> {
    let (kind, room) = value.split_once(' ')?;
    let topic = match kind {
        "room" => Topic::Room,
        "conversation" => Topic::Conversation,
        _ => return None,
    };
    (!room.is_empty()).then(|| (topic, room.to_owned()))
}

/// Connection ids, one a line (sync and orphans payloads).
pub fn ids_payload<'a>(ids: impl IntoIterator<Item = &'a ConnectionId>) -> Vec<u8> {
    let mut out = String::new();
    for id in ids {
        out.push_str(id.as_str());
        out.push('\n');
    }
    out.into_bytes()
}

/// Reads connection ids, skipping lines that are not one.
pub fn parse_ids(payload: &[u8]) -> Vec<ConnectionId> {
    String::from_utf8_lossy(payload).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// A resubscribe list: one line per connection, its id and the session it holds.
pub fn sessions_payload<'a>(pairs: impl IntoIterator<Item = (&'a ConnectionId, &'a str)>) -> Vec<u8> {
    let mut out = String::new();
    for (id, session) in pairs {
        out.push_str(id.as_str());
        out.push(' ');
        out.push_str(session);
        out.push('\n');
    }
    out.into_bytes()
}

/// Reads a resubscribe list; `None` if a line is not a connection id and a session, or the list
/// is longer than [`IDS_PER_MESSAGE`].
pub fn parse_sessions(payload: &[u8]) -> Option<Vec<(ConnectionId, String)>> {
    let text = std::str::from_utf8(payload).ok()?;
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if lines.len() > IDS_PER_MESSAGE {
        return None;
    }
    (lines.into_iter())
        .map(|l| {
            let (id, session) = l.split_once(' ')?;
            let session = session.trim();
            (!session.is_empty() && !session.contains(' ')).then_some(())?;
            Some((id.parse().ok()?, session.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_names_its_type_only_when_it_is_not_the_default() {
        let plain = answer("r".into(), "chat.JoinRoom", "chat.JoinRoomResponse".into(), vec![1]);
        assert_eq!((plain.subject.as_str(), plain.payload.as_slice()), ("r", [1].as_slice()));
        assert!(plain.headers.is_empty(), "{plain:?}");
        assert_eq!(answer_type(&plain, "chat.JoinRoom"), "chat.JoinRoomResponse");
        // Another type, even another request's response, is said.
        for other in ["mq.Error", "chat.LeaveRoomResponse", "Response", ""] {
            let said = answer("r".into(), "chat.JoinRoom", other.into(), Vec::new());
            assert_eq!(said.header(header::TYPE), Some(other), "{said:?}");
            let read = if other.is_empty() { "chat.JoinRoomResponse" } else { other };
            assert_eq!(answer_type(&said, "chat.JoinRoom"), read);
        }
    }

    #[test]
    fn a_resubscribe_list_round_trips_and_a_bad_line_refuses_it_whole() {
        let (a, b): (ConnectionId, ConnectionId) =
            ("a".repeat(32).parse().unwrap(), "b".repeat(32).parse().unwrap());
        let payload = sessions_payload([(&a, "s1"), (&b, "s2")]);
        assert_eq!(parse_sessions(&payload), Some(vec![(a, "s1".to_owned()), (b, "s2".to_owned())]));
        for bad in [
            &b"not-an-id s1\n"[..],
            b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
            b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa s 1",
            b"\xff",
        ] {
            assert_eq!(parse_sessions(bad), None, "{bad:?}");
        }
        let full: Vec<u8> = (0..IDS_PER_MESSAGE).flat_map(|_| format!("{a} s\n").into_bytes()).collect();
        assert_eq!(parse_sessions(&full).map(|l| l.len()), Some(IDS_PER_MESSAGE), "a full list is whole");
        let many: Vec<u8> = (0..=IDS_PER_MESSAGE).flat_map(|_| format!("{a} s\n").into_bytes()).collect();
        assert_eq!(parse_sessions(&many), None);
    }

    #[test]
    fn subjects_round_trip_and_refuse_what_is_not_a_token() {
        let s = Subjects::new("clientmq");
        assert_eq!(s.request("chat.JoinRoom").as_deref(), Some("clientmq.req.chat.JoinRoom"));
        for bad in ["", "chat..x", "a b", "chat.*", "chat.>", "x\r\ny"] {
            assert_eq!(s.request(bad), None, "{bad:?}");
        }
        for what in [
            ToGateway::Reply(42),
            ToGateway::Event,
            ToGateway::Subscription,
            ToGateway::Request,
            ToGateway::Sync,
            ToGateway::Orphans,
            ToGateway::Resubscribed(7),
        ] {
            let subject = s.gateway("gw.ab12", what.clone());
            assert!(subject.starts_with("clientmq.gw.gw.ab12."));
            assert_eq!(s.parse_to_gateway("gw.ab12", &subject), Some(what));
            assert_eq!(s.parse_to_gateway("gw.other", &subject), None);
            assert_eq!(s.parse_to_gateway("gw", &subject), None);
        }
        assert_eq!(s.parse_alive(&s.alive("gw-1")), Some("gw-1"));
        assert_eq!(s.parse_alive(&s.alive("gw.k3x9a1pq")), Some("gw.k3x9a1pq"));
        assert_eq!(s.parse_alive("clientmq.gateway.a..b.alive"), None);
        assert_eq!(s.parse_alive("clientmq.gateway.alive"), None);
    }

    /// The subjects as docs/nats.md's table names them (a foreign worker is written against
    /// it), and each subscription pattern takes what the other side publishes, and no more.
    #[test]
    fn subjects_are_the_documented_ones_and_each_pattern_takes_its_side() {
        use crate::subject::subject_matches;
        let s = Subjects::new("P");
        assert_eq!(s.resubscribe(), "P.resubscribe");
        assert_eq!(s.disconnected(), "P.disconnected");
        assert_eq!(s.alive("G"), "P.gateway.G.alive");
        assert_eq!(s.gateway("G", ToGateway::Resubscribed(3)), "P.gw.G.resubscribed.3");
        let request = s.request("chat.JoinRoom").unwrap();
        assert_eq!(request, "P.req.chat.JoinRoom");
        assert!(subject_matches(&s.requests_of("chat"), &request));
        assert!(!subject_matches(&s.requests_of("pcast"), &request));
        assert!(!subject_matches(&s.requests_of("chat"), "P.req.chatter.X"));
        for g in ["G", "gw.k3x9a1pq"] {
            assert!(subject_matches(&s.alive_all(), &s.alive(g)));
            for what in
                [ToGateway::Reply(1), ToGateway::Event, ToGateway::Orphans, ToGateway::Resubscribed(2)]
            {
                let subject = s.gateway(g, what);
                assert!(subject_matches(&s.to_gateway(g), &subject), "{subject}");
                assert!(!subject_matches(&s.to_gateway("H"), &subject), "{subject}");
            }
        }
        assert!(!subject_matches(&s.alive_all(), &s.disconnected()));
        for topic in [Topic::Room, Topic::Conversation] {
            assert_eq!(s.parse_room(&s.room(topic, "r 1")), Some((topic, "r 1".to_owned())));
        }
        assert_eq!(s.parse_room("P.other.x"), None);
    }

    #[test]
    fn any_room_id_is_one_token_and_comes_back() {
        for room in ["Ab3-x", "lobby", "with.dot", "with space", "_under", "ünï", "a>b*c", ""] {
            let token = room_token(room);
            assert!(token_ok(&token) || token == "_", "{room:?} -> {token:?}");
            assert!(!token.contains('.'));
            assert_eq!(room_from_token(&token).as_deref(), Some(room), "{room:?}");
            let s = Subjects::new("p");
            assert_eq!(
                s.parse_room(&s.room(Topic::Conversation, room)),
                Some((Topic::Conversation, room.into()))
            );
        }
        assert_ne!(room_token("_61"), room_token("a"));
        assert_eq!(room_from_token("_6"), None);
        assert_eq!(room_from_token("_zz"), None);
    }

    /// A worker reads back the claims a gateway verified, as they were; headers it cannot read
    /// are no claims at all.
    #[test]
    fn claims_headers_parse_back() {
        let raw = r#"{"expires":4102444800000,"sessionId":"s1","type":"auth"}"#;
        let claims = Claims::from_verified("app", raw).unwrap();
        let [(app_name, app), (claims_name, encoded)] = claims_headers(&claims);
        assert_eq!((app_name, claims_name), (header::APPLICATION, header::CLAIMS));
        assert_eq!(parse_claims(&app, &encoded), Some(claims));
        assert_eq!(parse_claims(&app, "not base64!"), None);
        assert_eq!(parse_claims(&app, &STANDARD.encode("not json")), None);
    }

    #[test]
    fn subscription_values_and_id_lists_parse_back() {
        let v = topic_value(Topic::Conversation, "r 1");
        assert_eq!(parse_topic_value(&v), Some((Topic::Conversation, "r 1".into())));
        let v = topic_value(Topic::Room, "r1");
        assert_eq!(parse_topic_value(&v), Some((Topic::Room, "r1".into())));
        assert_eq!(parse_topic_value("room "), None, "a room id is not empty");
        assert_eq!(parse_topic_value("room"), None);
        assert_eq!(parse_topic_value("planet x"), None);
        let a: ConnectionId = "a".repeat(32).parse().unwrap();
        let b: ConnectionId = "b".repeat(32).parse().unwrap();
        let payload = ids_payload([&a, &b]);
        assert_eq!(parse_ids(&payload), vec![a, b]);
        assert_eq!(parse_ids(b"junk\n\n"), vec![]);
    }
}
