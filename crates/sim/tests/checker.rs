//! The checker has teeth: traces with the seed's leak, a double disconnect and a limit
//! overshoot are each caught, with the connection and the time in the message.

use std::time::Duration;

use clientmq_core::{ConnectionId, DisconnectPath, EventKind};
use clientmq_sim::check::{Checker, Limits};
use clientmq_sim::trace::Record;

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

fn opened(t: f64, n: u8, open: usize) -> Record {
    Record::gateway(at(t), Some(id(n)), EventKind::Opened { remote: "10.0.0.1".parse().unwrap(), open })
}

fn disconnected(t: f64, n: u8, open: usize) -> Record {
    Record::gateway(
        at(t),
        Some(id(n)),
        EventKind::Disconnected { path: DisconnectPath::Forced, code: 3334, open },
    )
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
    let close = Record::gateway(at(2.0), Some(id(0)), EventKind::CloseSent { code: 3334, reason: "timeout" });
    let trace =
        [opened(1.0, 0, 1), opened(1.5, 1, 2), close, disconnected(7.0, 0, 1), disconnected(8.0, 1, 0)];
    assert_eq!(first_violation(&trace), None);
}

#[test]
fn the_seeds_leak_is_caught_closing_past_the_timeout() {
    // The server closed, the client never answered, and the gateway never let go.
    let close = Record::gateway(at(2.0), Some(id(0)), EventKind::CloseSent { code: 3334, reason: "timeout" });
    let later = Record::sim(at(30.0), "anything at all");
    let v = first_violation(&[opened(1.0, 0, 1), close, later]).expect("caught");
    assert!(v.contains(&id(0).to_string()), "{v}");
    assert!(v.starts_with("at 30.000000s"), "{v}");
    assert!(v.contains("closing since 2.000000s"), "{v}");
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
    assert_eq!(v, format!("at 2.500000s: connection {}: disconnected twice", id(0)));
}

#[test]
fn a_limit_overshoot_is_caught() {
    let v = first_violation(&[opened(1.0, 0, 1), opened(1.1, 1, 2), opened(1.2, 2, 3)]).expect("caught");
    assert_eq!(v, format!("at 1.200000s: connection {}: open 3 is above the limit 2", id(2)));
}

#[test]
fn a_refusal_with_room_is_caught() {
    let rejected = Record::gateway(at(2.0), Some(id(5)), EventKind::Rejected { code: 1013, open: 1 });
    let v = first_violation(&[opened(1.0, 0, 1), rejected]).expect("caught");
    assert!(v.contains("refused with 1013 while only 1 of 2 were open"), "{v}");
}

#[test]
fn a_request_pending_past_its_timeout_is_caught() {
    let forwarded = Record::gateway(
        at(1.0),
        Some(id(0)),
        EventKind::Forwarded { request_id: "C7".into(), request_type: "x".into(), token: 0 },
    );
    let v = first_violation(&[opened(0.5, 0, 1), forwarded, Record::sim(at(17.0), "tick")]).expect("caught");
    assert!(
        v.contains("request C7 pending past the request timeout") && v.contains(&id(0).to_string()),
        "{v}"
    );
}
