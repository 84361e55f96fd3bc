//! A shard: one task owning one [`Gateway`], driven by commands from connection tasks and the
//! backend, and by its own timer. Outputs are routed to connection queues and the backend.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use clientmq_core::{
    Admission, BackendError, CloseReason, ConnectionId, Gateway, Input, Output, Peer, Reply,
    ServerRequestError, Target, Topic,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use crate::admission::{AddressSlot, GlobalAdmission};
use crate::backend::Backend;
use crate::config::{InvariantSink, TraceSink};
use crate::metrics::{Metrics, ShardGauges};

/// What a shard tells a connection task.
#[derive(Debug)]
pub enum ToConn {
    Frame(clientmq_core::Frame),
    Ping(Vec<u8>),
    Close(CloseReason),
    /// The connection is over: flush and drop the transport.
    Release,
}

/// The shard's way to reach one connection task.
#[derive(Debug)]
pub struct ConnHandle {
    pub tx: mpsc::Sender<ToConn>,
    /// Abort skips the queue: it must get through even when the queue is full.
    pub abort: Arc<Notify>,
    /// Its queue overflowed once: the core is closing it, later frames are dropped unsent.
    pub overflowed: bool,
    /// With several shards, the global admission permit. Held here, it is released exactly
    /// when the core ends the connection and the shard forgets this handle.
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Its place among its client address's connections, given back the same way.
    pub slot: Option<AddressSlot>,
}

pub enum Command {
    Open {
        peer: Peer,
        conn: ConnHandle,
        reply: oneshot::Sender<Admission>,
    },
    Refuse {
        close: CloseReason,
        /// The count the refusal was judged against: every shard's open connections plus
        /// admissions in flight.
        open: usize,
        reply: oneshot::Sender<ConnectionId>,
    },
    Input(Input),
    ServerRequest {
        conn: ConnectionId,
        request_type: String,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<Reply, ServerRequestError>>,
    },
    Drain,
    /// Drop every connection's transport at once, in id order (a simulated process death).
    AbortAll,
}

/// Commands queued per shard before senders wait.
const COMMAND_QUEUE: usize = 4096;
/// Commands handled before outputs are carried out, to batch under load.
const BATCH: usize = 64;
/// Checked mode checks every step of a shard with fewer connections than this.
const CHECK_EVERY_STEP_BELOW: usize = 8;

/// Which shard holds which connection, for deliveries and server requests. Routing only: the
/// shards' registries remain the only count.
pub type Routes = Arc<RwLock<HashMap<ConnectionId, usize>>>;

/// A cloneable handle for the backend (and operators) to reach connections on any shard.
#[derive(Clone)]
pub struct GatewayHandle {
    pub(crate) shards: Arc<Vec<mpsc::Sender<Command>>>,
    pub(crate) routes: Routes,
}

impl GatewayHandle {
    fn shard_of(&self, conn: &ConnectionId) -> Option<&mpsc::Sender<Command>> {
        let shard = *self.routes.read().expect("routes lock").get(conn)?;
        self.shards.get(shard)
    }

    /// Pushes an event to one connection, or to every subscriber of a room or conversation.
    pub async fn deliver(&self, target: Target, event_type: &str, payload: Vec<u8>) {
        let input = |target| {
            Command::Input(Input::Deliver {
                target,
                event_type: event_type.to_owned(),
                payload: payload.clone(),
            })
        };
        match &target {
            Target::Connection(conn) => {
                if let Some(shard) = self.shard_of(conn) {
                    let _ = shard.send(input(target.clone())).await;
                }
            }
            // Subscribers may sit on any shard.
            Target::Room(_) | Target::Conversation(_) => {
                for shard in self.shards.iter() {
                    let _ = shard.send(input(target.clone())).await;
                }
            }
        }
    }

