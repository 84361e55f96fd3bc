//! What the simulator observes of a running gateway: every trace event as it happens, and the
//! shards' checked mode. Production leaves both off (`tracing` logs the events instead).

/// Takes a trace event and the index of the shard it came from.
pub type TraceFn = dyn Fn(usize, &clientmq_core::Event) + Send + Sync;

/// Receives every gateway trace event as it happens, with the index of the shard it came from
/// (the simulator records them; production logs them through `tracing` instead).
#[derive(Clone)]
pub struct TraceSink(pub std::sync::Arc<TraceFn>);

impl std::fmt::Debug for TraceSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TraceSink")
    }
}

/// Checked mode (the simulator's): after every step each shard checks its core's invariants
/// and its own bookkeeping (connection handles, routes, admission permits) and reports what is
/// broken here. Costs O(connections) per step, so production leaves it off.
#[derive(Clone)]
pub struct InvariantSink(pub std::sync::Arc<dyn Fn(String) + Send + Sync>);

impl std::fmt::Debug for InvariantSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InvariantSink")
    }
}
