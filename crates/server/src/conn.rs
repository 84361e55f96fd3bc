//! One WebSocket connection, owned by its shard (no task of its own): its framing ([`ws`], the
//! pure RFC 6455 half) and its I/O. Bytes read are parsed into the core's inputs, frames the core
//! sends are written as the socket takes them.
//!
//! An idle connection holds its socket and a few words of state, nothing more: reads go into
//! the shard's scratch buffer, and only the bytes of a frame not yet complete (or of a message
//! not yet whole) are kept here; what could not be written yet is kept here until it is.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use clientmq_core::{ConnectionId, Frame, Input, LostReason};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use self::ws::{Assembly, Message, ProtocolError};
use crate::admission::AddressSlot;
use crate::ready::ConnWake;

/// What a connection's socket is: any stream (TCP, TLS, simulated).
pub(crate) trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Socket for T {}

/// Reads per wake-up before a busy connection lets the others go first.
const READS_PER_TURN: usize = 8;
/// A write buffer that drained is kept for the next answer up to this size, freed above it.
const KEEP_WRITE_BUFFER: usize = 4096;
/// Bytes handed to the socket in one write: large bursts go out in pieces the size of a socket
/// buffer, so the kernel (or the simulator's segments) push back on a reader that does not read.
const MAX_WRITE: usize = 64 * 1024;

pub(crate) struct Conn {
    pub id: ConnectionId,
    io: Box<dyn Socket>,
    /// Bytes read that do not make a whole frame yet (empty, unallocated, when idle).
    partial: Vec<u8>,
    assembly: Assembly,
    /// Bytes to write, from `written` on.
    out: Vec<u8>,
    written: usize,
    /// Frames queued since the socket last took everything.
    pub queued: usize,
    /// A queue that overflowed: the core is closing the connection; later frames but the close
    /// go unsent.
    pub overflowed: bool,
    /// In its shard's list of sockets to write.
    pub listed: bool,
    /// A close frame went out (ours, or the echo of the client's): nothing is sent after it.
    close_sent: bool,
    /// The client's close frame came in, or reading failed: nothing more is read.
    read_done: bool,
    pub wake: Arc<ConnWake>,
    waker: Waker,
    /// With several shards, the global admission permit, released when the shard drops this.
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Its place among its client address's connections, given back the same way.
    pub slot: Option<AddressSlot>,
}

/// What a poll of the socket found, besides inputs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Nothing more now.
    Idle,
    /// Read its share; poll it again after the others.
    Busy,
}

impl Conn {
    pub fn new(id: ConnectionId, io: Box<dyn Socket>, read_ahead: Vec<u8>, wake: Arc<ConnWake>) -> Conn {
        Conn {
            id,
            io,
            partial: read_ahead,
            assembly: Assembly::default(),
            out: Vec::new(),
            written: 0,
            queued: 0,
            overflowed: false,
            listed: false,
            close_sent: false,
            read_done: false,
            waker: Waker::from(wake.clone()),
            wake,
            permit: None,
            slot: None,
        }
    }

