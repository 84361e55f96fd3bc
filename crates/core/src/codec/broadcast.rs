//! One event for a room's subscribers: encoded once, framed per connection without copying or
//! allocating what the connections share.

use std::cell::OnceCell;
use std::sync::Arc;

use base64::Engine as _;
use prost::Message as _;
use prost::bytes::BufMut as _;

use super::{BASE64, Encoding, Frame};
use crate::ConnectionId;
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

/// Where a frame's shared tail is in [`Delivery::tails`]: base64 by alignment, or the raw body.
const BINARY_TAIL: usize = 3;

/// A room's event for its subscribers (`Output::Deliver`): each connection's own head, and the
/// tails they share, held once for all of them. A driver writes, for each connection, its head
/// then its tail; a delivery neither allocates nor copies the event per connection, nor counts
/// references per connection.
#[derive(Clone, PartialEq, Eq)]
pub struct Delivery {
    tails: [Option<Arc<[u8]>>; 4],
    frames: Vec<(ConnectionId, FrameHead)>,
}

/// One connection's part of a [`Delivery`].
#[derive(Clone, PartialEq, Eq)]
pub struct FrameHead {
    encoding: Encoding,
    head: Head,
    tail: u8,
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

    /// A connection's part of the frame of the message with `session_id` set to `session`.
    pub fn head(&self, session: Option<&str>, encoding: Encoding) -> FrameHead {
        let field = session.map_or(0, |s| 1 + prost::encoding::encoded_len_varint(s.len() as u64) + s.len());
        // Text: the bytes of B that complete S's last group of three go in the head (all of B
        // when it is shorter), so that the tail starts on a group boundary.
        let (borrow, tail) = match encoding {
            Encoding::Binary => (0, BINARY_TAIL),
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
        let head = match encoding {
            Encoding::Binary => Head::new(raw.len(), |h| h.copy_from_slice(raw)),
            Encoding::Base64Text => {
                let len = base64::encoded_len(raw.len(), true).unwrap_or(usize::MAX);
                Head::new(len, |h| {
                    let written = BASE64.encode_slice(&*raw, h);
                    debug_assert_eq!(written, Ok(h.len()));
                })
            }
        };
        FrameHead { encoding, head, tail: tail as u8 }
    }

    /// The shared rest of a frame whose head is `head`.
    pub fn tail(&self, head: &FrameHead) -> &[u8] {
        match usize::from(head.tail) {
            BINARY_TAIL => &self.body,
            align => {
                let borrow = ((3 - align) % 3).min(self.body.len());
                self.tails[align].get_or_init(|| BASE64.encode(&self.body[borrow..]).into_bytes().into())
            }
        }
    }

    /// Length of the frame whose head is `head`.
    pub fn frame_len(&self, head: &FrameHead) -> usize {
        head.head.bytes().len() + self.tail(head).len()
    }

    /// The delivery of these frames (heads from [`Broadcast::head`]).
    pub fn deliver(self, frames: Vec<(ConnectionId, FrameHead)>) -> Delivery {
        let [a, b, c] = self.tails.map(OnceCell::into_inner);
        Delivery { tails: [a, b, c, Some(self.body)], frames }
    }
}

impl Delivery {
    /// Each connection's frame, in order: its encoding, its own head, then the shared tail.
    pub fn iter(&self) -> impl Iterator<Item = (ConnectionId, Encoding, &[u8], &[u8])> {
        self.frames.iter().map(|(conn, h)| {
            let tail = self.tails[usize::from(h.tail)].as_deref().unwrap_or_default();
            (*conn, h.encoding, h.head.bytes(), tail)
        })
    }

    /// Connections it goes to.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Each connection's frame in one piece.
    pub fn frames(&self) -> Vec<(ConnectionId, Frame)> {
        self.iter()
            .map(|(conn, encoding, head, tail)| {
                let bytes = [head, tail].concat();
                let frame = match encoding {
                    Encoding::Binary => Frame::Binary(bytes),
                    // Base64 text, written by this module: ASCII throughout.
                    Encoding::Base64Text => Frame::Text(String::from_utf8_lossy(&bytes).into_owned()),
                };
                (conn, frame)
            })
            .collect()
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.frames()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn conn(n: u8) -> ConnectionId {
        String::from(char::from(b'a' + n % 26)).repeat(crate::ids::ID_LEN).parse().expect("an id")
    }

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
            // Twice each: the second text frame comes from the cached tail.
            let mut heads = Vec::new();
            for (n, enc) in [Encoding::Base64Text, Encoding::Binary, Encoding::Base64Text, Encoding::Binary].into_iter().enumerate() {
                let head = broadcast.head(session.as_deref(), enc);
                prop_assert_eq!(broadcast.frame_len(&head), super::super::encode(&with, enc).len());
                heads.push((conn(n as u8), head));
            }
            let delivery = broadcast.deliver(heads);
            prop_assert_eq!(delivery.len(), 4);
            for (n, (to, frame)) in delivery.frames().into_iter().enumerate() {
                let enc = if n % 2 == 0 { Encoding::Base64Text } else { Encoding::Binary };
                prop_assert_eq!(to, conn(n as u8));
                prop_assert_eq!(frame, super::super::encode(&with, enc));
            }
        }
    }

    #[test]
    fn a_short_session_frames_without_a_heap_head_and_a_long_one_with() {
        let b = Broadcast::new(mq::Message { r#type: "x.Event".into(), ..Default::default() });
        let short = b.head(Some(&"s".repeat(60)), Encoding::Base64Text);
        assert!(matches!(short.head, Head::Inline { .. }));
        let long = b.head(Some(&"s".repeat(200)), Encoding::Base64Text);
        assert!(matches!(long.head, Head::Heap(_)));
    }
}
