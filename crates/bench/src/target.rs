//! Where the load goes (a loopback WebSocket URL) and how client sockets reach it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A client WebSocket, as every mode holds it.
pub type Ws = WebSocketStream<TcpStream>;

/// Read buffer of the load generator's own sockets. tungstenite's default (128 KiB) would be
/// touched in full by every read; clients of both servers use this same value.
const CLIENT_READ_BUFFER: usize = 4096;

/// How long one connection attempt (TCP and upgrade) may take before it counts as an error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A WebSocket endpoint on a loopback address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    addr: SocketAddr,
    url: String,
}

impl Target {
    /// Parses `ws://IP:PORT/path`. Only loopback addresses are accepted: this tool never
    /// sends load anywhere else.
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url.strip_prefix("ws://").ok_or_else(|| format!("{url}: not a ws:// url"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        let authority = authority.replace("localhost", "127.0.0.1");
        let addr: SocketAddr =
            authority.parse().map_err(|_| format!("{url}: expected ws://IP:PORT/path with a literal IP"))?;
        if !addr.ip().is_loopback() {
            return Err(format!("{url}: only loopback addresses may be benchmarked"));
        }
        Ok(Target { addr, url: format!("ws://{addr}{path}") })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Plain HTTP GET of `path` on the same host and port; the body, whatever the status.
    pub async fn http_get(&self, path: &str) -> io::Result<String> {
        let fetch = async {
            let mut stream = TcpStream::connect(self.addr).await?;
            let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.addr);
            stream.write_all(req.as_bytes()).await?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await?;
            let text = String::from_utf8_lossy(&raw).into_owned();
            Ok(text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default())
        };
        tokio::time::timeout(Duration::from_secs(5), fetch)
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    }
}

/// The source address of client socket `index` when spreading over `sources` loopback
/// addresses from 127.0.0.`first` on, so that many connections do not run out of ephemeral
/// ports (and a run can avoid the ports a previous run left in TIME_WAIT). `None` (the kernel
/// chooses) for a single source starting at 127.0.0.1.
pub fn source_addr(index: usize, sources: usize, first: u8) -> Option<IpAddr> {
    let first = first.max(1);
    if sources <= 1 && first == 1 {
        return None;
    }
    let span = sources.clamp(1, usize::from(255 - first));
    let n = (index % span) as u8;
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, first + n)))
}

/// Opens one WebSocket to `target` from `source` (TCP, then the HTTP upgrade).
pub async fn connect(target: &Target, source: Option<IpAddr>) -> Result<Ws, String> {
    connect_with(target, source, None).await
}

/// [`connect`], with the socket's kernel receive buffer set to `receive_buffer` bytes (a client
/// on a slow link, whose buffers fill early).
pub async fn connect_with(
    target: &Target,
    source: Option<IpAddr>,
    receive_buffer: Option<u32>,
) -> Result<Ws, String> {
    let attempt = async {
        let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        if let Some(bytes) = receive_buffer {
            socket.set_recv_buffer_size(bytes).map_err(|e| format!("receive buffer: {e}"))?;
        }
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0)).map_err(|e| format!("bind {ip}: {e}"))?;
        }
        let stream = socket.connect(target.addr).await.map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        let config = WebSocketConfig::default().read_buffer_size(CLIENT_READ_BUFFER);
        let (ws, _) = tokio_tungstenite::client_async_with_config(target.url(), stream, Some(config))
            .await
            .map_err(|e| format!("upgrade: {e}"))?;
        Ok(ws)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt).await.unwrap_or_else(|_| Err("connect: timed out".into()))
}

/// Opens `n` connections, `concurrency` at a time; socket `i` uses source `offset + i`.
/// Returns the ones that opened and the first error of those that did not, with their count.
pub async fn open_many(
    target: &Target,
    n: usize,
    sources: usize,
    offset: usize,
    concurrency: usize,
) -> (Vec<Ws>, u64, Option<String>) {
    use futures_util::StreamExt;
    let results: Vec<Result<Ws, String>> = futures_util::stream::iter(0..n)
        .map(|i| connect(target, source_addr(offset + i, sources, 1)))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut open = Vec::with_capacity(n);
    let mut errors = 0;
    let mut first = None;
    for r in results {
        match r {
            Ok(ws) => open.push(ws),
            Err(e) => {
                errors += 1;
                first.get_or_insert(e);
            }
        }
    }
    (open, errors, first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_loopback() {
        let t = Target::parse("ws://127.0.0.1:8080/ws").unwrap();
        assert_eq!(t.addr(), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.url(), "ws://127.0.0.1:8080/ws");
        assert_eq!(Target::parse("ws://localhost:9/").unwrap().url(), "ws://127.0.0.1:9/");
        assert_eq!(Target::parse("ws://127.0.0.1:9").unwrap().url(), "ws://127.0.0.1:9/");
        assert!(Target::parse("ws://10.0.0.1:8080/ws").is_err());
        assert!(Target::parse("ws://example.com:80/ws").is_err());
        assert!(Target::parse("http://127.0.0.1:8080/ws").is_err());
    }

    #[test]
    fn sources_rotate_over_loopback_addresses() {
        assert_eq!(source_addr(5, 1, 1), None);
        assert_eq!(source_addr(5, 1, 9), Some("127.0.0.9".parse().unwrap()));
        assert_eq!(source_addr(0, 4, 1), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(source_addr(3, 4, 1), Some("127.0.0.4".parse().unwrap()));
        assert_eq!(source_addr(4, 4, 1), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(source_addr(9, 8, 20), Some("127.0.0.21".parse().unwrap()));
        assert!(source_addr(10_000, 1000, 200).unwrap().is_loopback());
    }
}
