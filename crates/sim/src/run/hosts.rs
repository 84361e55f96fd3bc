//! The hosts of a run: gateways (with the embedded backend, or in a fleet on the simulated bus),
//! the bus and the chat workers of a fleet, client groups, and the control client that carries
//! out the timeline's actions inside the simulation.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clientmq_chat::ChatConfig;
use clientmq_chat::worker::{self, WorkerConfig, WorkerObserver};
use clientmq_core::seed::derive;
use clientmq_server::BusBackend;
use clientmq_server::{EmbeddedBackend, InvariantSink, Listener, Server, ServerConfig, TraceSink};

use super::faults::{Crash, act, instant};
use super::world::World;
use super::{Broken, RunOptions};
use crate::backend::SimBackend;
use crate::bus::facts::StoreFacts;
use crate::bus::{RouteObserver, SharedStore, SimBus, StoreObserver, serve_broker};
use crate::client;
use crate::scenario::Scenario;
use crate::trace::{self, Body, Digest, Proc, Record, Source, Trace};
use clientmq_bus::BusMessage;
use clientmq_bus::contract::{Subjects, header::TYPE};
use clientmq_bus::store::model::{StoreModel, Version};

/// Where the simulated bus listens.
pub const BUS: &str = "bus:4222";
/// Subject prefix of a simulated fleet.
pub const PREFIX: &str = "clientmq";

/// turmoil's listener behind the server's [`Listener`] trait.
pub struct SimListener(pub turmoil::net::TcpListener);

impl Listener for SimListener {
    type Stream = turmoil::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)> {
        self.0.accept().await
    }
}

/// The configuration of gateway process `proc`: the scenario's settings, its trace going to
/// the run's trace and its checked-mode reports to the run's `broken` cell.
pub fn server_config(
    scenario: &Scenario,
    seed: u64,
    trace: &Trace,
    proc: &Proc,
    broken: &Broken,
    options: &RunOptions,
) -> ServerConfig {
    let s = &scenario.server;
    let secs = |v: Option<f64>, d: Duration| v.map_or(d, Duration::from_secs_f64);
    let shards = s.shards.unwrap_or(1).max(1);
    let mut c = ServerConfig { shards, seed: Some(seed), ..ServerConfig::default() };
    let g = &mut c.gateway;
    g.tokens = clientmq_server::tokens::policy(false, &s.tokens, None, None).expect("static tokens");
    g.max_connections = s.max_connections.unwrap_or(g.max_connections);
    g.heartbeat_interval = secs(s.heartbeat_secs, g.heartbeat_interval);
    g.close_timeout = secs(s.close_timeout_secs, g.close_timeout);
    g.request_timeout = secs(s.request_timeout_secs, g.request_timeout);
    g.server_request_timeout = g.request_timeout;
    g.drain_window = secs(s.drain_window_secs, g.drain_window);
    g.max_pending_requests = s.max_pending_requests.unwrap_or(g.max_pending_requests);
    g.max_requests_per_sec = s.max_requests_per_sec.unwrap_or(g.max_requests_per_sec);
    g.request_burst = s.request_burst.unwrap_or(g.request_burst);
    c.max_connections_per_address = s.max_connections_per_address.unwrap_or(c.max_connections_per_address);
    c.max_handshakes = s.max_handshakes.unwrap_or(c.max_handshakes);
    c.handshake_timeout = secs(s.handshake_timeout_secs, c.handshake_timeout);
    c.outbound_queue = s.outbound_queue.unwrap_or(c.outbound_queue);
    c.writes_per_turn = s.writes_per_turn.unwrap_or(c.writes_per_turn);
    c.max_frame_bytes = s.max_frame_bytes.unwrap_or(c.max_frame_bytes);
    c.gateway.max_message_size = c.max_frame_bytes;
    c.drain_deadline = secs(s.drain_deadline_secs, c.drain_deadline);
    let (sink, tag, plant) = (trace.clone(), proc.clone(), options.plant.clone());
    c.trace = Some(TraceSink(Arc::new(move |shard: usize, e: &clientmq_core::Event| {
        let shard = (shards > 1).then_some(shard as u16);
        let mut kind = e.kind.clone();
        if let Some(plant) = &plant {
            plant(&mut kind);
        }
        sink.push(Record::gateway(trace::now(), tag.clone(), shard, e.conn, kind))
    })));
    let (broken, tag) = (broken.clone(), proc.clone());
    c.check = Some(InvariantSink(Arc::new(move |what: String| {
        broken.lock().expect("broken cell").get_or_insert(format!("{tag}: {what}"));
    })));
    c
}

