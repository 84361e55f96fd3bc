//! The fleet's delivery invariants have teeth: each fires on a trace that breaks it, names the
//! client or connection, and stays quiet on the same trace without the break or with a fault
//! that excuses it.

use std::time::Duration;

use clientmq_chat::Fact;
use clientmq_chat::worker::WorkerEvent;
use clientmq_core::{ConnectionId, DisconnectPath, EventKind, RequestOutcome, Topic};
use clientmq_sim::check::{Checker, FleetLimits, Limits};
use clientmq_sim::trace::{Body, Change, Digest, Heard, Proc, Record, Seen, Source};

const LIMITS: Limits = Limits {
    max_connections: 10,
    close_timeout: Duration::from_secs(5),
    request_timeout: Duration::from_secs(15),
    tolerance: Duration::from_millis(20),
};

const FLEET: FleetLimits = FleetLimits {
    gone_within: Duration::from_secs(6),
    grace: Duration::from_secs(30),
    store_within: Duration::ZERO,
    tolerance: Duration::from_millis(20),
    quiet_within: Duration::from_secs(1),
    orphans_within: Duration::from_secs(3),
};

const ROOM: &str = "r1";

fn id(n: u8) -> ConnectionId {
    format!("{}", (b'a' + n) as char).repeat(32).parse().unwrap()
}

fn at(secs: f64) -> Duration {
    Duration::from_secs_f64(secs)
}

fn gw(t: f64, n: u8, kind: EventKind) -> Record {
    Record::gateway(at(t), Proc::new("gw1", 0), None, Some(id(n)), kind)
}

fn worker(t: f64, event: WorkerEvent) -> Record {
    Record::worker(at(t), Proc::new("chat1", 0), event)
}

fn fact(t: f64, fact: Fact) -> Record {
    worker(t, WorkerEvent::Fact(fact))
}

fn client(t: f64, conn: u32, seen: Seen) -> Record {
    Record { at: at(t), source: Source::Client("east-0".into()), body: Body::Seen { conn, seen } }
}

fn subject(topic: Topic) -> String {
    clientmq_bus::contract::Subjects::new("clientmq").room(topic, ROOM)
}

fn published(t: f64, digest: u32) -> Record {
    let body =
        Body::Published { subject: subject(Topic::Room), digest: Digest(digest), to: vec!["gw1.0".into()] };
    Record { at: at(t), source: Source::Bus, body }
}

fn heard(t: f64, conn: u32, digest: u32) -> Record {
    let heard = Heard {
        topic: Topic::Room,
        room: ROOM.into(),
        actor: "s9".into(),
        what: "member-joined".into(),
        digest: Digest(digest),
    };
    client(t, conn, Seen::Event(heard))
}

fn subscribed(t: f64, n: u8) -> Record {
    gw(t, n, EventKind::Subscribed { topic: Topic::Room, room: ROOM.into() })
}

fn unsubscribed(t: f64, n: u8) -> Record {
    gw(t, n, EventKind::Unsubscribed { topic: Topic::Room, room: ROOM.into() })
}

fn answered(t: f64, n: u8, request_type: &str) -> Record {
    let kind = EventKind::Answered {
        request_id: "C2".into(),
        request_type: request_type.into(),
        outcome: RequestOutcome::Ok,
        elapsed: Duration::ZERO,
    };
    gw(t, n, kind)
}

fn opened(t: f64, n: u8, open: usize) -> Record {
    gw(t, n, EventKind::Opened { remote: "10.0.0.1".parse().unwrap(), open })
}

fn tick(t: f64) -> Record {
    Record::sim(at(t), "tick")
}

/// Client east-0 on gw1 (connection a), session s0, joined room r1 at 1.5 s.
fn joined() -> Vec<Record> {
    vec![
        worker(0.1, WorkerEvent::Bus { connected: true }),
        opened(1.0, 0, 1),
        client(1.0, 0, Seen::Connected { gateway: "gw1".into() }),
        fact(1.1, Fact::Bound { conn: id(0), session: "s0".into() }),
        client(1.2, 0, Seen::Session("s0".into())),
        client(1.3, 0, Seen::Asked(Change::Join(ROOM.into()))),
        fact(1.4, Fact::Hears { session: "s0".into(), topic: Topic::Room, room: ROOM.into() }),
        subscribed(1.45, 0),
        answered(1.45, 0, "chat.JoinRoom"),
        client(1.5, 0, Seen::Done(Change::Join(ROOM.into()))),
    ]
}

