//! `NatsBus` on a real nats-server: what crosses it arrives as sent, a bus without its server
//! refuses at once and says so, reconnects back off, and refused credentials are counted apart
//! from other failures.

use std::time::Duration;

use clientmq_bus::access::NatsArgs;
use clientmq_bus::nats::NatsBus;
use clientmq_bus::{Bus, BusError, BusMessage, NO_RESPONDERS, Subscription};
use clientmq_testkit::nats::{Nats, in_place};
use clientmq_testkit::procs::{Log, free_port, wait_for};

const WAIT: Duration = Duration::from_secs(10);

async fn next(sub: &mut impl Subscription) -> BusMessage {
    tokio::time::timeout(WAIT, sub.next()).await.expect("a message in time").expect("the subscription open")
}

async fn connected(bus: &NatsBus, log: &Log) {
    wait_for(WAIT, "connected", log, || async { bus.status().connected }).await;
}

#[tokio::test]
async fn a_message_arrives_as_sent_with_its_reply_and_headers() {
    let log = Log::default();
    let nats = Nats::start(&log).await;
    let (a, b) = (
        NatsBus::connect(&nats.url(), "a").await.unwrap(),
        NatsBus::connect(&nats.url(), "b").await.unwrap(),
    );
    connected(&a, &log).await;
    connected(&b, &log).await;
    let mut sub = b.subscribe("t.x", None).await.unwrap();
    in_place(&b, &mut sub, "t.x").await;

    let sent = [
        BusMessage::new("t.x", b"plain".to_vec()),
        BusMessage::new("t.x", b"headers".to_vec()).with("A", "1").with("A", "2").with("B", "two words"),
        BusMessage::new("t.x", b"reply".to_vec()).reply_to("t.answer"),
        BusMessage::new("t.x", Vec::new()).reply_to("t.answer.2").with("C", "3"),
    ];
    for msg in &sent {
        a.publish(msg.clone()).await.unwrap();
    }
    a.flush().await.unwrap();
    // NATS keeps the order of a name's values, not the order of names.
    let by_name = |mut msg: BusMessage| {
        msg.headers.sort_by(|a, b| a.0.cmp(&b.0));
        msg
    };
    for msg in &sent {
        assert_eq!(by_name(next(&mut sub).await), by_name(msg.clone()));
    }

    // A header value the protocol cannot carry is refused before anything is sent.
    let bad = BusMessage::new("t.x", Vec::new()).with("D", "a\r\nb");
    assert!(matches!(a.publish(bad).await, Err(BusError::Refused(_))));

    // A request nobody subscribes to is answered by the server itself, with its status.
    let mut inbox = a.subscribe("t.inbox", None).await.unwrap();
    in_place(&a, &mut inbox, "t.inbox").await;
    a.publish(BusMessage::new("t.nobody", b"?".to_vec()).reply_to("t.inbox")).await.unwrap();
    let answer = next(&mut inbox).await;
    assert_eq!((answer.subject.as_str(), answer.status), ("t.inbox", Some(NO_RESPONDERS)));

    // A queue group shares the messages: each goes to one of its members.
    let mut q1 = a.subscribe("t.q", Some("g")).await.unwrap();
    let mut q2 = b.subscribe("t.q", Some("g")).await.unwrap();
    // Each member's subscription is in place at the server once its own flush is answered.
    a.flush().await.unwrap();
    b.flush().await.unwrap();
    for n in 0..20u8 {
        a.publish(BusMessage::new("t.q", vec![n])).await.unwrap();
    }
    a.flush().await.unwrap();
    let mut got = Vec::new();
    while got.len() < 20 {
        tokio::select! {
            Some(m) = q1.next() => got.push(m.payload[0]),
            Some(m) = q2.next() => got.push(m.payload[0]),
            () = tokio::time::sleep(WAIT) => panic!("the queue group took {} of 20", got.len()),
        }
    }
    got.sort_unstable();
    assert_eq!(got, (0..20).collect::<Vec<u8>>());
}

#[tokio::test]
async fn without_its_server_a_bus_refuses_at_once_and_says_so() {
    let log = Log::default();
    let mut nats = Nats::start(&log).await;
    let bus = NatsBus::connect(&nats.url(), "t").await.unwrap();
    connected(&bus, &log).await;
    let up = bus.status();
    assert_eq!(bus.failures(), (0, 0));

    nats.stop().await;
    tokio::time::timeout(WAIT, bus.changed(up)).await.expect("told of the loss");
    let down = bus.status();
    assert!(!down.connected);
    assert_eq!(down.epoch, up.epoch);
    assert!(matches!(bus.publish(BusMessage::new("t.x", Vec::new())).await, Err(BusError::Disconnected)));
    assert!(matches!(bus.flush().await, Err(BusError::Disconnected)));

    nats.restart().await;
    tokio::time::timeout(WAIT, bus.changed(down)).await.expect("told of the return");
    let again = bus.status();
    assert!(again.connected);
    assert_eq!(again.epoch, up.epoch + 1, "each connection is a new epoch");
    bus.publish(BusMessage::new("t.x", Vec::new())).await.unwrap();
    bus.flush().await.unwrap();
    // The attempts while it was away failed for no credential.
    assert_eq!(bus.failures().0, 0);
}

#[tokio::test]
async fn reconnects_back_off() {
    let log = Log::default();
    let port = free_port();
    let bus = NatsBus::connect(&format!("nats://127.0.0.1:{port}"), "t").await.unwrap();
    assert!(!bus.status().connected, "nothing listens there");
    assert!(matches!(bus.flush().await, Err(BusError::Disconnected)));
    wait_for(WAIT, "a failed attempt counted", &log, || async { bus.failures().1 >= 2 }).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // 50 ms doubling to 2 s: a handful of attempts in these seconds, not one per connect call.
    let (refused, failed) = bus.failures();
    assert_eq!(refused, 0);
    assert!((3..=12).contains(&failed), "{failed} attempts");
    // It keeps trying: a server that comes up there is found.
    let nats = Nats::start_on(&log, port).await;
    connected(&bus, &log).await;
    drop(nats);
}

#[tokio::test]
async fn refused_credentials_are_counted_apart() {
    let log = Log::default();
    let nats = Nats::start_with(&log, &["--user", "u", "--pass", "right"]).await;
    let args = |pass: &str| NatsArgs {
        nats: Some(nats.url()),
        nats_user: Some("u".into()),
        nats_password: Some(pass.into()),
        ..Default::default()
    };
    let wrong = NatsBus::open(&args("wrong").access().unwrap().unwrap(), "wrong").await.unwrap();
    wait_for(WAIT, "refusals counted", &log, || async { wrong.failures().0 >= 2 }).await;
    assert!(!wrong.status().connected);
    let right =
        NatsBus::open_logged(&args("right").access().unwrap().unwrap(), "right").await.expect("opened");
    connected(&right, &log).await;
    assert_eq!(right.failures(), (0, 0));
}
