//! The simulated bus: each test is a small turmoil simulation with a "bus" host running the
//! broker and client hosts on `SimBus`, checking one part of NATS core's semantics, the
//! client's reconnects under partitions and broker restarts, and that a seed replays.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use clientmq_bus::{Bus, BusError, BusMessage, BusStatus, NO_RESPONDERS, Subscription};
use clientmq_sim::bus::proto::{Frame, FrameReader};
use clientmq_sim::bus::{SimBus, SimSubscription, subject_matches, valid_subject};
use clientmq_sim::run::{BUS, bus_host};
use clientmq_sim::trace::now;
use tokio::io::AsyncWriteExt;

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Sleeps until `secs` of simulated time.
async fn until(secs: f64) {
    let at = Duration::from_secs_f64(secs);
    if at > now() {
        tokio::time::sleep(at - now()).await;
    }
}

async fn connected(bus: &SimBus) -> BusStatus {
    loop {
        let status = bus.status();
        if status.connected {
            return status;
        }
        bus.changed(status).await;
    }
}

async fn disconnected(bus: &SimBus) -> BusStatus {
    loop {
        let status = bus.status();
        if !status.connected {
            return status;
        }
        bus.changed(status).await;
    }
}

fn text(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

/// What happened, when, at whom: the delivery trace of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    at: Duration,
    who: String,
    what: String,
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Event>>>);

impl Log {
    fn push(&self, who: &str, what: impl Into<String>) {
        self.0.lock().unwrap().push(Event { at: now(), who: who.to_owned(), what: what.into() });
    }

    fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }

    /// What `who` logged, in order.
    fn of(&self, who: &str) -> Vec<String> {
        self.events().into_iter().filter(|e| e.who == who).map(|e| e.what).collect()
    }

    fn render(&self) -> String {
        self.events().iter().map(|e| format!("{:>6} {} {}\n", ms(e.at), e.who, e.what)).collect()
    }
}

/// A count hosts wait on (polled: simulated time only).
#[derive(Clone, Default)]
struct Gate(Arc<AtomicUsize>);

impl Gate {
    fn open(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    async fn wait(&self, n: usize) {
        while self.0.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Logs every message of `sub` as `subject payload` (and `status=N` when set) under `who`.
fn record(mut sub: SimSubscription, who: &str, log: &Log) {
    let (who, log) = (who.to_owned(), log.clone());
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let status = msg.status.map(|s| format!(" status={s}")).unwrap_or_default();
            log.push(&who, format!("{} {}{status}", msg.subject, text(&msg.payload)));
        }
    });
}

/// A simulation with the broker on host "bus".
fn sim(seed: u64) -> turmoil::Sim<'static> {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH)
        .simulation_duration(Duration::from_secs(120))
        .build();
    bus_host(&mut sim, None, None);
    sim
}

fn run_until(sim: &mut turmoil::Sim<'_>, secs: f64) {
    while sim.elapsed() < Duration::from_secs_f64(secs) {
        sim.step().expect("simulation step");
    }
}

#[test]
fn subjects_and_wildcards_are_matched_per_token() {
    assert!(subject_matches("a.*", "a.b"));
    assert!(!subject_matches("a.*", "a.b.c"));
    assert!(!subject_matches("a.*", "a"));
    assert!(subject_matches("a.>", "a.b.c"));
    assert!(!subject_matches("a.>", "a"));
    assert!(subject_matches("*.b.>", "x.b.y"));
    assert!(subject_matches(">", "a"));
    assert!(!subject_matches("a.b", "a.bc"));
    assert!(!subject_matches("a.b", "a.b.c"));
    assert!(valid_subject("a.*.>", true));
    for bad in ["", "a..b", ".a", "a.", "a b", "a.>.b", "a.\t"] {
        assert!(!valid_subject(bad, true), "{bad:?}");
    }
    assert!(!valid_subject("a.*", false));
    assert!(!valid_subject("a.>", false));
    assert!(valid_subject("a*.b>", false), "wildcards are whole tokens only");
}

