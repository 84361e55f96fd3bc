//! The chat worker on the store (`clientmq-chat`, unless `--memory`): it keeps nothing of its
//! own but a cache, so any number of them serve one fleet in the `chat` queue group, and any of
//! them may die at any moment.
//!
//! - Each request is served in a task of its own, in order per connection (a client's requests
//!   may be pipelined) and concurrently across connections: a decision waits on the store, and
//!   a join on its gateway's acknowledgement, without holding anything else back. A connection's
//!   queue is bounded, and a request its gateway stopped waiting for is dropped (`queue`).
//! - What a request changes for its connection (subscriptions) is published before its reply,
//!   ordered among all workers' changes by the store's revisions (`tell`);
//!   room events and chat messages reach the rooms through the history stream's republish, so a
//!   join, once written, waits until its gateway hears the room before it appends its event (the
//!   member hears its own arrival and everything after).
//! - Every worker hears every gateway's announcements and judges silence itself; the decisions
//!   they then make (a session's grace starting, a session's end) are written expecting a
//!   revision, so of several workers one carries each out and the others find it done. The
//!   facts an observer is told come from the worker whose write was taken.
//! - Timers (graces run out, idle rooms, pending events, orphaned members, old ended marks) run
//!   on every worker once a second, off the loop.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use clientmq_bus::contract::{self, ANNOUNCE_EVERY, Subjects, header};
use clientmq_bus::gateways::{Answered, Gateways};
use clientmq_bus::store::{Store, StoreError};
use clientmq_bus::{Bus, BusMessage, BusStatus, Subscription};
use clientmq_core::{ConnectionId, Revision, Topic};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::oneshot;

use super::cache::{Bucket, Cache, lock};
use super::decide::{DecideError, decide};
use super::layout::{Layout, StartError};
use super::queue::Queues;
use super::records::ended_key;
use super::{directory, ending, follow, sessions};
use crate::ChatConfig;
use crate::metrics::WorkerMetrics;
use crate::wire::{self, Limits};
use crate::worker::{Inputs, WorkerConfig, WorkerEvent, WorkerObserver, inputs};

/// How long a connection's end is remembered: far past any request that raced past it.
const ENDED_KEPT: Duration = Duration::from_secs(300);
/// How long an orphan waits in the store for its gateway to come back and close it.
const ORPHANS_KEPT: Duration = Duration::from_secs(3600);
/// How long a join waits for its gateway to say it hears the room.
pub(super) const ACK_WITHIN: Duration = Duration::from_secs(1);
/// How many rooms a sweep tells what dead deciders left at once.
const ROOMS_TOLD_AT_ONCE: usize = 8;
/// How long a request to the store waits for its answer.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a draining worker waits for the requests it took: past any gateway's timeout
/// (`Clientmq-Timeout-Ms`), after which a queued request is dropped anyway.
const DRAIN_WITHIN: Duration = Duration::from_secs(30);

/// What every task of a worker shares.
pub(crate) struct Node<B: Bus> {
    pub bus: Arc<B>,
    pub store: Store<B>,
    pub layout: Layout,
    pub cache: Arc<Mutex<Cache>>,
    pub subjects: Subjects,
    pub config: ChatConfig,
    pub limits: Limits,
    pub(super) name: String,
    observer: Option<WorkerObserver>,
    pub metrics: Option<Arc<WorkerMetrics>>,
    rng: Mutex<StdRng>,
    start: tokio::time::Instant,
    sends: AtomicU64,
    /// The last message sequence of rooms this worker sent to: a hint (a wrong one costs a retry).
    hints: Mutex<BTreeMap<String, u64>>,
    /// Connections whose end could not be recorded (the store did not answer), with the gateway
    /// that orphaned them: tried again at the next tick, so a gateway counted gone while this
    /// worker was cut off still has its sessions detached.
    unended: Mutex<BTreeMap<String, Option<String>>>,
    /// Sessions whose end is under way here (`true`: it failed, try again at the next tick).
    ending: Mutex<BTreeMap<String, bool>>,
    /// Subscriptions waiting for their gateway's acknowledgement, by number.
    pub(super) acks: Mutex<BTreeMap<u64, oneshot::Sender<()>>>,
    pub(super) next_ack: AtomicU64,
}

