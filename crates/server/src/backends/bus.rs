//! The gateway's side of the bus: a [`Backend`] that forwards client requests to workers and
//! applies what workers send back, in the order they sent it.
//!
//! - Requests go to `P.req.<type>` with a reply subject under the gateway's own subjects; the
//!   gateway reads everything addressed to it (replies, events to a connection, subscription
//!   changes, server requests, sync and orphans) from one subscription and hands each to the
//!   connection's shard from that one reader, so it applies what a worker published in the
//!   order it was published (this backend answers [`Answer::Later`], through the handle).
//! - Room and conversation events come from `P.room.<R>` / `P.conv.<R>`, subscribed while some
//!   shard has interest. Interest and requests go out through one ordered writer, so a join's
//!   interest is subscribed before the join itself is published.
//! - While the bus is away: `/readyz` is 503, new requests fail at once with
//!   `mq.Error{unavailable}`, requests in flight fail at once too, and disconnect notices that
//!   cannot be published are dropped (workers reconcile by sync when the gateway is back).
//!   Back, the gateway has the workers tell its connections again what they hear
//!   ([`resubscribe`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use clientmq_core::proto::{mq, pcast};
use clientmq_core::{BackendError, BackendRequest, ConnectionId, Reply, Revision, Target, Topic, close};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use clientmq_bus::contract::{self, IDS_PER_MESSAGE, Subjects, ToGateway, header};
use clientmq_bus::{Bus, BusMessage, NO_RESPONDERS, Subscription};

use crate::port::{Answer, Backend, Connections};

mod resubscribe;
#[cfg(test)]
mod tests;

/// A request waiting for its reply: under which gateway token, until when.
struct Waiting {
    token: u64,
    until: Instant,
}

/// What the ordered writer does, in the order it was asked.
enum Op {
    Request {
        token: u64,
        msg: BusMessage,
    },
    /// An answer the gateway gives without asking anyone (unavailable, malformed).
    Answer {
        token: u64,
        result: Result<Reply, BackendError>,
    },
    Publish(BusMessage),
    /// Answers a subscription message once the interest asked before it is in place at the
    /// server.
    Acknowledge(BusMessage),
    Interest {
        shard: usize,
        topic: Topic,
        room: String,
        on: bool,
    },
}

struct Shared<B> {
    bus: Arc<B>,
    subjects: Subjects,
    route_key: String,
    request_timeout: Duration,
    ops: mpsc::UnboundedSender<Op>,
    /// Requests waiting for their reply, by this backend's own token (shards number theirs
    /// separately).
    pending: Mutex<BTreeMap<u64, Waiting>>,
    next_token: AtomicU64,
    /// Disconnect notices that could not be published (the bus was away).
    dropped_notices: AtomicU64,
    /// Resubscribe lists waiting for their answer, by number (see `resubscribe`).
    resubscribes: Mutex<BTreeMap<u64, tokio::sync::oneshot::Sender<BusMessage>>>,
    next_resubscribe: AtomicU64,
}

impl<B> Shared<B> {
    fn take(&self, token: u64) -> Option<Waiting> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&token)
    }

    /// The bus went away: nothing in flight will be answered.
    async fn fail_pending(&self, gateway: &Connections) {
        let all = std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        for (_, w) in all {
            answer(gateway, w.token, Err(BackendError::Unavailable)).await;
        }
    }

    /// Forgets requests the gateway has timed out by now (their reply, if any, would be late).
    fn forget_expired(&self) {
        let now = Instant::now();
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).retain(|_, w| w.until > now);
    }
}

/// The gateway's backend when workers sit on a bus. See the module doc.
pub struct BusBackend<B: Bus> {
    shared: Arc<Shared<B>>,
    /// Taken by [`Backend::attach`], which starts the writer.
    writer: Mutex<Option<mpsc::UnboundedReceiver<Op>>>,
}

