//! Bounds an outsider cannot push past: a connection's frame rate (a token bucket; a request over
//! it answered `mq.Error{rate-limited}`, a sender that keeps going closed with 1008) and the size
//! of what the gateway sends.

use std::time::Duration;

use clientmq_core::proto::mq;
use clientmq_core::{Config, DropReason, Encoding, EventKind, Input, Output, Reply, Target, close};

use crate::harness::{Harness, error_reason};

fn limited(per_sec: u32, burst: u32) -> Harness {
    Harness::new(Config { max_requests_per_sec: per_sec, request_burst: burst, ..Config::default() })
}

#[test]
fn a_burst_passes_then_requests_are_refused_until_the_bucket_refills() {
    let mut h = limited(10, 5);
    let a = h.open();
    for i in 0..5 {
        h.request(a, &format!("C{i}"), "x.Y", vec![], Encoding::Binary);
    }
    assert_eq!(h.backend_tokens().len(), 5, "the burst goes through");
    h.take_outputs();
    h.request(a, "C5", "x.Y", vec![], Encoding::Binary);
    let sent = h.sent_to(a);
    assert_eq!(error_reason(&sent[0].1), "rate-limited");
    assert_eq!(sent[0].1.request_id.as_deref(), Some("C5"));
    assert!(h.backend_tokens().is_empty(), "a refused request never reaches the backend");
    assert!(h.events_of(a).iter().any(|k| matches!(k, EventKind::RequestRefused { reason: "rate-limited" })));
    // 10 a second: after 100 ms there is one token again, and only one.
    h.advance(Duration::from_millis(100));
    h.take_outputs();
    h.request(a, "C6", "x.Y", vec![], Encoding::Binary);
    h.request(a, "C7", "x.Y", vec![], Encoding::Binary);
    assert_eq!(h.backend_tokens().len(), 1);
    assert_eq!(error_reason(&h.sent_to(a)[0].1), "rate-limited");
}

#[test]
fn frames_that_are_not_requests_count_and_are_dropped_over_the_rate() {
    let mut h = limited(1, 1);
    let a = h.open();
    h.input(Input::Frame { conn: a, frame: clientmq_core::Frame::Binary(vec![0xff]) });
    h.input(Input::Frame { conn: a, frame: clientmq_core::Frame::Binary(vec![0xff]) });
    let dropped: Vec<_> = h
        .events_of(a)
        .into_iter()
        .filter_map(|k| match k {
            EventKind::Dropped { reason } => Some(*reason),
            _ => None,
        })
        .collect();
    assert_eq!(dropped, vec![DropReason::Malformed("invalid-message"), DropReason::RateLimited]);
}

#[test]
fn a_sender_that_keeps_going_past_a_full_burst_of_refusals_is_closed_1008() {
    let mut h = limited(1, 3);
    let a = h.open();
    for i in 0..3 {
        h.request(a, &format!("C{i}"), "x.Y", vec![], Encoding::Binary);
    }
    // The three within the rate were answered before the flood goes on.
    for (token, _, _) in h.backend_tokens() {
        h.input(Input::BackendReply {
            token,
            result: Ok(Reply { reply_type: String::new(), payload: Vec::new() }),
        });
    }
    for i in 3..3 + 3 {
        h.request(a, &format!("C{i}"), "x.Y", vec![], Encoding::Binary);
    }
    assert!(h.closes_of(a).is_empty(), "three refusals are a warning");
    h.request(a, "C6", "x.Y", vec![], Encoding::Binary);
    assert_eq!(h.closes_of(a), vec![close::RATE_LIMIT.code]);
    h.input(Input::PeerClosed { conn: a, code: Some(1008) });
    assert_eq!(h.gw.open_connections(), 0);
}

