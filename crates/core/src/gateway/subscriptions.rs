//! Subscriptions and the session: the session a successful authentication names, the
//! subscriptions the backend decides, the interest they add up to, and deliveries to a
//! connection, a room or a conversation.

use prost::Message as _;

use super::requests::message;
use super::{Gateway, Output};
use std::time::Instant;

use crate::ConnectionId;
use crate::codec::Broadcast;
use crate::edge_auth::RequiredTag;
use crate::event::{DropReason, EventKind, Stray, Topic};
use crate::port::Target;
use crate::proto::{mq, pcast};
use crate::registry::Subscribe;

use mq::message::MessageType;

/// Where a backend's decision about a subscription stands among its decisions, when several
/// processes make them and their messages race (workers on a store, numbering decisions by
/// the store's revisions). The session the connection holds and the room's members are two
/// records, each with its own revisions, so a change carries both:
///
/// - `binding`: the revision of the record binding the connection to its session, as the
///   decider read it. A subscribe read off an older binding than any change applied to the
///   connection is dropped: the session moved since (taken over, ended, let go, or bound again
///   and its rooms told again), and whoever moved it told the connection what it hears now.
/// - `room`: the room's revision. A change older, by `(binding, room)`, than the last one
///   applied to that subscription is dropped.
///
/// Deciders read the binding after they write a room, and the rooms after they write a
/// binding: then of two racing decisions, the one with the later binding has seen the other's
/// room, and a later binding never comes with an older room for the same session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revision {
    pub binding: Option<u64>,
    pub room: u64,
}

impl Revision {
    /// A room's revision alone: ordered per subscription only.
    pub fn room(room: u64) -> Revision {
        Revision { binding: None, room }
    }
}

/// What [`Gateway::forget_subscriptions`] dropped of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forgotten {
    pub conn: ConnectionId,
    /// The session its authentication named.
    pub session: String,
    /// Each with the revision of the last change applied to it, if stamped: restored at it,
    /// it is dropped if a later change (a `pcast.Bye`'s unsubscribe) was applied meanwhile.
    pub subscriptions: Vec<(Topic, String, Option<Revision>)>,
}

impl Gateway {
    /// The backend may have lost subscription changes (the bus was away): every connection
    /// holding a session stops hearing its rooms and conversations until the backend tells it
    /// again. Returns what was dropped, connection by connection in id order, so the caller can
    /// ask the backend to tell them again (or, if nobody will, restore them). Revisions applied
    /// stay: what the backend tells again is ordered against what it told before.
    pub fn forget_subscriptions(&mut self, now: Instant) -> Vec<Forgotten> {
        self.advance(now);
        let held: Vec<Forgotten> = (self.registry.iter())
            .filter_map(|(id, c)| {
                let session = c.session_id.clone()?;
                let stamp = |topic, room: &String| {
                    let last = c.revisions.get(&(topic, room.clone()));
                    (
                        topic,
                        room.clone(),
                        last.map(|&(binding, room)| Revision { binding: Some(binding), room }),
                    )
                };
                let rooms = c.rooms.iter().map(|r| stamp(Topic::Room, r));
                let conversations = c.conversations.iter().map(|r| stamp(Topic::Conversation, r));
                Some(Forgotten { conn: *id, session, subscriptions: rooms.chain(conversations).collect() })
            })
            .collect();
        for f in &held {
            for (topic, room, _) in &f.subscriptions {
                self.unsubscribe(f.conn, *topic, room);
            }
        }
        held
    }

    /// A successful authentication's reply names the session the connection now has.
    pub(crate) fn read_session(&mut self, id: ConnectionId, room_tag: &Option<RequiredTag>, payload: &[u8]) {
        let Ok(resp) = pcast::AuthenticateResponse::decode(payload) else {
            return;
        };
        if let (true, Some(session)) = (resp.status == "ok", resp.session_id) {
            if let Some(conn) = self.registry.get_mut(&id) {
                conn.session_id = Some(session.clone());
                conn.room_tag = room_tag.clone();
            }
            self.trace(Some(id), EventKind::Authenticated { session_id: session });
        }
    }

