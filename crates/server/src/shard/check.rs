//! Checked mode (the simulator's): after a step, the core's invariants and this shard's own
//! bookkeeping against the core.

use std::sync::atomic::Ordering;

use super::Shard;
use crate::backend::Backend;

/// Checked mode checks every step of a shard with fewer connections than this.
const CHECK_EVERY_STEP_BELOW: usize = 8;

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
