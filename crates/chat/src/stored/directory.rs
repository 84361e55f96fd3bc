//! Rooms by id and by alias: creating one, finding one, and forgetting one left empty.
//!
//! A room with an alias is two keys, written in this order: the alias's key naming the room's id
//! (only while no room owns the alias, so two workers creating one alias make one room), then the
//! room's key. An alias's key is the alias's only while the room it names exists and carries the
//! alias. So a creator that dies between its two writes leaves an alias naming no room yet, and
//! the next creation of that alias finishes the room under that id; and a forgotten room's alias
//! key is deleted before its room key, so an alias never outlives its room unseen.
//!
//! A rename marks the room as moving to the new alias (`renaming`), claims the alias's key, then
//! writes the room with it and releases the old alias's key. A creator of the new alias in
//! between finds it taken by the room being renamed; a renamer that dies midway leaves the new
//! alias taken, and the rename asked again completes.

use std::sync::Mutex;

use clientmq_bus::Bus;
use clientmq_bus::store::{Store, StoreError};
use clientmq_core::proto::chat;
use prost::Message;

use super::cache::{Bucket, Cache, Cached, lock};
use super::decide::{DecideError, Decided, Write, decide};
use super::follow::refresh;
use super::history::decide_room;
use super::layout::Layout;
use super::records::{RoomKey, RoomRecord};
use super::rooms;
use crate::rooms::is_set;
use crate::wire::status;

/// The room `alias` names: its key names a room that exists and carries it.
pub fn by_alias<'a>(cache: &'a Cache, alias: &str) -> Option<&'a Cached<RoomRecord>> {
    let room = cache.room(cache.room_by_alias(alias)?)?;
    (room.value.alias() == Some(alias)).then_some(room)
}

/// The room that owns `alias`: it carries it, or is being renamed to it.
fn owner<'a>(cache: &'a Cache, alias: &str) -> Option<&'a Cached<RoomRecord>> {
    let room = cache.room(cache.room_by_alias(alias)?)?;
    (room.value.alias() == Some(alias) || room.value.renaming.as_deref() == Some(alias)).then_some(room)
}

/// The room named by id, or else by alias, as the cache holds it.
pub fn find<'a>(
    cache: &'a Cache,
    room_id: &Option<String>,
    alias: &Option<String>,
) -> Option<&'a Cached<RoomRecord>> {
    match (is_set(room_id), is_set(alias)) {
        (Some(id), _) => cache.room(id),
        (None, Some(alias)) => by_alias(cache, alias),
        (None, None) => None,
    }
}

/// Reads the keys that name a room (by id, or by alias and then the room it names) into the
/// cache, which may not have heard yet of a room another worker just made.
pub async fn read<B: Bus>(
    store: &Store<B>,
    layout: &Layout,
    cache: &Mutex<Cache>,
    room_id: &Option<String>,
    alias: &Option<String>,
) -> Result<(), StoreError> {
    let id = match (is_set(room_id), is_set(alias)) {
        (Some(id), _) => id.to_owned(),
        (None, Some(alias)) => {
            refresh(store, &layout.rooms, Bucket::Rooms, &RoomKey::Alias(alias.to_owned()).key(), cache)
                .await?;
            match lock(cache).room_by_alias(alias) {
                Some(id) => id.to_owned(),
                None => return Ok(()),
            }
        }
        (None, None) => return Ok(()),
    };
    refresh(store, &layout.rooms, Bucket::Rooms, &RoomKey::Room(id).key(), cache).await
}

/// The room named by id or alias: from the cache, or read from the store if the cache has not
/// heard of it.
pub async fn lookup<B: Bus>(
    store: &Store<B>,
    layout: &Layout,
    cache: &Mutex<Cache>,
    room_id: &Option<String>,
    alias: &Option<String>,
) -> Result<Option<RoomRecord>, StoreError> {
    if let Some(room) = find(&lock(cache), room_id, alias) {
        return Ok(Some(room.value.clone()));
    }
    read(store, layout, cache, room_id, alias).await?;
    Ok(find(&lock(cache), room_id, alias).map(|r| r.value.clone()))
}

