//! The gateway state machine: registry, heartbeats, close handshakes, drain.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use rand_core::Rng;

use crate::ConnectionId;
use crate::codec::{Delivery, Frame};
use crate::config::{CloseReason, Config, ConfigError, close};
use crate::event::{DisconnectPath, DropReason, Event, EventKind, LostReason, RequestOutcome, Stray, Topic};
use crate::port::{BackendError, BackendRequest, Reply, ServerRequestError, Target};
use crate::proto::pcast;
use crate::registry::{Connection, Registry, State};
use crate::timers::{Timer, Timers};

mod invariants;
mod peer;
mod requests;
mod server_requests;
mod subscriptions;

pub use invariants::InvariantViolation;
pub use peer::{Peer, client_address};
pub(crate) use requests::{Charge, PendingRequest, PendingServerRequest};
pub use subscriptions::{Forgotten, Revision};

/// Answer to [`Gateway::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Registered; every later input about this connection names this id.
    Accepted(ConnectionId),
    /// Not registered: close the socket with `close`. The id only names it in the trace.
    Rejected { id: ConnectionId, close: CloseReason },
}

/// An input to [`Gateway::handle`]: something that happened, as data.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A data frame from the client.
    Frame { conn: ConnectionId, frame: Frame },
    /// A pong from the client, with its payload.
    Pong { conn: ConnectionId, payload: Vec<u8> },
    /// A ping from the client, with its payload: answered with [`Output::Pong`] within the
    /// connection's frame rate.
    Ping { conn: ConnectionId, payload: Vec<u8> },
    /// The client's close frame arrived (`code` as sent, `None` when it had none).
    PeerClosed { conn: ConnectionId, code: Option<u16> },
    /// The transport ended without a close handshake.
    TransportLost { conn: ConnectionId, reason: LostReason },
    /// The transport could not take an outgoing frame (send error, or its queue is full).
    SendFailed { conn: ConnectionId },
    /// The backend answered the request with this token.
    BackendReply { token: u64, result: Result<Reply, BackendError> },
    /// The backend pushes an event to a connection, a room or a room's conversation.
    Deliver { target: Target, event_type: String, payload: Vec<u8> },
    /// The backend subscribes a connection to a room or conversation, or unsubscribes it.
    /// `revision` orders the backend's decisions when several processes make them (see
    /// [`Revision`]): a change older than one already applied is dropped. `None`: applied as it
    /// comes.
    Subscription {
        conn: ConnectionId,
        topic: crate::event::Topic,
        room: String,
        subscribe: bool,
        revision: Option<Revision>,
    },
    /// The backend sends a request to a client; the answer comes back as
    /// [`Output::ServerRequestDone`] with the same `token`.
    ServerRequest { token: u64, conn: ConnectionId, request_type: String, payload: Vec<u8> },
    /// Stop admitting; close every connection with 3333 over the drain window.
    Drain,
    /// Close one connection with this code (a backend ended its session). Nothing if it is not
    /// open; traced as stray if it does not exist.
    Close { conn: ConnectionId, close: CloseReason },
}

/// An action for the I/O layer, drained with [`Gateway::poll_output`].
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send a data frame.
    Send { conn: ConnectionId, frame: Frame },
    /// Send a room's event to its subscribers: for each connection, in order, a data frame
    /// whose payload is its own head then the tail it shares with the others
    /// ([`Delivery::iter`]), so that a delivery neither allocates nor copies the event.
    Deliver(Delivery),
    /// Send a WebSocket ping with this payload; the pong must echo it.
    Ping { conn: ConnectionId, payload: Vec<u8> },
    /// Answer a client's ping.
    Pong { conn: ConnectionId, payload: Vec<u8> },
    /// Send a close frame and keep reading until the client's close frame (or the deadline).
    Close { conn: ConnectionId, close: CloseReason },
    /// The connection is over and was forced: drop the transport now without flushing.
    Abort { conn: ConnectionId },
    /// The connection is over: flush what is queued (a close echo) and drop the transport.
    Release { conn: ConnectionId },
    /// Forward a client request to the backend; answer with [`Input::BackendReply`].
    Backend(BackendRequest),
    /// Tell the backend a connection ended (`pcast.ConnectionDisconnected`).
    Publish(pcast::ConnectionDisconnected),
    /// The end of a server-initiated request.
    ServerRequestDone { token: u64, result: Result<Reply, ServerRequestError> },
    /// The gateway now has (`on`) or no longer has an interest in a room's or a conversation's
    /// events: a first subscriber, or a request about to subscribe one (a join naming the room),
    /// or the last of them gone. A backend on a bus subscribes to rooms by it; others ignore it.
    Interest { topic: crate::event::Topic, room: String, on: bool },
}