fn first(records: &[Record]) -> Option<String> {
    let mut checker = Checker::new(LIMITS).with_fleet(FLEET, ["chat1".to_owned()]);
    records.iter().find_map(|r| checker.observe(r).err()).map(|v| v.to_string())
}

fn with(extra: impl IntoIterator<Item = Record>) -> Vec<Record> {
    let mut records = joined();
    records.extend(extra);
    records
}

#[test]
fn an_event_heard_once_by_a_member_is_clean() {
    assert_eq!(first(&with([published(2.0, 7), heard(2.1, 0, 7), tick(20.0)])), None);
}

#[test]
fn an_event_heard_twice_is_caught() {
    let v = first(&with([published(2.0, 7), heard(2.1, 0, 7), heard(2.2, 0, 7)])).expect("caught");
    assert!(
        v.contains("client east-0/0: heard room member-joined #00000007 2 times; the bus carried it 1 times"),
        "{v}"
    );
}

#[test]
fn an_event_a_member_never_hears_is_caught_after_the_delivery_bound() {
    let v = first(&with([published(2.0, 7), tick(4.9)]));
    assert_eq!(v, None, "not yet due");
    let v = first(&with([published(2.0, 7), tick(5.1)])).expect("caught");
    assert!(
        v.contains("client east-0/0 did not hear room #00000007 of room r1 published at 2.000000s"),
        "{v}"
    );
}

#[test]
fn a_fault_on_the_path_or_the_end_of_the_connection_excuses_a_missing_event() {
    let cut = with([Record::sim(at(1.9), "partition east"), published(2.0, 7), tick(20.0)]);
    assert_eq!(first(&cut), None);
    let restarted = with([published(2.0, 7), Record::sim(at(2.5), "bus restarted"), tick(20.0)]);
    assert_eq!(first(&restarted), None);
    let ended = with([published(2.0, 7), client(2.5, 0, Seen::Ended("eof".into())), tick(20.0)]);
    assert_eq!(first(&ended), None);
    let closed =
        with([published(2.0, 7), gw(2.1, 0, EventKind::CloseSent { code: 3335, reason: "x" }), tick(6.0)]);
    assert_eq!(first(&closed), None);
    // A resume whose connection its gateway closes before the client has the answer.
    let resume = |close: bool| {
        let mut r = with([
            opened(3.0, 1, 2),
            client(3.0, 1, Seen::Connected { gateway: "gw1".into() }),
            client(3.0, 1, Seen::Resume("s0".into())),
            fact(3.1, Fact::Unbound { conn: id(0), session: "s0".into() }),
            fact(3.1, Fact::Bound { conn: id(1), session: "s0".into() }),
            unsubscribed(3.12, 0),
            subscribed(3.12, 1),
        ]);
        if close {
            r.push(gw(3.15, 1, EventKind::CloseSent { code: 3335, reason: "x" }));
        }
        r.extend([client(3.2, 1, Seen::Session("s0".into())), published(4.0, 7), tick(7.5)]);
        r
    };
    assert_eq!(first(&resume(true)), None);
    assert!(first(&resume(false)).expect("caught").contains("client east-0/1 did not hear"));
    // A repair does not mend a stream the partition may have cut (the simulated network drops
    // what a partition catches): that connection is owed nothing more, one opened since is.
    let repaired = [Record::sim(at(1.9), "partition east"), Record::sim(at(2.0), "repair east")];
    let cut = with(repaired.clone().into_iter().chain([published(8.0, 7), tick(12.0)]));
    assert_eq!(first(&cut), None);
    let fresh = with(repaired.into_iter().chain([
        opened(3.0, 1, 2),
        client(3.0, 1, Seen::Connected { gateway: "gw1".into() }),
        client(3.0, 1, Seen::Resume("s0".into())),
        fact(3.1, Fact::Unbound { conn: id(0), session: "s0".into() }),
        fact(3.1, Fact::Bound { conn: id(1), session: "s0".into() }),
        unsubscribed(3.12, 0),
        subscribed(3.12, 1),
        client(3.2, 1, Seen::Session("s0".into())),
        published(8.0, 7),
        tick(12.0),
    ]));
    let v = first(&fresh).expect("caught");
    assert!(v.contains("client east-0/1 did not hear"), "{v}");
}

