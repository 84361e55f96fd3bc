//! The bus (docs/nats.md): a gateway whose requests go to workers over a real nats-server, with
//! the chat worker in this process. What the gateway answers itself when a request cannot go to
//! a worker: a type that is not a subject, nobody serving the type, the bus away. And the bus as
//! an input: what a worker may send a gateway wrong.

use std::sync::Arc;
use std::time::Duration;

use clientmq_bus::contract::{DEFAULT_PREFIX, Subjects, header};
use clientmq_bus::nats::{NatsBus, NatsSubscription};
use clientmq_bus::{Bus, BusMessage, Subscription};
use clientmq_chat::ChatConfig;
use clientmq_chat::worker::{self, WorkerConfig};
use clientmq_core::proto::mq;
use clientmq_server::BusBackend;

use crate::harness::{Gw, Raw, WAIT, config, error_reason, http, start};
use clientmq_testkit::nats::{Nats, in_place};
use clientmq_testkit::procs::Log;

const GATEWAY: &str = "gw-badinputs";

/// Calls `mq.PingPong` (the chat worker echoes it) on fresh connections until one is answered.
async fn until_served(addr: std::net::SocketAddr, log: &Log) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut raw = Raw::upgrade(tokio::net::TcpStream::connect(addr).await.unwrap(), &[]).await;
        let answer = raw.call("mq.PingPong", vec![8, 1]).await;
        raw.close_politely().await;
        if answer.r#type == "mq.PingPongResponse" {
            return;
        }
        let logged = log.lock().unwrap().join("\n");
        assert!(tokio::time::Instant::now() < deadline, "never served: {answer:?}\n{logged}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_no_worker_can_take_are_answered_malformed_no_worker_or_unavailable() {
    clientmq_testkit::deadline::bounded(async {
        let log = Log::default();
        let mut nats = Nats::start(&log).await;
        let worker_bus = Arc::new(NatsBus::connect(&nats.url(), "chat-badinputs").await.unwrap());
        let worker_config = WorkerConfig {
            prefix: DEFAULT_PREFIX.into(),
            chat: ChatConfig::default(),
            seed: Some(5),
            name: "chat-badinputs".into(),
            observer: None,
            metrics: None,
        };
        let (stop_worker, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(worker::run(worker_bus, worker_config, async {
            let _ = stopped.await;
        }));
        let mut c = config();
        c.gateway.route_key = GATEWAY.into();
        let bus = Arc::new(NatsBus::connect(&nats.url(), GATEWAY).await.unwrap());
        let backend = Arc::new(BusBackend::new(bus, DEFAULT_PREFIX, GATEWAY, c.gateway.request_timeout));
        let gw = start(c, backend).await;
        until_served(gw.addr, &log).await;

        let mut raw = gw.raw().await;
        // Not a subject: wildcards, spaces, empty tokens, other characters.
        let not_subjects = ["x.*", "x.>", "a b", "a..b", ".a", "a.", "é.x", "a\u{0}b"];
        for ty in not_subjects {
            let answer = raw.call(ty, vec![1]).await;
            assert_eq!(error_reason(&answer).as_deref(), Some("malformed"), "{ty:?}");
        }
        // Nobody serves it. (The failed ones before were the first calls of `until_served`.)
        let failed = r#"clientmq_requests_total{type="other",outcome="failed"}"#;
        let failed_before = gw.metric(failed);
        let answer = raw.call("nobody.Serves", vec![1]).await;
        assert_eq!(error_reason(&answer).as_deref(), Some("no-worker"));
        gw.expect(failed, failed_before + 1.0).await;
        assert!(gw.metric(r#"clientmq_bus_answers_total{reason="no-worker"}"#) >= 1.0);
        assert!(gw.metric(r#"clientmq_bus_answers_total{reason="malformed"}"#) >= 8.0);
        assert!(gw.metric("clientmq_bus_announcements_total") >= 1.0);
        assert_eq!(gw.metric("clientmq_bus_connected"), 1.0);
        assert_eq!(gw.metric("clientmq_bus_reconnects_total"), 0.0);

        // The bus goes away: requests fail at once, and /readyz says so.
        nats.stop().await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while http(gw.addr, b"GET /readyz HTTP/1.1\r\n\r\n").await.0 != 503 {
            assert!(tokio::time::Instant::now() < deadline, "/readyz still 200 with the bus down");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = tokio::time::Instant::now();
        let answer = raw.call("chat.GetRoomInfo", vec![]).await;
        assert_eq!(error_reason(&answer).as_deref(), Some("unavailable"));
        assert!(started.elapsed() < Duration::from_millis(500), "at once: {:?}", started.elapsed());
        gw.expect(r#"clientmq_requests_total{type="chat.GetRoomInfo",outcome="failed"}"#, 1.0).await;
        assert!(gw.metric(r#"clientmq_bus_answers_total{reason="unavailable"}"#) >= 1.0);
        gw.expect("clientmq_bus_connected", 0.0).await;

        // It comes back: so does service, and the count is exact throughout.
        nats.restart().await;
        until_served(gw.addr, &log).await;
        gw.expect("clientmq_bus_connected", 1.0).await;
        gw.expect("clientmq_bus_reconnects_total", 1.0).await;
        gw.still_serves(1).await;
        raw.close_politely().await;
        gw.settles(0).await;

        // Row 81a: a resubscribe list the worker cannot read is answered malformed; one it
        // can, naming connections it does not know, is answered empty.
        let probe = NatsBus::connect(&nats.url(), "probe-badinputs").await.unwrap();
        let mut inbox = probe.subscribe(&format!("{DEFAULT_PREFIX}.gw.probe.>"), None).await.unwrap();
        in_place(&probe, &mut inbox, &format!("{DEFAULT_PREFIX}.gw.probe.ready")).await;
        let list = |payload: &[u8], n: u32| {
            BusMessage::new(format!("{DEFAULT_PREFIX}.resubscribe"), payload.to_vec())
                .reply_to(format!("{DEFAULT_PREFIX}.gw.probe.resubscribed.{n}"))
                .with(header::GATEWAY, "probe")
        };
        probe.publish(list(b"not an id s1\n", 1)).await.unwrap();
        let answer = tokio::time::timeout(WAIT, inbox.next()).await.unwrap().unwrap();
        assert_eq!(answer.header(header::ERROR), Some("malformed"));
        probe.publish(list(format!("{} s1\n", "a".repeat(32)).as_bytes(), 2)).await.unwrap();
        let answer = tokio::time::timeout(WAIT, inbox.next()).await.unwrap().unwrap();
        assert_eq!((answer.header(header::ERROR), answer.payload.len()), (None, 0));
        let _ = stop_worker.send(());
        let _ = tokio::time::timeout(WAIT, worker).await;
    })
    .await
}

/// A nats-server and a gateway on it named `route_key`, served by the test itself as a worker:
/// the worker's bus, subscribed to every request and to its inbox `P.wk.<inbox>.>`, both in
/// place at the server before the gateway starts.
struct Played {
    _nats: Nats,
    gw: Gw<BusBackend<NatsBus>>,
    worker: Arc<NatsBus>,
    requests: NatsSubscription,
    inbox: NatsSubscription,
}

async fn played_worker(route_key: &str, inbox: &str) -> Played {
    let nats = Nats::start(&Log::default()).await;
    let worker = Arc::new(NatsBus::connect(&nats.url(), &format!("wk-{inbox}")).await.unwrap());
    let mut requests = worker.subscribe(&format!("{DEFAULT_PREFIX}.req.>"), None).await.unwrap();
    let mut answers = worker.subscribe(&format!("{DEFAULT_PREFIX}.wk.{inbox}.>"), None).await.unwrap();
    in_place(&*worker, &mut requests, &format!("{DEFAULT_PREFIX}.req.x.Probe")).await;
    in_place(&*worker, &mut answers, &format!("{DEFAULT_PREFIX}.wk.{inbox}.probe")).await;
    let mut c = config();
    c.gateway.route_key = route_key.into();
    let bus = Arc::new(NatsBus::connect(&nats.url(), route_key).await.unwrap());
    let backend = Arc::new(BusBackend::new(bus, DEFAULT_PREFIX, route_key, c.gateway.request_timeout));
    let gw = start(c, backend).await;
    gw.expect("clientmq_bus_connected", 1.0).await;
    Played { _nats: nats, gw, worker, requests, inbox: answers }
}

const PROBED: &str = "gw-badbus";

/// What a worker on the bus may send a gateway wrong (rows 76 to 81): each is dropped and
/// counted by reason, a request or a list gets an error answer, nothing reaches a client, and
/// what is well formed around it still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_worker_sends_wrong_is_dropped_counted_and_answered() {
    use clientmq_bus::contract::ids_payload;
    use clientmq_core::ConnectionId;

    clientmq_testkit::deadline::bounded(async {
        let subjects = Subjects::new(DEFAULT_PREFIX);
        // The test is the worker: it answers `x.Probe` (and echoes `mq.PingPong`), answers
        // `x.BadReply` with a type that is not one, and hands over each request's connection id.
        let Played { _nats, gw, worker, mut requests, inbox: mut answers } =
            played_worker(PROBED, "test").await;
        let (conns, mut conn_of) = tokio::sync::mpsc::unbounded_channel();
        let replier = worker.clone();
        tokio::spawn(async move {
            while let Some(msg) = requests.next().await {
                let ty = match msg.subject.rsplit_once(".req.").map_or("", |(_, ty)| ty) {
                    "x.BadReply" => "bad type",
                    "mq.PingPong" => "mq.PingPongResponse",
                    _ => "x.ProbeResponse",
                };
                let reply =
                    BusMessage::new(msg.reply.clone().unwrap(), msg.payload.clone()).with(header::TYPE, ty);
                let _ = conns.send(msg.header(header::CONNECTION).unwrap().to_owned());
                replier.publish(reply).await.unwrap();
            }
        });
        let mut raw = gw.raw().await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while raw.call("x.Probe", vec![1]).await.r#type != "x.ProbeResponse" {
            assert!(tokio::time::Instant::now() < deadline, "the probe is never served");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let conn = conn_of.recv().await.unwrap();
        let to = |what| subjects.gateway(PROBED, what);
        let dropped = |reason: &str| format!("clientmq_bus_dropped_total{{reason=\"{reason}\"}}");
        let send = |msg: BusMessage| {
            let worker = worker.clone();
            async move { worker.publish(msg).await.unwrap() }
        };
        use clientmq_bus::contract::ToGateway::{Event, Orphans, Request, Subscription as Sub, Sync};

        // Row 76: no connection header, or one that is not an id.
        send(BusMessage::new(to(Event), vec![1]).with(header::TYPE, "x.Ev")).await;
        send(
            BusMessage::new(to(Event), vec![1])
                .with(header::TYPE, "x.Ev")
                .with(header::CONNECTION, "not an id"),
        )
        .await;
        gw.expect(&dropped("connection-header"), 2.0).await;
        // Row 77: a connection this gateway does not hold; a request to it is answered.
        let stranger = "0123456789abcdefghijABCDEFGHIJ01";
        assert!(stranger.parse::<ConnectionId>().is_ok());
        send(
            BusMessage::new(to(Event), vec![1]).with(header::TYPE, "x.Ev").with(header::CONNECTION, stranger),
        )
        .await;
        let ask = BusMessage::new(to(Request), vec![1])
            .with(header::TYPE, "x.Ask")
            .with(header::CONNECTION, stranger);
        send(ask.reply_to(format!("{DEFAULT_PREFIX}.wk.test.r1"))).await;
        let answer = answers.next().await.unwrap();
        assert_eq!(answer.header(header::ERROR), Some("not-connected"));
        gw.expect(&dropped("unknown-connection"), 2.0).await;
        // Row 78: events and requests without a type, or with one that is not a type name.
        send(BusMessage::new(to(Event), vec![1]).with(header::CONNECTION, conn.as_str())).await;
        for bad in ["a b", "x.*", "x.>", "", "x..y"] {
            let ev = BusMessage::new(to(Event), vec![1]).with(header::CONNECTION, conn.as_str());
            send(ev.with(header::TYPE, bad)).await;
        }
        let ask = BusMessage::new(to(Request), vec![1])
            .with(header::TYPE, "x y")
            .with(header::CONNECTION, conn.as_str());
        send(ask.reply_to(format!("{DEFAULT_PREFIX}.wk.test.r2"))).await;
        let answer = answers.next().await.unwrap();
        assert_eq!(answer.header(header::ERROR), Some("malformed"));
        gw.expect(&dropped("no-type"), 1.0).await;
        gw.expect(&dropped("bad-type"), 6.0).await;
        // Row 79: a reply whose type is not a type name: the client gets mq.Error{failed}.
        let answer = raw.call("x.BadReply", vec![1]).await;
        assert_eq!(error_reason(&answer).as_deref(), Some("failed"));
        gw.expect(&dropped("bad-type"), 7.0).await;
        // Row 80: a subscription value that is not one: ignored, the good one beside it applied.
        let sub = BusMessage::new(to(Sub), Vec::new()).with(header::CONNECTION, conn.as_str());
        send(sub.with(header::SUBSCRIBE, "bogus").with(header::SUBSCRIBE, "room lobby")).await;
        gw.expect(&dropped("bad-header"), 1.0).await;
        gw.expect("clientmq_subscriptions", 1.0).await;
        // Row 80a: a revision that is not a number: the change dropped whole. One older than the
        // revision applied to that subscription: dropped (a slower worker's late message).
        let sub = |revision: &str| {
            BusMessage::new(to(Sub), Vec::new())
                .with(header::CONNECTION, conn.as_str())
                .with(header::REVISION, revision)
        };
        send(sub("x").with(header::SUBSCRIBE, "room other")).await;
        gw.expect(&dropped("bad-header"), 2.0).await;
        send(sub("9").with(header::SUBSCRIBE, "room other")).await;
        gw.expect("clientmq_subscriptions", 2.0).await;
        send(sub("5").with(header::UNSUBSCRIBE, "room other")).await;
        send(sub("10").with(header::SUBSCRIBE, "room third")).await;
        gw.expect("clientmq_subscriptions", 3.0).await;
        send(sub("11").with(header::UNSUBSCRIBE, "room other").with(header::UNSUBSCRIBE, "room third")).await;
        gw.expect("clientmq_subscriptions", 1.0).await;
        // A binding without a revision, or not a number: dropped whole. One older than the
        // binding applied to the connection: dropped whatever the room's revision.
        let bound = |binding: &str| {
            BusMessage::new(to(Sub), Vec::new())
                .with(header::CONNECTION, conn.as_str())
                .with(header::BINDING, binding)
        };
        send(bound("3").with(header::SUBSCRIBE, "room fourth")).await;
        gw.expect(&dropped("bad-header"), 3.0).await;
        send(bound("x").with(header::REVISION, "12").with(header::SUBSCRIBE, "room fourth")).await;
        gw.expect(&dropped("bad-header"), 4.0).await;
        send(bound("7").with(header::REVISION, "12").with(header::SUBSCRIBE, "room fourth")).await;
        gw.expect("clientmq_subscriptions", 2.0).await;
        send(bound("6").with(header::REVISION, "13").with(header::UNSUBSCRIBE, "room fourth")).await;
        send(bound("8").with(header::REVISION, "14").with(header::SUBSCRIBE, "room fifth")).await;
        gw.expect("clientmq_subscriptions", 3.0).await;
        send(bound("8").with(header::REVISION, "15").with(header::UNSUBSCRIBE, "room fourth")).await;
        send(bound("8").with(header::REVISION, "15").with(header::UNSUBSCRIBE, "room fifth")).await;
        gw.expect("clientmq_subscriptions", 1.0).await;
        // A room event with a bad type is dropped at the room's reader too.
        let room = subjects.room(clientmq_core::Topic::Room, "lobby");
        let deadline = tokio::time::Instant::now() + WAIT;
        while gw.metric(&dropped("bad-type")) < 8.0 {
            // Repeated until the gateway's room subscription is in place at the server.
            send(BusMessage::new(room.clone(), vec![1]).with(header::TYPE, "not a type")).await;
            assert!(tokio::time::Instant::now() < deadline, "the room event is never dropped");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Row 81: a sync list too long, an orphans list with a line that is no id (naming the
        // client too): refused whole, answered, nothing closed.
        let many: Vec<ConnectionId> = (0..4097).map(|_| stranger.parse().unwrap()).collect();
        let sync =
            BusMessage::new(to(Sync), ids_payload(&many)).reply_to(format!("{DEFAULT_PREFIX}.wk.test.s1"));
        send(sync).await;
        assert_eq!(answers.next().await.unwrap().header(header::ERROR), Some("too-many-ids"));
        let list = format!("{conn}\nnot-an-id\n").into_bytes();
        send(BusMessage::new(to(Orphans), list).reply_to(format!("{DEFAULT_PREFIX}.wk.test.o1"))).await;
        assert_eq!(answers.next().await.unwrap().header(header::ERROR), Some("malformed"));
        gw.expect(&dropped("oversized-list"), 1.0).await;
        gw.expect(&dropped("bad-list"), 1.0).await;

        // Nothing of it reached the client, which is still open and served: the next event it
        // gets is the first well-formed one.
        let good = BusMessage::new(to(Event), vec![7]).with(header::CONNECTION, conn.as_str());
        send(good.with(header::TYPE, "x.Good")).await;
        let event = raw.next_message().await;
        assert_eq!(
            (event.r#type.as_str(), event.message_type),
            ("x.Good", Some(mq::message::MessageType::Event as i32))
        );
        assert_eq!(raw.call("x.Probe", vec![2]).await.r#type, "x.ProbeResponse");
        gw.still_serves(1).await;
        raw.close_politely().await;
        gw.settles(0).await;
    })
    .await
}

const ACKED: &str = "gw-acked";

/// A subscription sent with a reply subject is answered once the gateway hears the room at the
/// server: a room event published the moment the answer arrives reaches the connection, each of
/// 30 times, on a fresh room each time (docs/nats.md, "Subscriptions").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_subscription_hears_the_room_at_once() {
    use clientmq_bus::contract::ToGateway;

    clientmq_testkit::deadline::bounded(async {
        let subjects = Subjects::new(DEFAULT_PREFIX);
        let Played { _nats, gw, worker, mut requests, inbox: mut acks } = played_worker(ACKED, "acks").await;
        let mut raw = gw.raw().await;
        // The client's first request names its connection (and is answered).
        raw.send(&mq::Message::request("C0", "x.Hello", vec![1])).await;
        let hello = tokio::time::timeout(WAIT, requests.next()).await.expect("forwarded").unwrap();
        let conn = hello.header(header::CONNECTION).unwrap().to_owned();
        worker
            .publish(
                BusMessage::new(hello.reply.clone().unwrap(), vec![]).with(header::TYPE, "x.HelloResponse"),
            )
            .await
            .unwrap();
        assert_eq!(raw.next_message().await.r#type, "x.HelloResponse");
        for n in 0..30 {
            let room = format!("fresh-{n}");
            let sub = BusMessage::new(subjects.gateway(ACKED, ToGateway::Subscription), Vec::new())
                .with(header::CONNECTION, conn.as_str())
                .with(header::SUBSCRIBE, format!("room {room}"))
                .reply_to(format!("{DEFAULT_PREFIX}.wk.acks.{n}"));
            worker.publish(sub).await.unwrap();
            let ack = tokio::time::timeout(WAIT, acks.next()).await.expect("acknowledged").unwrap();
            assert_eq!(ack.subject, format!("{DEFAULT_PREFIX}.wk.acks.{n}"));
            let event = BusMessage::new(subjects.room(clientmq_core::Topic::Room, &room), vec![n as u8]);
            worker.publish(event.with(header::TYPE, "x.RoomEvent")).await.unwrap();
            let heard = raw.next_message().await;
            assert_eq!(
                (heard.r#type.as_str(), heard.payload.as_slice()),
                ("x.RoomEvent", &[n as u8][..]),
                "{room}"
            );
        }
        gw.expect("clientmq_subscriptions", 30.0).await;
        raw.close_politely().await;
        gw.settles(0).await;
    })
    .await
}

/// A gateway back on the bus drops what its connections with a session hear and asks the
/// workers to tell them again (docs/nats.md). With nobody to ask (a worker that keeps nothing
/// per connection serves no resubscribe lists: no responders), the connections get back what
/// they had, counted as `restored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_on_the_bus_with_nobody_to_ask_connections_keep_what_they_heard() {
    use clientmq_bus::contract::ToGateway::Subscription as Sub;
    use clientmq_core::proto::pcast;
    use prost::Message as _;

    clientmq_testkit::deadline::bounded(async {
        const RESTORED: &str = "gw-restored";
        let subjects = Subjects::new(DEFAULT_PREFIX);
        let Played { mut _nats, gw, worker, mut requests, inbox: _ } =
            played_worker(RESTORED, "restore").await;
        // The test is the worker: it binds every connection that authenticates to session s1.
        let (conns, mut conn_of) = tokio::sync::mpsc::unbounded_channel();
        let replier = worker.clone();
        tokio::spawn(async move {
            while let Some(msg) = requests.next().await {
                let (ty, payload) = if msg.subject.ends_with(".pcast.Authenticate") {
                    let ok = pcast::AuthenticateResponse {
                        status: "ok".into(),
                        session_id: Some("s1".into()),
                        ..Default::default()
                    };
                    ("pcast.AuthenticateResponse", ok.encode_to_vec())
                } else {
                    ("x.ProbeResponse", msg.payload.clone())
                };
                let _ = conns.send(msg.header(header::CONNECTION).unwrap().to_owned());
                let reply = BusMessage::new(msg.reply.clone().unwrap(), payload).with(header::TYPE, ty);
                replier.publish(reply).await.unwrap();
            }
        });
        let mut raw = gw.raw().await;
        let deadline = tokio::time::Instant::now() + WAIT;
        let auth = pcast::Authenticate { authentication_token: "t".into(), ..Default::default() };
        while raw.call("pcast.Authenticate", auth.encode_to_vec()).await.r#type
            != "pcast.AuthenticateResponse"
        {
            assert!(tokio::time::Instant::now() < deadline, "authentication is never served");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let conn = tokio::time::timeout(WAIT, conn_of.recv()).await.unwrap().unwrap();
        let sub = BusMessage::new(subjects.gateway(RESTORED, Sub), Vec::new())
            .with(header::CONNECTION, conn.as_str())
            .with(header::SUBSCRIBE, "room lobby");
        worker.publish(sub).await.unwrap();
        gw.expect("clientmq_subscriptions", 1.0).await;

        _nats.stop().await;
        gw.expect("clientmq_bus_connected", 0.0).await;
        _nats.restart().await;
        let restored = r#"clientmq_bus_resubscribes_total{outcome="restored"}"#;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while gw.metric(restored) < 1.0 {
            assert!(tokio::time::Instant::now() < deadline, "the list is never given up on");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        gw.expect("clientmq_subscriptions", 1.0).await;
        assert_eq!(gw.metric(r#"clientmq_bus_resubscribes_total{outcome="told"}"#), 0.0);
    })
    .await
}