impl Output {
    /// The data frames of a `Send` or a `Deliver`, each in one piece, with their connections:
    /// for drivers (and tests) that need not tell an answer from a room's event.
    pub fn data_frames(&self) -> Vec<(ConnectionId, Frame)> {
        match self {
            Output::Send { conn, frame } => vec![(*conn, frame.clone())],
            Output::Deliver(delivery) => delivery.frames(),
            _ => Vec::new(),
        }
    }
}

/// Counters since start. The open count is not here: it is the registry's size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections ever registered (incremented in exactly one place).
    pub total: u64,
    /// Connections refused before registration (limit, drain).
    pub rejected: u64,
    pub disconnects: BTreeMap<DisconnectPath, u64>,
    pub disconnects_by_code: BTreeMap<u16, u64>,
    pub dropped: BTreeMap<&'static str, u64>,
    pub requests: BTreeMap<RequestOutcome, u64>,
    pub pings: u64,
    pub pongs: u64,
}

impl Stats {
    /// Connections that ended, by any path.
    pub fn disconnected(&self) -> u64 {
        self.disconnects.values().sum()
    }
}

/// The clientmq gateway: a sans-IO state machine for every connection of one shard.
///
/// # Contract
///
/// - **Time** is passed in. Every call that can depend on time takes `now`; the gateway never
///   reads a clock. A `now` earlier than one already seen is treated as the latest one seen.
/// - **Inputs**: [`Gateway::open`] for a connection whose upgrade completed (it answers at once
///   with an [`Admission`]); [`Gateway::handle`] for everything else that happens.
/// - **Outputs**: after any call, drain [`Gateway::poll_output`] until `None` and carry out each
///   [`Output`] in order; drain [`Gateway::poll_event`] for the trace.
/// - **Timers**: call [`Gateway::handle_timeout`] once `now` reaches [`Gateway::poll_timeout`]
///   (calling it earlier or more often is harmless). It fires everything that is due.
/// - **Counting by construction**: a connection is registered in one place (`open`) and ended in
///   one place (`end_connection`), which removes it, emits exactly one `Disconnected` event and one
///   `Abort` or `Release`, drops its subscriptions, fails its pending requests and publishes
///   `pcast.ConnectionDisconnected`. The open count is the registry's size. Any later input about
///   an ended id is traced as stray and changes nothing.
/// - **Bounds**: every connection state but `Open` has a deadline (close timeout), every request a
///   deadline (request timeouts); per-connection pending requests and subscriptions are capped.
///   Every frame a client sends (data, ping, pong, garbage) costs a token of its rate; a ping is
///   answered ([`Output::Pong`]) only within it.
/// - **Randomness** (connection ids) comes only from the RNG handed to [`Gateway::new`].
pub struct Gateway {
    pub(crate) config: Config,
    rng: Box<dyn Rng + Send>,
    epoch: Instant,
    pub(crate) now: Instant,
    pub(crate) registry: Registry,
    pub(crate) timers: Timers,
    pub(crate) requests: BTreeMap<u64, PendingRequest>,
    pub(crate) next_token: u64,
    pub(crate) server_requests: BTreeMap<u64, PendingServerRequest>,
    pub(crate) next_server_request: u64,
    outputs: VecDeque<Output>,
    events: VecDeque<Event>,
    pub(crate) stats: Stats,
    draining: bool,
    /// Connections in `State::Closing`: set in `start_close`, cleared in `end_connection`, checked
    /// against a scan by `check_invariants`. Kept because the server reads it after every step.
    pub(crate) closing: usize,
}