    /// Subscribes a connection to a room or conversation (`subscribe`), or unsubscribes it.
    pub async fn set_subscription(&self, conn: ConnectionId, topic: Topic, room: &str, subscribe: bool) {
        if let Some(shard) = self.shard_of(&conn) {
            let input = Input::Subscription { conn, topic, room: room.to_owned(), subscribe };
            let _ = shard.send(Command::Input(input)).await;
        }
    }

    /// Sends a request to a client and waits for its answer (or the server request timeout).
    pub async fn server_request(
        &self,
        conn: ConnectionId,
        request_type: &str,
        payload: Vec<u8>,
    ) -> Result<Reply, ServerRequestError> {
        self.begin_server_request(conn, request_type, payload).await?.await
    }

    /// Sends a request to a client now, in order with what was handed to the connection's shard
    /// before; the returned future waits for the answer (or the server request timeout).
    pub async fn begin_server_request(
        &self,
        conn: ConnectionId,
        request_type: &str,
        payload: Vec<u8>,
    ) -> Result<impl Future<Output = Result<Reply, ServerRequestError>> + use<>, ServerRequestError> {
        let Some(shard) = self.shard_of(&conn) else { return Err(ServerRequestError::NotConnected) };
        let (reply, answer) = oneshot::channel();
        let cmd = Command::ServerRequest { conn, request_type: request_type.to_owned(), payload, reply };
        if shard.send(cmd).await.is_err() {
            return Err(ServerRequestError::NotConnected);
        }
        Ok(async move { answer.await.unwrap_or(Err(ServerRequestError::Disconnected)) })
    }

    /// The answer to a client request of `conn` (core token `token`), from a backend that
    /// answers itself: handed to the connection's shard in order with everything else the
    /// backend handed it before. Nothing when the connection is gone.
    pub async fn answer(&self, conn: ConnectionId, token: u64, result: Result<Reply, BackendError>) {
        if let Some(shard) = self.shard_of(&conn) {
            let _ = shard.send(Command::Input(Input::BackendReply { token, result })).await;
        }
    }

    /// Ids of every registered connection, in id order.
    pub fn connection_ids(&self) -> Vec<ConnectionId> {
        let mut ids: Vec<ConnectionId> = self.routes.read().expect("routes lock").keys().copied().collect();
        ids.sort();
        ids
    }

    /// Closes a connection with `close` (its session ended while its backend could not reach
    /// this gateway, say).
    pub async fn close(&self, conn: ConnectionId, close: CloseReason) {
        if let Some(shard) = self.shard_of(&conn) {
            let _ = shard.send(Command::Input(Input::Close { conn, close })).await;
        }
    }

    /// Open connections, summed over shards.
    pub fn open_connections(&self) -> usize {
        self.routes.read().expect("routes lock").len()
    }

    /// Whether `conn` is registered on any shard.
    pub fn is_connected(&self, conn: &ConnectionId) -> bool {
        self.routes.read().expect("routes lock").contains_key(conn)
    }

    /// Starts a drain on every shard.
    pub async fn drain(&self) {
        for shard in self.shards.iter() {
            let _ = shard.send(Command::Drain).await;
        }
    }
}

pub(crate) struct Shard<B> {
    pub index: usize,
    pub gw: Gateway,
    pub rx: mpsc::Receiver<Command>,
    pub tx: mpsc::WeakSender<Command>,
    pub conns: BTreeMap<ConnectionId, ConnHandle>,
    pub server_requests: BTreeMap<u64, oneshot::Sender<Result<Reply, ServerRequestError>>>,
    pub next_token: u64,
    pub backend: Arc<B>,
    pub gauges: Arc<Vec<ShardGauges>>,
    pub metrics: Arc<Metrics>,
    pub routes: Routes,
    pub backend_timeout: Duration,
    pub trace: Option<TraceSink>,
    pub check: Option<InvariantSink>,
    pub admission: Option<Arc<GlobalAdmission>>,
    /// Admission permits held by this shard's connection handles.
    pub held_permits: usize,
    /// Checked-mode steps skipped since the last check.
    pub checks_skipped: usize,
    /// Whether every connection must hold an address slot (a per-address limit is set).
    pub check_address_slots: bool,
}

