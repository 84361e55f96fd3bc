//! Checked mode (the simulator's): after a step, the core's invariants and this shard's own
//! bookkeeping against the core.

use std::sync::atomic::Ordering;

use super::Shard;
use crate::port::Backend;

/// Checked mode checks every step of a shard with fewer connections than this.
const CHECK_EVERY_STEP_BELOW: usize = 8;
/// Checked mode: wake-ups at one instant after which a shard counts as spinning. The simulator's
/// clock stands still within a step, so a shard that wakes for ever (a deadline left in the past)
/// would hang the run instead of failing it; real work at one instant takes far fewer.
const SPIN_WAKES: u32 = 100_000;

/// Checked mode's count of wake-ups at the current instant.
pub(super) struct SpinWatch {
    at: std::time::Instant,
    wakes: u32,
}

impl SpinWatch {
    pub fn new() -> SpinWatch {
        SpinWatch { at: super::now(), wakes: 0 }
    }

    /// Counts a wake-up at `now`: whether it is the [`SPIN_WAKES`]-th at that one instant.
    fn tick(&mut self, now: std::time::Instant) -> bool {
        if now != self.at {
            *self = SpinWatch { at: now, wakes: 0 };
        }
        self.wakes += 1;
        self.wakes == SPIN_WAKES
    }
}

impl<B: Backend> Shard<B> {
    /// Checks after every step while the shard is small (every explored fault schedule), and
    /// every (n/8)-th step of a shard of n connections, so a check costs O(8 log n) per step
    /// amortised and the 2,000-client incidents simulate as fast as without checks.
    pub(super) fn checked_mode_step(&mut self) {
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

    /// Checked mode: whether the shard has woken [`SPIN_WAKES`] times without time passing. It
    /// reports that, and the caller stops the shard so the step (and the run) can end.
    pub(super) fn spinning(&self, watch: &mut SpinWatch) -> bool {
        let Some(sink) = &self.check else { return false };
        if !watch.tick(super::now()) {
            return false;
        }
        (sink.0)(format!("shard {}: woke {SPIN_WAKES} times with no time passing: it spins", self.index));
        true
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
        // One marked to write but missing from the list would never be written again.
        let marked = self.conns.values().filter(|c| c.listed).count();
        let listed = self.to_write.iter().filter(|id| self.conns.contains_key(id)).count();
        if marked != listed {
            return Err(format!("{marked} connections marked to write, {listed} listed"));
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
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use clientmq_core::{ConnectionId, Target};

    use crate::Server;
    use crate::backends::EchoBackend;
    use crate::config::ServerConfig;
    use crate::observe::InvariantSink;

    /// A two-shard server in checked mode, and what its checker reported.
    fn checked_server() -> (Server, Arc<Mutex<Vec<String>>>) {
        let reported = Arc::new(Mutex::new(Vec::new()));
        let sink = reported.clone();
        let config = ServerConfig {
            shards: 2,
            check: Some(InvariantSink(Arc::new(move |broken| sink.lock().unwrap().push(broken)))),
            ..ServerConfig::default()
        };
        (Server::start(config, Arc::new(EchoBackend)), reported)
    }

    /// Makes every shard take a step (a room event reaches each of them), then lets them run:
    /// on the test's one-thread runtime, a yield runs every task woken before it.
    async fn step_every_shard(server: &Server) {
        server.handle().deliver(Target::Room("nobody".into()), "chat.Nothing", Vec::new()).await;
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn wake_ups_count_as_spinning_only_all_at_one_instant() {
        let start = std::time::Instant::now();
        let mut watch = super::SpinWatch { at: start, wakes: 0 };
        for _ in 1..super::SPIN_WAKES {
            assert!(!watch.tick(start));
        }
        assert!(watch.tick(start), "the 100,000th wake-up at one instant is a spin");
        let mut moving = super::SpinWatch { at: start, wakes: 0 };
        let later = |i: u32| start + std::time::Duration::from_nanos(u64::from(i / 2));
        assert!((0..2 * super::SPIN_WAKES).all(|i| !moving.tick(later(i))), "time passes: no spin");
    }

    // A paused clock moves only when every task waits: a shard that spins stands it still and is
    // reported as spinning, instead of hanging the test on its one thread.
    #[tokio::test(start_paused = true)]
    async fn a_sound_server_reports_nothing() {
        let (server, reported) = checked_server();
        step_every_shard(&server).await;
        assert_eq!(*reported.lock().unwrap(), Vec::<String>::new());
    }

    #[tokio::test(start_paused = true)]
    async fn a_route_left_behind_is_reported_by_every_shard() {
        let (server, reported) = checked_server();
        let stale: ConnectionId = "A".repeat(clientmq_core::ID_LEN).parse().expect("an id");
        server.handle().routes.write().unwrap().insert(stale, 1);
        step_every_shard(&server).await;
        let reported = reported.lock().unwrap();
        assert_eq!(reported.len(), 2, "{reported:?}");
        for (shard, broken) in reported.iter().enumerate() {
            assert!(broken.contains(&format!("shard {shard}")), "{broken}");
            assert!(broken.contains("1 routes for 0 open connections"), "{broken}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_admission_permit_never_released_is_reported() {
        let (server, reported) = checked_server();
        let admission = server.inner.admission.clone().expect("two shards admit globally");
        admission.permits.clone().try_acquire_owned().unwrap().forget();
        step_every_shard(&server).await;
        let reported = reported.lock().unwrap();
        assert_eq!(reported.len(), 2, "{reported:?}");
        assert!(
            reported[0].contains("admission permits: 1999 available + 0 held + 0 admitting != 2000"),
            "{reported:?}"
        );
    }
}