#[test]
fn an_event_of_a_room_the_session_left_is_caught() {
    let left = with([
        client(2.0, 0, Seen::Asked(Change::Leave(ROOM.into()))),
        published(2.1, 8),
        heard(2.15, 0, 8),
        client(2.2, 0, Seen::Done(Change::Leave(ROOM.into()))),
        published(2.3, 9),
        heard(2.4, 0, 9),
    ]);
    let v = first(&left).expect("caught");
    assert!(
        v.contains("heard room member-joined #00000009 of room r1, which its session s0 did not ask to hear"),
        "{v}"
    );
}

#[test]
fn a_reply_that_overtakes_its_subscription_is_caught() {
    let mut early = joined();
    early.retain(|r| !matches!(&r.body, Body::Gateway { kind: EventKind::Subscribed { .. }, .. }));
    early.push(subscribed(1.46, 0));
    let v = first(&early).expect("caught");
    assert!(v.contains("gw1: answered chat.JoinRoom before subscribing it to room r1"), "{v}");
}

/// A conversation subscription decided after the gateway gave up on its request (timed out)
/// lands later, unordered with another worker's answer to the next request (explore seed
/// 500,017,884): that answer may overtake it. Still owed within the quiet bound.
#[test]
fn what_a_timed_out_request_decides_later_may_follow_other_answers_but_not_for_long() {
    let late = with([
        gw(5.0, 0, late_timeout()),
        fact(5.1, conversation_fact()),
        answered(5.2, 0, "chat.SendMessageToRoom"),
    ]);
    assert_eq!(first(&late), None);
    // Without the timeout, the same answer overtakes a subscription it should follow.
    let overtaken = with([fact(5.1, conversation_fact()), answered(5.2, 0, "chat.SendMessageToRoom")]);
    let v = first(&overtaken).expect("caught");
    assert!(v.contains("answered chat.SendMessageToRoom before subscribing it to conversation r1"), "{v}");
    // And never subscribed: the quiet rule's bound.
    let never = with([gw(5.0, 0, late_timeout()), fact(5.1, conversation_fact()), tick(8.0)]);
    let v = first(&never).expect("caught");
    assert!(v.contains("which is not what its session hears"), "{v}");
}

fn conversation_fact() -> Fact {
    Fact::Hears { session: "s0".into(), topic: Topic::Conversation, room: ROOM.into() }
}

fn late_timeout() -> EventKind {
    EventKind::Answered {
        request_id: "C3".into(),
        request_type: "chat.FetchRoomConversation".into(),
        outcome: RequestOutcome::Timeout,
        elapsed: Duration::from_secs(3),
    }
}

#[test]
fn a_connection_left_subscribed_after_a_takeover_is_caught() {
    let takeover = [
        opened(3.0, 1, 2),
        fact(3.1, Fact::Unbound { conn: id(0), session: "s0".into() }),
        fact(3.1, Fact::Bound { conn: id(1), session: "s0".into() }),
        subscribed(3.15, 1),
    ];
    let mut clean = with(takeover.clone());
    clean.extend([unsubscribed(3.15, 0), tick(10.0)]);
    assert_eq!(first(&clean), None);
    let v = first(&with(takeover.into_iter().chain([tick(4.2)]))).expect("caught");
    assert!(
        v.contains(&format!(
            "connection {}: gw1: subscribed to [room r1], which is not what its session hears",
            id(0)
        )),
        "{v}"
    );
}

