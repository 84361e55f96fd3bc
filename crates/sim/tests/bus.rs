//! The simulated bus: each test is a small turmoil simulation with a "bus" host running the
//! broker and client hosts on `SimBus`, checking one part of NATS core's semantics, the
//! client's reconnects under partitions and broker restarts, and that a seed replays.

use clientmq_server::bus::{BusMessage, NO_RESPONDERS};
use clientmq_sim::bus::proto::{Frame, FrameReader};
use clientmq_sim::bus::{subject_matches, valid_subject};

#[test]
fn subjects_and_wildcards_are_matched_per_token() {
    assert!(subject_matches("a.*", "a.b"));
    assert!(!subject_matches("a.*", "a.b.c"));
    assert!(!subject_matches("a.*", "a"));
    assert!(subject_matches("a.>", "a.b.c"));
    assert!(!subject_matches("a.>", "a"));
    assert!(subject_matches("*.b.>", "x.b.y"));
    assert!(subject_matches(">", "a"));
    assert!(!subject_matches("a.b", "a.bc"));
    assert!(!subject_matches("a.b", "a.b.c"));
    assert!(valid_subject("a.*.>", true));
    for bad in ["", "a..b", ".a", "a.", "a b", "a.>.b", "a.\t"] {
        assert!(!valid_subject(bad, true), "{bad:?}");
    }
    assert!(!valid_subject("a.*", false));
    assert!(!valid_subject("a.>", false));
    assert!(valid_subject("a*.b>", false), "wildcards are whole tokens only");
}

#[test]
fn frames_round_trip_and_garbage_never_panics() {
    let msg = BusMessage::new("a.b", b"hello".to_vec()).reply_to("r.1").with("K", "v").with("K", "w");
    let frames = [
        Frame::Connect { name: "gw".into() },
        Frame::Sub { sid: 7, subject: "a.>".into(), queue: Some("q".into()) },
        Frame::Sub { sid: 8, subject: "a.*".into(), queue: None },
        Frame::Unsub { sid: 7 },
        Frame::Pub(msg.clone()),
        Frame::Msg { sid: 9, msg: BusMessage { status: Some(NO_RESPONDERS), ..msg } },
        Frame::Ping,
        Frame::Pong,
    ];
    let mut stream = Vec::new();
    for f in &frames {
        stream.extend(f.encode().unwrap());
    }
    // Byte by byte: frames come out whole, in order.
    let mut reader = FrameReader::default();
    let mut got = Vec::new();
    for b in &stream {
        reader.extend(std::slice::from_ref(b));
        while let Some(f) = reader.buffered().unwrap() {
            got.push(f);
        }
    }
    assert_eq!(got, frames);
    // Every prefix and every single-byte corruption decodes or fails, never panics.
    for end in 0..stream.len() {
        let _ = Frame::decode(&stream[..end]);
        let mut bad = stream.clone();
        bad[end] ^= 0xa5;
        let mut r = FrameReader::default();
        r.extend(&bad);
        while let Ok(Some(_)) = r.buffered() {}
    }
    let too_big = BusMessage::new("a", vec![0; clientmq_sim::bus::proto::MAX_PAYLOAD + 1]);
    assert!(Frame::Pub(too_big).encode().is_err());
}