#[test]
fn frames_round_trip_and_garbage_never_panics() {
    let msg = BusMessage::new("a.b", b"hello".to_vec()).reply_to("r.1").with("K", "v").with("K", "w");
    let frames = [
        Frame::Connect { name: "gw".into() },
        Frame::Sub { sid: 7, subject: "a.>".into(), queue: Some("q".into()) },
        Frame::Sub { sid: 8, subject: "a.*".into(), queue: None },
        Frame::Unsub { sid: 7 },
        Frame::Pub(msg.clone()),
        Frame::Msg { sid: 9, msg: BusMessage { status: Some(NO_RESPONDERS), ..msg } },
        Frame::Ping,
        Frame::Pong,
    ];
    let mut stream = Vec::new();
    for f in &frames {
        stream.extend(f.encode().unwrap());
    }
    // Byte by byte: frames come out whole, in order.
    let mut reader = FrameReader::default();
    let mut got = Vec::new();
    for b in &stream {
        reader.extend(std::slice::from_ref(b));
        while let Some(f) = reader.buffered().unwrap() {
            got.push(f);
        }
    }
    assert_eq!(got, frames);
    // Every prefix and every single-byte corruption decodes or fails, never panics.
    for end in 0..stream.len() {
        let _ = Frame::decode(&stream[..end]);
        let mut bad = stream.clone();
        bad[end] ^= 0xa5;
        let mut r = FrameReader::default();
        r.extend(&bad);
        while let Ok(Some(_)) = r.buffered() {}
    }
    let too_big = BusMessage::new("a", vec![0; clientmq_sim::bus::proto::MAX_PAYLOAD + 1]);
    assert!(Frame::Pub(too_big).encode().is_err());
}

#[test]
fn wildcard_subscriptions_get_what_matches_and_invalid_subjects_are_refused() -> turmoil::Result {
    let mut sim = sim(1);
    let (log, ready, done) = (Log::default(), Gate::default(), Gate::default());
    let patterns = ["a.*", "a.>", "a.b.c", "*.b", ">"];
    {
        let (log, ready, done) = (log.clone(), ready.clone(), done.clone());
        sim.client("sub", async move {
            let bus = SimBus::connect(BUS, "sub");
            for p in patterns {
                record(bus.subscribe(p, None).await?, p, &log);
            }
            for bad in ["a.>.b", "a..b", "", "a b"] {
                let refused = matches!(bus.subscribe(bad, None).await, Err(BusError::Refused(_)));
                log.push("refused", format!("sub {bad:?} {refused}"));
            }
            connected(&bus).await;
            ready.open();
            done.wait(1).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(())
        });
    }
    {
        let log = log.clone();
        sim.client("pub", async move {
            let bus = SimBus::connect(BUS, "pub");
            connected(&bus).await;
            ready.wait(1).await;
            for s in ["a", "a.b", "a.b.c", "a.b.c.d", "x.b", "b", "a.x"] {
                bus.publish(BusMessage::new(s, b"m".to_vec())).await?;
            }
            for bad in ["a.*", "a.>", "", "a..b", "a b"] {
                let refused =
                    matches!(bus.publish(BusMessage::new(bad, vec![])).await, Err(BusError::Refused(_)));
                log.push("refused", format!("pub {bad:?} {refused}"));
            }
            let bad_reply = BusMessage::new("a.b", vec![]).reply_to("r.*");
            let refused = matches!(bus.publish(bad_reply).await, Err(BusError::Refused(_)));
            log.push("refused", format!("reply \"r.*\" {refused}"));
            done.open();
            Ok(())
        });
    }
    sim.run()?;
    let subjects = |who: &str| -> Vec<String> {
        log.of(who).iter().map(|w| w.split(' ').next().unwrap().to_owned()).collect()
    };
    assert_eq!(subjects("a.*"), ["a.b", "a.x"]);
    assert_eq!(subjects("a.>"), ["a.b", "a.b.c", "a.b.c.d", "a.x"]);
    assert_eq!(subjects("a.b.c"), ["a.b.c"]);
    assert_eq!(subjects("*.b"), ["a.b", "x.b"]);
    assert_eq!(subjects(">"), ["a", "a.b", "a.b.c", "a.b.c.d", "x.b", "b", "a.x"]);
    let refused = log.of("refused");
    assert_eq!(refused.len(), 10);
    assert!(refused.iter().all(|r| r.ends_with("true")), "{refused:?}");
    Ok(())
}

