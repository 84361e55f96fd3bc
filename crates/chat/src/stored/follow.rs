//! Feeding a [`Cache`] from the store: one follower per bucket, each key's value and then every
//! change, applied as they come. What a worker runs beside its decisions, and restarts from
//! scratch (a fresh cache) whenever it wants to drop what it holds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clientmq_bus::Bus;
use clientmq_bus::store::kv::Bucket as KvBucket;
use clientmq_bus::store::watch::Follower;
use clientmq_bus::store::wire::{DeliverPolicy, header};
use clientmq_bus::store::{Store, StoreError, StoredMsg};

use super::cache::{Bucket, Cache, lock};
use super::layout::Layout;

/// Follows both buckets of `layout` into `cache` until the task is dropped.
pub async fn follow<B: Bus>(store: Store<B>, layout: Layout, cache: Arc<Mutex<Cache>>) {
    let sessions = feed(store.clone(), layout.sessions.clone(), Bucket::Sessions, cache.clone());
    let rooms = feed(store, layout.rooms, Bucket::Rooms, cache);
    tokio::join!(sessions, rooms);
}

async fn feed<B: Bus>(store: Store<B>, bucket: KvBucket, which: Bucket, cache: Arc<Mutex<Cache>>) {
    let prefix = format!("$KV.{}.", bucket.name());
    let filter = format!("{prefix}>");
    let mut follower = Follower::new(&store, &bucket.stream(), &filter, DeliverPolicy::LastPerSubject);
    loop {
        let msg = follower.next().await;
        let Some(key) = msg.subject.strip_prefix(&prefix) else {
            lock(&cache).followed_to(which, msg.seq);
            continue;
        };
        let applied = {
            let mut cache = lock(&cache);
            let applied = cache.apply(which, key, msg.seq, value(&msg));
            cache.followed_to(which, msg.seq);
            applied
        };
        if let Err(e) = applied {
            tracing::warn!(error = %e, "a key of the store ignored");
        }
    }
}

/// A bucket message's value: `None` for a delete or purge marker.
fn value(msg: &StoredMsg) -> Option<&[u8]> {
    match msg.header(header::KV_OPERATION) {
        Some("DEL" | "PURGE") => None,
        _ => Some(&msg.data),
    }
}

/// Reads one key of a bucket into `cache` now, ahead of its follower: what a worker does after
/// the store refused a write because the key moved.
pub async fn refresh<B: Bus>(
    store: &Store<B>,
    bucket: &KvBucket,
    which: Bucket,
    key: &str,
    cache: &Mutex<Cache>,
) -> Result<(), StoreError> {
    let entry = bucket.entry(store, key).await?;
    let Some(entry) = entry else { return Ok(()) };
    let applied = lock(cache).apply(which, key, entry.revision, entry.value.as_deref());
    applied.map_err(|e| StoreError::Malformed(e.to_string()))
}

