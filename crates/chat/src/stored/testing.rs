//! What the tests of the stored chat share: workers on one store model, each with its own
//! followed cache, rooms to put in it, and a wait for a cache to catch up.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clientmq_bus::store::Store;
use clientmq_bus::store::loopback::ModelBus;
use clientmq_core::proto::chat;

use super::cache::Cache;
use super::follow::follow;
use super::layout::Layout;
use super::records::RoomRecord;

/// A worker: a store client and its cache, followed from the store until the test ends.
pub(crate) struct Worker {
    pub store: Store<ModelBus>,
    pub cache: Arc<Mutex<Cache>>,
}

/// One worker per name on `bus`, with `layout` made.
pub(crate) async fn fleet(bus: &Arc<ModelBus>, layout: &Layout, names: &[&str]) -> Vec<Worker> {
    let mut workers = Vec::new();
    for name in names {
        let store = Store::new(bus.clone(), name, Duration::from_secs(1)).await.unwrap();
        layout.ensure(&store).await.unwrap();
        let cache = Arc::new(Mutex::new(Cache::default()));
        tokio::spawn(follow(store.clone(), layout.clone(), cache.clone()));
        workers.push(Worker { store, cache });
    }
    workers
}

/// An empty room's record.
pub(crate) fn room(id: &str) -> RoomRecord {
    let info = chat::Room { room_id: Some(id.into()), ..chat::Room::default() };
    RoomRecord { info: Some(info), ..RoomRecord::default() }
}

/// Waits (in steps of 5 ms, at most 2 s) until `cache` satisfies `done`.
pub(crate) async fn until(cache: &Mutex<Cache>, done: impl Fn(&Cache) -> bool) {
    for _ in 0..400 {
        if done(&cache.lock().unwrap()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the cache never got there: {:?}", cache.lock().unwrap());
}
