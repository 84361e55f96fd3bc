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
//! Sessions live in this worker's memory: run one instance.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clientmq_core::{ConnectionId, Target};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::wire::{Outgoing, reason};
use crate::{ChatConfig, ChatState, wire};
use clientmq_bus::contract::{
    self, ANNOUNCE_EVERY, CHAT_QUEUE, GATEWAY_SILENT_AFTER, IDS_PER_MESSAGE, Subjects, ToGateway, header,
};
use clientmq_bus::{Bus, BusMessage, BusStatus, Subscription};

/// A list sent to a gateway (orphans) is sent again after this long without an answer.
const RESEND_AFTER: Duration = Duration::from_secs(2);

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

/// What the worker knows of one gateway.
#[derive(Debug)]
struct Gateway {
    last_seen: Instant,
    /// Its bus epoch at the last announcement: a new one means it reconnected to the bus.
    epoch: Option<u64>,
    /// Counted gone: its connections were treated as disconnected.
    gone: bool,
    /// Connections whose sessions were detached while it was counted gone, still to be told.
    orphans: BTreeSet<ConnectionId>,
    /// The orphans last sent, when, and under which number, until the gateway acknowledges
    /// that very message.
    told: Option<(Instant, u64, Vec<ConnectionId>)>,
    sent_lists: u64,
}

impl Gateway {
    fn new(now: Instant) -> Self {
        Gateway {
            last_seen: now,
            epoch: None,
            gone: false,
            orphans: BTreeSet::new(),
            told: None,
            sent_lists: 0,
        }
    }
}

