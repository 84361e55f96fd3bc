//! The bus backend on the loopback bus, with the test as its one shard: what it publishes for a
//! request and a disconnect, what it hands the shard of what workers send (answers, events,
//! subscription changes, server requests, syncs, orphans), what it drops and counts, and what it
//! does when the bus goes and comes back.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use clientmq_bus::contract::header;
use clientmq_bus::store::loopback::{ModelBus, ModelSubscription};
use clientmq_bus::{Bus as _, BusMessage, Subscription as _};
use clientmq_core::{
    BackendError, BackendRequest, ConnectionId, Input, Reply, Revision, Target, Topic, close,
};
use tokio::sync::mpsc;

use super::BusBackend;
use crate::command::{Command, Routes};
use crate::port::{Answer, Backend, Connections};

const WAIT: Duration = Duration::from_secs(1);

fn conn(c: char) -> ConnectionId {
    c.to_string().repeat(32).parse().unwrap()
}

/// A gateway `g1` of one shard, the test, holding connections `a` and `b`.
struct Rig {
    bus: Arc<ModelBus>,
    backend: BusBackend<ModelBus>,
    shard: mpsc::Receiver<Command>,
    metrics: Arc<crate::metrics::Metrics>,
}

async fn rig() -> Rig {
    rig_on(Arc::new(ModelBus::default())).await
}

async fn rig_on(bus: Arc<ModelBus>) -> Rig {
    let (tx, shard) = mpsc::channel(1024);
    let routes = Routes::default();
    routes.write().unwrap().extend([(conn('a'), 0), (conn('b'), 0)]);
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let gateway = Connections { shards: Arc::new(vec![tx]), routes, metrics: metrics.clone() };
    let backend = BusBackend::new(bus.clone(), "clientmq", "g1", Duration::from_secs(5));
    backend.attach(gateway);
    // Its inbox subscribed.
    tokio::time::sleep(Duration::from_millis(10)).await;
    Rig { bus, backend, shard, metrics }
}

impl Rig {
    /// The next command to the shard, `Settled` answered on the way.
    async fn next(&mut self) -> Command {
        loop {
            match tokio::time::timeout(WAIT, self.shard.recv()).await.expect("a command in time").unwrap() {
                Command::Settled(done) => {
                    let _ = done.send(());
                }
                cmd => return cmd,
            }
        }
    }

    async fn input(&mut self) -> Input {
        match self.next().await {
            Command::Input(input) => input,
            _ => panic!("not an input"),
        }
    }

    async fn nothing(&mut self) {
        assert!(tokio::time::timeout(Duration::from_millis(100), self.shard.recv()).await.is_err());
    }

    fn dropped(&self, reason: &str) -> u64 {
        let series = format!("clientmq_bus_dropped_total{{reason=\"{reason}\"}} ");
        let text = self.metrics.render(&[]);
        text.lines().find_map(|l| l.strip_prefix(series.as_str())).map_or(0, |v| v.parse().unwrap())
    }

    fn answered(&self, reason: &str) -> u64 {
        let series = format!("clientmq_bus_answers_total{{reason=\"{reason}\"}} ");
        let text = self.metrics.render(&[]);
        text.lines().find_map(|l| l.strip_prefix(series.as_str())).map_or(0, |v| v.parse().unwrap())
    }

    async fn sub(&self, subject: &str) -> ModelSubscription {
        self.bus.subscribe(subject, None).await.unwrap()
    }

    /// A message from a worker to this gateway's `kind` subject.
    async fn to_gateway(&self, kind: &str, msg: BusMessage) {
        let msg = BusMessage { subject: format!("clientmq.gw.g1.{kind}"), ..msg };
        self.bus.publish(msg).await.unwrap();
    }
}

fn request(token: u64, ty: &str) -> BackendRequest {
    BackendRequest {
        token,
        conn: conn('a'),
        session_id: Some("s1".into()),
        remote: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)),
        request_type: ty.into(),
        payload: b"q".to_vec(),
        claims: None,
    }
}

