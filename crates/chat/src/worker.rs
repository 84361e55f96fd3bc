//! The chat logic served as a worker on the bus (`clientmq-chat`): the same [`ChatState`] the
//! embedded backend runs, fed from the bus and publishing what it decides.
//!
//! - Requests arrive on `P.req.pcast.>` and `P.req.chat.>` in queue group `chat` (and the
//!   latency probe `mq.PingPong`, echoed). What a request
//!   changes is published before its reply, events to `P.room.<R>` / `P.conv.<R>` or to the
//!   connection's gateway, subscription changes to the gateway: the gateway applies what is
//!   addressed to it in publish order, so the reply never overtakes its own effects.
//! - `P.disconnected` ends a connection: its session's grace period starts.
//! - Gateways announce themselves every second. One silent for [`GATEWAY_SILENT_AFTER`] is
//!   counted gone: each of its connections is treated as disconnected. If it comes back, the
//!   connections whose sessions were detached meanwhile are listed to it as orphans (it closes
//!   them with 3336 and the clients resume), and until it acknowledges the list is sent again.
//! - Whenever messages may have been lost (the worker reconnected to the bus, or a gateway did),
//!   the worker asks the gateway which of its connections are gone (sync) and ends those. While
//!   the worker itself is away from the bus it declares nobody gone.
//!
//! What is not chat (routes, gateway liveness, orphans, sync) is `clientmq_bus::gateways`, the
//! worker side of docs/nats.md that any stateful worker needs.
//!
//! Sessions live in this worker's memory: run one instance.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clientmq_core::{ConnectionId, Target};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::metrics::WorkerMetrics;
use crate::wire::{Outgoing, reason};
use crate::{ChatConfig, ChatState, wire};
use clientmq_bus::contract::{self, ANNOUNCE_EVERY, CHAT_QUEUE, Subjects, ToGateway, header};
use clientmq_bus::gateways::{Answered, Gateways};
use clientmq_bus::{Bus, BusMessage, BusStatus, Subscription};

/// What `clientmq-chat` needs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub prefix: String,
    pub chat: ChatConfig,
    /// Seeds session and room ids; random from the OS when absent.
    pub seed: Option<u64>,
    /// This worker's name on the bus (a subject token): where gateways answer it.
    pub name: String,
    /// Told what the worker decided, step by step (the simulator's checked mode); also makes the
    /// worker check its state's invariants after every step.
    pub observer: Option<WorkerObserver>,
    /// Where the worker counts what an operator sees on `--listen` (none in the simulator).
    pub metrics: Option<Arc<WorkerMetrics>>,
}

/// What a worker reports to its observer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEvent {
    /// Which connection holds which session changed.
    Fact(crate::Fact),
    /// A gateway was counted gone: its connections were treated as disconnected.
    GatewayGone { gateway: String, connections: usize },
    /// A gateway counted gone was heard from again.
    GatewayBack { gateway: String },
    /// On the store: connection `conn`'s end was recorded, so it holds no session again. Either
    /// its gateway said it ended, or the gateway was counted gone while `conn` held a session:
    /// then `conn` is an orphan of that gateway (`orphan_of`), which any worker that hears the
    /// gateway tells it to close. Read off the store, not told by a worker.
    EndRecorded { conn: ConnectionId, orphan_of: Option<String> },
    /// The worker's own connection to the bus came or went.
    Bus { connected: bool },
    /// The state broke one of its invariants.
    Broken(String),
}

impl std::fmt::Display for WorkerEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerEvent::Fact(fact) => write!(f, "{fact}"),
            WorkerEvent::GatewayGone { gateway, connections } => {
                write!(f, "gateway-gone {gateway} connections={connections}")
            }
            WorkerEvent::GatewayBack { gateway } => write!(f, "gateway-back {gateway}"),
            WorkerEvent::EndRecorded { conn, orphan_of: None } => write!(f, "end-recorded {conn}"),
            WorkerEvent::EndRecorded { conn, orphan_of: Some(g) } => {
                write!(f, "end-recorded {conn} orphan-of={g}")
            }
            WorkerEvent::Bus { connected: true } => write!(f, "bus-connected"),
            WorkerEvent::Bus { connected: false } => write!(f, "bus-lost"),
            WorkerEvent::Broken(what) => write!(f, "broken {what}"),
        }
    }
}