/// Creates `room` (its limits checked by the caller) under the id `new_id` (random, from the
/// caller) at `now_ms`, unless `max_rooms` exist. A room whose alias is taken is not created:
/// the answer is `already-exists` with that room, which the SDK reads as the room it asked for.
pub async fn create<B: Bus>(
    store: &Store<B>,
    layout: &Layout,
    cache: &Mutex<Cache>,
    room: chat::Room,
    new_id: &str,
    now_ms: u64,
    max_rooms: usize,
) -> Result<chat::CreateRoomResponse, DecideError> {
    let answer =
        |status: &str, room: Option<chat::Room>| chat::CreateRoomResponse { status: status.to_owned(), room };
    let alias = is_set(&room.alias).map(str::to_owned);
    let id = match &alias {
        None => new_id.to_owned(),
        Some(alias) => {
            read(store, layout, cache, &None, &Some(alias.clone())).await?;
            match decide(store, layout, cache, |c| claim(c, alias, new_id, max_rooms)).await? {
                Claim::Taken(room) => return Ok(answer(status::ALREADY_EXISTS, Some(room))),
                Claim::Full => return Ok(answer(status::CAPACITY, None)),
                Claim::Make(id) => id,
            }
        }
    };
    let info = chat::Room { room_id: Some(id.clone()), alias, ..room };
    match decide(store, layout, cache, |c| make(c, &info, now_ms, max_rooms)).await? {
        Made::Made => Ok(answer(status::OK, Some(info))),
        Made::Exists(room) => Ok(answer(status::ALREADY_EXISTS, Some(room))),
        Made::Full => Ok(answer(status::CAPACITY, None)),
    }
}

/// What the alias step of a creation came to.
#[derive(Debug, PartialEq)]
pub enum Claim {
    /// The alias is a room's already.
    Taken(chat::Room),
    /// The alias names this id: make the room (again, if a creator died before it did).
    Make(String),
    Full,
}

/// The alias step: the alias's key names `new_id`, unless a room owns the alias or its key names
/// a room not made yet (whose making this creation finishes).
pub fn claim(cache: &Cache, alias: &str, new_id: &str, max_rooms: usize) -> Decided<Claim> {
    if let Some(room) = owner(cache, alias) {
        return Decided::Nothing(Claim::Taken(room.value.info.clone().unwrap_or_default()));
    }
    if let Some(id) = cache.room_by_alias(alias)
        && cache.room(id).is_none()
    {
        return Decided::Nothing(Claim::Make(id.to_owned()));
    }
    if cache.room_count() >= max_rooms {
        return Decided::Nothing(Claim::Full);
    }
    // Absent, or naming a room that has another alias since: the alias is free.
    let key = RoomKey::Alias(alias.to_owned()).key();
    let write = Write::on(cache, Bucket::Rooms, key, Some(new_id.as_bytes().to_vec()));
    Decided::Write(write, Claim::Make(new_id.to_owned()))
}

/// What the room step of a creation came to.
#[derive(Debug, PartialEq)]
pub enum Made {
    Made,
    /// A room of that id exists (another creator of the alias finished it first).
    Exists(chat::Room),
    Full,
}

