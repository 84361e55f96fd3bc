//! The checker has teeth: traces with the seed's leak, a double disconnect, a limit overshoot,
//! an answer to a closing connection, requests left pending at the end, a second close, and a
//! dead process's events are each caught, with the process, the connection and the time in the
//! message.

use std::time::Duration;

use clientmq_core::{ConnectionId, DisconnectPath, EventKind, RequestOutcome};
use clientmq_sim::check::{Checker, Limits};
use clientmq_sim::trace::{Proc, Record};

const LIMITS: Limits = Limits {
    max_connections: 2,
    close_timeout: Duration::from_secs(5),
    request_timeout: Duration::from_secs(15),
    tolerance: Duration::from_millis(20),
};

fn id(n: u8) -> ConnectionId {
    format!("{}", (b'a' + n) as char).repeat(32).parse().unwrap()
}

fn at(secs: f64) -> Duration {
    Duration::from_secs_f64(secs)
}

/// An event of the first gateway process.
fn gw(t: f64, n: u8, kind: EventKind) -> Record {
    gw_of(0, t, n, kind)
}

fn gw_of(incarnation: u32, t: f64, n: u8, kind: EventKind) -> Record {
    Record::gateway(at(t), Proc::new("gateway", incarnation), None, Some(id(n)), kind)
}

fn opened(t: f64, n: u8, open: usize) -> Record {
    gw(t, n, EventKind::Opened { remote: "10.0.0.1".parse().unwrap(), open })
}

fn disconnected(t: f64, n: u8, open: usize) -> Record {
    gw(t, n, EventKind::Disconnected { path: DisconnectPath::Forced, code: 3334, open })
}

fn close_sent(t: f64, n: u8) -> Record {
    gw(t, n, EventKind::CloseSent { code: 3334, reason: "timeout" })
}

fn forwarded(t: f64, n: u8, request_id: &str) -> Record {
    gw(t, n, EventKind::Forwarded { request_id: request_id.into(), request_type: "x".into(), token: 0 })
}

fn answered(t: f64, n: u8, request_id: &str, outcome: RequestOutcome) -> Record {
    let kind = EventKind::Answered {
        request_id: request_id.into(),
        request_type: "x".into(),
        outcome,
        elapsed: Duration::ZERO,
    };
    gw(t, n, kind)
}

/// Feeds records until one fails; returns that failure's text.
fn first_violation(records: &[Record]) -> Option<String> {
    let mut checker = Checker::new(LIMITS);
    for r in records {
        if let Err(v) = checker.observe(r) {
            return Some(v.to_string());
        }
    }
    None
}

#[test]
fn a_clean_trace_passes() {
    let trace = [
        opened(1.0, 0, 1),
        opened(1.5, 1, 2),
        forwarded(1.6, 1, "C0"),
        close_sent(2.0, 0),
        answered(2.1, 1, "C0", RequestOutcome::Ok),
        disconnected(7.0, 0, 1),
        disconnected(8.0, 1, 0),
    ];
    assert_eq!(first_violation(&trace), None);
}

#[test]
fn the_seeds_leak_is_caught_closing_past_the_timeout() {
    // The server closed, the client never answered, and the gateway never let go.
    let later = Record::sim(at(30.0), "anything at all");
    let v = first_violation(&[opened(1.0, 0, 1), close_sent(2.0, 0), later]).expect("caught");
    assert!(v.contains(&id(0).to_string()), "{v}");
    assert!(v.starts_with("at 30.000000s"), "{v}");
    assert!(v.contains("gateway: closing since 2.000000s"), "{v}");
}

#[test]
fn the_seeds_leak_is_caught_as_a_count_that_drifts() {
    // Disconnected, but the gateway's own count was not decremented.
    let v = first_violation(&[opened(1.0, 0, 1), disconnected(3.0, 0, 1)]).expect("caught");
    assert!(v.contains("reports open=1 but registered - disconnected = 0"), "{v}");
    assert!(v.contains(&id(0).to_string()) && v.starts_with("at 3.000000s"), "{v}");
}

#[test]
fn a_double_disconnect_is_caught() {
    let v = first_violation(&[opened(1.0, 0, 1), disconnected(2.0, 0, 0), disconnected(2.5, 0, 0)])
        .expect("caught");
    assert_eq!(v, format!("at 2.500000s: connection {}: gateway: disconnected twice", id(0)));
}

#[test]
fn a_limit_overshoot_is_caught() {
    let v = first_violation(&[opened(1.0, 0, 1), opened(1.1, 1, 2), opened(1.2, 2, 3)]).expect("caught");
    assert_eq!(v, format!("at 1.200000s: connection {}: gateway: open 3 is above the limit 2", id(2)));
}

