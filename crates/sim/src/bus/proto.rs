//! The wire form of the simulated bus: length-prefixed frames (see the module doc of
//! [`crate::bus`] for the table). Decoding is pure and never panics on any byte string.

use clientmq_bus::BusMessage;

/// Largest payload plus encoded headers of one message, as NATS's default `max_payload`.
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// Largest frame body a peer accepts; a longer length prefix ends the connection.
pub const MAX_FRAME: usize = 2 * MAX_PAYLOAD;

const CONNECT: u8 = 1;
const SUB: u8 = 2;
const UNSUB: u8 = 3;
const PUB: u8 = 4;
const MSG: u8 = 5;
const PING: u8 = 6;
const PONG: u8 = 7;

/// One frame, either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Client to broker, first: who is connecting (for the broker's logs only).
    Connect {
        name: String,
    },
    /// Client to broker: deliver messages matching `subject` as `sid` (replaces an earlier
    /// subscription of the same `sid`).
    Sub {
        sid: u64,
        subject: String,
        queue: Option<String>,
    },
    /// Client to broker: stop delivering `sid`.
    Unsub {
        sid: u64,
    },
    /// Client to broker: a message (its `status` is not sent).
    Pub(BusMessage),
    /// Broker to client: a message for subscription `sid`.
    Msg {
        sid: u64,
        msg: BusMessage,
    },
    /// Either way: answer with [`Frame::Pong`].
    Ping,
    Pong,
}

/// Why bytes are not a frame, or a frame cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("field of {0} bytes is over its 65535-byte limit")]
    FieldTooLong(usize),
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

impl Frame {
    /// The frame with its length prefix, ready to write.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = vec![0; 4];
        match self {
            Frame::Connect { name } => {
                out.push(CONNECT);
                put_str(&mut out, name)?;
            }
            Frame::Sub { sid, subject, queue } => {
                out.push(SUB);
                out.extend_from_slice(&sid.to_be_bytes());
                put_str(&mut out, subject)?;
                put_str(&mut out, queue.as_deref().unwrap_or(""))?;
            }
            Frame::Unsub { sid } => {
                out.push(UNSUB);
                out.extend_from_slice(&sid.to_be_bytes());
            }
            Frame::Pub(msg) => {
                out.push(PUB);
                put_message(&mut out, msg)?;
            }
            Frame::Msg { sid, msg } => {
                out.push(MSG);
                out.extend_from_slice(&sid.to_be_bytes());
                out.extend_from_slice(&msg.status.unwrap_or(0).to_be_bytes());
                put_message(&mut out, msg)?;
            }
            Frame::Ping => out.push(PING),
            Frame::Pong => out.push(PONG),
        }
        let len = out.len() - 4;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        out[..4].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(out)
    }

    /// Parses one frame body (the bytes after the length prefix).
    pub fn decode(body: &[u8]) -> Result<Frame, FrameError> {
        let mut r = Reader(body);
        let frame = match r.u8()? {
            CONNECT => Frame::Connect { name: r.str()? },
            SUB => {
                let sid = r.u64()?;
                let subject = r.str()?;
                let queue = Some(r.str()?).filter(|q| !q.is_empty());
                Frame::Sub { sid, subject, queue }
            }
            UNSUB => Frame::Unsub { sid: r.u64()? },
            PUB => Frame::Pub(r.message(None)?),
            MSG => {
                let sid = r.u64()?;
                let status = Some(r.u16()?).filter(|s| *s != 0);
                Frame::Msg { sid, msg: r.message(status)? }
            }
            PING => Frame::Ping,
            PONG => Frame::Pong,
            _ => return Err(FrameError::Malformed("unknown operation")),
        };
        if !r.0.is_empty() {
            return Err(FrameError::Malformed("trailing bytes"));
        }
        Ok(frame)
    }
}

/// Payload plus headers as NATS counts them against `max_payload` (`name: value\r\n` each).
pub fn message_size(msg: &BusMessage) -> usize {
    msg.payload.len() + msg.headers.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>()
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Result<(), FrameError> {
    let len = u16::try_from(s.len()).map_err(|_| FrameError::FieldTooLong(s.len()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_message(out: &mut Vec<u8>, msg: &BusMessage) -> Result<(), FrameError> {
    if message_size(msg) > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(message_size(msg)));
    }
    put_str(out, &msg.subject)?;
    put_str(out, msg.reply.as_deref().unwrap_or(""))?;
    let count = u16::try_from(msg.headers.len()).map_err(|_| FrameError::FieldTooLong(msg.headers.len()))?;
    out.extend_from_slice(&count.to_be_bytes());
    for (name, value) in &msg.headers {
        put_str(out, name)?;
        put_str(out, value)?;
    }
    out.extend_from_slice(&(msg.payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg.payload);
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.0.len() < n {
            return Err(FrameError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        let mut b = [0; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        let mut b = [0; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }

    fn str(&mut self) -> Result<String, FrameError> {
        let len = self.u16()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| FrameError::Malformed("not UTF-8"))
    }

    fn message(&mut self, status: Option<u16>) -> Result<BusMessage, FrameError> {
        let subject = self.str()?;
        let reply = Some(self.str()?).filter(|r| !r.is_empty());
        let count = self.u16()?;
        let mut headers = Vec::new();
        for _ in 0..count {
            headers.push((self.str()?, self.str()?));
        }
        let len = self.u32()? as usize;
        let payload = self.take(len)?.to_vec();
        Ok(BusMessage { subject, reply, headers, payload, status })
    }
}

/// Reassembles frames from a byte stream. [`FrameReader::next`] is cancel-safe: bytes read
/// before a cancellation stay in the buffer.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Where the next frame starts in `buf`.
    at: usize,
}

impl FrameReader {
    /// The next whole frame already buffered, if any.
    pub fn buffered(&mut self) -> Result<Option<Frame>, FrameError> {
        let rest = &self.buf[self.at..];
        if rest.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if rest.len() < 4 + len {
            return Ok(None);
        }
        let frame = Frame::decode(&rest[4..4 + len]);
        self.at += 4 + len;
        if self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        }
        frame.map(Some)
    }

    /// Adds bytes read from elsewhere (a test, a fuzzer).
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next frame from `stream`: `Ok(None)` at a clean end of stream (no partial frame).
    pub async fn next<R: tokio::io::AsyncRead + Unpin>(
        &mut self,
        stream: &mut R,
    ) -> std::io::Result<Option<Frame>> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(frame) = self.buffered().map_err(std::io::Error::other)? {
                return Ok(Some(frame));
            }
            if self.at > 0 {
                self.buf.drain(..self.at);
                self.at = 0;
            }
            self.buf.reserve(8 * 1024);
            // Cancel-safe: bytes are appended to `buf` only when the read completes.
            if stream.read_buf(&mut self.buf).await? == 0 {
                return match self.buf.len() {
                    0 => Ok(None),
                    _ => Err(std::io::ErrorKind::UnexpectedEof.into()),
                };
            }
        }
    }
}