impl Gateway {
    /// A gateway with no connections. `now` is the trace's time zero.
    pub fn new(config: Config, rng: Box<dyn Rng + Send>, now: Instant) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Gateway {
            config,
            rng,
            epoch: now,
            now,
            registry: Registry::default(),
            timers: Timers::default(),
            requests: BTreeMap::new(),
            next_token: 0,
            server_requests: BTreeMap::new(),
            next_server_request: 0,
            outputs: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            draining: false,
            closing: 0,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Registers a connection whose WebSocket upgrade completed, or refuses it.
    pub fn open(&mut self, peer: &Peer, now: Instant) -> Admission {
        let now = self.advance(now);
        let id = self.fresh_id();
        let refusal = if self.draining {
            Some(close::DRAIN)
        } else if self.registry.len() >= self.config.max_connections {
            Some(close::CONCURRENCY_LIMIT)
        } else {
            None
        };
        if let Some(close) = refusal {
            self.stats.rejected += 1;
            self.trace(Some(id), EventKind::Rejected { code: close.code, open: self.registry.len() });
            return Admission::Rejected { id, close };
        }
        let remote = self.remote_address(peer);
        let heartbeat_at = now + self.config.heartbeat_interval;
        self.registry.insert(id, Connection::new(remote, heartbeat_at, now, self.config.request_burst));
        self.timers.arm(heartbeat_at, Timer::Heartbeat(id));
        self.stats.total += 1;
        self.trace(Some(id), EventKind::Opened { remote, open: self.registry.len() });
        Admission::Accepted(id)
    }

    /// Records a connection refused by a limit enforced outside this shard (the server's global
    /// admission across shards): traced and counted like any refusal, never registered. `open`
    /// is the count the refusal was judged against (every shard's connections and admissions in
    /// flight), so the trace shows whether the limit really was reached.
    pub fn refuse(&mut self, close: CloseReason, open: usize, now: Instant) -> ConnectionId {
        self.advance(now);
        let id = self.fresh_id();
        self.stats.rejected += 1;
        self.trace(Some(id), EventKind::Rejected { code: close.code, open });
        id
    }

    fn fresh_id(&mut self) -> ConnectionId {
        loop {
            let id = ConnectionId::random(&mut *self.rng);
            if !self.registry.was_seen(&id) {
                return id;
            }
        }
    }

    /// Feeds one input that happened at `now`.
    pub fn handle(&mut self, input: Input, now: Instant) {
        self.advance(now);
        match input {
            Input::Frame { conn, frame } => self.on_frame(conn, frame),
            Input::Pong { conn, payload } => self.on_pong(conn, &payload),
            Input::Ping { conn, payload } => self.on_ping(conn, payload),
            Input::PeerClosed { conn, code } => self.on_peer_closed(conn, code),
            Input::TransportLost { conn, reason } => match self.registry.contains(&conn) {
                true => self.end_connection_with(conn, DisconnectPath::Lost, Some(reason.code())),
                false => self.stray(conn, Stray::TransportLost),
            },
            Input::SendFailed { conn } => self.on_send_failed(conn),
            Input::BackendReply { token, result } => self.on_backend_reply(token, result),
            Input::Deliver { target, event_type, payload } => self.on_deliver(target, &event_type, &payload),
            Input::Subscription { conn, topic, room, subscribe, revision } => {
                self.on_subscription(conn, topic, room, subscribe, revision)
            }
            Input::ServerRequest { token, conn, request_type, payload } => {
                self.on_server_request(token, conn, request_type, payload)
            }
            Input::Drain => self.start_drain(),
            Input::Close { conn, close } => match self.registry.contains(&conn) {
                true => self.start_close(conn, close),
                false => self.stray(conn, Stray::CloseRequest),
            },
        }
    }

    /// Who may authenticate from now on (the operator rotated the secrets). Connections and
    /// their sessions stay as they are; the next `pcast.Authenticate` is judged by `tokens`.
    pub fn set_tokens(&mut self, tokens: crate::auth::TokenPolicy) {
        self.config.tokens = tokens;
    }

    /// The next action for the I/O layer.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next trace event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Gateway::handle_timeout`] must be called next, if any timer is armed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// Fires every timer due at `now`: heartbeats, close deadlines, drain closes, request deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.advance(now);
        while let Some((_, timer)) = self.timers.pop_due(now) {
            match timer {
                Timer::Heartbeat(id) => self.on_heartbeat(id),
                Timer::CloseDeadline(id) => {
                    self.trace(Some(id), EventKind::CloseTimeout);
                    self.end_connection(id, DisconnectPath::Forced);
                }
                Timer::DrainClose(id) => self.on_drain_close(id),
                Timer::Request(token) => self.on_request_timeout(token),
                Timer::ServerRequest(n) => self.on_server_request_timeout(n),
            }
        }
    }

