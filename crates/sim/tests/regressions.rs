//! Explored seeds that once failed, kept as scenarios: each must pass, replay byte for byte,
//! and still reach the situation it was kept for.
//!
//! `explore-seed-*`: seven seeds of the first explore generator (`--from 1000000`) whose restart
//! shared its instant with the dying gateway's last step (an accept, a heartbeat close). The
//! trace recorded the restart first, so the checker counted that step's events against the new
//! process: "gateway reports open=N but registered - disconnected = 1" and "closing since T and
//! past the close timeout". Now every gateway record names its process, the restart is recorded
//! after the dying process's last step, and each must still show such a step.
//!
//! `announcement-in-flight-*`: a gateway died while its last announcement was still on the bus.
//! The worker counts silence from an announcement's arrival, so it detached the dead gateway's
//! sessions just past the 6 s the checker allowed from the death ("session ... of a dead
//! gateway's connection still attached"). The bound now includes the bus's delivery time; the
//! scenario must still detach later than 6 s after the death, and pass.
//!
//! `store-*`: seeds explore found failing with workers on the store (blocks 260M to
//! 550M), shrunk. Their classes, each fixed: a worker dying between a write the store took and
//! its report (the facts now come from the store), a join's subscription long before its write
//! under contention, ends never retried after a cut, a leave unsubscribing long before its
//! decision, a restarted worker's clock started late, an orphans list lost with the only worker
//! that kept it, a join from a resuming session's old connection subscribing that connection,
//! a worker dying between a room decision's write and the subscription it implied (a join's, a
//! leave's, a conversation's), a subscription read off a session's binding just before a
//! takeover moved it (`store-370017830`, no fault: it fails without `Clientmq-Binding`), a
//! worker dying between a takeover's write and telling the old connection (`store-410011465`),
//! and one found with those repairs planted away (`store-450001925`: the checker gives a dead
//! worker's unfinished tellings a sweep after some worker is back, and it fails without the
//! sweep's repair). Three more for `pcast.Bye`: `store-480006555` (no fault, two workers: a Bye
//! that deleted the session first and unsubscribed room by room left the connection subscribed
//! past the bound under contention), `store-480000023`, where another worker ended a session
//! let go for a Bye before the connection was told (a session now ends only once those it
//! moved away from are told), and `store-bye-worker-restart`, written by hand, where the only
//! worker restarts in the middle of a Bye (it fails on a Bye that deleted the session first).
//! And a checker's false alarm (`store-500017884`): an answer held to a subscription decided
//! after a request the gateway had given up on. And `store-510031518`: the only worker
//! restarted after a run of leaves in a hot room, whose record had collected 24 sessions to
//! tell (a decider's clearing loses to the next decision); the restarted worker's sweep read
//! each one's key in turn and told the last leaver past the bound. And `store-540012485`: a
//! worker killed between binding a resumed session to its new connection and telling that
//! connection its rooms (the session's record now says the holder is owed them until told).
//! And `store-550047328`: a worker back from a partition took a member's conversation
//! subscription before its cache caught up with the member's leave and join again; its cache
//! said the member listened already, so it wrote nothing and told the subscription at its old
//! revision, which the gateway dropped as stale (a room decision that writes nothing now reads
//! the room first). And `store-570091269`: a worker killed between a join's write and telling
//! the member's connection, while the two others' sweeps were clearing a hot room's told
//! sessions from its record, retry after retry, for two seconds; their next sweeps, which would
//! have told the member, waited behind them. Three more, kept unshrunk, from blocks run on
//! the first fixes for it: `store-580039970` and `store-600021798`, a join held up seconds in a
//! hot room by sweeps clearing apart from their schedule, which landed after its session's
//! resume on another connection (the sweep now clears in place again, with a few retries that
//! only clear), and `store-580033916`, a listen whose worker could not read the session's key
//! and told the asking connection to subscribe at the cache's newest binding, though a Bye had
//! ended the session (a worker that cannot read the key now tells what the cache says, holder
//! and binding from one look). And `store-630030169`, unshrunk: the worker deciding a join lost
//! the member's subscription with its bus, and cleared the session from the room's record as
//! told anyway, as did a sweep whose telling was lost too (what no gateway acknowledged now
//! stays to be told), and two found on that fix: `store-640007328`, the same loss answered
//! before a sweep told it (the decider now tells once more after its events are appended), and
//! `store-640006629`, a resume answered before its new connection's gateway had its rooms at the
//! server (a resume's telling is acknowledged now, and a gateway waits for a flush apart from
//! its ordered writer), and `store-650004653`, a resume whose new connection waited for the
//! acknowledgement of its old one's release, on a gateway cut off (they are now told side by
//! side), and `store-660010254`, a dead decider's join in a hot room told past the bound by
//! sweeps whose every acknowledgement waited a round trip to the server (a gateway now waits
//! only when it subscribed a room since the server last confirmed), and `store-670005081`, a
//! dead decider's conversation subscription in a hot room whose sweeps also waited behind the
//! rest of the worker's timers (the repairs now run apart). Each must pass, run on the store,
//! and replay byte for byte.
//!
//! `fleet-*`: seeds of in-memory fleets: a subscription change lost while a gateway was away
//! from the bus for less than the silence bound (`fleet-380023372`; fixed by the gateway's
//! resubscribe list when it is back).
//!
//! When every seed of a run came to be derived by name from the scenario's root seed, and a
//! dying gateway's sockets still in their handshake came to die at the start of its last step
//! (in accept order, so that replays in one process agree), the same files met other instants:
//! each explore-seed restart was moved onto the nearest later instant where the dying gateway
//! still acts (as `explore::aim_every_restart` aims them), and announcement-in-flight's seed
//! onto the first (50006151) that again has gw3's last announcement in flight at its death.
//! When workers came to subscribe to resubscribe lists too, the timings moved again and its
//! own seed (50006135) has the announcement in flight once more.

