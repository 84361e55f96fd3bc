//! The store on the simulated bus: the same `clientmq_bus::store` client the workers will use,
//! answered by the broker's model of JetStream (held to nats-server by
//! `crates/bus/tests/store_model.rs`). What the simulator adds is the network: workers racing on
//! one key, a broker restart, a worker cut off from the store.

use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use clientmq_bus::store::kv::{Bucket, Entry};
use clientmq_bus::store::wire::Storage;
use clientmq_bus::store::{Store, StoreError};
use clientmq_bus::{Bus, BusStatus};
use clientmq_sim::bus::SimBus;
use clientmq_sim::run::{BUS, bus_host};
use clientmq_sim::trace::now;

const TIMEOUT: Duration = Duration::from_secs(2);

/// A simulation with the bus; with `flight`, its store is a cluster's stream that keeps each
/// write in process that long.
fn sim_with(seed: u64, flight: Option<Duration>) -> turmoil::Sim<'static> {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH)
        .simulation_duration(Duration::from_secs(60))
        .build();
    bus_host(&mut sim, None, flight);
    sim
}

fn sim(seed: u64) -> turmoil::Sim<'static> {
    sim_with(seed, None)
}

async fn connected(bus: &SimBus) {
    let mut status = BusStatus::default();
    while !bus.status().connected {
        bus.changed(status).await;
        status = bus.status();
    }
}

/// A store client on a fresh connection named `who`, with the bucket created.
async fn store(who: &str) -> (Store<SimBus>, Bucket) {
    let bus = SimBus::connect(BUS, who);
    connected(&bus).await;
    let store = Store::new(bus, who, TIMEOUT).await.expect("an inbox");
    let bucket = Bucket::new("sessions").unwrap();
    // The client flushed its inbox subscription: the first request is answered.
    store.create_stream(&bucket.config(1, Storage::File)).await.expect("the bucket");
    (store, bucket)
}

/// Adds `who` to the list at key "room", deciding on what it read; on a conflict (or a write
/// refused as in flight) it reads again and decides again. Returns how many refusals of each
/// kind it met.
async fn join(store: &Store<SimBus>, bucket: &Bucket, who: &str) -> (u32, u32) {
    let (mut conflicts, mut in_flight) = (0, 0);
    loop {
        let entry = bucket.entry(store, "room").await.expect("read");
        let (mut members, revision) = match entry {
            Some(Entry { revision, value: Some(v) }) => (String::from_utf8(v).unwrap(), revision),
            Some(Entry { revision, value: None }) => (String::new(), revision),
            None => (String::new(), 0),
        };
        members.push_str(who);
        members.push(' ');
        match bucket.put(store, "room", members.into_bytes(), Some(revision)).await {
            Ok(_) => return (conflicts, in_flight),
            Err(StoreError::WrongLastSequence(_)) => conflicts += 1,
            Err(StoreError::InFlight(_)) => in_flight += 1,
            Err(e) => panic!("{who}: {e}"),
        }
    }
}

/// Three workers join five times each, racing on one key; what each join met.
fn race(flight: Option<Duration>) -> Vec<(u32, u32)> {
    let mut sim = sim_with(1, flight);
    let conflicts = Arc::new(Mutex::new(Vec::new()));
    for who in ["w1", "w2", "w3"] {
        let conflicts = conflicts.clone();
        sim.client(who, async move {
            let (store, bucket) = store(who).await;
            for round in 0..5 {
                let met = join(&store, &bucket, &format!("{who}.{round}")).await;
                conflicts.lock().unwrap().push(met);
            }
            Ok(())
        });
    }
    sim.client("reader", async move {
        let (store, bucket) = store("reader").await;
        tokio::time::sleep(Duration::from_secs(20)).await;
        let entry = bucket.entry(&store, "room").await.unwrap().unwrap();
        let text = String::from_utf8(entry.value.unwrap()).unwrap();
        let mut members: Vec<&str> = text.split_whitespace().collect();
        members.sort();
        let expected: Vec<String> =
            ["w1", "w2", "w3"].iter().flat_map(|w| (0..5).map(move |r| format!("{w}.{r}"))).collect();
        assert_eq!(members, expected, "a join was lost or doubled");
        // A refused write takes no revision: 15 joins, 15 revisions.
        assert_eq!(entry.revision, 15);
        Ok(())
    });
    sim.run().unwrap();
    let met = conflicts.lock().unwrap().clone();
    assert_eq!(met.len(), 15);
    met
}

