//! A room's events reach its members through the history: appended to the room's history subject,
//! republished by the stream to the room's subject, which gateways hear. A decision about a room
//! leaves its events pending in the room's record; they are appended right after its write and
//! then cleared from the record. Should the appender die first, the next decision about the room
//! (or a sweep) appends them before anything else. Their message ids make the stream keep each
//! once, within its duplicate window (2 minutes): a sweep every few seconds keeps a dead
//! appender's events well inside it. The sessions a decision changed the subscriptions of wait
//! in the record the same way ([`RoomRecord::touched`](super::records::RoomRecord::touched)),
//! cleared once told: the decider tells its own before it clears them, a sweep tells a dead
//! decider's.

use std::sync::Mutex;

use clientmq_bus::Bus;
use clientmq_bus::contract::header;
use clientmq_bus::store::{Expect, Store, StoreError};
use clientmq_core::Topic;
use prost::Message;

use super::cache::{Bucket, Cache, lock};
use super::decide::{Attempt, DecideError, Decided, MAX_ATTEMPTS, attempt};
use super::follow::refresh;
use super::layout::Layout;
use super::records::{PendingEvent, RoomKey, Touched};

/// Appends `pending` events of room `room` to its history, in order.
pub async fn append<B: Bus>(
    store: &Store<B>,
    layout: &Layout,
    room: &str,
    pending: &[PendingEvent],
) -> Result<(), StoreError> {
    let subject = layout.history_subject(room, Topic::Room);
    for event in pending {
        let expect = Expect { msg_id: Some(event.id.clone()), ..Expect::default() };
        // A clustered stream answers 10158 while a message with the same id is being
        // replicated (another worker settling the same room): nothing was written by this
        // publish, and the id makes the next one a duplicate if the other one lands.
        let until = tokio::time::Instant::now() + store.timeout().saturating_mul(4);
        loop {
            let headers = vec![(header::TYPE.to_owned(), "chat.RoomEvent".to_owned())];
            match store.publish(&subject, headers, event.event.clone(), &expect).await {
                Ok(_) => break,
                Err(StoreError::InFlight(_)) if tokio::time::Instant::now() < until => {
                    tokio::time::sleep(IN_FLIGHT_PAUSE).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// How long an append waits before sending again a message JetStream still has in flight.
const IN_FLIGHT_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Appends the events room `room`'s record holds pending, then clears them from it, and the
/// sessions `told` of its decisions (unless the record moved meanwhile: then whoever moved it
/// appended them first, and they stay to be told).
pub async fn settle<B: Bus>(
    store: &Store<B>,
    layout: &Layout,
    cache: &Mutex<Cache>,
    room: &str,
    told: impl Fn(&Touched) -> bool,
) -> Result<(), StoreError> {
    clear(store, layout, cache, room, told, true).await
}

/// Clears the sessions `told` from room `room`'s record as the cache holds it, leaving its
/// pending events to whoever appends them: one conditional write, no appends, so that under
/// contention the window between the read and the write stays one round trip.
pub async fn forget_told<B: Bus>(
    store: &Store<B>,
    layout: &Layout,
    cache: &Mutex<Cache>,
    room: &str,
    told: impl Fn(&Touched) -> bool,
) -> Result<(), StoreError> {
    clear(store, layout, cache, room, told, false).await
}

/// [`settle`] (`with_pending`: its pending events appended and cleared too) or [`forget_told`]:
/// the record written only if it is still at the revision the cache read.
async fn clear<B: Bus>(
    store: &Store<B>,
    layout: &Layout,
    cache: &Mutex<Cache>,
    room: &str,
    told: impl Fn(&Touched) -> bool,
    with_pending: bool,
) -> Result<(), StoreError> {
    let key = RoomKey::Room(room.to_owned()).key();
    let held = {
        let cache = lock(cache);
        cache.room(room).map(|r| (r.revision, r.value.clone()))
    };
    let dirty = |r: &super::records::RoomRecord| {
        (with_pending && !r.pending.is_empty()) || r.touched.iter().any(&told)
    };
    let Some((revision, mut record)) = held.filter(|(_, r)| dirty(r)) else { return Ok(()) };
    if with_pending {
        append(store, layout, room, &record.pending).await?;
        record.pending.clear();
    }
    record.touched.retain(|t| !told(t));
    let value = record.encode_to_vec();
    match layout.rooms.put(store, &key, value.clone(), Some(revision)).await {
        Ok(cleared) => {
            let applied = lock(cache).apply(Bucket::Rooms, &key, cleared, Some(&value));
            applied.map_err(|e| StoreError::Malformed(e.to_string()))
        }
        Err(StoreError::WrongLastSequence(_) | StoreError::InFlight(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Decides about room `room` as [`decide`](super::decide::decide) does, first appending what
/// the last decision about it left pending, and then what this one made. The caller tells the
/// session this decision touched, if any (a session's end: its connection, if it has one).
pub async fn decide_room<B: Bus, T>(
    store: &Store<B>,
    layout: &Layout,
    cache: &Mutex<Cache>,
    room: &str,
    decide: impl FnMut(&Cache) -> Decided<T>,
) -> Result<T, DecideError> {
    decide_room_then(store, layout, cache, room, decide, |_, _| async { true }).await
}

/// [`decide_room`], with `then` done once the decision is taken and before its events are
/// appended, given the room's revision it made (or found): a join subscribes its member there,
/// so that it hears its own arrival; a leave unsubscribes it. What `then` tells is the session
/// the decision touched, cleared from the record with its events if `then` says it was told.
/// If not (its gateway did not acknowledge), `then` is done once more after the events are
/// appended, when the store has answered and the bus is likely back, so that the caller's answer
/// does not come before the change; what is still not told stays for the sweep.
pub async fn decide_room_then<B: Bus, T, F: Future<Output = bool>>(
    store: &Store<B>,
    layout: &Layout,
    cache: &Mutex<Cache>,
    room: &str,
    mut decide: impl FnMut(&Cache) -> Decided<T>,
    // A future of its own, not an async closure: one borrowing `&T` is not `Send` in general.
    then: impl Fn(&T, u64) -> F,
) -> Result<T, DecideError> {
    let pending_now = || lock(cache).room(room).map(|r| r.value.pending.clone()).unwrap_or_default();
    let key = RoomKey::Room(room.to_owned()).key();
    let mut last_key = String::new();
    let mut read = false;
    for _ in 0..MAX_ATTEMPTS {
        append(store, layout, room, &pending_now()).await?;
        match attempt(store, layout, cache, &mut decide).await? {
            // Nothing to write, decided on the cache, which may lag the store (by a follower's
            // delay, or a whole partition): read the key and decide once more. Else a refusal or
            // a no-op would answer for a room that is no longer so, and what `then` tells would
            // carry a revision the gateway already passed (and drops as stale).
            Attempt::Done(_, None) if !read => {
                read = true;
                refresh(store, layout.bucket(Bucket::Rooms), Bucket::Rooms, &key, cache).await?;
            }
            Attempt::Done(outcome, taken) => {
                let revision =
                    taken.map_or_else(|| lock(cache).revision(Bucket::Rooms, &key), |t| t.revision);
                let told = then(&outcome, revision).await;
                let ours = |t: &Touched| taken.is_some_and(|taken| t.by == taken.expected);
                if taken.is_some() {
                    settle(store, layout, cache, room, |t| told && ours(t)).await?;
                }
                // Lost with a bus cut off (explore seed 640,007,328: a join answered once the
                // worker was back, its member subscribed only by a sweep after that). Told again
                // after a decision that wrote nothing too: no record names what it owes.
                if !told && then(&outcome, revision).await && taken.is_some() {
                    forget_told(store, layout, cache, room, ours).await?;
                }
                return Ok(outcome);
            }
            Attempt::Refused(key) => last_key = key,
        }
    }
    Err(DecideError::Contended { key: last_key, attempts: MAX_ATTEMPTS })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use clientmq_bus::store::loopback::ModelBus;
    use clientmq_bus::{Bus as _, Subscription};
    use clientmq_core::proto::chat;

    use super::*;
    use crate::stored::decide::decide;
    use crate::stored::records::RoomKey;
    use crate::stored::records::RoomRecord;
    use crate::stored::rooms::join;

    /// A store on `bus` with the chat layout and an empty room `r1`.
    async fn with_room(bus: &Arc<ModelBus>) -> (Store<ModelBus>, Layout) {
        let store = Store::new(bus.clone(), "w", Duration::from_secs(1)).await.unwrap();
        let layout = Layout::new("clientmq", 1, 100);
        layout.ensure(&store).await.unwrap();
        let room = crate::stored::testing::room("r1");
        let key = RoomKey::Room("r1".into()).key();
        layout.rooms.put(&store, &key, room.encode_to_vec(), Some(0)).await.unwrap();
        (store, layout)
    }

    /// A worker dies between a join's write and its append: the next decision about the room
    /// appends the event it left, the stream keeps it once, and the room hears both joins once,
    /// in order.
    #[tokio::test]
    async fn an_event_left_pending_by_a_dead_worker_is_told_once() {
        let bus = Arc::new(ModelBus::default());
        let mut heard = bus.subscribe("clientmq.room.r1", None).await.unwrap();
        let (store, layout) = with_room(&bus).await;
        let cache = Mutex::new(Cache::default());
        refresh(&store, &layout.rooms, Bucket::Rooms, "r.r1", &cache).await.unwrap();

        let member = chat::Member::default();
        // The dying worker: its write is taken, its append never happens.
        decide(&store, &layout, &cache, |c| join(c, "s1", "r1", member.clone(), 1, 10, 10))
            .await
            .unwrap()
            .unwrap();
        // The next decision, on any worker, appends what was left, then its own; an append
        // repeated by a retry changes nothing.
        // What s2's join writes (decided the same way inside decide_room below).
        let Decided::Write(made, _) = join(&cache.lock().unwrap(), "s2", "r1", member.clone(), 2, 10, 10)
        else {
            panic!("a join writes")
        };
        let last_made = made.value.unwrap();
        decide_room(&store, &layout, &cache, "r1", |c| join(c, "s2", "r1", member.clone(), 2, 10, 10))
            .await
            .unwrap()
            .unwrap();
        // The events are cleared once appended; appended again anyway, the stream keeps one.
        assert!(cache.lock().unwrap().room("r1").unwrap().value.pending.is_empty());
        // The record s2's join made still held the dead worker's event, then its own.
        let again = RoomRecord::decode(last_made.as_slice()).unwrap().pending;
        assert_eq!(again.len(), 2);
        append(&store, &layout, "r1", &again).await.unwrap();

        let mut told = Vec::new();
        while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(50), heard.next()).await {
            assert_eq!(msg.header(header::TYPE), Some("chat.RoomEvent"));
            let event = chat::RoomEvent::decode(msg.payload.as_slice()).unwrap();
            told.push((event.event_type, event.members[0].session_id.clone()));
        }
        let joined = chat::RoomEventType::MemberJoined as i32;
        assert_eq!(told, [(joined, "s1".to_owned()), (joined, "s2".to_owned())]);
    }

    /// A worker whose cache lags (cut off while a member left and joined again through another
    /// worker) takes that member's conversation subscription: its cache says the member listens
    /// already, the store says not. The decision reads the room before it settles on doing
    /// nothing, so the member listens again, and what the worker tells carries the revision that
    /// made it so, not the cache's old one (which the gateway would drop as stale).
    #[tokio::test]
    async fn a_decision_to_do_nothing_is_made_on_the_room_as_stored() {
        let (store, layout) = with_room(&Arc::new(ModelBus::default())).await;
        let key = RoomKey::Room("r1".into()).key();
        let (fresh, lagging) = (Mutex::new(Cache::default()), Mutex::new(Cache::default()));
        refresh(&store, &layout.rooms, Bucket::Rooms, &key, &fresh).await.unwrap();
        let member = chat::Member::default();
        let join = |c: &Cache| join(c, "s1", "r1", member.clone(), 1, 10, 10);
        let listen = |c: &Cache| crate::stored::rooms::listen(c, "s1", "r1");
        decide_room(&store, &layout, &fresh, "r1", join).await.unwrap().unwrap();
        assert_eq!(decide_room(&store, &layout, &fresh, "r1", listen).await.unwrap(), Ok(true));
        refresh(&store, &layout.rooms, Bucket::Rooms, &key, &lagging).await.unwrap();
        let stale = lagging.lock().unwrap().revision(Bucket::Rooms, &key);
        // Through the other worker: a leave (which ends the listening) and a join again.
        decide_room(&store, &layout, &fresh, "r1", |c| crate::stored::rooms::leave(c, "s1", "r1", 2))
            .await
            .unwrap();
        decide_room(&store, &layout, &fresh, "r1", join).await.unwrap().unwrap();

        let told = Mutex::new(None);
        let then = |_: &Result<bool, &str>, revision| {
            *told.lock().unwrap() = Some(revision);
            async { true }
        };
        let listening = decide_room_then(&store, &layout, &lagging, "r1", listen, then).await.unwrap();
        assert_eq!(listening, Ok(true), "the member listens anew");
        let entry = layout.rooms.entry(&store, &key).await.unwrap().unwrap();
        let stored = RoomRecord::decode(entry.value.unwrap().as_slice()).unwrap();
        assert_eq!(stored.listeners, ["s1"]);
        let told = told.lock().unwrap().expect("told");
        assert!(told > stale, "told at {told}, past the lagging cache's {stale}");
    }

    /// JetStream answers 10158 (a message with that id in flight) while a cluster replicates
    /// another worker's append of the same event: the append sends it again until it is taken,
    /// and the room hears it once; still refused past its deadline, the append says so.
    #[tokio::test]
    async fn an_append_refused_as_in_flight_is_sent_again_and_told_once() {
        let bus = Arc::new(ModelBus::default());
        let store = Store::new(bus.clone(), "w", Duration::from_millis(50)).await.unwrap();
        let layout = Layout::new("clientmq", 1, 100);
        layout.ensure(&store).await.unwrap();
        let mut heard = bus.subscribe("clientmq.room.r1", None).await.unwrap();
        let subject = layout.history_subject("r1", Topic::Room);
        let event = chat::RoomEvent { room_id: "r1".into(), ..Default::default() };
        let pending = [PendingEvent { id: "e1".into(), event: event.encode_to_vec() }];
        for _ in 0..2 {
            bus.refuse_next(
                &subject,
                clientmq_bus::store::wire::code::DUPLICATE_IN_FLIGHT,
                "duplicate in flight",
            );
        }
        append(&store, &layout, "r1", &pending).await.unwrap();
        append(&store, &layout, "r1", &pending).await.unwrap();
        let mut told = 0;
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), heard.next()).await {
            told += 1;
        }
        assert_eq!(told, 1, "taken once, after two refusals");

        for _ in 0..1000 {
            bus.refuse_next(
                &subject,
                clientmq_bus::store::wire::code::DUPLICATE_IN_FLIGHT,
                "duplicate in flight",
            );
        }
        let other = [PendingEvent { id: "e2".into(), event: event.encode_to_vec() }];
        let refused = append(&store, &layout, "r1", &other).await;
        assert!(matches!(refused, Err(StoreError::InFlight(_))), "{refused:?}");
    }

    /// `settle` appends a record's pending events and clears them with the sessions told;
    /// `forget_told` clears only the sessions told, leaving the events pending for whoever
    /// appends them. Neither writes when there is nothing of its own to clear.
    #[tokio::test]
    async fn settling_appends_and_clears_and_forgetting_only_clears() {
        let bus = Arc::new(ModelBus::default());
        let mut heard = bus.subscribe("clientmq.room.r1", None).await.unwrap();
        let (store, layout) = with_room(&bus).await;
        let key = RoomKey::Room("r1".into()).key();
        let stored = || async {
            let entry = layout.rooms.entry(&store, &key).await.unwrap().unwrap();
            (entry.revision, RoomRecord::decode(entry.value.unwrap().as_slice()).unwrap())
        };
        let (revision, mut record) = stored().await;
        let event = chat::RoomEvent { room_id: "r1".into(), ..Default::default() };
        record.pending.push(PendingEvent { id: "e1".into(), event: event.encode_to_vec() });
        let touched = |s: &str| Touched { session: s.into(), by: revision };
        record.touched = vec![touched("s1"), touched("s2")];
        layout.rooms.put(&store, &key, record.encode_to_vec(), Some(revision)).await.unwrap();
        let cache = Mutex::new(Cache::default());
        let caught_up = || refresh(&store, &layout.rooms, Bucket::Rooms, &key, &cache);
        caught_up().await.unwrap();
        let sessions = |r: &RoomRecord| r.touched.iter().map(|t| t.session.clone()).collect::<Vec<_>>();
        async fn nothing_heard(heard: &mut impl Subscription) -> bool {
            tokio::time::timeout(Duration::from_millis(50), heard.next()).await.is_err()
        }

        let before = stored().await.0;
        forget_told(&store, &layout, &cache, "r1", |t| t.session == "s9").await.unwrap();
        assert_eq!(stored().await.0, before, "nobody told: no write, though events are pending");
        forget_told(&store, &layout, &cache, "r1", |t| t.session == "s1").await.unwrap();
        let (after, record) = stored().await;
        assert!(after > before);
        assert_eq!((sessions(&record), record.pending.len()), (vec!["s2".to_owned()], 1));
        assert!(nothing_heard(&mut heard).await, "forgetting appends nothing");

        caught_up().await.unwrap();
        settle(&store, &layout, &cache, "r1", |t| t.session == "s2").await.unwrap();
        let (_, record) = stored().await;
        assert!(record.touched.is_empty() && record.pending.is_empty(), "{record:?}");
        let msg = tokio::time::timeout(Duration::from_millis(50), heard.next()).await.unwrap().unwrap();
        assert_eq!(chat::RoomEvent::decode(msg.payload.as_slice()).unwrap().room_id, "r1");
        assert!(nothing_heard(&mut heard).await, "appended once");
    }
}
