//! The store model held to the real thing: random sequences of store operations (stream
//! creation, conditional publishes, reads, key-value writes and deletes) run against a real
//! nats-server with JetStream and against [`StoreModel`] behind a [`ModelBus`], and every answer
//! must be the same. A sequence that differs is printed whole, with its seed, so it replays:
//! `STORE_SEED=<seed> STORE_SEQUENCES=1 cargo test -p clientmq-bus --test store_model`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clientmq_bus::access::NatsArgs;
use clientmq_bus::nats::NatsBus;
use clientmq_bus::store::kv::Bucket;
use clientmq_bus::store::loopback::ModelBus;
use clientmq_bus::store::model::Version;
use clientmq_bus::store::watch::Watch;
use clientmq_bus::store::wire::{DeliverPolicy, RePublish, Storage, StreamConfig};
use clientmq_bus::store::{Expect, MsgQuery, Store, StoreError};
use clientmq_bus::{Bus, BusMessage, Subscription};
use clientmq_testkit::nats::{Nats, NatsCluster};
use clientmq_testkit::procs::{Log, wait_for};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

const WAIT: Duration = Duration::from_secs(10);

/// One operation, named by what a sequence varies: which stream, subject, key, condition.
#[derive(Debug, Clone)]
enum Op {
    /// Creates stream `which` (0 or 1) with settings `variant` (different settings under one
    /// name are refused; stream 1's subjects overlap stream 0's in some variants).
    Create {
        which: usize,
        variant: usize,
    },
    Publish {
        subject: usize,
        msg_id: Option<u8>,
        expect: Cond,
        rollup: bool,
        data: Vec<u8>,
        header: bool,
    },
    Get(Query),
    Info {
        which: usize,
    },
    KvPut {
        key: usize,
        expect: Cond,
        data: Vec<u8>,
    },
    KvDelete {
        key: usize,
        expect: Cond,
    },
    KvEntry {
        key: usize,
    },
    /// A publish to a subject no stream takes, with a reply subject.
    Stray,
    /// Starts following stream 0 (at most two watches a sequence; more do nothing).
    Watch {
        policy: usize,
        filter: usize,
        start: u64,
    },
    /// Asks whether watch `which`'s consumer still exists, or (`stop`) deletes it first.
    WatchAlive {
        which: usize,
        stop: bool,
    },
}

const POLICIES: [DeliverPolicy; 5] = [
    DeliverPolicy::All,
    DeliverPolicy::Last,
    DeliverPolicy::New,
    DeliverPolicy::ByStartSequence,
    DeliverPolicy::LastPerSubject,
];

#[derive(Debug, Clone)]
enum Query {
    Seq(u64),
    Last(usize),
    Next(u64, usize),
}

/// A publish's expected last subject sequence, relative to what the model holds.
#[derive(Debug, Clone, Copy)]
enum Cond {
    None,
    Current,
    /// The current last plus this (a stale or future revision).
    Off(i64),
}

/// Literal subjects publishes go to, and the patterns reads ask for (under a sequence's root).
const SUBJECTS: [&str; 4] = ["t.a", "t.b", "t.c.d", "u.a"];
const PATTERNS: [&str; 6] = ["t.a", "t.b", "t.c.d", "t.*", "t.>", "u.a"];
const KEYS: [&str; 3] = ["k1", "k.2", "k_3"];

fn stream_config(root: &str, which: usize, variant: usize, replicas: usize) -> StreamConfig {
    let subjects = match (which, variant % 3) {
        (0, _) => vec![format!("{root}.t.>")],
        (_, 0) => vec![format!("{root}.u.*")],
        (_, 1) => vec![format!("{root}.u.a"), format!("{root}.w")],
        (_, _) => vec![format!("{root}.t.a")],
    };
    StreamConfig {
        name: format!("{root}_S{which}"),
        subjects,
        max_msgs_per_subject: [-1, 1, 2][variant % 3],
        max_msg_size: [-1, 64][variant / 2 % 2],
        duplicate_window: 120_000_000_000,
        storage: Storage::Memory,
        num_replicas: replicas,
        allow_rollup_hdrs: variant.is_multiple_of(2),
        deny_delete: false,
        allow_direct: variant.is_multiple_of(5),
        republish: match (which, variant) {
            (0, 4 | 5) => {
                Some(RePublish { src: format!("{root}.t.*"), dest: format!("{root}.rp.{{{{wildcard(1)}}}}") })
            }
            (0, 6 | 7) => Some(RePublish { src: format!("{root}.t.>"), dest: format!("{root}.rp.>") }),
            _ => None,
        },
    }
}