#[test]
fn workers_racing_on_one_key_lose_no_write() {
    let met = race(None);
    assert!(met.iter().map(|m| m.0).sum::<u32>() > 0, "the workers never raced: the test proves nothing");
    assert_eq!(met.iter().map(|m| m.1).sum::<u32>(), 0, "one server has nothing in flight");
}

/// On a cluster's stream, a write racing one still in process is refused as in flight, and
/// deciding again loses nothing either.
#[test]
fn on_a_cluster_writes_in_flight_are_refused_and_decided_again() {
    let met = race(Some(Duration::from_millis(30)));
    assert!(met.iter().map(|m| m.1).sum::<u32>() > 0, "no write was in flight: {met:?}");
}

#[test]
fn the_store_outlives_a_broker_restart_and_a_cut_off_worker_times_out() -> turmoil::Result {
    let mut sim = sim(2);
    let seen = Arc::new(Mutex::new(Vec::new()));
    {
        let seen = seen.clone();
        sim.client("w1", async move {
            let (store, bucket) = store("w1").await;
            let revision = bucket.put(&store, "s1", b"attached".to_vec(), Some(0)).await.unwrap();
            seen.lock().unwrap().push(format!("wrote {revision}"));
            // The broker restarts at 5 s; the client reconnects and restores its inbox.
            tokio::time::sleep(Duration::from_secs(10) - now()).await;
            let after = bucket.entry(&store, "s1").await;
            seen.lock().unwrap().push(format!("after the restart {after:?}"));
            // Cut off from the bus from 15 s to 25 s.
            tokio::time::sleep(Duration::from_secs(16) - now()).await;
            let cut = bucket.put(&store, "s1", b"detached".to_vec(), Some(revision)).await;
            seen.lock().unwrap().push(format!("cut off {cut:?}"));
            tokio::time::sleep(Duration::from_secs(30) - now()).await;
            let back = bucket.put(&store, "s1", b"detached".to_vec(), Some(revision)).await;
            seen.lock().unwrap().push(format!("back {back:?}"));
            Ok(())
        });
    }
    while sim.elapsed() < Duration::from_secs(5) {
        sim.step()?;
    }
    sim.bounce("bus");
    while sim.elapsed() < Duration::from_secs(15) {
        sim.step()?;
    }
    sim.partition("w1", "bus");
    while sim.elapsed() < Duration::from_secs(25) {
        sim.step()?;
    }
    sim.repair("w1", "bus");
    sim.run()?;
    let seen = seen.lock().unwrap();
    let cut = seen[2].as_str();
    // Cut off, the write either times out or is refused at once (the client saw the cut).
    let failed = cut == format!("cut off {:?}", Err::<u64, _>(StoreError::Timeout(TIMEOUT)))
        || cut.starts_with("cut off Err(Bus(");
    assert_eq!(seen[..2], ["wrote 1".to_owned(), "after the restart Ok(Some(Entry { revision: 1, value: Some([97, 116, 116, 97, 99, 104, 101, 100]) }))".to_owned()]);
    assert!(failed, "{seen:?}");
    // Nothing was written while cut off: the revision it decided on still holds.
    assert_eq!(seen[3], "back Ok(2)", "{seen:?}");
    Ok(())
}

