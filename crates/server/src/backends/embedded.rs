//! The embedded backend: the chat application ([`ChatState`], from `clientmq-chat`) in this
//! process, so the binary is useful on its own. [`EmbeddedBackend`] puts the state behind the
//! [`Backend`] trait, hands what it decides (events and subscription changes) to the gateway in
//! the order it was decided, and runs its timers on `tokio::time` (virtual under simulation).
//! Answers are [`Answer::Now`]; the subscription changes a request caused go through the queue
//! ahead of it, with the events around them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use clientmq_chat::{ChatConfig, ChatInvariant, ChatState, ChatStats, Outgoing};
use clientmq_core::proto::pcast;
use clientmq_core::{BackendRequest, ConnectionId, Reply};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{Notify, mpsc};

use crate::port::{Answer, Backend, Connections};

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// The default backend of the binary. See the module doc.
pub struct EmbeddedBackend {
    state: Arc<Mutex<ChatState>>,
    outlet: Arc<Outlet>,
    /// Taken by [`Backend::attach`], which starts the task that forwards events to the gateway.
    pending_receiver: Mutex<Option<mpsc::UnboundedReceiver<Outgoing>>>,
    /// Wakes the timer task when the earliest deadline may have changed (or the backend is dropped).
    timer: Arc<Notify>,
}

/// The queue of events and subscription changes on their way to the gateway. Events beyond
/// `capacity` queued items are dropped and counted. Subscription changes are never dropped (one
/// lost would leave a connection hearing a room it left, or deaf to one it is in); they are few
/// per request, disconnect or expiry, all of which come from the shards, so they slow down when
/// the shards fall behind.
struct Outlet {
    queue: mpsc::UnboundedSender<Outgoing>,
    capacity: usize,
    /// Items sent and not yet taken by the forwarder (shared with it: the forwarder must not hold
    /// the sender, or it would never see the queue close).
    depth: Arc<AtomicUsize>,
    dropped: AtomicU64,
}

impl Outlet {
    /// Called under the state lock, so the queue holds items in the order they happened.
    fn push(&self, items: Vec<Outgoing>) {
        for item in items {
            if let Outgoing::Event(d) = &item
                && self.depth.load(Ordering::Relaxed) >= self.capacity
            {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(event_type = d.event_type, "delivery queue full; event dropped");
                continue;
            }
            self.depth.fetch_add(1, Ordering::Relaxed);
            // Fails only once the forwarder is gone, with the gateway.
            let _ = self.queue.send(item);
        }
    }
}

impl EmbeddedBackend {
    /// A backend with no sessions or rooms. `seed` makes its ids reproducible (the simulator's and
    /// tests' case); without it they come from the OS.
    pub fn new(config: ChatConfig, seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(seed) => StdRng::seed_from_u64(clientmq_core::seed::derive(seed, "chat")),
            None => rand::make_rng(),
        };
        let (queue, receiver) = mpsc::unbounded_channel();
        let outlet = Outlet {
            queue,
            capacity: config.delivery_queue.max(1),
            depth: Arc::new(AtomicUsize::new(0)),
            dropped: AtomicU64::new(0),
        };
        EmbeddedBackend {
            state: Arc::new(Mutex::new(ChatState::new(config, rng, now()))),
            outlet: Arc::new(outlet),
            pending_receiver: Mutex::new(Some(receiver)),
            timer: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ChatState> {
        // A panic mid-request is a bug, but must not take every later request down with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the state, queues what it produced (still under the lock, so the queue's
    /// order is the order of the changes) and wakes the timer if its next deadline moved.
    fn with_state<T>(&self, f: impl FnOnce(&mut ChatState) -> T) -> T {
        let mut state = self.lock();
        let before = state.next_deadline();
        let out = f(&mut state);
        self.outlet.push(state.take_outgoing());
        if state.next_deadline() != before {
            self.timer.notify_one();
        }
        out
    }

    pub fn stats(&self) -> ChatStats {
        self.lock().stats()
    }

    /// Events dropped because the queue to the gateway was full.
    pub fn dropped_deliveries(&self) -> u64 {
        self.outlet.dropped.load(Ordering::Relaxed)
    }

    pub fn check_invariants(&self) -> Result<(), ChatInvariant> {
        self.lock().check_invariants()
    }

    /// Session ids of a room's members, in order.
    pub fn members(&self, room_id: &str) -> Vec<String> {
        self.lock().members(room_id)
    }
}

impl Drop for EmbeddedBackend {
    fn drop(&mut self) {
        // Lets the timer task see the state is gone and end.
        self.timer.notify_one();
    }
}

impl Backend for EmbeddedBackend {
    fn attach(&self, gateway: Connections) {
        let receiver = self.pending_receiver.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(mut receiver) = receiver else {
            tracing::error!("the embedded backend serves one gateway; second attach ignored");
            return;
        };
        let depth = self.outlet.depth.clone();
        // One task, each item awaited: a shard gets the items meant for it in queue order.
        tokio::spawn(async move {
            while let Some(item) = receiver.recv().await {
                depth.fetch_sub(1, Ordering::Relaxed);
                match item {
                    Outgoing::Event(d) => gateway.deliver(d.target, d.event_type, d.payload).await,
                    Outgoing::Subscription(s) => {
                        gateway.set_subscription(s.conn, s.topic, &s.room, s.subscribe, None).await
                    }
                }
            }
        });
        let state = Arc::downgrade(&self.state);
        let timer = self.timer.clone();
        tokio::spawn(run_timers(state, timer, self.outlet.clone()));
    }

    fn request(&self, req: BackendRequest) -> Answer {
        // A latency probe needs no session and no state: echo it without taking the lock.
        if req.request_type == "mq.PingPong" {
            return Answer::Now(Ok(Reply { reply_type: "mq.PingPongResponse".into(), payload: req.payload }));
        }
        Answer::Now(Ok(self.with_state(|s| {
            s.handle(req.conn, &req.request_type, &req.payload, req.claims.as_deref(), now())
        })))
    }

    fn disconnected(&self, event: pcast::ConnectionDisconnected) {
        match event.connection_id.parse::<ConnectionId>() {
            Ok(conn) => self.with_state(|s| s.disconnected(conn, now())),
            Err(_) => tracing::warn!(id = %event.connection_id, "disconnect of a malformed connection id"),
        }
    }
}

/// Fires the state's deadlines (session grace periods, idle rooms) on `tokio::time`.
async fn run_timers(state: Weak<Mutex<ChatState>>, timer: Arc<Notify>, outlet: Arc<Outlet>) {
    loop {
        let next = match state.upgrade() {
            Some(s) => s.lock().unwrap_or_else(PoisonError::into_inner).next_deadline(),
            None => return,
        };
        // Biased: a fixed branch order keeps simulated runs reproducible.
        tokio::select! {
            biased;
            () = timer.notified() => {}
            () = sleep_until(next) => {}
        }
        let Some(state) = state.upgrade() else { return };
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        s.expire(now());
        outlet.push(s.take_outgoing());
    }
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