impl<B: Bus> BusBackend<B> {
    /// A backend on `bus` under `prefix`, as gateway `route_key` (a subject token, unique per
    /// process: a restarted gateway is a new one to the workers).
    pub fn new(bus: Arc<B>, prefix: &str, route_key: &str, request_timeout: Duration) -> Self {
        let (ops, writer) = mpsc::unbounded_channel();
        let shared = Shared {
            bus,
            subjects: Subjects::new(prefix),
            route_key: route_key.to_owned(),
            request_timeout,
            ops,
            pending: Mutex::new(BTreeMap::new()),
            next_token: AtomicU64::new(0),
            dropped_notices: AtomicU64::new(0),
            resubscribes: Mutex::new(BTreeMap::new()),
            next_resubscribe: AtomicU64::new(0),
        };
        BusBackend { shared: Arc::new(shared), writer: Mutex::new(Some(writer)) }
    }

    /// Disconnect notices dropped because the bus was away.
    pub fn dropped_notices(&self) -> u64 {
        self.shared.dropped_notices.load(Ordering::Relaxed)
    }
}

fn error_reply(reason: &str) -> Reply {
    Reply { reply_type: "mq.Error".into(), payload: mq::Error { reason: reason.into() }.encode_to_vec() }
}

impl<B: Bus> Backend for BusBackend<B> {
    fn attach(&self, gateway: Connections) {
        let Some(writer) = self.writer.lock().unwrap_or_else(PoisonError::into_inner).take() else {
            tracing::error!("a bus backend serves one gateway; second attach ignored");
            return;
        };
        tokio::spawn(write(self.shared.clone(), writer, gateway.clone()));
        tokio::spawn(read_inbox(self.shared.clone(), gateway.clone()));
        tokio::spawn(announce(self.shared.clone(), gateway));
    }

    fn request(&self, req: BackendRequest) -> Answer {
        let s = &self.shared;
        let token = req.token;
        let answer = |result| Op::Answer { token, result };
        // Even an answer decided here goes through the writer: in order after what it was
        // asked before.
        if !s.bus.status().connected {
            let _ = s.ops.send(answer(Err(BackendError::Unavailable)));
            return Answer::Later;
        }
        let Some(subject) = s.subjects.request(&req.request_type) else {
            let _ = s.ops.send(answer(Ok(error_reply("malformed"))));
            return Answer::Later;
        };
        let ours = s.next_token.fetch_add(1, Ordering::Relaxed);
        let until = Instant::now() + s.request_timeout + Duration::from_secs(1);
        s.pending.lock().unwrap_or_else(PoisonError::into_inner).insert(ours, Waiting { token, until });
        let mut msg = BusMessage::new(subject, req.payload)
            .reply_to(s.subjects.reply(&s.route_key, ours))
            .with(header::GATEWAY, s.route_key.as_str())
            .with(header::CONNECTION, req.conn.to_string())
            .with(header::REMOTE, req.remote.to_string())
            .with(header::TIMEOUT_MS, s.request_timeout.as_millis().to_string());
        if let Some(session) = req.session_id {
            msg = msg.with(header::SESSION, session);
        }
        for (name, value) in req.claims.as_deref().map(contract::claims_headers).into_iter().flatten() {
            msg = msg.with(name, value);
        }
        let _ = s.ops.send(Op::Request { token: ours, msg });
        Answer::Later
    }

    fn disconnected(&self, event: pcast::ConnectionDisconnected) {
        let s = &self.shared;
        let msg = BusMessage::new(s.subjects.disconnected(), event.encode_to_vec())
            .with(header::GATEWAY, s.route_key.as_str())
            .with(header::CONNECTION, event.connection_id.as_str());
        let _ = s.ops.send(Op::Publish(msg));
    }

    fn interest(&self, shard: usize, topic: Topic, room: &str, on: bool) {
        let _ = self.shared.ops.send(Op::Interest { shard, topic, room: room.to_owned(), on });
    }

    fn ready(&self) -> bool {
        self.shared.bus.status().connected
    }
}

