//! Slow members: set up like the others, then never read until the run is over (a client on a
//! stalled link, with a small kernel receive buffer so that it stalls early). A gateway should
//! close them when their queue fills (clientmq: 3335) without the others noticing, and hold a
//! bounded amount for them meanwhile.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::target::Ws;

/// A slow member's kernel receive buffer, in bytes.
pub const RECEIVE_BUFFER: u32 = 4096;
/// How long a slow member reads, once the run is over, to find how it was ended.
const READ_AFTER: Duration = Duration::from_secs(2);

/// What one slow member found when it read again.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stalled {
    /// Data frames it read then (what had been queued and sent for it).
    pub frames: u64,
    /// The close code it found after them, if the gateway's close frame reached it.
    pub close: Option<u16>,
}

/// Holds `ws` unread until `until`, then reads what is there.
pub async fn hold(mut ws: Ws, until: Instant) -> Stalled {
    tokio::time::sleep_until(until).await;
    let mut stalled = Stalled::default();
    let _ = tokio::time::timeout(READ_AFTER, async {
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Text(_) | Message::Binary(_) => stalled.frames += 1,
                Message::Close(frame) => {
                    stalled.close = frame.map(|f| u16::from(f.code)).or(Some(u16::from(CloseCode::Status)));
                    return;
                }
                _ => {}
            }
        }
    })
    .await;
    stalled
}