    /// Reads what the socket has (up to a share) and turns every whole frame into an input for
    /// the core (`inputs`); echoes a close frame itself. Pings are inputs too: the core answers
    /// them within the connection's frame rate.
    pub fn read(&mut self, scratch: &mut [u8], max_message: usize, inputs: &mut Vec<Input>) -> Flow {
        // Bytes that came with the upgrade request are parsed before anything is read.
        if !self.partial.is_empty() {
            let pending = std::mem::take(&mut self.partial);
            self.consume(&pending, max_message, inputs);
        }
        for _ in 0..READS_PER_TURN {
            if self.read_done {
                return Flow::Idle;
            }
            let mut cx = Context::from_waker(&self.waker);
            let mut buf = ReadBuf::new(scratch);
            match Pin::new(&mut self.io).poll_read(&mut cx, &mut buf) {
                Poll::Pending => return Flow::Idle,
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    self.read_done = true;
                    inputs.push(Input::TransportLost { conn: self.id, reason: LostReason::Eof });
                }
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len();
                    self.consume(&scratch[..n], max_message, inputs);
                }
                Poll::Ready(Err(e)) => {
                    self.read_done = true;
                    tracing::debug!(conn = %self.id, error = %e, "transport lost");
                    inputs.push(Input::TransportLost { conn: self.id, reason: LostReason::Error });
                }
            }
        }
        Flow::Busy
    }

    /// Parses `bytes` after what is kept from earlier reads.
    fn consume(&mut self, bytes: &[u8], max_message: usize, inputs: &mut Vec<Input>) {
        let mut joined;
        let mut rest = if self.partial.is_empty() {
            bytes
        } else {
            joined = std::mem::take(&mut self.partial);
            joined.extend_from_slice(bytes);
            &joined[..]
        };
        while !self.read_done {
            match ws::parse(rest, max_message) {
                Ok(Some((frame, used))) => {
                    rest = &rest[used..];
                    self.frame(frame, max_message, inputs);
                }
                Ok(None) => break,
                Err(e) => self.protocol_error(e, inputs),
            }
        }
        if !self.read_done && !rest.is_empty() {
            self.partial = rest.to_vec();
        }
    }

    fn frame(&mut self, frame: ws::Frame, max_message: usize, inputs: &mut Vec<Input>) {
        let conn = self.id;
        match frame.opcode {
            // The core answers, within the connection's frame rate.
            ws::PING => inputs.push(Input::Ping { conn, payload: frame.payload }),
            ws::PONG => inputs.push(Input::Pong { conn, payload: frame.payload }),
            ws::CLOSE => match ws::read_close(&frame.payload) {
                Ok(code) => {
                    // Our own close frame if we sent one, else the echo the protocol asks for.
                    if !self.close_sent {
                        self.queue(ws::CLOSE, &frame.payload[..frame.payload.len().min(2)], &[]);
                        self.close_sent = true;
                    }
                    self.read_done = true;
                    inputs.push(Input::PeerClosed { conn, code });
                }
                Err(e) => self.protocol_error(e, inputs),
            },
            _ => match self.assembly.push(frame, max_message) {
                Ok(None) => {}
                Ok(Some(Message::Text(text))) => inputs.push(Input::Frame { conn, frame: Frame::Text(text) }),
                Ok(Some(Message::Binary(bytes))) => {
                    inputs.push(Input::Frame { conn, frame: Frame::Binary(bytes) })
                }
                Err(e) => self.protocol_error(e, inputs),
            },
        }
    }

    /// Not WebSocket: a close with the error's code goes out, reading stops, and the core hears
    /// the transport is lost.
    fn protocol_error(&mut self, error: ProtocolError, inputs: &mut Vec<Input>) {
        tracing::debug!(conn = %self.id, %error, "protocol error");
        if !self.close_sent {
            let payload = ws::close_payload(error.close_code(), "");
            self.queue(ws::CLOSE, &payload, &[]);
            self.close_sent = true;
        }
        self.read_done = true;
        let reason = match error {
            ProtocolError::TooBig => LostReason::TooBig,
            ProtocolError::NotUtf8 => LostReason::NotUtf8,
            _ => LostReason::Protocol,
        };
        inputs.push(Input::TransportLost { conn: self.id, reason });
    }

    /// Queues a frame; `false` when the queue is at `limit` frames or `limit_bytes` bytes (a slow
    /// consumer). A close frame is queued whatever the queue holds: a slow consumer that reads
    /// again (within the close handshake and the linger) learns why it was closed (3335), and
    /// the queue stays bounded, at `limit` frames or `limit_bytes` plus one frame, and one close.
    pub fn send(&mut self, opcode: u8, payload: &[u8], limit: usize, limit_bytes: usize) -> bool {
        self.send_parts(opcode, payload, &[], limit, limit_bytes)
    }

    /// [`Conn::send`] of a frame whose payload is `head` then `tail`.
    pub fn send_parts(
        &mut self,
        opcode: u8,
        head: &[u8],
        tail: &[u8],
        limit: usize,
        limit_bytes: usize,
    ) -> bool {
        if self.close_sent {
            return true;
        }
        if opcode == ws::CLOSE {
            self.close_sent = true;
            self.queue(opcode, head, tail);
            return true;
        }
        if self.overflowed {
            return true;
        }
        if self.queued >= limit || self.out.len() - self.written >= limit_bytes {
            self.overflowed = true;
            return false;
        }
        self.queue(opcode, head, tail);
        true
    }

    fn queue(&mut self, opcode: u8, head: &[u8], tail: &[u8]) {
        ws::encode_parts(opcode, head, tail, &mut self.out);
        self.queued += 1;
    }

    pub fn data_frame(frame: &Frame) -> (u8, &[u8]) {
        match frame {
            Frame::Text(t) => (ws::TEXT, t.as_bytes()),
            Frame::Binary(b) => (ws::BINARY, b),
        }
    }

    /// The client's close frame came in, its stream ended, or it broke the protocol.
    pub fn read_finished(&self) -> bool {
        self.read_done
    }

    pub fn has_output(&self) -> bool {
        self.written < self.out.len()
    }

    /// Writes what is queued until the socket would block. `Err` when writing failed.
    pub fn write(&mut self) -> io::Result<()> {
        let mut cx = Context::from_waker(&self.waker);
        while self.written < self.out.len() {
            let end = self.out.len().min(self.written + MAX_WRITE);
            match Pin::new(&mut self.io).poll_write(&mut cx, &self.out[self.written..end]) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(e)) => return Err(e),
            }
        }
        // All out: the queue is empty again, and a large buffer is not kept for an idle socket.
        self.written = 0;
        self.queued = 0;
        self.out.clear();
        if self.out.capacity() > KEEP_WRITE_BUFFER {
            self.out = Vec::new();
        }
        match Pin::new(&mut self.io).poll_flush(&mut cx) {
            Poll::Ready(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }
}

