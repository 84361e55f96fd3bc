//! Decisions about a room's members, each a function of the cache that writes the room's key
//! only, with the events it makes kept in the record ([`RoomRecord::pending`]) for whoever appends
//! them to the history. Membership lives here alone: a session's rooms are what the cache finds it
//! a member of.

use clientmq_core::proto::chat;
use prost::Message;

use super::cache::{Bucket, Cache};
use super::decide::{Decided, Write};
use super::records::{PendingEvent, RoomKey, RoomRecord, Touched};
use crate::rooms::{updated_info, updated_member};
use crate::state::announcement;
use crate::wire::{self, Outgoing, status};

/// Room `room_id`'s key becomes `record` with the events of this decision pending after those
/// already pending, expecting the revision the cache holds. Never replaced: the cache may have
/// moved on between the append of what was pending and this decision (explore found an event
/// lost so), and an event appended twice is stored once. `touched`: the session whose
/// subscriptions the decision changes (see [`RoomRecord::touched`]).
fn write(
    cache: &Cache,
    room_id: &str,
    mut record: RoomRecord,
    events: Vec<Vec<u8>>,
    touched: Option<&str>,
) -> Write {
    let key = RoomKey::Room(room_id.to_owned()).key();
    let expect = cache.revision(Bucket::Rooms, &key);
    let token = clientmq_bus::contract::room_token(room_id);
    let made = events.into_iter().enumerate();
    record.pending.extend(made.map(|(i, event)| PendingEvent { id: format!("{token}-{expect}-{i}"), event }));
    record.touched.extend(touched.map(|s| Touched { session: s.to_owned(), by: expect }));
    Write { bucket: Bucket::Rooms, key, expect, value: Some(record.encode_to_vec()) }
}

/// The `chat.RoomEvent` telling the others of a change to `session`'s member, if they hear of it.
fn change_event(
    record: &RoomRecord,
    session: &str,
    before: Option<&chat::Member>,
    after: Option<&chat::Member>,
    now_ms: u64,
) -> Vec<Vec<u8>> {
    let Some((kind, member)) = announcement(record.quiet_audience, before, after) else { return Vec::new() };
    match wire::room_event(session, record.room_id(), kind, vec![member.clone()], None, now_ms) {
        Outgoing::Event(delivery) => vec![delivery.payload],
        Outgoing::Subscription(_) => unreachable!("a room event is an event"),
    }
}

/// `session` joins room `room_id` as `member` (checked by the caller against the limits) at
/// `now_ms`. Joining again updates the member if anything changed. Returns the room as it is
/// after the join, or the status refusing it.
pub fn join(
    cache: &Cache,
    session: &str,
    room_id: &str,
    member: chat::Member,
    now_ms: u64,
    max_members: usize,
    max_rooms_per_session: usize,
) -> Decided<Result<RoomRecord, &'static str>> {
    let Some(room) = cache.room(room_id) else { return Decided::Nothing(Err(status::NOT_FOUND)) };
    let mut record = room.value.clone();
    let member = chat::Member { session_id: session.to_owned(), last_update: now_ms, ..member };
    let previous = record.member(session).cloned();
    match &previous {
        None if cache.rooms_of(session).count() >= max_rooms_per_session => {
            return Decided::Nothing(Err(status::CAPACITY));
        }
        None if record.members.len() >= max_members => return Decided::Nothing(Err(status::CAPACITY)),
        Some(old) if chat::Member { last_update: old.last_update, ..member.clone() } == *old => {
            return Decided::Nothing(Ok(record));
        }
        _ => {}
    }
    let events = change_event(&record, session, previous.as_ref(), Some(&member), now_ms);
    match record.members.iter_mut().find(|m| m.session_id == session) {
        Some(slot) => *slot = member,
        None => {
            let at = record.members.partition_point(|m| m.session_id.as_str() < session);
            record.members.insert(at, member);
        }
    }
    record.empty_since_ms = None;
    let answer = record.clone();
    Decided::Write(write(cache, room_id, record, events, Some(session)), Ok(answer))
}

