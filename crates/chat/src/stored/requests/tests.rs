//! Requests on a stored worker: who may decide, and what is told when the bus loses it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clientmq_bus::store::loopback::ModelBus;
use clientmq_bus::{Bus as _, BusMessage, Subscription as _};
use clientmq_core::proto::pcast;

use super::*;
use crate::stored::records::SessionRecord;
use crate::stored::testing;

/// A served worker whose session made a room, its gateway `g1` able to go deaf (see
/// [`testing::gateway_deaf`]).
struct Deafened {
    bus: Arc<ModelBus>,
    deaf: Arc<AtomicBool>,
    told: tokio::sync::mpsc::UnboundedReceiver<BusMessage>,
    replies: clientmq_bus::store::loopback::ModelSubscription,
    session: String,
    room_id: String,
}

async fn deafened() -> Deafened {
    let bus = Arc::new(ModelBus::default());
    let deaf = Arc::new(AtomicBool::new(false));
    let told = testing::gateway_deaf(&bus, deaf.clone()).await;
    let testing::Served { replies, session, room_id, .. } =
        testing::served(&bus, None, std::future::pending()).await;
    Deafened { bus, deaf, told, replies, session, room_id }
}

impl Deafened {
    /// Joins the session to its room, what the gateway heard of it drained.
    async fn join(&mut self) {
        let join = chat::JoinRoom { room_id: Some(self.room_id.clone()), ..Default::default() };
        self.bus.publish(testing::request(2, "chat.JoinRoom", join.encode_to_vec(), 10_000)).await.unwrap();
        assert_eq!(testing::answers(&mut self.replies, Duration::from_millis(200)).await.len(), 1);
        let _ = testing::changes(&mut self.told);
    }

    /// Resumes the session on another connection of `g1`, answered: that connection's id.
    async fn resume_on_another(&mut self) -> String {
        let conn = "d".repeat(32);
        let auth = pcast::Authenticate { session_id: Some(self.session.clone()), ..Default::default() };
        let resume = BusMessage::new("clientmq.req.pcast.Authenticate", auth.encode_to_vec())
            .reply_to("t.reply.3")
            .with(clientmq_bus::contract::header::GATEWAY, "g1")
            .with(clientmq_bus::contract::header::CONNECTION, &conn);
        self.bus.publish(resume).await.unwrap();
        let resumed =
            tokio::time::timeout(Duration::from_secs(5), self.replies.next()).await.unwrap().unwrap();
        let answer = pcast::AuthenticateResponse::decode(resumed.payload.as_slice()).unwrap();
        assert_eq!(answer.session_id.as_deref(), Some(self.session.as_str()), "resumed");
        conn
    }
}

/// A decision that subscribes is taken only for the connection holding the session in the
/// cache it is decided on: after a resume moved `s1` from `c1` to `c2`, or its end, a join
/// still in flight from `c1` writes nothing.
#[test]
fn a_join_is_decided_only_for_the_connection_holding_its_session() {
    let mut cache = Cache::default();
    cache.apply(Bucket::Rooms, "r.r1", 1, Some(&testing::room("r1").encode_to_vec())).unwrap();
    let bind = |cache: &mut Cache, revision, conn: Option<&str>| {
        let record =
            SessionRecord { conn: conn.map(str::to_owned), gateway: Some("g1".into()), ..Default::default() };
        cache.apply(Bucket::Sessions, &session_key("s1"), revision, Some(&record.encode_to_vec())).unwrap();
    };
    let join = |cache: &Cache, conn| {
        holding(cache, conn, "s1", Err(status::UNAUTHORIZED), |c| {
            rooms::join(c, "s1", "r1", chat::Member::default(), 5, 10, 10)
        })
    };
    bind(&mut cache, 2, Some("c1"));
    assert!(matches!(join(&cache, "c1"), Decided::Write(_, Ok(_))), "c1 holds s1");
    assert!(matches!(join(&cache, "c2"), Decided::Nothing(Err("unauthorized"))), "c2 does not");
    bind(&mut cache, 3, Some("c2"));
    assert!(matches!(join(&cache, "c1"), Decided::Nothing(Err("unauthorized"))), "resumed on c2");
    assert!(matches!(join(&cache, "c2"), Decided::Write(_, Ok(_))));
    bind(&mut cache, 4, None);
    assert!(matches!(join(&cache, "c2"), Decided::Nothing(Err("unauthorized"))), "detached");
}

