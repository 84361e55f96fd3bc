//! [`SimBus`]: the client side of the simulated bus, a [`Bus`] for code on a turmoil host.
//!
//! One background task keeps a connection to the broker: it connects, sends CONNECT and a SUB
//! for every live subscription, and counts itself connected (a new epoch) when the broker
//! answers the PING that follows. It pings every [`PING_EVERY`] and gives the connection up
//! when [`MAX_PINGS_OUT`] pings are unanswered at the next one; then it reconnects, after
//! [`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`] between failed attempts, forever.
//! Subscriptions are kept here and restored on every connection; publishing while not
//! connected fails at once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use clientmq_bus::{Bus, BusError, BusMessage, BusStatus, StatusCell, Subscription};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use super::proto::{Frame, FrameReader};
use super::{
    AbortOnDrop, BACKOFF_MAX, BACKOFF_MIN, MAX_PINGS_OUT, PING_EVERY, split, valid_subject, write_frames,
};

/// A connection attempt that has not completed by then is given up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A [`Bus`] on the simulated broker. Dropping it ends its connection; its subscriptions
/// then yield `None`.
pub struct SimBus {
    inner: Arc<Inner>,
    _task: AbortOnDrop,
}

struct Inner {
    addr: String,
    name: String,
    status: StatusCell,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Live subscriptions, by sid.
    subs: BTreeMap<u64, Entry>,
    next_sid: u64,
    /// The current connection's outbound queue, from the moment its subscriptions were sent:
    /// new SUB and UNSUB frames go there.
    link: Option<mpsc::UnboundedSender<Vec<u8>>>,
    /// The broker answered the handshake PING on `link`: PUB frames go there too.
    connected: bool,
    /// PINGs sent and PONGs received on `link`: the broker answers them in order, so the PONG
    /// of the nth PING means it has processed everything sent before that PING.
    pings_sent: u64,
    pongs_seen: u64,
    /// [`Bus::flush`] callers waiting for the PONG of their PING, by its number.
    flushes: Vec<(u64, tokio::sync::oneshot::Sender<()>)>,
}

struct Entry {
    subject: String,
    queue: Option<String>,
    deliver: mpsc::UnboundedSender<BusMessage>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// Queues a frame on the current connection, if there is one.
    fn send(&self, frame: &Frame) {
        if let (Some(link), Ok(bytes)) = (&self.link, frame.encode()) {
            let _ = link.send(bytes);
        }
    }

    /// Queues a PING on the current connection; its number.
    fn ping(&mut self) -> u64 {
        self.send(&Frame::Ping);
        self.pings_sent += 1;
        self.pings_sent
    }

    /// A PONG came: the flushes it answers are done.
    fn pong(&mut self) {
        self.pongs_seen += 1;
        let seen = self.pongs_seen;
        for (_, done) in self.flushes.extract_if(.., |(n, _)| *n <= seen) {
            let _ = done.send(());
        }
    }
}

impl SimBus {
    /// A client of the broker at `addr` (`"bus:4222"`) named `name`. Returns at once; it
    /// connects in a task of the current turmoil host, visible through [`Bus::status`].
    pub fn connect(addr: &str, name: &str) -> Arc<SimBus> {
        let inner = Arc::new(Inner {
            addr: addr.to_owned(),
            name: name.to_owned(),
            status: StatusCell::default(),
            state: Mutex::new(State::default()),
        });
        let task = tokio::spawn(keep_connected(inner.clone()));
        Arc::new(SimBus { inner, _task: AbortOnDrop(task) })
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }
}