/// Who logs, the subject, the queue group.
type Member = (&'static str, &'static str, Option<&'static str>);

#[test]
fn a_queue_group_gives_each_message_to_one_member_and_plain_subscribers_get_all() -> turmoil::Result {
    let mut sim = sim(2);
    let (log, ready, done) = (Log::default(), Gate::default(), Gate::default());
    // Three members of "workers" on two hosts (two on w2, under different patterns), a sole
    // member of "audit", and two plain subscribers.
    let hosts: [(&str, &[Member]); 2] = [
        ("w1", &[("w1.workers", "jobs.*", Some("workers")), ("w1.plain", "jobs.>", None)]),
        (
            "w2",
            &[
                ("w2.workers.a", "jobs.*", Some("workers")),
                ("w2.workers.b", "jobs.>", Some("workers")),
                ("w2.audit", "jobs.*", Some("audit")),
                ("w2.plain", "*.*", None),
            ],
        ),
    ];
    for (host, subs) in hosts {
        let (log, ready, done) = (log.clone(), ready.clone(), done.clone());
        sim.client(host, async move {
            let bus = SimBus::connect(BUS, host);
            for (who, subject, queue) in subs {
                record(bus.subscribe(subject, *queue).await?, who, &log);
            }
            connected(&bus).await;
            ready.open();
            done.wait(1).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(())
        });
    }
    sim.client("pub", async move {
        let bus = SimBus::connect(BUS, "pub");
        connected(&bus).await;
        ready.wait(2).await;
        for n in 0..30 {
            bus.publish(BusMessage::new(format!("jobs.{n}"), vec![])).await?;
        }
        done.open();
        Ok(())
    });
    sim.run()?;
    let all: Vec<String> = (0..30).map(|n| format!("jobs.{n} ")).collect();
    let workers: Vec<Vec<String>> = ["w1.workers", "w2.workers.a", "w2.workers.b"].map(|w| log.of(w)).into();
    let mut taken: Vec<String> = workers.concat();
    taken.sort_by_key(|s| s[5..].trim().parse::<u32>().unwrap());
    assert_eq!(taken, all, "each message to exactly one member of workers");
    assert_eq!(workers.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 10], "round robin");
    assert_eq!(log.of("w2.audit"), all, "a sole member gets everything");
    assert_eq!(log.of("w1.plain"), all);
    assert_eq!(log.of("w2.plain"), all);
    Ok(())
}

#[test]
fn a_request_nobody_takes_is_answered_503_at_once_on_its_reply_subject() -> turmoil::Result {
    let mut sim = sim(3);
    let (log, ready) = (Log::default(), Gate::default());
    {
        let (log, ready) = (log.clone(), ready.clone());
        sim.client("other", async move {
            // Subscribes to every inbox and serves svc.q in a queue group.
            let bus = SimBus::connect(BUS, "other");
            record(bus.subscribe("_INBOX.>", None).await?, "other.inbox", &log);
            record(bus.subscribe("svc.q", Some("svc")).await?, "other.svc", &log);
            connected(&bus).await;
            ready.open();
            until(5.0).await;
            Ok(())
        });
    }
    {
        let log = log.clone();
        sim.client("req", async move {
            let bus = SimBus::connect(BUS, "req");
            let mut inbox = bus.subscribe("_INBOX.req.>", None).await?;
            connected(&bus).await;
            ready.wait(1).await;
            let sent = now();
            bus.publish(BusMessage::new("svc.nobody", b"hi".to_vec()).reply_to("_INBOX.req.1")).await?;
            let answer = tokio::time::timeout(Duration::from_secs(1), inbox.next()).await?.unwrap();
            log.push("req", format!("answered after {}ms", ms(now() - sent)));
            log.push("req", format!("{answer:?}"));
            // Taken by a queue member: no 503. A plain publish to nobody: nothing at all.
            bus.publish(BusMessage::new("svc.q", vec![]).reply_to("_INBOX.req.2")).await?;
            bus.publish(BusMessage::new("svc.nobody", vec![])).await?;
            // A reply subject this connection does not subscribe to: nats-server answers
            // nobody.
            bus.publish(BusMessage::new("svc.nobody", vec![]).reply_to("_INBOX.elsewhere")).await?;
            let more = tokio::time::timeout(Duration::from_secs(2), inbox.next()).await;
            log.push("req", format!("then {}", if more.is_err() { "nothing" } else { "something" }));
            until(5.0).await;
            Ok(())
        });
    }
    sim.run()?;
    let req = log.of("req");
    let after: u128 = req[0].split(' ').nth(2).unwrap().trim_end_matches("ms").parse().unwrap();
    // One round trip to the broker (at most 100 ms each way by default), no waiting.
    assert!(after <= 200, "{req:?}");
    let expected = BusMessage {
        subject: "_INBOX.req.1".into(),
        reply: None,
        headers: vec![("Nats-Subject".into(), "svc.nobody".into())],
        payload: vec![],
        status: Some(NO_RESPONDERS),
    };
    assert_eq!(req[1], format!("{expected:?}"));
    assert_eq!(req[2], "then nothing");
    // The 503 goes to the requester only; the queue member got its request.
    assert_eq!(log.of("other.inbox"), Vec::<String>::new());
    assert_eq!(log.of("other.svc"), ["svc.q "]);
    Ok(())
}

