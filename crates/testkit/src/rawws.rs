//! Client-side WebSocket framing by hand, below any WebSocket library, for tests and simulated
//! clients that must misbehave: skip a close reply, ignore pings, send broken frames.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// One frame as read off the wire (server frames are unmasked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The code of a close frame, if it carries one.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Sends an upgrade request for `path` and reads the response head. Returns the HTTP status.
pub async fn upgrade<S>(stream: &mut S, path: &str, headers: &[(&str, &str)]) -> io::Result<u16>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: clientmq\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await?;
    // Read byte by byte so no frame bytes after the head are swallowed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if stream.read(&mut b).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.push(b[0]);
        if head.len() > 8192 {
            return Err(io::ErrorKind::InvalidData.into());
        }
    }
    let status = std::str::from_utf8(&head)
        .ok()
        .and_then(|h| h.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or(io::ErrorKind::InvalidData)?;
    Ok(status)
}

/// Reads one frame; `None` at a clean EOF between frames.
pub async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Option<RawFrame>> {
    let mut h = [0u8; 2];
    match stream.read_exact(&mut h).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = match h[1] & 0x7f {
        126 => u64::from(stream.read_u16().await?),
        127 => stream.read_u64().await?,
        n => u64::from(n),
    };
    if len > 64 << 20 {
        return Err(io::ErrorKind::InvalidData.into());
    }
    let mut mask = [0u8; 4];
    if h[1] & 0x80 != 0 {
        stream.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload).await?;
    if h[1] & 0x80 != 0 {
        payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= mask[i % 4]);
    }
    Ok(Some(RawFrame { fin: h[0] & 0x80 != 0, opcode: h[0] & 0x0f, payload }))
}

/// Encodes a masked client frame (the length may be declared longer than `payload`, to truncate).
pub fn encode_frame(opcode: u8, payload: &[u8], declared_len: Option<u64>) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let len = declared_len.unwrap_or(payload.len() as u64);
    let mut out = vec![0x80 | opcode];
    match len {
        0..=125 => out.push(0x80 | len as u8),
        126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

pub async fn write_frame<S: AsyncWrite + Unpin>(
    stream: &mut S,
    opcode: u8,
    payload: &[u8],
) -> io::Result<()> {
    stream.write_all(&encode_frame(opcode, payload, None)).await?;
    stream.flush().await
}

/// A close frame payload: code then reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}