struct Worker<B> {
    bus: Arc<B>,
    subjects: Subjects,
    name: String,
    state: ChatState,
    /// The gateway of every connection that sent a request and has not ended.
    routes: BTreeMap<ConnectionId, String>,
    gateways: BTreeMap<String, Gateway>,
    observer: Option<WorkerObserver>,
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
    let mut pcast = subscribe(&*bus, &subjects.requests_of("pcast"), Some(CHAT_QUEUE)).await;
    let ping_subject = subjects.request("mq.PingPong").expect("a valid subject");
    let mut ping = subscribe(&*bus, &ping_subject, Some(CHAT_QUEUE)).await;
    let mut chat = subscribe(&*bus, &subjects.requests_of("chat"), Some(CHAT_QUEUE)).await;
    let mut disconnects = subscribe(&*bus, &subjects.disconnected(), Some(CHAT_QUEUE)).await;
    let mut alive = subscribe(&*bus, &subjects.alive_all(), None).await;
    let mut inbox = subscribe(&*bus, &format!("{}.wk.{}.>", subjects.prefix(), config.name), None).await;
    let mut state = ChatState::new(config.chat, rng, now());
    if config.observer.is_some() {
        state.keep_facts();
    }
    let mut w = Worker {
        observer: config.observer,
        state,
        bus: bus.clone(),
        subjects,
        name: config.name,
        routes: BTreeMap::new(),
        gateways: BTreeMap::new(),
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
            Some(msg) = alive.next() => w.alive(msg).await,
            Some(msg) = pcast.next() => w.request(msg).await,
            Some(msg) = chat.next() => w.request(msg).await,
            Some(msg) = ping.next() => w.ping(msg).await,
            else => break,
        }
        w.observe();
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
                        self.subjects.gateway(self.routes.get(conn)?, ToGateway::Event)
                    }
                };
                let mut msg = BusMessage::new(subject, payload).with(header::TYPE, event_type);
                if let Target::Connection(conn) = target {
                    msg = msg.with(header::CONNECTION, conn.to_string());
                }
                Some(msg)
            }
            Outgoing::Subscription(s) => {
                let g = self.routes.get(&s.conn)?;
                let name = if s.subscribe { header::SUBSCRIBE } else { header::UNSUBSCRIBE };
                let msg = BusMessage::new(self.subjects.gateway(g, ToGateway::Subscription), Vec::new())
                    .with(header::CONNECTION, s.conn.to_string())
                    .with(name, contract::topic_value(s.topic, &s.room));
                Some(msg)
            }
        }
    }

    fn seen(&mut self, g: &str) -> &mut Gateway {
        self.gateways.entry(g.to_owned()).or_insert_with(|| Gateway::new(now()))
    }

    /// A latency probe, as the embedded backend answers it: the payload back, no state.
    async fn ping(&self, msg: BusMessage) {
        if let Some(reply) = msg.reply {
            self.publish(BusMessage::new(reply, msg.payload).with(header::TYPE, "mq.PingPongResponse")).await;
        }
    }

    async fn request(&mut self, msg: BusMessage) {
        let Some(reply) = msg.reply.clone() else { return };
        let prefix = format!("{}.req.", self.subjects.prefix());
        let request_type = msg.subject.strip_prefix(&prefix).unwrap_or_default().to_owned();
        let g = msg.header(header::GATEWAY).filter(|g| contract::token_ok(g)).map(str::to_owned);
        let conn = msg.header(header::CONNECTION).and_then(|c| c.parse::<ConnectionId>().ok());
        let (Some(g), Some(conn)) = (g, conn) else {
            let refused = wire::error(reason::MALFORMED);
            return self
                .publish(BusMessage::new(reply, refused.payload).with(header::TYPE, refused.reply_type))
                .await;
        };
        // A request is proof of life, as good as an announcement.
        self.revive(&g).await;
        self.seen(&g).last_seen = now();
        self.routes.insert(conn, g);
        let claims = msg
            .header(header::APPLICATION)
            .zip(msg.header(header::CLAIMS))
            .and_then(|(application, claims)| contract::parse_claims(application, claims));
        let answer = self.state.handle(conn, &request_type, &msg.payload, claims.as_ref(), now());
        self.flush().await;
        self.publish(BusMessage::new(reply, answer.payload).with(header::TYPE, answer.reply_type)).await;
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
        self.routes.remove(&conn);
        self.state.disconnected(conn, now());
    }

    async fn alive(&mut self, msg: BusMessage) {
        let Some(g) = self.subjects.parse_alive(&msg.subject).map(str::to_owned) else { return };
        self.revive(&g).await;
        let epoch = msg.header(header::BUS_EPOCH).and_then(|e| e.parse::<u64>().ok());
        let gateway = self.seen(&g);
        gateway.last_seen = now();
        let reconnected = gateway.epoch.is_some() && gateway.epoch != epoch;
        gateway.epoch = epoch;
        if reconnected {
            // It was away from the bus: its disconnect notices of that time may be lost.
            self.sync(&g).await;
        }
        self.send_orphans(&g).await;
    }

    /// A gateway counted gone is heard from again: its orphans are still to be told.
    async fn revive(&mut self, g: &str) {
        if let Some(gateway) = self.gateways.get_mut(g)
            && gateway.gone
        {
            tracing::info!(gateway = %g, orphans = gateway.orphans.len(), "gateway back");
            gateway.gone = false;
            gateway.told = None;
            self.tell(WorkerEvent::GatewayBack { gateway: g.to_owned() });
        }
    }

    async fn send_orphans(&mut self, g: &str) {
        let Some(gateway) = self.gateways.get_mut(g) else { return };
        let due = gateway.told.as_ref().is_none_or(|(at, _, _)| now() >= *at + RESEND_AFTER);
        if gateway.gone || gateway.orphans.is_empty() || !due {
            return;
        }
        let ids: Vec<ConnectionId> = gateway.orphans.iter().take(IDS_PER_MESSAGE).copied().collect();
        gateway.sent_lists += 1;
        let n = gateway.sent_lists;
        gateway.told = Some((now(), n, ids.clone()));
        let reply = format!("{}.wk.{}.orphans.{g}.{n}", self.subjects.prefix(), self.name);
        let msg = BusMessage::new(self.subjects.gateway(g, ToGateway::Orphans), contract::ids_payload(&ids))
            .reply_to(reply);
        self.publish(msg).await;
    }

    /// Asks gateway `g` which of the connections the worker knows there are gone.
    async fn sync(&mut self, g: &str) {
        let known: Vec<ConnectionId> =
            self.routes.iter().filter(|(_, gw)| gw.as_str() == g).map(|(id, _)| *id).collect();
        let reply = format!("{}.wk.{}.sync.{g}", self.subjects.prefix(), self.name);
        for chunk in known.chunks(IDS_PER_MESSAGE) {
            let msg =
                BusMessage::new(self.subjects.gateway(g, ToGateway::Sync), contract::ids_payload(chunk))
                    .reply_to(reply.clone());
            self.publish(msg).await;
        }
    }

    /// A gateway answered a sync or an orphans list.
    async fn answer(&mut self, msg: BusMessage) {
        // `P.wk.<worker>.<kind>.<gateway>[.<n>]`
        let rest = msg.subject.rsplit_once(".wk.").map(|(_, r)| r).unwrap_or_default();
        let mut parts = rest.split('.');
        let (_, kind, g, n) = (parts.next(), parts.next(), parts.next().unwrap_or_default(), parts.next());
        match kind {
            Some("sync") => {
                for conn in contract::parse_ids(&msg.payload) {
                    if self.routes.get(&conn).map(String::as_str) == Some(g) {
                        self.end(conn);
                    }
                }
                self.flush().await;
            }
            Some("orphans") => {
                // The gateway closed what it was sent; the rest (if any) goes with the next
                // announcement.
                if let Some(gateway) = self.gateways.get_mut(g)
                    && let Some((_, sent_as, _)) = &gateway.told
                    && n.and_then(|n| n.parse::<u64>().ok()) == Some(*sent_as)
                    && let Some((_, _, sent)) = gateway.told.take()
                {
                    for id in sent {
                        gateway.orphans.remove(&id);
                    }
                }
            }
            _ => {}
        }
    }

    /// Timers: sessions' grace periods and idle rooms, gateways gone silent.
    async fn tick(&mut self) {
        self.state.expire(now());
        if self.bus.status().connected {
            let silent: Vec<String> = self
                .gateways
                .iter()
                .filter(|(_, gw)| !gw.gone && now() >= gw.last_seen + GATEWAY_SILENT_AFTER)
                .map(|(g, _)| g.clone())
                .collect();
            for g in silent {
                self.gone(&g);
            }
        }
        self.flush().await;
    }

    /// Gateway `g` is counted gone: each of its connections is treated as disconnected, and the
    /// ones with a session are remembered as orphans in case it comes back.
    fn gone(&mut self, g: &str) {
        let conns: Vec<ConnectionId> =
            self.routes.iter().filter(|(_, gw)| gw.as_str() == g).map(|(id, _)| *id).collect();
        tracing::warn!(gateway = %g, connections = conns.len(), "gateway silent; its sessions are detached");
        self.tell(WorkerEvent::GatewayGone { gateway: g.to_owned(), connections: conns.len() });
        let bound: Vec<ConnectionId> =
            conns.iter().filter(|c| self.state.session_of(c).is_some()).copied().collect();
        for conn in conns {
            self.end(conn);
        }
        let gateway = self.seen(g);
        gateway.gone = true;
        gateway.orphans.extend(bound);
    }

    /// The worker's own bus connection changed. Back after an absence: every gateway gets a
    /// fresh silence window and is asked which connections ended meanwhile.
    async fn bus_changed(&mut self, before: BusStatus, after: BusStatus) {
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
        let gateways: Vec<String> = self.gateways.keys().cloned().collect();
        for g in gateways {
            self.seen(&g).last_seen = now();
            self.sync(&g).await;
        }
    }
}