impl<B: Bus> Node<B> {
    /// Milliseconds since the Unix epoch, from the configured start and elapsed time.
    pub fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.config.wall_clock_start_ms.saturating_add(elapsed)
    }

    pub fn random_id(&self, len: usize) -> String {
        wire::random_id(&mut self.rng.lock().unwrap_or_else(PoisonError::into_inner), len)
    }

    /// A message id unique to one send of this worker.
    pub fn send_id(&self) -> String {
        format!("{}.{}", self.name, self.sends.fetch_add(1, Ordering::Relaxed))
    }

    pub fn hint(&self, room: &str) -> Option<u64> {
        self.hints.lock().unwrap_or_else(PoisonError::into_inner).get(room).copied()
    }

    pub fn set_hint(&self, room: &str, seq: u64) {
        let mut hints = self.hints.lock().unwrap_or_else(PoisonError::into_inner);
        // Hints are worth little next to their bound: start over rather than grow.
        if hints.len() >= self.config.max_rooms.max(1) {
            hints.clear();
        }
        hints.insert(room.to_owned(), seq);
    }

    pub async fn publish(&self, msg: BusMessage) {
        if let Err(e) = self.bus.publish(msg).await {
            tracing::debug!(error = %e, "not published");
        }
    }

    /// A message on the worker's inbox that acknowledges a subscription: whether it was one.
    /// The server's no-responders answer counts: no gateway holds that subject (it died, or
    /// restarted under another key), so no connection of it hears anything to change. Waited
    /// out instead, a takeover's release of a connection on a restarted gateway held every
    /// resume and sweep of its session for the acknowledgement's bound (explore seed 7,000,056).
    fn acknowledged(&self, msg: &BusMessage) -> bool {
        let prefix = format!("{}.wk.{}.ack.", self.subjects.prefix(), self.name);
        let Some(n) = msg.subject.strip_prefix(&prefix) else { return false };
        if msg.status.is_none_or(|s| s == clientmq_bus::NO_RESPONDERS)
            && let Some(tx) = n
                .parse()
                .ok()
                .and_then(|n| self.acks.lock().unwrap_or_else(PoisonError::into_inner).remove(&n))
        {
            let _ = tx.send(());
        }
        true
    }

    /// Waits until the cache holds every change of `bucket` up to stream sequence `seq` (at most
    /// the store's timeout). Whether it got there.
    pub async fn followed(&self, bucket: Bucket, seq: u64) -> bool {
        super::follow::followed(&self.cache, bucket, seq, self.store.timeout()).await
    }

    /// Brings the cache up to everything `bucket` holds now: what a worker does before it
    /// believes the cache's "no such session".
    pub async fn catch_up(&self, bucket: Bucket) -> Result<bool, StoreError> {
        super::follow::catch_up(&self.store, &self.layout, &self.cache, bucket).await
    }

    /// Connection `conn` ended (a disconnect notice, a sync, its gateway gone: `orphan_of`):
    /// marked ended, then, once the cache has followed up to the mark, the session it holds
    /// starts its grace. Whether this worker detached a session.
    pub async fn ended(&self, conn: &str, orphan_of: Option<&str>) -> Result<bool, DecideError> {
        let now = self.now_ms();
        let (store, layout, cache) = (&self.store, &self.layout, &*self.cache);
        decide(store, layout, cache, |c| sessions::mark_ended(c, conn, now, orphan_of)).await?;
        let mark = lock(cache).revision(Bucket::Sessions, &ended_key(conn));
        self.followed(Bucket::Sessions, mark).await;
        let grace = u64::try_from(self.config.session_grace.as_millis()).unwrap_or(u64::MAX);
        let detached = decide(store, layout, cache, |c| sessions::detach(c, conn, now, grace)).await?;
        Ok(detached.is_some())
    }

    /// Ends session `id` (only if its grace ran out by now, with `due`); the connection holding
    /// it, if any, stops hearing each room as it leaves it. Whether this worker ended it.
    pub async fn end_session(&self, id: &str, due: bool) -> Result<bool, DecideError> {
        // Connections it moved away from are told first: its end forgets them (see `sessions::end`).
        self.tell_released(id).await?;
        let now = self.now_ms();
        let held = lock(&self.cache)
            .session(id)
            .and_then(|s| Some((s.value.gateway.clone()?, s.value.conn.clone()?)));
        let due_by = due.then_some(now);
        let (store, layout, cache) = (&self.store, &self.layout, &*self.cache);
        // Told at the end's own binding (the key's deletion), which comes after every binding
        // the connection was told before.
        let held = &held;
        let tell = |room: String, revision: u64| async move {
            if let Some((gateway, conn)) = held {
                let at = Revision { binding: Some(self.binding(id)), room: revision };
                let off = [(Topic::Room, false), (Topic::Conversation, false)];
                self.subscribe((gateway, conn), &room, &off, at).await;
            }
        };
        ending::end_session(store, layout, cache, id, due_by, now, tell).await
    }

    /// When the loop must wake for the next session whose grace runs out.
    fn next_due(&self) -> Option<tokio::time::Instant> {
        let ending: std::collections::BTreeSet<String> =
            self.ending.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect();
        let due_ms = lock(&self.cache).next_due(&ending)?;
        let from_start = due_ms.saturating_sub(self.config.wall_clock_start_ms);
        Some(self.start + Duration::from_millis(from_start))
    }

    /// Starts ending each session whose grace has run out and whose end is not under way here.
    fn end_due(self: &Arc<Self>) {
        let due: Vec<String> = lock(&self.cache).due(self.now_ms()).into_iter().map(str::to_owned).collect();
        for id in due {
            let mut ending = self.ending.lock().unwrap_or_else(PoisonError::into_inner);
            if ending.contains_key(&id) {
                continue;
            }
            ending.insert(id.clone(), false);
            let node = self.clone();
            tokio::spawn(async move {
                let ended = node.end_session(&id, true).await;
                let mut ending = node.ending.lock().unwrap_or_else(PoisonError::into_inner);
                match ended {
                    Ok(_) => ending.remove(&id),
                    Err(e) => {
                        tracing::debug!(session = %id, error = %e, "session end cut short");
                        ending.insert(id, true)
                    }
                };
            });
        }
    }

    /// Ends that failed are tried again.
    fn retry_ends(&self) {
        self.ending.lock().unwrap_or_else(PoisonError::into_inner).retain(|_, failed| !*failed);
    }

    /// What every worker repairs once a second: what deciders that died left to tell. Apart
    /// from [`Node::tick`]: in a hot room a sweep takes over a second, and waiting behind the
    /// rest of the timers as well, a dead decider's conversation subscription was told past the
    /// bound (explore seed 670,005,081).
    async fn repair(&self) -> Result<(), DecideError> {
        let cache = &*self.cache;
        // Each kind on its own: a hot room's telling takes a dozen round trips under
        // contention, and a connection a takeover released must not hear the session's rooms
        // that much longer (explore seed 620,038,059).
        let rooms: Vec<String> = lock(cache).rooms_with_pending().into_iter().map(str::to_owned).collect();
        let moved: Vec<String> = lock(cache).sessions_released().into_iter().map(str::to_owned).collect();
        let bound: Vec<String> = lock(cache).sessions_untold().into_iter().map(str::to_owned).collect();
        // Rooms a few at a time: a room whose sessions' gateway is cut off holds its telling
        // for the acknowledgement's bound, and the rooms after it must not wait that long.
        let touched = async {
            use futures_util::StreamExt as _;
            let failed = std::sync::Mutex::new(None);
            futures_util::stream::iter(&rooms)
                .for_each_concurrent(ROOMS_TOLD_AT_ONCE, |room| async {
                    if let Err(e) = self.tell_touched(room).await {
                        failed.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(e);
                    }
                })
                .await;
            failed
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner)
                .map_or(Ok(()), |e| Err(DecideError::from(e)))
        };
        let released = async {
            for id in moved {
                self.tell_released(&id).await?;
            }
            Ok(())
        };
        let untold = async {
            for id in bound {
                self.tell_holder_rooms(&id).await?;
            }
            Ok(())
        };
        let (touched, released, untold) = tokio::join!(touched, released, untold);
        touched.and(released).and(untold)
    }

    /// The timers every worker runs once a second: events left pending and members left behind
    /// by a worker that died, idle rooms, old ended marks.
    async fn tick(&self) -> Result<(), DecideError> {
        let now = self.now_ms();
        let (store, layout, cache) = (&self.store, &self.layout, &*self.cache);
        ending::sweep(store, layout, cache, now).await?;
        let idle = now.saturating_sub(u64::try_from(self.config.room_idle.as_millis()).unwrap_or(u64::MAX));
        directory::forget_idle(store, layout, cache, idle).await?;
        let ago = |kept: Duration| now.saturating_sub(u64::try_from(kept.as_millis()).unwrap_or(u64::MAX));
        let (old, old_orphans) = (ago(ENDED_KEPT), ago(ORPHANS_KEPT));
        let marks: Vec<String> =
            lock(cache).old_marks(old, old_orphans).into_iter().map(str::to_owned).collect();
        for conn in marks {
            decide(store, layout, cache, |c| sessions::unmark_ended(c, &conn, old, old_orphans)).await?;
        }
        Ok(())
    }
}