/// Finding 7 of docs/bad-inputs.md: the requests accepted before a flood tipped over are still
/// answered, then the 1008 close goes out; what the flooder sends meanwhile is dropped.
#[test]
fn a_flood_close_waits_for_the_answers_to_the_requests_accepted_before_it() {
    let mut h = limited(1, 3);
    let a = h.open();
    for i in 0..3 + 3 + 1 {
        h.request(a, &format!("C{i}"), "x.Y", vec![], Encoding::Binary);
    }
    let accepted = h.backend_tokens();
    assert_eq!(accepted.len(), 3, "three within the rate went to the backend");
    assert!(h.closes_of(a).is_empty(), "the close waits for their answers");
    assert!(h.events_of(a).contains(&&EventKind::FloodDeferred { pending: 3 }));
    h.request(a, "C7", "x.Y", vec![], Encoding::Binary);
    assert_eq!(h.backend_tokens().len(), 3, "nothing more is taken");
    let answer = |h: &mut Harness, i: usize| {
        let token = accepted[i].0;
        h.input(Input::BackendReply {
            token,
            result: Ok(Reply { reply_type: String::new(), payload: Vec::new() }),
        });
    };
    answer(&mut h, 0);
    answer(&mut h, 1);
    assert!(h.closes_of(a).is_empty(), "one still owed");
    answer(&mut h, 2);
    assert_eq!(h.closes_of(a), vec![close::RATE_LIMIT.code], "then the close");
    let answered: Vec<_> = h
        .sent_to(a)
        .into_iter()
        .filter(|(_, m)| m.r#type == "x.YResponse")
        .filter_map(|(_, m)| m.request_id)
        .collect();
    assert_eq!(answered, ["C0", "C1", "C2"], "every accepted request answered before the close");
    h.input(Input::PeerClosed { conn: a, code: Some(1008) });
    assert_eq!(h.gw.open_connections(), 0);
}

/// A flooder whose accepted requests are never answered is closed once they time out.
#[test]
fn a_deferred_flood_close_is_bounded_by_the_request_timeout() {
    let mut h = limited(1, 3);
    let a = h.open();
    for i in 0..3 + 3 + 1 {
        h.request(a, &format!("C{i}"), "x.Y", vec![], Encoding::Binary);
    }
    assert!(h.closes_of(a).is_empty());
    h.advance(Config::default().request_timeout);
    assert_eq!(h.closes_of(a), vec![close::RATE_LIMIT.code]);
}

fn pongs_to(h: &mut Harness, id: clientmq_core::ConnectionId) -> Vec<Vec<u8>> {
    h.take_outputs()
        .into_iter()
        .filter_map(|o| match o {
            Output::Pong { conn, payload } if conn == id => Some(payload),
            _ => None,
        })
        .collect()
}

#[test]
fn pings_are_answered_within_the_rate_and_a_ping_flood_is_closed_1008() {
    let mut h = limited(1, 2);
    let a = h.open();
    h.take_outputs();
    for i in 0..2u8 {
        h.input(Input::Ping { conn: a, payload: vec![i] });
    }
    assert_eq!(pongs_to(&mut h, a), vec![vec![0], vec![1]], "a burst of pings, each echoed");
    for i in 2..4u8 {
        h.input(Input::Ping { conn: a, payload: vec![i] });
    }
    assert!(pongs_to(&mut h, a).is_empty(), "over the rate: no pong");
    assert!(h.closes_of(a).is_empty());
    h.input(Input::Ping { conn: a, payload: vec![4] });
    assert_eq!(h.closes_of(a), vec![close::RATE_LIMIT.code], "a burst more refused: closed");
    h.take_outputs();
    h.input(Input::Ping { conn: a, payload: vec![5] });
    assert!(pongs_to(&mut h, a).is_empty(), "no pong once closing");
}

#[test]
fn unsolicited_pongs_cost_a_token_but_a_pong_while_closing_is_free() {
    let mut h = limited(1, 1);
    let a = h.open();
    h.input(Input::Pong { conn: a, payload: vec![9] });
    h.input(Input::Pong { conn: a, payload: vec![9] });
    assert!(
        h.events_of(a).iter().any(|k| matches!(k, EventKind::Dropped { reason: DropReason::RateLimited }))
    );
    h.input(Input::Pong { conn: a, payload: vec![9] });
    assert_eq!(h.closes_of(a), vec![close::RATE_LIMIT.code]);
    let dropped =
        |h: &Harness| h.events_of(a).iter().filter(|k| matches!(k, EventKind::Dropped { .. })).count();
    let before = dropped(&h);
    h.input(Input::Pong { conn: a, payload: vec![9] });
    assert_eq!(dropped(&h), before, "a pong while closing is not charged");
    h.input(Input::PeerClosed { conn: a, code: Some(1008) });
    assert_eq!(h.gw.open_connections(), 0);
}

#[test]
fn over_the_rate_only_requests_are_answered_other_messages_are_dropped() {
    let mut h = limited(1, 1);
    let a = h.open();
    h.request(a, "C0", "x.Y", vec![], Encoding::Binary);
    h.take_outputs();
    // An event with a request id, over the rate: dropped, never answered rate-limited.
    let event = mq::Message {
        request_id: Some("C1".into()),
        r#type: "x.Event".into(),
        message_type: Some(mq::message::MessageType::Event as i32),
        ..Default::default()
    };
    h.input(Input::Frame { conn: a, frame: clientmq_core::codec::encode(&event, Encoding::Binary) });
    assert!(h.sent_to(a).is_empty(), "{:?}", h.sent_to(a));
    assert!(
        h.events_of(a).iter().any(|k| matches!(k, EventKind::Dropped { reason: DropReason::RateLimited }))
    );
}

/// Opens a connection, sends request `C0` and answers it with `payload`: what was sent.
fn answered(config: Config, payload: Vec<u8>) -> Vec<Output> {
    let mut h = Harness::new(config);
    let a = h.open();
    h.request(a, "C0", "x.Y", vec![], Encoding::Binary);
    let token = h.backend_tokens()[0].0;
    h.take_outputs();
    h.input(Input::BackendReply { token, result: Ok(Reply { reply_type: String::new(), payload }) });
    h.take_outputs().into_iter().filter(|o| matches!(o, Output::Send { .. })).collect()
}

#[test]
fn an_answer_of_exactly_the_outbound_limit_is_sent() {
    let unlimited = answered(Config::default(), vec![7; 150]);
    let Some(Output::Send { frame, .. }) = unlimited.first() else { panic!("{unlimited:?}") };
    let exact = Config { max_outbound_message_size: frame.len(), ..Config::default() };
    assert_eq!(answered(exact, vec![7; 150]), unlimited, "the answer itself, not mq.Error");
}

#[test]
fn nothing_larger_than_the_outbound_limit_is_sent() {
    let mut h = Harness::new(Config { max_outbound_message_size: 200, ..Config::default() });
    let a = h.open();
    h.request(a, "C0", "x.Y", vec![], Encoding::Binary);
    let token = h.backend_tokens()[0].0;
    h.take_outputs();
    let big = Reply { reply_type: String::new(), payload: vec![7; 300] };
    h.input(Input::BackendReply { token, result: Ok(big) });
    let sent = h.sent_to(a);
    assert_eq!(sent.len(), 1);
    assert_eq!(error_reason(&sent[0].1), "too-large", "the client still gets an answer");
    assert_eq!(sent[0].1.request_id.as_deref(), Some("C0"));
    h.take_outputs();
    h.input(Input::Deliver {
        target: Target::Connection(a),
        event_type: "big.Event".into(),
        payload: vec![7; 300],
    });
    assert!(h.sent_to(a).is_empty(), "a too large event is dropped");
    let drops = h
        .events_of(a)
        .iter()
        .filter(|k| matches!(k, EventKind::Dropped { reason: DropReason::OutboundTooLarge }))
        .count();
    assert_eq!(drops, 2);
    let small = mq::Error { reason: "x".into() };
    h.input(Input::Deliver {
        target: Target::Connection(a),
        event_type: "small.Event".into(),
        payload: prost::Message::encode_to_vec(&small),
    });
    assert_eq!(h.sent_to(a).len(), 1);
}
