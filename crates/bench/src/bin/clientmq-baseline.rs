//! clientmq-baseline: a plain tokio-tungstenite echo server, the floor clientmq is compared with.
//! No protocol work: every text or binary message comes back as it came; tungstenite answers
//! pings and closes itself. Same runtime shape as clientmq-server (tokio multi-thread, one worker
//! per core, TCP_NODELAY) and the same WebSocket settings (4 KiB reads, unbuffered writes), so
//! that the difference is clientmq's own work; `--tungstenite-defaults` keeps tungstenite's
//! defaults instead (a 128 KiB read buffer per connection, zeroed on every read).
//!
//! `--fanout` makes it the bare fan-out baseline instead of an echo: a text frame `sub:<room>`
//! puts the connection in a room (and is echoed once it is), `pub:<room>:<frame>` writes
//! `<frame>` to every connection in the room. Each connection has a writer task draining an
//! unbounded queue of shared frames, the idiomatic tokio broadcast; nothing else, no slow-member
//! bound: the machine's limit, for `clientmq-load fanout --plain`. Its writes are buffered: a
//! writer hands the socket every frame it drained in one write, as clientmq's shards do. Written
//! one frame per write instead, it is no limit: on one machine (AMD EPYC, 2 cores) it delivered
//! a third of what it does buffered, less than clientmq.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Parser)]
#[command(
    name = "clientmq-baseline",
    version,
    about = "Plain tokio-tungstenite echo server (benchmark baseline)"
)]
struct Args {
    /// Address to listen on (loopback).
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
    /// tungstenite read buffer per connection in bytes (clientmq-server's value by default).
    #[arg(long, default_value_t = 4096)]
    read_buffer: usize,
    /// Use tungstenite's default WebSocketConfig (ignores --read-buffer).
    #[arg(long)]
    tungstenite_defaults: bool,
    /// Broadcast `pub:` frames to `sub:` rooms instead of echoing (see the crate doc).
    #[arg(long)]
    fanout: bool,
}

/// Bytes of queued frames a fan-out writer gathers before it writes (then once per drained queue).
const COALESCE: usize = 64 * 1024;

/// Each room's connections: (connection number, its writer's queue).
type Rooms = Arc<Mutex<HashMap<String, Vec<(u64, mpsc::UnboundedSender<Message>)>>>>;

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(args.listen).await?;
        eprintln!("clientmq-baseline: echo on ws://{}/", listener.local_addr()?);
        let config = if args.tungstenite_defaults {
            WebSocketConfig::default()
        } else {
            WebSocketConfig::default().read_buffer_size(args.read_buffer).write_buffer_size(0)
        };
        let rooms = Rooms::default();
        for id in 0u64.. {
            match listener.accept().await {
                Ok((stream, _)) if args.fanout => {
                    // The writer feeds every queued frame, then flushes them in one write.
                    let config = config.write_buffer_size(COALESCE);
                    tokio::spawn(fanout(stream, config, rooms.clone(), id));
                }
                Ok((stream, _)) => {
                    tokio::spawn(echo(stream, config));
                }
                Err(e) => {
                    eprintln!("clientmq-baseline: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
        Ok(())
    })
}

async fn fanout(stream: TcpStream, config: WebSocketConfig, rooms: Rooms, id: u64) {
    let _ = stream.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else { return };
    let (mut sink, mut reader) = ws.split();
    let (queue, mut frames) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(frame) = frames.recv().await {
            let mut next = Some(frame);
            while let Some(frame) = next {
                if sink.feed(frame).await.is_err() {
                    return;
                }
                next = frames.try_recv().ok();
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let mut joined = Vec::new();
    while let Some(Ok(msg)) = reader.next().await {
        let Message::Text(text) = msg else { continue };
        if let Some(room) = text.strip_prefix("sub:") {
            let mut rooms = rooms.lock().expect("rooms");
            rooms.entry(room.to_owned()).or_default().push((id, queue.clone()));
            joined.push(room.to_owned());
            let _ = queue.send(Message::Text(text));
        } else if let Some((room, frame)) = text.strip_prefix("pub:").and_then(|r| r.split_once(':')) {
            // One copy of the frame, shared by every queue.
            let frame = Message::Text(frame.to_owned().into());
            if let Some(members) = rooms.lock().expect("rooms").get(room) {
                for (_, member) in members {
                    let _ = member.send(frame.clone());
                }
            }
        }
    }
    let mut rooms = rooms.lock().expect("rooms");
    for room in joined {
        if let Some(members) = rooms.get_mut(&room) {
            members.retain(|(member, _)| *member != id);
        }
    }
    drop(queue);
    writer.abort();
}

async fn echo(stream: TcpStream, config: WebSocketConfig) {
    let _ = stream.set_nodelay(true);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else { return };
    while let Some(Ok(msg)) = ws.next().await {
        let reply = match msg {
            Message::Text(_) | Message::Binary(_) => msg,
            _ => continue,
        };
        if ws.send(reply).await.is_err() {
            return;
        }
    }
}
