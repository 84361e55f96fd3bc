//! Decisions about sessions, each a function of the cache that writes the session's key only
//! (see [`decide`](super::decide)). What follows from one (subscriptions moved between
//! connections, the session's rooms left) is the caller's to carry out once the write is taken,
//! from the record before and after.
//!
//! Each is idempotent on its own effect: decided again on a cache that already holds its write
//! (a write that timed out but was taken), it finds nothing left to do and says so the same way.
//!
//! Ended connections are marked in the same bucket (`e.<connection>`), so that an authentication
//! that raced past its connection's end is undone: the authenticating worker looks for the mark
//! once its cache has followed the bucket up to its own write, and the worker told of the end
//! looks for a session held by the connection once its cache has followed up to the mark. The
//! bucket's one order makes one of them see the other.

use prost::Message;

use super::cache::{Bucket, Cache};
use super::decide::{Decided, Write};
use super::records::{EndedRecord, Released, SessionRecord, ended_key, session_key};
use crate::wire::status;

/// `conn`, through `gateway`, authenticates: it resumes the session it asks for (`asked`) if
/// that session exists, or gets a new one named `new_id` (which the caller keeps across retries).
/// A token minted for one session (`token_bound`) resumes that session or nothing. The session
/// is then held by `conn`: a connection that held it before loses it (a takeover), and its
/// grace period, if it was detached, ends. Returns the session's id, or the status refusing it.
pub fn authenticate(
    cache: &Cache,
    conn: &str,
    gateway: &str,
    asked: Option<&str>,
    token_bound: bool,
    new_id: &str,
    max_sessions: usize,
) -> Decided<Result<String, &'static str>> {
    let resumed = asked.filter(|id| cache.session(id).is_some());
    if token_bound && resumed.is_none() {
        return Decided::Nothing(Err(status::UNAUTHORIZED));
    }
    let id = resumed.unwrap_or(new_id);
    let current = cache.session(id);
    if current.is_none() && cache.session_count() >= max_sessions {
        return Decided::Nothing(Err(status::CAPACITY));
    }
    let mut record = current.map(|c| c.value.clone()).unwrap_or_default();
    if record.held_by(conn, gateway) {
        return Decided::Nothing(Ok(id.to_owned()));
    }
    // Taken over: the old connection is still to be told (and a connection taking its session
    // back is not).
    if let (Some(old), Some(old_gateway)) = (record.conn.take(), record.gateway.take()) {
        release(&mut record, Released { conn: old, gateway: old_gateway });
    }
    record.released.retain(|r| r.conn != conn);
    record.conn = Some(conn.to_owned());
    record.gateway = Some(gateway.to_owned());
    record.expires_ms = None;
    // A new session hears nothing yet; a resumed one's rooms are owed to its new connection.
    record.untold = current.is_some();
    Decided::Write(write(cache, id, Some(&record)), Ok(id.to_owned()))
}

/// Connection `conn` ended: the session it holds, if any, starts its grace period (ending at
/// `now_ms + grace_ms`). Returns the session detached.
pub fn detach(cache: &Cache, conn: &str, now_ms: u64, grace_ms: u64) -> Decided<Option<String>> {
    detach_from(cache, conn, now_ms, grace_ms, false)
}

/// Open connection `conn` lets its session go to authenticate as another: detached as by
/// [`detach`], and `conn` is still to be told to stop hearing the session's rooms.
pub fn let_go(cache: &Cache, conn: &str, now_ms: u64, grace_ms: u64) -> Decided<Option<String>> {
    detach_from(cache, conn, now_ms, grace_ms, true)
}

/// [`detach`]; with `open`, `conn` stays open and is kept to be told (see [`let_go`]).
fn detach_from(cache: &Cache, conn: &str, now_ms: u64, grace_ms: u64, open: bool) -> Decided<Option<String>> {
    let Some(id) = cache.session_of(conn) else { return Decided::Nothing(None) };
    let Some(current) = cache.session(id) else { return Decided::Nothing(None) };
    let mut record = current.value.clone();
    if let Some(gateway) = record.gateway.take().filter(|_| open) {
        release(&mut record, Released { conn: conn.to_owned(), gateway });
    }
    record.conn = None;
    record.untold = false;
    record.expires_ms = Some(now_ms.saturating_add(grace_ms));
    Decided::Write(write(cache, id, Some(&record)), Some(id.to_owned()))
}