/// The room step: room `info.room_id`'s key is written, empty since `now_ms`, unless it exists.
pub fn make(cache: &Cache, info: &chat::Room, now_ms: u64, max_rooms: usize) -> Decided<Made> {
    let id = info.room_id.clone().unwrap_or_default();
    if let Some(room) = cache.room(&id) {
        return Decided::Nothing(Made::Exists(room.value.info.clone().unwrap_or_default()));
    }
    // An alias's claim counted this room already when it found room for it.
    if info.alias.is_none() && cache.room_count() >= max_rooms {
        return Decided::Nothing(Made::Full);
    }
    // Fixed at creation: a later type change does not make a silent audience heard.
    let broadcast = [chat::RoomType::Channel as i32, chat::RoomType::TownHall as i32];
    let record = RoomRecord {
        info: Some(info.clone()),
        quiet_audience: broadcast.contains(&info.r#type),
        empty_since_ms: Some(now_ms),
        ..RoomRecord::default()
    };
    let key = RoomKey::Room(id).key();
    Decided::Write(Write::on(cache, Bucket::Rooms, key, Some(record.encode_to_vec())), Made::Made)
}

/// `session`, a member of room `room_id`, updates its settings to `new`; a new alias in it renames
/// the room (in the order the module's doc gives), and is refused with `already-exists` while
/// another room owns it.
pub async fn update<B: Bus>(
    store: &Store<B>,
    layout: &Layout,
    cache: &Mutex<Cache>,
    session: &str,
    room_id: &str,
    new: chat::Room,
    now_ms: u64,
) -> Result<&'static str, DecideError> {
    let current = lock(cache).room(room_id).and_then(|r| r.value.alias().map(str::to_owned));
    let alias = match is_set(&new.alias) {
        Some(alias) if current.as_deref() != Some(alias) => alias.to_owned(),
        // Absent or the same: the room keeps its alias.
        _ => {
            let update = |c: &Cache| rooms::update_room(c, session, room_id, &new, current.clone(), now_ms);
            return decide_room(store, layout, cache, room_id, update).await;
        }
    };
    let mark = |c: &Cache| rooms::mark_renaming(c, session, room_id, Some(&alias), None);
    if let Err(status) = decide_room(store, layout, cache, room_id, mark).await? {
        return Ok(status);
    }
    read(store, layout, cache, &None, &Some(alias.clone())).await?;
    let ours = match decide(store, layout, cache, |c| claim(c, &alias, room_id, usize::MAX)).await? {
        Claim::Make(id) => id == room_id,
        Claim::Taken(room) => room.room_id.as_deref() == Some(room_id),
        Claim::Full => false,
    };
    if !ours {
        let unmark = |c: &Cache| rooms::mark_renaming(c, session, room_id, None, Some(&alias));
        let _cleared = decide_room(store, layout, cache, room_id, unmark).await?;
        return Ok(status::ALREADY_EXISTS);
    }
    let update = |c: &Cache| rooms::update_room(c, session, room_id, &new, Some(alias.clone()), now_ms);
    let status = decide_room(store, layout, cache, room_id, update).await?;
    if status == status::OK
        && let Some(old) = current
    {
        decide(store, layout, cache, |c| unclaim(c, &old, room_id)).await?;
    }
    Ok(status)
}

/// Forgets the rooms empty since `before_ms` or earlier: each alias's key first, then the room's
/// key, each only if unchanged since the cache read it. Returns how many rooms were forgotten.
pub async fn forget_idle<B: Bus>(
    store: &Store<B>,
    layout: &Layout,
    cache: &Mutex<Cache>,
    before_ms: u64,
) -> Result<usize, DecideError> {
    let idle: Vec<String> = lock(cache).idle_rooms(before_ms).into_iter().map(str::to_owned).collect();
    let mut forgotten = 0;
    for id in idle {
        let aliases: Vec<String> = (lock(cache).room(&id))
            .map(|r| {
                r.value.alias().into_iter().chain(r.value.renaming.as_deref()).map(str::to_owned).collect()
            })
            .unwrap_or_default();
        for alias in aliases {
            decide(store, layout, cache, |c| unclaim(c, &alias, &id)).await?;
        }
        if decide(store, layout, cache, |c| drop_idle(c, &id, before_ms)).await? {
            forgotten += 1;
        }
    }
    Ok(forgotten)
}

/// Deletes the alias's key if it names room `id`.
fn unclaim(cache: &Cache, alias: &str, id: &str) -> Decided<()> {
    if cache.room_by_alias(alias) != Some(id) {
        return Decided::Nothing(());
    }
    let key = RoomKey::Alias(alias.to_owned()).key();
    Decided::Write(Write::on(cache, Bucket::Rooms, key, None), ())
}

