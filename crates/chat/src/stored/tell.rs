//! What a stored worker tells gateways of its decisions: which connection hears which room.
//!
//! Several workers decide about one connection's subscriptions (one serving a join, another a
//! takeover, a third finishing what a dead one left), and their messages race on the bus. So
//! every change carries where its decision stands ([`Revision`]): the revision of the session's
//! key the decider read (the binding: which connection holds the session) and of the room's.
//! The gateway drops a change older than one it applied. That order holds because deciders
//! read the session's key after they write a room, and the rooms after they write a session's
//! key: of two racing decisions, the one with the later binding has seen the other's room.
//!
//! A room decision that changes what a session hears names the session in the room's record
//! (`touched`) until it is told. The decider tells it and clears it with the decision's events;
//! if the decider died first, any worker's sweep tells what the store says now and clears it.

use std::collections::BTreeSet;
use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use clientmq_bus::contract::{self, ToGateway, header};
use clientmq_bus::store::StoreError;
use clientmq_bus::{Bus, BusMessage};
use clientmq_core::{Revision, Topic};
use tokio::sync::oneshot;

use super::cache::{Bucket, Cache, lock};
use super::decide::{DecideError, decide};
use super::follow::refresh;
use super::history::{forget_told, settle};
use super::records::{Released, RoomKey, Touched, session_key};
use super::sessions;
use super::worker::{ACK_WITHIN, Node};

/// How many times the sweep tries again to clear what it told from a record that moved: few, so
/// that a hot room does not hold the sweep back; what stays is told and cleared next time.
const CLEAR_RETRIES: u32 = 3;

/// Where a session's subscriptions go: its connection and that connection's gateway.
type Holder = (String, String);

/// Where session `id`'s subscriptions go as `cache` has it (none while detached or once ended),
/// and the binding that says so: the revision of the session's key.
fn held(cache: &Cache, id: &str) -> (Option<Holder>, u64) {
    let holder = cache.session(id).and_then(|s| s.value.conn.clone().zip(s.value.gateway.clone()));
    (holder, cache.revision(Bucket::Sessions, &session_key(id)))
}

impl<B: Bus> Node<B> {
    /// Changes to `conn`'s subscriptions to `room` (each topic on or off), decided `at`.
    fn subscription(
        &self,
        to: (&str, &str),
        room: &str,
        changes: &[(Topic, bool)],
        at: Revision,
    ) -> BusMessage {
        let (gateway, conn) = to;
        let mut msg = BusMessage::new(self.subjects.gateway(gateway, ToGateway::Subscription), Vec::new())
            .with(header::CONNECTION, conn)
            .with(header::REVISION, at.room.to_string());
        if let Some(binding) = at.binding {
            msg = msg.with(header::BINDING, binding.to_string());
        }
        for (topic, on) in changes {
            let name = if *on { header::SUBSCRIBE } else { header::UNSUBSCRIBE };
            msg = msg.with(name, contract::topic_value(*topic, room));
        }
        msg
    }

    /// Tells `conn`'s gateway (`to`: gateway, connection) to change what it hears of `room`.
    pub async fn subscribe(&self, to: (&str, &str), room: &str, changes: &[(Topic, bool)], at: Revision) {
        self.publish(self.subscription(to, room, changes, at)).await;
    }

    /// Publishes `msgs`, each asking its gateway to acknowledge it once the change is applied
    /// at the server (so that what is appended to the room next reaches the connection), and
    /// waits for them, at most [`ACK_WITHIN`] in all: which were acknowledged. One not: the
    /// message or its answer lost with the bus, or the gateway cut off.
    pub async fn publish_acked(&self, msgs: Vec<BusMessage>) -> Vec<bool> {
        let mut waiting = Vec::with_capacity(msgs.len());
        for msg in msgs {
            let n = self.next_ack.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            self.acks.lock().unwrap_or_else(PoisonError::into_inner).insert(n, tx);
            let reply = format!("{}.wk.{}.ack.{n}", self.subjects.prefix(), self.name);
            self.publish(msg.reply_to(reply)).await;
            waiting.push((n, rx));
        }
        let until = tokio::time::Instant::now() + ACK_WITHIN;
        let mut acked = Vec::with_capacity(waiting.len());
        for (n, rx) in waiting {
            acked.push(matches!(tokio::time::timeout_at(until, rx).await, Ok(Ok(()))));
            self.acks.lock().unwrap_or_else(PoisonError::into_inner).remove(&n);
        }
        if acked.contains(&false) {
            tracing::debug!(
                lost = acked.iter().filter(|a| !**a).count(),
                "subscriptions not acknowledged in time"
            );
        }
        acked
    }