fn generate(rng: &mut SmallRng, len: usize) -> Vec<Op> {
    let cond = |rng: &mut SmallRng| match rng.random_range(0..6) {
        0 | 1 => Cond::None,
        2 | 3 => Cond::Current,
        4 => Cond::Off(-1),
        _ => Cond::Off(rng.random_range(1..3)),
    };
    let data =
        |rng: &mut SmallRng| (0..rng.random_range(0..12)).map(|_| rng.random_range(b'a'..=b'z')).collect();
    let mut ops = vec![Op::Create { which: 0, variant: rng.random_range(0..8) }];
    for _ in 0..len {
        let op = match rng.random_range(0..22) {
            0 => Op::Create { which: rng.random_range(0..2), variant: rng.random_range(0..8) },
            1..=6 => Op::Publish {
                subject: rng.random_range(0..SUBJECTS.len()),
                msg_id: rng.random_bool(0.3).then(|| rng.random_range(0..4)),
                expect: cond(rng),
                rollup: rng.random_bool(0.1),
                data: data(rng),
                header: rng.random_bool(0.3),
            },
            7 => Op::Get(Query::Seq(rng.random_range(0..12))),
            8 | 9 => Op::Get(Query::Last(rng.random_range(0..PATTERNS.len()))),
            10 => Op::Get(Query::Next(rng.random_range(0..12), rng.random_range(0..PATTERNS.len()))),
            11 => Op::Info { which: rng.random_range(0..2) },
            12..=14 => Op::KvPut { key: rng.random_range(0..KEYS.len()), expect: cond(rng), data: data(rng) },
            15 | 16 => Op::KvDelete { key: rng.random_range(0..KEYS.len()), expect: cond(rng) },
            17 | 18 => Op::KvEntry { key: rng.random_range(0..KEYS.len()) },
            19 => Op::Stray,
            20 if rng.random_bool(0.3) => {
                Op::WatchAlive { which: rng.random_range(0..2), stop: rng.random_bool(0.3) }
            }
            _ => Op::Watch {
                policy: rng.random_range(0..POLICIES.len()),
                filter: rng.random_range(0..=PATTERNS.len()),
                start: rng.random_range(1..8),
            },
        };
        ops.push(op);
    }
    ops
}

/// One side of the comparison: a store client and the names of one sequence.
struct Side<B: Bus> {
    store: Store<B>,
    root: String,
    bucket: Bucket,
    /// What streams republished under the sequence's root.
    republished: B::Subscription,
    watches: Vec<Watch<B>>,
    replicas: usize,
    /// Whether a created stream is waited for until it hears its subjects (see [`settled`]).
    settle: bool,
}

impl<B: Bus> Side<B> {
    /// The last sequence of `subject` on this side (0 when none): what `Cond` counts from.
    async fn last_of(&self, stream: &str, subject: &str) -> u64 {
        match self.store.get(stream, &MsgQuery::LastBySubject(subject.to_owned())).await {
            Ok(msg) => msg.seq,
            Err(_) => 0,
        }
    }

