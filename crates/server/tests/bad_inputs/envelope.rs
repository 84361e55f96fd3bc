//! The MQ envelope: frames that are WebSocket-valid but not an `mq.Message` the gateway can act
//! on. Each is dropped without an answer and counted; the connection stays open.

use std::time::Duration;

use base64::Engine as _;
use clientmq_core::ServerRequestError;
use clientmq_core::proto::mq;
use clientmq_testkit::rawws::{BINARY, TEXT};
use prost::Message as _;

use crate::harness::{MS, MqType, start_test};

fn b64(bytes: &[u8]) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.encode(bytes).into_bytes()
}

fn response(id: &str, ty: &str) -> mq::Message {
    mq::Message { message_type: Some(MqType::Response as i32), ..mq::Message::request(id, ty, vec![1]) }
}

/// Sends `frames` on one connection, then a request: its answer must be the first thing back
/// (nothing answered the bad frames), each bad frame is counted under `reason`, and the
/// connection and the server go on.
async fn dropped(frames: &[(u8, Vec<u8>)], reason: &str) {
    let gw = start_test(|_| {}).await;
    let mut raw = gw.raw().await;
    for (opcode, payload) in frames {
        raw.frame(*opcode, payload).await;
    }
    let answer = raw.call("mq.PingPong", vec![8, 1]).await;
    assert_eq!(answer.r#type, "mq.PingPongResponse", "{reason}: {answer:?}");
    let series = format!("clientmq_frames_dropped_total{{reason=\"{reason}\"}}");
    gw.expect(&series, frames.len() as f64).await;
    gw.expect(r#"clientmq_requests_total{type="other",outcome="ok"}"#, 1.0).await;
    gw.still_serves(1).await;
    raw.close_politely().await;
    gw.settles(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_frames_are_dropped() {
    clientmq_testkit::deadline::bounded(async {
        dropped(&[(TEXT, vec![]), (BINARY, vec![])], "empty").await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_is_not_base64_is_dropped() {
    clientmq_testkit::deadline::bounded(async {
        let frames =
            [(TEXT, b"!!! not base64 !!!".to_vec()), (TEXT, b"QUJD=QUJD".to_vec()), (TEXT, "é".into())];
        dropped(&frames, "invalid-base64").await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_protobuf_are_dropped() {
    clientmq_testkit::deadline::bounded(async {
        let valid = mq::Message::request("R1", "x.Echo", vec![7; 20]).encode_to_vec();
        let frames = [
            (BINARY, vec![0xff, 0xff, 0xff]),
            (TEXT, b64(&[0xff, 0xff, 0xff])),
            (BINARY, valid[..valid.len() / 2].to_vec()),
            // Field 3 (type) as a varint instead of a string.
            (BINARY, vec![0x18, 0x01]),
        ];
        dropped(&frames, "invalid-message").await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_a_type_is_dropped() {
    clientmq_testkit::deadline::bounded(async {
        let untyped = mq::Message::request("R1", "", vec![1]).encode_to_vec();
        // Only a request id: no type field at all.
        let bare = mq::Message { request_id: Some("R2".into()), ..Default::default() }.encode_to_vec();
        dropped(&[(BINARY, untyped.clone()), (TEXT, b64(&untyped)), (BINARY, bare)], "missing-type").await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_request_id_is_dropped() {
    clientmq_testkit::deadline::bounded(async {
        let none =
            mq::Message { request_id: None, ..mq::Message::request("", "x.Echo", vec![]) }.encode_to_vec();
        let empty = mq::Message::request("", "x.Echo", vec![]).encode_to_vec();
        dropped(&[(BINARY, none), (BINARY, empty)], "missing-request-id").await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_message_type_is_dropped() {
    clientmq_testkit::deadline::bounded(async {
        let frames: Vec<_> = [3, 7, -1]
            .map(|t| {
                (
                    BINARY,
                    mq::Message { message_type: Some(t), ..mq::Message::request("R1", "x.Echo", vec![]) }
                        .encode_to_vec(),
                )
            })
            .into();
        dropped(&frames, "unknown-message-type").await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_event_is_dropped() {
    clientmq_testkit::deadline::bounded(async {
        let event = mq::Message {
            message_type: Some(MqType::Event as i32),
            ..mq::Message::request("", "chat.RoomEvent", vec![])
        };
        dropped(&[(BINARY, event.encode_to_vec())], "client-event").await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_to_no_server_request_is_dropped() {
    clientmq_testkit::deadline::bounded(async {
        let frames: Vec<_> = ["S7", "S", "Sx", "C0", "S18446744073709551616", ""]
            .map(|id| (BINARY, response(id, "x.AskResponse").encode_to_vec()))
            .into();
        dropped(&frames, "unsolicited-response").await;
    })
    .await
}

/// A server request answered by another connection, then by its own after it timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_or_late_response_is_dropped() {
    clientmq_testkit::deadline::bounded(async {
        let gw = start_test(|c| c.gateway.server_request_timeout = 300 * MS).await;
        let (mut asked, mut other) = (gw.raw().await, gw.raw().await);
        asked.call("x.Hello", vec![]).await;
        let (conn, handle) = (gw.backend.last_conn(), gw.backend.handle());
        let result = tokio::spawn(async move { handle.server_request(conn, "x.Ask", vec![5]).await });
        let req = asked.next_message().await;
        assert_eq!(
            (req.request_id.as_deref(), req.r#type.as_str(), req.message_type),
            (Some("S0"), "x.Ask", Some(MqType::Request as i32))
        );
        // Another connection answers it: not its question.
        other.send(&response("S0", "x.AskResponse")).await;
        other.call("mq.PingPong", vec![8, 1]).await;
        gw.expect(r#"clientmq_frames_dropped_total{reason="unsolicited-response"}"#, 1.0).await;
        // The asked one answers after the server request timed out.
        let outcome = tokio::time::timeout(Duration::from_secs(2), result).await.unwrap().unwrap();
        assert_eq!(outcome, Err(ServerRequestError::Timeout));
        asked.send(&response("S0", "x.AskResponse")).await;
        asked.call("mq.PingPong", vec![8, 1]).await;
        gw.expect(r#"clientmq_frames_dropped_total{reason="late-response"}"#, 1.0).await;
        gw.still_serves(2).await;
        asked.close_politely().await;
        other.close_politely().await;
        gw.settles(0).await;
    })
    .await
}
