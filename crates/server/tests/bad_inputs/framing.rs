//! WebSocket framing (RFC 6455 §5): frames no library would send, written byte by byte.

use clientmq_testkit::rawws::{self, BINARY, CLOSE, PING, PONG, TEXT, close_payload, encode_frame};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::harness::{Ending, Gw, TestBackend, start_test};

const CONTINUATION: u8 = 0x0;

/// A masked frame with every header bit chosen: `first` is the whole first byte (FIN, RSV1-3,
/// opcode).
fn raw_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = encode_frame(first & 0x0f, payload, None);
    frame[0] = first;
    frame
}

/// Sends `bytes` on a fresh WebSocket and returns the server and how the connection ended.
async fn send(bytes: &[u8]) -> (Gw<TestBackend>, Ending) {
    let gw = start_test(|_| {}).await;
    let mut raw = gw.raw().await;
    gw.settles(1).await;
    raw.write(bytes).await;
    let ending = raw.ending().await;
    (gw, ending)
}

/// A protocol violation: the connection is failed with a 1002 close frame first (RFC 6455
/// §7.1.7) and counted as lost with 1002.
async fn violation(bytes: &[u8]) {
    failed_with(bytes, 1002).await
}

/// The connection is sent a close frame with `code`, then dropped, and counted as lost with it.
async fn failed_with(bytes: &[u8], code: u16) {
    let (gw, ending) = send(bytes).await;
    assert_eq!(ending.code(), Some(code), "{ending:?}");
    assert!(ending.data.is_empty(), "{ending:?}");
    gw.settles(0).await;
    gw.expect(&format!(r#"clientmq_disconnects_total{{path="lost",code="{code}"}}"#), 1.0).await;
    gw.still_serves(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmasked_client_frame_is_a_protocol_error() {
    clientmq_testkit::deadline::bounded(async {
        let mut frame = vec![0x80 | BINARY, 3];
        frame.extend_from_slice(b"abc");
        violation(&frame).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_bits_are_a_protocol_error() {
    clientmq_testkit::deadline::bounded(async {
        for rsv in [0x40, 0x20, 0x10] {
            violation(&raw_frame(0x80 | rsv | BINARY, b"abc")).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_opcodes_are_a_protocol_error() {
    clientmq_testkit::deadline::bounded(async {
        for opcode in [0x3, 0x7, 0xB, 0xF] {
            violation(&raw_frame(0x80 | opcode, b"abc")).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragmented_control_frame_is_a_protocol_error() {
    clientmq_testkit::deadline::bounded(async {
        violation(&raw_frame(PING, b"not final")).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_control_frame_is_a_protocol_error() {
    clientmq_testkit::deadline::bounded(async {
        violation(&encode_frame(PING, &[7u8; 126], None)).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_without_a_start_is_a_protocol_error() {
    clientmq_testkit::deadline::bounded(async {
        violation(&raw_frame(0x80 | CONTINUATION, b"orphan")).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_message_inside_a_fragmented_one_is_a_protocol_error() {
    clientmq_testkit::deadline::bounded(async {
        let mut bytes = raw_frame(BINARY, b"first half");
        bytes.extend(raw_frame(0x80 | TEXT, b"interloper"));
        violation(&bytes).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_text_message_is_failed_1007() {
    clientmq_testkit::deadline::bounded(async {
        // One frame, and a valid start split from an invalid end across fragments (RFC 6455 §8.1:
        // the endpoint fails the connection with 1007, §7.4.1).
        failed_with(&encode_frame(TEXT, &[b'o', b'k', 0xff, 0xfe], None), 1007).await;
        let mut split = raw_frame(TEXT, &[b'a', 0xe2, 0x82]);
        split.extend(raw_frame(0x80 | CONTINUATION, &[0x28]));
        failed_with(&split, 1007).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_close_frame_is_a_protocol_error() {
    clientmq_testkit::deadline::bounded(async {
        // A one-byte close payload, and a close reason that is not UTF-8.
        violation(&encode_frame(CLOSE, &[0x03], None)).await;
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.extend_from_slice(&[0xc3, 0x28]);
        violation(&encode_frame(CLOSE, &bad_reason, None)).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_with_an_invalid_code_is_a_protocol_error() {
    clientmq_testkit::deadline::bounded(async {
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 2999, 5000] {
            violation(&encode_frame(CLOSE, &close_payload(code, "x"), None)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_frame_then_eof_is_lost_1006() {
    clientmq_testkit::deadline::bounded(async {
        let gw = start_test(|_| {}).await;
        let mut raw = gw.raw().await;
        gw.settles(1).await;
        let frame = encode_frame(BINARY, &[1u8; 100], None);
        raw.write(&frame[..20]).await;
        raw.stream.shutdown().await.unwrap();
        let ending = raw.ending().await;
        assert_eq!(ending.code(), None, "{ending:?}");
        gw.settles(0).await;
        gw.expect(r#"clientmq_disconnects_total{path="lost",code="1006"}"#, 1.0).await;
        gw.still_serves(0).await;
    })
    .await
}

/// Over `--max-frame-bytes` (4096 here), however it is sent: closed with 1009 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_message_is_closed_1009() {
    clientmq_testkit::deadline::bounded(async {
        let one_frame = encode_frame(BINARY, &[0u8; 5000], None);
        // Only a header that declares 2^40 bytes: refused before a byte of payload is read.
        let declared = encode_frame(BINARY, &[], Some(1 << 40));
        // Fragments each under the limit, together over it.
        let mut fragments = raw_frame(BINARY, &[0u8; 2000]);
        fragments.extend(raw_frame(CONTINUATION, &[0u8; 2000]));
        fragments.extend(raw_frame(0x80 | CONTINUATION, &[0u8; 2000]));
        for (name, bytes) in [("one frame", one_frame), ("declared", declared), ("fragments", fragments)] {
            let (gw, ending) = send(&bytes).await;
            assert_eq!(ending.code(), Some(1009), "{name}: {ending:?}");
            gw.settles(0).await;
            gw.expect(r#"clientmq_disconnects_total{path="lost",code="1009"}"#, 1.0).await;
            gw.still_serves(0).await;
        }
    })
    .await
}

/// Pings are answered by the core within the connection's frame rate (docs/ARCHITECTURE.md, "Trust boundary":
/// every frame counts, garbage included): a flood of pings is a flood like any other, closed
/// with 1008 after a burst of refused frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_rate_limited_like_any_frame() {
    clientmq_testkit::deadline::bounded(async {
        control_flood(PING).await;
    })
    .await
}

/// Unsolicited pongs cost a token like any frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsolicited_pong_flood_is_rate_limited_like_any_frame() {
    clientmq_testkit::deadline::bounded(async {
        control_flood(PONG).await;
    })
    .await
}

async fn control_flood(opcode: u8) {
    let gw = start_test(|c| {
        c.gateway.max_requests_per_sec = 5;
        c.gateway.request_burst = 5;
    })
    .await;
    let mut raw = gw.raw().await;
    gw.settles(1).await;
    // 50 frames: ten times the burst, sent at once.
    let flood: Vec<u8> = (0..50u8).flat_map(|i| encode_frame(opcode, &[i; 8], None)).collect();
    raw.write(&flood).await;
    let mut pongs = 0;
    let close = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match rawws::read_frame(&mut raw.stream).await {
                Ok(Some(f)) if f.opcode == CLOSE => return f.close_code(),
                Ok(Some(f)) => pongs += usize::from(f.opcode == PONG),
                _ => return None,
            }
        }
    })
    .await;
    let counted =
        gw.server.metrics_text().lines().filter(|l| l.starts_with("clientmq_frames_dropped")).count();
    assert_eq!(
        close.ok().flatten(),
        Some(1008),
        "a flood of 50 control frames (burst 5, 5/s) is closed 1008; observed within 1 s: no close, \
         {pongs} pongs back, {} open, {counted} dropped-frame series",
        gw.server.open_connections()
    );
    // At most a burst of pings was answered.
    assert!(pongs <= 5, "{pongs} pongs for a burst of 5");
    raw.write(&encode_frame(CLOSE, &close_payload(1008, ""), None)).await;
    gw.expect(r#"clientmq_disconnects_total{path="server",code="1008"}"#, 1.0).await;
    let dropped = gw.metric(r#"clientmq_frames_dropped_total{reason="rate-limited"}"#);
    assert!(dropped >= 5.0, "{dropped} frames dropped before the close");
    gw.still_serves(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_with_a_payload_is_answered_with_the_same_payload() {
    clientmq_testkit::deadline::bounded(async {
        // Not a bad input, the baseline of the two above: one ping, one pong, nothing counted.
        let gw = start_test(|_| {}).await;
        let mut raw = gw.raw().await;
        raw.frame(PING, b"hello").await;
        let pong = raw.read().await.unwrap();
        assert_eq!((pong.opcode, pong.payload.as_slice()), (PONG, &b"hello"[..]));
        raw.close_politely().await;
        gw.still_serves(0).await;
    })
    .await
}