    /// The revision of session `id`'s key the cache holds (its deletion's, once ended).
    pub fn binding(&self, id: &str) -> u64 {
        lock(&self.cache).revision(Bucket::Sessions, &session_key(id))
    }

    /// Reads session `id`'s key from the store: where its subscriptions go now (none while it is
    /// detached or once it ended), and the binding read. `None`: the store did not answer.
    pub async fn holder(&self, id: &str) -> Option<(Option<Holder>, u64)> {
        let key = session_key(id);
        refresh(&self.store, &self.layout.sessions, Bucket::Sessions, &key, &self.cache).await.ok()?;
        Some(held(&lock(&self.cache), id))
    }

    /// After a room decision at `revision` about session `id` (asked on `conn` through `g`):
    /// the connection holding the session as the store says now, not the asker, gets
    /// `changes`. A resume through another connection may have moved the session meanwhile:
    /// of the two, each writes its key and then reads the other's, so one of them sees the
    /// other. An unsubscribe also reaches the asker if the session has moved on. The store
    /// unreadable, the holder and binding are the cache's, from one look: never the asker at
    /// the cache's binding, which subscribed an ended session's old connection at a binding
    /// past its Bye's unsubscribe (explore seed 580,033,916).
    ///
    /// `false`: the holder did not acknowledge the change, so the session stays touched in the
    /// room's record for the sweep to tell again. Cleared anyway, a join's member whose
    /// subscription the worker's bus lost never heard its room (explore seed 630,030,169).
    pub async fn tell_holder(
        &self,
        id: &str,
        asker: (&str, &str),
        room: &str,
        changes: &[(Topic, bool)],
        revision: u64,
    ) -> bool {
        let (holder, binding) = match self.holder(id).await {
            Some(read) => read,
            None => held(&lock(&self.cache), id),
        };
        let at = Revision { binding: Some(binding), room: revision };
        let subscribes = changes.iter().all(|(_, on)| *on);
        let mut told = true;
        if let Some((conn, gateway)) = &holder {
            let msg = self.subscription((gateway, conn), room, changes, at);
            told = self.publish_acked(vec![msg]).await == [true];
        }
        let told_asker =
            holder.as_ref().is_some_and(|(conn, gateway)| (gateway.as_str(), conn.as_str()) == asker);
        if !subscribes && !told_asker {
            self.subscribe(asker, room, changes, at).await;
        }
        told
    }

    /// Subscribes or unsubscribes `conn` (through `g`) to every room of session `id` and the
    /// conversations it subscribed to, as the cache knows them, read off the session's key at
    /// `binding` (the caller's write, before it read the rooms). `false`: not all acknowledged.
    pub async fn tell_rooms(&self, id: &str, to: (&str, &str), on: bool, binding: u64) -> bool {
        let messages = self.rooms_changes(id, to, on, binding);
        !self.publish_acked(messages).await.contains(&false)
    }

    /// What [`Node::tell_rooms`] sends: a message per room of session `id` the cache knows.
    fn rooms_changes(&self, id: &str, to: (&str, &str), on: bool, binding: u64) -> Vec<BusMessage> {
        let cache = lock(&self.cache);
        (cache.rooms_of(id))
            .filter_map(|room| {
                let r = cache.room(room)?;
                let listens = r.value.listeners.iter().any(|l| l == id);
                let at = Revision { binding: Some(binding), room: r.revision };
                let changes: &[(Topic, bool)] = if on && !listens {
                    &[(Topic::Room, true)]
                } else {
                    &[(Topic::Room, on), (Topic::Conversation, on)]
                };
                Some(self.subscription(to, room, changes, at))
            })
            .collect()
    }

