//! The chat layout on a real nats-server: refused with what to do when JetStream is off,
//! created once and found again when it is on, and the history stream's republish carries a
//! room's event to the subject gateways hear (the transform the model applies, held to the real
//! one here).

use std::sync::Arc;
use std::time::Duration;

use clientmq_bus::nats::NatsBus;
use clientmq_bus::store::{Expect, Store};
use clientmq_bus::{Bus, Subscription};
use clientmq_chat::stored::layout::{Layout, StartError};
use clientmq_testkit::nats::{Nats, in_place};
use clientmq_testkit::procs::{Log, wait_for};

const WAIT: Duration = Duration::from_secs(10);

async fn store(nats: &Nats, log: &Log) -> (Arc<NatsBus>, Store<NatsBus>) {
    let bus = Arc::new(NatsBus::connect(&nats.url(), "layout-test").await.unwrap());
    wait_for(WAIT, "connected", log, || async { bus.status().connected }).await;
    let store = Store::new(bus.clone(), "layout", Duration::from_secs(5)).await.unwrap();
    (bus, store)
}

#[tokio::test]
async fn without_jetstream_a_worker_is_told_to_enable_it() {
    let log = Log::default();
    let nats = Nats::start(&log).await;
    let (_bus, store) = store(&nats, &log).await;
    let err = Layout::new("clientmq", 1, 100).ensure(&store).await.unwrap_err();
    assert_eq!(err, StartError::JetStreamOff);
    assert!(err.to_string().contains("-js"), "{err}");
}

#[tokio::test]
async fn the_layout_is_made_once_and_a_room_event_reaches_the_room_subject() {
    let log = Log::default();
    let dir = std::env::temp_dir().join(format!("clientmq-layout-{}", std::process::id()));
    let nats = Nats::start_with(&log, &["-js", "-sd", &dir.display().to_string()]).await;
    let (bus, store) = store(&nats, &log).await;
    let layout = Layout::new("clientmq", 1, 100);
    layout.ensure(&store).await.unwrap();
    layout.ensure(&store).await.expect("found again with the same settings");

    let mut room = bus.subscribe("clientmq.>", None).await.unwrap();
    in_place(&*bus, &mut room, "clientmq.probe").await;
    for (kind, payload) in [("room", "joined"), ("conv", "hello")] {
        let subject = format!("clientmq.history._72.{kind}");
        store.publish(&subject, Vec::new(), payload.as_bytes().to_vec(), &Expect::default()).await.unwrap();
    }
    let mut heard = Vec::new();
    while heard.len() < 4 {
        let msg = tokio::time::timeout(WAIT, room.next()).await.expect("heard").unwrap();
        heard.push((msg.subject, String::from_utf8(msg.payload).unwrap()));
    }
    // Each append is heard on its own subject (the subscription matches the stream's too) and
    // republished to the subject of its kind and room.
    for (subject, payload) in [
        ("clientmq.history._72.room", "joined"),
        ("clientmq.room._72", "joined"),
        ("clientmq.history._72.conv", "hello"),
        ("clientmq.conv._72", "hello"),
    ] {
        assert!(heard.contains(&(subject.to_owned(), payload.to_owned())), "{subject} not in {heard:?}");
    }

    let err = Layout::new("clientmq", 1, 50).ensure(&store).await.unwrap_err();
    assert!(matches!(&err, StartError::Conflicting { stream, .. } if stream == "clientmq_history"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