#[test]
fn a_refusal_with_room_is_caught() {
    let rejected = gw(2.0, 5, EventKind::Rejected { code: 1013, open: 1 });
    let v = first_violation(&[opened(1.0, 0, 1), rejected]).expect("caught");
    assert!(v.contains("refused with 1013 while only 1 of 2 were open"), "{v}");
    // Judged against more than the trace shows registered (admissions in flight): fine.
    let judged = gw(2.0, 5, EventKind::Rejected { code: 1013, open: 2 });
    assert_eq!(first_violation(&[opened(1.0, 0, 1), judged]), None);
}

#[test]
fn a_request_pending_past_its_timeout_is_caught() {
    let v = first_violation(&[opened(0.5, 0, 1), forwarded(1.0, 0, "C7"), Record::sim(at(17.0), "tick")])
        .expect("caught");
    assert!(
        v.contains("request C7 pending past the request timeout") && v.contains(&id(0).to_string()),
        "{v}"
    );
}

#[test]
fn an_answer_to_a_closing_connection_is_caught() {
    let trace = [
        opened(1.0, 0, 1),
        forwarded(1.5, 0, "C0"),
        close_sent(2.0, 0),
        answered(2.5, 0, "C0", RequestOutcome::Ok),
    ];
    let v = first_violation(&trace).expect("caught");
    assert!(v.contains("an answer sent to a closing connection"), "{v}");
    let delivered = gw(2.5, 0, EventKind::Delivered { event_type: "chat.RoomEvent".into() });
    let v = first_violation(&[opened(1.0, 0, 1), close_sent(2.0, 0), delivered]).expect("caught");
    assert!(v.contains("to a closing connection"), "{v}");
    // Marked undeliverable is what the gateway must do instead.
    let fine = [
        opened(1.0, 0, 1),
        forwarded(1.5, 0, "C0"),
        close_sent(2.0, 0),
        answered(2.5, 0, "C0", RequestOutcome::Undeliverable),
        disconnected(3.0, 0, 0),
    ];
    assert_eq!(first_violation(&fine), None);
}

#[test]
fn requests_left_pending_at_the_end_are_caught() {
    let v = first_violation(&[opened(1.0, 0, 1), forwarded(1.5, 0, "C3"), disconnected(2.0, 0, 0)])
        .expect("caught");
    assert!(v.contains("ended with requests still pending: C3"), "{v}");
}

#[test]
fn a_second_close_on_a_closing_connection_is_caught() {
    let v = first_violation(&[opened(1.0, 0, 1), close_sent(2.0, 0), close_sent(2.5, 0)]).expect("caught");
    assert!(v.contains("a second close on a closing connection"), "{v}");
}

#[test]
fn events_about_ended_connections_are_caught_strays_are_not() {
    let after = gw(3.0, 0, EventKind::PingSent);
    let v = first_violation(&[opened(1.0, 0, 1), disconnected(2.0, 0, 0), after]).expect("caught");
    assert!(v.contains("ping to a connection that is not registered"), "{v}");
    let stray = gw(3.0, 0, EventKind::Stray { what: clientmq_core::Stray::Close, after_end: true });
    assert_eq!(first_violation(&[opened(1.0, 0, 1), disconnected(2.0, 0, 0), stray]), None);
}

#[test]
fn a_restart_ends_the_old_process_and_its_last_records_stay_its_own() {
    // The old process accepts a connection in its last instant; the new one starts from zero.
    let trace = [
        opened(1.0, 0, 1),
        close_sent(9.0, 0),
        opened(10.0, 1, 2),
        Record::sim(at(10.01), "gateway restarted"),
        gw_of(1, 10.02, 2, EventKind::Opened { remote: "10.0.0.1".parse().unwrap(), open: 1 }),
        // Long after the old process's close deadline: it died with the process.
        Record::sim(at(30.0), "tick"),
    ];
    assert_eq!(first_violation(&trace), None);
    let late = gw_of(0, 10.5, 0, EventKind::PingSent);
    let v = first_violation(&[opened(1.0, 0, 1), Record::sim(at(10.0), "gateway restarted"), late])
        .expect("caught");
    assert!(v.contains("gateway: an event after it died"), "{v}");
}

#[test]
fn violation_classes_drop_what_varies_between_runs() {
    let v = clientmq_sim::check::Violation {
        at: at(3.0),
        conn: Some(id(0)),
        message: "gateway#2: gateway reports open=4 but registered - disconnected = 3".into(),
    };
    assert_eq!(v.class(), "gateway reports but registered - disconnected =");
}

mod fleet {
    use super::*;
    use clientmq_chat::Fact;
    use clientmq_chat::worker::WorkerEvent;
    use clientmq_sim::check::FleetLimits;

    const FLEET: FleetLimits = FleetLimits {
        gone_within: Duration::from_secs(6),
        grace: Duration::from_secs(10),
        store_within: Duration::ZERO,
        tolerance: Duration::from_millis(20),
        quiet_within: Duration::from_secs(1),
        orphans_within: Duration::from_secs(3),
    };

