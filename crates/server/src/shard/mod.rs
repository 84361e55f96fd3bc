//! A shard: one task owning one [`Gateway`] and the sockets of its connections. It reads a
//! connection's socket when that socket wakes it (no task per connection, no channel between a
//! socket and the core), feeds what it read to the core, writes the core's frames as the sockets
//! take them, and takes commands from the rest of the server (new connections, the backend's
//! deliveries and answers) and its own timer. It writes a bounded number of sockets a turn, so a
//! message to a large room goes out over many turns, with what came meanwhile taken in between.

mod check;

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};
use std::time::Duration;

use clientmq_core::{
    Admission, CloseReason, ConnectionId, Gateway, Input, Output, Reply, ServerRequestError,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::admission::{AddressSlot, GlobalAdmission};
use crate::command::{Command, Routes};
use crate::conn::ws;
use crate::conn::{Conn, Flow, Socket};
use crate::metrics::{Metrics, ShardGauges};
use crate::observe::{InvariantSink, TraceSink};
use crate::port::{self, Answer, Backend};
use crate::ready::{ConnWake, Ready};

/// Commands handled before outputs are carried out, to batch under load.
const BATCH: usize = 64;
/// Turns a shard takes in a row without waiting before it yields to the other tasks of its
/// thread (it runs outside tokio's cooperative budget).
const TURNS_BEFORE_YIELD: u32 = 16;
/// How long a released or refused socket may take to flush its last frames (and read the
/// client's close frame) before it is dropped.
const LINGER: Duration = Duration::from_secs(1);
/// The shard's read buffer, shared by all its connections.
pub(crate) const SCRATCH: usize = 16 * 1024;

pub(crate) struct Shard<B> {
    pub index: usize,
    pub gw: Gateway,
    pub rx: mpsc::Receiver<Command>,
    /// The sockets of the registered connections.
    /// Looked up once per frame sent (thousands per room event): hashed, never iterated in an
    /// order that matters (a simulated death sorts them first).
    pub conns: ConnMap<Conn>,
    /// Sockets no longer registered that finish their close (a release's last frames, a
    /// refusal's close frame), each until its deadline.
    pub lingering: BTreeMap<ConnectionId, (Conn, std::time::Instant)>,
    pub ready: Arc<Ready>,
    pub scratch: Vec<u8>,
    pub server_requests: BTreeMap<u64, oneshot::Sender<Result<Reply, ServerRequestError>>>,
    pub next_token: u64,
    pub backend: Arc<B>,
    pub gauges: Arc<Vec<ShardGauges>>,
    pub metrics: Arc<Metrics>,
    pub routes: Routes,
    pub trace: Option<TraceSink>,
    pub check: Option<InvariantSink>,
    pub admission: Option<Arc<GlobalAdmission>>,
    /// Admission permits held by this shard's connections.
    pub held_permits: usize,
    /// Checked-mode steps skipped since the last check.
    pub checks_skipped: usize,
    /// Whether every connection must hold an address slot (a per-address limit is set).
    pub check_address_slots: bool,
    /// Frames a connection may have queued before it is a slow consumer.
    pub outbound_queue: usize,
    /// Bytes a connection may have queued before it is a slow consumer.
    pub outbound_queue_bytes: usize,
    /// What aborted connections held (a simulated death), kept taken until the shard is gone.
    pub departed: Vec<(Option<tokio::sync::OwnedSemaphorePermit>, Option<AddressSlot>)>,
    pub max_frame_bytes: usize,
    /// [`Command::Settled`] callers, answered at the end of the next flush.
    pub settled: Vec<oneshot::Sender<()>>,
    /// Connections with frames to write, each once, in the order their first frame was queued;
    /// a turn writes `writes_per_turn` of them. Entries of connections since gone are skipped.
    pub to_write: VecDeque<ConnectionId>,
    /// Sockets written in a turn at most (`ServerConfig::writes_per_turn`). A message to a large
    /// room is written over several turns, with the commands and reads that came meanwhile
    /// taken in between: a message that comes mid-pass joins the frames of the sockets not yet
    /// written, so each write carries every frame in flight (as a writer task per socket would)
    /// instead of one pass's worth.
    pub writes_per_turn: usize,
}

/// Connections by id. Ids are drawn at random by the gateway (no client picks one), so a fast
/// hash of their first bytes spreads them as well as SipHash would, at a fraction of its cost.
pub(crate) type ConnMap<V> = std::collections::HashMap<ConnectionId, V, BuildHasherDefault<IdHasher>>;

/// Hashes a connection id by its first eight bytes (see [`ConnMap`]).
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // A multiply moves entropy only upwards; tables index by the low bits, so mix down
        // (splitmix64's finalizer).
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    fn write(&mut self, bytes: &[u8]) {
        // An id hashes as its length (a usize) then its bytes; each write is folded in.
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

pub(crate) fn new_gateway(config: &clientmq_core::Config, seed: Option<u64>, index: usize) -> Gateway {
    let rng = match seed {
        Some(seed) => StdRng::seed_from_u64(clientmq_core::seed::derive(seed, &format!("shard/{index}"))),
        None => rand::make_rng(),
    };
    Gateway::new(config.clone(), Box::new(rng), Instant::now().into_std())
        .expect("config validated by caller")
}

/// What woke the shard.
enum Wake {
    Timer,
    Command(Command),
    Ready,
    /// Nothing new, sockets left to write.
    Write,
    Closed,
}

impl<B: Backend> Shard<B> {
    pub async fn run(mut self) {
        let mut sleep = Box::pin(tokio::time::sleep_until(Instant::now()));
        let mut watch = check::SpinWatch::new();
        let mut busy_turns = 0;
        loop {
            let deadline = self.next_deadline();
            if let Some(at) = deadline {
                sleep.as_mut().reset(Instant::from_std(at));
            }
            if busy_turns >= TURNS_BEFORE_YIELD {
                busy_turns = 0;
                tokio::task::yield_now().await;
            }
            busy_turns += 1;
            // A fixed order (simulated runs replay byte for byte): timers first, so a flood of
            // commands or reads cannot starve heartbeats and deadlines; then commands, then
            // sockets.
            let wake = std::future::poll_fn(|cx| {
                if deadline.is_some() && sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::Timer);
                }
                match self.rx.poll_recv(cx) {
                    Poll::Ready(Some(cmd)) => return Poll::Ready(Wake::Command(cmd)),
                    Poll::Ready(None) => return Poll::Ready(Wake::Closed),
                    Poll::Pending => {}
                }
                self.ready.register(cx.waker());
                if !self.ready.is_empty() {
                    Poll::Ready(Wake::Ready)
                } else if !self.to_write.is_empty() {
                    Poll::Ready(Wake::Write)
                } else {
                    busy_turns = 0; // it waits: the thread's other tasks get their turn
                    Poll::Pending
                }
            })
            .await;
            match wake {
                Wake::Closed => {
                    while !self.to_write.is_empty() {
                        self.flush();
                    }
                    break;
                }
                Wake::Timer => {
                    self.gw.handle_timeout(now());
                    self.expire_lingering();
                }
                Wake::Command(cmd) => {
                    self.command(cmd);
                    for _ in 1..BATCH {
                        match self.rx.try_recv() {
                            Ok(cmd) => self.command(cmd),
                            Err(_) => break,
                        }
                    }
                }
                Wake::Ready => self.poll_sockets(),
                Wake::Write => {}
            }
            self.flush();
            if !self.to_write.is_empty() {
                // More to write: the tasks this turn woke (the backend's forwarder with the next
                // message, the bus client) run first. Woken from this thread, a task waits in its
                // worker's LIFO slot, which no other worker steals from, until the shard yields;
                // held there for a whole pass over a large room, the next message would miss it.
                busy_turns = TURNS_BEFORE_YIELD;
            }
            if self.spinning(&mut watch) {
                break;
            }
        }
    }

    fn next_deadline(&self) -> Option<std::time::Instant> {
        let lingering = self.lingering.values().map(|(_, until)| *until).min();
        match (self.gw.poll_timeout(), lingering) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Reads and writes every socket that woke the shard, and feeds the core what was read.
    fn poll_sockets(&mut self) {
        let mut inputs = Vec::new();
        for id in self.ready.take() {
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.wake.taken();
                if conn.read(&mut self.scratch, self.max_frame_bytes, &mut inputs) == Flow::Busy {
                    // Its share is read: after the others, it gets another turn.
                    Waker::from(conn.wake.clone()).wake();
                }
                if conn.has_output() && conn.write().is_err() {
                    inputs.push(Input::SendFailed { conn: id });
                }
            } else if let Some((conn, _)) = self.lingering.get_mut(&id) {
                conn.wake.taken();
                let mut ignored = Vec::new();
                let flow = conn.read(&mut self.scratch, self.max_frame_bytes, &mut ignored);
                let failed = conn.write().is_err();
                let done = !conn.has_output() && (flow == Flow::Idle && conn.read_finished() || failed);
                if done {
                    self.lingering.remove(&id);
                }
            }
        }
        let now = now();
        for input in inputs {
            self.gw.handle(input, now);
        }
    }

    /// Drops lingering sockets whose time is up.
    fn expire_lingering(&mut self) {
        let now = now();
        self.lingering.retain(|_, (_, until)| *until > now);
    }

    fn command(&mut self, cmd: Command) {
        let now = now();
        match cmd {
            Command::Open { peer, socket, read_ahead, permit, slot } => {
                if let (Some(global), Some(_)) = (&self.admission, &permit) {
                    global.admitting.fetch_sub(1, Ordering::Relaxed);
                }
                match self.gw.open(&peer, now) {
                    Admission::Accepted(id) => {
                        let mut conn =
                            Conn::new(id, socket, read_ahead, ConnWake::new(id, self.ready.clone()));
                        self.held_permits += permit.as_ref().map_or(0, |p| p.num_permits());
                        conn.permit = permit;
                        conn.slot = slot;
                        // Polled at once: the bytes read ahead, and its first read registers it.
                        Waker::from(conn.wake.clone()).wake();
                        self.conns.insert(id, conn);
                        self.routes.write().expect("routes lock").insert(id, self.index);
                    }
                    Admission::Rejected { id, close } => self.linger_closing(id, socket, close),
                }
            }
            Command::Refuse { close, open, socket } => {
                let id = self.gw.refuse(close, open, now);
                self.linger_closing(id, socket, close);
            }
            Command::Input(input) => self.gw.handle(input, now),
            Command::ServerRequest { conn, request_type, payload, reply } => {
                let token = self.next_token;
                self.next_token += 1;
                self.server_requests.insert(token, reply);
                self.gw.handle(Input::ServerRequest { token, conn, request_type, payload }, now);
            }
            Command::Drain => self.gw.handle(Input::Drain, now),
            Command::Settled(done) => self.settled.push(done),
            Command::ForgetSubscriptions(done) => {
                let _ = done.send(self.gw.forget_subscriptions(now));
            }
            Command::Tokens(tokens) => self.gw.set_tokens(tokens),
            Command::AbortAll => {
                // The sockets go, in id order, so a simulated death replays exactly.
                // The process runs to the end of its last step as it was: the core still counts
                // these connections, so their admission permits and address places stay taken
                // (until the process is gone), and checked mode stops checking bookkeeping that no
                // longer matches its sockets.
                let mut conns: Vec<_> = std::mem::take(&mut self.conns).into_iter().collect();
                conns.sort_unstable_by_key(|(id, _)| *id);
                for (_, mut conn) in conns {
                    self.departed.push((conn.permit.take(), conn.slot.take()));
                }
                self.lingering.clear();
                self.to_write.clear();
                // Callers waiting on server requests learn of the death now, in token order
                // (dropped with the task instead, shards would go in task id order, which is
                // global to the process).
                for (_, reply) in std::mem::take(&mut self.server_requests) {
                    let _ = reply.send(Err(ServerRequestError::Disconnected));
                }
                self.check = None;
            }
        }
    }

    /// A socket never registered: it gets its close frame and a moment to answer it.
    fn linger_closing(&mut self, id: ConnectionId, socket: Box<dyn Socket>, close: CloseReason) {
        let mut conn = Conn::new(id, socket, Vec::new(), ConnWake::new(id, self.ready.clone()));
        conn.send(ws::CLOSE, &ws::close_payload(close.code, close.reason), usize::MAX, usize::MAX);
        Waker::from(conn.wake.clone()).wake();
        self.lingering.insert(id, (conn, now() + LINGER));
    }

    /// Carries out every output, writes what the sockets take, and records every event.
    fn flush(&mut self) {
        // Carrying out an output can feed an input back (a full queue is a failed send), which
        // queues more outputs: this loop takes them too.
        let mut budget = self.writes_per_turn;
        loop {
            while let Some(out) = self.gw.poll_output() {
                self.output(out);
            }
            let mut failed = false;
            while budget > 0 {
                let Some(id) = self.to_write.pop_front() else { break };
                let Some(conn) = self.conns.get_mut(&id) else { continue };
                budget -= 1;
                conn.listed = false;
                if conn.has_output() && conn.write().is_err() {
                    self.gw.handle(Input::SendFailed { conn: id }, now());
                    failed = true;
                }
            }
            if !failed {
                break;
            }
        }
        while let Some(event) = self.gw.poll_event() {
            self.metrics.observe(&event.kind);
            if let clientmq_core::EventKind::Pong { rtt } = event.kind
                && let Some(conn) = event.conn
            {
                self.backend.rtt(conn, rtt);
            }
            match &self.trace {
                Some(sink) => (sink.0)(self.index, &event),
                None => tracing::debug!(target: "clientmq::trace", "{event}"),
            }
        }
        let g = &self.gauges[self.index];
        g.open.store(self.gw.open_connections(), Ordering::Relaxed);
        g.closing.store(self.gw.closing_connections(), Ordering::Relaxed);
        g.pending.store(self.gw.pending_requests(), Ordering::Relaxed);
        g.subscriptions.store(self.gw.subscriptions(), Ordering::Relaxed);
        g.permits.store(self.held_permits, Ordering::Relaxed);
        if self.check.is_some() {
            self.checked_mode_step();
        }
        for done in self.settled.drain(..) {
            let _ = done.send(());
        }
    }

    /// Queues a frame on a connection; a full queue is a slow consumer the core closes (3335).
    fn send(&mut self, conn: ConnectionId, opcode: u8, payload: &[u8]) {
        self.send_parts(conn, opcode, (payload, &[]));
    }

    /// [`Shard::send`] of a frame in two parts (a room event's head and shared tail).
    fn send_parts(&mut self, conn: ConnectionId, opcode: u8, (head, tail): (&[u8], &[u8])) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if !c.send_parts(opcode, head, tail, self.outbound_queue, self.outbound_queue_bytes) {
            self.gw.handle(Input::SendFailed { conn }, now());
            return;
        }
        if !c.listed {
            c.listed = true;
            self.to_write.push_back(conn);
        }
    }

    /// The core ended a connection: its permit and address place go back now; its socket
    /// lingers only to flush what is queued (a close echo) unless `abort`.
    fn forget(&mut self, conn: &ConnectionId, abort: bool) {
        self.routes.write().expect("routes lock").remove(conn);
        let Some(mut c) = self.conns.remove(conn) else { return };
        self.held_permits -= c.permit.take().map_or(0, |p| p.num_permits());
        c.slot = None;
        if abort {
            return; // dropped: closed now
        }
        let flushed = c.write().is_err() || !c.has_output();
        if !flushed {
            self.lingering.insert(*conn, (c, now() + LINGER));
        }
    }

    fn output(&mut self, out: Output) {
        match out {
            Output::Send { conn, frame } => {
                let (opcode, payload) = Conn::data_frame(&frame);
                self.send(conn, opcode, payload);
            }
            Output::Deliver(delivery) => {
                for (conn, encoding, head, tail) in delivery.iter() {
                    let opcode = match encoding {
                        clientmq_core::Encoding::Base64Text => ws::TEXT,
                        clientmq_core::Encoding::Binary => ws::BINARY,
                    };
                    self.send_parts(conn, opcode, (head, tail));
                }
            }
            Output::Ping { conn, payload } => self.send(conn, ws::PING, &payload),
            Output::Pong { conn, payload } => self.send(conn, ws::PONG, &payload),
            Output::Close { conn, close } => {
                self.send(conn, ws::CLOSE, &ws::close_payload(close.code, close.reason))
            }
            Output::Abort { conn } => self.forget(&conn, true),
            Output::Release { conn } => self.forget(&conn, false),
            Output::Backend(mut req) => {
                let token = req.token;
                req.token = port::backend_token(token, self.index, self.gauges.len());
                if let Answer::Now(result) = self.backend.request(req) {
                    self.gw.handle(Input::BackendReply { token, result }, now());
                }
            }
            Output::Publish(event) => self.backend.disconnected(event),
            Output::Interest { topic, room, on } => self.backend.interest(self.index, topic, &room, on),
            Output::ServerRequestDone { token, result } => {
                if let Some(reply) = self.server_requests.remove(&token) {
                    let _ = reply.send(result);
                }
            }
        }
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher as _;

    use rand::SeedableRng as _;

    use super::*;

    #[test]
    fn connection_ids_spread_over_the_low_bits_a_table_indexes_by() {
        let mut rng = StdRng::seed_from_u64(7);
        let hasher = BuildHasherDefault::<IdHasher>::default();
        let hashes: Vec<u64> = (0..10_000).map(|_| hasher.hash_one(ConnectionId::random(&mut rng))).collect();
        let distinct = hashes.iter().collect::<std::collections::BTreeSet<_>>().len();
        assert_eq!(distinct, hashes.len(), "no two ids collide");
        // 10,000 ids in 4,096 buckets: uniform hashing fills about 3,700 of them.
        let buckets = hashes.iter().map(|h| h & 0xfff).collect::<std::collections::BTreeSet<_>>().len();
        assert!(buckets > 3_500, "{buckets} of 4096 buckets used");
        let mut map = ConnMap::default();
        map.insert(ConnectionId::random(&mut rng), 1);
        assert_eq!(map.values().sum::<i32>(), 1);
    }
}
