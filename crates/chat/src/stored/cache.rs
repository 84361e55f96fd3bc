//! A worker's copy of the sessions and rooms buckets, with the indexes its decisions need (a
//! connection's session, a gateway's sessions, a session's rooms, the sessions whose grace has run
//! out). Sans-IO: it is fed each key's changes in the bucket's order (by followers, see
//! `clientmq_bus::store::watch::Follower`) and can be dropped and fed again from scratch at any
//! moment. It is never the truth: a decision made on it is written expecting the revision it read,
//! and the store refuses it if the key moved since.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;

use super::records::{EndedRecord, RoomKey, RoomRecord, SessionRecord, session_of_key};

/// A session key's form for an ended connection's mark.
const ENDED: &str = "e.";

/// The cache behind its lock, poisoned or not: it is only ever a copy, and the store checks every
/// decision made on it.
pub(crate) fn lock(cache: &std::sync::Mutex<Cache>) -> std::sync::MutexGuard<'_, Cache> {
    cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A value and the revision of its key it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Cached<T> {
    pub revision: u64,
    pub value: T,
}

/// A change the cache could not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    #[error("key {0:?} names nothing clientmq writes")]
    Key(String),
    #[error("key {0:?} holds a value that does not decode")]
    Value(String),
}

#[derive(Debug, Default)]
pub struct Cache {
    sessions: BTreeMap<String, Cached<SessionRecord>>,
    rooms: BTreeMap<String, Cached<RoomRecord>>,
    /// Alias to room id.
    aliases: BTreeMap<String, Cached<String>>,
    /// The last revision seen of every key, deleted ones included: a change at or below it is
    /// old news (a direct read can run ahead of the follower).
    seen: BTreeMap<(Bucket, String), u64>,
    conns: BTreeMap<String, String>,
    gateways: BTreeMap<String, BTreeSet<String>>,
    memberships: BTreeMap<String, BTreeSet<String>>,
    /// Connections marked ended.
    ended: BTreeMap<String, Cached<EndedRecord>>,
    /// The orphans among them, by gateway: read at every announcement, so kept, not searched.
    orphans: BTreeMap<String, BTreeSet<String>>,
    /// The last stream sequence each bucket's follower applied: every change up to it is here.
    followed: BTreeMap<Bucket, u64>,
}

/// Which bucket a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bucket {
    Sessions,
    Rooms,
}

impl Cache {
    /// Takes the change of `key` in `bucket` to `value` (`None`: deleted) at `revision`. A
    /// change no newer than what the cache holds of the key changes nothing.
    pub fn apply(
        &mut self,
        bucket: Bucket,
        key: &str,
        revision: u64,
        value: Option<&[u8]>,
    ) -> Result<(), CacheError> {
        let seen = self.seen.entry((bucket, key.to_owned())).or_default();
        if revision <= *seen {
            return Ok(());
        }
        *seen = revision;
        let bad = || CacheError::Value(key.to_owned());
        match bucket {
            Bucket::Sessions if key.starts_with(ENDED) => {
                let conn = key[ENDED.len()..].to_owned();
                match value {
                    Some(v) => {
                        let value = EndedRecord::decode(v).map_err(|_| bad())?;
                        self.set_ended(conn, Some(Cached { revision, value }));
                    }
                    None => self.set_ended(conn, None),
                }
            }
            Bucket::Sessions => {
                let id = session_of_key(key).ok_or_else(|| CacheError::Key(key.to_owned()))?;
                let record = value.map(SessionRecord::decode).transpose().map_err(|_| bad())?;
                self.set_session(id, record.map(|value| Cached { revision, value }));
            }
            Bucket::Rooms => match RoomKey::parse(key).ok_or_else(|| CacheError::Key(key.to_owned()))? {
                RoomKey::Room(id) => {
                    let record = value.map(RoomRecord::decode).transpose().map_err(|_| bad())?;
                    self.set_room(id, record.map(|value| Cached { revision, value }));
                }
                RoomKey::Alias(alias) => {
                    let room = value.map(|v| String::from_utf8(v.to_vec())).transpose().map_err(|_| bad())?;
                    match room {
                        Some(room) => self.aliases.insert(alias, Cached { revision, value: room }),
                        None => self.aliases.remove(&alias),
                    };
                }
            },
        }
        Ok(())
    }

