//! A simulated bus with NATS core's semantics, for turmoil: a broker host
//! ([`serve_broker`]) and a client ([`SimBus`], a [`clientmq_bus::Bus`]) that speak a
//! small framed protocol over `turmoil::net` TCP, so the gateway and worker code that runs on
//! NATS in production runs unchanged in the simulator, with the network faults turmoil makes.
//!
//! # Semantics (NATS core's)
//!
//! - Subjects are dot-separated tokens; a subscription may use `*` (one token) and `>` (one
//!   or more trailing tokens). A published subject and a reply subject have no wildcards.
//! - At most once. A message to a subject nobody subscribes to is gone; nothing is kept for a
//!   client that is away, and a client's subscriptions die with its connection (the client
//!   restores them on its next connection; what was published in between is lost).
//! - Every matching plain subscription gets a copy (two matching subscriptions of one client
//!   get two; a client gets what it publishes itself, NATS's default `echo`). Of each queue
//!   group (by name) with a matching member, one member gets it: the next after the previous
//!   pick in (connection, subscription) order, round robin, never at random, so a seed
//!   replays. A member the broker cannot queue to (a slow consumer) is skipped.
//! - What one connection publishes reaches each subscription in publish order.
//! - A publish with a reply subject that no subscription at all takes is answered at once by
//!   a message on the reply subject with status 503 ([`NO_RESPONDERS`]), header
//!   `Nats-Subject: <subject>` and no payload, to the publisher's own first plain
//!   subscription matching the reply subject (none: no answer), as `nats-server` does.
//! - The broker answers PINGs and drops a client (with its subscriptions) when its connection
//!   ends, when it stays silent for [`SILENT_AFTER`], or when more than [`MAX_PENDING`] bytes
//!   wait to be written to it (a slow consumer). A crash or bounce of the broker host loses
//!   everything it held.
//!
//! # Protocol
//!
//! Every frame is a big-endian `u32` length, then that many bytes: an operation byte and its
//! fields. A string is a `u16` length and UTF-8 bytes (the empty string stands for "none"), a
//! sid a `u64`, headers a `u16` count of name and value strings, a payload a `u32` length and
//! bytes.
//!
//! | op | name    | way             | fields                                          |
//! |----|---------|-----------------|-------------------------------------------------|
//! | 1  | CONNECT | client → broker | name                                            |
//! | 2  | SUB     | client → broker | sid, subject, queue group                       |
//! | 3  | UNSUB   | client → broker | sid                                             |
//! | 4  | PUB     | client → broker | subject, reply, headers, payload                |
//! | 5  | MSG     | broker → client | sid, status (`u16`, 0: none), subject, reply, headers, payload |
//! | 6  | PING    | either          |                                                 |
//! | 7  | PONG    | either          |                                                 |
//!
//! A client sends CONNECT first, then a SUB for each of its subscriptions, then a PING; the
//! PONG tells it the broker holds those subscriptions, and only then does it count itself
//! connected (a new epoch). It pings every [`PING_EVERY`] and gives the connection up when two
//! pings are unanswered at the next one, so a partition that delivers nothing is noticed
//! within three periods. The broker ends a client's connection on a frame it cannot parse, a
//! frame before CONNECT, a MSG, a length over [`proto::MAX_FRAME`] or a message over
//! [`proto::MAX_PAYLOAD`]; it ignores a SUB or PUB with an invalid subject (the client refuses
//! those before they are sent).
//!
//! # Determinism
//!
//! No randomness, no wall clock, `BTreeMap` orders, biased `select!`, [`StatusCell`] rather
//! than a tokio `watch`. The halves of each socket are parked together (`Home`) when the
//! tasks using them are dropped, and the broker keeps its clients' homes in id order, so a
//! crash or bounce, which drops a runtime's tasks in an order that depends on process-global
//! task ids, still closes the sockets in one order.
//!
//! [`NO_RESPONDERS`]: clientmq_bus::NO_RESPONDERS
//! [`StatusCell`]: clientmq_bus::StatusCell