/// The connections `told` were told to stop hearing session `id`'s rooms: no longer kept.
/// Whether this changed the record.
pub fn told(cache: &Cache, id: &str, told: &[Released]) -> Decided<bool> {
    let Some(current) = cache.session(id).filter(|s| s.value.released.iter().any(|r| told.contains(r)))
    else {
        return Decided::Nothing(false);
    };
    let mut record = current.value.clone();
    record.released.retain(|r| !told.contains(r));
    Decided::Write(write(cache, id, Some(&record)), true)
}

/// Connection `conn` on `gateway`, holding session `id`, was told to hear its rooms: no longer
/// owed them. Nothing if the session moved on meanwhile (its new holder is owed them instead).
/// Whether this changed the record.
pub fn told_holder(cache: &Cache, id: &str, conn: &str, gateway: &str) -> Decided<bool> {
    let Some(current) = cache.session(id).filter(|s| s.value.untold && s.value.held_by(conn, gateway)) else {
        return Decided::Nothing(false);
    };
    let mut record = current.value.clone();
    record.untold = false;
    Decided::Write(write(cache, id, Some(&record)), true)
}

fn release(record: &mut SessionRecord, released: Released) {
    if !record.released.contains(&released) {
        record.released.push(released);
    }
}

/// Session `id` ends (`pcast.Bye`; or, with `due_by`, only if its grace has run out by then):
/// its key is deleted. Of several workers ending it at once, one deletes it and the others find
/// it gone. Not while its record names connections still to be told to stop hearing its rooms
/// (`released`): the deletion would forget them; they are told first. Returns whether this
/// decision ended it.
pub fn end(cache: &Cache, id: &str, due_by: Option<u64>) -> Decided<bool> {
    let Some(current) = cache.session(id) else { return Decided::Nothing(false) };
    if let Some(now_ms) = due_by
        && current.value.expires_ms.is_none_or(|at| at > now_ms)
    {
        return Decided::Nothing(false);
    }
    if !current.value.released.is_empty() {
        return Decided::Nothing(false);
    }
    Decided::Write(write(cache, id, None), true)
}

/// Connection `conn` ended at `now_ms`: marked, once. With `orphan_of`, it ended because its
/// gateway was counted gone while it held a session: that gateway is to be told to close it.
pub fn mark_ended(cache: &Cache, conn: &str, now_ms: u64, orphan_of: Option<&str>) -> Decided<()> {
    if cache.ended(conn).is_some() {
        return Decided::Nothing(());
    }
    let mark = EndedRecord { at_ms: now_ms, orphan_of: orphan_of.map(str::to_owned) };
    Decided::Write(Write::on(cache, Bucket::Sessions, ended_key(conn), Some(mark.encode_to_vec())), ())
}

/// Gateway `gateway` closed orphan `conn`: its mark no longer asks it to. Whether this changed
/// the mark.
pub fn orphan_closed(cache: &Cache, conn: &str, gateway: &str) -> Decided<bool> {
    let Some(mark) = cache.ended(conn).filter(|m| m.value.orphan_of.as_deref() == Some(gateway)) else {
        return Decided::Nothing(false);
    };
    let mark = EndedRecord { orphan_of: None, ..mark.value.clone() };
    Decided::Write(Write::on(cache, Bucket::Sessions, ended_key(conn), Some(mark.encode_to_vec())), true)
}

/// Forgets the mark of connection `conn` if old (see [`Cache::old_marks`]): a request that
/// raced past a connection's end is long answered by then, and a gateway that has not come back
/// for its orphans is not coming back.
pub fn unmark_ended(cache: &Cache, conn: &str, before_ms: u64, orphans_before_ms: u64) -> Decided<bool> {
    if !cache.ended(conn).is_some_and(|m| m.value.is_old(before_ms, orphans_before_ms)) {
        return Decided::Nothing(false);
    }
    Decided::Write(Write::on(cache, Bucket::Sessions, ended_key(conn), None), true)
}

