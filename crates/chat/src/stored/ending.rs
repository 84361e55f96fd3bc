//! A session's end, carried through: its key deleted (one worker wins), then its member removed
//! from each room it was in, each room told once. And the sweep that finishes what a worker that
//! died midway left: members whose session is gone.

use std::sync::Mutex;

use clientmq_bus::Bus;
use clientmq_bus::store::Store;

use super::cache::{Cache, lock};
use super::decide::{DecideError, decide};
use super::history::{decide_room, decide_room_then, settle};
use super::layout::Layout;
use super::records::session_key;
use super::{rooms, sessions};

/// Ends session `id` (with `due_by`, only if its grace has run out by then) and, if this worker
/// ended it, removes it from its rooms. Returns the rooms it was in if this worker ended it.
pub async fn end_session<B: Bus, F: Future<Output = ()>>(
    store: &Store<B>,
    layout: &Layout,
    cache: &Mutex<Cache>,
    id: &str,
    due_by: Option<u64>,
    now_ms: u64,
    tell: impl Fn(String, u64) -> F,
) -> Result<bool, DecideError> {
    // The rooms it is in, as the cache knows them before the end.
    let rooms: Vec<String> = lock(cache).rooms_of(id).map(str::to_owned).collect();
    if !decide(store, layout, cache, |c| sessions::end(c, id, due_by)).await? {
        return Ok(false);
    }
    for room in &rooms {
        let leave = |c: &Cache| rooms::leave(c, id, room, now_ms);
        // Unsubscribes, which nothing acknowledges: told once sent.
        let told = |_: &bool, revision| {
            let telling = tell(room.clone(), revision);
            async {
                telling.await;
                true
            }
        };
        decide_room_then(store, layout, cache, room, leave, told).await?;
    }
    Ok(true)
}