use std::path::Path;
use std::time::Duration;

use clientmq_sim::Scenario;

/// The kept scenarios whose file names start with `prefix`, in name order: each loaded, run
/// (it must pass), and run again (byte for byte the same), then handed to `more` to check.
fn replay_kept(prefix: &str, count: usize, more: impl Fn(&str, &Scenario, &clientmq_sim::Outcome)) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/regressions");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    paths.sort();
    assert_eq!(paths.len(), count, "{paths:?}");
    for path in paths {
        let scenario = Scenario::load(&path).unwrap();
        let first = clientmq_sim::run(&scenario);
        let name = path.display().to_string();
        assert!(first.passed(), "{name}: {:?} {:?}", first.violation.map(|v| v.to_string()), first.unmet);
        let again = clientmq_sim::run(&scenario);
        assert!(first.render(scenario.snapshot) == again.render(scenario.snapshot), "{name}: runs differ");
        more(&name, &scenario, &first);
    }
}

#[test]
fn once_failing_seeds_pass_and_still_restart_in_a_busy_instant() {
    replay_kept("explore-seed-", 7, |name, _, outcome| {
        assert!(outcome.busy_restarts >= 1, "{name}: no restart met the dying gateway acting");
    });
}

#[test]
fn once_failing_store_seeds_pass() {
    replay_kept("store-", 34, |name, scenario, _| {
        assert!(scenario.fleet.as_ref().is_some_and(|f| f.store), "{name}: not on the store");
    });
}

/// Kept scenario `name` with its timeline step `what` (found by its instant, `was`) moved to
/// `steps` + 1 instants 20 ms apart from `from`: each must pass.
fn passes_at_every_instant(name: &str, what: &str, was: f64, from: f64, steps: u32) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/regressions/{name}.toml"));
    let mut scenario = Scenario::load(&path).unwrap();
    let moved = scenario.timeline.iter().position(|s| (s.at_secs - was).abs() < 0.005).expect(what);
    for step in 0..=steps {
        let at = from + f64::from(step) * 0.02;
        scenario.timeline[moved].at_secs = at;
        let outcome = clientmq_sim::run(&scenario);
        let violation = outcome.violation.as_ref().map(ToString::to_string);
        assert!(outcome.passed(), "{name}, {what} at {at:.2} s: {violation:?} {:?}", outcome.unmet);
    }
}