    fn opened_on(host: &str, t: f64, n: u8, open: usize) -> Record {
        let kind = EventKind::Opened { remote: "10.0.0.1".parse().unwrap(), open };
        Record::gateway(at(t), Proc::new(host, 0), None, Some(id(n)), kind)
    }

    fn worker(t: f64, event: WorkerEvent) -> Record {
        Record::worker(at(t), Proc::new("chat1", 0), event)
    }

    fn bound(t: f64, n: u8, session: &str) -> Record {
        worker(t, WorkerEvent::Fact(Fact::Bound { conn: id(n), session: session.into() }))
    }

    fn unbound(t: f64, n: u8, session: &str) -> Record {
        worker(t, WorkerEvent::Fact(Fact::Unbound { conn: id(n), session: session.into() }))
    }

    fn ended(t: f64, session: &str) -> Record {
        worker(t, WorkerEvent::Fact(Fact::Ended { session: session.into() }))
    }

    fn first(records: &[Record]) -> Option<String> {
        let mut checker =
            Checker::new(Limits { max_connections: 10, ..LIMITS }).with_fleet(FLEET, ["chat1".to_owned()]);
        records.iter().find_map(|r| checker.observe(r).err()).map(|v| v.to_string())
    }

    fn start() -> Vec<Record> {
        vec![
            worker(0.1, WorkerEvent::Bus { connected: true }),
            opened_on("gw1", 1.0, 0, 1),
            bound(1.1, 0, "s0"),
        ]
    }

    #[test]
    fn a_dead_gateways_session_is_detached_in_time_then_ends_in_its_grace() {
        let mut clean = start();
        clean.extend([
            Record::sim(at(10.0), "gw1 killed"),
            unbound(15.5, 0, "s0"),
            ended(25.5, "s0"),
            Record::sim(at(40.0), "tick"),
        ]);
        assert_eq!(first(&clean), None);
        let mut late = start();
        late.extend([Record::sim(at(10.0), "gw1 killed"), Record::sim(at(16.1), "tick")]);
        let v = first(&late).expect("caught");
        assert!(v.contains("session s0 of a dead gateway's connection still attached"), "{v}");
        let mut lingering = start();
        lingering.extend([
            Record::sim(at(10.0), "gw1 killed"),
            unbound(15.0, 0, "s0"),
            Record::sim(at(25.1), "tick"),
        ]);
        let v = first(&lingering).expect("caught");
        assert!(v.contains("session s0 outlived its grace period"), "{v}");
    }

    #[test]
    fn a_resume_elsewhere_satisfies_the_obligations() {
        let mut resumed = start();
        resumed.extend([
            Record::sim(at(10.0), "gw1 killed"),
            opened_on("gw2", 11.0, 1, 1),
            unbound(11.2, 0, "s0"),
            bound(11.2, 1, "s0"),
            Record::sim(at(60.0), "tick"),
        ]);
        assert_eq!(first(&resumed), None);
    }

    #[test]
    fn a_session_on_two_connections_is_caught() {
        let mut twice = start();
        twice.extend([opened_on("gw2", 2.0, 1, 1), bound(2.1, 1, "s0")]);
        let v = first(&twice).expect("caught");
        assert!(v.contains("session s0 attached to"), "{v}");
    }

    #[test]
    fn while_the_worker_is_away_the_bound_waits_for_its_return() {
        let mut away = start();
        away.extend([
            worker(9.0, WorkerEvent::Bus { connected: false }),
            Record::sim(at(10.0), "gw1 killed"),
            Record::sim(at(20.0), "tick"),
            worker(30.0, WorkerEvent::Bus { connected: true }),
            unbound(35.5, 0, "s0"),
            ended(45.0, "s0"),
        ]);
        assert_eq!(first(&away), None);
        let mut back_late = start();
        back_late.extend([
            worker(9.0, WorkerEvent::Bus { connected: false }),
            Record::sim(at(10.0), "gw1 killed"),
            worker(30.0, WorkerEvent::Bus { connected: true }),
            Record::sim(at(36.1), "tick"),
        ]);
        assert!(first(&back_late).is_some_and(|v| v.contains("still attached")));
    }

    #[test]
    fn the_workers_own_invariants_and_its_death() {
        let broken = worker(1.0, WorkerEvent::Broken("membership".into()));
        assert!(first(&[broken]).is_some_and(|v| v.contains("worker: membership")));
        // A worker killed takes its obligations with it; its records after that are caught.
        let mut killed = start();
        killed.extend([
            Record::sim(at(10.0), "gw1 killed"),
            Record::sim(at(11.0), "chat1 killed"),
            Record::sim(at(30.0), "tick"),
        ]);
        assert_eq!(first(&killed), None);
        killed.push(worker(31.0, WorkerEvent::Bus { connected: true }));
        assert!(first(&killed).is_some_and(|v| v.contains("chat1: an event after it died")));
    }
}