async fn next(sub: &mut ModelSubscription) -> BusMessage {
    tokio::time::timeout(WAIT, sub.next()).await.expect("a message in time").unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_request_goes_out_with_its_headers_and_its_answer_comes_back_to_its_shard() {
    let mut r = rig().await;
    let mut worker = r.sub("clientmq.req.chat.Ping").await;
    assert!(r.backend.ready());
    assert!(matches!(r.backend.request(request(7, "chat.Ping")), Answer::Later));
    let asked = next(&mut worker).await;
    assert_eq!(asked.payload, b"q");
    let a = conn('a').to_string();
    let headers = [
        (header::GATEWAY, "g1"),
        (header::CONNECTION, a.as_str()),
        (header::REMOTE, "10.0.0.7"),
        (header::TIMEOUT_MS, "5000"),
        (header::SESSION, "s1"),
    ];
    for (name, value) in headers {
        assert_eq!(asked.header(name), Some(value), "{name}");
    }
    let reply =
        BusMessage::new(asked.reply.clone().unwrap(), b"r".to_vec()).with(header::TYPE, "chat.PingResponse");
    r.bus.publish(reply.clone()).await.unwrap();
    let Input::BackendReply { token, result } = r.input().await else { panic!("an answer") };
    let pong = Reply { reply_type: "chat.PingResponse".into(), payload: b"r".to_vec() };
    assert_eq!((token, result), (7, Ok(pong)));
    // A second answer to the same request is not its (the first was taken).
    r.bus.publish(reply).await.unwrap();
    r.nothing().await;

    // An answer of a type no message has: the request fails, and it is counted.
    r.backend.request(request(8, "chat.Ping"));
    let asked = next(&mut worker).await;
    let bad = BusMessage::new(asked.reply.unwrap(), Vec::new()).with(header::TYPE, "not a type");
    r.bus.publish(bad).await.unwrap();
    let Input::BackendReply { token: 8, result: Err(BackendError::Failed(_)) } = r.input().await else {
        panic!("a failure")
    };
    assert_eq!(r.dropped("bad-type"), 1);

    // Nobody takes it: no worker, counted.
    r.backend.request(request(9, "chat.Nobody"));
    let Input::BackendReply { token: 9, result: Err(BackendError::NoWorker) } = r.input().await else {
        panic!("no worker")
    };
    assert_eq!(r.answered("no-worker"), 1);
    // A type that is no subject token: refused here as malformed, counted.
    r.backend.request(request(10, "chat.Bad Type"));
    let Input::BackendReply { token: 10, result: Ok(reply) } = r.input().await else { panic!("malformed") };
    assert_eq!(reply.reply_type, "mq.Error");
    assert_eq!(r.answered("malformed"), 1);
}

#[tokio::test(start_paused = true)]
async fn without_the_bus_requests_fail_at_once_and_a_disconnect_notice_is_counted_dropped() {
    let mut r = rig().await;
    let mut notices = r.sub("clientmq.disconnected").await;
    let event = clientmq_core::proto::pcast::ConnectionDisconnected {
        connection_id: conn('a').to_string(),
        ..Default::default()
    };
    r.backend.disconnected(event.clone());
    let notice = next(&mut notices).await;
    assert_eq!(notice.header(header::GATEWAY), Some("g1"));
    assert_eq!(notice.header(header::CONNECTION), Some(conn('a').to_string().as_str()));
    assert_eq!(r.backend.dropped_notices(), 0);

    // A request in flight when the bus goes: failed at once.
    let mut worker = r.sub("clientmq.req.chat.Ping").await;
    r.backend.request(request(1, "chat.Ping"));
    next(&mut worker).await;
    r.bus.set_connected(false);
    let Input::BackendReply { token: 1, result: Err(BackendError::Unavailable) } = r.input().await else {
        panic!("unavailable")
    };
    assert!(!r.backend.ready());
    r.backend.request(request(2, "chat.Ping"));
    let Input::BackendReply { token: 2, result: Err(BackendError::Unavailable) } = r.input().await else {
        panic!("unavailable")
    };
    assert_eq!(r.answered("unavailable"), 2);
    r.backend.disconnected(event);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(r.backend.dropped_notices(), 1);
}

#[tokio::test(start_paused = true)]
async fn room_events_reach_the_shard_while_it_has_interest() {
    let mut r = rig().await;
    r.backend.interest(0, Topic::Room, "r1", true);
    r.backend.interest(0, Topic::Conversation, "r1", true);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let event = |subject: &str| BusMessage::new(subject, b"e".to_vec()).with(header::TYPE, "chat.RoomEvent");
    r.bus.publish(event("clientmq.room.r1")).await.unwrap();
    let Input::Deliver { target, event_type, payload } = r.input().await else { panic!("a delivery") };
    assert_eq!(
        (target, event_type.as_str(), payload),
        (Target::Room("r1".into()), "chat.RoomEvent", b"e".to_vec())
    );
    r.bus.publish(event("clientmq.conv.r1")).await.unwrap();
    let Input::Deliver { target, .. } = r.input().await else { panic!("a delivery") };
    assert_eq!(target, Target::Conversation("r1".into()));
    // Without a type: dropped, counted.
    r.bus.publish(BusMessage::new("clientmq.room.r1", Vec::new())).await.unwrap();
    r.nothing().await;
    assert_eq!(r.dropped("no-type"), 1);
    // Interest gone: nothing more.
    r.backend.interest(0, Topic::Room, "r1", false);
    tokio::time::sleep(Duration::from_millis(10)).await;
    r.bus.publish(event("clientmq.room.r1")).await.unwrap();
    r.nothing().await;
}

#[tokio::test(start_paused = true)]
async fn what_a_worker_sends_one_connection_reaches_its_shard_or_is_dropped_by_reason() {
    let mut r = rig().await;
    let to_a = |msg: BusMessage| msg.with(header::CONNECTION, conn('a').to_string());
    r.to_gateway("event", to_a(BusMessage::new("", b"x".to_vec()).with(header::TYPE, "chat.Thing"))).await;
    let Input::Deliver { target, .. } = r.input().await else { panic!("a delivery") };
    assert_eq!(target, Target::Connection(conn('a')));
    let stranger = BusMessage::new("", Vec::new()).with(header::TYPE, "chat.Thing");
    r.to_gateway("event", stranger.clone().with(header::CONNECTION, conn('z').to_string())).await;
    r.to_gateway("event", stranger.clone()).await;
    r.nothing().await;
    assert_eq!((r.dropped("unknown-connection"), r.dropped("connection-header")), (1, 1));

    // A subscription change, ordered and acknowledged.
    let mut acks = r.sub("t.ack").await;
    let change = to_a(BusMessage::new("", Vec::new()))
        .with(header::SUBSCRIBE, "room r1")
        .with(header::UNSUBSCRIBE, "conversation r2")
        .with(header::REVISION, "4")
        .with(header::BINDING, "2")
        .reply_to("t.ack");
    r.to_gateway("subscription", change).await;
    let at = Some(Revision { binding: Some(2), room: 4 });
    for (topic, room, subscribe) in [(Topic::Room, "r1", true), (Topic::Conversation, "r2", false)] {
        let Input::Subscription { conn: c, topic: t, room: rm, subscribe: s, revision } = r.input().await
        else {
            panic!("a subscription")
        };
        assert_eq!((c, t, rm.as_str(), s, revision), (conn('a'), topic, room, subscribe, at));
    }
    // Acknowledged once the shard says the change is applied.
    let Some(Command::Settled(done)) = r.shard.recv().await else { panic!("settled asked for") };
    assert!(tokio::time::timeout(Duration::from_millis(100), acks.next()).await.is_err(), "not before");
    let _ = done.send(());
    assert!(next(&mut acks).await.payload.is_empty(), "acknowledged");
    // A binding without a revision, and a value that is no topic: dropped as bad headers.
    r.to_gateway("subscription", to_a(BusMessage::new("", Vec::new())).with(header::BINDING, "2")).await;
    r.to_gateway("subscription", to_a(BusMessage::new("", Vec::new())).with(header::SUBSCRIBE, "hall r1"))
        .await;
    r.nothing().await;
    assert_eq!(r.dropped("bad-header"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_server_request_is_handed_to_the_shard_and_its_answer_goes_back() {
    let mut r = rig().await;
    let mut answers = r.sub("t.answer").await;
    let ask = BusMessage::new("", b"p".to_vec())
        .with(header::CONNECTION, conn('a').to_string())
        .with(header::TYPE, "pcast.Ask")
        .reply_to("t.answer");
    r.to_gateway("request", ask.clone()).await;
    let Command::ServerRequest { conn: c, request_type, payload, reply } = r.next().await else {
        panic!("a server request")
    };
    assert_eq!((c, request_type.as_str(), payload), (conn('a'), "pcast.Ask", b"p".to_vec()));
    let _ = reply.send(Ok(Reply { reply_type: "pcast.AskResponse".into(), payload: b"a".to_vec() }));
    let answered = next(&mut answers).await;
    assert_eq!(
        (answered.header(header::TYPE), answered.payload.as_slice()),
        (Some("pcast.AskResponse"), &b"a"[..])
    );
    // For a connection it does not hold, and without a type: refused, the worker told why.
    r.to_gateway(
        "request",
        BusMessage { headers: Vec::new(), ..ask.clone() }.with(header::TYPE, "pcast.Ask"),
    )
    .await;
    assert_eq!(next(&mut answers).await.header(header::ERROR), Some("not-connected"));
    let untyped =
        BusMessage::new("", Vec::new()).with(header::CONNECTION, conn('a').to_string()).reply_to("t.answer");
    r.to_gateway("request", untyped).await;
    assert_eq!(next(&mut answers).await.header(header::ERROR), Some("malformed"));
}

#[tokio::test(start_paused = true)]
async fn a_sync_names_what_the_gateway_lost_and_orphans_are_closed() {
    let mut r = rig().await;
    let mut answers = r.sub("t.list").await;
    let list = |ids: &[ConnectionId]| clientmq_bus::contract::ids_payload(ids.iter());
    r.to_gateway("sync", BusMessage::new("", list(&[conn('a'), conn('z')])).reply_to("t.list")).await;
    let lost = clientmq_bus::contract::parse_ids(&next(&mut answers).await.payload);
    assert_eq!(lost, [conn('z')]);
    r.to_gateway("orphans", BusMessage::new("", list(&[conn('b')])).reply_to("t.list")).await;
    let Input::Close { conn: c, close: why } = r.input().await else { panic!("a close") };
    assert_eq!((c, why), (conn('b'), close::SESSION_LOST));
    assert!(next(&mut answers).await.payload.is_empty());
    // The most ids a list holds is taken (none of these is the gateway's: all lost); one more
    // is too long, and what is not ids is malformed: answered so, counted.
    let most = clientmq_bus::contract::IDS_PER_MESSAGE;
    let many: Vec<ConnectionId> = (0..=most).map(|n| format!("{n:032}").parse().unwrap()).collect();
    r.to_gateway("sync", BusMessage::new("", list(&many[..most])).reply_to("t.list")).await;
    assert_eq!(clientmq_bus::contract::parse_ids(&next(&mut answers).await.payload).len(), most);
    r.to_gateway("sync", BusMessage::new("", list(&many)).reply_to("t.list")).await;
    assert_eq!(next(&mut answers).await.header(header::ERROR), Some("too-many-ids"));
    r.to_gateway("sync", BusMessage::new("", b"not an id".to_vec()).reply_to("t.list")).await;
    assert_eq!(next(&mut answers).await.header(header::ERROR), Some("malformed"));
    assert_eq!((r.dropped("oversized-list"), r.dropped("bad-list")), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn the_gateway_announces_itself_and_back_on_the_bus_asks_to_be_told_again() {
    let mut r = rig().await;
    let mut alive = r.sub("clientmq.gateway.g1.alive").await;
    let first = next(&mut alive).await;
    assert_eq!(
        (first.header(header::GATEWAY), first.header(header::CONNECTIONS), first.header(header::BUS_EPOCH)),
        (Some("g1"), Some("2"), Some("1"))
    );
    let mut lists = r.sub("clientmq.resubscribe").await;
    r.bus.set_connected(false);
    r.bus.set_connected(true);
    // Its connections' subscriptions are forgotten, then a worker is asked to tell them again.
    let Command::ForgetSubscriptions(done) = r.next().await else { panic!("forget") };
    let heard = vec![(Topic::Room, "r1".to_owned(), None)];
    let forgotten = clientmq_core::Forgotten { conn: conn('a'), session: "s1".into(), subscriptions: heard };
    let _ = done.send(vec![forgotten]);
    let list = next(&mut lists).await;
    assert_eq!(
        clientmq_bus::contract::parse_sessions(&list.payload),
        Some(vec![(conn('a'), "s1".to_owned())])
    );
    assert_eq!(next(&mut alive).await.header(header::BUS_EPOCH), Some("2"));
    // Told: nothing restored by the gateway itself, and nothing asked again at the next
    // announcements (one reconnection, one list).
    r.bus.publish(BusMessage::new(list.reply.unwrap(), Vec::new())).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    r.nothing().await;

    // Again, with nobody to ask: the connections get back what they had.
    r.bus.set_connected(false);
    r.bus.set_connected(true);
    let Command::ForgetSubscriptions(done) = r.next().await else { panic!("forget") };
    // Each at the revision it was forgotten at, so a change applied since stands.
    let at = Some(clientmq_core::Revision { binding: Some(2), room: 7 });
    let heard = vec![(Topic::Room, "r1".to_owned(), at), (Topic::Conversation, "r2".to_owned(), None)];
    let _ = done.send(vec![clientmq_core::Forgotten {
        conn: conn('a'),
        session: "s1".into(),
        subscriptions: heard,
    }]);
    drop(lists);
    let Input::Subscription { conn: c, topic: Topic::Room, room, subscribe: true, revision, .. } =
        r.input().await
    else {
        panic!("restored")
    };
    assert_eq!((c, room.as_str(), revision), (conn('a'), "r1", at));
    let Input::Subscription { room, topic: Topic::Conversation, subscribe: true, revision: None, .. } =
        r.input().await
    else {
        panic!("restored")
    };
    assert_eq!(room, "r2");
}

/// A request waits for its answer a second past the gateway's own timeout (the shard gives up
/// at the timeout; a reply in that second is still its, to drop), and is forgotten after, so
/// an unanswered request holds nothing for long: a reply later still is no one's.
#[tokio::test(start_paused = true)]
async fn an_unanswered_request_is_forgotten_a_second_after_its_timeout() {
    let mut r = rig().await;
    let mut worker = r.sub("clientmq.req.chat.Ping").await;
    r.backend.request(request(7, "chat.Ping"));
    let asked = next(&mut worker).await;
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let reply = |asked: &BusMessage| {
        BusMessage::new(asked.reply.clone().unwrap(), b"r".to_vec()).with(header::TYPE, "chat.PingResponse")
    };
    r.bus.publish(reply(&asked)).await.unwrap();
    let Input::BackendReply { token: 7, result: Ok(_) } = r.input().await else { panic!("still its") };

    r.backend.request(request(8, "chat.Ping"));
    let asked = next(&mut worker).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    r.bus.publish(reply(&asked)).await.unwrap();
    r.nothing().await;
}

/// The bus's first connection (epoch 1) is no reconnection: nothing was lost, nothing to
/// forget or have told again.
#[tokio::test(start_paused = true)]
async fn the_first_connection_to_the_bus_asks_nothing_again() {
    let mut r = rig_on(Arc::new(ModelBus::offline())).await;
    let mut alive = r.sub("clientmq.gateway.g1.alive").await;
    r.bus.set_connected(true);
    assert_eq!(next(&mut alive).await.header(header::BUS_EPOCH), Some("1"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    r.nothing().await;
}

/// A resubscribe list refused by a worker (`Clientmq-Error`) or unanswered is sent again, and
/// meanwhile the connections get back what they had, once; a worker that then tells them ends
/// it.
#[tokio::test(start_paused = true)]
async fn a_resubscribe_list_refused_or_unanswered_is_sent_again_and_restores_meanwhile() {
    let mut r = rig().await;
    let mut lists = r.sub("clientmq.resubscribe").await;
    r.bus.set_connected(false);
    r.bus.set_connected(true);
    let Command::ForgetSubscriptions(done) = r.next().await else { panic!("forget") };
    let heard = vec![(Topic::Room, "r1".to_owned(), None)];
    let _ = done.send(vec![clientmq_core::Forgotten {
        conn: conn('a'),
        session: "s1".into(),
        subscriptions: heard,
    }]);
    let refused = next(&mut lists).await;
    let refusal = BusMessage::new(refused.reply.unwrap(), Vec::new()).with(header::ERROR, "malformed");
    r.bus.publish(refusal).await.unwrap();
    let Input::Subscription { conn: c, room, subscribe: true, .. } = r.input().await else {
        panic!("restored")
    };
    assert_eq!((c, room.as_str()), (conn('a'), "r1"));
    // Not answered within its wait: sent again, and nothing restored twice.
    let unanswered = next(&mut lists).await;
    assert_eq!(unanswered.payload, refused.payload);
    let told = tokio::time::timeout(Duration::from_secs(3), lists.next()).await.unwrap().unwrap();
    r.bus.publish(BusMessage::new(told.reply.unwrap(), Vec::new())).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    r.nothing().await;
    assert!(
        tokio::time::timeout(Duration::from_millis(100), lists.next()).await.is_err(),
        "told: no more lists"
    );
}

/// An acknowledgement waits for the server's answer to its flush apart from the ordered writer:
/// the interest other connections bring meanwhile reaches the server without waiting behind it.
#[tokio::test(start_paused = true)]
async fn an_acknowledgement_waiting_on_the_server_holds_back_no_other_interest() {
    let mut r = rig().await;
    let mut acks = r.sub("t.ack").await;
    r.bus.hold_flushes(true);
    let change = BusMessage::new("", Vec::new())
        .with(header::CONNECTION, conn('a').to_string())
        .with(header::SUBSCRIBE, "room r1")
        .reply_to("t.ack");
    r.to_gateway("subscription", change).await;
    let Input::Subscription { .. } = r.input().await else { panic!("a subscription") };
    // As the shard reports applying it: the gateway now hears a room it did not.
    r.backend.interest(0, Topic::Room, "r1", true);
    let Some(Command::Settled(done)) = r.shard.recv().await else { panic!("settled asked for") };
    let _ = done.send(());
    // The acknowledgement's flush under way first, then another connection's interest.
    tokio::time::sleep(Duration::from_millis(10)).await;
    r.backend.interest(1, Topic::Room, "r2", true);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let event = BusMessage::new("clientmq.room.r2", b"e".to_vec()).with(header::TYPE, "chat.RoomEvent");
    r.bus.publish(event).await.unwrap();
    let Input::Deliver { target, .. } = r.input().await else { panic!("a delivery") };
    assert_eq!(target, Target::Room("r2".into()), "heard while the flush waits");
    assert!(tokio::time::timeout(Duration::from_millis(100), acks.next()).await.is_err(), "not before");
    r.bus.hold_flushes(false);
    assert!(next(&mut acks).await.payload.is_empty(), "acknowledged once the server answered");
}

/// A subscription change for a connection this gateway does not hold is dropped, counted, and
/// still answered when asked to be: nothing here hears it, so it is as good as applied.
#[tokio::test(start_paused = true)]
async fn a_change_for_a_connection_gone_is_acknowledged() {
    let mut r = rig().await;
    let mut acks = r.sub("t.ack").await;
    let change = BusMessage::new("", Vec::new())
        .with(header::CONNECTION, conn('z').to_string())
        .with(header::UNSUBSCRIBE, "room r1")
        .reply_to("t.ack");
    r.to_gateway("subscription", change.clone()).await;
    assert!(next(&mut acks).await.payload.is_empty(), "acknowledged");
    r.nothing().await;
    assert_eq!(r.dropped("unknown-connection"), 1);
    // Without a reply subject: dropped, nothing answered.
    r.to_gateway("subscription", BusMessage { reply: None, ..change }).await;
    assert!(tokio::time::timeout(Duration::from_millis(100), acks.next()).await.is_err());
    assert_eq!(r.dropped("unknown-connection"), 2);
}

/// An acknowledgement waits for its shard apart from the gateway's inbox: a shard slow to
/// settle holds back no other message to the gateway meanwhile.
#[tokio::test(start_paused = true)]
async fn a_shard_slow_to_settle_holds_back_no_other_message() {
    let mut r = rig().await;
    let mut acks = r.sub("t.ack").await;
    let to_a = |msg: BusMessage| msg.with(header::CONNECTION, conn('a').to_string());
    let change = to_a(BusMessage::new("", Vec::new())).with(header::SUBSCRIBE, "room r1").reply_to("t.ack");
    r.to_gateway("subscription", change).await;
    let Input::Subscription { .. } = r.input().await else { panic!("a subscription") };
    let Some(Command::Settled(done)) = r.shard.recv().await else { panic!("settled asked for") };

    r.to_gateway("event", to_a(BusMessage::new("", b"x".to_vec()).with(header::TYPE, "chat.Thing"))).await;
    let Input::Deliver { target, .. } = r.input().await else { panic!("a delivery") };
    assert_eq!(target, Target::Connection(conn('a')), "delivered while the shard has not settled");
    assert!(tokio::time::timeout(Duration::from_millis(100), acks.next()).await.is_err(), "not before");
    let _ = done.send(());
    assert!(next(&mut acks).await.payload.is_empty(), "acknowledged once settled");
}

/// An acknowledgement with no room subscription sent since the last flush's answer confirmed
/// them all is answered at once, without a round trip to the server; one with a room newly
/// subscribed waits for the server's answer.
#[tokio::test(start_paused = true)]
async fn an_acknowledgement_waits_for_the_server_only_after_a_new_room() {
    let mut r = rig().await;
    let mut acks = r.sub("t.ack").await;
    r.bus.hold_flushes(true);
    let to_a = |msg: BusMessage| msg.with(header::CONNECTION, conn('a').to_string());
    let change =
        |room: &str| to_a(BusMessage::new("", Vec::new())).with(header::SUBSCRIBE, format!("room {room}"));
    // Nothing new at the server: answered while flushes are held.
    r.to_gateway("subscription", change("r1").reply_to("t.ack")).await;
    let Input::Subscription { .. } = r.input().await else { panic!("a subscription") };
    let Some(Command::Settled(done)) = r.shard.recv().await else { panic!("settled asked for") };
    let _ = done.send(());
    assert!(next(&mut acks).await.payload.is_empty(), "acknowledged without a flush");
    // A room the gateway did not hear: answered once the server confirms it.
    r.to_gateway("subscription", change("r2").reply_to("t.ack")).await;
    let Input::Subscription { .. } = r.input().await else { panic!("a subscription") };
    r.backend.interest(0, Topic::Room, "r2", true);
    let Some(Command::Settled(done)) = r.shard.recv().await else { panic!("settled asked for") };
    let _ = done.send(());
    assert!(tokio::time::timeout(Duration::from_millis(100), acks.next()).await.is_err(), "not before");
    r.bus.hold_flushes(false);
    assert!(next(&mut acks).await.payload.is_empty(), "acknowledged once the server answered");
}
