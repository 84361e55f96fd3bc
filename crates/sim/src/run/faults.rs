//! The timeline's faults, applied by the runner between steps (the network, crashes, restarts,
//! the bus), and its actions, carried out inside the simulation by the control client.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clientmq_server::Server;

use super::world::World;
use crate::scenario::{Action, BackendMode};
use crate::trace::{self, Record, Source, Trace};

/// A timeline instant: seconds rounded to the microsecond, so `6.03` is exactly the step that
/// starts at 6.03 s, whichever way its binary fraction rounds.
pub(super) fn instant(secs: f64) -> Duration {
    Duration::from_micros((secs * 1e6).round() as u64)
}

/// A group's crash signal. Not a `tokio::sync::watch`: that spreads its waiters over several
/// queues by a per-process random choice, so wake-up order would differ between runs.
#[derive(Default)]
pub(super) struct Crash {
    fired: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Crash {
    fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.fired.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// The trace line of a fault, which the runner applies between steps; `None` for an action
/// the control client carries out inside the simulation. A process's end is noted as
/// `<host> restarted` or `<host> killed`, which the checker reads.
pub(super) fn note(action: &Action) -> Option<String> {
    Some(match action {
        Action::Partition { group } => format!("partition {group}"),
        Action::Repair { group } => format!("repair {group}"),
        Action::Hold { group } => format!("hold {group}"),
        Action::Release { group } => format!("release {group}"),
        Action::Latency { group, ms } => format!("latency {group} {ms}ms"),
        Action::Crash { group } => format!("crash {group}"),
        Action::Bounce => "gateway restarted".to_owned(),
        Action::Restart { host } => format!("{host} restarted"),
        Action::Kill { host } => format!("{host} killed"),
        Action::PartitionBus { host } => format!("partition-bus {host}"),
        Action::RepairBus { host } => format!("repair-bus {host}"),
        Action::RestartBus => "bus restarted".to_owned(),
        Action::Drain | Action::ServerRequest | Action::Deliver { .. } | Action::Backend(_) => return None,
    })
}

/// Applies one fault now. A process's end (restart or kill) is modelled exactly: a gateway's
/// connections die in a fixed order during the dying process's last step, what it does in that
/// step is its own, and only then is the end noted and the host restarted or stopped. Returns
/// whether the dying process still acted in its last step.
pub(super) fn apply(
    sim: &mut turmoil::Sim<'_>,
    world: &World,
    crashes: &BTreeMap<String, Arc<Crash>>,
    action: &Action,
    note: String,
) -> Result<bool, String> {
    let ending = match action {
        Action::Bounce => Some(("gateway", true)),
        Action::Restart { host } => Some((host.as_str(), true)),
        Action::Kill { host } => Some((host.as_str(), false)),
        Action::RestartBus => Some(("bus", true)),
        _ => None,
    };
    if let Some((host, restart)) = ending {
        if let Some(server) = world.servers.lock().expect("servers").remove(host) {
            server.abort_connections();
        }
        let before = world.trace.len();
        sim.step().map_err(|e| format!("simulation failed: {e}"))?;
        let acted = world.trace.since(before).iter().any(|r| matches!(&r.source, Source::Gateway { proc, .. } | Source::Worker(proc) if &*proc.host == host));
        world.trace.push(Record::sim(sim.elapsed(), note));
        if restart {
            sim.bounce(host);
        } else {
            sim.crash(host);
        }
        return Ok(acted);
    }
    world.trace.push(Record::sim(sim.elapsed(), note));
    match action {
        Action::Crash { group } => crashes[group].fire(),
        Action::PartitionBus { host } => sim.partition(host.as_str(), "bus"),
        Action::RepairBus { host } => sim.repair(host.as_str(), "bus"),
        _ => {
            // Between a client group and each gateway it uses.
            let group = action.group().expect("a client group fault");
            let found = world.scenario.clients.iter().find(|g| g.name == group);
            for gateway in found.map(|g| world.scenario.gateways_of(g)).unwrap_or_default() {
                let link = (group, gateway.as_str());
                match action {
                    Action::Partition { .. } => sim.partition(link.0, link.1),
                    Action::Repair { .. } => sim.repair(link.0, link.1),
                    Action::Hold { .. } => sim.hold(link.0, link.1),
                    Action::Release { .. } => sim.release(link.0, link.1),
                    Action::Latency { ms, .. } => {
                        sim.set_link_latency(link.0, link.1, Duration::from_millis(*ms))
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(false)
}

/// Carries out a control action on every running gateway; returns the tasks it left running.
pub(super) async fn act(
    action: &Action,
    servers: &[Server],
    mode: &Arc<Mutex<BackendMode>>,
    trace: &Trace,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut spawned = Vec::new();
    if let Action::Backend(m) = action {
        trace.push(Record::sim(trace::now(), format!("backend {m:?}")));
        *mode.lock().expect("mode lock") = *m;
        return spawned;
    }
    for server in servers {
        match action {
            Action::Drain => {
                trace.push(Record::sim(trace::now(), "drain"));
                server.drain().await;
            }
            Action::ServerRequest => {
                let ids = server.handle().connection_ids();
                trace.push(Record::sim(trace::now(), format!("server-request to {} connections", ids.len())));
                for id in ids {
                    let (handle, trace) = (server.handle().clone(), trace.clone());
                    spawned.push(tokio::spawn(async move {
                        let result = handle.server_request(id, "pcast.SendRequestToClient", Vec::new()).await;
                        let what = match result {
                            Ok(reply) => format!("server-request answered type={}", reply.reply_type),
                            Err(e) => format!("server-request failed {}", e.label()),
                        };
                        trace.push(Record::sim(trace::now(), format!("{id} {what}")));
                    }));
                }
            }
            Action::Deliver { count, bytes } => {
                let ids = server.handle().connection_ids();
                trace.push(Record::sim(
                    trace::now(),
                    format!("deliver {count}x{bytes}B to {} connections", ids.len()),
                ));
                for id in ids {
                    for _ in 0..*count {
                        let target = clientmq_core::Target::Connection(id);
                        server.handle().deliver(target, "sim.Blob", vec![0u8; *bytes]).await;
                    }
                }
            }
            _ => {}
        }
    }
    spawned
}
