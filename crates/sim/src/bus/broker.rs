//! The broker: one turmoil host holding every client's subscriptions in memory and routing
//! each published message with NATS core's rules (see the module doc of [`crate::bus`]).
//!
//! A client is two tasks, a reader that parses frames and routes them under the broker's
//! lock, and a writer that drains the client's outbound queue; routing never waits on a
//! socket, so a client that stopped reading (a partition) holds nobody else up.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use clientmq_bus::store::model::{Outcome, StoreModel};
use clientmq_bus::{BusMessage, NO_RESPONDERS};
use tokio::sync::{mpsc, oneshot};

use super::proto::{Frame, FrameReader, MAX_PAYLOAD, message_size};
use super::{
    AbortOnDrop, HomeCell, MAX_PENDING, Parked, SILENT_AFTER, split, subject_matches, valid_subject,
    write_frames,
};

/// Told of every message the broker routed, with the names (from CONNECT) of the clients it
/// went to, in client order.
pub type RouteObserver = Arc<dyn Fn(&BusMessage, Vec<String>) + Send + Sync>;

/// Told each message the broker's JetStream stores, once stored.
pub type StoreObserver = Arc<dyn Fn(&clientmq_bus::store::StoredMsg) + Send + Sync>;

/// The broker's JetStream: held outside the broker, so it outlives a restart as a file store
/// outlives nats-server's.
pub type SharedStore = Arc<Mutex<StoreModel>>;

/// Runs a broker on `port` of this turmoil host until the host stops. Run it as the host's
/// software itself (not inside `tokio::spawn`): the broker's state then outlives its clients'
/// tasks when the host is crashed or bounced, and their sockets close in client order.
/// JetStream requests and publishes to streams' subjects are answered from `store`.
pub async fn serve_broker(
    port: u16,
    observer: Option<RouteObserver>,
    store: SharedStore,
    stored: Option<StoreObserver>,
) -> std::io::Result<()> {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
    if stored.is_some() {
        store.lock().unwrap_or_else(PoisonError::into_inner).keep_journal();
    }
    let broker = Arc::new(Mutex::new(Broker { observer, store, stored, ..Broker::default() }));
    loop {
        let (stream, _) = listener.accept().await?;
        let (read, write, home) = split(stream);
        let (out, queue) = mpsc::unbounded_channel();
        let (kick, kicked) = oneshot::channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let id = {
            let mut b = lock(&broker);
            let id = b.next_id;
            b.next_id += 1;
            let client = Client {
                connected: false,
                name: String::new(),
                subs: BTreeMap::new(),
                out,
                pending: pending.clone(),
                _home: home,
                _kick: kick,
            };
            b.clients.insert(id, client);
            id
        };
        let writer = AbortOnDrop(tokio::spawn(write_frames(write, queue, Some(pending))));
        tokio::spawn(ClientTask { read, broker: broker.clone(), id, kicked, writer }.run());
    }
}

fn lock(broker: &Mutex<Broker>) -> std::sync::MutexGuard<'_, Broker> {
    broker.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct Broker {
    /// By connection id, in the order they connected.
    clients: BTreeMap<u64, Client>,
    next_id: u64,
    /// The member (connection id, sid) each queue group gave its last message to.
    turns: BTreeMap<String, (u64, u64)>,
    observer: Option<RouteObserver>,
    store: SharedStore,
    stored: Option<StoreObserver>,
}

struct Client {
    /// CONNECT was received.
    connected: bool,
    /// The name it connected with.
    name: String,
    subs: BTreeMap<u64, Sub>,
    out: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes queued to `out` and not yet written.
    pending: Arc<AtomicUsize>,
    /// The socket, parked here when its tasks are dropped; kept in id order by `clients`.
    _home: HomeCell,
    /// Dropped with the client: ends its reader.
    _kick: oneshot::Sender<()>,
}

struct Sub {
    subject: String,
    queue: Option<String>,
}

impl Client {
    /// Queues a frame; false if the client is a slow consumer (or its writer is gone).
    fn send(&self, frame: &Frame) -> bool {
        let Ok(bytes) = frame.encode() else { return false };
        let len = bytes.len();
        if self.pending.fetch_add(len, Ordering::Relaxed) + len > MAX_PENDING {
            return false;
        }
        self.out.send(bytes).is_ok()
    }
}

impl Broker {
    /// Carries out one frame from client `id`; false if the client is to be dropped.
    fn handle(&mut self, id: u64, frame: Frame) -> bool {
        let Some(client) = self.clients.get_mut(&id) else { return false };
        if !client.connected && !matches!(frame, Frame::Connect { .. }) {
            return false;
        }
        match frame {
            Frame::Connect { name } => {
                client.connected = true;
                client.name = name;
            }
            Frame::Sub { sid, subject, queue } => {
                // As nats-server: an invalid subscription is refused, the connection stays.
                let queue_ok = queue.as_deref().is_none_or(|q| !q.chars().any(char::is_whitespace));
                if valid_subject(&subject, true) && queue_ok {
                    client.subs.insert(sid, Sub { subject, queue });
                }
            }
            Frame::Unsub { sid } => {
                client.subs.remove(&sid);
            }
            Frame::Ping => return client.send(&Frame::Pong),
            Frame::Pong => {}
            // As nats-server: a payload over the limit ends the connection.
            Frame::Pub(msg) if message_size(&msg) > MAX_PAYLOAD => return false,
            Frame::Pub(msg) => {
                let literal = |s: &str| valid_subject(s, false);
                if literal(&msg.subject) && msg.reply.as_deref().is_none_or(literal) {
                    self.route(id, msg);
                }
            }
            Frame::Msg { .. } => return false,
        }
        true
    }

