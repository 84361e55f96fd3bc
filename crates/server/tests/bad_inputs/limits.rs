//! Per-connection and per-server limits: what one client may hold or send, and what happens past it.

use clientmq_core::Target;
use clientmq_core::proto::mq;
use clientmq_testkit::rawws::BINARY;
use prost::Message as _;

use crate::harness::{MS, Raw, WAIT, error_reason, start_test};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_pending_limit_get_too_many_requests() {
    clientmq_testkit::deadline::bounded(async {
        let gw = start_test(|c| {
            c.gateway.max_pending_requests = 2;
            c.gateway.request_timeout = 300 * MS;
        })
        .await;
        let mut raw = gw.raw().await;
        raw.send(&mq::Message::request("C0", "x.Hang", vec![])).await;
        raw.send(&mq::Message::request("C1", "x.Hang", vec![])).await;
        raw.send(&mq::Message::request("C2", "x.Echo", vec![])).await;
        let refused = raw.next_message().await;
        assert_eq!(refused.request_id.as_deref(), Some("C2"));
        assert_eq!(error_reason(&refused).as_deref(), Some("too-many-requests"));
        // The two in flight end with the request timeout, and make room again.
        for id in ["C0", "C1"] {
            let timed_out = raw.next_message().await;
            assert_eq!(
                (timed_out.request_id.as_deref(), error_reason(&timed_out).as_deref()),
                (Some(id), Some("timeout"))
            );
        }
        gw.expect(r#"clientmq_requests_refused_total{reason="too-many-requests"}"#, 1.0).await;
        gw.expect(r#"clientmq_requests_total{type="other",outcome="refused"}"#, 1.0).await;
        gw.expect(r#"clientmq_requests_total{type="other",outcome="timeout"}"#, 2.0).await;
        gw.expect("clientmq_requests_pending", 0.0).await;
        gw.still_serves(1).await;
        raw.close_politely().await;
        gw.settles(0).await;
    })
    .await
}

/// Burst 5 at 1 frame a second: five accepted, then refused (a request gets `rate-limited`,
/// anything else is dropped), and one refused frame more than the burst closes it with 1008.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_refused_rate_limited_then_closed_1008() {
    clientmq_testkit::deadline::bounded(async {
        let gw = start_test(|c| {
            c.gateway.max_requests_per_sec = 1;
            c.gateway.request_burst = 5;
        })
        .await;
        let mut raw = gw.raw().await;
        let mut flood = Vec::new();
        for i in 0..5 {
            flood.push(mq::Message::request(&format!("C{i}"), "x.Echo", vec![]).encode_to_vec());
        }
        flood.push(vec![0xff, 0xff]); // garbage over the rate: dropped
        for i in 5..11 {
            flood.push(mq::Message::request(&format!("C{i}"), "x.Echo", vec![]).encode_to_vec());
        }
        let bytes: Vec<u8> =
            flood.iter().flat_map(|m| clientmq_testkit::rawws::encode_frame(BINARY, m, None)).collect();
        raw.write(&bytes).await;
        let ending = raw.ending().await;
        let answers: Vec<mq::Message> =
            ending.data.iter().map(|f| mq::Message::decode(f.payload.as_slice()).unwrap()).collect();
        // The refusals go out at once. The five accepted went to the backend and are answered
        // before the close goes out (finding 7): the close waits for them if they are still owed.
        let refused: Vec<&str> = answers
            .iter()
            .filter(|m| error_reason(m).is_some())
            .map(|m| m.request_id.as_deref().unwrap())
            .collect();
        assert_eq!(refused, ["C5", "C6", "C7", "C8"], "{answers:?}");
        assert!(answers.iter().all(|m| error_reason(m).as_deref().is_none_or(|r| r == "rate-limited")));
        let echoed: Vec<&str> = answers
            .iter()
            .filter(|m| error_reason(m).is_none())
            .map(|m| m.request_id.as_deref().unwrap())
            .collect();
        assert_eq!(echoed, ["C0", "C1", "C2", "C3", "C4"], "every accepted request answered");
        assert_eq!(ending.close, Some((1008, "rate-limit-exceeded".into())));
        gw.settles(0).await;
        gw.expect(r#"clientmq_requests_total{type="other",outcome="ok"}"#, 5.0).await;
        assert_eq!(gw.metric(r#"clientmq_requests_total{type="other",outcome="undeliverable"}"#), 0.0);
        gw.expect(r#"clientmq_requests_refused_total{reason="rate-limited"}"#, 4.0).await;
        gw.expect(r#"clientmq_disconnects_total{path="server",code="1008"}"#, 1.0).await;
        // The garbage over the rate is dropped; so is the frame after the one that tipped it
        // over: rate-limited while the close waits for answers, not-open once it is closing.
        let dropped = gw.metric(r#"clientmq_frames_dropped_total{reason="rate-limited"}"#)
            + gw.metric(r#"clientmq_frames_dropped_total{reason="not-open"}"#);
        assert_eq!(dropped, 2.0);
        gw.still_serves(0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_or_event_over_the_outbound_limit_is_replaced_or_dropped() {
    clientmq_testkit::deadline::bounded(async {
        let gw = start_test(|c| c.gateway.max_outbound_message_size = 600).await;
        let mut raw = gw.raw().await;
        // The echo of 1000 bytes is too large to send: the client gets mq.Error{too-large} instead.
        let answer = raw.call("x.Echo", vec![9; 1000]).await;
        assert_eq!(error_reason(&answer).as_deref(), Some("too-large"));
        // An event that large is dropped: the next thing the client gets is its next answer.
        let (conn, handle) = (gw.backend.last_conn(), gw.backend.handle());
        handle.deliver(Target::Connection(conn), "x.Big", vec![9; 1000]).await;
        handle.deliver(Target::Connection(conn), "x.Small", vec![1]).await;
        let small = raw.next_message().await;
        assert_eq!(small.r#type, "x.Small", "the large event never came");
        gw.expect(r#"clientmq_frames_dropped_total{reason="outbound-too-large"}"#, 2.0).await;
        gw.still_serves(1).await;
        raw.close_politely().await;
        gw.settles(0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_address_limit_are_closed_1008() {
    clientmq_testkit::deadline::bounded(async {
        let gw = start_test(|c| {
            c.max_connections_per_address = 2;
            c.shards = 2;
        })
        .await;
        let (first, _second) = (gw.raw().await, gw.raw().await);
        gw.settles(2).await;
        let mut third = gw.raw().await;
        let ending = third.ending().await;
        assert_eq!(ending.close, Some((1008, "address-limit-exceeded".into())));
        gw.expect(r#"clientmq_connections_rejected_total{code="1008"}"#, 1.0).await;
        gw.expect("clientmq_connections_total", 2.0).await;
        // One leaves: its place comes back.
        first.close_politely().await;
        gw.still_serves(1).await;
    })
    .await
}

/// X-Forwarded-For is believed only from a trusted proxy: a client cannot name another address
/// to get more places.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_x_forwarded_for_does_not_dodge_the_per_address_limit() {
    clientmq_testkit::deadline::bounded(async {
        let gw = start_test(|c| c.max_connections_per_address = 1).await;
        let first = Raw::upgrade(gw.tcp().await, &[("X-Forwarded-For", "203.0.113.1")]).await;
        gw.settles(1).await;
        let mut second = Raw::upgrade(gw.tcp().await, &[("X-Forwarded-For", "203.0.113.2")]).await;
        assert_eq!(second.ending().await.close, Some((1008, "address-limit-exceeded".into())));
        gw.expect(r#"clientmq_connections_rejected_total{code="1008"}"#, 1.0).await;
        first.close_politely().await;
        gw.still_serves(0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_1013() {
    clientmq_testkit::deadline::bounded(async {
        for shards in [1, 2] {
            let gw = start_test(|c| {
                c.gateway.max_connections = 2;
                c.shards = shards;
            })
            .await;
            let (first, _second) = (gw.raw().await, gw.raw().await);
            gw.settles(2).await;
            let mut third = gw.raw().await;
            let ending = third.ending().await;
            assert_eq!(ending.close, Some((1013, "concurrency-limit-exceeded".into())), "{shards} shards");
            gw.expect(r#"clientmq_connections_rejected_total{code="1013"}"#, 1.0).await;
            first.close_politely().await;
            gw.still_serves(1).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_3335() {
    clientmq_testkit::deadline::bounded(async {
        never_reads_closed_3335(|c| c.outbound_queue = 4).await;
    })
    .await
}

/// The byte bound holds whatever the frame count allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_3335_by_the_byte_bound() {
    clientmq_testkit::deadline::bounded(async {
        never_reads_closed_3335(|c| {
            c.outbound_queue = 1_000_000;
            c.outbound_queue_bytes = 20_000;
        })
        .await;
    })
    .await
}

async fn never_reads_closed_3335(configure: impl FnOnce(&mut clientmq_server::ServerConfig)) {
    {
        let gw = start_test(configure).await;
        let mut raw = gw.raw().await;
        raw.call("x.Hello", vec![]).await;
        let (conn, handle) = (gw.backend.last_conn(), gw.backend.handle());
        // Events until the socket's buffers and the queue of 4 are full; the client reads nothing.
        let started = tokio::time::Instant::now();
        while gw.server.open_connections() == 1 {
            assert!(started.elapsed() < WAIT, "still open after {WAIT:?} of events");
            for _ in 0..100 {
                handle.deliver(Target::Connection(conn), "x.Blob", vec![0; 3000]).await;
            }
            tokio::task::yield_now().await;
        }
        gw.settles(0).await;
        gw.expect(r#"clientmq_disconnects_total{path="forced",code="3335"}"#, 1.0).await;
        drop(raw);
        gw.still_serves(0).await;
    }
}

/// Ignores the heartbeat's pings, then ignores the close that follows: 3334, forced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_answers_pings_or_the_close_is_forced_3334() {
    clientmq_testkit::deadline::bounded(async {
        let gw = start_test(|c| c.gateway.heartbeat_interval = 150 * MS).await;
        let mut raw = gw.raw().await;
        let mut close = None;
        while close.is_none() {
            let frame = raw.read().await.expect("a ping or the close");
            close = frame.close_code();
        }
        assert_eq!(close, Some(3334));
        // No answer to the close: the server aborts after the close timeout.
        let (_, took) = crate::harness::drained(&mut raw.stream).await;
        assert!(took >= 250 * MS, "not before the close timeout: {took:?}");
        gw.settles(0).await;
        gw.expect(r#"clientmq_disconnects_total{path="forced",code="3334"}"#, 1.0).await;
        gw.still_serves(0).await;
    })
    .await
}
