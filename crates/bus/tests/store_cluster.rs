//! The store on a three-node nats-server cluster with three replicas: the node leading a
//! bucket's stream killed while a client writes and another follows loses no acknowledged
//! write, and both go on once the cluster has elected a new leader.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clientmq_bus::Bus;
use clientmq_bus::access::NatsArgs;
use clientmq_bus::nats::NatsBus;
use clientmq_bus::store::kv::Bucket;
use clientmq_bus::store::watch::Follower;
use clientmq_bus::store::wire::{DeliverPolicy, Storage};
use clientmq_bus::store::{Store, StoreError};
use clientmq_testkit::nats::NatsCluster;
use clientmq_testkit::procs::{Log, wait_for};

const WAIT: Duration = Duration::from_secs(30);

async fn connect(cluster: &NatsCluster, name: &str, log: &Log) -> Store<NatsBus> {
    let args = NatsArgs { nats: Some(cluster.urls()), ..NatsArgs::default() };
    let bus = Arc::new(NatsBus::open(&args.access().unwrap().unwrap(), name).await.unwrap());
    wait_for(WAIT, "connected", log, || async { bus.status().connected }).await;
    Store::new(bus, name, Duration::from_secs(2)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_writes_loses_no_acknowledged_one() {
    let dir = std::env::temp_dir().join(format!("clientmq-store-kill-{}", std::process::id()));
    let log = Log::default();
    let mut cluster = NatsCluster::start(&log, &dir).await;
    let (writer, reader) = (connect(&cluster, "writer", &log).await, connect(&cluster, "reader", &log).await);
    let bucket = Bucket::new("sessions").unwrap();
    wait_for(WAIT, "the bucket on three replicas", &log, || async {
        writer.create_stream(&bucket.config(3, Storage::File)).await.is_ok()
    })
    .await;

    let followed = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let following = {
        let (followed, stream) = (followed.clone(), bucket.stream());
        let mut follower = Follower::new(&reader, &stream, "$KV.sessions.>", DeliverPolicy::LastPerSubject);
        tokio::spawn(async move {
            loop {
                let msg = follower.next().await;
                let key = msg.subject.trim_start_matches("$KV.sessions.").to_owned();
                let mut followed = followed.lock().unwrap();
                let before = followed.insert(key.clone(), (msg.seq, msg.data));
                assert!(
                    before.is_none_or(|(seq, _)| seq < msg.seq),
                    "{key}: a revision again or out of order"
                );
            }
        })
    };

    // The node to kill: the one that orders the bucket's writes (nodes are named n0, n1, n2).
    let leader =
        writer.stream_leader(&bucket.stream()).await.unwrap().expect("a clustered stream has a leader");
    let victim: usize = leader.trim_start_matches('n').parse().expect("a node's name");

    // Every write expects the key's revision it last wrote: a write acknowledged twice, or one
    // lost, shows as a conflict that should not be.
    let mut acked: BTreeMap<String, (u64, Vec<u8>)> = BTreeMap::new();
    let mut longest_gap = Duration::ZERO;
    for n in 0..300u32 {
        if n == 100 {
            cluster.nodes[victim].stop().await;
        }
        let key = format!("k{}", n % 10);
        let value = n.to_string().into_bytes();
        let started = Instant::now();
        let expect = acked.get(&key).map_or(0, |(rev, _)| *rev);
        let revision = loop {
            match bucket.put(&writer, &key, value.clone(), Some(expect)).await {
                Ok(revision) => break revision,
                // A timed-out write may have been taken: if so the key holds it now.
                Err(StoreError::WrongLastSequence(now)) => {
                    let entry = bucket.entry(&writer, &key).await.unwrap().unwrap();
                    assert_eq!(
                        (entry.revision, entry.value.as_ref()),
                        (now, Some(&value)),
                        "{key}: another write"
                    );
                    break now;
                }
                Err(e) => {
                    assert!(started.elapsed() < WAIT, "no write taken for {WAIT:?}: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        longest_gap = longest_gap.max(started.elapsed());
        acked.insert(key, (revision, value));
    }
    eprintln!("longest wait for one write across the node's death: {longest_gap:?}");

    for (key, (revision, value)) in &acked {
        let entry = bucket.entry(&writer, key).await.unwrap().unwrap();
        assert_eq!((entry.revision, entry.value.as_ref()), (*revision, Some(value)), "{key} after the kill");
    }
    wait_for(WAIT, "the follower caught up", &log, || async { *followed.lock().unwrap() == acked }).await;
    following.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
