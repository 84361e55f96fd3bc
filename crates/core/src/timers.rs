//! The timer queue: one ordered set of `(deadline, timer)`. Arming, disarming and finding the
//! next deadline are O(log n); idle connections cost nothing until their own deadline is due.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::ConnectionId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    Heartbeat(ConnectionId),
    CloseDeadline(ConnectionId),
    DrainClose(ConnectionId),
    Request(u64),
    ServerRequest(u64),
}

#[derive(Debug, Default)]
pub(crate) struct Timers {
    queue: BTreeSet<(Instant, Timer)>,
}

impl Timers {
    pub fn arm(&mut self, at: Instant, timer: Timer) {
        self.queue.insert((at, timer));
    }

    /// Removes a timer armed at `at`. Owners keep their deadlines, so this is exact.
    pub fn disarm(&mut self, at: Instant, timer: Timer) {
        let removed = self.queue.remove(&(at, timer));
        debug_assert!(removed, "disarmed a timer that was not armed: {timer:?} at {at:?}");
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.first().map(|(at, _)| *at)
    }

    /// Takes the earliest timer if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, Timer)> {
        if self.next_deadline()? <= now { self.queue.pop_first() } else { None }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn contains(&self, at: Instant, timer: Timer) -> bool {
        self.queue.contains(&(at, timer))
    }
}