    /// A gateway back from an absence lists its connections and their sessions: each that
    /// still holds its session, as the store says, is told again every room it hears, and each
    /// its session moved away from to stop hearing them (the sessions' keys read first, then
    /// the rooms), then the gateway is answered.
    pub async fn resubscribe(&self, msg: BusMessage) {
        let (Some(reply), Some(g)) = (msg.reply.clone(), msg.header(header::GATEWAY)) else { return };
        let answer = BusMessage::new(reply, Vec::new());
        let Some(pairs) = contract::parse_sessions(&msg.payload) else {
            return self.publish(answer.with(header::ERROR, "malformed")).await;
        };
        // Unanswered if the store does not answer: the gateway asks again.
        if !matches!(self.catch_up(Bucket::Sessions).await, Ok(true)) {
            return;
        }
        let told: Vec<(String, String, bool, u64)> = {
            let cache = lock(&self.cache);
            (pairs.into_iter())
                .filter_map(|(conn, session)| {
                    let s = cache.session(&session)?;
                    let conn = conn.to_string();
                    let holds = s.value.held_by(&conn, g);
                    Some((session, conn, holds, s.revision))
                })
                .collect()
        };
        if told.is_empty() || matches!(self.catch_up(Bucket::Rooms).await, Ok(true)) {
            // Not acknowledged one by one: a list holds thousands of connections, and the
            // answer, sent after them on the same connection, tells the gateway they are sent.
            for (session, conn, holds, binding) in told {
                for msg in self.rooms_changes(&session, (g, &conn), holds, binding) {
                    self.publish(msg).await;
                }
            }
            self.publish(answer).await;
        }
    }

    /// Tells the connections session `id` moved away from (a takeover, a let-go) to stop
    /// hearing its rooms, as the store says now (the session's key read first, then the rooms),
    /// then clears them from its record: what a mover that died before telling them left undone.
    pub async fn tell_released(&self, id: &str) -> Result<(), DecideError> {
        // The cache holds the mover's own write: most moves release nobody, and read nothing.
        if lock(&self.cache).session(id).is_none_or(|s| s.value.released.is_empty()) {
            return Ok(());
        }
        let Some((_, binding)) = self.holder(id).await else { return Ok(()) };
        let released = match lock(&self.cache).session(id) {
            Some(s) if !s.value.released.is_empty() => s.value.released.clone(),
            _ => return Ok(()),
        };
        self.catch_up(Bucket::Rooms).await?;
        // All at once, one wait: a released connection's gateway may be gone and never answer.
        // What no gateway acknowledged stays, for the next sweep.
        let changes: Vec<Vec<BusMessage>> =
            released.iter().map(|r| self.rooms_changes(id, (&r.gateway, &r.conn), false, binding)).collect();
        let counts: Vec<usize> = changes.iter().map(Vec::len).collect();
        let mut acked = self.publish_acked(changes.into_iter().flatten().collect()).await.into_iter();
        let told: Vec<Released> = (released.into_iter().zip(counts))
            .filter(|(_, n)| acked.by_ref().take(*n).filter(|a| !a).count() == 0)
            .map(|(r, _)| r)
            .collect();
        if !told.is_empty() {
            decide(&self.store, &self.layout, &self.cache, |c| sessions::told(c, id, &told)).await?;
        }
        Ok(())
    }

    /// Tells the connection holding session `id` to hear its rooms, as the store says now (the
    /// session's key read first, then the rooms), then clears the debt from its record: what a
    /// binder (a resume, a takeover) that died before telling it left undone.
    pub async fn tell_holder_rooms(&self, id: &str) -> Result<(), DecideError> {
        let Some((Some((conn, gateway)), binding)) = self.holder(id).await else { return Ok(()) };
        if lock(&self.cache).session(id).is_none_or(|s| !s.value.untold) {
            return Ok(());
        }
        if !self.catch_up(Bucket::Rooms).await? {
            return Ok(());
        }
        if self.tell_rooms(id, (&gateway, &conn), true, binding).await {
            decide(&self.store, &self.layout, &self.cache, |c| sessions::told_holder(c, id, &conn, &gateway))
                .await?;
        }
        Ok(())
    }