#[test]
fn requests_round_trip_through_a_queue_group_of_responders() -> turmoil::Result {
    let mut sim = sim(4);
    let (log, ready) = (Log::default(), Gate::default());
    for name in ["svc1", "svc2"] {
        let ready = ready.clone();
        sim.client(name, async move {
            let bus = SimBus::connect(BUS, name);
            let mut requests = bus.subscribe("svc.echo", Some("echo")).await?;
            connected(&bus).await;
            ready.open();
            loop {
                tokio::select! {
                    biased;
                    () = until(10.0) => break,
                    Some(req) = requests.next() => {
                        let Some(reply) = req.reply.clone() else { continue };
                        let echo = format!("{name}:{}", text(&req.payload));
                        let mut answer = BusMessage::new(reply, echo.into());
                        answer.headers = req.headers.clone();
                        bus.publish(answer).await?;
                    }
                }
            }
            Ok(())
        });
    }
    {
        let log = log.clone();
        sim.client("req", async move {
            let bus = SimBus::connect(BUS, "req");
            let mut inbox = bus.subscribe("_INBOX.req.*", None).await?;
            connected(&bus).await;
            ready.wait(2).await;
            for n in 0..6 {
                let req = BusMessage::new("svc.echo", format!("q{n}").into())
                    .reply_to(format!("_INBOX.req.{n}"))
                    .with("X-N", n.to_string());
                bus.publish(req).await?;
                let a = tokio::time::timeout(Duration::from_secs(1), inbox.next()).await?.unwrap();
                let header = a.header("x-n").unwrap_or("-");
                log.push("req", format!("{} {} {header} {:?}", a.subject, text(&a.payload), a.status));
            }
            Ok(())
        });
    }
    sim.run()?;
    let expected: Vec<String> = (0..6)
        .map(|n| format!("_INBOX.req.{n} svc{}:q{n} {n} None", if n % 2 == 0 { 1 } else { 2 }))
        .collect();
    assert_eq!(log.of("req"), expected);
    Ok(())
}

