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
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use clientmq_bus::store::Store;
    use clientmq_bus::store::loopback::ModelBus;
    use clientmq_bus::{Bus as _, BusMessage};
    use clientmq_core::proto::{chat, pcast};
    use prost::Message;

    use super::*;
    use crate::stored::layout::Layout;
    use crate::stored::records::SessionRecord;
    use crate::stored::testing::{Served, answers, changes, conn, gateway, request, served};

    /// The revision of `key` in `bucket` of the store, read apart from the worker.
    async fn revision(store: &Store<ModelBus>, bucket: &clientmq_bus::store::kv::Bucket, key: &str) -> u64 {
        bucket.entry(store, key).await.unwrap().map_or(0, |e| e.revision)
    }

    /// A join subscribes its connection, a leave unsubscribes it, each at the session's binding
    /// as the store has it and at the room's revision of the decision; a resume through another
    /// connection tells the new one the session's rooms at the new binding, and the old one to
    /// stop hearing them.
    #[tokio::test(start_paused = true)]
    async fn decisions_tell_the_holder_at_the_binding_and_revision_they_read() {
        let bus = Arc::new(ModelBus::default());
        let mut told = gateway(&bus).await;
        let Served { mut replies, session, room_id, .. } = served(&bus, None, std::future::pending()).await;
        let store = Store::new(bus.clone(), "reader", Duration::from_secs(1)).await.unwrap();
        let layout = Layout::new("clientmq", 1, 100);
        let room_key = RoomKey::Room(room_id.clone()).key();
        let quiet = Duration::from_millis(200);
        let _ = changes(&mut told);

        let join = chat::JoinRoom { room_id: Some(room_id.clone()), ..Default::default() };
        bus.publish(request(2, "chat.JoinRoom", join.encode_to_vec(), 10_000)).await.unwrap();
        assert_eq!(answers(&mut replies, quiet).await.len(), 1);
        let bound = revision(&store, &layout.sessions, &session_key(&session)).await;
        let joined = changes(&mut told);
        let room = format!("room {room_id}");
        assert_eq!(joined.len(), 1, "{joined:?}");
        let (c, binding, at, what) = &joined[0];
        assert_eq!((c, *binding, what), (&conn(), bound, &vec![format!("+{room}")]));
        let room_now = revision(&store, &layout.rooms, &room_key).await;
        assert!(*at > 0 && *at <= room_now, "{at} of {room_now}");

        let leave = chat::LeaveRoom { room_id: room_id.clone(), ..Default::default() };
        bus.publish(request(3, "chat.LeaveRoom", leave.encode_to_vec(), 10_000)).await.unwrap();
        assert_eq!(answers(&mut replies, quiet).await.len(), 1);
        let left = changes(&mut told);
        let conversation = format!("conversation {room_id}");
        assert_eq!(left.len(), 1, "{left:?}");
        let (c, binding, left_at, what) = &left[0];
        assert_eq!(
            (c, *binding, what),
            (&conn(), bound, &vec![format!("-{room}"), format!("-{conversation}")])
        );
        assert!(left_at > at, "the leave after the join: {left_at} > {at}");

        // Joined again and listening, then resumed through connection d: d hears the room and
        // its conversation at the new binding, the first connection stops hearing them.
        bus.publish(request(4, "chat.JoinRoom", join.encode_to_vec(), 10_000)).await.unwrap();
        assert_eq!(answers(&mut replies, quiet).await.len(), 1);
        let listen = chat::FetchRoomConversation {
            room_id: room_id.clone(),
            options: vec![chat::RoomConversationOption::Subscribe as i32],
            ..Default::default()
        };
        bus.publish(request(6, "chat.FetchRoomConversation", listen.encode_to_vec(), 10_000)).await.unwrap();
        assert_eq!(answers(&mut replies, quiet).await.len(), 1);
        let _ = changes(&mut told);
        let d = "d".repeat(32);
        let auth = pcast::Authenticate { session_id: Some(session.clone()), ..Default::default() };
        let resume = BusMessage::new("clientmq.req.pcast.Authenticate", auth.encode_to_vec())
            .reply_to("t.reply.5")
            .with(header::GATEWAY, "g1")
            .with(header::CONNECTION, &d);
        bus.publish(resume).await.unwrap();
        let resumed = answers(&mut replies, quiet).await;
        let answer = pcast::AuthenticateResponse::decode(resumed[0].1.payload.as_slice()).unwrap();
        assert_eq!(answer.session_id.as_deref(), Some(session.as_str()));
        let record = layout.sessions.entry(&store, &session_key(&session)).await.unwrap().unwrap();
        let value = SessionRecord::decode(record.value.unwrap().as_slice()).unwrap();
        assert!(!value.untold, "told by the binder, and so no longer owed");
        let moved = changes(&mut told);
        let to = |who: &str| moved.iter().filter(|m| m.0 == who).collect::<Vec<_>>();
        let (to_d, to_c) = (to(&d), to(&conn()));
        let both = |sign: &str| vec![format!("{sign}{room}"), format!("{sign}{conversation}")];
        assert!(to_d.iter().any(|m| m.3 == both("+") && m.1 > bound), "{moved:?}");
        assert!(to_c.iter().any(|m| m.3 == both("-")), "{moved:?}");
    }

    /// A served worker whose session joined its room, a fake gateway's record of what it is told,
    /// and a store client of the test's own.
    struct Joined {
        bus: Arc<ModelBus>,
        told: tokio::sync::mpsc::UnboundedReceiver<BusMessage>,
        session: String,
        room_id: String,
        store: Store<ModelBus>,
        layout: Layout,
    }

    async fn joined() -> Joined {
        let bus = Arc::new(ModelBus::default());
        let told = gateway(&bus).await;
        let Served { mut replies, session, room_id, .. } = served(&bus, None, std::future::pending()).await;
        let join = chat::JoinRoom { room_id: Some(room_id.clone()), ..Default::default() };
        bus.publish(request(2, "chat.JoinRoom", join.encode_to_vec(), 10_000)).await.unwrap();
        assert_eq!(answers(&mut replies, Duration::from_millis(200)).await.len(), 1);
        let store = Store::new(bus.clone(), "as-a-dead-worker", Duration::from_secs(1)).await.unwrap();
        Joined { bus, told, session, room_id, store, layout: Layout::new("clientmq", 1, 100) }
    }

    /// What a dead binder left owed, written in the store as it leaves it: the sweep tells the
    /// holder its rooms, and clears the debt.
    #[tokio::test(start_paused = true)]
    async fn the_sweep_tells_a_dead_binders_connection_its_rooms() {
        let Joined { mut told, session, room_id, store, layout, .. } = joined().await;
        let key = session_key(&session);
        let entry = layout.sessions.entry(&store, &key).await.unwrap().unwrap();
        let mut record = SessionRecord::decode(entry.value.unwrap().as_slice()).unwrap();
        let e = "e".repeat(32);
        record.conn = Some(e.clone());
        record.untold = true;
        let bound =
            layout.sessions.put(&store, &key, record.encode_to_vec(), Some(entry.revision)).await.unwrap();
        let _ = changes(&mut told);

        tokio::time::sleep(Duration::from_secs(3)).await;
        let swept = changes(&mut told);
        let room = format!("+room {room_id}");
        assert!(swept.iter().any(|m| m.0 == e && m.1 == bound && m.3.contains(&room)), "{swept:?}");
        let entry = layout.sessions.entry(&store, &key).await.unwrap().unwrap();
        let record = SessionRecord::decode(entry.value.unwrap().as_slice()).unwrap();
        assert!(!record.untold && record.conn.as_deref() == Some(e.as_str()), "{record:?}");
    }

    impl Joined {
        /// The room's record as the store has it.
        async fn room(&self) -> (u64, super::super::records::RoomRecord) {
            let key = RoomKey::Room(self.room_id.clone()).key();
            let entry = self.layout.rooms.entry(&self.store, &key).await.unwrap().unwrap();
            (
                entry.revision,
                super::super::records::RoomRecord::decode(entry.value.unwrap().as_slice()).unwrap(),
            )
        }

        /// As a decider that died before telling leaves it: the session named in the room's
        /// record (`touched`), with `pending` events. The record's new revision.
        async fn touched(&self, pending: Vec<super::super::records::PendingEvent>) -> u64 {
            let (revision, mut room) = self.room().await;
            room.pending.extend(pending);
            room.touched.push(Touched { session: self.session.clone(), by: revision });
            let key = RoomKey::Room(self.room_id.clone()).key();
            self.layout.rooms.put(&self.store, &key, room.encode_to_vec(), Some(revision)).await.unwrap()
        }

        /// As a mover that died before telling leaves it: connection `conn` named in the
        /// session's record (`released`).
        async fn released(&self, conn: &str) {
            let key = session_key(&self.session);
            let entry = self.layout.sessions.entry(&self.store, &key).await.unwrap().unwrap();
            let mut record = SessionRecord::decode(entry.value.unwrap().as_slice()).unwrap();
            record.released.push(super::super::records::Released { conn: conn.into(), gateway: "g1".into() });
            self.layout
                .sessions
                .put(&self.store, &key, record.encode_to_vec(), Some(entry.revision))
                .await
                .unwrap();
        }
    }

    /// What a dead decider left to tell, written in the store as it leaves it: a connection the
    /// session moved away from (`released`) is told to stop hearing its rooms, and a session a
    /// room decision touched (`touched`) is told what it hears of the room; each is then
    /// cleared.
    #[tokio::test(start_paused = true)]
    async fn the_sweep_tells_what_a_dead_decider_left_and_clears_it() {
        let mut j = joined().await;
        let x = "x".repeat(32);
        j.released(&x).await;
        j.touched(Vec::new()).await;
        let _ = changes(&mut j.told);

        tokio::time::sleep(Duration::from_secs(3)).await;
        let swept = changes(&mut j.told);
        let room_id = &j.room_id;
        let (on, off) = (format!("+room {room_id}"), format!("-room {room_id}"));
        assert!(swept.iter().any(|m| m.0 == x && m.3.contains(&off)), "the released one: {swept:?}");
        // A member that does not listen: the room, and not its conversation.
        let heard = vec![on.clone(), format!("-conversation {room_id}")];
        assert!(swept.iter().any(|m| m.0 == conn() && m.3 == heard), "the touched one: {swept:?}");
        let entry = j.layout.sessions.entry(&j.store, &session_key(&j.session)).await.unwrap().unwrap();
        assert!(SessionRecord::decode(entry.value.unwrap().as_slice()).unwrap().released.is_empty());
        let touched = j.room().await.1.touched;
        assert!(touched.is_empty(), "{touched:?}");
    }

    /// The sweep's clearing of what it told loses to a decision that moved the room's record
    /// (here: its conditional write refused once, as JetStream refuses a write expecting an
    /// older revision): it reads the record again and clears it then, so the session is told
    /// once, not again at the next sweep.
    #[tokio::test(start_paused = true)]
    async fn the_sweep_clears_what_it_told_again_when_a_decision_moved_the_record() {
        let mut j = joined().await;
        let now = j.touched(Vec::new()).await;
        let subject = format!("$KV.{}.{}", j.layout.rooms.name(), RoomKey::Room(j.room_id.clone()).key());
        let code = clientmq_bus::store::wire::code::WRONG_LAST_SEQUENCE;
        j.bus.refuse_next(&subject, code, &format!("wrong last sequence: {now}"));
        let _ = changes(&mut j.told);

        tokio::time::sleep(Duration::from_secs(3)).await;
        let on = format!("+room {}", j.room_id);
        let swept = changes(&mut j.told);
        let times = swept.iter().filter(|m| m.0 == conn() && m.3.contains(&on)).count();
        assert_eq!(times, 1, "told once: {swept:?}");
        let touched = j.room().await.1.touched;
        assert!(touched.is_empty(), "{touched:?}");
    }

    /// The sweep's repairs do not wait on each other: while a room's telling fails (its events
    /// cannot be appended: JetStream answers every append "in flight"), a connection a
    /// takeover released is still told to stop hearing the session's rooms at the next sweep.
    #[tokio::test(start_paused = true)]
    async fn a_room_the_sweep_cannot_settle_does_not_hold_back_a_release() {
        let mut j = joined().await;
        let event = chat::RoomEvent { room_id: j.room_id.clone(), ..Default::default() };
        j.touched(vec![super::super::records::PendingEvent { id: "e".into(), event: event.encode_to_vec() }])
            .await;
        let subject = j.layout.history_subject(&j.room_id, clientmq_core::Topic::Room);
        let code = clientmq_bus::store::wire::code::DUPLICATE_IN_FLIGHT;
        j.bus.refuse_always(&subject, code, "duplicate message id is in process");
        let x = "x".repeat(32);
        j.released(&x).await;
        let _ = changes(&mut j.told);

        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let swept = changes(&mut j.told);
        let off = format!("-room {}", j.room_id);
        assert!(swept.iter().any(|m| m.0 == x && m.3.contains(&off)), "the released one: {swept:?}");
    }
}