    /// Tells the connections of the sessions `touched` by decisions about `room` what they
    /// hear of it as the store says now: what a decider that died before telling them left
    /// undone. The sessions' keys are read (one catch-up, however many there are: a hot room
    /// under a dead worker collects dozens) before the room's. Then clears them from the
    /// record ([`Node::clear_touched`]).
    pub async fn tell_touched(&self, room: &str) -> Result<(), StoreError> {
        let touched = match lock(&self.cache).room(room) {
            Some(r) if !r.value.touched.is_empty() => r.value.touched.clone(),
            _ => return Ok(()),
        };
        if !self.catch_up(Bucket::Sessions).await? {
            return Ok(());
        }
        let holders: Vec<(String, Holder, u64)> = {
            let cache = lock(&self.cache);
            let sessions: BTreeSet<&str> = touched.iter().map(|t| t.session.as_str()).collect();
            (sessions.into_iter())
                .filter_map(|id| {
                    let (holder, binding) = held(&cache, id);
                    Some((id.to_owned(), holder?, binding))
                })
                .collect()
        };
        let key = RoomKey::Room(room.to_owned()).key();
        refresh(&self.store, &self.layout.rooms, Bucket::Rooms, &key, &self.cache).await?;
        let messages: Vec<BusMessage> = {
            let cache = lock(&self.cache);
            let Some(record) = cache.room(room) else { return Ok(()) };
            (holders.iter())
                .map(|(session, (conn, gateway), binding)| {
                    let member = record.value.member(session).is_some();
                    let listens = member && record.value.listeners.contains(session);
                    let changes = [(Topic::Room, member), (Topic::Conversation, listens)];
                    let at = Revision { binding: Some(*binding), room: record.revision };
                    self.subscription((gateway, conn), room, &changes, at)
                })
                .collect()
        };
        // What was not acknowledged stays touched, to be told at the next sweep.
        let acked = self.publish_acked(messages).await;
        let untold: BTreeSet<&str> =
            holders.iter().zip(acked).filter(|(_, acked)| !acked).map(|((id, ..), _)| id.as_str()).collect();
        let told: Vec<Touched> =
            touched.into_iter().filter(|t| !untold.contains(t.session.as_str())).collect();
        self.clear_touched(room, &told).await
    }

    /// Clears from `room`'s record the sessions [`Node::tell_touched`] told, with the events
    /// pending there (in the sweep: not a task apart). A decision that moved the record meanwhile left them in it: cleared from
    /// the record as it is then, a few times at most. Each retry only clears (one conditional
    /// write, no appends), so that it holds a hot room's record no longer than a round trip
    /// against its deciders; what stays is told again and cleared at the next sweep. Many
    /// retries, each appending the room's pending events again, held the sweep back for two
    /// seconds in a hot room, past the bound a dead decider's sessions are told within
    /// (explore seed 570,091,269); run apart from the sweep, they slowed the deciders
    /// (580,039,970).
    async fn clear_touched(&self, room: &str, touched: &[Touched]) -> Result<(), StoreError> {
        let key = RoomKey::Room(room.to_owned()).key();
        let told = |t: &Touched| touched.contains(t);
        // The first attempt appends what a dead decider left pending too; the retries only
        // clear, so as to hold the record no longer than a round trip against the deciders.
        settle(&self.store, &self.layout, &self.cache, room, told).await?;
        for _ in 0..CLEAR_RETRIES {
            if lock(&self.cache).room(room).is_none_or(|r| !r.value.touched.iter().any(told)) {
                break;
            }
            refresh(&self.store, &self.layout.rooms, Bucket::Rooms, &key, &self.cache).await?;
            forget_told(&self.store, &self.layout, &self.cache, room, told).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
