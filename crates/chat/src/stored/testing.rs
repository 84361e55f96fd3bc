//! What the tests of the stored chat share: workers on one store model, each with its own
//! followed cache, rooms to put in it, and a wait for a cache to catch up.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clientmq_bus::contract::header;
use clientmq_bus::store::Store;
use clientmq_bus::store::loopback::{ModelBus, ModelSubscription};
use clientmq_bus::{Bus as _, BusMessage, Subscription};
use clientmq_core::proto::{chat, mq, pcast};
use prost::Message;

use super::cache::Cache;
use super::follow::follow;
use super::layout::{Layout, StartError};
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

/// The connection a [`served`] worker's requests come from, through gateway `g1`.
pub(crate) fn conn() -> String {
    "c".repeat(32)
}

/// A request of `ty` on [`conn`] through gateway `g1`, answered on `t.reply.<n>`; its gateway
/// waits `timeout_ms` for the answer.
pub(crate) fn request(n: usize, ty: &str, payload: Vec<u8>, timeout_ms: u64) -> BusMessage {
    request_on(&conn(), n, ty, payload, timeout_ms)
}

/// [`request`] on connection `on`.
pub(crate) fn request_on(on: &str, n: usize, ty: &str, payload: Vec<u8>, timeout_ms: u64) -> BusMessage {
    BusMessage::new(format!("clientmq.req.{ty}"), payload)
        .reply_to(format!("t.reply.{n}"))
        .with(header::GATEWAY, "g1")
        .with(header::CONNECTION, on)
        .with(header::TIMEOUT_MS, timeout_ms.to_string())
}

/// The answers heard until `quiet` passes without one, by number.
pub(crate) async fn answers(replies: &mut impl Subscription, quiet: Duration) -> Vec<(usize, BusMessage)> {
    let mut heard = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(quiet, replies.next()).await {
        heard.push((msg.subject.rsplit('.').next().unwrap().parse().unwrap(), msg));
    }
    heard
}

/// The reason of an `mq.Error` answer.
pub(crate) fn reason(msg: &BusMessage) -> Option<String> {
    (msg.header(header::TYPE) == Some("mq.Error"))
        .then(|| mq::Error::decode(msg.payload.as_slice()).unwrap().reason)
}

/// Worker `w1` under prefix `clientmq`, seeded, with the default chat settings.
pub(crate) fn worker_config(
    observer: Option<crate::worker::WorkerObserver>,
    metrics: Option<Arc<crate::metrics::WorkerMetrics>>,
) -> crate::worker::WorkerConfig {
    let chat = crate::ChatConfig::default();
    crate::worker::WorkerConfig {
        prefix: "clientmq".into(),
        chat,
        seed: Some(1),
        name: "w1".into(),
        observer,
        metrics,
    }
}

/// The value of series `series` (name and labels, as rendered) in a worker's metrics, 0 when
/// absent.
pub(crate) fn metric(m: &crate::metrics::WorkerMetrics, series: &str) -> f64 {
    let prefix = format!("{series} ");
    m.render().lines().find_map(|l| l.strip_prefix(prefix.as_str())).map_or(0.0, |v| v.parse().unwrap())
}

/// A [`served`] worker: the answers' subscription, the session on [`conn`], a room, and the
/// worker's task.
pub(crate) struct Served {
    pub replies: ModelSubscription,
    pub session: String,
    pub room_id: String,
    pub worker: tokio::task::JoinHandle<Result<(), StartError>>,
}