/// `session` leaves room `room_id` (or is removed from it: its session ended) at `now_ms`.
/// Returns whether it was a member.
pub fn leave(cache: &Cache, session: &str, room_id: &str, now_ms: u64) -> Decided<bool> {
    let Some(room) = cache.room(room_id) else { return Decided::Nothing(false) };
    let mut record = room.value.clone();
    let Some(at) = record.members.iter().position(|m| m.session_id == session) else {
        return Decided::Nothing(false);
    };
    let gone = record.members.remove(at);
    record.listeners.retain(|l| l != session);
    let left = chat::Member { last_update: now_ms, ..gone };
    let events = change_event(&record, session, Some(&left), None, now_ms);
    if record.members.is_empty() {
        record.empty_since_ms = Some(now_ms);
    }
    Decided::Write(write(cache, room_id, record, events, Some(session)), true)
}

/// Member `session` subscribes to room `room_id`'s conversation (kept for a resume). Returns
/// whether it newly does, or the status refusing it.
pub fn listen(cache: &Cache, session: &str, room_id: &str) -> Decided<Result<bool, &'static str>> {
    let Some(room) = cache.room(room_id) else { return Decided::Nothing(Err(status::NOT_FOUND)) };
    let mut record = room.value.clone();
    if record.member(session).is_none() {
        return Decided::Nothing(Err(status::NOT_IN_ROOM));
    }
    let Err(at) = record.listeners.binary_search_by(|l| l.as_str().cmp(session)) else {
        return Decided::Nothing(Ok(false));
    };
    record.listeners.insert(at, session.to_owned());
    Decided::Write(write(cache, room_id, record, Vec::new(), Some(session)), Ok(true))
}

/// `session` changes member `update.session_id` (itself when empty) of room `room_id` at `now_ms`:
/// members change themselves, a moderator anyone. Returns the time of the change.
pub fn update_member(
    cache: &Cache,
    session: &str,
    room_id: &str,
    update: &chat::MemberUpdate,
    now_ms: u64,
) -> Decided<Result<u64, &'static str>> {
    let Some(room) = cache.room(room_id) else { return Decided::Nothing(Err(status::NOT_FOUND)) };
    let mut record = room.value.clone();
    let Some(me) = record.member(session) else { return Decided::Nothing(Err(status::NOT_IN_ROOM)) };
    let target = if update.session_id.is_empty() { session } else { update.session_id.as_str() };
    if target != session && me.role != chat::MemberRole::Moderator as i32 {
        return Decided::Nothing(Err(status::UNAUTHORIZED));
    }
    let Some(slot) = record.members.iter_mut().find(|m| m.session_id == target) else {
        return Decided::Nothing(Err(status::NOT_IN_ROOM));
    };
    let before = slot.clone();
    *slot = updated_member(&before, update, now_ms);
    let after = slot.clone();
    let events = change_event(&record, session, Some(&before), Some(&after), now_ms);
    Decided::Write(write(cache, room_id, record, events, None), Ok(now_ms))
}

/// `session`, a member, sets room `room_id`'s settings to `new`, carrying `alias` (its own, or
/// one claimed for it by a rename), at `now_ms`, and tells the room.
pub fn update_room(
    cache: &Cache,
    session: &str,
    room_id: &str,
    new: &chat::Room,
    alias: Option<String>,
    now_ms: u64,
) -> Decided<&'static str> {
    let Some(room) = cache.room(room_id) else { return Decided::Nothing(status::NOT_FOUND) };
    let mut record = room.value.clone();
    if record.member(session).is_none() {
        return Decided::Nothing(status::NOT_IN_ROOM);
    }
    if record.renaming.is_some() && record.renaming == alias {
        record.renaming = None;
    }
    let info = updated_info(&record.info.clone().unwrap_or_default(), new.clone(), alias);
    record.info = Some(info.clone());
    let kind = chat::RoomEventType::RoomUpdated;
    let event = match wire::room_event(session, room_id, kind, Vec::new(), Some(info), now_ms) {
        Outgoing::Event(delivery) => delivery.payload,
        Outgoing::Subscription(_) => unreachable!("a room event is an event"),
    };
    Decided::Write(write(cache, room_id, record, vec![event], None), status::OK)
}