/// Spawns `work` unless its last run (`running`) is still under way.
fn unless_running(
    running: &Arc<AtomicBool>,
    what: &'static str,
    work: impl Future<Output = Result<(), DecideError>> + Send + 'static,
) {
    if running.swap(true, Ordering::AcqRel) {
        return;
    }
    let running = running.clone();
    tokio::spawn(async move {
        if let Err(e) = work.await {
            tracing::debug!(error = %e, "{what} cut short");
        }
        running.store(false, Ordering::Release);
    });
}

/// Runs a worker on the store until `shutdown` resolves; refuses to start (with what to do)
/// when the store cannot be what the worker needs.
pub async fn run<B: Bus>(
    bus: Arc<B>,
    config: WorkerConfig,
    replicas: usize,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    // The instant `wall_clock_start_ms` names: the clock reads from it, however long the store
    // then takes to answer (a restarted worker cut off for 18 s ran that far behind).
    let start = tokio::time::Instant::now();
    let subjects = Subjects::new(&config.prefix);
    let store = Store::new(bus.clone(), &format!("{}-store", config.name), STORE_TIMEOUT).await?;
    let layout = Layout::new(&config.prefix, replicas, config.chat.max_history);
    loop {
        match layout.ensure(&store).await {
            Ok(()) => break,
            // Not reachable yet (the bus is still connecting): try again.
            Err(StartError::Store(e)) => {
                tracing::warn!(error = %e, "store not reachable; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
    let cache = Arc::new(Mutex::new(Cache::default()));
    let following = tokio::spawn(follow::follow(store.clone(), layout.clone(), cache.clone()));
    let rng = match config.seed {
        Some(seed) => StdRng::seed_from_u64(seed),
        None => rand::make_rng(),
    };
    let limits = Limits { field_bytes: config.chat.max_field_bytes, list_len: config.chat.max_list_len };
    let node = Arc::new(Node {
        bus: bus.clone(),
        store,
        layout,
        cache,
        subjects: subjects.clone(),
        config: config.chat,
        limits,
        name: config.name.clone(),
        observer: config.observer,
        metrics: config.metrics,
        rng: Mutex::new(rng),
        start,
        sends: AtomicU64::new(0),
        hints: Mutex::new(BTreeMap::new()),
        ending: Mutex::new(BTreeMap::new()),
        unended: Mutex::new(BTreeMap::new()),
        acks: Mutex::new(BTreeMap::new()),
        next_ack: AtomicU64::new(0),
    });
    let mut gateways = Gateways::new(subjects.clone(), &config.name);
    let Inputs { mut pcast, mut resubscribe, mut ping, mut chat, mut disconnects, mut alive, mut inbox } =
        inputs(&*bus, &subjects, &gateways).await;
    tracing::info!(worker = %config.name, "chat worker serving pcast.* and chat.* from the store");

    let queues = Queues::default();
    let (ticking, repairing) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let mut failures_seen = (0, 0);
    if let Some(m) = &node.metrics {
        m.serving(true);
    }
    // From "never connected": the observer hears of the connection the store was set up on.
    let mut seen = BusStatus::default();
    tokio::pin!(shutdown);
    let mut next_tick = tokio::time::Instant::now() + ANNOUNCE_EVERY;
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            () = bus.changed(seen) => {
                let status = bus.status();
                bus_changed(&node, &mut gateways, seen, status).await;
                seen = status;
            }
            () = tokio::time::sleep_until(node.next_due().map_or(next_tick, |due| due.min(next_tick))) => {
                node.end_due();
                if tokio::time::Instant::now() < next_tick {
                    continue;
                }
                next_tick += ANNOUNCE_EVERY;
                node.retry_ends();
                let unended = std::mem::take(&mut *node.unended.lock().unwrap_or_else(PoisonError::into_inner));
                for (conn, orphan_of) in unended {
                    end_later(&node, conn, orphan_of);
                }
                if let Some(m) = &node.metrics {
                    m.sizes(&lock(&node.cache).stats(), gateways.len());
                    let (refused, other) = bus.new_failures(&mut failures_seen);
                    m.connect_failed(refused, other);
                }
                if bus.status().connected {
                    routes(&node, &mut gateways);
                    for g in gateways.silent(now()) {
                        gone(&node, &mut gateways, &g);
                    }
                }
                let repair = node.clone();
                unless_running(&repairing, "repairs", async move { repair.repair().await });
                let tick = node.clone();
                unless_running(&ticking, "timers", async move { tick.tick().await });
            }
            Some(msg) = inbox.next() => {
                if node.acknowledged(&msg) {
                    continue;
                }
                routes(&node, &mut gateways);
                match gateways.answered(&msg) {
                    Answered::Sync(ended) => {
                        for conn in ended {
                            end_later(&node, conn.to_string(), None);
                        }
                    }
                    Answered::Orphans { gateway, closed } => orphans_closed(&node, gateway, closed),
                    Answered::Unknown => {}
                }
            }
            Some(msg) = disconnects.next() => {
                if let Some(conn) = msg.header(header::CONNECTION).and_then(|c| c.parse::<ConnectionId>().ok()) {
                    end_later(&node, conn.to_string(), None);
                }
            }
            Some(msg) = alive.next() => {
                routes(&node, &mut gateways);
                if let Some(announced) = gateways.announced(&msg, now()) {
                    if announced.revived {
                        tell(&node, WorkerEvent::GatewayBack { gateway: announced.gateway });
                    }
                    for msg in announced.publish {
                        node.publish(msg).await;
                    }
                }
            }
            Some(msg) = resubscribe.next() => {
                let node = node.clone();
                tokio::spawn(async move { node.resubscribe(msg).await });
            }
            Some(msg) = pcast.next() => queues.request(&node, &mut gateways, msg).await,
            Some(msg) = chat.next() => queues.request(&node, &mut gateways, msg).await,
            Some(msg) = ping.next() => pong(&node, msg).await,
            else => break,
        }
    }
    drain(&node, &mut gateways, &queues, [&mut pcast, &mut chat, &mut ping], &mut inbox).await;
    following.abort();
    Ok(())
}

/// Answers the latency probe, as the embedded backend does.
async fn pong<B: Bus>(node: &Node<B>, msg: BusMessage) {
    if let Some(reply) = msg.reply {
        node.publish(contract::answer(reply, "mq.PingPong", "mq.PingPongResponse".into(), msg.payload)).await;
    }
}

/// Draining (on SIGTERM): no request comes here any more (the other workers take them, or
/// gateways answer `no-worker`), and each one already here or on its way is answered, for at
/// most [`DRAIN_WITHIN`]. A rolling restart so answers every request it took.
async fn drain<B: Bus>(
    node: &Arc<Node<B>>,
    gateways: &mut Gateways,
    queues: &Queues,
    requests: [&mut B::Subscription; 3],
    inbox: &mut B::Subscription,
) {
    if let Some(m) = &node.metrics {
        m.serving(false);
    }
    let [pcast, chat, ping] = requests;
    for sub in [&mut *pcast, &mut *chat, &mut *ping] {
        sub.drain().await;
    }
    tracing::info!("draining: taking no more requests, answering those taken");
    let until = tokio::time::Instant::now() + DRAIN_WITHIN;
    let mut open = [true; 3];
    while open.iter().any(|o| *o) || !queues.is_empty() {
        tokio::select! {
            biased;
            () = tokio::time::sleep_until(until) => {
                tracing::warn!(within = ?DRAIN_WITHIN, "drain cut short: requests left unanswered");
                return;
            }
            msg = pcast.next(), if open[0] => match msg {
                Some(msg) => queues.request(node, gateways, msg).await,
                None => open[0] = false,
            },
            msg = chat.next(), if open[1] => match msg {
                Some(msg) => queues.request(node, gateways, msg).await,
                None => open[1] = false,
            },
            msg = ping.next(), if open[2] => match msg {
                Some(msg) => pong(node, msg).await,
                None => open[2] = false,
            },
            // Joins in the queues wait for their gateways' acknowledgements.
            Some(msg) = inbox.next() => {
                node.acknowledged(&msg);
            }
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    // The last answers may still be in the client's buffer: out before the process exits.
    let left = until.saturating_duration_since(tokio::time::Instant::now());
    if !matches!(tokio::time::timeout(left, node.bus.flush()).await, Ok(Ok(()))) {
        tracing::warn!("the last answers may not have reached the bus");
    }
    tracing::info!("drained");
}

pub(super) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

pub(super) fn tell<B: Bus>(node: &Node<B>, event: WorkerEvent) {
    if let Some(observer) = &node.observer {
        (observer.0)(event);
    }
}

/// The gateways' routes as the store has them (every connection holding a session), and the
/// orphans each is still to be told to close.
fn routes<B: Bus>(node: &Node<B>, gateways: &mut Gateways) {
    let cache = lock(&node.cache);
    let routes = cache.connections().filter_map(|(conn, g)| Some((conn.parse().ok()?, g.to_owned())));
    gateways.set_routes(routes.collect::<Vec<_>>(), now());
    let orphans = (cache.orphans().iter())
        .map(|(g, conns)| (g.clone(), conns.iter().filter_map(|c| c.parse().ok()).collect()))
        .collect();
    gateways.set_orphans(orphans, now());
}

/// Ends connection `conn` off the loop; if the store does not take it, it is tried again at the
/// next tick.
fn end_later<B: Bus>(node: &Arc<Node<B>>, conn: String, orphan_of: Option<String>) {
    let node = node.clone();
    tokio::spawn(async move {
        if let Err(e) = node.ended(&conn, orphan_of.as_deref()).await {
            tracing::debug!(%conn, error = %e, "connection end not recorded; trying again");
            node.unended.lock().unwrap_or_else(PoisonError::into_inner).insert(conn, orphan_of);
        }
    });
}

/// Gateway `g` is counted gone: each of its connections is ended, as an orphan (they all held
/// a session) that any worker tells `g` to close if it comes back.
fn gone<B: Bus>(node: &Arc<Node<B>>, gateways: &mut Gateways, g: &str) {
    let conns = gateways.connections_on(g);
    tracing::warn!(gateway = %g, connections = conns.len(), "gateway silent; its sessions are detached");
    tell(node, WorkerEvent::GatewayGone { gateway: g.to_owned(), connections: conns.len() });
    for conn in &conns {
        end_later(node, conn.to_string(), Some(g.to_owned()));
    }
    // The orphans are in the store, where every worker reads them.
    gateways.gone(g, [], now());
}

/// Gateway `g` closed `closed`: their marks stop asking for it, off the loop. One not cleared
/// (the store did not answer) is told again, and cleared with the next answer.
fn orphans_closed<B: Bus>(node: &Arc<Node<B>>, g: String, closed: Vec<ConnectionId>) {
    let node = node.clone();
    tokio::spawn(async move {
        let (store, layout, cache) = (&node.store, &node.layout, &*node.cache);
        for conn in closed {
            let conn = conn.to_string();
            if let Err(e) = decide(store, layout, cache, |c| sessions::orphan_closed(c, &conn, &g)).await {
                tracing::debug!(%conn, error = %e, "orphan's close not recorded");
            }
        }
    });
}

/// The worker's own bus connection changed. Back after an absence: every gateway gets a fresh
/// silence window and is asked which connections ended meanwhile.
async fn bus_changed<B: Bus>(node: &Node<B>, gateways: &mut Gateways, before: BusStatus, after: BusStatus) {
    if let Some(m) = &node.metrics {
        m.bus(after.connected, after.connected && after.epoch != before.epoch && after.epoch > 1);
    }
    if before.connected != after.connected || before.epoch != after.epoch {
        if before.connected && after.connected {
            tell(node, WorkerEvent::Bus { connected: false });
        }
        tell(node, WorkerEvent::Bus { connected: after.connected });
    }
    if !after.connected || after.epoch == before.epoch {
        return;
    }
    routes(node, gateways);
    for msg in gateways.worker_back(now()) {
        node.publish(msg).await;
    }
}