    fn set_session(&mut self, id: String, record: Option<Cached<SessionRecord>>) {
        if let Some(old) = self.sessions.remove(&id) {
            if let Some(conn) = &old.value.conn {
                self.conns.remove(conn);
            }
            if let Some(gateway) = &old.value.gateway {
                remove_from(&mut self.gateways, gateway, &id);
            }
        }
        let Some(record) = record else { return };
        if let Some(conn) = &record.value.conn {
            self.conns.insert(conn.clone(), id.clone());
        }
        if let Some(gateway) = &record.value.gateway {
            self.gateways.entry(gateway.clone()).or_default().insert(id.clone());
        }
        self.sessions.insert(id, record);
    }

    fn set_ended(&mut self, conn: String, mark: Option<Cached<EndedRecord>>) {
        if let Some(g) = self.ended.remove(&conn).and_then(|old| old.value.orphan_of) {
            remove_from(&mut self.orphans, &g, &conn);
        }
        let Some(mark) = mark else { return };
        if let Some(g) = &mark.value.orphan_of {
            self.orphans.entry(g.clone()).or_default().insert(conn.clone());
        }
        self.ended.insert(conn, mark);
    }

    fn set_room(&mut self, id: String, record: Option<Cached<RoomRecord>>) {
        if let Some(old) = self.rooms.remove(&id) {
            for member in &old.value.members {
                remove_from(&mut self.memberships, &member.session_id, &id);
            }
        }
        let Some(record) = record else { return };
        for member in &record.value.members {
            self.memberships.entry(member.session_id.clone()).or_default().insert(id.clone());
        }
        self.rooms.insert(id, record);
    }

    /// A follower applied everything of `bucket` up to stream sequence `seq`.
    pub fn followed_to(&mut self, bucket: Bucket, seq: u64) {
        let at = self.followed.entry(bucket).or_default();
        *at = (*at).max(seq);
    }

    /// Up to which stream sequence of `bucket` the cache holds every change.
    pub fn followed(&self, bucket: Bucket) -> u64 {
        self.followed.get(&bucket).copied().unwrap_or(0)
    }

    /// Connection `conn`'s ended mark, if it is marked.
    pub fn ended(&self, conn: &str) -> Option<&Cached<EndedRecord>> {
        self.ended.get(conn)
    }

    /// Marks written at `before_ms` or earlier, and those of orphans (still to be told to their
    /// gateway) written at `orphans_before_ms` or earlier.
    pub fn old_marks(&self, before_ms: u64, orphans_before_ms: u64) -> Vec<&str> {
        (self.ended.iter())
            .filter(|(_, e)| e.value.is_old(before_ms, orphans_before_ms))
            .map(|(conn, _)| conn.as_str())
            .collect()
    }

    /// The connections each gateway is still to be told to close (see [`EndedRecord`]).
    pub fn orphans(&self) -> &BTreeMap<String, BTreeSet<String>> {
        &self.orphans
    }

    /// Every connection holding a session, with its gateway.
    pub fn connections(&self) -> impl Iterator<Item = (&str, &str)> {
        self.sessions.values().filter_map(|s| Some((s.value.conn.as_deref()?, s.value.gateway.as_deref()?)))
    }

    /// The last revision of `key` the cache has seen, a delete's included; 0 if none: what a
    /// write decided on the cache expects.
    pub fn revision(&self, bucket: Bucket, key: &str) -> u64 {
        self.seen.get(&(bucket, key.to_owned())).copied().unwrap_or(0)
    }

    pub fn session(&self, id: &str) -> Option<&Cached<SessionRecord>> {
        self.sessions.get(id)
    }

    /// How many sessions exist, attached or in their grace period.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The session connection `conn` holds.
    pub fn session_of(&self, conn: &str) -> Option<&str> {
        self.conns.get(conn).map(String::as_str)
    }

    /// The sessions held through `gateway`.
    pub fn sessions_on(&self, gateway: &str) -> impl Iterator<Item = &str> {
        self.gateways.get(gateway).into_iter().flatten().map(String::as_str)
    }

    /// The rooms `session` is a member of.
    pub fn rooms_of(&self, session: &str) -> impl Iterator<Item = &str> {
        self.memberships.get(session).into_iter().flatten().map(String::as_str)
    }

    pub fn room(&self, id: &str) -> Option<&Cached<RoomRecord>> {
        self.rooms.get(id)
    }

    /// Counts of what the store holds, as this cache has it (chat messages live in the history,
    /// not here: 0).
    pub fn stats(&self) -> crate::ChatStats {
        crate::ChatStats {
            sessions: self.sessions.len(),
            detached: self.sessions.values().filter(|s| s.value.conn.is_none()).count(),
            connections: self.conns.len(),
            rooms: self.rooms.len(),
            members: self.rooms.values().map(|r| r.value.members.len()).sum(),
            messages: 0,
        }
    }