    /// The backend adds or removes a subscription (a join, a leave, a resumed session,
    /// `pcast.Bye`, a session taken over by another connection), unless a later decision about
    /// it (by `revision`) was applied already.
    pub(crate) fn on_subscription(
        &mut self,
        id: ConnectionId,
        topic: Topic,
        room: String,
        subscribe: bool,
        revision: Option<Revision>,
    ) {
        if !self.registry.contains(&id) {
            return self.stray(id, Stray::Subscription);
        }
        if let Some(at) = revision
            && !self.registry.admit_revision(&id, topic, &room, at, subscribe)
        {
            let stale = EventKind::SubscriptionStale { topic, room, revision: at.room, binding: at.binding };
            return self.trace(Some(id), stale);
        }
        if subscribe {
            self.subscribe(id, topic, room);
        } else {
            self.unsubscribe(id, topic, &room);
        }
    }

    fn subscribe(&mut self, id: ConnectionId, topic: Topic, room: String) {
        let had = self.registry.has_interest(topic, &room);
        match self.registry.subscribe(&id, topic, &room, self.config.max_subscriptions) {
            Subscribe::Added => {
                self.interest_after(topic, &room, had);
                self.trace(Some(id), EventKind::Subscribed { topic, room });
            }
            Subscribe::AlreadyThere => {}
            Subscribe::OverLimit => self.trace(Some(id), EventKind::SubscriptionLimit { room }),
        }
    }

    fn unsubscribe(&mut self, id: ConnectionId, topic: Topic, room: &str) {
        let had = self.registry.has_interest(topic, room);
        if self.registry.unsubscribe(&id, topic, room) {
            self.interest_after(topic, room, had);
            self.trace(Some(id), EventKind::Unsubscribed { topic, room: room.to_owned() });
        }
    }

    /// Holds interest in a room or conversation for a request in flight.
    pub(crate) fn hold_interest(&mut self, topic: Topic, room: &str) {
        let had = self.registry.has_interest(topic, room);
        self.registry.hold_interest(topic, room);
        self.interest_after(topic, room, had);
    }

    pub(crate) fn release_interest(&mut self, topic: Topic, room: &str) {
        let had = self.registry.has_interest(topic, room);
        self.registry.release_interest(topic, room);
        self.interest_after(topic, room, had);
    }

    /// Reports a change of interest in `room`, given whether there was interest before.
    pub(crate) fn interest_after(&mut self, topic: Topic, room: &str, had: bool) {
        let has = self.registry.has_interest(topic, room);
        if had != has {
            self.push(Output::Interest { topic, room: room.to_owned(), on: has });
        }
    }

    pub(crate) fn on_deliver(&mut self, target: Target, event_type: &str, payload: &[u8]) {
        let ids = match target {
            Target::Connection(id) => {
                if !self.registry.contains(&id) {
                    return self.stray(id, Stray::Delivery);
                }
                vec![id]
            }
            Target::Room(room) => self.registry.subscribers(Topic::Room, &room),
            Target::Conversation(room) => self.registry.subscribers(Topic::Conversation, &room),
        };
        // Encoded once for all of them; each frame differs only by the session it names.
        let event = Broadcast::new(message(MessageType::Event, None, event_type, payload.to_vec()));
        let traced: Option<std::sync::Arc<str>> = self.config.trace_deliveries.then(|| event_type.into());
        let mut frames = Vec::with_capacity(ids.len());
        for id in ids {
            let head = match self.registry.get(&id) {
                Some(c) if c.is_open() => event.head(c.session_id.as_deref(), c.encoding),
                _ => {
                    self.drop_frame(id, DropReason::NotOpen);
                    continue;
                }
            };
            if self.dropped_as_too_large(id, event.frame_len(&head)) {
                continue;
            }
            frames.push((id, head));
            if let Some(traced) = &traced {
                self.trace(Some(id), EventKind::Delivered { event_type: traced.clone() });
            }
        }
        if !frames.is_empty() {
            self.push(Output::Deliver(event.deliver(frames)));
        }
    }
}