pub(crate) mod ws {
    //! WebSocket framing, server side (RFC 6455): parse what clients send, encode what the gateway
    //! sends. Pure functions over byte slices, so a connection holds no buffer while it is idle and
    //! parsing never panics on any input.

    use std::fmt;

    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;

    /// Largest payload of a control frame (close, ping, pong).
    const MAX_CONTROL: usize = 125;

    /// A frame as the client sent it, payload unmasked.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Frame {
        pub fin: bool,
        pub opcode: u8,
        pub payload: Vec<u8>,
    }

    /// Why the bytes a client sent are not WebSocket; each closes the connection with its code.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum ProtocolError {
        /// A reserved bit set (no extension was negotiated).
        Reserved,
        /// An opcode RFC 6455 does not define.
        UnknownOpcode(u8),
        /// Client frames must be masked.
        Unmasked,
        /// A control frame that is fragmented or longer than 125 bytes.
        BadControl,
        /// A continuation frame with no message to continue, or a new message inside one.
        BadContinuation,
        /// A frame or message over the size limit (closed with 1009).
        TooBig,
        /// A text message that is not UTF-8 (closed with 1007).
        NotUtf8,
        /// A close frame whose payload is one byte, whose code may not be sent, or whose reason is
        /// not UTF-8.
        BadClose,
    }

    impl ProtocolError {
        /// The close code the gateway answers with.
        pub fn close_code(self) -> u16 {
            match self {
                ProtocolError::TooBig => 1009,
                ProtocolError::NotUtf8 => 1007,
                _ => 1002,
            }
        }
    }

    impl fmt::Display for ProtocolError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                ProtocolError::Reserved => f.write_str("reserved bit set"),
                ProtocolError::UnknownOpcode(op) => write!(f, "unknown opcode {op:#x}"),
                ProtocolError::Unmasked => f.write_str("unmasked client frame"),
                ProtocolError::BadControl => f.write_str("fragmented or oversize control frame"),
                ProtocolError::BadContinuation => f.write_str("continuation out of place"),
                ProtocolError::TooBig => f.write_str("frame or message too big"),
                ProtocolError::NotUtf8 => f.write_str("text that is not UTF-8"),
                ProtocolError::BadClose => f.write_str("malformed close frame"),
            }
        }
    }

    /// Parses one frame from the start of `buf` (masked, as clients send). `Ok(None)` while it is
    /// incomplete; `Ok(Some((frame, used)))` with the bytes it took. A frame whose payload is over
    /// `max_payload` is refused from its header alone, before its payload is waited for.
    pub fn parse(buf: &[u8], max_payload: usize) -> Result<Option<(Frame, usize)>, ProtocolError> {
        let [b0, b1, ..] = *buf else { return Ok(None) };
        let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
        if b0 & 0x70 != 0 {
            return Err(ProtocolError::Reserved);
        }
        let control = match opcode {
            CONTINUATION | TEXT | BINARY => false,
            CLOSE | PING | PONG => true,
            other => return Err(ProtocolError::UnknownOpcode(other)),
        };
        if b1 & 0x80 == 0 {
            return Err(ProtocolError::Unmasked);
        }
        let (len, mut at) = match b1 & 0x7f {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => (u64::from_be_bytes(b.try_into().expect("8 bytes")), 10),
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        if control && (!fin || len > MAX_CONTROL as u64) {
            return Err(ProtocolError::BadControl);
        }
        if len > max_payload as u64 {
            return Err(ProtocolError::TooBig);
        }
        let len = len as usize;
        let Some(mask) = buf.get(at..at + 4) else { return Ok(None) };
        let mask = [mask[0], mask[1], mask[2], mask[3]];
        at += 4;
        let Some(masked) = buf.get(at..at + len) else { return Ok(None) };
        let payload = masked.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
        Ok(Some((Frame { fin, opcode, payload }, at + len)))
    }

    /// Appends a server frame (unmasked, final) to `out`.
    /// One frame whose payload is `head` then `tail` (a room event: a connection's own bytes,
    /// then those it shares with the other subscribers), written without joining them first.
    pub fn encode_parts(opcode: u8, head: &[u8], tail: &[u8], out: &mut Vec<u8>) {
        let len = head.len() + tail.len();
        out.reserve(len + 10);
        out.push(0x80 | opcode);
        match len {
            n @ 0..=125 => out.push(n as u8),
            n @ 126..=0xffff => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(head);
        out.extend_from_slice(tail);
    }

    /// A close frame's payload: the code, then the reason.
    pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason.as_bytes());
        p
    }

    /// Reads a client's close frame: its code, if it carries one.
    pub fn read_close(payload: &[u8]) -> Result<Option<u16>, ProtocolError> {
        match payload {
            [] => Ok(None),
            [_] => Err(ProtocolError::BadClose),
            [a, b, reason @ ..] => {
                let code = u16::from_be_bytes([*a, *b]);
                // RFC 6455 7.4: codes a peer may put on the wire.
                let sendable = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
                if !sendable || std::str::from_utf8(reason).is_err() {
                    return Err(ProtocolError::BadClose);
                }
                Ok(Some(code))
            }
        }
    }

    /// A data message being put together from its frames.
    #[derive(Debug, Default)]
    pub struct Assembly {
        /// The first frame's opcode and the payload so far; `None` between messages.
        partial: Option<(u8, Vec<u8>)>,
    }

    /// A whole data message.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Message {
        Text(String),
        Binary(Vec<u8>),
    }

    impl Assembly {
        /// Takes a data frame; a whole message once its last frame is in. Messages over
        /// `max_message` bytes are refused.
        pub fn push(&mut self, frame: Frame, max_message: usize) -> Result<Option<Message>, ProtocolError> {
            let (opcode, payload) = match (frame.opcode, self.partial.take()) {
                (CONTINUATION, None) => return Err(ProtocolError::BadContinuation),
                (CONTINUATION, Some((opcode, mut so_far))) => {
                    if so_far.len() + frame.payload.len() > max_message {
                        return Err(ProtocolError::TooBig);
                    }
                    so_far.extend_from_slice(&frame.payload);
                    (opcode, so_far)
                }
                (_, Some(_)) => return Err(ProtocolError::BadContinuation),
                (opcode, None) => (opcode, frame.payload),
            };
            if !frame.fin {
                self.partial = Some((opcode, payload));
                return Ok(None);
            }
            Ok(Some(match opcode {
                TEXT => Message::Text(String::from_utf8(payload).map_err(|_| ProtocolError::NotUtf8)?),
                _ => Message::Binary(payload),
            }))
        }

        /// Whether a message is half received (memory held while a client is between frames).
        #[cfg(test)]
        pub fn is_partial(&self) -> bool {
            self.partial.is_some()
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use clientmq_testkit::rawws;
        use proptest::prelude::*;

        fn client(opcode: u8, payload: &[u8]) -> Vec<u8> {
            rawws::encode_frame(opcode, payload, None)
        }

        #[test]
        fn parses_masked_client_frames_of_every_length_form() {
            for len in [0, 1, 125, 126, 65535, 65536] {
                let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let bytes = client(BINARY, &payload);
                for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
                    assert_eq!(parse(&bytes[..cut], 1 << 20), Ok(None), "len {len} cut {cut}");
                }
                let (frame, used) = parse(&bytes, 1 << 20).unwrap().unwrap();
                assert_eq!((frame.opcode, frame.fin, used), (BINARY, true, bytes.len()));
                assert_eq!(frame.payload, payload);
            }
        }

        #[test]
        fn refuses_what_rfc_6455_forbids() {
            let unmasked = [0x81, 0x01, b'x'];
            assert_eq!(parse(&unmasked, 100), Err(ProtocolError::Unmasked));
            let mut reserved = client(TEXT, b"x");
            reserved[0] |= 0x40;
            assert_eq!(parse(&reserved, 100), Err(ProtocolError::Reserved));
            let mut opcode = client(TEXT, b"x");
            opcode[0] = 0x83;
            assert_eq!(parse(&opcode, 100), Err(ProtocolError::UnknownOpcode(3)));
            let mut fragmented_ping = client(PING, b"x");
            fragmented_ping[0] &= 0x7f;
            assert_eq!(parse(&fragmented_ping, 100), Err(ProtocolError::BadControl));
            assert_eq!(parse(&client(PING, &[0; 126]), 1000), Err(ProtocolError::BadControl));
            // Refused from the header: the payload is never waited for.
            let huge = rawws::encode_frame(BINARY, b"", Some(1 << 40));
            assert_eq!(parse(&huge, 1 << 20), Err(ProtocolError::TooBig));
        }

        #[test]
        fn assembles_fragments_and_checks_text() {
            let mut a = Assembly::default();
            let part = |opcode, fin, payload: &[u8]| Frame { fin, opcode, payload: payload.to_vec() };
            assert_eq!(a.push(part(TEXT, false, b"he"), 100), Ok(None));
            assert!(a.is_partial());
            assert_eq!(
                a.push(part(CONTINUATION, true, b"llo"), 100),
                Ok(Some(Message::Text("hello".into())))
            );
            assert_eq!(a.push(part(CONTINUATION, true, b"x"), 100), Err(ProtocolError::BadContinuation));
            assert_eq!(a.push(part(TEXT, true, &[0xff]), 100), Err(ProtocolError::NotUtf8));
            assert_eq!(a.push(part(BINARY, false, &[1; 60]), 100), Ok(None));
            assert_eq!(a.push(part(CONTINUATION, true, &[1; 60]), 100), Err(ProtocolError::TooBig));
            assert_eq!(a.push(part(BINARY, false, b"a"), 100), Ok(None));
            assert_eq!(a.push(part(TEXT, true, b"b"), 100), Err(ProtocolError::BadContinuation));
        }

        #[test]
        fn close_frames_carry_a_sendable_code_and_utf8() {
            assert_eq!(read_close(&[]), Ok(None));
            assert_eq!(read_close(&close_payload(1000, "bye")), Ok(Some(1000)));
            assert_eq!(read_close(&close_payload(4001, "")), Ok(Some(4001)));
            for bad in [close_payload(1005, ""), close_payload(999, ""), close_payload(2999, ""), vec![3]] {
                assert_eq!(read_close(&bad), Err(ProtocolError::BadClose), "{bad:?}");
            }
            let mut not_utf8 = close_payload(1000, "");
            not_utf8.push(0xff);
            assert_eq!(read_close(&not_utf8), Err(ProtocolError::BadClose));
        }

        #[test]
        fn encodes_unmasked_server_frames() {
            for len in [0, 125, 126, 65535, 65536] {
                // A payload in two parts is one frame of both, whatever the split.
                let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
                for split in [0, len / 3, len] {
                    let mut out = Vec::new();
                    encode_parts(TEXT, &payload[..split], &payload[split..], &mut out);
                    let mut reader = &out[..];
                    let frame = futures_util::FutureExt::now_or_never(rawws::read_frame(&mut reader))
                        .unwrap()
                        .unwrap()
                        .unwrap();
                    assert_eq!((frame.opcode, frame.fin), (TEXT, true));
                    assert_eq!(frame.payload, payload, "split at {split}");
                    assert!(reader.is_empty(), "nothing after the frame");
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

            #[test]
            fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
                let mut a = Assembly::default();
                let mut rest = &bytes[..];
                while let Ok(Some((frame, used))) = parse(rest, 128) {
                    prop_assert!(used > 0 && used <= rest.len());
                    rest = &rest[used..];
                    if frame.opcode == CLOSE {
                        let _ = read_close(&frame.payload);
                    } else if frame.opcode < CLOSE {
                        let _ = a.push(frame, 256);
                    }
                }
            }
        }
    }
}