/// Waits until `cache` holds every change of `bucket` up to stream sequence `seq`, at most
/// `timeout`. Whether it got there.
pub async fn followed(cache: &Mutex<Cache>, bucket: Bucket, seq: u64, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while lock(cache).followed(bucket) < seq {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

/// Waits until `cache` holds everything `bucket` of `layout` holds now (at most the store's
/// timeout). Whether it got there.
pub async fn catch_up<B: Bus>(
    store: &Store<B>,
    layout: &Layout,
    cache: &Mutex<Cache>,
    bucket: Bucket,
) -> Result<bool, StoreError> {
    let state = store.stream_state(&layout.bucket(bucket).stream()).await?;
    Ok(followed(cache, bucket, state.last_seq, store.timeout()).await)
}

#[cfg(test)]
mod tests {
    use clientmq_bus::store::loopback::ModelBus;
    use clientmq_core::proto::chat;
    use prost::Message;

    use super::*;
    use crate::stored::records::{RoomKey, RoomRecord, SessionRecord, session_key};
    use crate::stored::testing::{self, until};

    #[tokio::test]
    async fn a_cache_follows_both_buckets_and_a_fresh_one_catches_up() {
        let bus = Arc::new(ModelBus::default());
        let store = Store::new(bus, "w1", Duration::from_secs(1)).await.unwrap();
        let layout = Layout::new("clientmq", 1, 100);
        layout.ensure(&store).await.unwrap();
        let session = SessionRecord {
            conn: Some("c1".into()),
            gateway: Some("gw1".into()),
            ..SessionRecord::default()
        };
        layout.sessions.put(&store, &session_key("s1"), session.encode_to_vec(), Some(0)).await.unwrap();

        let cache = Arc::new(Mutex::new(Cache::default()));
        let following = tokio::spawn(follow(store.clone(), layout.clone(), cache.clone()));
        until(&cache, |c| c.session_of("c1") == Some("s1")).await;

        // Changes after the start arrive too: a room with s1 in it, then s1's end.
        let member = chat::Member { session_id: "s1".into(), ..chat::Member::default() };
        let room = RoomRecord { members: vec![member], ..testing::room("r1") };
        layout
            .rooms
            .put(&store, &RoomKey::Room("r1".into()).key(), room.encode_to_vec(), Some(0))
            .await
            .unwrap();
        until(&cache, |c| c.rooms_of("s1").eq(["r1"])).await;
        let revision = cache.lock().unwrap().session("s1").unwrap().revision;
        layout.sessions.delete(&store, &session_key("s1"), Some(revision)).await.unwrap();
        until(&cache, |c| c.session("s1").is_none() && c.members_without_session() == [("r1", "s1")]).await;
        following.abort();

        // A cache dropped and started again ends where the first one was.
        let fresh = Arc::new(Mutex::new(Cache::default()));
        // Not followed yet: catching up gives up at the store's timeout, not holding s1.
        assert!(!catch_up(&store, &layout, &fresh, Bucket::Sessions).await.unwrap());
        let following = tokio::spawn(follow(store.clone(), layout.clone(), fresh.clone()));
        assert!(catch_up(&store, &layout, &fresh, Bucket::Sessions).await.unwrap(), "followed");
        until(&fresh, |c| c.members_without_session() == [("r1", "s1")] && c.room("r1").is_some()).await;
        fresh.lock().unwrap().check().unwrap();
        following.abort();

        // A refresh reads a key ahead of any follower.
        let lone = Mutex::new(Cache::default());
        refresh(&store, &layout.rooms, Bucket::Rooms, &RoomKey::Room("r1".into()).key(), &lone)
            .await
            .unwrap();
        assert_eq!(lone.lock().unwrap().room("r1").map(|r| r.value.room_id().to_owned()), Some("r1".into()));
    }

    /// Waiting for the cache to follow a bucket up to a sequence ends as soon as it has, and at
    /// the timeout with `false` if it never does; a cache already there does not wait.
    #[tokio::test(start_paused = true)]
    async fn waiting_for_the_cache_ends_when_it_follows_or_at_the_timeout() {
        let cache = Arc::new(Mutex::new(Cache::default()));
        let timeout = Duration::from_secs(2);
        let start = tokio::time::Instant::now();
        let feeder = cache.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            lock(&feeder).followed_to(Bucket::Sessions, 7);
        });
        assert!(followed(&cache, Bucket::Sessions, 7, timeout).await);
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(100) && waited < Duration::from_millis(110), "{waited:?}");
        assert!(followed(&cache, Bucket::Sessions, 6, timeout).await, "already there");
        assert_eq!(start.elapsed(), waited, "without waiting");
        assert!(!followed(&cache, Bucket::Sessions, 8, timeout).await, "never there");
        assert!(start.elapsed() - waited >= timeout, "given up at the timeout, not before");
        assert!(!followed(&cache, Bucket::Rooms, 1, timeout).await, "each bucket its own");
    }
}