/// The ordered writer: requests, notices and interest, one at a time, in order.
async fn write<B: Bus>(s: Arc<Shared<B>>, mut ops: mpsc::UnboundedReceiver<Op>, gateway: Connections) {
    // Rooms and conversations subscribed, with the shards that want them and their reader.
    let mut rooms: BTreeMap<(Topic, String), (BTreeSet<usize>, JoinHandle<()>)> = BTreeMap::new();
    // Room subscriptions sent to the server, and how many of them a flush's answer confirmed.
    let mut subscribed = 0u64;
    let confirmed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    while let Some(op) = ops.recv().await {
        match op {
            Op::Request { token, msg } => {
                if let Err(e) = s.bus.publish(msg).await {
                    tracing::debug!(error = %e, "request not published");
                    gateway.bus_metrics().publish_failed();
                    if let Some(w) = s.take(token) {
                        answer(&gateway, w.token, Err(BackendError::Unavailable)).await;
                    }
                }
            }
            // Decided here, without a worker: malformed, or unavailable while the bus is away.
            Op::Answer { token, result } => answer(&gateway, token, result).await,
            Op::Acknowledge(msg) => {
                // Answered once the server confirmed (a flush's answer) every room subscription
                // sent so far, those of the interest ops before this one included: a worker that
                // publishes once it has the answer is heard. With none unconfirmed, at once: in
                // a hot room most changes subscribe a connection to a room the gateway hears
                // already, and a round trip each slowed the workers' sweeps past their bound
                // (explore seed 660,010,254). The flush is waited for apart: in line, every
                // acknowledgement held back the interest of the ops after it (a resumed
                // connection's subscription reached the server a third of a second after it
                // was applied, explore seed 640,006,629).
                let empty = BusMessage::new("", Vec::new());
                if confirmed.load(Ordering::Acquire) >= subscribed {
                    respond(&*s.bus, &gateway, &msg, empty).await;
                    continue;
                }
                let (s, gateway, confirmed) = (s.clone(), gateway.clone(), confirmed.clone());
                tokio::spawn(async move {
                    match s.bus.flush().await {
                        Ok(()) => {
                            confirmed.fetch_max(subscribed, Ordering::AcqRel);
                            respond(&*s.bus, &gateway, &msg, empty).await;
                        }
                        Err(e) => tracing::debug!(error = %e, "subscription not acknowledged"),
                    }
                });
            }
            Op::Publish(msg) => {
                if s.bus.publish(msg).await.is_err() {
                    gateway.bus_metrics().publish_failed();
                    s.dropped_notices.fetch_add(1, Ordering::Relaxed);
                }
            }
            Op::Interest { shard, topic, room, on: true } => {
                let key = (topic, room);
                if let Some((shards, _)) = rooms.get_mut(&key) {
                    shards.insert(shard);
                    continue;
                }
                let subject = s.subjects.room(topic, &key.1);
                match s.bus.subscribe(&subject, None).await {
                    Ok(sub) => {
                        subscribed += 1;
                        let reader = tokio::spawn(read_room(sub, topic, key.1.clone(), gateway.clone()));
                        rooms.insert(key, (BTreeSet::from([shard]), reader));
                    }
                    Err(e) => tracing::warn!(%subject, error = %e, "cannot subscribe to a room"),
                }
            }
            Op::Interest { shard, topic, room, on: false } => {
                let key = (topic, room);
                if let Some((shards, _)) = rooms.get_mut(&key) {
                    shards.remove(&shard);
                    if shards.is_empty()
                        && let Some((_, reader)) = rooms.remove(&key)
                    {
                        // Dropping the reader drops its subscription: unsubscribed.
                        reader.abort();
                    }
                }
            }
        }
    }
    for (_, (_, reader)) in rooms {
        reader.abort();
    }
}