/// Receives [`WorkerEvent`]s.
#[derive(Clone)]
pub struct WorkerObserver(pub Arc<dyn Fn(WorkerEvent) + Send + Sync>);

impl std::fmt::Debug for WorkerObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerObserver")
    }
}

struct Worker<B> {
    bus: Arc<B>,
    subjects: Subjects,
    name: String,
    state: ChatState,
    /// Which gateway each connection came through, and each gateway's liveness.
    gateways: Gateways,
    observer: Option<WorkerObserver>,
    metrics: Option<Arc<WorkerMetrics>>,
    /// The bus client's failure totals the metrics have counted.
    failures_seen: (u64, u64),
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Runs the worker on `bus` until `shutdown` resolves.
pub async fn run<B: Bus>(bus: Arc<B>, config: WorkerConfig, shutdown: impl Future<Output = ()>) {
    let subjects = Subjects::new(&config.prefix);
    let rng = match config.seed {
        Some(seed) => StdRng::seed_from_u64(seed),
        None => rand::make_rng(),
    };
    let gateways = Gateways::new(subjects.clone(), &config.name);
    let Inputs { mut pcast, mut resubscribe, mut ping, mut chat, mut disconnects, mut alive, mut inbox } =
        inputs(&*bus, &subjects, &gateways).await;
    let mut state = ChatState::new(config.chat, rng, now());
    if config.observer.is_some() {
        state.keep_facts();
    }
    let metrics = config.metrics;
    if let Some(m) = &metrics {
        m.bus(bus.status().connected, false);
        m.serving(true);
    }
    let mut w = Worker {
        observer: config.observer,
        state,
        bus: bus.clone(),
        subjects,
        name: config.name,
        gateways,
        metrics,
        failures_seen: (0, 0),
    };
    tracing::info!(worker = %w.name, "chat worker serving pcast.* and chat.*");
    let mut seen = bus.status();
    tokio::pin!(shutdown);
    // On a fixed schedule, not a second after the last message: steady traffic must not starve
    // the check for silent gateways (the documented bound counts on one check a second).
    let mut next_check = now() + ANNOUNCE_EVERY;
    loop {
        if now() >= next_check {
            next_check += ANNOUNCE_EVERY;
        }
        let next = w.state.next_deadline().map_or(next_check, |d| d.min(next_check));
        // Biased: a fixed branch order keeps simulated runs reproducible.
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            () = bus.changed(seen) => {
                let status = bus.status();
                w.bus_changed(seen, status).await;
                seen = status;
            }
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => w.tick().await,
            Some(msg) = inbox.next() => w.answer(msg).await,
            Some(msg) = disconnects.next() => w.disconnected(msg).await,
            Some(msg) = resubscribe.next() => w.resubscribe(msg).await,
            Some(msg) = alive.next() => w.alive(msg).await,
            Some(msg) = pcast.next() => w.request(msg).await,
            Some(msg) = chat.next() => w.request(msg).await,
            Some(msg) = ping.next() => w.ping(msg).await,
            else => break,
        }
        w.observe();
    }
}

/// What a worker hears: requests and the latency probe (in queue group `chat`), disconnect
/// notices (in the group too), every gateway's announcements, and its own inbox.
pub(crate) struct Inputs<S> {
    pub pcast: S,
    /// Gateways back from an absence asking to be told again (`P.resubscribe`).
    pub resubscribe: S,
    pub ping: S,
    pub chat: S,
    pub disconnects: S,
    pub alive: S,
    pub inbox: S,
}

/// Subscribes to a worker's [`Inputs`].
pub(crate) async fn inputs<B: Bus>(
    bus: &B,
    subjects: &Subjects,
    gateways: &Gateways,
) -> Inputs<B::Subscription> {
    let ping = subjects.request("mq.PingPong").expect("a valid subject");
    Inputs {
        pcast: subscribe(bus, &subjects.requests_of("pcast"), Some(CHAT_QUEUE)).await,
        resubscribe: subscribe(bus, &subjects.resubscribe(), Some(CHAT_QUEUE)).await,
        ping: subscribe(bus, &ping, Some(CHAT_QUEUE)).await,
        chat: subscribe(bus, &subjects.requests_of("chat"), Some(CHAT_QUEUE)).await,
        disconnects: subscribe(bus, &subjects.disconnected(), Some(CHAT_QUEUE)).await,
        alive: subscribe(bus, &subjects.alive_all(), None).await,
        inbox: subscribe(bus, &gateways.inbox(), None).await,
    }
}