    /// Delivers a message published by client `from`: every matching plain subscription, one
    /// member of each matching queue group, or a no-responders answer. A message JetStream
    /// takes is delivered too (as nats-server does), and its answer after it.
    fn route(&mut self, from: u64, msg: BusMessage) {
        let at = u64::try_from(crate::trace::now().as_nanos()).unwrap_or(u64::MAX);
        let (outcome, journal) = {
            let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
            (store.handle(&msg, at), store.take_journal())
        };
        if let Some(stored) = &self.stored {
            journal.iter().for_each(|m| stored(m));
        }
        self.deliver(from, &msg.subject, &msg, outcome == Outcome::Ignored);
        if let Outcome::Taken(send) = outcome {
            for d in send {
                self.deliver(from, &d.to, &d.msg, false);
            }
        }
    }

    /// Delivers `msg` to the subscriptions matching `to`; with `answerable`, a request nobody
    /// took is answered 503.
    fn deliver(&mut self, from: u64, to: &str, msg: &BusMessage, answerable: bool) {
        let mut plain = Vec::new();
        let mut groups: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
        for (&id, client) in &self.clients {
            for (&sid, sub) in &client.subs {
                if subject_matches(&sub.subject, to) {
                    match &sub.queue {
                        Some(q) => groups.entry(q.as_str()).or_default().push((id, sid)),
                        None => plain.push((id, sid)),
                    }
                }
            }
        }
        let mut delivered = false;
        let mut slow = Vec::new();
        let mut delivered_to = Vec::new();
        let mut deliver = |(id, sid): (u64, u64), slow: &mut Vec<u64>| {
            if slow.contains(&id) {
                return false;
            }
            let frame = Frame::Msg { sid, msg: BusMessage { status: None, ..msg.clone() } };
            let sent = self.clients[&id].send(&frame);
            if sent {
                delivered_to.push(id);
            } else {
                slow.push(id);
            }
            sent
        };
        for member in plain {
            delivered |= deliver(member, &mut slow);
        }
        let mut turns = Vec::new();
        for (queue, members) in groups {
            // The member after the last one picked, wrapping around.
            let last = self.turns.get(queue);
            let start = last.map_or(0, |last| members.iter().position(|m| m > last).unwrap_or(0));
            for i in 0..members.len() {
                let member = members[(start + i) % members.len()];
                if deliver(member, &mut slow) {
                    delivered = true;
                    turns.push((queue.to_owned(), member));
                    break;
                }
            }
        }
        self.turns.extend(turns);
        if let Some(observer) = &self.observer {
            // A client with two matching subscriptions is named twice: it got two copies.
            observer(msg, delivered_to.iter().map(|id| self.clients[id].name.clone()).collect());
        }
        if !delivered
            && answerable
            && let Some(reply) = &msg.reply
        {
            self.no_responders(from, &msg.subject, reply, &mut slow);
        }
        for id in slow {
            // A slow consumer: dropping the client ends its reader and writer.
            self.clients.remove(&id);
        }
    }

    /// Answers a request nobody took, as nats-server does: status 503 to the publisher's own
    /// first plain subscription matching the reply subject.
    fn no_responders(&self, from: u64, subject: &str, reply: &str, slow: &mut Vec<u64>) {
        let Some(client) = self.clients.get(&from) else { return };
        let own = client.subs.iter().find(|(_, s)| s.queue.is_none() && subject_matches(&s.subject, reply));
        if let Some((&sid, _)) = own {
            let msg = BusMessage {
                subject: reply.to_owned(),
                headers: vec![("Nats-Subject".to_owned(), subject.to_owned())],
                status: Some(NO_RESPONDERS),
                ..BusMessage::default()
            };
            if !client.send(&Frame::Msg { sid, msg }) {
                slow.push(from);
            }
        }
    }
}

/// The reader of one client. Fields drop in order: the read half is parked before the broker
/// can be dropped with this task.
struct ClientTask {
    read: Parked<turmoil::net::tcp::OwnedReadHalf>,
    writer: AbortOnDrop,
    kicked: oneshot::Receiver<()>,
    id: u64,
    broker: Arc<Mutex<Broker>>,
}

impl ClientTask {
    async fn run(mut self) {
        let mut frames = FrameReader::default();
        loop {
            // Biased: a fixed branch order keeps simulated runs reproducible.
            tokio::select! {
                biased;
                _ = &mut self.kicked => break,
                _ = &mut self.writer.0 => break,
                read = tokio::time::timeout(SILENT_AFTER, frames.next(self.read.get())) => {
                    let keep = match read {
                        Ok(Ok(Some(frame))) => lock(&self.broker).handle(self.id, frame),
                        // Silent too long, closed, reset or garbled.
                        _ => false,
                    };
                    if !keep {
                        break;
                    }
                }
            }
        }
        lock(&self.broker).clients.remove(&self.id);
    }
}