/// Two workers append to one room's history at once; the stream republishes each message to the
/// room's subject once stored. Both listeners hear every acknowledged message once, in the
/// stream's order: one order for every member, whoever published.
#[test]
fn a_republishing_stream_gives_every_listener_one_order() -> turmoil::Result {
    use clientmq_bus::store::wire::{RePublish, StreamConfig};
    use clientmq_bus::store::{Expect, PubAck};
    use clientmq_bus::{BusMessage, Subscription};

    let mut sim = sim(3);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let heard = Arc::new(Mutex::new(Vec::new()));
    for who in ["l1", "l2"] {
        let heard = heard.clone();
        sim.client(who, async move {
            let bus = SimBus::connect(BUS, who);
            let mut sub = bus.subscribe("room.r1", None).await?;
            connected(&bus).await;
            let mut got = Vec::new();
            while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
                let msg: BusMessage = msg;
                got.push(msg.header("Nats-Sequence").unwrap().parse::<u64>().unwrap());
            }
            heard.lock().unwrap().push(got);
            Ok(())
        });
    }
    for who in ["w1", "w2"] {
        let acked = acked.clone();
        sim.client(who, async move {
            let bus = SimBus::connect(BUS, who);
            connected(&bus).await;
            let store = Store::new(bus, who, TIMEOUT).await.expect("an inbox");
            let config = StreamConfig {
                name: "history".into(),
                subjects: vec!["h.*".into()],
                max_msgs_per_subject: 100,
                max_msg_size: -1,
                duplicate_window: 120_000_000_000,
                storage: Storage::File,
                num_replicas: 1,
                allow_rollup_hdrs: false,
                deny_delete: true,
                allow_direct: false,
                republish: Some(RePublish { src: "h.*".into(), dest: "room.{{wildcard(1)}}".into() }),
            };
            store.create_stream(&config).await.expect("the stream");
            tokio::time::sleep(Duration::from_secs(1)).await;
            for n in 0..20 {
                let id = Expect { msg_id: Some(format!("{who}-{n}")), ..Expect::default() };
                let ack: PubAck = store.publish("h.r1", Vec::new(), vec![n], &id).await.expect("appended");
                acked.lock().unwrap().push(ack.seq);
            }
            Ok(())
        });
    }
    sim.run()?;
    let mut acked = acked.lock().unwrap().clone();
    acked.sort();
    assert_eq!(acked, (1..=40).collect::<Vec<u64>>(), "every append acknowledged once");
    let heard = heard.lock().unwrap();
    assert_eq!(heard.len(), 2);
    for got in heard.iter() {
        assert_eq!(got, &acked, "a listener heard other messages or another order");
    }
    Ok(())
}

/// A worker's cache: a follower of a bucket, cut off from the bus from 5 s to 12 s while another
/// client writes until about 9 s, so the last values are written while it is away. It notices
/// its reconnect (or the gap), follows again from where it was, and ends holding every key's
/// last value, having seen revisions only in increasing order.
#[test]
fn a_follower_cut_off_from_the_bus_catches_up_without_a_gap() -> turmoil::Result {
    use clientmq_bus::store::watch::Follower;
    use clientmq_bus::store::wire::DeliverPolicy;
    use std::collections::BTreeMap;

    let mut sim = sim(4);
    let cache = Arc::new(Mutex::new(BTreeMap::new()));
    let truth = Arc::new(Mutex::new(BTreeMap::new()));
    {
        let truth = truth.clone();
        sim.client("writer", async move {
            let (store, bucket) = store("writer").await;
            for n in 0..80u32 {
                let key = format!("k{}", n % 5);
                bucket.put(&store, &key, n.to_string().into_bytes(), None).await.expect("a write");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            for k in 0..5 {
                let key = format!("k{k}");
                let entry = bucket.entry(&store, &key).await.unwrap().unwrap();
                truth.lock().unwrap().insert(key, (entry.revision, entry.value.unwrap()));
            }
            Ok(())
        });
    }
    {
        let cache = cache.clone();
        sim.client("cache", async move {
            let (store, bucket) = store("cache").await;
            let mut follower =
                Follower::new(&store, &bucket.stream(), "$KV.sessions.>", DeliverPolicy::LastPerSubject);
            let mut last = 0;
            loop {
                let msg = tokio::time::timeout(Duration::from_secs(15), follower.next()).await;
                let Ok(msg) = msg else { break };
                assert!(msg.seq > last, "revision {} after {last}", msg.seq);
                last = msg.seq;
                let key = msg.subject.trim_start_matches("$KV.sessions.").to_owned();
                cache.lock().unwrap().insert(key, (msg.seq, msg.data));
            }
            Ok(())
        });
    }
    while sim.elapsed() < Duration::from_secs(5) {
        sim.step()?;
    }
    sim.partition("cache", "bus");
    while sim.elapsed() < Duration::from_secs(12) {
        sim.step()?;
    }
    sim.repair("cache", "bus");
    sim.run()?;
    let (cache, truth) = (cache.lock().unwrap(), truth.lock().unwrap());
    assert_eq!(truth.len(), 5);
    assert_eq!(*cache, *truth, "the cache missed a change");
    Ok(())
}
