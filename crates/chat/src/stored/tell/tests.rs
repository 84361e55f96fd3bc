//! What a stored worker tells gateways, and what its sweep tells for deciders that died.

use std::sync::Arc;
use std::time::Duration;

use clientmq_bus::store::Store;
use clientmq_bus::store::loopback::ModelBus;
use clientmq_bus::{Bus as _, BusMessage, Subscription as _};
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
    assert_eq!((c, *binding, what), (&conn(), bound, &vec![format!("-{room}"), format!("-{conversation}")]));
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
    /// A connection a takeover released is named in the session's record, and is told to stop
    /// hearing the room within `within`.
    async fn release_is_told_within(&mut self, within: Duration) {
        let x = "x".repeat(32);
        self.released(&x).await;
        let _ = changes(&mut self.told);
        tokio::time::sleep(within).await;
        let swept = changes(&mut self.told);
        let off = format!("-room {}", self.room_id);
        assert!(swept.iter().any(|m| m.0 == x && m.3.contains(&off)), "the released one: {swept:?}");
    }

    /// The room's record as the store has it.
    async fn room(&self) -> (u64, super::super::records::RoomRecord) {
        let key = RoomKey::Room(self.room_id.clone()).key();
        let entry = self.layout.rooms.entry(&self.store, &key).await.unwrap().unwrap();
        (entry.revision, super::super::records::RoomRecord::decode(entry.value.unwrap().as_slice()).unwrap())
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
    j.release_is_told_within(Duration::from_millis(1_500)).await;
}

/// Rooms whose touched sessions are on a gateway that is cut off (it hears the tellings but
/// never answers them) do not hold back the sweep's telling of another room: told in turn,
/// each held it for the acknowledgement's bound.
#[tokio::test(start_paused = true)]
async fn rooms_told_to_a_gateway_cut_off_do_not_hold_back_another_room() {
    let mut j = joined().await;
    // Gateway g2: subscribed, so the server answers nothing for it, and silent.
    let mut cut_off = j.bus.subscribe("clientmq.gw.g2.subscription", None).await.unwrap();
    tokio::spawn(async move { while cut_off.next().await.is_some() {} });
    let away = "0".repeat(32);
    let record =
        SessionRecord { conn: Some("x".repeat(32)), gateway: Some("g2".into()), ..Default::default() };
    j.layout.sessions.put(&j.store, &session_key(&away), record.encode_to_vec(), Some(0)).await.unwrap();
    // Three rooms sorted before the member's, each naming that session as owed a telling.
    for n in 1..=3 {
        let id = format!("{:0>24}", n);
        let mut room = crate::stored::testing::room(&id);
        room.touched.push(Touched { session: away.clone(), by: 0 });
        let key = RoomKey::Room(id).key();
        j.layout.rooms.put(&j.store, &key, room.encode_to_vec(), Some(0)).await.unwrap();
    }
    assert!(j.room_id.as_str() > "000000000000000000000003");
    j.touched(Vec::new()).await;
    let _ = changes(&mut j.told);

    tokio::time::sleep(Duration::from_secs(2)).await;
    let swept = changes(&mut j.told);
    let room = format!("+room {}", j.room_id);
    assert!(swept.iter().any(|m| m.0 == conn() && m.3.contains(&room)), "{swept:?}");
}

/// The repairs do not wait behind the rest of the timers: while the sweep of events left
/// pending in three rooms takes seconds (JetStream answers every append "in flight"), a
/// connection a takeover released meanwhile is told within a second or so.
#[tokio::test(start_paused = true)]
async fn a_slow_sweep_of_pending_events_does_not_hold_back_a_release() {
    let mut j = joined().await;
    let code = clientmq_bus::store::wire::code::DUPLICATE_IN_FLIGHT;
    for n in 1..=3 {
        let id = format!("{:0>24}", n);
        let event = chat::RoomEvent { room_id: id.clone(), ..Default::default() };
        let mut room = crate::stored::testing::room(&id);
        room.pending
            .push(super::super::records::PendingEvent { id: format!("e{n}"), event: event.encode_to_vec() });
        let subject = j.layout.history_subject(&id, clientmq_core::Topic::Room);
        j.bus.refuse_always(&subject, code, "duplicate message id is in process");
        j.layout.rooms.put(&j.store, &RoomKey::Room(id).key(), room.encode_to_vec(), Some(0)).await.unwrap();
    }
    // The timers under way, stuck on those rooms.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    j.release_is_told_within(Duration::from_millis(1_500)).await;
}