/// A stored worker `w1` on `bus`, stopped when `shutdown` resolves, with a session on [`conn`]
/// and a room it made.
pub(crate) async fn served(
    bus: &Arc<ModelBus>,
    metrics: Option<Arc<crate::metrics::WorkerMetrics>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Served {
    served_with(bus, metrics, None, shutdown).await
}

/// [`served`], its worker telling `observer` too.
pub(crate) async fn served_with(
    bus: &Arc<ModelBus>,
    metrics: Option<Arc<crate::metrics::WorkerMetrics>>,
    observer: Option<crate::worker::WorkerObserver>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Served {
    let mut replies = bus.subscribe("t.reply.>", None).await.unwrap();
    let config = worker_config(observer, metrics);
    let worker = tokio::spawn(super::worker::run(bus.clone(), config, 1, shutdown));
    let quiet = Duration::from_millis(100);
    let auth = pcast::Authenticate { authentication_token: "t".into(), ..Default::default() };
    // The worker subscribes once its store is set up: asked until it answers (the bus says "no
    // responders" before).
    let mut session = String::new();
    for attempt in 0.. {
        assert!(attempt < 100, "the worker never answered");
        bus.publish(request(0, "pcast.Authenticate", auth.encode_to_vec(), 10_000)).await.unwrap();
        let heard = answers(&mut replies, quiet).await;
        if !heard.is_empty() && heard.iter().all(|(_, m)| m.status.is_none()) {
            let answer = pcast::AuthenticateResponse::decode(heard[0].1.payload.as_slice()).unwrap();
            assert_eq!(answer.status, "ok", "{heard:?}");
            session = answer.session_id.unwrap();
            break;
        }
    }
    let room = chat::Room {
        name: "r".into(),
        description: "d".into(),
        r#type: chat::RoomType::MultiPartyChat as i32,
        ..Default::default()
    };
    let create = chat::CreateRoom { session_id: String::new(), room };
    bus.publish(request(1, "chat.CreateRoom", create.encode_to_vec(), 10_000)).await.unwrap();
    let created = answers(&mut replies, quiet).await;
    let response = chat::CreateRoomResponse::decode(created[0].1.payload.as_slice()).unwrap();
    let room_id = response.room.and_then(|r| r.room_id).unwrap_or_else(|| panic!("{created:?}"));
    Served { replies, session, room_id, worker }
}

/// Gateway `g1` as far as subscriptions go: each `.subscription` message sent to it, answered
/// (acknowledged) when it asks to be.
pub(crate) async fn gateway(bus: &Arc<ModelBus>) -> tokio::sync::mpsc::UnboundedReceiver<BusMessage> {
    gateway_deaf(bus, Arc::default()).await
}

/// [`gateway`], cut off while `deaf` is set: what is sent to it meanwhile is lost (neither heard
/// nor answered).
pub(crate) async fn gateway_deaf(
    bus: &Arc<ModelBus>,
    deaf: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::sync::mpsc::UnboundedReceiver<BusMessage> {
    let mut sub = bus.subscribe("clientmq.gw.g1.subscription", None).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let bus = bus.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if deaf.load(std::sync::atomic::Ordering::Relaxed) {
                continue;
            }
            if let Some(reply) = &msg.reply {
                bus.publish(BusMessage::new(reply.clone(), Vec::new())).await.unwrap();
            }
            if tx.send(msg).is_err() {
                return;
            }
        }
    });
    rx
}

/// The subscription changes `told` holds now, each as (connection, binding, revision, changes).
pub(crate) fn changes(
    told: &mut tokio::sync::mpsc::UnboundedReceiver<BusMessage>,
) -> Vec<(String, u64, u64, Vec<String>)> {
    let mut seen = Vec::new();
    while let Ok(msg) = told.try_recv() {
        let number = |name| msg.header(name).map_or(0, |v| v.parse().unwrap());
        let changes = (msg.headers.iter())
            .filter(|(n, _)| n == header::SUBSCRIBE || n == header::UNSUBSCRIBE)
            .map(|(n, v)| format!("{}{v}", if n == header::SUBSCRIBE { "+" } else { "-" }))
            .collect();
        let conn = msg.header(header::CONNECTION).unwrap_or_default().to_owned();
        seen.push((conn, number(header::BINDING), number(header::REVISION), changes));
    }
    seen
}