    /// Runs `op`; the answer, written so that both sides' can be compared.
    async fn run(&mut self, op: &Op, expect_seq: Option<u64>) -> String {
        let root = &self.root;
        let stream0 = format!("{root}_S0");
        match op {
            Op::Create { which, variant } => {
                let config = stream_config(root, *which, *variant, self.replicas);
                let created = self.store.create_stream(&config).await.map(drop);
                if created.is_ok() && self.settle {
                    settled(&self.store, &config.subjects[0]).await;
                }
                show(created)
            }
            Op::Publish { subject, msg_id, rollup, data, header, .. } => {
                let expect = Expect {
                    msg_id: msg_id.map(|i| format!("m{i}")),
                    last_subject_seq: expect_seq,
                    rollup_subject: *rollup,
                };
                let headers = if *header { vec![("X-Tag".to_owned(), "v 1".to_owned())] } else { Vec::new() };
                let subject = format!("{root}.{}", SUBJECTS[*subject]);
                show(self.store.publish(&subject, headers, data.clone(), &expect).await)
            }
            Op::Get(query) => {
                let query = match query {
                    Query::Seq(seq) => MsgQuery::Seq(*seq),
                    Query::Last(p) => MsgQuery::LastBySubject(format!("{root}.{}", PATTERNS[*p])),
                    Query::Next(from, p) => {
                        MsgQuery::NextBySubject { from: *from, subject: format!("{root}.{}", PATTERNS[*p]) }
                    }
                };
                show(self.store.get(&stream0, &query).await)
            }
            Op::Info { which } => show(self.store.stream_state(&format!("{root}_S{which}")).await),
            Op::KvPut { key, data, .. } => {
                show(self.bucket.put(&self.store, KEYS[*key], data.clone(), expect_seq).await)
            }
            Op::KvDelete { key, .. } => show(self.bucket.delete(&self.store, KEYS[*key], expect_seq).await),
            Op::KvEntry { key } => show(self.bucket.entry(&self.store, KEYS[*key]).await),
            Op::Watch { .. } if self.watches.len() >= 2 => "no more watches".to_owned(),
            Op::Watch { policy, filter, start } => {
                // Filter index past the patterns: no filter.
                let filter = PATTERNS.get(*filter).map_or(String::new(), |p| format!("{root}.{p}"));
                let policy = POLICIES[*policy];
                let start = (policy == DeliverPolicy::ByStartSequence).then_some(*start);
                let watch = self.store.watch(&stream0, &filter, policy, start).await;
                let shown = show(watch.as_ref().map(drop).map_err(Clone::clone));
                self.watches.extend(watch.ok());
                shown
            }
            Op::WatchAlive { which, stop } => match self.watches.get(*which) {
                None => "no such watch".to_owned(),
                Some(watch) if *stop => {
                    let stopped = show(watch.delete().await);
                    format!("{stopped} then {}", show(watch.alive().await))
                }
                Some(watch) => show(watch.alive().await),
            },
            Op::Stray => show(
                self.store.publish(&format!("{root}.nowhere"), Vec::new(), vec![1], &Expect::default()).await,
            ),
        }
    }
}

/// An answer as text: the value, or the error (whose wording JetStream owns, so the model must
/// match it too).
fn show<T: std::fmt::Debug>(result: Result<T, StoreError>) -> String {
    format!("{result:?}")
}

/// The kinds of answer a run must have seen from both sides, or it proved little.
const MUST_SEE: [&str; 13] = [
    "republished",
    "watched",
    "err_code: 10014",
    "duplicate: false",
    "duplicate: true",
    "WrongLastSequence",
    "NotFound",
    "NoResponders",
    "NoStream",
    "err_code: 10058",
    "err_code: 10065",
    "err_code: 10054",
    "rollup",
];

async fn sequence<R: Bus, M: Bus>(
    real: &mut Side<R>,
    model: &mut Side<M>,
    ops: &[Op],
    seen: &mut BTreeMap<&'static str, u64>,
) -> Result<(), String> {
    let mut log = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        // The condition is resolved on the model; as long as the two agree, it is the same number.
        let (cond, subject) = match op {
            Op::Publish { expect, subject, .. } => {
                (*expect, format!("{}.{}", model.root, SUBJECTS[*subject]))
            }
            Op::KvPut { expect, key, .. } | Op::KvDelete { expect, key } => {
                (*expect, format!("$KV.{}.{}", model.root, KEYS[*key]))
            }
            _ => (Cond::None, String::new()),
        };
        let stream = if subject.starts_with("$KV") {
            model.bucket.stream()
        } else if subject.starts_with(&format!("{}.u", model.root)) {
            format!("{}_S1", model.root)
        } else {
            format!("{}_S0", model.root)
        };
        let expect_seq = match cond {
            Cond::None => None,
            Cond::Current => Some(model.last_of(&stream, &subject).await),
            Cond::Off(d) => Some(model.last_of(&stream, &subject).await.saturating_add_signed(d)),
        };
        let (a, b) = (real.run(op, expect_seq).await, model.run(op, expect_seq).await);
        log.push(format!("{i}: {op:?} expect {expect_seq:?}\n     real:  {a}"));
        if a != b {
            log.push(format!("     model: {b}"));
            return Err(log.join("\n"));
        }
        // What the watches got: the model pushes at once; the real server as soon as it can,
        // so wait for as many, then compare them in order.
        for (i, (real_watch, model_watch)) in real.watches.iter_mut().zip(&mut model.watches).enumerate() {
            // The model's are queued already; anything more the real server sends shows as a
            // difference at the next operation or the end.
            let expected = pushed(model_watch, 0, Duration::ZERO).await;
            let got = pushed(real_watch, expected.len(), Duration::ZERO).await;
            if got != expected {
                log.push(format!("     watch {i} real:  {got:?}\n     watch {i} model: {expected:?}"));
                return Err(log.join("\n"));
            }
        }
        for kind in MUST_SEE.iter().filter(|k| a.contains(*k)) {
            *seen.entry(kind).or_default() += 1;
        }
    }
    Ok(())
}