    /// How many rooms exist.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// The room an alias's key names (see `directory` for when that room is the alias's).
    pub fn room_by_alias(&self, alias: &str) -> Option<&str> {
        self.aliases.get(alias).map(|a| a.value.as_str())
    }

    /// Rooms empty since `before_ms` or earlier.
    pub fn idle_rooms(&self, before_ms: u64) -> Vec<&str> {
        (self.rooms.iter())
            .filter(|(_, r)| r.value.empty_since_ms.is_some_and(|at| at <= before_ms))
            .map(|(id, _)| id.as_str())
            .collect()
    }

    /// Detached sessions whose grace has run out by `now_ms`, earliest first.
    pub fn due(&self, now_ms: u64) -> Vec<&str> {
        let mut due: Vec<(u64, &str)> = self
            .sessions
            .iter()
            .filter_map(|(id, s)| s.value.expires_ms.filter(|at| *at <= now_ms).map(|at| (at, id.as_str())))
            .collect();
        due.sort_unstable();
        due.into_iter().map(|(_, id)| id).collect()
    }

    /// When the earliest grace among sessions not in `skip` runs out (Unix milliseconds).
    pub fn next_due(&self, skip: &BTreeSet<String>) -> Option<u64> {
        (self.sessions.iter())
            .filter(|(id, _)| !skip.contains(*id))
            .filter_map(|(_, s)| s.value.expires_ms)
            .min()
    }

    /// Sessions whose record names connections it moved away from, not yet told (their mover
    /// may have died).
    pub fn sessions_released(&self) -> Vec<&str> {
        self.sessions
            .iter()
            .filter(|(_, s)| !s.value.released.is_empty())
            .map(|(id, _)| id.as_str())
            .collect()
    }

    /// Sessions whose holding connection may not hear their rooms yet (their binder may have
    /// died before telling it).
    pub fn sessions_untold(&self) -> Vec<&str> {
        (self.sessions.iter())
            .filter(|(_, s)| s.value.untold && s.value.conn.is_some())
            .map(|(id, _)| id.as_str())
            .collect()
    }

    /// Rooms whose record holds events not yet cleared, or sessions not yet surely told of a
    /// decision (their decider may have died).
    pub fn rooms_with_pending(&self) -> Vec<&str> {
        (self.rooms.iter())
            .filter(|(_, r)| !r.value.pending.is_empty() || !r.value.touched.is_empty())
            .map(|(id, _)| id.as_str())
            .collect()
    }

    /// Members whose session the cache does not hold: left behind by a worker that died ending
    /// the session, or (for a moment) a session whose creation the cache has not heard yet. Read
    /// the session from the store before acting on one.
    pub fn members_without_session(&self) -> Vec<(&str, &str)> {
        let mut found = Vec::new();
        for (session, rooms) in &self.memberships {
            if !self.sessions.contains_key(session) {
                found.extend(rooms.iter().map(|room| (room.as_str(), session.as_str())));
            }
        }
        found
    }

    /// Whether the indexes agree with the records (for tests and the simulator's checked mode).
    pub fn check(&self) -> Result<(), String> {
        let mut cache = Cache::default();
        for (id, s) in &self.sessions {
            cache.set_session(id.clone(), Some(s.clone()));
        }
        for (id, r) in &self.rooms {
            cache.set_room(id.clone(), Some(r.clone()));
        }
        for (conn, e) in &self.ended {
            cache.set_ended(conn.clone(), Some(e.clone()));
        }
        if (cache.conns != self.conns)
            || (cache.gateways != self.gateways)
            || (cache.memberships != self.memberships)
            || (cache.orphans != self.orphans)
        {
            return Err("an index disagrees with the records".into());
        }
        Ok(())
    }
}

