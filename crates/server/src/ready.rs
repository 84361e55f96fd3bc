//! Which of a shard's connections have something to do. Each connection's socket is polled with
//! a waker of its own; waking it puts the connection on its shard's ready list (once) and wakes
//! the shard's task, which then polls only the connections on that list. No task per
//! connection, and a wake-up costs nothing for the connections that stayed quiet.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Wake, Waker};

use clientmq_core::ConnectionId;
use futures_util::task::AtomicWaker;

/// A shard's ready list and its task's waker.
#[derive(Default)]
pub(crate) struct Ready {
    list: Mutex<VecDeque<ConnectionId>>,
    shard: AtomicWaker,
}

impl Ready {
    /// Registers the shard task to be woken when a connection becomes ready.
    pub fn register(&self, waker: &Waker) {
        self.shard.register(waker);
    }

    /// Connections that became ready since the last call, in the order they did.
    pub fn take(&self) -> VecDeque<ConnectionId> {
        std::mem::take(&mut *self.list.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn is_empty(&self) -> bool {
        self.list.lock().unwrap_or_else(PoisonError::into_inner).is_empty()
    }
}

/// One connection's waker: its key on the shard and whether it is on the ready list already.
pub(crate) struct ConnWake {
    key: ConnectionId,
    queued: AtomicBool,
    ready: Arc<Ready>,
}

impl ConnWake {
    pub fn new(key: ConnectionId, ready: Arc<Ready>) -> Arc<ConnWake> {
        Arc::new(ConnWake { key, queued: AtomicBool::new(false), ready })
    }

    /// Taken off the ready list: the next wake puts it back.
    pub fn taken(&self) {
        self.queued.store(false, Ordering::Release);
    }
}

impl Wake for ConnWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ready.list.lock().unwrap_or_else(PoisonError::into_inner).push_back(self.key);
            self.ready.shard.wake();
        }
    }
}
