//! The request the load generator sends, and how an answer is checked.
//!
//! A request is an `mq.Message` of type `mq.PingPong` with id `C<n>` (the SDK's numbering),
//! base64 in a text frame (the SDK's encoding). clientmq's embedded backend and the Node seed
//! gateway answer it `mq.PingPongResponse` echoing the payload, without a session; the echo
//! baseline sends the same bytes back. Either way the answer is decoded with the real codec and
//! must carry the request's id.

use clientmq_core::codec;
use clientmq_core::proto::mq;
use prost::Message as _;

pub const REQUEST_TYPE: &str = "mq.PingPong";

/// The SDK's request id for the `n`th request of a connection.
pub fn request_id(n: u64) -> String {
    format!("C{n}")
}

/// The `mq.Message` of request `request_id` of type `ty`.
pub fn request(request_id: &str, ty: &str, payload: Vec<u8>) -> mq::Message {
    mq::Message {
        request_id: Some(request_id.to_owned()),
        r#type: ty.to_owned(),
        payload,
        message_type: Some(mq::message::MessageType::Request as i32),
        ..Default::default()
    }
}

/// The `mq.Message` of the benchmark's request `request_id`.
pub fn request_message(request_id: &str, origin_ms: u64) -> mq::Message {
    let ping = mq::PingPong { origin_timestamp: origin_ms, count: None };
    request(request_id, REQUEST_TYPE, ping.encode_to_vec())
}

/// The text frame of `msg`: base64 of the encoded message, as the SDK sends.
pub fn base64_text(msg: &mq::Message) -> String {
    match codec::encode(msg, codec::Encoding::Base64Text) {
        codec::Frame::Text(text) => text,
        codec::Frame::Binary(_) => unreachable!("base64 encoding gives text frames"),
    }
}

/// The text frame of request `request_id`.
pub fn request_frame(request_id: &str, origin_ms: u64) -> String {
    base64_text(&request_message(request_id, origin_ms))
}

/// What came back for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// An `mq.Message` with the request's id; its type.
    Matched(String),
    /// An `mq.Message` with another id (or none).
    Mismatch,
    /// Not an `mq.Message`.
    Undecodable,
}

/// Checks a text frame received for request `expected_id`.
pub fn check_answer(text: &str, expected_id: &str) -> Answer {
    match codec::decode(&codec::Frame::Text(text.to_owned()), usize::MAX) {
        Ok(msg) if msg.request_id.as_deref() == Some(expected_id) => Answer::Matched(msg.r#type),
        Ok(_) => Answer::Mismatch,
        Err(_) => Answer::Undecodable,
    }
}

/// The reason of an `mq.Error` answer, for reports.
pub fn error_reason(text: &str) -> Option<String> {
    let msg = codec::decode(&codec::Frame::Text(text.to_owned()), usize::MAX).ok()?;
    (msg.r#type == "mq.Error").then(|| mq::Error::decode(msg.payload.as_slice()).ok().map(|e| e.reason))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_frames_are_base64_mq_messages() {
        let text = request_frame(&request_id(7), 1234);
        let msg = codec::decode(&codec::Frame::Text(text.clone()), usize::MAX).unwrap();
        assert_eq!(msg.request_id.as_deref(), Some("C7"));
        assert_eq!(msg.r#type, REQUEST_TYPE);
        assert_eq!(msg.message_type, Some(mq::message::MessageType::Request as i32));
        assert_eq!(mq::PingPong::decode(msg.payload.as_slice()).unwrap().origin_timestamp, 1234);
        assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)));
        // Small and stable: the same bytes go to the gateway and to the echo baseline.
        assert!((30..=60).contains(&text.len()), "{} bytes", text.len());
    }

    #[test]
    fn an_echo_matches_and_another_id_does_not() {
        let text = request_frame("C3", 0);
        assert_eq!(check_answer(&text, "C3"), Answer::Matched(REQUEST_TYPE.into()));
        assert_eq!(check_answer(&text, "C4"), Answer::Mismatch);
        assert_eq!(check_answer("not base64 %%", "C3"), Answer::Undecodable);
        assert_eq!(error_reason(&text), None);
    }

    #[test]
    fn gateway_errors_match_and_expose_their_reason() {
        let error = mq::Message {
            request_id: Some("C9".into()),
            r#type: "mq.Error".into(),
            payload: mq::Error { reason: "unauthorized".into() }.encode_to_vec(),
            message_type: Some(mq::message::MessageType::Response as i32),
            ..Default::default()
        };
        let codec::Frame::Text(text) = codec::encode(&error, codec::Encoding::Base64Text) else {
            unreachable!()
        };
        assert_eq!(check_answer(&text, "C9"), Answer::Matched("mq.Error".into()));
        assert_eq!(error_reason(&text).as_deref(), Some("unauthorized"));
    }
}
