//! The message bus between gateways and backend workers (NATS in production, a simulated host
//! in the simulator), behind one small trait so the same gateway and worker code runs on both.
//!
//! The semantics every implementation keeps are NATS core's: at-most-once delivery; a message
//! to a subject nobody subscribes to is gone; of a queue group, one member gets each message;
//! a request (a publish with a reply subject) to a subject nobody subscribes to is answered at
//! once with status 503 on its reply subject; messages from one connection reach one
//! subscription in the order they were published; after a reconnect, subscriptions are restored
//! (what was published in between is lost). `contract` names the subjects and headers clientmq
//! puts on it (docs/nats.md is the same contract, for authors of workers in other languages).

pub mod access;
pub mod contract;
pub mod gateways;
pub mod nats;
pub mod process;
pub mod store;
pub mod subject;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// A message on the bus, either way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BusMessage {
    pub subject: String,
    /// Where an answer goes (a request); `None` for a plain publish.
    pub reply: Option<String>,
    /// Header name and value pairs; a name may repeat. NATS keeps the order of one name's
    /// values, not the order of names.
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
    /// A status set by the bus itself on a message it made up: 503 when nobody subscribes to a
    /// request's subject. `None` on every message a client published.
    pub status: Option<u16>,
}

/// The status NATS answers a request with when no subscriber exists for its subject.
pub const NO_RESPONDERS: u16 = 503;

impl BusMessage {
    pub fn new(subject: impl Into<String>, payload: Vec<u8>) -> Self {
        BusMessage { subject: subject.into(), payload, ..BusMessage::default() }
    }

    /// Adds a header (a name may be added several times).
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    pub fn reply_to(mut self, reply: impl Into<String>) -> Self {
        self.reply = Some(reply.into());
        self
    }

    /// The first value of a header, names compared without case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.iter().filter(move |(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Why the bus did not take a message or a subscription.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// Not connected now; nothing was queued to go out later.
    #[error("not connected to the bus")]
    Disconnected,
    /// The message or subscription was refused (bad subject, too large, connection closed).
    #[error("bus refused: {0}")]
    Refused(String),
}

/// Whether a bus client is connected, and how many times it has connected so far: a new epoch
/// means subscriptions were restored and anything published in between may be lost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusStatus {
    pub connected: bool,
    pub epoch: u64,
}

/// A connection to the bus. Cheap to share behind an `Arc`.
pub trait Bus: Send + Sync + 'static {
    type Subscription: Subscription;

    /// Sends a message now, or fails at once with [`BusError::Disconnected`] while not
    /// connected (a bus client must not hold messages back for a later connection).
    fn publish(&self, msg: BusMessage) -> impl Future<Output = Result<(), BusError>> + Send;

    /// Subscribes to `subject` (NATS wildcards `*` and `>` allowed), as a member of
    /// `queue_group` when given. Dropping the subscription unsubscribes. A subscription lives
    /// across reconnects: the client restores it on the new connection, and it may be made while
    /// disconnected (it fails only for a subject the bus refuses). One client sends its
    /// subscriptions and publishes in the order they were made, so a subscription made before a
    /// publish is in place at the server when that publish arrives (what a gateway relies on to
    /// hear a room before its join goes out). A 503 for a request reaches the requester only on
    /// a subscription of the same client (NATS sends it on the publishing connection).
    fn subscribe(
        &self,
        subject: &str,
        queue_group: Option<&str>,
    ) -> impl Future<Output = Result<Self::Subscription, BusError>> + Send;

    fn status(&self) -> BusStatus;

    /// Resolves once everything this client sent before is written to the server. The server
    /// handles one client's messages in order, so a subscription made before is in place when
    /// it handles what this client sends next; for another client's messages nothing is
    /// promised (async-nats does not wait for the server here; the simulated bus does). Fails
    /// while disconnected.
    fn flush(&self) -> impl Future<Output = Result<(), BusError>> + Send;

    /// Resolves once the status differs from `seen`.
    fn changed(&self, seen: BusStatus) -> impl Future<Output = ()> + Send;

    /// Connection attempts that failed since start: (refused for the credentials, other).
    fn failures(&self) -> (u64, u64) {
        (0, 0)
    }

    /// The failed connection attempts since `seen` (the totals its caller last saw), by kind,
    /// and `seen` moved on: what a metric adds on each look.
    fn new_failures(&self, seen: &mut (u64, u64)) -> (u64, u64) {
        let now = self.failures();
        let new = (now.0 - seen.0, now.1 - seen.1);
        *seen = now;
        new
    }
}

/// Messages of one subscription, in the order they arrived.
pub trait Subscription: Send + 'static {
    /// The next message; `None` once the bus client is gone for good, or once drained.
    fn next(&mut self) -> impl Future<Output = Option<BusMessage>> + Send;

    /// Ends the interest: nothing more is routed here (a queue group's messages go to its other
    /// members), and `next` yields what was already on its way, then `None`. A bus that cannot
    /// (the simulated one) changes nothing: the caller bounds its wait.
    fn drain(&mut self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// A [`BusStatus`] that can be watched: what bus clients keep and update. Not a tokio `watch`,
/// whose waiters are woken in an order drawn from a per-process random source (simulated runs
/// must replay byte for byte). Connected and epoch live in one word, so no reader sees one
/// without the other.
#[derive(Debug, Default)]
pub struct StatusCell {
    /// The epoch shifted left by one, the lowest bit set while connected.
    word: AtomicU64,
    notify: Notify,
    /// Connection attempts the server refused for the credentials, and that failed otherwise.
    refused: AtomicU64,
    failed: AtomicU64,
}

impl StatusCell {
    pub fn get(&self) -> BusStatus {
        let word = self.word.load(Ordering::Acquire);
        BusStatus { connected: word & 1 == 1, epoch: word >> 1 }
    }

    /// A connection was made or lost. Only a change counts: being told twice that the
    /// connection is up (a client's callback and its own check) is one connection, one epoch.
    pub fn set_connected(&self, connected: bool) {
        let changed = self.word.fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
            match (word & 1 == 1, connected) {
                (false, true) => Some((((word >> 1) + 1) << 1) | 1),
                (true, false) => Some(word & !1),
                _ => None,
            }
        });
        if changed.is_ok() {
            self.notify.notify_waiters();
        }
    }

    /// A connection attempt failed: `refused` when the server refused the credentials.
    pub fn count_failure(&self, refused: bool) {
        let counter = if refused { &self.refused } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Connection attempts that failed since start: (refused for the credentials, other).
    pub fn failures(&self) -> (u64, u64) {
        (self.refused.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }

    pub async fn changed(&self, seen: BusStatus) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.get() != seen {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_counts_connections_not_reports() {
        let cell = StatusCell::default();
        assert_eq!(cell.get(), BusStatus { connected: false, epoch: 0 });
        cell.set_connected(true);
        cell.set_connected(true);
        assert_eq!(cell.get(), BusStatus { connected: true, epoch: 1 });
        cell.set_connected(false);
        cell.set_connected(false);
        assert_eq!(cell.get(), BusStatus { connected: false, epoch: 1 });
        cell.set_connected(true);
        assert_eq!(cell.get(), BusStatus { connected: true, epoch: 2 });
    }
}
