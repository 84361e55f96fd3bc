//! One event for a room's subscribers: encoded once, framed per connection without copying or
//! allocating what the connections share.

use std::cell::OnceCell;
use std::sync::Arc;

use base64::Engine as _;
use prost::Message as _;
use prost::bytes::BufMut as _;

use super::{BASE64, Encoding, Frame};
use crate::proto::mq;

/// A connection's own bytes of a frame up to this long are held inline: a session id of up to
/// 60 bytes in a text frame, so a delivery allocates nothing.
const HEAD_INLINE: usize = 88;

/// One message for many connections that differ only in `session_id` (an event for a room's
/// subscribers): encoded once, then framed per connection with its session, byte for byte what
/// [`super::encode`] gives for the message with that session.
///
/// `session_id` is field 1, so prost writes it first: a connection's bytes are its session field
/// `S` followed by the shared rest `B`. In base64, `S` and the first bytes of `B` that complete
/// its last group of three are encoded per connection; the rest of `B` starts on a group boundary
/// and its base64 is computed once per alignment (the session field's length mod 3).
#[derive(Debug)]
pub struct Broadcast {
    body: Arc<[u8]>,
    tails: [OnceCell<Arc<[u8]>>; 3],
}

/// One connection's frame of a [`Broadcast`]: its own head, then the tail every connection
/// with the same alignment shares. A driver writes the two parts one after the other.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedFrame {
    encoding: Encoding,
    head: Head,
    tail: Arc<[u8]>,
}

#[derive(Clone, PartialEq, Eq)]
enum Head {
    Inline { len: u8, buf: [u8; HEAD_INLINE] },
    Heap(Box<[u8]>),
}

impl Head {
    /// A head of `len` bytes written by `fill`.
    fn new(len: usize, fill: impl FnOnce(&mut [u8])) -> Head {
        if len <= HEAD_INLINE {
            let mut buf = [0; HEAD_INLINE];
            fill(&mut buf[..len]);
            Head::Inline { len: len as u8, buf }
        } else {
            let mut heap = vec![0; len].into_boxed_slice();
            fill(&mut heap);
            Head::Heap(heap)
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Head::Inline { len, buf } => &buf[..usize::from(*len)],
            Head::Heap(b) => b,
        }
    }
}

impl Broadcast {
    /// `msg`'s `session_id` is ignored: each frame gets its own.
    pub fn new(msg: mq::Message) -> Broadcast {
        let body = mq::Message { session_id: None, ..msg }.encode_to_vec().into();
        Broadcast { body, tails: Default::default() }
    }

    /// The frame of the message with `session_id` set to `session`.
    pub fn frame(&self, session: Option<&str>, encoding: Encoding) -> SharedFrame {
        let field = session.map_or(0, |s| 1 + prost::encoding::encoded_len_varint(s.len() as u64) + s.len());
        // Text: the bytes of B that complete S's last group of three go in the head (all of B
        // when it is shorter), so that the tail starts on a group boundary.
        let (borrow, align) = match encoding {
            Encoding::Binary => (0, 0),
            Encoding::Base64Text => ((3 - field % 3) % 3, field % 3),
        };
        let borrow = borrow.min(self.body.len());
        let mut stack = [0u8; HEAD_INLINE];
        let mut heap = Vec::new();
        let raw: &mut [u8] = if field + borrow <= HEAD_INLINE {
            &mut stack[..field + borrow]
        } else {
            heap.resize(field + borrow, 0);
            &mut heap
        };
        {
            let mut w: &mut [u8] = &mut raw[..];
            if let Some(session) = session {
                prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut w);
                prost::encoding::encode_varint(session.len() as u64, &mut w);
                w.put_slice(session.as_bytes());
            }
            w.put_slice(&self.body[..borrow]);
        }
        let (head, tail) = match encoding {
            Encoding::Binary => (Head::new(raw.len(), |h| h.copy_from_slice(raw)), self.body.clone()),
            Encoding::Base64Text => {
                let head_len = base64::encoded_len(raw.len(), true).unwrap_or(usize::MAX);
                let head = Head::new(head_len, |h| {
                    let written = BASE64.encode_slice(&*raw, h);
                    debug_assert_eq!(written, Ok(h.len()));
                });
                let tail = self.tails[align]
                    .get_or_init(|| BASE64.encode(&self.body[borrow..]).into_bytes().into())
                    .clone();
                (head, tail)
            }
        };
        SharedFrame { encoding, head, tail }
    }
}

impl SharedFrame {
    /// Length of the frame's payload in bytes.
    pub fn len(&self) -> usize {
        self.head.bytes().len() + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The payload in two parts: this connection's own, then the shared rest.
    pub fn parts(&self) -> (&[u8], &[u8]) {
        (self.head.bytes(), &self.tail)
    }

    /// The same frame in one piece.
    pub fn to_frame(&self) -> Frame {
        let (head, tail) = self.parts();
        let bytes = [head, tail].concat();
        match self.encoding {
            Encoding::Binary => Frame::Binary(bytes),
            // Base64 text, written by this module: ASCII throughout.
            Encoding::Base64Text => Frame::Text(String::from_utf8_lossy(&bytes).into_owned()),
        }
    }
}

impl std::fmt::Debug for SharedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_frame().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 100_000, ..ProptestConfig::default() })]

        #[test]
        fn a_broadcast_frames_each_session_as_encode_does(
            session in proptest::option::of("[a-zA-Z0-9]{0,200}"),
            ty in "[a-z.A-Z]{1,40}",
            payload in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let msg = mq::Message {
                r#type: ty,
                payload,
                message_type: Some(mq::message::MessageType::Event as i32),
                ..Default::default()
            };
            let broadcast = Broadcast::new(mq::Message { session_id: Some("ignored".into()), ..msg.clone() });
            let with = mq::Message { session_id: session.clone(), ..msg };
            for enc in [Encoding::Base64Text, Encoding::Binary] {
                // Twice: the second text frame comes from the cached tail.
                for _ in 0..2 {
                    let shared = broadcast.frame(session.as_deref(), enc);
                    let whole = super::super::encode(&with, enc);
                    prop_assert_eq!(shared.len(), whole.len());
                    prop_assert_eq!(shared.encoding(), enc);
                    prop_assert_eq!(shared.to_frame(), whole);
                }
            }
        }
    }

    #[test]
    fn a_short_session_frames_without_a_heap_head_and_a_long_one_with() {
        let b = Broadcast::new(mq::Message { r#type: "x.Event".into(), ..Default::default() });
        let short = b.frame(Some(&"s".repeat(60)), Encoding::Base64Text);
        assert!(matches!(short.head, Head::Inline { .. }));
        let long = b.frame(Some(&"s".repeat(200)), Encoding::Base64Text);
        assert!(matches!(long.head, Head::Heap(_)));
    }
}