/// The restart of `store-510031518` moved over the second of leaves around it: before the
/// sweep told each touched session once from one catch-up, and cleared them from a record that
/// moved meanwhile, 17 of these 51 instants failed.
#[test]
fn a_hot_room_is_repaired_in_time_whatever_the_instant_its_only_worker_restarts() {
    passes_at_every_instant("store-510031518", "the restart", 13.98, 13.0, 50);
}

/// The kill of `store-540012485` moved over the instants around it: before a resumed session's
/// record said its new connection was owed its rooms, the kill failed at every instant from
/// 11.22 s to 11.42 s.
#[test]
fn a_resume_is_told_to_its_new_connection_whatever_the_instant_its_binder_dies() {
    passes_at_every_instant("store-540012485", "the kill", 11.41, 11.16, 15);
}

/// The worker's return from its partition in `store-550047328` moved over the second around
/// it: before a room decision that writes nothing read the room first, 25 of these 51 instants
/// failed.
#[test]
fn a_worker_back_from_a_partition_subscribes_a_listener_whatever_the_instant() {
    passes_at_every_instant("store-550047328", "the repair", 16.771, 16.0, 50);
}

/// The kill of `store-570091269` moved over the second around it: before the sweep's clearing
/// retried only a few times, and only clearing, 8 of these 51 instants failed.
#[test]
fn a_dead_deciders_join_is_told_in_time_while_a_hot_room_is_cleared() {
    passes_at_every_instant("store-570091269", "the kill", 11.79, 11.3, 50);
}

/// The only worker's restart in `store-620038059` moved over the second around it: before the
/// sweep's kinds of repair ran side by side, a hot room's telling held back the release of a
/// connection a takeover left, and 9 of these 51 instants failed.
#[test]
fn a_takeover_s_release_is_told_in_time_whatever_the_instant_its_worker_restarts() {
    passes_at_every_instant("store-620038059", "the restart", 19.61, 19.0, 50);
}

/// The partition that cut the join's worker off in `store-630030169` moved over the second
/// around it: before a session stayed touched until its gateway acknowledged the change, 6 of
/// these 51 instants failed.
#[test]
fn a_join_s_subscription_lost_with_the_bus_is_told_whatever_the_instant_of_the_cut() {
    passes_at_every_instant("store-630030169", "the partition", 10.09, 9.6, 50);
}

#[test]
fn once_failing_fleet_seeds_pass() {
    replay_kept("fleet-", 1, |name, scenario, _| {
        assert!(scenario.fleet.as_ref().is_some_and(|f| !f.store), "{name}: not an in-memory fleet");
    });
}

#[test]
fn a_gateway_dying_with_its_announcement_in_flight_is_counted_gone_within_the_bound() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/regressions/announcement-in-flight-50006135.toml");
    let scenario = Scenario::load(&path).unwrap();
    let outcome = clientmq_sim::run(&scenario);
    assert!(outcome.passed(), "{:?} {:?}", outcome.violation.map(|v| v.to_string()), outcome.unmet);
    let at = |what: &str| {
        let line = outcome.records.iter().find(|r| r.to_string().contains(what));
        line.unwrap_or_else(|| panic!("no `{what}` in the trace")).at
    };
    let (died, gone) = (at("sim gw3 restarted"), at("gateway-gone gw3.0"));
    let late = gone - died;
    assert!(late > Duration::from_secs(6), "detached {late:?} after the death: the case is no longer met");
    assert!(late <= clientmq_sim::run::MAX_LATENCY + Duration::from_secs(6), "{late:?}");
}
