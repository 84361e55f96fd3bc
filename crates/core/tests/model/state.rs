//! The model's records: connection phases and state, requests in flight, the call being checked.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Instant;

use clientmq_core::{ConnectionId, Encoding, Event, EventKind, LostReason, Output, Topic};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Open,
    Closing { code: u16, since: Instant },
    Ended,
}

#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) remote: IpAddr,
    pub(crate) phase: Phase,
    /// The phase the connection was in when its `Abort`/`Release` went out.
    pub(crate) before_end: Option<Phase>,
    pub(crate) aborted: bool,
    pub(crate) next_heartbeat: Instant,
    /// The unanswered ping: payload and when it went out.
    pub(crate) ping: Option<(Vec<u8>, Instant)>,
    pub(crate) last_ping: Option<Vec<u8>>,
    pub(crate) encoding: Encoding,
    pub(crate) session: Option<String>,
    pub(crate) rooms: BTreeSet<String>,
    pub(crate) conversations: BTreeSet<String>,
    /// Backend tokens in flight.
    pub(crate) pending: BTreeSet<u64>,
    /// Server request numbers in flight.
    pub(crate) server_requests: BTreeSet<u64>,
    /// Drain found requests in flight and waits for them.
    pub(crate) drain_due: bool,
}

impl Conn {
    pub(crate) fn new(remote: IpAddr, next_heartbeat: Instant) -> Self {
        Conn {
            remote,
            phase: Phase::Open,
            before_end: None,
            aborted: false,
            next_heartbeat,
            ping: None,
            last_ping: None,
            encoding: Encoding::default(),
            session: None,
            rooms: BTreeSet::new(),
            conversations: BTreeSet::new(),
            pending: BTreeSet::new(),
            server_requests: BTreeSet::new(),
            drain_due: false,
        }
    }

    pub(crate) fn topic(&mut self, topic: Topic) -> &mut BTreeSet<String> {
        match topic {
            Topic::Room => &mut self.rooms,
            Topic::Conversation => &mut self.conversations,
        }
    }

    pub(crate) fn subscribe(&mut self, topic: Topic, room: String, limit: usize, evs: &mut Vec<EventKind>) {
        if self.topic(topic).contains(&room) {
            return;
        }
        if self.rooms.len() + self.conversations.len() >= limit {
            evs.push(EventKind::SubscriptionLimit { room });
            return;
        }
        self.topic(topic).insert(room.clone());
        evs.push(EventKind::Subscribed { topic, room });
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) conn: ConnectionId,
    pub(crate) request_id: String,
    pub(crate) request_type: String,
    pub(crate) room: Option<String>,
    pub(crate) subscribe: bool,
    pub(crate) at: Instant,
    /// The answer goes out the way the request came in.
    pub(crate) encoding: Encoding,
}

impl Pending {
    /// The room or conversation the gateway hears while this request is in flight: a join or a
    /// subscribing fetch that names it.
    pub(crate) fn hears(&self) -> Option<(Topic, String)> {
        let room = self.room.clone().filter(|r| !r.is_empty())?;
        match self.request_type.as_str() {
            "chat.JoinRoom" => Some((Topic::Room, room)),
            "chat.FetchRoomConversation" if self.subscribe => Some((Topic::Conversation, room)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ServerReq {
    pub(crate) conn: ConnectionId,
    pub(crate) token: u64,
    pub(crate) at: Instant,
}

/// The call whose outputs are being checked.
#[derive(Debug, Clone)]
pub(crate) enum Ctx {
    Open,
    Timeout,
    Frame {
        conn: ConnectionId,
        request_id: Option<String>,
        request_type: String,
        payload: Vec<u8>,
        room: Option<String>,
        subscribe: bool,
        sr_answer: Option<u64>,
    },
    Pong,
    PeerClosed {
        conn: ConnectionId,
        code: Option<u16>,
    },
    Lost {
        conn: ConnectionId,
        reason: LostReason,
    },
    SendFailed {
        conn: ConnectionId,
    },
    Reply {
        token: u64,
    },
    Deliver {
        recipients: Vec<ConnectionId>,
        event_type: String,
        payload: Vec<u8>,
    },
    ServerRequest {
        conn: ConnectionId,
        token: u64,
        request_type: String,
        payload: Vec<u8>,
    },
    Drain,
    Subscription,
}

/// What one call produced.
pub(crate) struct Batch {
    pub(crate) outs: Vec<Output>,
    pub(crate) evs: Vec<Event>,
}

impl Batch {
    pub(crate) fn kinds(&self) -> Vec<&EventKind> {
        self.evs.iter().map(|e| &e.kind).collect()
    }
}
