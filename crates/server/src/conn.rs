//! One connection task: reads frames into the shard, writes what the shard queues. Whatever way
//! the task ends (close, error, abort, even a panic), the shard hears about it exactly once.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use clientmq_core::{ConnectionId, Frame, Input, LostReason, close};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, error::CapacityError};

use crate::shard::{Command, ToConn};

/// How long a released connection may take to flush its last frames.
const RELEASE_FLUSH: Duration = Duration::from_secs(1);

pub(crate) async fn run<S>(
    mut ws: WebSocketStream<S>,
    id: ConnectionId,
    shard: mpsc::Sender<Command>,
    mut rx: mpsc::Receiver<ToConn>,
    abort: Arc<Notify>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ended = AssertUnwindSafe(drive(&mut ws, id, &shard, &mut rx, &abort)).catch_unwind().await;
    let report = match ended {
        Ok(report) => report,
        Err(_) => {
            tracing::error!(conn = %id, "connection task panicked");
            Some(Input::TransportLost { conn: id, reason: LostReason::Error })
        }
    };
    if let Some(input) = report {
        let _ = shard.send(Command::Input(input)).await;
    }
}

/// Runs until the connection is over. Returns the input that tells the shard how it ended, or
/// `None` when the shard already knows (it released or aborted us, or the peer's close was sent).
async fn drive<S>(
    ws: &mut WebSocketStream<S>,
    id: ConnectionId,
    shard: &mpsc::Sender<Command>,
    rx: &mut mpsc::Receiver<ToConn>,
    abort: &Notify,
) -> Option<Input>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut peer_closed = false;
    let mut outbound_first = false;
    // One waiter for the connection's life: `notify_one` stores a permit for it if it fires
    // between polls.
    let aborted = abort.notified();
    tokio::pin!(aborted);
    loop {
        // Alternate which side is served first, so a busy direction cannot starve the other.
        // `biased` keeps the order fixed (and simulations replayable); both futures are
        // cancel-safe, so the loser of a round loses nothing.
        outbound_first = !outbound_first;
        let step = if outbound_first {
            tokio::select! {
                biased;
                () = &mut aborted => return None,
                out = rx.recv() => Step::Out(out),
                incoming = ws.next() => Step::In(incoming),
            }
        } else {
            tokio::select! {
                biased;
                () = &mut aborted => return None,
                incoming = ws.next() => Step::In(incoming),
                out = rx.recv() => Step::Out(out),
            }
        };
        match step {
            Step::Out(out) => {
                let msg = match out {
                    None => return None,
                    Some(ToConn::Release) => {
                        let _ = tokio::time::timeout(RELEASE_FLUSH, ws.flush()).await;
                        return None;
                    }
                    Some(ToConn::Frame(Frame::Text(t))) => Message::Text(t.into()),
                    Some(ToConn::Frame(Frame::Binary(b))) => Message::Binary(b.into()),
                    Some(ToConn::Ping(p)) => Message::Ping(p.into()),
                    Some(ToConn::Close(c)) => Message::Close(Some(close_frame(c.code, c.reason))),
                };
                // A blocked write must still yield to an abort.
                let sent = tokio::select! {
                    biased;
                    () = &mut aborted => return None,
                    sent = ws.send(msg) => sent,
                };
                if let Err(e) = sent {
                    return lost(id, &e, peer_closed);
                }
            }
            Step::In(incoming) => {
                let input = match incoming {
                    None => {
                        return (!peer_closed)
                            .then_some(Input::TransportLost { conn: id, reason: LostReason::Eof });
                    }
                    Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                        let too_big = close_frame(close::TOO_BIG.code, close::TOO_BIG.reason);
                        let _ = tokio::time::timeout(RELEASE_FLUSH, ws.close(Some(too_big))).await;
                        return Some(Input::TransportLost { conn: id, reason: LostReason::TooBig });
                    }
                    Some(Err(e)) => return lost(id, &e, peer_closed),
                    Some(Ok(Message::Text(t))) => {
                        Input::Frame { conn: id, frame: Frame::Text(t.as_str().to_owned()) }
                    }
                    Some(Ok(Message::Binary(b))) => {
                        Input::Frame { conn: id, frame: Frame::Binary(b.to_vec()) }
                    }
                    Some(Ok(Message::Pong(p))) => Input::Pong { conn: id, payload: p.to_vec() },
                    Some(Ok(Message::Close(frame))) => {
                        peer_closed = true;
                        Input::PeerClosed { conn: id, code: frame.map(|f| u16::from(f.code)) }
                    }
                    // tungstenite answers pings itself; raw frames are not surfaced when reading.
                    Some(Ok(Message::Ping(_) | Message::Frame(_))) => continue,
                };
                if shard.send(Command::Input(input)).await.is_err() {
                    return None;
                }
            }
        }
    }
}

/// What woke a connection task.
enum Step {
    Out(Option<ToConn>),
    In(Option<Result<Message, WsError>>),
}

fn lost(id: ConnectionId, error: &WsError, peer_closed: bool) -> Option<Input> {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    let reason = match error {
        WsError::ConnectionClosed | WsError::AlreadyClosed if peer_closed => return None,
        // tungstenite's name for a stream that ended without a close frame.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => LostReason::Eof,
        WsError::Protocol(_) | WsError::Utf8(_) => LostReason::Protocol,
        _ => LostReason::Error,
    };
    tracing::debug!(conn = %id, %error, "transport lost");
    Some(Input::TransportLost { conn: id, reason })
}

fn close_frame(code: u16, reason: &'static str) -> CloseFrame {
    CloseFrame { code: CloseCode::from(code), reason: reason.into() }
}
