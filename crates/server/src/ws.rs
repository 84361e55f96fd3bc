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
pub fn encode(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(payload.len() + 10);
    out.push(0x80 | opcode);
    match payload.len() {
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
    out.extend_from_slice(payload);
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
        assert_eq!(a.push(part(CONTINUATION, true, b"llo"), 100), Ok(Some(Message::Text("hello".into()))));
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
            let mut out = Vec::new();
            encode(TEXT, &vec![b'a'; len], &mut out);
            let mut reader = &out[..];
            let frame = futures_util::FutureExt::now_or_never(rawws::read_frame(&mut reader))
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!((frame.opcode, frame.fin, frame.payload.len()), (TEXT, true, len));
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