async fn subscribe<B: Bus>(bus: &B, subject: &str, queue: Option<&str>) -> B::Subscription {
    loop {
        match bus.subscribe(subject, queue).await {
            Ok(sub) => return sub,
            Err(e) => {
                tracing::warn!(%subject, error = %e, "cannot subscribe; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

impl<B: Bus> Worker<B> {
    fn tell(&self, event: WorkerEvent) {
        if let Some(observer) = &self.observer {
            (observer.0)(event);
        }
    }

    /// After every step: the facts, then the state's invariants.
    fn observe(&mut self) {
        if self.observer.is_none() {
            return;
        }
        for fact in self.state.take_facts() {
            self.tell(WorkerEvent::Fact(fact));
        }
        if let Err(broken) = self.state.check_invariants() {
            self.tell(WorkerEvent::Broken(broken.to_string()));
        }
    }

    async fn publish(&self, msg: BusMessage) {
        if let Err(e) = self.bus.publish(msg).await {
            tracing::debug!(error = %e, "not published");
        }
    }

    /// Publishes what the state decided, in the order it decided it.
    async fn flush(&mut self) {
        for item in self.state.take_outgoing() {
            if let Some(msg) = self.outgoing(item) {
                self.publish(msg).await;
            }
        }
    }

    fn outgoing(&self, item: Outgoing) -> Option<BusMessage> {
        match item {
            Outgoing::Event(wire::Delivery { target, event_type, payload }) => {
                let subject = match &target {
                    Target::Room(room) => self.subjects.room(clientmq_core::Topic::Room, room),
                    Target::Conversation(room) => {
                        self.subjects.room(clientmq_core::Topic::Conversation, room)
                    }
                    Target::Connection(conn) => {
                        self.subjects.gateway(self.gateways.route_of(conn)?, ToGateway::Event)
                    }
                };
                let mut msg = BusMessage::new(subject, payload).with(header::TYPE, event_type);
                if let Target::Connection(conn) = target {
                    msg = msg.with(header::CONNECTION, conn.to_string());
                }
                Some(msg)
            }
            Outgoing::Subscription(s) => {
                let g = self.gateways.route_of(&s.conn)?;
                let name = if s.subscribe { header::SUBSCRIBE } else { header::UNSUBSCRIBE };
                let msg = BusMessage::new(self.subjects.gateway(g, ToGateway::Subscription), Vec::new())
                    .with(header::CONNECTION, s.conn.to_string())
                    .with(name, contract::topic_value(s.topic, &s.room));
                Some(msg)
            }
        }
    }

    /// A latency probe, as the embedded backend answers it: the payload back, no state.
    async fn ping(&self, msg: BusMessage) {
        if let Some(reply) = msg.reply {
            self.publish(contract::answer(reply, "mq.PingPong", "mq.PingPongResponse".into(), msg.payload))
                .await;
        }
    }

    async fn request(&mut self, msg: BusMessage) {
        let Some(reply) = msg.reply.clone() else { return };
        let prefix = format!("{}.req.", self.subjects.prefix());
        let request_type = msg.subject.strip_prefix(&prefix).unwrap_or_default().to_owned();
        let g = msg.header(header::GATEWAY).filter(|g| contract::route_key_ok(g)).map(str::to_owned);
        let conn = msg.header(header::CONNECTION).and_then(|c| c.parse::<ConnectionId>().ok());
        let (Some(g), Some(conn)) = (g, conn) else {
            let refused = wire::error(reason::MALFORMED);
            return self
                .publish(BusMessage::new(reply, refused.payload).with(header::TYPE, refused.reply_type))
                .await;
        };
        // A request is proof of life, as good as an announcement.
        if self.gateways.request_from(&g, conn, now()) {
            self.tell(WorkerEvent::GatewayBack { gateway: g });
        }
        let claims = msg
            .header(header::APPLICATION)
            .zip(msg.header(header::CLAIMS))
            .and_then(|(application, claims)| contract::parse_claims(application, claims));
        let answer = self.state.handle(conn, &request_type, &msg.payload, claims.as_ref(), now());
        if let Some(m) = &self.metrics {
            m.request(&request_type, answer.reply_type == "mq.Error");
        }
        self.flush().await;
        self.publish(contract::answer(reply, &request_type, answer.reply_type, answer.payload)).await;
    }

    async fn disconnected(&mut self, msg: BusMessage) {
        let Some(conn) = msg.header(header::CONNECTION).and_then(|c| c.parse::<ConnectionId>().ok()) else {
            return;
        };
        self.end(conn);
        self.flush().await;
    }

    /// A connection is over as far as the worker is concerned: its session's grace starts.
    fn end(&mut self, conn: ConnectionId) {
        self.gateways.forget(&conn);
        self.state.disconnected(conn, now());
    }

    async fn alive(&mut self, msg: BusMessage) {
        let Some(announced) = self.gateways.announced(&msg, now()) else { return };
        if announced.revived {
            self.tell(WorkerEvent::GatewayBack { gateway: announced.gateway });
        }
        for msg in announced.publish {
            self.publish(msg).await;
        }
    }

    /// A gateway back from an absence lists its connections and their sessions: each that
    /// still holds its session is told again what it hears, then the gateway is answered.
    async fn resubscribe(&mut self, msg: BusMessage) {
        let answer = match contract::parse_sessions(&msg.payload) {
            Some(pairs) => {
                for (conn, session) in pairs {
                    self.state.resubscribe(conn, &session);
                }
                self.flush().await;
                BusMessage::new("", Vec::new())
            }
            None => BusMessage::new("", Vec::new()).with(header::ERROR, "malformed"),
        };
        if let Some(reply) = msg.reply {
            self.publish(BusMessage { subject: reply, ..answer }).await;
        }
    }

    /// A gateway answered a sync or an orphans list.
    async fn answer(&mut self, msg: BusMessage) {
        if let Answered::Sync(ended) = self.gateways.answered(&msg) {
            for conn in ended {
                self.end(conn);
            }
            self.flush().await;
        }
    }

    /// Timers: sessions' grace periods and idle rooms, gateways gone silent.
    async fn tick(&mut self) {
        self.state.expire(now());
        if let Some(m) = &self.metrics {
            m.sizes(&self.state.stats(), self.gateways.len());
            let (refused, other) = self.bus.new_failures(&mut self.failures_seen);
            m.connect_failed(refused, other);
        }
        if self.bus.status().connected {
            for g in self.gateways.silent(now()) {
                self.gone(&g);
            }
        }
        self.flush().await;
    }

    /// Gateway `g` is counted gone: each of its connections is treated as disconnected, and the
    /// ones with a session are remembered as orphans in case it comes back.
    fn gone(&mut self, g: &str) {
        let conns = self.gateways.connections_on(g);
        tracing::warn!(gateway = %g, connections = conns.len(), "gateway silent; its sessions are detached");
        self.tell(WorkerEvent::GatewayGone { gateway: g.to_owned(), connections: conns.len() });
        let bound: Vec<ConnectionId> =
            conns.iter().filter(|c| self.state.session_of(c).is_some()).copied().collect();
        for conn in conns {
            self.end(conn);
        }
        self.gateways.gone(g, bound, now());
    }

    /// The worker's own bus connection changed. Back after an absence: every gateway gets a
    /// fresh silence window and is asked which connections ended meanwhile.
    async fn bus_changed(&mut self, before: BusStatus, after: BusStatus) {
        if let Some(m) = &self.metrics {
            m.bus(after.connected, after.connected && after.epoch != before.epoch && after.epoch > 1);
        }
        if before.connected != after.connected || before.epoch != after.epoch {
            if before.connected && after.connected {
                // Lost and back between two looks: say both.
                self.tell(WorkerEvent::Bus { connected: false });
            }
            self.tell(WorkerEvent::Bus { connected: after.connected });
        }
        if !after.connected || after.epoch == before.epoch {
            return;
        }
        for msg in self.gateways.worker_back(now()) {
            self.publish(msg).await;
        }
    }
}