/// A gateway host: on each start a new process (its own seed, derived by the host's name and
/// incarnation, so connection ids never repeat),
/// with the embedded backend, or in a fleet on the bus under a route key of its own.
pub(super) fn gateway(sim: &mut turmoil::Sim<'_>, world: &World, host: &str) {
    let incarnation = Arc::new(AtomicU64::new(0));
    let (world, host_name) = (world.clone(), host.to_owned());
    sim.host(host, move || {
        let n = incarnation.fetch_add(1, Ordering::Relaxed);
        let seed = derive(world.scenario.seed, &format!("{host_name}/{n}"));
        let proc = Proc::new(&host_name, n as u32);
        let mut config =
            server_config(&world.scenario, seed, &world.trace, &proc, &world.broken, &world.options);
        let (world, host) = (world.clone(), host_name.clone());
        async move {
            let listener = SimListener(turmoil::net::TcpListener::bind("0.0.0.0:8080").await?);
            let server = match &world.scenario.fleet {
                None => {
                    // A restarted process starts with an empty backend too.
                    let embedded = EmbeddedBackend::new(ChatConfig::default(), Some(seed));
                    Server::start(config, Arc::new(SimBackend::sharing(embedded, world.mode.clone())))
                }
                Some(_) => {
                    let route_key = format!("{host}.{n}");
                    config.gateway.route_key = route_key.clone();
                    let timeout = config.gateway.request_timeout;
                    let bus = BusBackend::new(SimBus::connect(BUS, &route_key), PREFIX, &route_key, timeout);
                    Server::start(config, Arc::new(SimBackend::sharing(bus, world.mode.clone())))
                }
            };
            world.servers.lock().expect("servers").insert(host, server.clone());
            server.run(listener).await;
            Ok(())
        }
    });
}

/// The bus host: a broker with NATS core's semantics, whose restart loses every subscription
/// and message in flight, and JetStream's subset (`clientmq_bus::store`), whose streams outlive
/// a restart as a file store does. With `flight`, the store is a cluster's stream that keeps
/// each write in process that long (see `Fleet::store_flight_ms`).
pub fn bus(sim: &mut turmoil::Sim<'_>, trace: Option<Trace>, flight: Option<Duration>) {
    let store = SharedStore::default();
    if let Some(flight) = flight {
        let mut model = StoreModel::new(Version::V2_10Clustered);
        model.set_flight(u64::try_from(flight.as_nanos()).unwrap_or(u64::MAX));
        *store.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = model;
    }
    // Outside the host: what the facts so far say outlives a broker restart, as the store does.
    let facts = Arc::new(std::sync::Mutex::new(StoreFacts::new(PREFIX)));
    sim.host("bus", move || {
        let store = store.clone();
        // On the store, the store says what is true: workers may die before they could.
        let stored = trace.clone().map(|trace| -> StoreObserver {
            let facts = facts.clone();
            Arc::new(move |msg| {
                for event in facts.lock().expect("facts").stored(msg) {
                    trace.push(Record::worker(trace::now(), Proc::new(STORE, 0), event));
                }
            })
        });
        // Room events are traced with where they went: what the checker holds deliveries to.
        let observer = trace.clone().map(|trace| -> RouteObserver {
            let subjects = Subjects::new(PREFIX);
            Arc::new(move |msg: &BusMessage, to: Vec<String>| {
                // Orphans lists and their answers too: whether one was lost is what explore
                // reports reaching.
                let orphans = msg.subject.ends_with(".orphans") || msg.subject.contains(".orphans.");
                if subjects.parse_room(&msg.subject).is_some() || orphans {
                    let ty = msg.header(TYPE).unwrap_or_default();
                    let digest = Digest::of(ty, &msg.payload);
                    let body = Body::Published { subject: msg.subject.clone(), digest, to };
                    trace.push(Record { at: trace::now(), source: Source::Bus, body });
                }
            })
        });
        async move {
            serve_broker(4222, observer, store, stored).await?;
            Ok(())
        }
    });
}