#[test]
fn what_one_connection_publishes_arrives_in_publish_order() -> turmoil::Result {
    const N: usize = 1000;
    let mut sim = sim(5);
    let (log, ready, done) = (Log::default(), Gate::default(), Gate::default());
    {
        let (log, ready, done) = (log.clone(), ready.clone(), done.clone());
        sim.client("sub", async move {
            let bus = SimBus::connect(BUS, "sub");
            record(bus.subscribe("seq.>", None).await?, "plain", &log);
            record(bus.subscribe("seq.*", Some("g")).await?, "queue", &log);
            connected(&bus).await;
            ready.open();
            done.wait(2).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(())
        });
    }
    for p in ["p1", "p2"] {
        let (ready, done) = (ready.clone(), done.clone());
        sim.client(p, async move {
            let bus = SimBus::connect(BUS, p);
            connected(&bus).await;
            ready.wait(1).await;
            for n in 0..N {
                bus.publish(BusMessage::new(format!("seq.{p}"), n.to_string().into())).await?;
                if n % 100 == 0 {
                    // Let the other publisher interleave.
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }
            done.open();
            Ok(())
        });
    }
    sim.run()?;
    for who in ["plain", "queue"] {
        let got = log.of(who);
        assert_eq!(got.len(), 2 * N, "{who}");
        for p in ["p1", "p2"] {
            let seq: Vec<usize> = got
                .iter()
                .filter_map(|w| w.strip_prefix(&format!("seq.{p} ")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(seq, (0..N).collect::<Vec<_>>(), "{who} from {p}");
        }
        // The two publishers did interleave.
        let first_p2 = got.iter().position(|w| w.starts_with("seq.p2")).unwrap();
        let last_p1 = got.iter().rposition(|w| w.starts_with("seq.p1")).unwrap();
        assert!(first_p2 < last_p1, "{who}: no interleaving to test");
    }
    Ok(())
}

/// Host "a" subscribes to `p.>` and logs its status; host "b" publishes `p.<ms>` every 100 ms
/// from 1 s to 19 s. The test partitions a from the bus at 5 s and repairs at 12 s.
#[test]
fn a_partition_is_noticed_and_repaired_with_a_new_epoch() -> turmoil::Result {
    let mut sim = sim(6);
    let log = Log::default();
    {
        let log = log.clone();
        sim.client("a", async move {
            let bus = SimBus::connect(BUS, "a");
            record(bus.subscribe("p.>", None).await?, "a", &log);
            let mut seen = connected(&bus).await;
            log.push("a.status", format!("connected epoch={}", seen.epoch));
            let lost = disconnected(&bus).await;
            log.push("a.status", format!("disconnected epoch={}", lost.epoch));
            let before = now();
            let result = bus.publish(BusMessage::new("p.from-a", vec![])).await;
            log.push("a.publish", format!("{result:?} in {}ms", ms(now() - before)));
            seen = connected(&bus).await;
            log.push("a.status", format!("connected epoch={}", seen.epoch));
            until(20.0).await;
            Ok(())
        });
    }
    {
        let log = log.clone();
        sim.client("b", async move {
            let bus = SimBus::connect(BUS, "b");
            connected(&bus).await;
            until(1.0).await;
            while now() < Duration::from_secs(19) {
                let result = bus.publish(BusMessage::new(format!("p.{}", ms(now())), vec![])).await;
                log.push("b", format!("{result:?} epoch={}", bus.status().epoch));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            until(20.0).await;
            Ok(())
        });
    }
    run_until(&mut sim, 5.0);
    sim.partition("a", "bus");
    run_until(&mut sim, 12.0);
    sim.repair("a", "bus");
    run_until(&mut sim, 20.5);

    let events = log.events();
    let status: Vec<&Event> = events.iter().filter(|e| e.who == "a.status").collect();
    assert_eq!(status.len(), 3, "{}", log.render());
    assert_eq!(
        (status[0].what.as_str(), status[1].what.as_str()),
        ("connected epoch=1", "disconnected epoch=1")
    );
    assert_eq!(status[2].what, "connected epoch=2");
    let (lost, back) = (status[1].at, status[2].at);
    assert!(lost > Duration::from_secs(5) && lost <= Duration::from_millis(8_010), "noticed at {lost:?}");
    assert!(back > Duration::from_secs(12) && back <= Duration::from_millis(13_500), "back at {back:?}");
    assert_eq!(log.of("a.publish"), ["Err(Disconnected) in 0ms"]);
    // b never lost its connection.
    assert!(log.of("b").iter().all(|w| w == "Ok(()) epoch=1"), "{:?}", log.of("b"));
    // a got what b published before the partition and after it was back, nothing published
    // during the partition. (Between the repair and a's new epoch it may get some: the broker
    // holds its subscriptions a round trip before a counts itself connected.)
    let got: BTreeSet<u128> =
        log.of("a").iter().map(|w| w[2..].split(' ').next().unwrap().parse().unwrap()).collect();
    let published: Vec<u128> = events.iter().filter(|e| e.who == "b").map(|e| ms(e.at)).collect();
    for t in &published {
        let t = *t;
        if t < 4_700 {
            assert!(got.contains(&t), "p.{t} before the partition was lost");
        } else if (5_000..=12_000).contains(&t) {
            assert!(!got.contains(&t), "p.{t}, published during the partition, was delivered");
        } else if t > ms(back) + 300 {
            assert!(got.contains(&t), "p.{t} after the repair was lost");
        }
    }
    Ok(())
}

/// The broker host is bounced at 3 s. "a" subscribes plainly and in a queue group; "b"
/// publishes every 100 ms; "raw" speaks the protocol by hand and reconnects without
/// subscribing again, so it shows the broker forgot its subscription.
#[test]
fn a_bounced_broker_forgets_everything_and_clients_restore_their_subscriptions() -> turmoil::Result {
    let mut sim = sim(7);
    let log = Log::default();
    {
        let log = log.clone();
        sim.client("a", async move {
            let bus = SimBus::connect(BUS, "a");
            record(bus.subscribe("x.>", None).await?, "a.plain", &log);
            record(bus.subscribe("x.*", Some("g")).await?, "a.queue", &log);
            let mut status = connected(&bus).await;
            loop {
                tokio::select! {
                    biased;
                    () = until(8.0) => break,
                    () = bus.changed(status) => {
                        status = bus.status();
                        log.push("a.status", format!("{status:?}"));
                    }
                }
            }
            Ok(())
        });
    }
    {
        let log = log.clone();
        sim.client("b", async move {
            let bus = SimBus::connect(BUS, "b");
            connected(&bus).await;
            until(1.0).await;
            while now() < Duration::from_secs(7) {
                let before = now();
                let result = bus.publish(BusMessage::new(format!("x.{}", ms(now())), vec![])).await;
                assert_eq!(now(), before, "publish returns at once");
                log.push("b", format!("{result:?} epoch={}", bus.status().epoch));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            until(8.0).await;
            Ok(())
        });
    }
    {
        let log = log.clone();
        sim.client("raw", async move {
            let mut frames = FrameReader::default();
            let mut socket = turmoil::net::TcpStream::connect(BUS).await?;
            let hello = [
                Frame::Connect { name: "raw".into() },
                Frame::Sub { sid: 1, subject: "x.>".into(), queue: None },
                Frame::Ping,
            ];
            for f in &hello {
                socket.write_all(&f.encode()?).await?;
            }
            // Pings keep the broker from dropping this client as silent.
            let mut ping = tokio::time::interval(Duration::from_secs(1));
            let mut got = 0;
            loop {
                tokio::select! {
                    biased;
                    _ = ping.tick() => socket.write_all(&Frame::Ping.encode()?).await?,
                    frame = frames.next(&mut socket) => match frame {
                        Ok(Some(Frame::Msg { .. })) => got += 1,
                        Ok(Some(_)) => {}
                        _ => break,
                    },
                }
            }
            log.push("raw", format!("lost the broker after {got} messages"));
            // Connect again (the broker restarts at once), without subscribing.
            until(4.0).await;
            let mut socket = turmoil::net::TcpStream::connect(BUS).await?;
            let mut frames = FrameReader::default();
            socket.write_all(&Frame::Connect { name: "raw".into() }.encode()?).await?;
            let mut got = 0;
            loop {
                tokio::select! {
                    biased;
                    () = until(7.0) => break,
                    _ = ping.tick() => socket.write_all(&Frame::Ping.encode()?).await?,
                    frame = frames.next(&mut socket) => match frame {
                        Ok(Some(Frame::Msg { .. })) => got += 1,
                        Ok(Some(_)) => {}
                        _ => break,
                    },
                }
            }
            log.push("raw", format!("then {got} messages"));
            Ok(())
        });
    }
    run_until(&mut sim, 3.0);
    sim.bounce("bus");
    run_until(&mut sim, 8.5);

    let events = log.events();
    let raw = log.of("raw");
    assert!(raw[0].starts_with("lost the broker after ") && !raw[0].ends_with(" 0 messages"), "{raw:?}");
    assert_eq!(raw[1], "then 0 messages");
    let a = log.of("a.status");
    assert_eq!(
        a,
        ["BusStatus { connected: false, epoch: 1 }", "BusStatus { connected: true, epoch: 2 }"],
        "{}",
        log.render()
    );
    let at =
        |who: &str, what: &str| events.iter().find(|e| e.who == who && e.what.contains(what)).unwrap().at;
    let (lost, back) = (at("a.status", "false"), at("a.status", "true"));
    // The bounce closed the sockets: noticed at once, not after missed pings.
    assert!(lost <= Duration::from_millis(3_200), "{lost:?}");
    assert!(back <= Duration::from_millis(4_500), "{back:?}");
    // b's publishes failed at once while it was away, and succeeded in its new epoch.
    let b = log.of("b");
    let failed = b.iter().filter(|w| w.starts_with("Err(Disconnected)")).count();
    assert!(failed >= 1, "{b:?}");
    assert!(b.last().unwrap() == "Ok(()) epoch=2", "{b:?}");
    let b_back = events.iter().find(|e| e.who == "b" && e.what == "Ok(()) epoch=2").unwrap().at;
    // Both of a's subscriptions work again: each message b published after both reconnected.
    let after: Vec<String> = events
        .iter()
        .filter(|e| e.who == "b" && e.at >= b_back.max(back) && e.what.starts_with("Ok"))
        .map(|e| format!("x.{} ", ms(e.at)))
        .collect();
    assert!(after.len() > 20, "{}", log.render());
    for who in ["a.plain", "a.queue"] {
        let got = log.of(who);
        assert!(got.ends_with(&after), "{who}: {got:?}\nwant the tail {after:?}");
    }
    Ok(())
}

/// A client that stops pinging is dropped by the broker after `SILENT_AFTER`, with its
/// subscriptions: a request to what it served is then answered 503.
#[test]
fn the_broker_drops_a_silent_client_and_its_subscriptions() -> turmoil::Result {
    let mut sim = sim(8);
    let log = Log::default();
    {
        let log = log.clone();
        sim.client("raw", async move {
            let mut socket = turmoil::net::TcpStream::connect(BUS).await?;
            for f in [
                Frame::Connect { name: "raw".into() },
                Frame::Sub { sid: 1, subject: "svc".into(), queue: None },
            ] {
                socket.write_all(&f.encode()?).await?;
            }
            let said = now();
            let mut frames = FrameReader::default();
            let mut got = 0;
            while let Ok(Some(frame)) = frames.next(&mut socket).await {
                if matches!(frame, Frame::Msg { .. }) {
                    got += 1;
                }
            }
            log.push(
                "raw",
                format!("dropped {}ms after its last frame, after {got} messages", ms(now() - said)),
            );
            Ok(())
        });
    }
    {
        let log = log.clone();
        sim.client("req", async move {
            let bus = SimBus::connect(BUS, "req");
            let mut inbox = bus.subscribe("inbox.>", None).await?;
            connected(&bus).await;
            until(1.0).await;
            for (n, at) in [(1, 1.0), (2, 5.0)] {
                until(at).await;
                bus.publish(BusMessage::new("svc", vec![]).reply_to(format!("inbox.{n}"))).await?;
                let answer = tokio::time::timeout(Duration::from_millis(500), inbox.next()).await;
                let what = match answer {
                    Ok(Some(m)) => format!("{:?}", m.status),
                    _ => "no answer".to_owned(),
                };
                log.push("req", format!("request {n}: {what}"));
            }
            Ok(())
        });
    }
    sim.run()?;
    let raw = log.of("raw");
    let dropped_after: u128 = raw[0].split(' ').nth(1).unwrap().trim_end_matches("ms").parse().unwrap();
    assert!((3_000..=3_250).contains(&dropped_after), "{raw:?}");
    assert!(raw[0].ends_with("after 1 messages"), "{raw:?}");
    assert_eq!(log.of("req"), ["request 1: no answer", "request 2: Some(503)"]);
    Ok(())
}

/// Queue groups across hosts, two publishers, a partition and a broker bounce: the whole
/// delivery trace, with simulated times.
fn mixed(seed: u64) -> String {
    let mut sim = sim(seed);
    let log = Log::default();
    for (host, members) in [("w1", 2), ("w2", 1)] {
        let log = log.clone();
        sim.client(host, async move {
            let bus = SimBus::connect(BUS, host);
            for m in 0..members {
                record(bus.subscribe("job.*", Some("workers")).await?, &format!("{host}.{m}"), &log);
            }
            record(bus.subscribe("job.>", None).await?, &format!("{host}.all"), &log);
            let mut status = bus.status();
            loop {
                tokio::select! {
                    biased;
                    () = until(14.0) => break,
                    () = bus.changed(status) => {
                        status = bus.status();
                        log.push(host, format!("{status:?}"));
                    }
                }
            }
            Ok(())
        });
    }
    for p in ["p1", "p2"] {
        let log = log.clone();
        sim.client(p, async move {
            let bus = SimBus::connect(BUS, p);
            connected(&bus).await;
            let mut n = 0;
            while now() < Duration::from_secs(13) {
                let result = bus.publish(BusMessage::new(format!("job.{p}"), n.to_string().into())).await;
                if result.is_err() {
                    log.push(p, format!("{n} {result:?}"));
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(37)).await;
            }
            until(14.0).await;
            Ok(())
        });
    }
    run_until(&mut sim, 3.0);
    sim.partition("w1", "bus");
    run_until(&mut sim, 7.0);
    sim.repair("w1", "bus");
    run_until(&mut sim, 10.0);
    sim.bounce("bus");
    run_until(&mut sim, 14.5);
    log.render()
}

#[test]
fn the_same_seed_gives_the_same_delivery_trace() {
    let first = mixed(11);
    assert!(first.lines().count() > 1000, "{first}");
    for what in ["w1 BusStatus { connected: true, epoch: 3 }", "w2 BusStatus { connected: true, epoch: 2 }"] {
        assert!(first.contains(what), "{what} missing from\n{first}");
    }
    // Again, twice at once on other threads: process-global task ids then differ from the
    // first run's, which must not matter (a bounce drops the broker's tasks in id order).
    let again: Vec<String> = std::thread::scope(|s| {
        [s.spawn(|| mixed(11)), s.spawn(|| mixed(11))].map(|t| t.join().unwrap()).into()
    });
    assert!(again.iter().all(|t| *t == first), "same seed, different trace");
    assert!(first != mixed(12), "the seed should matter (latencies differ)");
}

/// The chat worker runs unchanged on a `SimBus`: a request before it subscribed is answered
/// 503 by the broker, one after by the worker (here `mq.Error`, the connection has no session).
#[test]
fn the_chat_worker_serves_requests_over_the_simulated_bus() -> turmoil::Result {
    use clientmq_bus::contract::{Subjects, header};
    use clientmq_chat::ChatConfig;
    use clientmq_chat::worker::{self, WorkerConfig};

    let mut sim = sim(9);
    let log = Log::default();
    sim.client("worker", async move {
        until(2.0).await;
        let config = WorkerConfig {
            prefix: "clientmq".into(),
            chat: ChatConfig::default(),
            seed: Some(1),
            name: "w1".into(),
            observer: None,
            metrics: None,
        };
        worker::run(SimBus::connect(BUS, "worker"), config, until(6.0)).await;
        Ok(())
    });
    {
        let log = log.clone();
        sim.client("gateway", async move {
            let subjects = Subjects::new("clientmq");
            let bus = SimBus::connect(BUS, "gateway");
            let mut inbox = bus.subscribe(&subjects.to_gateway("g1"), None).await?;
            connected(&bus).await;
            for (token, at) in [(1, 1.0), (2, 4.0)] {
                until(at).await;
                let req = BusMessage::new(subjects.request("chat.GetRoomInfo").unwrap(), vec![])
                    .reply_to(subjects.reply("g1", token))
                    .with(header::GATEWAY, "g1")
                    .with(header::CONNECTION, "c".repeat(32));
                bus.publish(req).await?;
                let answer = tokio::time::timeout(Duration::from_secs(1), inbox.next()).await?.unwrap();
                let kind = answer.header(header::TYPE).unwrap_or("-");
                log.push("gateway", format!("{} {:?} {kind}", answer.subject, answer.status));
            }
            Ok(())
        });
    }
    sim.run()?;
    assert_eq!(
        log.of("gateway"),
        ["clientmq.gw.g1.reply.1 Some(503) -", "clientmq.gw.g1.reply.2 None mq.Error"]
    );
    Ok(())
}
