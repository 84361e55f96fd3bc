//! clientmq-server: binds the sans-IO [`clientmq_core::Gateway`] to tokio. It frames WebSocket
//! itself (`ws`), using tungstenite only to derive the upgrade's accept key.
//!
//! [`serve`] is generic over the listener and stream types, so that the simulator runs this very
//! code on turmoil's sockets while production runs it on `tokio::net`.
//!
//! Layout: `http` reads request heads and answers the plain endpoints; `conn` is the task of one
//! WebSocket; `shard` owns a gateway core and routes its outputs; `metrics` renders Prometheus
//! text; `backends` is the port to the services behind the gateway, with the embedded (chat in
//! process) and bus (workers on NATS) backends.

mod admission;
mod backends;
mod command;
pub mod config;
mod conn;
pub mod http;
mod metrics;
mod observe;
mod port;
mod ready;
mod shard;
pub mod tls;
pub mod tokens;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use clientmq_core::{Peer, client_address, close};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, Semaphore};

use admission::{AddressSlots, GlobalAdmission};
pub use backends::EchoBackend;
pub use backends::bus::BusBackend;
pub use backends::embedded::EmbeddedBackend;
use command::Command;
pub use config::{Args, ServerConfig};
use conn::Socket;
use http::Head;
use metrics::{Metrics, ShardGauges};
pub use observe::{InvariantSink, TraceFn, TraceSink};
pub use port::{Answer, Backend, Connections};
use shard::Shard;
use tls::MaybeTls;

/// A source of connections: `tokio::net::TcpListener` in production, turmoil's in simulation.
pub trait Listener: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)> {
        let (stream, addr) = tokio::net::TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, addr))
    }
}

/// Sets the kernel send buffer (SO_SNDBUF) of every socket `listener` accepts from now on: they
/// inherit the listening socket's. 0 leaves the kernel's own, autotuned.
pub fn set_send_buffer(listener: &tokio::net::TcpListener, bytes: usize) -> io::Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    socket2::SockRef::from(listener).set_send_buffer_size(bytes)
}

/// A running gateway: its shards, metrics and readiness. Cheap to clone.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    config: ServerConfig,
    handle: Connections,
    gauges: Arc<Vec<ShardGauges>>,
    metrics: Arc<Metrics>,
    draining: AtomicBool,
    drain_started: Notify,
    /// Global admission across shards (`None` with one shard, whose core enforces the limit
    /// exactly). A registered connection's permit lives in its shard's handle.
    admission: Option<Arc<GlobalAdmission>>,
    handshakes: Arc<Semaphore>,
    /// The TLS certificate new handshakes present (replaced by a reload; open connections keep
    /// theirs).
    tls: RwLock<Option<tls::Acceptor>>,
    /// The tasks of sockets still in their handshake, by accept order: a simulated death drops
    /// them in that order (dropped with the runtime instead, they would go in task id order,
    /// which is global to the process, and a replay in the same process would differ).
    handshaking: Mutex<(u64, BTreeMap<u64, tokio::task::AbortHandle>)>,
    address_slots: Option<Arc<AddressSlots>>,
    next_shard: AtomicUsize,
    /// The backend's readiness (a bus backend is not ready while the bus is away).
    backend_ready: Box<dyn Fn() -> bool + Send + Sync>,
}