/// The name facts read off the store go under in the trace.
pub const STORE: &str = "store";

/// A chat worker host: `clientmq-chat`'s code, reporting what it decides to the trace.
pub(super) fn chat_worker(
    sim: &mut turmoil::Sim<'_>,
    world: &World,
    host: &str,
    grace: Duration,
    store: bool,
) {
    let incarnation = Arc::new(AtomicU64::new(0));
    let (trace, seed, host_name) = (world.trace.clone(), world.scenario.seed, host.to_owned());
    sim.host(host, move || {
        let n = incarnation.fetch_add(1, Ordering::Relaxed);
        let proc = Proc::new(&host_name, n as u32);
        let trace = trace.clone();
        let observer = WorkerObserver(Arc::new(move |event| {
            trace.push(Record::worker(trace::now(), proc.clone(), event));
        }));
        let name = format!("{host_name}-{n}");
        let config = WorkerConfig {
            prefix: PREFIX.into(),
            chat: ChatConfig { session_grace: grace, ..ChatConfig::default() },
            seed: Some(derive(seed, &format!("{host_name}/{n}"))),
            name: name.clone(),
            observer: Some(observer),
            metrics: None,
        };
        async move {
            let bus = SimBus::connect(BUS, &name);
            if store {
                // Workers on the store compare times each wrote (a grace's end): one clock for all,
                // the simulated time, from whenever this one starts.
                let mut config = config;
                config.chat.wall_clock_start_ms = u64::try_from(trace::now().as_millis()).unwrap_or(u64::MAX);
                clientmq_chat::stored::worker::run(bus, config, 1, std::future::pending()).await?;
            } else {
                worker::run(bus, config, std::future::pending()).await;
            }
            Ok(())
        }
    });
}

/// A client group's host. A crash drops the group's sockets from inside, in client order:
/// turmoil's own crash drops a runtime's tasks in an order that depends on process-global ids.
pub(super) fn clients(sim: &mut turmoil::Sim<'_>, world: &World, group_index: usize) -> Arc<Crash> {
    let group = world.scenario.clients[group_index].clone();
    let gateways = world.scenario.gateways_of(&group);
    let (trace, crashed) = (world.trace.clone(), Arc::new(Crash::default()));
    let signal = crashed.clone();
    sim.host(group.name.clone(), move || {
        let (group, trace, crashed, gateways) =
            (group.clone(), trace.clone(), crashed.clone(), gateways.clone());
        async move {
            let start = tokio::time::Instant::now();
            let mut tasks = Vec::new();
            for i in 0..group.count {
                let offset = group.start_secs + group.spread_secs * i as f64 / group.count.max(1) as f64;
                let (group, trace, crashed, gateways) =
                    (group.clone(), trace.clone(), crashed.clone(), gateways.clone());
                tasks.push(tokio::spawn(async move {
                    let client = async {
                        tokio::time::sleep_until(start + Duration::from_secs_f64(offset)).await;
                        client::run(group, i, trace, gateways).await;
                    };
                    tokio::select! {
                        biased;
                        () = crashed.wait() => {}
                        () = client => {}
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
            Ok(())
        }
    });
    signal
}

/// The control client: the timeline's actions that happen inside the simulation (drain, server
/// requests, deliveries, backend modes), applied to every running gateway.
pub(super) fn control(sim: &mut turmoil::Sim<'_>, world: &World) {
    let steps: Vec<_> = world
        .scenario
        .timeline
        .iter()
        .filter(|s| super::faults::note(&s.action).is_none())
        .cloned()
        .collect();
    let world = world.clone();
    sim.client("control", async move {
        let start = tokio::time::Instant::now();
        let mut spawned = Vec::new();
        for step in steps {
            tokio::time::sleep_until(start + instant(step.at_secs)).await;
            spawned.extend(act(&step.action, &world.servers(), &world.mode, &world.trace).await);
        }
        // The host's tasks end with it: wait for the server requests still in flight.
        for task in spawned {
            let _ = task.await;
        }
        Ok(())
    });
}
