//! A drained subscription on a real nats-server hears every message the server sent it: of a
//! queue group of two taking a stream of messages, one drains mid-stream, and between them they
//! take each message once, though the draining client keeps publishing. The stream comes as fast
//! as the publisher can send, far past any worker's request rate: async-nats's own drain, which
//! forgets a subscription once its unsubscribe is written and a wake-up has read what had come,
//! lost 33 and 420 messages in 2 runs of 3 here.

use std::collections::BTreeSet;
use std::time::Duration;

use clientmq_bus::nats::NatsBus;
use clientmq_bus::{Bus, BusMessage, Subscription};
use clientmq_testkit::nats::{Nats, in_place};
use clientmq_testkit::procs::{Log, wait_for};

const MESSAGES: u32 = 40_000;

/// What `sub` takes until its stream ends or it stays quiet for `quiet`; whether it ended.
async fn take(sub: &mut impl Subscription, quiet: Duration) -> (Vec<u32>, bool) {
    let mut taken = Vec::new();
    loop {
        match tokio::time::timeout(quiet, sub.next()).await {
            Ok(Some(msg)) => taken.push(u32::from_be_bytes(msg.payload[..4].try_into().unwrap())),
            Ok(None) => return (taken, true),
            Err(_) => return (taken, false),
        }
    }
}

/// Two subscribers `a` and `b` of `t.work` in queue group `g` on `nats`, each in place at the
/// server, and a publisher.
struct Group {
    a: NatsBus,
    b: NatsBus,
    publisher: NatsBus,
    from_a: <NatsBus as Bus>::Subscription,
    from_b: <NatsBus as Bus>::Subscription,
}

async fn group(nats: &Nats, log: &Log) -> Group {
    let connect = |name: &'static str| {
        let url = nats.url();
        async move { NatsBus::connect(&url, name).await.unwrap() }
    };
    let (a, b, publisher) = (connect("a").await, connect("b").await, connect("publisher").await);
    for bus in [&a, &b, &publisher] {
        wait_for(Duration::from_secs(10), "connected", log, || async { bus.status().connected }).await;
    }
    let from_a = a.subscribe("t.work", Some("g")).await.unwrap();
    let from_b = b.subscribe("t.work", Some("g")).await.unwrap();
    // Each in place: a probe of its own, then the shared subject.
    let mut probe_a = a.subscribe("t.probe.a", None).await.unwrap();
    in_place(&a, &mut probe_a, "t.probe.a").await;
    let mut probe_b = b.subscribe("t.probe.b", None).await.unwrap();
    in_place(&b, &mut probe_b, "t.probe.b").await;
    a.flush().await.unwrap();
    b.flush().await.unwrap();
    Group { a, b, publisher, from_a, from_b }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_queue_subscription_loses_nothing_the_server_sent_it() {
    let log = Log::default();
    let nats = Nats::start(&log).await;
    let Group { a, b: _b, publisher, mut from_a, mut from_b } = group(&nats, &log).await;

    let sending = tokio::spawn(async move {
        // As fast as it goes: far past any worker's request rate.
        for n in 0..MESSAGES {
            publisher.publish(BusMessage::new("t.work", n.to_be_bytes().to_vec())).await.unwrap();
            if n % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
        publisher.flush().await.unwrap();
    });
    let b_taking = tokio::spawn(async move { take(&mut from_b, Duration::from_secs(2)).await.0 });
    // a takes a share, drains while the stream flows, and takes what is still for it.
    let mut heard_a = Vec::new();
    while heard_a.len() < 2_000 {
        let msg = tokio::time::timeout(Duration::from_secs(10), from_a.next()).await.unwrap().unwrap();
        heard_a.push(u32::from_be_bytes(msg.payload[..4].try_into().unwrap()));
    }
    from_a.drain().await;
    // A worker answers while it drains: each publish wakes the client, which then reads what
    // has come so far.
    for _ in 0..20 {
        a.publish(BusMessage::new("t.answers", vec![0])).await.unwrap();
        tokio::task::yield_now().await;
    }
    let (after, ended) = take(&mut from_a, Duration::from_secs(5)).await;
    assert!(ended, "the drained subscription ends");
    heard_a.extend(after);
    sending.await.unwrap();
    let heard_b = b_taking.await.unwrap();

    assert!(heard_b.len() > (MESSAGES as usize) / 4, "the drain sent the rest to b: {}", heard_b.len());
    let all: BTreeSet<u32> = heard_a.iter().chain(&heard_b).copied().collect();
    assert_eq!(heard_a.len() + heard_b.len(), all.len(), "a message taken twice");
    let lost: Vec<u32> = (0..MESSAGES).filter(|n| !all.contains(n)).collect();
    assert!(lost.is_empty(), "{} lost, the first {:?}", lost.len(), &lost[..lost.len().min(10)]);
}

/// A draining subscription keeps its share of a flow whose gaps are shorter than its quiet
/// time, up to its count: it is unsubscribed outright only once quiet, when nothing is likely
/// on its way to it. (Cut at the first gap, it would hand over at once, and a message already
/// on its way would be dropped.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_subscription_keeps_its_share_while_messages_flow() {
    let log = Log::default();
    let nats = Nats::start(&log).await;
    // Both kept: dropped, a bus closes its connection.
    let Group { a: _a, b: _b, publisher, mut from_a, mut from_b } = group(&nats, &log).await;

    from_a.drain().await;
    // 30 messages 20 ms apart, fewer than the drain's margin: each goes to a or b.
    let sending = tokio::spawn(async move {
        for n in 0..30u32 {
            publisher.publish(BusMessage::new("t.work", n.to_be_bytes().to_vec())).await.unwrap();
            publisher.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let b_taking = tokio::spawn(async move { take(&mut from_b, Duration::from_secs(1)).await.0 });
    let (heard_a, ended) = take(&mut from_a, Duration::from_secs(5)).await;
    assert!(ended, "the drained subscription ends once quiet");
    sending.await.unwrap();
    let heard_b = b_taking.await.unwrap();
    let all: BTreeSet<u32> = heard_a.iter().chain(&heard_b).copied().collect();
    assert_eq!(all, (0..30).collect(), "each message taken once: a {heard_a:?}, b {heard_b:?}");
    assert_eq!(heard_a.len() + heard_b.len(), 30);
    // The server spreads a queue group's messages at random: a's share of 30 is 5 or more but
    // for odds of about 1 in 34,000.
    assert!(heard_a.len() >= 5, "a kept its share while they flowed: {heard_a:?}");
}