/// A join whose subscription its gateway never acknowledged (lost with the worker's bus,
/// and so was what any sweep told meanwhile) leaves its session touched in the room's record,
/// and a sweep after the gateway is back subscribes it. Cleared with the join's events, it
/// left the member deaf to its room for good (explore seed 630,030,169).
#[tokio::test(start_paused = true)]
async fn a_join_whose_subscription_was_lost_is_told_again_by_the_sweep() {
    let Deafened { bus, deaf, mut told, mut replies, room_id, .. } = deafened().await;
    deaf.store(true, Ordering::Relaxed);
    let join = chat::JoinRoom { room_id: Some(room_id.clone()), ..Default::default() };
    bus.publish(testing::request(2, "chat.JoinRoom", join.encode_to_vec(), 10_000)).await.unwrap();
    let answered = testing::answers(&mut replies, Duration::from_millis(2_500)).await;
    let joined = chat::JoinRoomResponse::decode(answered[0].1.payload.as_slice()).unwrap();
    assert_eq!(joined.status, status::OK, "answered whatever the gateway said");
    assert!(testing::changes(&mut told).is_empty(), "the gateway heard nothing");

    deaf.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let swept = testing::changes(&mut told);
    let room = format!("+room {room_id}");
    assert!(swept.iter().any(|m| m.0 == testing::conn() && m.3.contains(&room)), "{swept:?}");
}

/// A resume whose new connection's gateway acknowledged none of its rooms (cut off) leaves
/// the session owed them, and a sweep after the gateway is back tells them. Cleared as told,
/// the new connection never heard its rooms (explore seed 640,006,629).
#[tokio::test(start_paused = true)]
async fn a_resume_whose_rooms_were_not_acknowledged_is_told_them_by_the_sweep() {
    let mut d = deafened().await;
    d.join().await;
    d.deaf.store(true, Ordering::Relaxed);
    let conn = d.resume_on_another().await;
    let Deafened { deaf, mut told, room_id, .. } = d;
    assert!(testing::changes(&mut told).is_empty(), "the gateway heard nothing");

    deaf.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let swept = testing::changes(&mut told);
    let room = format!("+room {room_id}");
    assert!(swept.iter().any(|m| m.0 == conn && m.3.contains(&room)), "{swept:?}");
}

/// A resume tells the new connection its rooms once when the gateway acknowledges at once: the
/// second try is only for a first not acknowledged (both failing: the test above), and no
/// sweep tells them again.
#[tokio::test(start_paused = true)]
async fn a_resume_told_its_rooms_at_once_tells_them_once() {
    let mut d = deafened().await;
    d.join().await;
    let conn = d.resume_on_another().await;
    let Deafened { mut told, room_id, .. } = d;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let room = format!("+room {room_id}");
    let heard = testing::changes(&mut told);
    let to_conn = heard.iter().filter(|m| m.0 == conn && m.3.contains(&room)).count();
    assert_eq!(to_conn, 1, "{heard:?}");
}

/// A subscription to a gateway the server says nobody holds is told: no connection there
/// hears anything to change, so a join is answered without waiting out the bound, and the
/// session is cleared from the room's record (explore seed 7,000,056: a connection released
/// on a restarted gateway held back every resume of its session).
#[tokio::test(start_paused = true)]
async fn a_subscription_to_a_gateway_nobody_holds_is_told_at_once() {
    // No gateway `g1` on the bus: the server answers a message to it with no-responders.
    let bus = Arc::new(ModelBus::default());
    let testing::Served { mut replies, room_id, .. } =
        testing::served(&bus, None, std::future::pending()).await;
    let asked = tokio::time::Instant::now();
    let join = chat::JoinRoom { room_id: Some(room_id.clone()), ..Default::default() };
    bus.publish(testing::request(2, "chat.JoinRoom", join.encode_to_vec(), 10_000)).await.unwrap();
    let answered = testing::answers(&mut replies, Duration::from_millis(100)).await;
    let joined = chat::JoinRoomResponse::decode(answered[0].1.payload.as_slice()).unwrap();
    assert_eq!(joined.status, status::OK);
    assert!(asked.elapsed() < super::super::worker::ACK_WITHIN, "answered in {:?}", asked.elapsed());
}

/// A join that finds its member in the room already writes nothing, so no record names what
/// it owes: its subscription, unacknowledged the first time (the gateway cut off a moment),
/// is told again before the answer.
#[tokio::test(start_paused = true)]
async fn a_join_that_writes_nothing_tells_again_what_was_not_acknowledged() {
    let mut d = deafened().await;
    d.join().await;
    let Deafened { bus, deaf, mut told, mut replies, room_id, .. } = d;

    deaf.store(true, Ordering::Relaxed);
    let join = chat::JoinRoom { room_id: Some(room_id.clone()), ..Default::default() };
    bus.publish(testing::request(3, "chat.JoinRoom", join.encode_to_vec(), 10_000)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    deaf.store(false, Ordering::Relaxed);
    let answered = tokio::time::timeout(Duration::from_secs(5), replies.next()).await.unwrap().unwrap();
    let joined = chat::JoinRoomResponse::decode(answered.payload.as_slice()).unwrap();
    assert_eq!(joined.status, status::OK);
    let again = testing::changes(&mut told);
    let room = format!("+room {room_id}");
    assert!(again.iter().any(|m| m.0 == testing::conn() && m.3.contains(&room)), "{again:?}");
}