impl Server {
    /// Starts the shards. Must be called inside a tokio runtime.
    pub fn start<B: Backend>(config: ServerConfig, backend: Arc<B>) -> Server {
        let shards = config.shards.max(1);
        let gauges: Arc<Vec<ShardGauges>> = Arc::new((0..shards).map(|_| ShardGauges::default()).collect());
        let metrics = Arc::new(Metrics::new());
        let routes = Arc::new(RwLock::new(HashMap::new()));
        let mut senders = Vec::with_capacity(shards);
        let mut receivers = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (tx, rx) = command::command_channel();
            senders.push(tx);
            receivers.push(rx);
        }
        let handle =
            Connections { shards: Arc::new(senders), routes: routes.clone(), metrics: metrics.clone() };
        let admission = (shards > 1).then(|| {
            let max = config.gateway.max_connections;
            Arc::new(GlobalAdmission {
                permits: Arc::new(Semaphore::new(max)),
                max,
                admitting: AtomicUsize::new(0),
            })
        });
        // Deliveries are traced only for a reader: the trace sink, or the debug log of the trace.
        let gateway = clientmq_core::Config {
            trace_deliveries: config.trace.is_some()
                || tracing::enabled!(target: "clientmq::trace", tracing::Level::DEBUG),
            ..config.gateway.clone()
        };
        for (index, rx) in receivers.into_iter().enumerate() {
            let shard = Shard {
                index,
                gw: shard::new_gateway(&gateway, config.seed, index),
                rx,
                conns: shard::ConnMap::default(),
                lingering: BTreeMap::new(),
                ready: Arc::default(),
                scratch: vec![0; shard::SCRATCH],
                server_requests: BTreeMap::new(),
                next_token: 0,
                backend: backend.clone(),
                gauges: gauges.clone(),
                metrics: metrics.clone(),
                routes: routes.clone(),
                trace: config.trace.clone(),
                check: config.check.clone(),
                admission: admission.clone(),
                held_permits: 0,
                checks_skipped: 0,
                check_address_slots: config.max_connections_per_address > 0,
                outbound_queue: config.outbound_queue,
                outbound_queue_bytes: config.outbound_queue_bytes,
                departed: Vec::new(),
                settled: Vec::new(),
                to_write: Default::default(),
                writes_per_turn: config.writes_per_turn.max(1),
                max_frame_bytes: config.max_frame_bytes,
            };
            // Outside tokio's cooperative budget: one turn of a shard does hundreds of socket
            // operations (a room event to thousands of members), and with the budget every one
            // past the 128th came back pending and went round the ready list again. The shard
            // yields by itself instead (`Shard::run`).
            tokio::spawn(tokio::task::unconstrained(shard.run()));
        }
        backend.attach(handle.clone());
        Server {
            inner: Arc::new(Inner {
                handle,
                gauges,
                metrics,
                draining: AtomicBool::new(false),
                drain_started: Notify::new(),
                admission,
                handshakes: Arc::new(Semaphore::new(config.max_handshakes)),
                handshaking: Mutex::default(),
                tls: RwLock::new(config.tls.clone()),
                address_slots: (config.max_connections_per_address > 0)
                    .then(|| AddressSlots::new(config.max_connections_per_address)),
                next_shard: AtomicUsize::new(0),
                backend_ready: {
                    let backend = backend.clone();
                    Box::new(move || backend.ready())
                },
                config,
            }),
        }
    }

    pub fn handle(&self) -> &Connections {
        &self.inner.handle
    }

    /// Open connections: the sum of the shards' registry sizes.
    pub fn open_connections(&self) -> usize {
        self.inner.gauges.iter().map(|g| g.open.load(Ordering::Relaxed)).sum()
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// The Prometheus text exposition.
    pub fn metrics_text(&self) -> String {
        self.inner.metrics.render(&self.inner.gauges)
    }

    /// Who may authenticate from now on, on every shard: open connections and sessions stay.
    pub async fn set_tokens(&self, tokens: clientmq_core::TokenPolicy) {
        for shard in self.inner.handle.shards.iter() {
            let _ = shard.send(Command::Tokens(tokens.clone())).await;
        }
    }

    /// The certificate new TLS handshakes present from now on; open connections keep theirs.
    pub fn set_tls(&self, acceptor: tls::Acceptor) {
        *self.inner.tls.write().unwrap_or_else(PoisonError::into_inner) = Some(acceptor);
    }

    /// Counts a reload of `what` on SIGHUP (`clientmq_reloads_total{what,outcome}`).
    pub fn reloaded(&self, what: &str, ok: bool) {
        self.inner.metrics.reloaded(what, ok);
    }

    /// Stops admitting and closes every connection with 3333 over the drain window.
    pub async fn drain(&self) {
        if !self.inner.draining.swap(true, Ordering::AcqRel) {
            self.inner.drain_started.notify_waiters();
            self.inner.handle.drain().await;
        }
    }

    /// Drops every connection's transport now, in connection id order, without telling the
    /// cores: what a killed process looks like to its clients, made deterministic so a simulated
    /// restart replays byte for byte. The server is not usable afterwards.
    pub fn abort_connections(&self) {
        for shard in self.inner.handle.shards.iter() {
            let _ = shard.try_send(Command::AbortAll);
        }
        let tasks =
            std::mem::take(&mut self.inner.handshaking.lock().unwrap_or_else(PoisonError::into_inner).1);
        for task in tasks.into_values() {
            task.abort();
        }
    }

    /// Accepts connections until drain has finished: every connection gone, or the drain
    /// deadline passed. Returns how many connections were still open at the end.
    pub async fn run<L: Listener>(&self, mut listener: L) -> usize {
        let accept_loop = async {
            loop {
                match listener.accept().await {
                    Ok((stream, addr)) => {
                        let Ok(permit) = self.inner.handshakes.clone().try_acquire_owned() else {
                            self.inner.metrics.handshake_refused();
                            tracing::warn!(%addr, "too many handshakes in flight; dropping socket");
                            continue;
                        };
                        let server = self.clone();
                        let mut handshaking =
                            self.inner.handshaking.lock().unwrap_or_else(PoisonError::into_inner);
                        let (next, tasks) = &mut *handshaking;
                        let seq = *next;
                        *next += 1;
                        let task = tokio::spawn(async move {
                            let done = HandshakeDone(server.clone(), seq);
                            server.connection(stream, addr, permit).await;
                            drop(done);
                        });
                        tasks.insert(seq, task.abort_handle());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        // Out of file descriptors and the like: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        };
        tokio::select! {
            biased;
            () = accept_loop => unreachable!("the accept loop never ends"),
            () = self.drained() => {}
        }
        self.open_connections()
    }

    async fn drained(&self) {
        loop {
            let started = self.inner.drain_started.notified();
            if self.is_draining() {
                break;
            }
            started.await;
        }
        let deadline = tokio::time::Instant::now() + self.inner.config.drain_deadline;
        while self.open_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A new socket: TLS first when configured, then its HTTP request.
    async fn connection<S>(self, stream: S, addr: SocketAddr, handshake: tokio::sync::OwnedSemaphorePermit)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let acceptor = self.inner.tls.read().unwrap_or_else(PoisonError::into_inner).clone();
        let stream = match acceptor {
            None => MaybeTls::Plain(stream),
            Some(acceptor) => {
                match tokio::time::timeout(self.inner.config.handshake_timeout, acceptor.0.accept(stream))
                    .await
                {
                    Ok(Ok(tls)) => MaybeTls::Tls(Box::new(tls)),
                    // Not TLS (plain HTTP to a TLS port), a bad certificate verdict, or too slow.
                    Ok(Err(_)) | Err(_) => return self.inner.metrics.tls_refused(),
                }
            }
        };
        self.http(stream, addr, handshake).await
    }

    /// Answers a plain request or a refused upgrade, bounded by the handshake timeout.
    async fn answer<S: AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        status: &str,
        content_type: &str,
        body: &[u8],
    ) {
        self.answer_with(stream, status, content_type, "", body).await
    }

    /// [`Self::answer`] with `extra` header lines.
    async fn answer_with<S: AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        status: &str,
        content_type: &str,
        extra: &str,
        body: &[u8],
    ) {
        self.inner.metrics.http_response(status);
        let timeout = self.inner.config.handshake_timeout;
        let answer = http::respond(stream, status, content_type, extra, body);
        if tokio::time::timeout(timeout, answer).await.is_err() {
            self.inner.metrics.handshake_timed_out();
        }
    }

    async fn http<S>(self, mut stream: S, addr: SocketAddr, handshake: tokio::sync::OwnedSemaphorePermit)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let timeout = self.inner.config.handshake_timeout;
        let head = match tokio::time::timeout(timeout, http::read_head(&mut stream)).await {
            Ok(Ok(head)) => head,
            Ok(Err(http::HeadError::TooLarge)) => {
                return self
                    .answer(&mut stream, "431 Request Header Fields Too Large", "text/plain", b"")
                    .await;
            }
            Ok(Err(http::HeadError::Malformed)) => {
                return self.answer(&mut stream, "400 Bad Request", "text/plain", b"bad request\n").await;
            }
            Ok(Err(_)) => return, // gone before the request ended
            Err(_) => return self.inner.metrics.handshake_timed_out(), // silent, or trickling
        };
        let path = head.path.split('?').next().unwrap_or_default();
        let reply = match (head.method.as_str(), path) {
            (_, "/ws") => None,
            _ if self.inner.config.admin_port => Some(not_found()),
            (method, path) => Some(self.operator_endpoint(method, path)),
        };
        if let Some((status, content_type, body)) = reply {
            return self.answer(&mut stream, status, content_type, &body).await;
        }
        let refusal = self.upgrade_refusal(&head);
        let key = match (refusal, head.upgrade()) {
            (Some(status), _) => Err((status, "")),
            (None, Err(http::UpgradeError::Version)) => {
                Err(("426 Upgrade Required", "sec-websocket-version: 13\r\n"))
            }
            (None, Err(_)) => Err(("400 Bad Request", "")),
            (None, Ok(key)) => Ok(key.to_owned()),
        };
        let key = match key {
            Ok(key) => key,
            Err((status, extra)) => {
                return self.answer_with(&mut stream, status, "text/plain", extra, b"").await;
            }
        };
        match tokio::time::timeout(timeout, http::switch_protocols(&mut stream, &key)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => return self.inner.metrics.handshake_timed_out(),
        }
        drop(handshake);
        let peer = Peer { addr, headers: forwarded_headers(&head) };
        self.admit(Box::new(stream), head.rest, peer).await;
    }

    /// /metrics, /healthz and /readyz; anything else is 404.
    fn operator_endpoint(&self, method: &str, path: &str) -> (&'static str, &'static str, Vec<u8>) {
        match (method, path) {
            ("GET", "/metrics") => {
                let body = self.metrics_text();
                ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body.into_bytes())
            }
            ("GET", "/healthz") => ("200 OK", "text/plain", b"ok\n".to_vec()),
            ("GET", "/readyz") if self.is_draining() => {
                ("503 Service Unavailable", "text/plain", b"draining\n".to_vec())
            }
            ("GET", "/readyz") if !(self.inner.backend_ready)() => {
                ("503 Service Unavailable", "text/plain", b"backend unavailable\n".to_vec())
            }
            ("GET", "/readyz") => ("200 OK", "text/plain", b"ready\n".to_vec()),
            _ => not_found(),
        }
    }

    /// Serves the operator endpoints on `listener` (plain HTTP, one request per connection) for
    /// as long as the server runs; with [`ServerConfig::admin_port`] the public port no longer
    /// does. Bounded like the public port: handshake timeout, [`ADMIN_CONNECTIONS`] at once.
    pub fn serve_admin<L: Listener>(&self, mut listener: L) -> tokio::task::JoinHandle<()> {
        let server = self.clone();
        let slots = Arc::new(Semaphore::new(ADMIN_CONNECTIONS));
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
                let server = server.clone();
                tokio::spawn(async move {
                    let timeout = server.inner.config.handshake_timeout;
                    if let Ok(Ok(head)) = tokio::time::timeout(timeout, http::read_head(&mut stream)).await {
                        let path = head.path.split('?').next().unwrap_or_default();
                        let (status, content_type, body) = server.operator_endpoint(&head.method, path);
                        server.answer(&mut stream, status, content_type, &body).await;
                    }
                    drop(slot);
                });
            }
        })
    }

    fn upgrade_refusal(&self, head: &Head) -> Option<&'static str> {
        let origins = &self.inner.config.allowed_origins;
        if !origins.is_empty() && !head.header("origin").is_some_and(|o| origins.iter().any(|a| a == o)) {
            return Some("403 Forbidden");
        }
        self.is_draining().then_some("503 Service Unavailable")
    }

    /// Hands the upgraded connection to a shard, which admits it (and from then on owns its
    /// socket) or refuses it; the limits across shards are judged here first.
    async fn admit(&self, socket: Box<dyn Socket>, read_ahead: Vec<u8>, peer: Peer) {
        let shards = &self.inner.handle.shards;
        let index = self.inner.next_shard.fetch_add(1, Ordering::Relaxed) % shards.len();
        let shard = &shards[index];
        let slot = match &self.inner.address_slots {
            None => None,
            Some(slots) => {
                match slots.take(client_address(&self.inner.config.gateway.trusted_proxies, &peer)) {
                    Some(slot) => Some(slot),
                    None => {
                        let refuse = Command::Refuse {
                            close: close::ADDRESS_LIMIT,
                            open: self.open_connections(),
                            socket,
                        };
                        let _ = shard.send(refuse).await;
                        return;
                    }
                }
            }
        };
        let permit = match &self.inner.admission {
            None => None,
            Some(global) => match global.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    global.admitting.fetch_add(1, Ordering::Relaxed);
                    Some(permit)
                }
                Err(_) => {
                    let open = self.open_connections() + global.admitting.load(Ordering::Relaxed);
                    let _ =
                        shard.send(Command::Refuse { close: close::CONCURRENCY_LIMIT, open, socket }).await;
                    return;
                }
            },
        };
        let admitting = permit.is_some();
        if shard.send(Command::Open { peer, socket, read_ahead, permit, slot }).await.is_err()
            && let (Some(global), true) = (&self.inner.admission, admitting)
        {
            global.admitting.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Forgets a handshake task's abort handle when the task ends, however it ends.
struct HandshakeDone(Server, u64);

impl Drop for HandshakeDone {
    fn drop(&mut self) {
        self.0.inner.handshaking.lock().unwrap_or_else(PoisonError::into_inner).1.remove(&self.1);
    }
}

/// Admin connections served at once; more are dropped at accept.
pub const ADMIN_CONNECTIONS: usize = 64;

fn not_found() -> (&'static str, &'static str, Vec<u8>) {
    ("404 Not Found", "text/plain", b"not found\n".to_vec())
}

/// Only the headers the core reads travel with the connection.
fn forwarded_headers(head: &Head) -> Vec<(String, String)> {
    head.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case("x-forwarded-for")).cloned().collect()
}

/// Runs a gateway on `listener` until `shutdown` resolves, then drains it. Returns the number
/// of connections still open when it stopped (0 after a complete drain).
pub async fn serve<L, B>(
    listener: L,
    config: ServerConfig,
    backend: Arc<B>,
    shutdown: impl Future<Output = ()>,
) -> usize
where
    L: Listener,
    B: Backend,
{
    Server::start(config, backend).serve_until(listener, shutdown).await
}

impl Server {
    /// Accepts on `listener` until `shutdown` resolves, then drains. Returns the number of
    /// connections still open when it stopped (0 after a complete drain).
    pub async fn serve_until<L: Listener>(&self, listener: L, shutdown: impl Future<Output = ()>) -> usize {
        let runner = self.clone();
        let run = tokio::spawn(async move { runner.run(listener).await });
        shutdown.await;
        self.drain().await;
        run.await.unwrap_or_else(|_| self.open_connections())
    }
}