/// Removes `item` from the set at `key`, and the set once empty.
fn remove_from(map: &mut BTreeMap<String, BTreeSet<String>>, key: &str, item: &str) {
    if let Some(set) = map.get_mut(key) {
        set.remove(item);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use clientmq_core::proto::chat;

    use super::*;

    fn session(conn: Option<&str>, gateway: Option<&str>, expires_ms: Option<u64>) -> Vec<u8> {
        let (conn, gateway) = (conn.map(str::to_owned), gateway.map(str::to_owned));
        let record = SessionRecord { conn, gateway, expires_ms, ..SessionRecord::default() };
        record.encode_to_vec()
    }

    fn room(id: &str, members: &[&str]) -> Vec<u8> {
        let members = members
            .iter()
            .map(|s| chat::Member { session_id: (*s).into(), ..chat::Member::default() })
            .collect();
        RoomRecord { members, ..crate::stored::testing::room(id) }.encode_to_vec()
    }

    #[test]
    fn indexes_follow_every_change_and_ignore_old_news() {
        let mut cache = Cache::default();
        cache.apply(Bucket::Sessions, "s1", 1, Some(&session(Some("c1"), Some("gw1"), None))).unwrap();
        cache.apply(Bucket::Sessions, "s2", 2, Some(&session(Some("c2"), Some("gw1"), None))).unwrap();
        cache.apply(Bucket::Rooms, "r.room1", 1, Some(&room("room1", &["s1", "s2"]))).unwrap();
        cache.apply(Bucket::Rooms, "a.lobby", 2, Some(b"room1")).unwrap();
        assert_eq!(cache.session_of("c1"), Some("s1"));
        assert_eq!(cache.sessions_on("gw1").collect::<Vec<_>>(), ["s1", "s2"]);
        assert_eq!(cache.rooms_of("s2").collect::<Vec<_>>(), ["room1"]);
        assert_eq!(cache.room_by_alias("lobby"), Some("room1"));

        // s1 detaches: its connection and gateway are forgotten, its deadline known.
        cache.apply(Bucket::Sessions, "s1", 3, Some(&session(None, None, Some(5_000)))).unwrap();
        assert_eq!(cache.session_of("c1"), None);
        assert_eq!(cache.sessions_on("gw1").collect::<Vec<_>>(), ["s2"]);
        assert_eq!(cache.due(4_999), Vec::<&str>::new());
        assert_eq!(cache.due(5_000), ["s1"]);
        let skip = |ids: &[&str]| ids.iter().map(|&s| s.to_owned()).collect::<BTreeSet<String>>();
        assert_eq!(cache.next_due(&skip(&[])), Some(5_000));
        assert_eq!(cache.next_due(&skip(&["s1"])), None, "s1 is being ended already");
        let stats = cache.stats();
        let counts = (stats.sessions, stats.detached, stats.connections, stats.rooms, stats.members);
        assert_eq!(counts, (2, 1, 1, 1, 2));
        // An older change arriving late (a direct read ran ahead) changes nothing.
        cache.apply(Bucket::Sessions, "s1", 2, Some(&session(Some("c9"), Some("gw9"), None))).unwrap();
        assert_eq!(cache.session_of("c9"), None);

        // s1 ends: its key is deleted, and until someone removes it from room1 it shows up as a
        // member without a session.
        cache.apply(Bucket::Sessions, "s1", 4, None).unwrap();
        assert_eq!(cache.members_without_session(), [("room1", "s1")]);
        cache.apply(Bucket::Rooms, "r.room1", 5, Some(&room("room1", &["s2"]))).unwrap();
        assert_eq!(cache.members_without_session(), Vec::<(&str, &str)>::new());
        assert_eq!(cache.rooms_of("s1").count(), 0);
        cache.check().unwrap();
    }

    /// The check rebuilds every index from the records: an index that drifted, whichever, is
    /// caught.
    #[test]
    fn the_check_catches_any_index_that_disagrees_with_the_records() {
        let corrupt: [fn(&mut Cache); 4] = [
            |c| {
                c.conns.insert("ghost".into(), "s1".into());
            },
            |c| {
                c.gateways.entry("gw9".into()).or_default().insert("c1".into());
            },
            |c| {
                c.memberships.entry("s1".into()).or_default().insert("r9".into());
            },
            |c| {
                c.orphans.entry("gw9".into()).or_default().insert("c9".into());
            },
        ];
        for (i, corrupt) in corrupt.into_iter().enumerate() {
            let mut cache = Cache::default();
            cache
                .apply(
                    Bucket::Sessions,
                    &crate::stored::records::session_key("s1"),
                    1,
                    Some(&session(Some("c1"), Some("gw1"), None)),
                )
                .unwrap();
            cache.check().unwrap();
            corrupt(&mut cache);
            assert!(cache.check().is_err(), "index {i} drifted unseen");
        }
    }

    #[test]
    fn what_does_not_decode_is_refused_by_name() {
        let mut cache = Cache::default();
        assert_eq!(cache.apply(Bucket::Rooms, "x.y", 1, Some(b"")), Err(CacheError::Key("x.y".into())));
        assert_eq!(
            cache.apply(Bucket::Rooms, "r.a", 1, Some(&[0xff, 0xff])),
            Err(CacheError::Value("r.a".into()))
        );
    }
}
