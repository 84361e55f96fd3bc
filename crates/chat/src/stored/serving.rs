//! The stored worker's loop around its decisions, on the store model: the latency probe, what
//! its observer and metrics are told of its bus connection, and, back on the bus in a new
//! epoch, a sync to each gateway whose answer detaches what the gateway lost.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clientmq_bus::store::loopback::ModelBus;
use clientmq_bus::{Bus as _, BusMessage, Subscription as _};

use super::testing::{Served, answers, conn, metric, served_with};
use crate::metrics::WorkerMetrics;
use crate::worker::{WorkerEvent, WorkerObserver};

#[tokio::test(start_paused = true)]
async fn the_stored_worker_answers_the_probe_and_follows_its_own_bus_connection() {
    let bus = Arc::new(ModelBus::default());
    let mut syncs = bus.subscribe("clientmq.gw.g1.sync", None).await.unwrap();
    let events = Arc::new(Mutex::new(Vec::<String>::new()));
    let observer = {
        let events = events.clone();
        WorkerObserver(Arc::new(move |e: WorkerEvent| events.lock().unwrap().push(e.to_string())))
    };
    let metrics = Arc::new(WorkerMetrics::new());
    let Served { mut replies, .. } =
        served_with(&bus, Some(metrics.clone()), Some(observer), std::future::pending()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let taken = || std::mem::take(&mut *events.lock().unwrap());
    // Its facts are the store's (the simulator reads them there); the observer hears of the
    // worker's own connection and of gateways.
    assert_eq!(taken(), ["bus-connected"]);
    assert_eq!(metric(&metrics, "clientmq_chat_bus_connected"), 1.0);
    assert_eq!(metric(&metrics, "clientmq_chat_bus_reconnects_total"), 0.0, "its first connection");

    let probe = BusMessage::new("clientmq.req.mq.PingPong", b"p".to_vec()).reply_to("t.reply.9");
    bus.publish(probe).await.unwrap();
    let pong = answers(&mut replies, Duration::from_millis(200)).await;
    assert_eq!(pong[0].1.payload, b"p");
    // Its default type: no header to encode or parse (contract::answer).
    assert_eq!(pong[0].1.header(clientmq_bus::contract::header::TYPE), None);
    assert_eq!(clientmq_bus::contract::answer_type(&pong[0].1, "mq.PingPong"), "mq.PingPongResponse");

    // Lost: said, and no sync while away.
    bus.set_connected(false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(taken(), ["bus-lost"]);
    assert_eq!(metric(&metrics, "clientmq_chat_bus_connected"), 0.0);
    assert!(tokio::time::timeout(Duration::from_millis(200), syncs.next()).await.is_err());
    // Back in a new epoch: g1, which holds the session's connection, is asked what it still has.
    bus.set_connected(true);
    let sync = tokio::time::timeout(Duration::from_secs(1), syncs.next()).await.unwrap().unwrap();
    let asked = clientmq_bus::contract::parse_ids(&sync.payload);
    assert_eq!(asked.iter().map(ToString::to_string).collect::<Vec<_>>(), [conn()]);
    assert_eq!(taken(), ["bus-connected"]);
    assert_eq!(metric(&metrics, "clientmq_chat_bus_reconnects_total"), 1.0);
    // g1 lost it: the session is detached (counted at the next second's look).
    assert_eq!(metric(&metrics, "clientmq_chat_sessions_detached"), 0.0);
    bus.publish(BusMessage::new(sync.reply.unwrap(), sync.payload)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(metric(&metrics, "clientmq_chat_sessions_detached"), 1.0);
    assert_eq!(metric(&metrics, "clientmq_chat_sessions"), 1.0, "kept for its grace");

    // Lost and back between two looks: both said, and a new epoch counted.
    bus.set_connected(false);
    bus.set_connected(true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(taken(), ["bus-lost", "bus-connected"]);
    assert_eq!(metric(&metrics, "clientmq_chat_bus_reconnects_total"), 2.0);
}