/// Marks room `room_id` as being renamed to `alias` (`session` must be a member), or clears the
/// mark (`alias` none) if it is `clear`'s.
pub fn mark_renaming(
    cache: &Cache,
    session: &str,
    room_id: &str,
    alias: Option<&str>,
    clear: Option<&str>,
) -> Decided<Result<(), &'static str>> {
    let Some(room) = cache.room(room_id) else { return Decided::Nothing(Err(status::NOT_FOUND)) };
    let mut record = room.value.clone();
    if alias.is_some() && record.member(session).is_none() {
        return Decided::Nothing(Err(status::NOT_IN_ROOM));
    }
    let wanted = match alias {
        Some(alias) => Some(alias.to_owned()),
        None if record.renaming.as_deref() == clear => None,
        None => return Decided::Nothing(Ok(())),
    };
    if record.renaming == wanted {
        return Decided::Nothing(Ok(()));
    }
    record.renaming = wanted;
    Decided::Write(write(cache, room_id, record, Vec::new(), None), Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stored::testing;

    fn cache_with_room(quiet_audience: bool) -> Cache {
        let record = RoomRecord { quiet_audience, ..testing::room("r1") };
        let mut cache = Cache::default();
        cache.apply(Bucket::Rooms, "r.r1", 1, Some(&record.encode_to_vec())).unwrap();
        cache
    }

    /// The record `write` makes, taken, and then settled as a worker would (its events appended
    /// and cleared).
    fn take(cache: &mut Cache, write: &Write) -> RoomRecord {
        let revision = cache.revision(write.bucket, &write.key) + 1;
        let record = RoomRecord::decode(write.value.as_deref().unwrap()).unwrap();
        let settled = RoomRecord { pending: Vec::new(), ..record.clone() };
        cache.apply(write.bucket, &write.key, revision + 1, Some(&settled.encode_to_vec())).unwrap();
        record
    }

    fn kinds(record: &RoomRecord) -> Vec<i32> {
        record
            .pending
            .iter()
            .map(|p| chat::RoomEvent::decode(p.event.as_slice()).unwrap().event_type)
            .collect()
    }

    fn member(role: chat::MemberRole) -> chat::Member {
        chat::Member { screen_name: "a".into(), role: role as i32, ..chat::Member::default() }
    }

    #[test]
    fn a_join_a_rejoin_and_a_leave_each_make_their_event_once() {
        let mut cache = cache_with_room(false);
        let Decided::Write(w, Ok(_)) =
            join(&cache, "s1", "r1", member(chat::MemberRole::Participant), 5, 10, 10)
        else {
            panic!("a join writes")
        };
        assert_eq!(w.expect, 1);
        let record = take(&mut cache, &w);
        assert_eq!(kinds(&record), [chat::RoomEventType::MemberJoined as i32]);

        assert_eq!(record.pending[0].id, "r1-1-0");
        assert_eq!(cache.rooms_of("s1").collect::<Vec<_>>(), ["r1"]);
        // The same join again (the SDK re-enters): nothing to write, nothing to tell.
        assert!(matches!(
            join(&cache, "s1", "r1", member(chat::MemberRole::Participant), 9, 10, 10),
            Decided::Nothing(Ok(_))
        ));
        // A changed member: an update, told.
        let Decided::Write(w, _) = join(&cache, "s1", "r1", member(chat::MemberRole::Presenter), 9, 10, 10)
        else {
            panic!("a change writes")
        };
        assert_eq!(kinds(&take(&mut cache, &w)), [chat::RoomEventType::MemberUpdated as i32]);
        // Leaving: told once, and the room is empty since then; leaving again changes nothing.
        let Decided::Write(w, true) = leave(&cache, "s1", "r1", 12) else { panic!("a leave writes") };
        let record = take(&mut cache, &w);
        assert_eq!(
            (kinds(&record), record.empty_since_ms),
            (vec![chat::RoomEventType::MemberLeft as i32], Some(12))
        );
        assert!(matches!(leave(&cache, "s1", "r1", 13), Decided::Nothing(false)));
        cache.check().unwrap();
    }

    /// Members are kept in session order, each stamped with the time of its join, and a leave
    /// is told with the time it left.
    #[test]
    fn members_are_kept_in_order_and_stamped_with_their_time() {
        let mut cache = cache_with_room(false);
        for (at, session) in [(5, "s2"), (6, "s3"), (7, "s1")] {
            let Decided::Write(w, Ok(_)) =
                join(&cache, session, "r1", member(chat::MemberRole::Participant), at, 9, 9)
            else {
                panic!("a join writes")
            };
            let event = chat::RoomEvent::decode(take(&mut cache, &w).pending[0].event.as_slice()).unwrap();
            assert_eq!(event.members[0].last_update, at);
        }
        let record = cache.room("r1").unwrap().value.clone();
        let order: Vec<(&str, u64)> =
            record.members.iter().map(|m| (m.session_id.as_str(), m.last_update)).collect();
        assert_eq!(order, [("s1", 7), ("s2", 5), ("s3", 6)]);
        let Decided::Write(w, true) = leave(&cache, "s2", "r1", 12) else { panic!("a leave writes") };
        let event = chat::RoomEvent::decode(take(&mut cache, &w).pending[0].event.as_slice()).unwrap();
        assert_eq!((event.members[0].session_id.as_str(), event.members[0].last_update), ("s2", 12));
    }

    /// A rename's mark is cleared only by the update that names its alias, or by the one that
    /// clears that alias, never another's.
    #[test]
    fn a_rename_mark_is_cleared_only_by_its_own_alias() {
        let mut cache = cache_with_room(false);
        let Decided::Write(w, Ok(_)) =
            join(&cache, "s1", "r1", member(chat::MemberRole::Participant), 1, 9, 9)
        else {
            panic!("a join writes")
        };
        take(&mut cache, &w);
        let Decided::Write(w, Ok(())) = mark_renaming(&cache, "s1", "r1", Some("d"), None) else {
            panic!("a mark writes")
        };
        take(&mut cache, &w);
        assert!(matches!(mark_renaming(&cache, "s1", "r1", None, Some("x")), Decided::Nothing(Ok(()))));
        let renaming = |w: &Write| RoomRecord::decode(w.value.as_deref().unwrap()).unwrap().renaming;
        let Decided::Write(other, _) =
            update_room(&cache, "s1", "r1", &chat::Room::default(), Some("b".into()), 2)
        else {
            panic!("an update writes")
        };
        assert_eq!(renaming(&other).as_deref(), Some("d"), "another alias leaves the mark");
        let Decided::Write(own, _) =
            update_room(&cache, "s1", "r1", &chat::Room::default(), Some("d".into()), 2)
        else {
            panic!("an update writes")
        };
        assert_eq!(renaming(&own), None, "its own alias clears it");
        let Decided::Write(cleared, Ok(())) = mark_renaming(&cache, "s1", "r1", None, Some("d")) else {
            panic!("its own clear writes")
        };
        assert_eq!(renaming(&cleared), None);
    }

    #[test]
    fn a_channel_s_audience_is_not_told_and_limits_hold() {
        let mut cache = cache_with_room(true);
        let Decided::Write(w, Ok(room)) =
            join(&cache, "s1", "r1", member(chat::MemberRole::Audience), 5, 2, 10)
        else {
            panic!("a join writes")
        };
        assert!(room.listed().is_empty(), "an audience member is not listed");
        assert!(kinds(&take(&mut cache, &w)).is_empty(), "nor announced");
        let Decided::Write(w, _) = join(&cache, "s2", "r1", member(chat::MemberRole::Presenter), 5, 2, 10)
        else {
            panic!("a second member fits")
        };
        take(&mut cache, &w);
        assert!(matches!(
            join(&cache, "s3", "r1", member(chat::MemberRole::Audience), 5, 2, 10),
            Decided::Nothing(Err(status::CAPACITY))
        ));
        assert!(matches!(
            join(&cache, "s3", "nowhere", member(chat::MemberRole::Audience), 5, 2, 10),
            Decided::Nothing(Err(status::NOT_FOUND))
        ));
        // A session in as many rooms as it may be cannot join another; joining its own again is
        // no new room.
        cache.apply(Bucket::Rooms, "r.r2", 1, Some(&testing::room("r2").encode_to_vec())).unwrap();
        let joining = |room| join(&cache, "s1", room, member(chat::MemberRole::Presenter), 6, 9, 1);
        assert!(matches!(joining("r2"), Decided::Nothing(Err(status::CAPACITY))));
        assert!(matches!(joining("r1"), Decided::Write(..)));
    }

    #[test]
    fn members_change_themselves_and_a_moderator_changes_anyone() {
        let mut cache = cache_with_room(false);
        for (session, role) in [("s1", chat::MemberRole::Participant), ("s2", chat::MemberRole::Moderator)] {
            let Decided::Write(w, Ok(_)) = join(&cache, session, "r1", member(role), 1, 10, 10) else {
                panic!("a join writes")
            };
            take(&mut cache, &w);
        }
        let rename = |target: &str| chat::MemberUpdate {
            session_id: target.into(),
            screen_name: Some("new".into()),
            ..chat::MemberUpdate::default()
        };
        assert!(matches!(
            update_member(&cache, "s1", "r1", &rename("s2"), 2),
            Decided::Nothing(Err(status::UNAUTHORIZED))
        ));
        assert!(matches!(
            update_member(&cache, "s3", "r1", &rename(""), 2),
            Decided::Nothing(Err(status::NOT_IN_ROOM))
        ));
        for (by, target) in [("s1", ""), ("s2", "s1")] {
            let Decided::Write(w, Ok(2)) = update_member(&cache, by, "r1", &rename(target), 2) else {
                panic!("{by} may change {target:?}")
            };
            let record = take(&mut cache, &w);
            assert_eq!(record.member("s1").unwrap().screen_name, "new");
            assert_eq!(record.member("s1").unwrap().role, chat::MemberRole::Participant as i32);
        }
        // The first change is told; the second changes nothing but the time, and is told too.
        let Decided::Write(w, _) = update_member(&cache, "s1", "r1", &rename(""), 3) else { panic!() };
        assert_eq!(kinds(&take(&mut cache, &w)), [chat::RoomEventType::MemberUpdated as i32]);
    }

    #[test]
    fn a_conversation_subscription_lasts_as_long_as_the_membership() {
        let mut cache = cache_with_room(false);
        assert!(matches!(listen(&cache, "s1", "r1"), Decided::Nothing(Err(status::NOT_IN_ROOM))));
        let Decided::Write(w, _) = join(&cache, "s1", "r1", member(chat::MemberRole::Participant), 1, 9, 9)
        else {
            panic!("a join writes")
        };
        take(&mut cache, &w);
        let Decided::Write(w, Ok(true)) = listen(&cache, "s1", "r1") else { panic!("a new listener") };
        assert_eq!(take(&mut cache, &w).listeners, ["s1"]);
        assert!(matches!(listen(&cache, "s1", "r1"), Decided::Nothing(Ok(false))), "once");
        // A leave ends it; after joining again it is new again.
        let Decided::Write(w, true) = leave(&cache, "s1", "r1", 2) else { panic!("a leave writes") };
        assert!(take(&mut cache, &w).listeners.is_empty());
        let Decided::Write(w, _) = join(&cache, "s1", "r1", member(chat::MemberRole::Participant), 3, 9, 9)
        else {
            panic!("a join writes")
        };
        take(&mut cache, &w);
        assert!(matches!(listen(&cache, "s1", "r1"), Decided::Write(_, Ok(true))));
    }

    /// A decision on a record whose events nobody appended yet keeps them, before its own.
    #[test]
    fn events_pending_stay_until_appended() {
        let cache = cache_with_room(false);
        let Decided::Write(w, _) = join(&cache, "s1", "r1", member(chat::MemberRole::Participant), 5, 10, 10)
        else {
            panic!("a join writes")
        };
        let mut unsettled = Cache::default();
        unsettled.apply(Bucket::Rooms, "r.r1", 2, w.value.as_deref()).unwrap();
        let first = RoomRecord::decode(w.value.as_deref().unwrap()).unwrap().pending;
        let Decided::Write(w, _) =
            join(&unsettled, "s2", "r1", member(chat::MemberRole::Participant), 6, 10, 10)
        else {
            panic!("a join writes")
        };
        let kept = RoomRecord::decode(w.value.as_deref().unwrap()).unwrap().pending;
        assert_eq!(kept.len(), 2, "the unappended join's event, then this one's");
        assert_eq!(kept[0], first[0]);
        assert_eq!(kept[1].id, "r1-2-0");
    }
}