/// The messages `watch` has been pushed: at least `count` (waiting up to a second each), then
/// whatever else comes within `linger`.
async fn pushed<B: Bus>(watch: &mut Watch<B>, count: usize, linger: Duration) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let wait = if got.len() < count { Duration::from_secs(1) } else { linger };
        match tokio::time::timeout(wait, watch.next()).await {
            Ok(Some(pushed)) => got.push(show(pushed)),
            _ => return got,
        }
    }
}

async fn side<B: Bus>(bus: Arc<B>, root: &str, inbox: &str, replicas: usize, settle: bool) -> Side<B> {
    let republished = bus.subscribe(&format!("{root}.rp.>"), None).await.unwrap();
    let store = Store::new(bus, inbox, Duration::from_secs(5)).await.expect("an inbox");
    let bucket = Bucket::new(root).unwrap();
    let config = bucket.config(replicas, Storage::Memory);
    if store.create_stream(&config).await.is_ok() && settle {
        settled(&store, &config.subjects[0]).await;
    }
    Side { store, root: root.to_owned(), bucket, republished, watches: Vec::new(), replicas, settle }
}

/// Waits until the stream that takes `pattern` hears it where this client is connected.
///
/// A stream's leader subscribes to its subjects, and on a cluster that interest reaches the
/// other servers a moment after the creation is answered: a publish from a client on another
/// server in that moment finds no responders and stores nothing (seen under load at
/// `STORE_SEED=7`). The model is of a settled cluster and has no such moment, so the real side
/// waits it out, with publishes that every stream refuses and none stores (they expect a stream
/// of another name).
async fn settled<B: Bus>(store: &Store<B>, pattern: &str) {
    let subject: Vec<&str> = pattern.split('.').map(|t| if t == "*" || t == ">" { "a" } else { t }).collect();
    let subject = subject.join(".");
    let probe = vec![("Nats-Expected-Stream".to_owned(), "settling".to_owned())];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match store.publish(&subject, probe.clone(), Vec::new(), &Expect::default()).await {
            Err(StoreError::NoResponders) => {}
            // 10060: the stream that took it is not the one expected. Heard, and not stored.
            Err(StoreError::Api { err_code: 10060, .. }) => return,
            other => panic!("{subject}: a probe no stream should take was answered {other:?}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "{subject}: not heard within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl<B: Bus> Side<B> {
    /// The messages republished so far, as text: each was sent before the acknowledgement of
    /// its publish, so all have arrived by now; the wait only confirms nothing more comes.
    async fn drain_republished(&mut self) -> Vec<String> {
        let mut got = Vec::new();
        while let Ok(Some(mut msg)) =
            tokio::time::timeout(Duration::from_millis(50), self.republished.next()).await
        {
            msg.headers.sort();
            // A time stamp's value is the server's clock: only its presence is compared.
            for (name, value) in &mut msg.headers {
                if name == "Nats-Time-Stamp" {
                    *value = "<time>".into();
                }
            }
            got.push(format!("{} {:?} {:?}", msg.subject, msg.headers, msg.payload));
        }
        got
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs `sequences` random sequences from `seed` on `real` (streams with `replicas` copies) and
/// on the model, and panics at the first difference; what kinds of answer were seen.
async fn compare<R: Bus>(
    real_bus: Arc<R>,
    replicas: usize,
    seed: u64,
    sequences: u64,
) -> BTreeMap<&'static str, u64> {
    // The model behaves as the version of the server it is compared with.
    let version = Version::of(clientmq_testkit::nats::nats_server_version(), replicas > 1);
    let mut seen = BTreeMap::new();
    for case in seed..seed + sequences {
        let mut rng = SmallRng::seed_from_u64(case);
        let ops = generate(&mut rng, 60);
        let root = format!("r{case}");
        let mut real = side(real_bus.clone(), &root, &format!("real{case}"), replicas, true).await;
        let model_bus = Arc::new(ModelBus::new(version));
        let mut model = side(model_bus, &root, &format!("model{case}"), replicas, false).await;
        if let Err(log) = sequence(&mut real, &mut model, &ops, &mut seen).await {
            panic!("the model differs from nats-server (replicas {replicas}), STORE_SEED={case}:\n{log}");
        }
        *seen.entry("watched").or_default() += model.watches.len() as u64;
        for (i, watch) in real.watches.iter_mut().enumerate() {
            let extra = pushed(watch, 0, Duration::from_millis(20)).await;
            assert!(extra.is_empty(), "watch {i} got more than the model's, STORE_SEED={case}: {extra:?}");
        }
        for watch in real.watches.drain(..) {
            let _ = watch.stop().await; // perhaps deleted already by the sequence
        }
        let (a, b) = (real.drain_republished().await, model.drain_republished().await);
        assert_eq!(a, b, "republished messages differ, STORE_SEED={case}:\n{ops:#?}");
        *seen.entry("republished").or_default() += a.len() as u64;
    }
    eprintln!("answers seen: {seen:?}");
    seen
}

fn assert_saw_all(seen: &BTreeMap<&'static str, u64>, sequences: u64) {
    let missing: Vec<_> = MUST_SEE.iter().filter(|k| !seen.contains_key(*k)).collect();
    assert!(missing.is_empty(), "{sequences} sequences never got {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_model_answers_as_jetstream_does() {
    let dir = std::env::temp_dir().join(format!("clientmq-store-model-{}", std::process::id()));
    let log = Log::default();
    let nats = Nats::start_with(&log, &["-js", "-sd", &dir.display().to_string()]).await;
    let real_bus = Arc::new(NatsBus::connect(&nats.url(), "store-model").await.unwrap());
    wait_for(WAIT, "connected", &log, || async { real_bus.status().connected }).await;
    let sequences = env("STORE_SEQUENCES", 40);
    let seen = compare(real_bus, 1, env("STORE_SEED", 0), sequences).await;
    if sequences >= 40 {
        assert_saw_all(&seen, sequences);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A three-node cluster (kept running while the returned value lives) and a bus to it, once
/// JetStream there has elected its meta leader.
async fn cluster_bus(log: &Log, dir: &std::path::Path, name: &str) -> (NatsCluster, Arc<NatsBus>) {
    let cluster = NatsCluster::start(log, dir).await;
    let args = NatsArgs { nats: Some(cluster.urls()), ..NatsArgs::default() };
    let real_bus = Arc::new(NatsBus::open(&args.access().unwrap().unwrap(), name).await.unwrap());
    wait_for(WAIT, "connected", log, || async { real_bus.status().connected }).await;
    let probe = Store::new(real_bus.clone(), "probe", Duration::from_secs(2)).await.unwrap();
    let ready = Bucket::new("ready").unwrap().config(3, Storage::Memory);
    wait_for(Duration::from_secs(30), "JetStream in the cluster", log, || async {
        probe.create_stream(&ready).await.is_ok()
    })
    .await;
    (cluster, real_bus)
}

/// The same on a three-node cluster with three replicas: there a stream's leader checks a
/// publish before proposing it to the others, a path of its own in nats-server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_model_answers_as_a_clustered_jetstream_does() {
    let dir = std::env::temp_dir().join(format!("clientmq-store-cluster-{}", std::process::id()));
    let log = Log::default();
    let (_cluster, real_bus) = cluster_bus(&log, &dir, "store-cluster").await;
    let sequences = env("STORE_CLUSTER_SEQUENCES", 10);
    compare(real_bus, 3, env("STORE_SEED", 0), sequences).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two writes sent back to back to one subject of a clustered stream: while the first is in
/// process, the leader refuses a second that expects the subject's last sequence (10164) or
/// repeats the first's message id (10158), and stores nothing. The model does that within its
/// flight window (`StoreModel::set_flight`), and as after the first outside it. Each real
/// second write must get one of the model's two answers, word for word (which one is the
/// race's), the streams must agree after every pair, and the real cluster must give the
/// in-flight answer at least once, or the model's window stands for nothing real.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_in_flight_on_a_cluster_are_refused_as_the_model_refuses_them() {
    let version = Version::of(clientmq_testkit::nats::nats_server_version(), true);
    assert_eq!(version, Version::V2_10Clustered, "the model's flight is that of nats-server 2.10 and later");
    let dir = std::env::temp_dir().join(format!("clientmq-store-flight-{}", std::process::id()));
    let log = Log::default();
    let (_cluster, real_bus) = cluster_bus(&log, &dir, "store-flight").await;
    let flight = Duration::from_millis(200);
    let (in_flight, after) = (Arc::new(ModelBus::new(version)), Arc::new(ModelBus::new(version)));
    in_flight.set_flight(flight);
    let real = Store::new(real_bus, "flight-real", Duration::from_secs(5)).await.unwrap();
    let in_flight = Store::new(in_flight, "flight-in", Duration::from_secs(5)).await.unwrap();
    let after = Store::new(after, "flight-after", Duration::from_secs(5)).await.unwrap();
    let config = StreamConfig { num_replicas: 3, ..stream_config("fl", 0, 0, 3) };
    real.create_stream(&config).await.unwrap();
    settled(&real, &config.subjects[0]).await;
    in_flight.create_stream(&config).await.unwrap();
    after.create_stream(&config).await.unwrap();
    let (subject, mut last, mut refused) = ("fl.t.a", 0, BTreeMap::<String, u32>::new());
    for round in 0..36u64 {
        let id = Some(format!("m{round}"));
        let (first, second) = match round % 3 {
            0 => (Expect { last_subject_seq: Some(last), ..Expect::default() }, Some(last)),
            1 => (Expect { msg_id: id.clone(), ..Expect::default() }, None),
            _ => (Expect::default(), Some(last)),
        };
        let second = match second {
            Some(seq) => Expect { last_subject_seq: Some(seq), ..Expect::default() },
            None => Expect { msg_id: id, ..Expect::default() },
        };
        let answers = [
            pair(&real, subject, &first, &second).await,
            pair(&in_flight, subject, &first, &second).await,
            pair(&after, subject, &first, &second).await,
        ];
        let [(real_a, real_b), (in_a, in_b), (after_a, after_b)] = &answers;
        assert!(real_a == in_a && real_a == after_a, "round {round}: the first write: {answers:?}");
        assert_ne!(in_b, after_b, "round {round}: the model's window changed nothing: {answers:?}");
        assert!(real_b == in_b || real_b == after_b, "round {round}: {answers:?}");
        if real_b == in_b {
            *refused.entry(in_b.clone()).or_default() += 1;
        }
        let lasts = [
            last_seq(&real, &config.name, subject).await,
            last_seq(&in_flight, &config.name, subject).await,
            last_seq(&after, &config.name, subject).await,
        ];
        assert!(lasts.iter().all(|l| *l == lasts[0]), "round {round}: the streams differ: {lasts:?}");
        last = lasts[0];
        // The model's window closes before the next pair (the real one closed long before).
        tokio::time::sleep(flight + Duration::from_millis(50)).await;
    }
    eprintln!("second writes refused in flight on the cluster: {refused:?}");
    assert!(refused.keys().any(|k| k.contains("wrong last sequence")), "{refused:?}");
    assert!(refused.keys().any(|k| k.contains("in process")), "{refused:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two writes to `subject` sent back to back; their answers as text.
async fn pair<B: Bus>(store: &Store<B>, subject: &str, first: &Expect, second: &Expect) -> (String, String) {
    let (a, b) = tokio::join!(
        store.publish(subject, Vec::new(), vec![1], first),
        store.publish(subject, Vec::new(), vec![2], second)
    );
    (show(a), show(b))
}

/// The last sequence of `subject` in stream `stream` (0: none).
async fn last_seq<B: Bus>(store: &Store<B>, stream: &str, subject: &str) -> u64 {
    let got = store.get(stream, &MsgQuery::LastBySubject(subject.to_owned())).await;
    got.map_or(0, |m| m.seq)
}

/// The client's request path: an answer that never comes is a timeout, and a request with no
/// responder (JetStream off) is told so at once.
#[tokio::test]
async fn without_jetstream_the_store_says_so() {
    let log = Log::default();
    let nats = Nats::start(&log).await;
    let bus = Arc::new(NatsBus::connect(&nats.url(), "store-off").await.unwrap());
    wait_for(WAIT, "connected", &log, || async { bus.status().connected }).await;
    let store = Store::new(bus.clone(), "off", Duration::from_millis(300)).await.unwrap();
    // A plain server answers JetStream's API with "no responders".
    assert_eq!(store.check().await, Err(StoreError::NoResponders));
    // A subscriber that never answers leaves the request to time out.
    let mut mute = bus.subscribe("mute.>", None).await.unwrap();
    clientmq_testkit::nats::in_place(&*bus, &mut mute, "mute.probe").await;
    let silent = store.publish("mute.x", Vec::new(), vec![1], &Expect::default()).await;
    assert_eq!(silent, Err(StoreError::Timeout(Duration::from_millis(300))));
    let heard: Option<BusMessage> = mute.next().await;
    assert_eq!(heard.map(|m| m.subject), Some("mute.x".to_owned()));
}