/// Connects, and reconnects whenever the connection is lost, until the bus is dropped.
async fn keep_connected(inner: Arc<Inner>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, turmoil::net::TcpStream::connect(&*inner.addr));
        if let Ok(Ok(stream)) = stream.await
            && session(&inner, stream).await
        {
            backoff = BACKOFF_MIN;
        }
        tokio::time::sleep(backoff).await;
        if backoff < BACKOFF_MAX {
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// One connection, from handshake to loss; true if it got as far as connected.
async fn session(inner: &Inner, stream: turmoil::net::TcpStream) -> bool {
    let (mut read, write, _) = split(stream);
    let (link, queue) = mpsc::unbounded_channel();
    let mut writer = AbortOnDrop(tokio::spawn(write_frames(write, queue, None)));
    let send = |frame: Frame| {
        if let Ok(bytes) = frame.encode() {
            let _ = link.send(bytes);
        }
    };
    send(Frame::Connect { name: inner.name.clone() });
    {
        let mut state = inner.state();
        for (&sid, e) in &state.subs {
            send(Frame::Sub { sid, subject: e.subject.clone(), queue: e.queue.clone() });
        }
        state.link = Some(link.clone());
        // A new connection numbers its pings afresh; flushes of the last one were failed.
        (state.pings_sent, state.pongs_seen) = (0, 0);
        state.ping();
    }
    let mut pings_out = 1;
    let mut ticker = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut frames = FrameReader::default();
    let mut connected = false;
    loop {
        // Biased: a fixed branch order keeps simulated runs reproducible.
        tokio::select! {
            biased;
            _ = &mut writer.0 => break,
            _ = ticker.tick() => {
                if pings_out >= MAX_PINGS_OUT {
                    break;
                }
                inner.state().ping();
                pings_out += 1;
            }
            frame = frames.next(read.get()) => match frame {
                Ok(Some(Frame::Pong)) => {
                    pings_out = 0;
                    let mut state = inner.state();
                    state.pong();
                    if !connected {
                        connected = true;
                        state.connected = true;
                        inner.status.set_connected(true);
                    }
                }
                Ok(Some(Frame::Ping)) => send(Frame::Pong),
                Ok(Some(Frame::Msg { sid, msg })) => {
                    if let Some(e) = inner.state().subs.get(&sid) {
                        let _ = e.deliver.send(msg);
                    }
                }
                // Closed, reset, garbled, or a frame a broker does not send.
                _ => break,
            },
        }
    }
    let mut state = inner.state();
    state.link = None;
    state.connected = false;
    state.flushes.clear();
    if connected {
        inner.status.set_connected(false);
    }
    connected
}

fn refused(what: impl Into<String>) -> BusError {
    BusError::Refused(what.into())
}

/// NATS header rules: a name is printable ASCII without `:`; a value has no line breaks.
fn valid_header(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
        && !value.contains(['\r', '\n'])
}

impl Bus for SimBus {
    type Subscription = SimSubscription;

    async fn publish(&self, msg: BusMessage) -> Result<(), BusError> {
        if !valid_subject(&msg.subject, false) {
            return Err(refused(format!("invalid subject {:?}", msg.subject)));
        }
        if let Some(reply) = &msg.reply
            && !valid_subject(reply, false)
        {
            return Err(refused(format!("invalid reply subject {reply:?}")));
        }
        if let Some((name, _)) = msg.headers.iter().find(|(k, v)| !valid_header(k, v)) {
            return Err(refused(format!("invalid header {name:?}")));
        }
        let bytes = Frame::Pub(msg).encode().map_err(|e| refused(e.to_string()))?;
        let state = self.inner.state();
        match (&state.link, state.connected) {
            (Some(link), true) => link.send(bytes).map_err(|_| BusError::Disconnected),
            _ => Err(BusError::Disconnected),
        }
    }

    async fn subscribe(&self, subject: &str, queue_group: Option<&str>) -> Result<SimSubscription, BusError> {
        if !valid_subject(subject, true) {
            return Err(refused(format!("invalid subject {subject:?}")));
        }
        if let Some(q) = queue_group
            && (q.is_empty() || q.chars().any(char::is_whitespace))
        {
            return Err(refused(format!("invalid queue group {q:?}")));
        }
        let queue = queue_group.map(str::to_owned);
        let mut state = self.inner.state();
        let sid = state.next_sid;
        let sub = Frame::Sub { sid, subject: subject.to_owned(), queue: queue.clone() };
        sub.encode().map_err(|e| refused(e.to_string()))?;
        state.next_sid += 1;
        let (deliver, messages) = mpsc::unbounded_channel();
        state.subs.insert(sid, Entry { subject: subject.to_owned(), queue, deliver });
        state.send(&sub);
        Ok(SimSubscription { sid, messages, bus: Arc::downgrade(&self.inner) })
    }

    async fn flush(&self) -> Result<(), BusError> {
        let done = {
            let mut state = self.inner.state();
            if !state.connected {
                return Err(BusError::Disconnected);
            }
            let n = state.ping();
            let (done, waits) = tokio::sync::oneshot::channel();
            state.flushes.push((n, done));
            waits
        };
        // Dropped unanswered when the connection goes.
        done.await.map_err(|_| BusError::Disconnected)
    }

    fn status(&self) -> BusStatus {
        self.inner.status.get()
    }

    async fn changed(&self, seen: BusStatus) {
        self.inner.status.changed(seen).await
    }
}

/// A subscription on a [`SimBus`]; dropping it unsubscribes.
pub struct SimSubscription {
    sid: u64,
    messages: mpsc::UnboundedReceiver<BusMessage>,
    bus: Weak<Inner>,
}

impl Subscription for SimSubscription {
    /// Cancel-safe: a message is taken from the queue only when this resolves.
    async fn next(&mut self) -> Option<BusMessage> {
        self.messages.recv().await
    }
}

impl Drop for SimSubscription {
    fn drop(&mut self) {
        if let Some(inner) = self.bus.upgrade() {
            let mut state = inner.state();
            state.subs.remove(&self.sid);
            state.send(&Frame::Unsub { sid: self.sid });
        }
    }
}