pub(crate) fn new_gateway(config: &clientmq_core::Config, seed: Option<u64>, index: usize) -> Gateway {
    let rng = match seed {
        Some(seed) => StdRng::seed_from_u64(seed.wrapping_add(index as u64)),
        None => rand::make_rng(),
    };
    Gateway::new(config.clone(), Box::new(rng), Instant::now().into_std())
        .expect("config validated by caller")
}

pub(crate) fn command_channel() -> (mpsc::Sender<Command>, mpsc::Receiver<Command>) {
    mpsc::channel(COMMAND_QUEUE)
}

impl<B: Backend> Shard<B> {
    pub async fn run(mut self) {
        loop {
            let deadline = self.gw.poll_timeout();
            // Biased, so branch order is fixed (simulation replays byte for byte); timers first,
            // so a flood of commands cannot starve heartbeats and deadlines.
            tokio::select! {
                biased;
                () = sleep_until(deadline), if deadline.is_some() => {
                    self.gw.handle_timeout(now());
                }
                cmd = self.rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    self.command(cmd);
                    for _ in 1..BATCH {
                        match self.rx.try_recv() {
                            Ok(cmd) => self.command(cmd),
                            Err(_) => break,
                        }
                    }
                }
            }
            self.flush();
        }
    }

    fn command(&mut self, cmd: Command) {
        let now = now();
        match cmd {
            Command::Open { peer, conn, reply } => {
                if let (Some(global), Some(_)) = (&self.admission, &conn.permit) {
                    global.admitting.fetch_sub(1, Ordering::Relaxed);
                }
                let admission = self.gw.open(&peer, now);
                if let Admission::Accepted(id) = admission {
                    self.held_permits += conn.permit.as_ref().map_or(0, |p| p.num_permits());
                    self.conns.insert(id, conn);
                    self.routes.write().expect("routes lock").insert(id, self.index);
                }
                let _ = reply.send(admission);
            }
            Command::Refuse { close, open, reply } => {
                let _ = reply.send(self.gw.refuse(close, open, now));
            }
            Command::Input(input) => self.gw.handle(input, now),
            Command::ServerRequest { conn, request_type, payload, reply } => {
                let token = self.next_token;
                self.next_token += 1;
                self.server_requests.insert(token, reply);
                self.gw.handle(Input::ServerRequest { token, conn, request_type, payload }, now);
            }
            Command::Drain => self.gw.handle(Input::Drain, now),
            Command::AbortAll => {
                for handle in self.conns.values() {
                    handle.abort.notify_one();
                }
            }
        }
    }

    /// Carries out every output and records every event.
    fn flush(&mut self) {
        // Carrying out an output can feed an input back (a full queue is a failed send), which
        // queues more outputs: this loop takes them too.
        while let Some(out) = self.gw.poll_output() {
            self.output(out);
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
    }

    /// Checks after every step while the shard is small (every explored fault schedule), and
    /// every (n/8)-th step of a shard of n connections, so a check costs O(8 log n) per step
    /// amortised and the 2,000-client incidents simulate as fast as without checks.
    fn checked_mode_step(&mut self) {
        let Some(sink) = self.check.clone() else { return };
        if self.checks_skipped < self.gw.open_connections() / CHECK_EVERY_STEP_BELOW {
            self.checks_skipped += 1;
            return;
        }
        self.checks_skipped = 0;
        if let Err(broken) = self.check_invariants() {
            (sink.0)(format!("shard {}: {broken}", self.index));
        }
    }

    /// Checked mode: the core's invariants, then this shard's bookkeeping against the core.
    /// Run after a flush, when every output has been carried out; the other shards are between
    /// steps too under simulation, so the sums over shards are exact there.
    fn check_invariants(&self) -> Result<(), String> {
        self.gw.check_invariants().map_err(|v| format!("core: {v}"))?;
        let open = self.gw.open_connections();
        if self.conns.len() != open {
            return Err(format!("{} connection handles for {open} open connections", self.conns.len()));
        }
        let routed = self.routes.read().expect("routes lock").len();
        let open_everywhere: usize = self.gauges.iter().map(|g| g.open.load(Ordering::Relaxed)).sum();
        if routed != open_everywhere {
            return Err(format!("{routed} routes for {open_everywhere} open connections on all shards"));
        }
        if self.check_address_slots && self.conns.values().any(|c| c.slot.is_none()) {
            return Err("an open connection holds no place among its address's".into());
        }
        if let Some(global) = &self.admission {
            if self.held_permits != self.conns.len() {
                return Err(format!(
                    "{} admission permits held by {} connections, not one each",
                    self.held_permits,
                    self.conns.len()
                ));
            }
            let held: usize = self.gauges.iter().map(|g| g.permits.load(Ordering::Relaxed)).sum();
            let admitting = global.admitting.load(Ordering::Relaxed);
            let available = global.permits.available_permits();
            if available + held + admitting != global.max {
                return Err(format!(
                    "admission permits: {available} available + {held} held + {admitting} admitting != {}",
                    global.max
                ));
            }
        } else if self.held_permits != 0 {
            return Err("admission permits held with a single shard".into());
        }
        Ok(())
    }

    fn send(&mut self, conn: ConnectionId, msg: ToConn) {
        let Some(handle) = self.conns.get_mut(&conn) else { return };
        if handle.overflowed {
            return;
        }
        match handle.tx.try_send(msg) {
            Ok(()) => {}
            // A slow consumer: the core closes it with 3335, bounded by the close timeout.
            Err(mpsc::error::TrySendError::Full(_)) => {
                handle.overflowed = true;
                self.gw.handle(Input::SendFailed { conn }, now());
            }
            // The task is gone; it reports its own end.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn forget(&mut self, conn: &ConnectionId) -> Option<ConnHandle> {
        self.routes.write().expect("routes lock").remove(conn);
        let handle = self.conns.remove(conn)?;
        self.held_permits -= handle.permit.as_ref().map_or(0, |p| p.num_permits());
        Some(handle)
    }

    fn output(&mut self, out: Output) {
        match out {
            Output::Send { conn, frame } => self.send(conn, ToConn::Frame(frame)),
            Output::Ping { conn, payload } => self.send(conn, ToConn::Ping(payload)),
            Output::Close { conn, close } => self.send(conn, ToConn::Close(close)),
            Output::Abort { conn } => {
                if let Some(handle) = self.forget(&conn) {
                    handle.abort.notify_one();
                }
            }
            Output::Release { conn } => {
                if let Some(handle) = self.forget(&conn)
                    && handle.tx.try_send(ToConn::Release).is_err()
                {
                    handle.abort.notify_one();
                }
            }
            Output::Backend(req) if self.backend.answers_itself() => self.backend.submit(req),
            Output::Backend(req) => {
                let token = req.token;
                let backend = self.backend.clone();
                let mut answer = Box::pin(async move { backend.request(req).await });
                // An answer that is ready at once (most of the embedded backend's) is taken here:
                // no task, no channel hop, no wake-up. A pending one re-registers its real waker
                // when the task polls it.
                if let Poll::Ready(result) = answer.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                    return self.gw.handle(Input::BackendReply { token, result }, now());
                }
                let Some(shard) = self.tx.upgrade() else { return };
                let timeout = self.backend_timeout;
                tokio::spawn(async move {
                    // The core times the request out for the client; this bound frees the task.
                    if let Ok(result) = tokio::time::timeout(timeout, answer).await {
                        let _ = shard.send(Command::Input(Input::BackendReply { token, result })).await;
                    }
                });
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

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
