//! One WebSocket's I/O, owned by its shard (no task of its own): bytes read are parsed into the
//! core's inputs, frames the core sends are written as the socket takes them.
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

use crate::admission::AddressSlot;
use crate::ready::ConnWake;
use crate::ws::{self, Assembly, Message, ProtocolError};

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
    /// A queue that overflowed: the core is closing the connection; later frames go unsent.
    pub overflowed: bool,
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
                        self.queue(ws::CLOSE, &frame.payload[..frame.payload.len().min(2)]);
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
            self.queue(ws::CLOSE, &payload);
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

    /// Queues a frame; `false` when the queue is over `limit` frames (a slow consumer).
    pub fn send(&mut self, opcode: u8, payload: &[u8], limit: usize) -> bool {
        if self.overflowed || self.close_sent {
            return true;
        }
        if self.queued >= limit {
            self.overflowed = true;
            return false;
        }
        if opcode == ws::CLOSE {
            self.close_sent = true;
        }
        self.queue(opcode, payload);
        true
    }

    fn queue(&mut self, opcode: u8, payload: &[u8]) {
        ws::encode(opcode, payload, &mut self.out);
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
