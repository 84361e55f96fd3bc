//! How a worker decides: on its cache, written to one key expecting the revision it decided on,
//! and decided again, on a fresher copy of the key, when the store refuses the write because
//! another worker (or another request of its own) moved the key first. Two workers deciding on
//! one key at once end as if one had decided after the other.

use std::sync::Mutex;

use clientmq_bus::Bus;
use clientmq_bus::store::{Store, StoreError};

use super::cache::{Bucket, Cache, lock};
use super::follow::refresh;
use super::layout::Layout;

/// How many times one decision is made before the worker gives up on a key too contended.
pub const MAX_ATTEMPTS: u32 = 16;

/// What a decision writes: `key` of `bucket` becomes `value` (`None`: deleted), if its revision
/// is still `expect` (0: never written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub bucket: Bucket,
    pub key: String,
    pub expect: u64,
    pub value: Option<Vec<u8>>,
}

/// A decision: a write and what follows from it once taken, or nothing to write.
#[derive(Debug)]
pub enum Decided<T> {
    Write(Write, T),
    Nothing(T),
}

impl Write {
    /// `key` of `bucket` becomes `value` (`None`: deleted), expecting the revision `cache` holds
    /// of it: what every decision writes.
    pub fn on(cache: &Cache, bucket: Bucket, key: String, value: Option<Vec<u8>>) -> Write {
        let expect = cache.revision(bucket, &key);
        Write { bucket, key, expect, value }
    }
}

impl<T> Decided<T> {
    /// The same decision with its outcome mapped (to carry what the decision saw along).
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Decided<U> {
        match self {
            Decided::Write(write, outcome) => Decided::Write(write, f(outcome)),
            Decided::Nothing(outcome) => Decided::Nothing(f(outcome)),
        }
    }
}

/// Why a decision was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    #[error("key {key} moved under {attempts} decisions in a row")]
    Contended { key: String, attempts: u32 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Decides with `decide` on `cache` and writes the result, deciding again after each refusal.
/// `decide` must be a function of the cache alone: after a timeout the write may have been taken,
/// and the next decision, on a cache that holds it, must see that (typically: nothing left to
/// do). A taken write is in the cache when this returns.
pub async fn decide<B: Bus, T>(
    store: &Store<B>,
    layout: &Layout,
    cache: &Mutex<Cache>,
    mut decide: impl FnMut(&Cache) -> Decided<T>,
) -> Result<T, DecideError> {
    let mut last_key = String::new();
    for _ in 0..MAX_ATTEMPTS {
        match attempt(store, layout, cache, &mut decide).await? {
            Attempt::Done(outcome, _) => return Ok(outcome),
            Attempt::Refused(key) => last_key = key,
        }
    }
    Err(DecideError::Contended { key: last_key, attempts: MAX_ATTEMPTS })
}

/// A decision's write, taken: the revision it expected and the one it made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken {
    pub expected: u64,
    pub revision: u64,
}

/// What one attempt at a decision came to.
pub(crate) enum Attempt<T> {
    /// Decided, and its write (if it made one) taken.
    Done(T, Option<Taken>),
    /// The store refused the write to this key (or may not have taken it): decide again.
    Refused(String),
}

/// Decides once on `cache` and writes the result.
pub(crate) async fn attempt<B: Bus, T>(
    store: &Store<B>,
    layout: &Layout,
    cache: &Mutex<Cache>,
    decide: &mut impl FnMut(&Cache) -> Decided<T>,
) -> Result<Attempt<T>, DecideError> {
    let decided = decide(&lock(cache));
    let (write, outcome) = match decided {
        Decided::Nothing(outcome) => return Ok(Attempt::Done(outcome, None)),
        Decided::Write(write, outcome) => (write, outcome),
    };
    let bucket = layout.bucket(write.bucket);
    let written = match &write.value {
        Some(value) => bucket.put(store, &write.key, value.clone(), Some(write.expect)).await,
        None => bucket.delete(store, &write.key, Some(write.expect)).await,
    };
    match written {
        Ok(revision) => {
            let applied = lock(cache).apply(write.bucket, &write.key, revision, write.value.as_deref());
            applied.map_err(|e| StoreError::Malformed(e.to_string()))?;
            Ok(Attempt::Done(outcome, Some(Taken { expected: write.expect, revision })))
        }
        // Refused, or perhaps taken: either way the key is read again and decided on anew.
        Err(StoreError::WrongLastSequence(_) | StoreError::InFlight(_) | StoreError::Timeout(_)) => {
            refresh(store, bucket, write.bucket, &write.key, cache).await?;
            Ok(Attempt::Refused(write.key))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use clientmq_bus::store::loopback::ModelBus;
    use prost::Message;

    use super::*;
    use crate::stored::records::{SessionRecord, session_key};
    use crate::stored::testing::{Worker, fleet};

    /// A session record whose `expires_ms` serves as a counter.
    fn count(cache: &Cache) -> (u64, u64) {
        let key = session_key("counter");
        let now = cache.session("counter").and_then(|s| s.value.expires_ms).unwrap_or(0);
        (cache.revision(Bucket::Sessions, &key), now)
    }

    #[tokio::test]
    async fn two_workers_counting_on_one_key_lose_no_increment() {
        let bus = Arc::new(ModelBus::default());
        let layout = Layout::new("clientmq", 1, 100);
        let workers = fleet(&bus, &layout, &["w1", "w2"]).await;
        let decisions = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut tasks = Vec::new();
        for Worker { store, cache } in &workers {
            let (store, cache, layout, decisions) =
                (store.clone(), cache.clone(), layout.clone(), decisions.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..25 {
                    let add_one = |cache: &Cache| {
                        decisions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let (expect, now) = count(cache);
                        let record = SessionRecord { expires_ms: Some(now + 1), ..SessionRecord::default() };
                        let key = session_key("counter");
                        Decided::Write(
                            Write {
                                bucket: Bucket::Sessions,
                                key,
                                expect,
                                value: Some(record.encode_to_vec()),
                            },
                            (),
                        )
                    };
                    decide(&store, &layout, &cache, add_one).await.unwrap();
                    tokio::task::yield_now().await;
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let entry = layout.sessions.entry(&workers[0].store, &session_key("counter")).await.unwrap().unwrap();
        let record = SessionRecord::decode(entry.value.unwrap().as_slice()).unwrap();
        assert_eq!(record.expires_ms, Some(50), "an increment was lost");
        // 50 writes taken, one revision each: the refused ones took none.
        assert_eq!(entry.revision, 50);
        let decisions = decisions.load(std::sync::atomic::Ordering::Relaxed);
        assert!(decisions > 50, "the workers never raced ({decisions} decisions): the test proves nothing");
    }

    #[tokio::test]
    async fn a_key_that_never_holds_still_gives_up() {
        let bus = Arc::new(ModelBus::default());
        let store = Store::new(bus, "w", Duration::from_secs(1)).await.unwrap();
        let layout = Layout::new("clientmq", 1, 100);
        layout.ensure(&store).await.unwrap();
        layout.sessions.put(&store, "k", vec![], None).await.unwrap();
        let cache = Mutex::new(Cache::default());
        // Always expects a revision the key does not have.
        let stale = |_: &Cache| {
            Decided::Write(Write { bucket: Bucket::Sessions, key: "k".into(), expect: 99, value: None }, ())
        };
        let err = decide(&store, &layout, &cache, stale).await.unwrap_err();
        assert_eq!(err, DecideError::Contended { key: "k".into(), attempts: MAX_ATTEMPTS });
    }
}