    /// Connections registered now: the registry's size.
    pub fn open_connections(&self) -> usize {
        self.registry.len()
    }

    /// Connections waiting for the client's close frame.
    pub fn closing_connections(&self) -> usize {
        self.closing
    }

    /// Client requests waiting on the backend.
    pub fn pending_requests(&self) -> usize {
        self.requests.len()
    }

    /// Server-initiated requests waiting on clients.
    pub fn pending_server_requests(&self) -> usize {
        self.server_requests.len()
    }

    /// Room and conversation subscriptions held by all connections.
    pub fn subscriptions(&self) -> usize {
        self.registry.table_subscriptions()
    }

    /// Subscribers of a room or a conversation, in id order.
    pub fn subscribers(&self, topic: crate::event::Topic, room: &str) -> Vec<ConnectionId> {
        self.registry.subscribers(topic, room)
    }

    /// Ids of the registered connections, in id order.
    pub fn connection_ids(&self) -> Vec<ConnectionId> {
        self.registry.ids()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    // ---- internals shared with requests.rs ----

    /// Time never goes back: an input stamped before the latest one counts at the latest.
    fn advance(&mut self, now: Instant) -> Instant {
        self.now = self.now.max(now);
        self.now
    }

    pub(crate) fn push(&mut self, output: Output) {
        self.outputs.push_back(output);
    }

    pub(crate) fn trace(&mut self, conn: Option<ConnectionId>, kind: EventKind) {
        let at = self.now.saturating_duration_since(self.epoch);
        self.events.push_back(Event { at, conn, kind });
    }

    pub(crate) fn drop_frame(&mut self, conn: ConnectionId, reason: DropReason) {
        *self.stats.dropped.entry(reason.label()).or_default() += 1;
        self.trace(Some(conn), EventKind::Dropped { reason });
    }

    pub(crate) fn stray(&mut self, conn: ConnectionId, what: Stray) {
        let after_end = self.registry.recently_ended(&conn);
        self.trace(Some(conn), EventKind::Stray { what, after_end });
    }

    fn remote_address(&self, peer: &Peer) -> IpAddr {
        client_address(&self.config.trusted_proxies, peer)
    }

    fn on_heartbeat(&mut self, id: ConnectionId) {
        let now = self.now;
        let Some(conn) = self.registry.get_mut(&id) else {
            return;
        };
        conn.heartbeat_at = None;
        if conn.ping.is_some() {
            self.start_close(id, close::TIMEOUT);
            return;
        }
        conn.ping_seq += 1;
        conn.ping = Some((conn.ping_seq, now));
        let payload = conn.ping_seq.to_be_bytes().to_vec();
        let next = now + self.config.heartbeat_interval;
        conn.heartbeat_at = Some(next);
        self.timers.arm(next, Timer::Heartbeat(id));
        self.stats.pings += 1;
        self.push(Output::Ping { conn: id, payload });
        self.trace(Some(id), EventKind::PingSent);
    }

    fn on_pong(&mut self, id: ConnectionId, payload: &[u8]) {
        let now = self.now;
        let Some(conn) = self.registry.get(&id) else {
            return self.stray(id, Stray::Pong);
        };
        // Pongs cost a token like any frame: unsolicited ones are a flood like any other. One
        // arriving while closing answers a ping sent before, and is free.
        if conn.is_open() {
            match self.charge(id) {
                Charge::Within => {}
                Charge::Over => return self.drop_frame(id, DropReason::RateLimited),
                Charge::Closed => return, // the one too many: closing now
            }
        }
        let Some(conn) = self.registry.get_mut(&id) else { return };
        match conn.ping {
            Some((seq, sent)) if payload == seq.to_be_bytes() => {
                conn.ping = None;
                self.stats.pongs += 1;
                self.trace(Some(id), EventKind::Pong { rtt: now - sent });
            }
            _ => self.trace(Some(id), EventKind::UnexpectedPong),
        }
    }

    fn on_ping(&mut self, id: ConnectionId, payload: Vec<u8>) {
        if !self.registry.get(&id).is_some_and(|c| c.is_open()) {
            return; // gone or closing: no answer owed
        }
        match self.charge(id) {
            Charge::Within => self.push(Output::Pong { conn: id, payload }),
            Charge::Over => self.drop_frame(id, DropReason::RateLimited),
            Charge::Closed => {}
        }
    }

    fn on_peer_closed(&mut self, id: ConnectionId, code: Option<u16>) {
        let Some(conn) = self.registry.get(&id) else {
            return self.stray(id, Stray::Close);
        };
        let path = if conn.is_open() { DisconnectPath::Client } else { DisconnectPath::Server };
        self.trace(Some(id), EventKind::PeerClosed { code });
        self.end_connection_with(id, path, code);
    }

    fn on_send_failed(&mut self, id: ConnectionId) {
        if !self.registry.contains(&id) {
            return self.stray(id, Stray::SendFailed);
        }
        self.trace(Some(id), EventKind::SendFailed);
        // If the close frame cannot go out either, the close deadline aborts the transport.
        self.start_close(id, close::UNEXPECTED);
    }

    /// Sends a close frame and gives the client the close timeout to answer. No-op unless open.
    pub(crate) fn start_close(&mut self, id: ConnectionId, close: CloseReason) {
        let deadline = self.now + self.config.close_timeout;
        let Some(conn) = self.registry.get_mut(&id) else {
            return;
        };
        if !conn.is_open() {
            return;
        }
        conn.state = State::Closing { close, deadline };
        self.closing += 1;
        let heartbeat = conn.heartbeat_at.take();
        let drain = conn.drain_at.take();
        if let Some(at) = heartbeat {
            self.timers.disarm(at, Timer::Heartbeat(id));
        }
        if let Some(at) = drain {
            self.timers.disarm(at, Timer::DrainClose(id));
        }
        self.timers.arm(deadline, Timer::CloseDeadline(id));
        self.push(Output::Close { conn: id, close });
        self.trace(Some(id), EventKind::CloseSent { code: close.code, reason: close.reason });
    }

    pub(crate) fn end_connection(&mut self, id: ConnectionId, path: DisconnectPath) {
        self.end_connection_with(id, path, None)
    }

    /// The one place a connection ends. `peer_code` is the code of the client's close frame, or
    /// the code a lost transport is counted under.
    fn end_connection_with(&mut self, id: ConnectionId, path: DisconnectPath, peer_code: Option<u16>) {
        let Some(conn) = self.registry.remove(&id, self.config.ended_memory) else {
            return;
        };
        for (topic, rooms) in [(Topic::Room, &conn.rooms), (Topic::Conversation, &conn.conversations)] {
            for room in rooms {
                self.interest_after(topic, room, true);
            }
        }
        if let Some(at) = conn.heartbeat_at {
            self.timers.disarm(at, Timer::Heartbeat(id));
        }
        if let Some(at) = conn.drain_at {
            self.timers.disarm(at, Timer::DrainClose(id));
        }
        // The code that ended the conversation: ours if we closed first, else the client's.
        let code = match (conn.state, path) {
            (State::Closing { close, deadline }, _) => {
                self.closing -= 1;
                // A forced end comes from this very timer, already popped.
                if path != DisconnectPath::Forced {
                    self.timers.disarm(deadline, Timer::CloseDeadline(id));
                }
                close.code
            }
            (State::Open, DisconnectPath::Client) => peer_code.unwrap_or(close::NO_STATUS),
            (State::Open, _) => peer_code.unwrap_or(close::ABNORMAL),
        };
        for token in &conn.pending {
            self.fail_request_on_disconnect(*token);
        }
        for n in &conn.server_requests {
            self.fail_server_request_on_disconnect(*n);
        }
        *self.stats.disconnects.entry(path).or_default() += 1;
        *self.stats.disconnects_by_code.entry(code).or_default() += 1;
        self.trace(Some(id), EventKind::Disconnected { path, code, open: self.registry.len() });
        self.push(if path == DisconnectPath::Forced {
            Output::Abort { conn: id }
        } else {
            Output::Release { conn: id }
        });
        self.push(Output::Publish(pcast::ConnectionDisconnected {
            connection_id: id.to_string(),
            reason_code: u32::from(code),
            description: Some(path.label().to_owned()),
        }));
    }

    fn start_drain(&mut self) {
        if self.draining {
            return;
        }
        self.draining = true;
        self.trace(None, EventKind::DrainStarted { open: self.registry.len() });
        let ids: Vec<ConnectionId> =
            self.registry.iter().filter(|(_, c)| c.is_open()).map(|(id, _)| *id).collect();
        let n = ids.len() as u32;
        for (i, id) in ids.into_iter().enumerate() {
            // Evenly spaced over the window, in id order (ids are random, so is the order).
            let at = self.now + self.config.drain_window.mul_f64(f64::from(i as u32) / f64::from(n.max(1)));
            if let Some(conn) = self.registry.get_mut(&id) {
                conn.drain_at = Some(at);
                self.timers.arm(at, Timer::DrainClose(id));
            }
        }
    }

    fn on_drain_close(&mut self, id: ConnectionId) {
        let Some(conn) = self.registry.get_mut(&id) else {
            return;
        };
        conn.drain_at = None;
        conn.drain_due = true;
        let pending = conn.pending.len();
        if pending == 0 {
            self.start_close(id, close::DRAIN);
        } else {
            self.trace(Some(id), EventKind::DrainDeferred { pending });
        }
    }

    /// Closes a connection whose close waits for its in-flight requests (a drain, or a flood's
    /// 1008) once the last of them is answered or timed out.
    pub(crate) fn close_when_idle(&mut self, id: ConnectionId) {
        let Some(conn) = self.registry.get(&id).filter(|c| c.pending.is_empty()) else { return };
        if conn.flood_due {
            self.start_close(id, close::RATE_LIMIT);
        } else if conn.drain_due {
            self.start_close(id, close::DRAIN);
        }
    }

    /// Time since the gateway started (its `now` at [`Gateway::new`]).
    pub(crate) fn elapsed_since_start(&self) -> Duration {
        self.now.saturating_duration_since(self.epoch)
    }

    pub(crate) fn elapsed_since(&self, then: Instant) -> Duration {
        self.now.saturating_duration_since(then)
    }
}