async fn read_room<S: Subscription>(mut sub: S, topic: Topic, room: String, gateway: Connections) {
    while let Some(msg) = sub.next().await {
        let event_type = match event_type(&msg) {
            Ok(ty) => ty,
            Err(dropped) => {
                gateway.bus_metrics().dropped(dropped.reason());
                continue;
            }
        };
        let target = match topic {
            Topic::Room => Target::Room(room.clone()),
            Topic::Conversation => Target::Conversation(room.clone()),
        };
        gateway.deliver(target, event_type, msg.payload.clone()).await;
    }
}

/// Everything addressed to this gateway, in the order it was published.
async fn read_inbox<B: Bus>(s: Arc<Shared<B>>, gateway: Connections) {
    let subject = s.subjects.to_gateway(&s.route_key);
    let mut sub = loop {
        match s.bus.subscribe(&subject, None).await {
            Ok(sub) => break sub,
            Err(e) => {
                tracing::warn!(%subject, error = %e, "cannot subscribe; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    while let Some(msg) = sub.next().await {
        let Some(what) = s.subjects.parse_to_gateway(&s.route_key, &msg.subject) else { continue };
        if let Err(dropped) = take(&s, &gateway, what, msg).await {
            gateway.bus_metrics().dropped(dropped.reason());
        }
    }
}

/// Why a message from a worker was not applied (docs/bad-inputs.md, the bus rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dropped {
    /// No `Clientmq-Connection`, or not a connection id.
    ConnectionHeader,
    /// A connection this gateway does not hold.
    UnknownConnection,
    /// An event or server request without `Clientmq-Type`.
    NoType,
    /// A `Clientmq-Type` that is not a message type name.
    BadType,
    /// A subscription value that is not `room R` or `conversation R`.
    BadHeader,
    /// A sync or orphans list longer than [`IDS_PER_MESSAGE`].
    OversizedList,
    /// A sync or orphans list with a line that is not a connection id.
    BadList,
}

impl Dropped {
    fn reason(self) -> &'static str {
        match self {
            Dropped::ConnectionHeader => "connection-header",
            Dropped::UnknownConnection => "unknown-connection",
            Dropped::NoType => "no-type",
            Dropped::BadType => "bad-type",
            Dropped::BadHeader => "bad-header",
            Dropped::OversizedList => "oversized-list",
            Dropped::BadList => "bad-list",
        }
    }
}

/// The type a worker gave an event or a request: present, and a message type name.
fn event_type(msg: &BusMessage) -> Result<&str, Dropped> {
    let ty = msg.header(header::TYPE).ok_or(Dropped::NoType)?;
    if contract::type_ok(ty) { Ok(ty) } else { Err(Dropped::BadType) }
}

/// Applies one message addressed to this gateway, or says why not (a request to a client is
/// answered even then: its worker waits for the answer).
async fn take<B: Bus>(
    s: &Shared<B>,
    gateway: &Connections,
    what: ToGateway,
    msg: BusMessage,
) -> Result<(), Dropped> {
    if let ToGateway::Reply(token) = what {
        let Some(w) = s.take(token) else { return Ok(()) }; // timed out, or not ours
        if msg.status == Some(NO_RESPONDERS) {
            answer(gateway, w.token, Err(BackendError::NoWorker)).await;
            return Ok(());
        }
        let reply_type = msg.header(header::TYPE).unwrap_or_default().to_owned();
        if !reply_type.is_empty() && !contract::type_ok(&reply_type) {
            gateway.answer(w.token, Err(BackendError::Failed("reply type".into()))).await;
            return Err(Dropped::BadType);
        }
        gateway.answer(w.token, Ok(Reply { reply_type, payload: msg.payload })).await;
        return Ok(());
    }
    if let ToGateway::Resubscribed(n) = what {
        let waiting = s.resubscribes.lock().unwrap_or_else(PoisonError::into_inner).remove(&n);
        if let Some(tx) = waiting {
            let _ = tx.send(msg);
        }
        return Ok(());
    }
    if let ToGateway::Sync | ToGateway::Orphans = what {
        let ids = match id_list(&msg.payload) {
            Ok(ids) => ids,
            Err(dropped) => {
                let label = if dropped == Dropped::OversizedList { "too-many-ids" } else { "malformed" };
                respond(&*s.bus, gateway, &msg, error_answer(label)).await;
                return Err(dropped);
            }
        };
        let answer = if what == ToGateway::Sync {
            let gone: Vec<&ConnectionId> = ids.iter().filter(|id| !gateway.is_connected(id)).collect();
            contract::ids_payload(gone)
        } else {
            for id in ids {
                gateway.close(id, close::SESSION_LOST).await;
            }
            Vec::new()
        };
        respond(&*s.bus, gateway, &msg, BusMessage::new("", answer)).await;
        return Ok(());
    }
    // The rest is about one connection.
    let conn = msg.header(header::CONNECTION).and_then(|c| c.parse::<ConnectionId>().ok());
    let checked = match conn {
        None => Err(Dropped::ConnectionHeader),
        Some(conn) if !gateway.is_connected(&conn) => Err(Dropped::UnknownConnection),
        Some(conn) => Ok(conn),
    };
    match what {
        ToGateway::Event => {
            let (conn, ty) = (checked?, event_type(&msg)?);
            gateway.deliver(Target::Connection(conn), ty, msg.payload.clone()).await;
        }
        ToGateway::Subscription => {
            // A connection this gateway does not hold hears nothing here: the change is as good
            // as applied, and answered, so that a worker waiting on it (telling a connection a
            // takeover released, whose gateway restarted since) does not wait its bound for it.
            let conn = match checked {
                Err(Dropped::UnknownConnection) if msg.reply.is_some() => {
                    let _ = s.ops.send(Op::Acknowledge(msg));
                    return Err(Dropped::UnknownConnection);
                }
                checked => checked?,
            };
            let number = |name| match msg.header(name) {
                Some(r) => r.parse::<u64>().map(Some).map_err(|_| Dropped::BadHeader),
                None => Ok(None),
            };
            // A binding orders changes only beside the room's revision (docs/nats.md).
            let revision = match (number(header::REVISION)?, number(header::BINDING)?) {
                (Some(room), binding) => Some(Revision { binding, room }),
                (None, Some(_)) => return Err(Dropped::BadHeader),
                (None, None) => None,
            };
            let mut bad = false;
            for (name, subscribe) in [(header::SUBSCRIBE, true), (header::UNSUBSCRIBE, false)] {
                for value in msg.headers_named(name) {
                    match contract::parse_topic_value(value) {
                        Some((topic, room)) => {
                            gateway.set_subscription(conn, topic, &room, subscribe, revision).await
                        }
                        None => bad = true,
                    }
                }
            }
            // Asked to: answered once the change is applied and the interest it brought is in
            // place at the server (docs/nats.md), so what the worker publishes next is heard.
            // The shard is asked in line, and waited for apart: behind a shard busy with a hot
            // room, every message to this gateway waited for it (a sweep's telling took a
            // second, past the bound a dead decider's leave is told in: store-570091269).
            if msg.reply.is_some() {
                let settled = gateway.settling(conn).await;
                let ops = s.ops.clone();
                tokio::spawn(async move {
                    settled.await;
                    let _ = ops.send(Op::Acknowledge(msg));
                });
            }
            if bad {
                return Err(Dropped::BadHeader);
            }
        }
        ToGateway::Request => {
            let asked = checked.and_then(|conn| Ok((conn, event_type(&msg)?.to_owned())));
            let (conn, request_type) = match asked {
                Ok(asked) => asked,
                Err(dropped) => {
                    let label = match dropped {
                        Dropped::ConnectionHeader | Dropped::UnknownConnection => "not-connected",
                        _ => "malformed",
                    };
                    respond(&*s.bus, gateway, &msg, error_answer(label)).await;
                    return Err(dropped);
                }
            };
            // Handed to the shard here, in order; only the wait for the client's answer runs
            // on its own.
            let started = gateway.begin_server_request(conn, &request_type, msg.payload.clone()).await;
            let (bus, gateway) = (s.bus.clone(), gateway.clone());
            tokio::spawn(async move {
                let answer = match started {
                    Ok(answer) => answer.await,
                    Err(e) => Err(e),
                };
                let answer = match answer {
                    Ok(reply) => BusMessage::new("", reply.payload).with(header::TYPE, reply.reply_type),
                    Err(e) => error_answer(e.label()),
                };
                respond(&*bus, &gateway, &msg, answer).await;
            });
        }
        ToGateway::Reply(_) | ToGateway::Sync | ToGateway::Orphans | ToGateway::Resubscribed(_) => {}
    }
    Ok(())
}

/// A sync or orphans list: connection ids, one a line, at most [`IDS_PER_MESSAGE`].
fn id_list(payload: &[u8]) -> Result<Vec<ConnectionId>, Dropped> {
    let text = std::str::from_utf8(payload).map_err(|_| Dropped::BadList)?;
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if lines.len() > IDS_PER_MESSAGE {
        return Err(Dropped::OversizedList);
    }
    lines.into_iter().map(|l| l.parse().map_err(|_| Dropped::BadList)).collect()
}

/// An empty answer that says why with `Clientmq-Error`.
fn error_answer(label: &str) -> BusMessage {
    BusMessage::new("", Vec::new()).with(header::ERROR, label)
}

/// Publishes `answer` to `msg`'s reply subject, if it has one.
async fn respond<B: Bus>(bus: &B, gateway: &Connections, msg: &BusMessage, mut answer: BusMessage) {
    if let Some(reply) = &msg.reply {
        answer.subject = reply.clone();
        if bus.publish(answer).await.is_err() {
            gateway.bus_metrics().publish_failed();
        }
    }
}

/// An answer the bus backend decided itself (no worker was asked, or none took it), counted by
/// its reason.
async fn answer(gateway: &Connections, token: u64, result: Result<Reply, BackendError>) {
    let reason = match &result {
        Err(e) => Some(e.reason()),
        Ok(reply) if reply.reply_type == "mq.Error" => Some("malformed"),
        Ok(_) => None,
    };
    if let Some(reason) = reason {
        gateway.bus_metrics().answered(reason);
    }
    gateway.answer(token, result).await;
}

/// Announces the gateway every second; fails requests in flight when the bus goes away.
async fn announce<B: Bus>(s: Arc<Shared<B>>, gateway: Connections) {
    let mut seen = s.bus.status();
    let mut failures = (0, 0);
    loop {
        let status = s.bus.status();
        // Gone, or gone and back between two looks: replies in flight may be lost either way.
        if seen.connected && (!status.connected || status.epoch != seen.epoch) {
            s.fail_pending(&gateway).await;
        }
        let metrics = gateway.bus_metrics();
        metrics.connected(status.connected);
        let (refused, other) = s.bus.new_failures(&mut failures);
        metrics.connect_failed(refused, other);
        // Epochs count connections: the first is not a reconnect.
        if status.connected && status.epoch != seen.epoch && status.epoch > 1 {
            metrics.reconnected();
            tokio::spawn(resubscribe::resubscribe(s.clone(), gateway.clone()));
        }
        s.forget_expired();
        seen = status;
        if status.connected {
            let msg = BusMessage::new(s.subjects.alive(&s.route_key), Vec::new())
                .with(header::GATEWAY, s.route_key.as_str())
                .with(header::CONNECTIONS, gateway.open_connections().to_string())
                .with(header::BUS_EPOCH, status.epoch.to_string());
            match s.bus.publish(msg).await {
                Ok(()) => metrics.announced(),
                Err(_) => metrics.publish_failed(),
            }
        }
        // Biased: a fixed branch order keeps simulated runs reproducible.
        tokio::select! {
            biased;
            () = s.bus.changed(status) => {}
            () = tokio::time::sleep(contract::ANNOUNCE_EVERY) => {}
        }
    }
}