#[test]
fn an_orphan_left_open_after_its_gateway_came_back_is_caught() {
    let back = [
        worker(10.0, WorkerEvent::GatewayGone { gateway: "gw1.0".into(), connections: 1 }),
        fact(10.0, Fact::Unbound { conn: id(0), session: "s0".into() }),
        worker(12.0, WorkerEvent::GatewayBack { gateway: "gw1.0".into() }),
    ];
    let closed = gw(12.5, 0, EventKind::Disconnected { path: DisconnectPath::Forced, code: 3336, open: 0 });
    assert_eq!(first(&with(back.clone().into_iter().chain([closed, tick(30.0)]))), None);
    // Closed with 3336 by its gateway: done, whether or not the client answers the close.
    let closing = gw(12.5, 0, EventKind::CloseSent { code: 3336, reason: "session-lost" });
    assert_eq!(first(&with(back.clone().into_iter().chain([closing, tick(17.0)]))), None);
    let v = first(&with(back.clone().into_iter().chain([tick(15.1)]))).expect("caught");
    assert!(v.contains("orphaned and still open"), "{v}");
    // The worker that counted it gone died: the next one knows no orphans of it.
    let forgotten = [
        worker(10.0, WorkerEvent::GatewayGone { gateway: "gw1.0".into(), connections: 1 }),
        fact(10.0, Fact::Unbound { conn: id(0), session: "s0".into() }),
        Record::sim(at(10.01), "chat1 restarted"),
        Record::worker(at(30.0), Proc::new("chat1", 1), WorkerEvent::GatewayBack { gateway: "gw1.0".into() }),
        tick(40.0),
    ];
    assert_eq!(first(&with(forgotten)), None);
    // A list lost to a cut is sent again: the bound counts from the repair.
    let cut =
        [Record::sim(at(12.1), "partition-bus gw1"), Record::sim(at(13.0), "repair-bus gw1"), tick(20.0)];
    assert_eq!(first(&with(back.clone().into_iter().chain(cut.clone()))), None);
    let v = first(&with(back.into_iter().chain(cut).chain([tick(21.1)]))).expect("caught");
    assert!(v.contains("orphaned and still open"), "{v}");
}

/// On the store, any worker tells a gateway its orphans, read from the store: a connection whose
/// end is recorded while it is open is owed its close from that record (once the path is calm
/// and some worker is on the bus), whichever worker counted its gateway gone, dead or not.
#[test]
fn an_open_connection_whose_end_the_store_recorded_is_owed_its_close() {
    let first_on_store = |records: &[Record]| {
        let mut checker = Checker::new(LIMITS).with_fleet(FLEET, ["chat1".to_owned()]).with_store();
        records.iter().find_map(|r| checker.observe(r).err()).map(|v| v.to_string())
    };
    let store = |t: f64, event: WorkerEvent| Record::worker(at(t), Proc::new("store", 0), event);
    let recorded = [
        worker(10.0, WorkerEvent::GatewayGone { gateway: "gw1.0".into(), connections: 1 }),
        store(10.1, WorkerEvent::EndRecorded { conn: id(0), orphan_of: Some("gw1.0".into()) }),
        // The worker that counted it gone dies: its successor reads the store.
        Record::sim(at(10.2), "chat1 killed"),
        Record::sim(at(11.0), "chat1 restarted"),
        Record::worker(at(12.0), Proc::new("chat1", 1), WorkerEvent::Bus { connected: true }),
    ];
    let closing = gw(14.5, 0, EventKind::CloseSent { code: 3336, reason: "session-lost" });
    assert_eq!(first_on_store(&with(recorded.clone().into_iter().chain([closing, tick(19.0)]))), None);
    let v = first_on_store(&with(recorded.clone().into_iter().chain([tick(15.1)]))).expect("caught");
    assert!(v.contains("orphaned and still open"), "{v}");
    // With no worker on the bus, nobody can tell it: owed from the first one's return.
    let late = recorded.iter().filter(|r| !matches!(r.body, Body::Worker(_)) || r.at < at(11.0));
    let mut late: Vec<Record> = late.cloned().collect();
    late.push(Record::worker(at(20.0), Proc::new("chat1", 1), WorkerEvent::Bus { connected: true }));
    assert_eq!(first_on_store(&with(late.clone().into_iter().chain([tick(23.0)]))), None);
    let v = first_on_store(&with(late.into_iter().chain([tick(23.1)]))).expect("caught");
    assert!(v.contains("orphaned and still open"), "{v}");
    // A connection its gateway is closing (whose notice the worker recorded) is owed nothing.
    let told = [
        gw(10.0, 0, EventKind::CloseSent { code: 1000, reason: "" }),
        store(10.1, WorkerEvent::EndRecorded { conn: id(0), orphan_of: None }),
        tick(14.9),
    ];
    assert_eq!(first_on_store(&with(told)), None);
}