/// Finishes what workers that died midway left: events still pending in a room's record are
/// appended (see [`settle`]), and members whose session is gone are removed, each checked
/// against the store first (the cache may not have heard of a new session yet). Run every few
/// seconds, it keeps pending events well within the history's duplicate window. Returns how many
/// members were removed.
pub async fn sweep<B: Bus>(
    store: &Store<B>,
    layout: &Layout,
    cache: &Mutex<Cache>,
    now_ms: u64,
) -> Result<usize, DecideError> {
    let pending: Vec<String> = lock(cache).rooms_with_pending().into_iter().map(str::to_owned).collect();
    for room in pending {
        // The sessions they touched are the worker's to tell first (`tell_touched`).
        settle(store, layout, cache, &room, |_| false).await?;
    }
    let orphans: Vec<(String, String)> = lock(cache)
        .members_without_session()
        .into_iter()
        .map(|(r, s)| (r.to_owned(), s.to_owned()))
        .collect();
    let mut removed = 0;
    for (room, session) in orphans {
        let entry = layout.sessions.entry(store, &session_key(&session)).await?;
        if entry.is_some_and(|e| e.value.is_some()) {
            continue;
        }
        if decide_room(store, layout, cache, &room, |c| rooms::leave(c, &session, &room, now_ms)).await? {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use clientmq_bus::store::loopback::ModelBus;
    use clientmq_bus::{Bus as _, Subscription};
    use clientmq_core::proto::chat;
    use prost::Message;

    use super::*;
    use crate::stored::records::{RoomKey, RoomRecord};
    use crate::stored::testing::{self, Worker, fleet, until};

    /// The MemberLeft events each room is told, as (room, session).
    async fn lefts(sub: &mut clientmq_bus::store::loopback::ModelSubscription) -> Vec<(String, String)> {
        let mut told = Vec::new();
        while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(50), sub.next()).await {
            let event = chat::RoomEvent::decode(msg.payload.as_slice()).unwrap();
            if event.event_type == chat::RoomEventType::MemberLeft as i32 {
                told.push((event.room_id, event.members[0].session_id.clone()));
            }
        }
        told.sort();
        told
    }

    async fn settle_caches(workers: &[Worker], done: impl Fn(&Cache) -> bool) {
        for w in workers {
            until(&w.cache, &done).await;
        }
    }

    /// Two workers see one session's grace run out and both carry its end through: each of its
    /// two rooms is told it left once.
    #[tokio::test]
    async fn member_left_is_told_once_however_many_workers_end_a_session() {
        let bus = Arc::new(ModelBus::default());
        let layout = Layout::new("clientmq", 1, 100);
        let workers = fleet(&bus, &layout, &["w1", "w2"]).await;
        let mut heard = bus.subscribe("clientmq.room.*", None).await.unwrap();
        let w = &workers[0];
        for room in ["r1", "r2"] {
            let record = testing::room(room);
            layout
                .rooms
                .put(&w.store, &RoomKey::Room(room.into()).key(), record.encode_to_vec(), Some(0))
                .await
                .unwrap();
        }
        settle_caches(&workers, |c| c.room("r2").is_some()).await;
        decide(&w.store, &layout, &w.cache, |c| {
            sessions::authenticate(c, "c1", "gw1", None, false, "s1", 10)
        })
        .await
        .unwrap()
        .unwrap();
        for room in ["r1", "r2"] {
            let joined = |c: &Cache| rooms::join(c, "s1", room, chat::Member::default(), 1, 10, 10);
            decide_room(&w.store, &layout, &w.cache, room, joined).await.unwrap().unwrap();
        }
        decide(&w.store, &layout, &w.cache, |c| sessions::detach(c, "c1", 0, 10)).await.unwrap();
        settle_caches(&workers, |c| c.due(10) == ["s1"] && c.rooms_of("s1").count() == 2).await;

        let ends = workers.iter().map(|w| {
            let (store, cache, layout) = (w.store.clone(), w.cache.clone(), layout.clone());
            tokio::spawn(async move {
                end_session(&store, &layout, &cache, "s1", Some(10), 20, |_, _| async {}).await.unwrap()
            })
        });
        let mut ended = Vec::new();
        for task in ends.collect::<Vec<_>>() {
            ended.push(task.await.unwrap());
        }
        assert_eq!(ended.iter().filter(|e| **e).count(), 1, "{ended:?}");
        let expected = [("r1".to_owned(), "s1".to_owned()), ("r2".to_owned(), "s1".to_owned())];
        assert_eq!(lefts(&mut heard).await, expected);
    }

    /// A worker ends a session and dies before leaving its rooms: another's sweep removes the
    /// member and tells the room, once; a second sweep finds nothing.
    #[tokio::test]
    async fn a_sweep_finishes_an_end_left_halfway() {
        let bus = Arc::new(ModelBus::default());
        let layout = Layout::new("clientmq", 1, 100);
        let workers = fleet(&bus, &layout, &["w1", "w2"]).await;
        let mut heard = bus.subscribe("clientmq.room.*", None).await.unwrap();
        let w = &workers[0];
        let record = testing::room("r1");
        layout.rooms.put(&w.store, "r.r1", record.encode_to_vec(), Some(0)).await.unwrap();
        settle_caches(&workers, |c| c.room("r1").is_some()).await;
        decide(&w.store, &layout, &w.cache, |c| {
            sessions::authenticate(c, "c1", "gw1", None, false, "s1", 10)
        })
        .await
        .unwrap()
        .unwrap();
        let joined = |c: &Cache| rooms::join(c, "s1", "r1", chat::Member::default(), 1, 10, 10);
        decide_room(&w.store, &layout, &w.cache, "r1", joined).await.unwrap().unwrap();
        // The end's first half only: the key deleted, the rooms never left.
        assert!(decide(&w.store, &layout, &w.cache, |c| sessions::end(c, "s1", None)).await.unwrap());
        let other = &workers[1];
        settle_caches(&workers[1..], |c| c.members_without_session() == [("r1", "s1")]).await;
        assert_eq!(sweep(&other.store, &layout, &other.cache, 30).await.unwrap(), 1);
        assert_eq!(sweep(&other.store, &layout, &other.cache, 31).await.unwrap(), 0);
        assert_eq!(lefts(&mut heard).await, [("r1".to_owned(), "s1".to_owned())]);
        assert!(other.cache.lock().unwrap().rooms_with_pending().is_empty());
    }

    /// A worker dies between a leave's write and its append: a sweep tells the room.
    #[tokio::test]
    async fn a_sweep_tells_what_a_dead_appender_left_pending() {
        let bus = Arc::new(ModelBus::default());
        let layout = Layout::new("clientmq", 1, 100);
        let workers = fleet(&bus, &layout, &["w1"]).await;
        let mut heard = bus.subscribe("clientmq.room.*", None).await.unwrap();
        let w = &workers[0];
        let member = chat::Member { session_id: "s1".into(), ..chat::Member::default() };
        let record = RoomRecord { members: vec![member], ..testing::room("r1") };
        layout.rooms.put(&w.store, "r.r1", record.encode_to_vec(), Some(0)).await.unwrap();
        settle_caches(&workers, |c| c.room("r1").is_some()).await;
        // The leave's write only (decide does not append).
        assert!(decide(&w.store, &layout, &w.cache, |c| rooms::leave(c, "s1", "r1", 5)).await.unwrap());
        assert_eq!(w.cache.lock().unwrap().rooms_with_pending(), ["r1"]);
        assert_eq!(sweep(&w.store, &layout, &w.cache, 6).await.unwrap(), 0);
        assert_eq!(lefts(&mut heard).await, [("r1".to_owned(), "s1".to_owned())]);
        // Its events are cleared; the session it touched stays for the worker to tell.
        let cache = w.cache.lock().unwrap();
        let record = &cache.room("r1").unwrap().value;
        assert!(record.pending.is_empty());
        assert_eq!(record.touched.iter().map(|t| t.session.as_str()).collect::<Vec<_>>(), ["s1"]);
    }
}