/// Session `id`'s key becomes `record` (`None`: deleted), expecting the revision the cache holds.
fn write(cache: &Cache, id: &str, record: Option<&SessionRecord>) -> Write {
    Write::on(cache, Bucket::Sessions, session_key(id), record.map(Message::encode_to_vec))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache that took `write` as the store would have, at the next revision.
    fn taken(mut cache: Cache, write: &Write) -> Cache {
        let revision = cache.revision(write.bucket, &write.key).max(10) + 1;
        cache.apply(write.bucket, &write.key, revision, write.value.as_deref()).unwrap();
        cache
    }

    fn decided<T: std::fmt::Debug>(d: Decided<T>) -> (Option<Write>, T) {
        match d {
            Decided::Write(w, t) => (Some(w), t),
            Decided::Nothing(t) => (None, t),
        }
    }

    #[test]
    fn a_session_is_created_resumed_taken_over_and_ended_once() {
        let cache = Cache::default();
        // A new session, written expecting the key absent.
        let (w, id) = decided(authenticate(&cache, "c1", "gw1", None, false, "s1", 10));
        let w = w.unwrap();
        assert_eq!((id, w.expect), (Ok("s1".to_owned()), 0));
        let cache = taken(cache, &w);
        assert_eq!(cache.session_of("c1"), Some("s1"));
        // Decided again on a cache that holds it (a retry after a timeout): nothing to do.
        assert!(matches!(authenticate(&cache, "c1", "gw1", None, false, "s1", 10), Decided::Nothing(Ok(_))));

        // c1 ends: s1 is detached with its deadline; a second notice finds nothing.
        let (w, detached) = decided(detach(&cache, "c1", 1_000, 30_000));
        assert_eq!(detached.as_deref(), Some("s1"));
        let cache = taken(cache, &w.unwrap());
        assert_eq!(cache.due(31_000), ["s1"]);
        assert!(matches!(detach(&cache, "c1", 2_000, 30_000), Decided::Nothing(None)));
        // Its grace runs out at 31 s exactly.
        assert!(matches!(end(&cache, "s1", Some(30_999)), Decided::Nothing(false)));
        assert!(matches!(end(&cache, "s1", Some(31_000)), Decided::Write(_, true)));

        // c2 resumes s1 through another gateway: its deadline is gone.
        let (w, id) = decided(authenticate(&cache, "c2", "gw2", Some("s1"), false, "unused", 10));
        assert_eq!(id, Ok("s1".to_owned()));
        let cache = taken(cache, &w.unwrap());
        assert_eq!((cache.session_of("c2"), cache.due(u64::MAX).len()), (Some("s1"), 0));
        // c3 takes it over while c2 still holds it.
        let (w, _) = decided(authenticate(&cache, "c3", "gw1", Some("s1"), true, "unused", 10));
        let cache = taken(cache, &w.unwrap());
        assert_eq!((cache.session_of("c3"), cache.session_of("c2")), (Some("s1"), None));

        // Not due yet: nothing. Not while c2 is still to be told. Bye: deleted, once.
        assert!(matches!(end(&cache, "s1", Some(0)), Decided::Nothing(false)));
        assert!(matches!(end(&cache, "s1", None), Decided::Nothing(false)));
        let released = cache.session("s1").unwrap().value.released.clone();
        let (w, _) = decided(told(&cache, "s1", &released));
        let cache = taken(cache, &w.unwrap());
        let (w, ended) = decided(end(&cache, "s1", None));
        assert!(ended);
        let cache = taken(cache, &w.unwrap());
        assert!(matches!(end(&cache, "s1", None), Decided::Nothing(false)));
        cache.check().unwrap();
    }

    /// A connection a session moves away from while open (taken over, or letting it go to
    /// authenticate as another) is kept in the record until told to stop hearing its rooms; a
    /// connection taking the session back is not.
    #[test]
    fn connections_a_session_moved_away_from_are_kept_until_told() {
        let released = |cache: &Cache| {
            let s = cache.session("s1").unwrap();
            s.value.released.iter().map(|r| format!("{}@{}", r.conn, r.gateway)).collect::<Vec<_>>()
        };
        let cache = Cache::default();
        let (w, _) = decided(authenticate(&cache, "c1", "gw1", None, false, "s1", 10));
        let cache = taken(cache, &w.unwrap());
        assert!(released(&cache).is_empty());
        let (w, _) = decided(authenticate(&cache, "c2", "gw2", Some("s1"), false, "unused", 10));
        let cache = taken(cache, &w.unwrap());
        assert_eq!(released(&cache), ["c1@gw1"]);
        // c1 takes it back: c2 is to be told, c1 no longer.
        let (w, _) = decided(authenticate(&cache, "c1", "gw1", Some("s1"), false, "unused", 10));
        let cache = taken(cache, &w.unwrap());
        assert_eq!(released(&cache), ["c2@gw2"]);
        // c1 lets it go for another session: detached, and c1 is to be told too.
        let (w, detached) = decided(let_go(&cache, "c1", 1_000, 30_000));
        assert_eq!(detached.as_deref(), Some("s1"));
        let cache = taken(cache, &w.unwrap());
        assert_eq!((cache.session_of("c1"), cache.due(31_000)), (None, vec!["s1"]));
        assert_eq!(released(&cache), ["c2@gw2", "c1@gw1"]);
        // Told: cleared, once.
        let told_now = cache.session("s1").unwrap().value.released.clone();
        let (w, changed) = decided(told(&cache, "s1", &told_now[..1]));
        assert!(changed);
        let cache = taken(cache, &w.unwrap());
        assert_eq!(released(&cache), ["c1@gw1"]);
        assert!(matches!(told(&cache, "s1", &told_now[..1]), Decided::Nothing(false)));
        cache.check().unwrap();
    }

    /// A session bound to a new connection (a resume, a takeover) owes it its rooms until
    /// told; a new session owes nothing, and a holder that ends or moves on is owed no more.
    #[test]
    fn a_resumed_session_owes_its_new_connection_its_rooms_until_told() {
        let untold =
            |cache: &Cache| cache.sessions_untold().into_iter().map(str::to_owned).collect::<Vec<_>>();
        // s1 made on c1, then resumed on c2.
        let resumed = || {
            let cache = Cache::default();
            let (w, _) = decided(authenticate(&cache, "c1", "gw1", None, false, "s1", 10));
            let cache = taken(cache, &w.unwrap());
            assert!(untold(&cache).is_empty(), "a new session hears nothing yet");
            let (w, _) = decided(authenticate(&cache, "c2", "gw2", Some("s1"), false, "unused", 10));
            taken(cache, &w.unwrap())
        };
        let cache = resumed();
        assert_eq!(untold(&cache), ["s1"]);
        // Told, but as another holder (one the session moved away from): still owed.
        assert!(matches!(told_holder(&cache, "s1", "c1", "gw1"), Decided::Nothing(false)));
        assert!(matches!(told_holder(&cache, "s1", "c2", "gw1"), Decided::Nothing(false)));
        let (w, changed) = decided(told_holder(&cache, "s1", "c2", "gw2"));
        assert!(changed);
        let cache = taken(cache, &w.unwrap());
        assert!(untold(&cache).is_empty());
        assert!(matches!(told_holder(&cache, "s1", "c2", "gw2"), Decided::Nothing(false)));
        // Untold, its holder ends: detached, nobody is owed anything.
        let cache = resumed();
        let (w, _) = decided(detach(&cache, "c2", 1_000, 30_000));
        let cache = taken(cache, &w.unwrap());
        assert!(untold(&cache).is_empty());
        assert!(!cache.session("s1").unwrap().value.untold);
        cache.check().unwrap();
    }

    #[test]
    fn refusals_say_why() {
        let cache = Cache::default();
        // A token minted for a session that does not exist resumes nothing.
        assert!(matches!(
            authenticate(&cache, "c1", "gw1", Some("gone"), true, "s1", 10),
            Decided::Nothing(Err(status::UNAUTHORIZED))
        ));
        // A session asked for that does not exist, without such a token: a new one.
        assert!(
            matches!(authenticate(&cache, "c1", "gw1", Some("gone"), false, "s1", 10), Decided::Write(_, Ok(id)) if id == "s1")
        );
        // At capacity, a new session is refused; resuming one is not.
        let (w, _) = decided(authenticate(&cache, "c1", "gw1", None, false, "s1", 1));
        let cache = taken(cache, &w.unwrap());
        assert!(matches!(
            authenticate(&cache, "c2", "gw1", None, false, "s2", 1),
            Decided::Nothing(Err(status::CAPACITY))
        ));
        assert!(matches!(
            authenticate(&cache, "c2", "gw1", Some("s1"), false, "s2", 1),
            Decided::Write(_, Ok(_))
        ));
    }

    /// A connection orphaned by its gateway's silence is listed for that gateway until the
    /// gateway says it closed it; its mark stays (it still ended) and is forgotten later than a
    /// plain one.
    #[test]
    fn an_orphan_is_listed_until_closed_and_its_mark_outlives_a_plain_one() {
        let cache = Cache::default();
        let (w, ()) = decided(mark_ended(&cache, "c1", 1_000, Some("gw1.0")));
        let cache = taken(cache, &w.unwrap());
        let (w, ()) = decided(mark_ended(&cache, "c2", 1_000, None));
        let cache = taken(cache, &w.unwrap());
        assert!(matches!(mark_ended(&cache, "c1", 2_000, None), Decided::Nothing(())), "marked once");
        let listed: Vec<(&str, Vec<&str>)> = cache
            .orphans()
            .iter()
            .map(|(g, c)| (g.as_str(), c.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(listed, [("gw1.0", vec!["c1"])]);
        // Only the old plain mark goes at the plain bound; the orphan's at its own.
        assert_eq!(cache.old_marks(1_000, 999), ["c2"]);
        assert_eq!(cache.old_marks(1_000, 1_000), ["c1", "c2"]);
        assert!(matches!(unmark_ended(&cache, "c1", 1_000, 999), Decided::Nothing(false)));

        // Another gateway's answer changes nothing; its own clears the orphan, once.
        assert!(matches!(orphan_closed(&cache, "c1", "gw2.0"), Decided::Nothing(false)));
        let (w, cleared) = decided(orphan_closed(&cache, "c1", "gw1.0"));
        assert!(cleared);
        let cache = taken(cache, &w.unwrap());
        assert!(cache.orphans().is_empty());
        cache.check().unwrap();
        assert!(cache.ended("c1").is_some_and(|m| m.value.at_ms == 1_000), "still ended, same age");
        assert!(matches!(orphan_closed(&cache, "c1", "gw1.0"), Decided::Nothing(false)));
        assert_eq!(cache.old_marks(1_000, 0), ["c1", "c2"]);
    }

    /// Two workers see one session's grace run out at once: one ends it, the other finds it
    /// gone. What `MemberLeft` exactly once per departure rests on.
    #[tokio::test]
    async fn of_two_workers_ending_a_session_one_does() {
        use std::sync::Arc;

        use clientmq_bus::store::loopback::ModelBus;

        use crate::stored::decide::decide;
        use crate::stored::layout::Layout;
        use crate::stored::testing::{Worker, fleet, until};

        let bus = Arc::new(ModelBus::default());
        let layout = Layout::new("clientmq", 1, 100);
        let workers = fleet(&bus, &layout, &["w1", "w2"]).await;
        for round in 0..20 {
            let id = format!("s{round}");
            let Worker { store, cache } = &workers[0];
            decide(store, &layout, cache, |c| authenticate(c, "c1", "gw1", None, false, &id, 100))
                .await
                .unwrap()
                .unwrap();
            decide(store, &layout, cache, |c| detach(c, "c1", 0, 10)).await.unwrap();
            // Both caches hold the detached session before either decides.
            for w in &workers {
                until(&w.cache, |c| c.due(10) == [id.as_str()]).await;
            }
            let ends = workers.iter().map(|Worker { store, cache }| {
                let (store, cache, layout, id) = (store.clone(), cache.clone(), layout.clone(), id.clone());
                tokio::spawn(async move {
                    decide(&store, &layout, &cache, |c| end(c, &id, Some(10))).await.unwrap()
                })
            });
            let mut ended = Vec::new();
            for task in ends.collect::<Vec<_>>() {
                ended.push(task.await.unwrap());
            }
            assert_eq!(ended.iter().filter(|e| **e).count(), 1, "round {round}: {ended:?}");
        }
    }
}