mod broker;
mod client;
pub mod facts;
pub mod proto;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use turmoil::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

pub use broker::{RouteObserver, SharedStore, StoreObserver, serve_broker};
pub use client::{SimBus, SimSubscription};
pub use clientmq_bus::subject::{subject_matches, valid_subject};

/// How often a client pings the broker.
pub const PING_EVERY: Duration = Duration::from_secs(1);
/// Pings a client leaves unanswered before it gives a connection up (at the next ping).
pub const MAX_PINGS_OUT: u32 = 2;
/// The broker drops a client it has heard nothing from for this long.
pub const SILENT_AFTER: Duration = Duration::from_secs(3);
/// The broker drops a client with more than this many bytes waiting to be written to it.
pub const MAX_PENDING: usize = 64 * 1024 * 1024;
/// Reconnect back-off: from this, doubling...
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// ...to at most this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Where the two halves of one socket end up when the tasks that use them are dropped: they
/// are dropped together, read half first, when the last holder of the home lets go.
#[derive(Default)]
pub(crate) struct Home {
    read: Option<OwnedReadHalf>,
    write: Option<OwnedWriteHalf>,
}

pub(crate) type HomeCell = Arc<Mutex<Home>>;

impl Drop for Home {
    fn drop(&mut self) {
        drop(self.read.take());
        drop(self.write.take());
    }
}

/// A socket half in use by one task; parked in its [`Home`] when the task drops it.
pub(crate) struct Parked<T: Park> {
    half: Option<T>,
    home: HomeCell,
}

pub(crate) trait Park: Sized {
    fn slot(home: &mut Home) -> &mut Option<Self>;
}

impl Park for OwnedReadHalf {
    fn slot(home: &mut Home) -> &mut Option<Self> {
        &mut home.read
    }
}

impl Park for OwnedWriteHalf {
    fn slot(home: &mut Home) -> &mut Option<Self> {
        &mut home.write
    }
}

impl<T: Park> Parked<T> {
    pub(crate) fn new(half: T, home: &HomeCell) -> Self {
        Parked { half: Some(half), home: home.clone() }
    }

    pub(crate) fn get(&mut self) -> &mut T {
        self.half.as_mut().expect("a parked half is taken only on drop")
    }
}

impl<T: Park> Drop for Parked<T> {
    fn drop(&mut self) {
        let half = self.half.take();
        *T::slot(&mut self.home.lock().unwrap_or_else(PoisonError::into_inner)) = half;
    }
}

/// A socket's two halves, each ready to be moved into its task.
pub(crate) fn split(
    stream: turmoil::net::TcpStream,
) -> (Parked<OwnedReadHalf>, Parked<OwnedWriteHalf>, HomeCell) {
    let (read, write) = stream.into_split();
    let home = HomeCell::default();
    (Parked::new(read, &home), Parked::new(write, &home), home)
}

/// Writes encoded frames in the order they were queued, several at a time, until the queue
/// closes (then shuts the write side down) or a write fails. `pending`, when given, counts
/// the bytes queued and not yet written: the writer takes off what it wrote.
pub(crate) async fn write_frames(
    mut write: Parked<OwnedWriteHalf>,
    mut queue: mpsc::UnboundedReceiver<Vec<u8>>,
    pending: Option<Arc<AtomicUsize>>,
) {
    const BATCH: usize = 64 * 1024;
    while let Some(mut buf) = queue.recv().await {
        while buf.len() < BATCH {
            match queue.try_recv() {
                Ok(more) => buf.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        let result = write.get().write_all(&buf).await;
        if let Some(pending) = &pending {
            pending.fetch_sub(buf.len(), Ordering::Relaxed);
        }
        if result.is_err() {
            return;
        }
    }
    let _ = write.get().shutdown().await;
}

/// Aborts a task when dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
