//! clientmq-baseline: a plain tokio-tungstenite echo server, the floor clientmq is compared with.
//! No protocol work: every text or binary message comes back as it came; tungstenite answers
//! pings and closes itself. Same runtime shape as clientmq-server (tokio multi-thread, one worker
//! per core, TCP_NODELAY) and the same WebSocket settings (4 KiB reads, unbuffered writes), so
//! that the difference is clientmq's own work; `--tungstenite-defaults` keeps tungstenite's
//! defaults instead (a 128 KiB read buffer per connection, zeroed on every read).

use std::net::SocketAddr;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
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
}

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
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(echo(stream, config));
                }
                Err(e) => {
                    eprintln!("clientmq-baseline: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    })
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