/// Deletes room `id`'s key if it is still empty since `before_ms` or earlier.
fn drop_idle(cache: &Cache, id: &str, before_ms: u64) -> Decided<bool> {
    let idle = cache.room(id).is_some_and(|r| r.value.empty_since_ms.is_some_and(|at| at <= before_ms));
    if !idle {
        return Decided::Nothing(false);
    }
    let key = RoomKey::Room(id.to_owned()).key();
    Decided::Write(Write::on(cache, Bucket::Rooms, key, None), true)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use clientmq_bus::store::loopback::ModelBus;

    use super::*;
    use crate::stored::testing::{Worker, fleet, until};

    fn named(alias: &str, name: &str) -> chat::Room {
        chat::Room { alias: Some(alias.into()), name: name.into(), ..chat::Room::default() }
    }

    async fn found(w: &Worker, layout: &Layout, alias: &str) -> Option<RoomRecord> {
        lookup(&w.store, layout, &w.cache, &None, &Some(alias.to_owned())).await.unwrap()
    }

    async fn two_workers() -> (Arc<ModelBus>, Layout, Vec<Worker>) {
        let bus = Arc::new(ModelBus::default());
        let layout = Layout::new("clientmq", 1, 100);
        let workers = fleet(&bus, &layout, &["w1", "w2"]).await;
        (bus, layout, workers)
    }

    /// Two workers creating one alias at once, round after round: one `ok` and one
    /// `already-exists` naming the same room, and one room per alias.
    #[tokio::test]
    async fn two_creators_of_one_alias_make_one_room() {
        let (_bus, layout, w) = two_workers().await;
        for round in 0..20 {
            let alias = format!("lobby-{round}");
            let (ida, idb) = (format!("A{round}"), format!("B{round}"));
            let (a, b) = tokio::join!(
                create(&w[0].store, &layout, &w[0].cache, named(&alias, "a"), &ida, 1, 100),
                create(&w[1].store, &layout, &w[1].cache, named(&alias, "b"), &idb, 1, 100),
            );
            let (a, b) = (a.unwrap(), b.unwrap());
            let mut statuses = [a.status.as_str(), b.status.as_str()];
            statuses.sort_unstable();
            assert_eq!(statuses, [status::ALREADY_EXISTS, status::OK], "round {round}");
            let id = |r: &chat::CreateRoomResponse| r.room.as_ref().and_then(|r| r.room_id.clone());
            assert_eq!(id(&a), id(&b), "round {round}: both name the one room");
            assert_eq!(a.room.as_ref().unwrap().name, b.room.as_ref().unwrap().name);
        }
        until(&w[0].cache, |c| c.room_count() == 20).await;
        let cache = lock(&w[0].cache);
        assert!((0..20).all(|n| by_alias(&cache, &format!("lobby-{n}")).is_some()));
    }

    /// A creator that dies after claiming the alias: the alias names no room yet, is not found,
    /// and the next creation of it makes the room under the claimed id.
    #[tokio::test]
    async fn a_creation_left_halfway_is_finished_by_the_next() {
        let (_bus, layout, w) = two_workers().await;
        let Decided::Write(claimed, Claim::Make(id)) = claim(&lock(&w[0].cache), "hall", "X1", 100) else {
            panic!("a free alias is claimed")
        };
        layout
            .rooms
            .put(&w[0].store, &claimed.key, claimed.value.unwrap(), Some(claimed.expect))
            .await
            .unwrap();
        assert_eq!(id, "X1");
        let alias = Some("hall".to_owned());
        assert_eq!(lookup(&w[1].store, &layout, &w[1].cache, &None, &alias).await.unwrap(), None);

        let made = create(&w[1].store, &layout, &w[1].cache, named("hall", "b"), "Y1", 2, 100).await.unwrap();
        assert_eq!((made.status.as_str(), made.room.unwrap().room_id.as_deref()), (status::OK, Some("X1")));
        let found = lookup(&w[0].store, &layout, &w[0].cache, &None, &alias).await.unwrap().unwrap();
        assert_eq!((found.room_id(), found.info.as_ref().unwrap().name.as_str()), ("X1", "b"));
    }

    /// A worker whose cache has not heard of a room reads it from the store, by id or by alias;
    /// an empty alias is no alias; a broadcast room's audience is quiet from its creation.
    #[tokio::test]
    async fn a_room_unknown_to_the_cache_is_read_and_made_as_asked() {
        let (bus, layout, w) = two_workers().await;
        let made = create(&w[0].store, &layout, &w[0].cache, named("hall", "a"), "R1", 1, 100).await.unwrap();
        assert_eq!(made.status, status::OK);
        let store = Store::new(bus.clone(), "unfollowed", Duration::from_secs(1)).await.unwrap();
        for (id, alias) in [(Some("R1"), None), (None, Some("hall"))] {
            let cache = Mutex::new(Cache::default());
            let (id, alias) = (id.map(str::to_owned), alias.map(str::to_owned));
            let room = lookup(&store, &layout, &cache, &id, &alias).await.unwrap().expect("read");
            assert_eq!(room.room_id(), "R1");
        }
        let unnamed = chat::Room { alias: Some(String::new()), ..chat::Room::default() };
        let made = create(&w[0].store, &layout, &w[0].cache, unnamed, "R2", 1, 100).await.unwrap();
        assert_eq!(made.room.unwrap().alias, None);
        for (ty, quiet) in [(chat::RoomType::Channel, true), (chat::RoomType::MultiPartyChat, false)] {
            let info = chat::Room { room_id: Some("R9".into()), r#type: ty as i32, ..chat::Room::default() };
            let Decided::Write(write, Made::Made) = make(&lock(&w[0].cache), &info, 1, 100) else { panic!() };
            let record = RoomRecord::decode(write.value.unwrap().as_slice()).unwrap();
            assert_eq!(record.quiet_audience, quiet, "{ty:?}");
        }
    }

    /// An idle room is forgotten, alias first; the alias then makes a new room, and a room
    /// joined again in the meantime is kept.
    #[tokio::test]
    async fn an_idle_room_is_forgotten_with_its_alias() {
        let (_bus, layout, w) = two_workers().await;
        let (store, cache) = (&w[0].store, &w[0].cache);
        create(store, &layout, cache, named("old", "a"), "R1", 10, 100).await.unwrap();
        create(store, &layout, cache, named("busy", "b"), "R2", 10, 100).await.unwrap();
        // R2 is not empty any more.
        let member = chat::Member::default();
        decide(store, &layout, cache, |c| super::super::rooms::join(c, "s1", "R2", member.clone(), 11, 9, 9))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(forget_idle(store, &layout, cache, 9).await.unwrap(), 0, "not idle long enough");
        assert_eq!(forget_idle(store, &layout, cache, 10).await.unwrap(), 1);
        until(&w[1].cache, |c| c.room("R1").is_none() && c.room_by_alias("old").is_none()).await;
        assert!(lock(&w[1].cache).room("R2").is_some());
        let again =
            create(&w[1].store, &layout, &w[1].cache, named("old", "c"), "R3", 20, 100).await.unwrap();
        assert_eq!((again.status.as_str(), again.room.unwrap().room_id.as_deref()), (status::OK, Some("R3")));
    }

    /// An alias whose key names a room that carries another alias is free, and the room cap
    /// holds for rooms with and without an alias.
    #[tokio::test]
    async fn a_stale_alias_is_free_and_the_cap_holds() {
        let (_bus, layout, w) = two_workers().await;
        let (store, cache) = (&w[0].store, &w[0].cache);
        create(store, &layout, cache, named("now", "a"), "R1", 1, 2).await.unwrap();
        // "then" names R1, which carries "now".
        let key = RoomKey::Alias("then".into()).key();
        layout.rooms.put(store, &key, b"R1".to_vec(), Some(0)).await.unwrap();
        refresh(store, &layout.rooms, Bucket::Rooms, &key, cache).await.unwrap();
        assert_eq!(lookup(store, &layout, cache, &None, &Some("then".into())).await.unwrap(), None);
        let made = create(store, &layout, cache, named("then", "b"), "R2", 1, 2).await.unwrap();
        assert_eq!((made.status.as_str(), made.room.unwrap().room_id.as_deref()), (status::OK, Some("R2")));
        for room in [named("more", "c"), chat::Room::default()] {
            let full = create(store, &layout, cache, room, "R3", 1, 2).await.unwrap();
            assert_eq!(full.status, status::CAPACITY);
        }
    }

    /// A room renamed: found by its new alias only, its old alias free for another room, and a
    /// rename to an alias another room owns refused with the room left as it was. A creator of
    /// the new alias while a rename is under way finds it taken.
    #[tokio::test]
    async fn a_rename_moves_the_alias_and_never_takes_another_room_s() {
        let (_bus, layout, w) = two_workers().await;
        let (store, cache) = (&w[0].store, &w[0].cache);
        create(store, &layout, cache, named("a", "first"), "R1", 1, 100).await.unwrap();
        create(store, &layout, cache, named("other", "second"), "R2", 1, 100).await.unwrap();
        let member = chat::Member::default();
        for room in ["R1", "R2"] {
            let join = |c: &Cache| rooms::join(c, "s1", room, member.clone(), 2, 9, 9);
            decide_room(store, &layout, cache, room, join).await.unwrap().unwrap();
        }
        let status = update(store, &layout, cache, "s1", "R1", named("b", "renamed"), 3).await.unwrap();
        assert_eq!(status, status::OK);
        let renamed = found(&w[1], &layout, "b").await.unwrap();
        assert_eq!((renamed.room_id(), renamed.info.as_ref().unwrap().name.as_str()), ("R1", "renamed"));
        assert_eq!(found(&w[1], &layout, "a").await, None);
        let old_key = RoomKey::Alias("a".into()).key();
        let old_entry = layout.rooms.entry(store, &old_key).await.unwrap().expect("written once");
        assert_eq!(old_entry.value, None, "the old alias's key deleted");
        // The same alias again: no rename, the room keeps it.
        let same = update(store, &layout, cache, "s1", "R1", named("b", "again"), 3).await.unwrap();
        assert_eq!(same, status::OK);
        let kept = found(&w[1], &layout, "b").await.unwrap();
        assert_eq!((kept.room_id(), kept.info.as_ref().unwrap().name.as_str()), ("R1", "again"));
        let made = create(&w[1].store, &layout, &w[1].cache, named("a", "new"), "R3", 4, 100).await.unwrap();
        assert_eq!((made.status.as_str(), made.room.unwrap().room_id.as_deref()), (status::OK, Some("R3")));

        let refused = update(store, &layout, cache, "s1", "R1", named("other", "x"), 5).await.unwrap();
        assert_eq!(refused, status::ALREADY_EXISTS);
        let kept = lock(cache).room("R1").unwrap().value.clone();
        assert_eq!((kept.alias(), kept.renaming.as_deref()), (Some("b"), None));
        assert_eq!(found(&w[1], &layout, "other").await.unwrap().room_id(), "R2");
        let outsider = update(store, &layout, cache, "s9", "R1", named("c", "x"), 5).await.unwrap();
        assert_eq!(outsider, status::NOT_IN_ROOM);

        // A rename to "d" under way (marked and claimed, the room not yet written).
        let mark = |c: &Cache| rooms::mark_renaming(c, "s1", "R2", Some("d"), None);
        decide_room(store, &layout, cache, "R2", mark).await.unwrap().unwrap();
        decide(store, &layout, cache, |c| claim(c, "d", "R2", 100)).await.unwrap();
        let racing = create(&w[1].store, &layout, &w[1].cache, named("d", "y"), "R4", 6, 100).await.unwrap();
        assert_eq!(
            (racing.status.as_str(), racing.room.unwrap().room_id.as_deref()),
            (status::ALREADY_EXISTS, Some("R2"))
        );
        assert_eq!(update(store, &layout, cache, "s1", "R2", named("d", "z"), 7).await.unwrap(), status::OK);
        assert_eq!(found(&w[1], &layout, "d").await.unwrap().room_id(), "R2");
    }
}
