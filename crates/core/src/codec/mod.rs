//! The frame codec: a text frame carries the base64 of an encoded `mq.Message`, a binary frame
//! carries it raw. Decoding is total: any byte string or text gives a message or a [`CodecError`].

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use prost::Message as _;

use crate::proto::mq;

mod broadcast;
pub use broadcast::{Broadcast, Delivery, FrameHead};

/// Standard alphabet; padding optional on input, written on output.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A WebSocket data frame, as the transport delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

impl Frame {
    /// Length of the frame's payload in bytes.
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(s) => s.len(),
            Frame::Binary(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn encoding(&self) -> Encoding {
        match self {
            Frame::Text(_) => Encoding::Base64Text,
            Frame::Binary(_) => Encoding::Binary,
        }
    }
}

/// How a connection frames its messages. Replies go out the way the client's last frame came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Encoding {
    /// Text frames holding base64 (the Phenix web SDK's encoding).
    #[default]
    Base64Text,
    /// Binary frames holding the encoded message.
    Binary,
}

/// Why a frame is not an MQ message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("empty frame")]
    Empty,
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("text frame is not base64")]
    InvalidBase64,
    #[error("not an mq.Message: {0}")]
    InvalidMessage(String),
    #[error("mq.Message without a type")]
    MissingType,
}

impl CodecError {
    /// Stable label for metrics and traces.
    pub fn label(&self) -> &'static str {
        match self {
            CodecError::Empty => "empty",
            CodecError::TooLarge { .. } => "too-large",
            CodecError::InvalidBase64 => "invalid-base64",
            CodecError::InvalidMessage(_) => "invalid-message",
            CodecError::MissingType => "missing-type",
        }
    }
}

/// Decodes one frame into an `mq.Message`. Frames longer than `max_len` bytes are refused
/// before any work is done on them.
pub fn decode(frame: &Frame, max_len: usize) -> Result<mq::Message, CodecError> {
    if frame.is_empty() {
        return Err(CodecError::Empty);
    }
    if frame.len() > max_len {
        return Err(CodecError::TooLarge { len: frame.len(), max: max_len });
    }
    let decoded;
    let bytes = match frame {
        Frame::Binary(b) => b.as_slice(),
        Frame::Text(t) => {
            decoded = BASE64.decode(t.trim_end()).map_err(|_| CodecError::InvalidBase64)?;
            decoded.as_slice()
        }
    };
    let msg = mq::Message::decode(bytes).map_err(|e| CodecError::InvalidMessage(e.to_string()))?;
    if msg.r#type.is_empty() {
        return Err(CodecError::MissingType);
    }
    Ok(msg)
}

/// Encodes a message as a frame of the given encoding.
pub fn encode(msg: &mq::Message, encoding: Encoding) -> Frame {
    let bytes = msg.encode_to_vec();
    match encoding {
        Encoding::Binary => Frame::Binary(bytes),
        Encoding::Base64Text => Frame::Text(BASE64.encode(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> mq::Message {
        mq::Message {
            session_id: Some("s1".into()),
            request_id: Some("C0".into()),
            r#type: "pcast.Authenticate".into(),
            encoding: None,
            payload: vec![1, 2, 3],
            wall_time: vec![1.5],
            message_type: Some(mq::message::MessageType::Request as i32),
        }
    }

    #[test]
    fn round_trips_in_both_encodings() {
        for enc in [Encoding::Base64Text, Encoding::Binary] {
            let frame = encode(&sample(), enc);
            assert_eq!(frame.encoding(), enc);
            assert_eq!(decode(&frame, 1 << 20), Ok(sample()));
        }
    }

    #[test]
    fn text_frames_are_standard_base64_of_the_message() {
        let Frame::Text(text) = encode(&sample(), Encoding::Base64Text) else {
            panic!("text encoding gives a text frame")
        };
        let raw = base64::engine::general_purpose::STANDARD.decode(&text).unwrap();
        assert_eq!(mq::Message::decode(raw.as_slice()).unwrap(), sample());
        // Unpadded input is accepted too.
        let unpadded = text.trim_end_matches('=').to_owned();
        assert_eq!(decode(&Frame::Text(unpadded), 1 << 20), Ok(sample()));
    }

    #[test]
    fn bad_frames_get_typed_errors() {
        assert_eq!(decode(&Frame::Text(String::new()), 10), Err(CodecError::Empty));
        assert_eq!(decode(&Frame::Binary(vec![0; 11]), 10), Err(CodecError::TooLarge { len: 11, max: 10 }));
        // The bound is inclusive: a frame of exactly the limit is decoded.
        let exact = encode(&sample(), Encoding::Binary);
        assert_eq!(decode(&exact, exact.len()), Ok(sample()));
        assert_eq!(decode(&Frame::Text("%%%".into()), 10), Err(CodecError::InvalidBase64));
        assert!(matches!(decode(&Frame::Binary(vec![0xff; 4]), 10), Err(CodecError::InvalidMessage(_))));
        let untyped = mq::Message { r#type: String::new(), ..sample() };
        assert_eq!(decode(&encode(&untyped, Encoding::Binary), 100), Err(CodecError::MissingType));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 100_000, ..ProptestConfig::default() })]

        #[test]
        fn decode_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&Frame::Binary(bytes), 128);
        }

        #[test]
        fn decode_never_panics_on_text(text in ".{0,256}") {
            let _ = decode(&Frame::Text(text), 192);
        }

        #[test]
        fn decode_never_panics_on_base64_of_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..192)) {
            // Valid base64 of arbitrary bytes reaches the protobuf decoder, not just the base64 one.
            let _ = decode(&Frame::Text(BASE64.encode(&bytes)), 1 << 10);
        }
    }
}
