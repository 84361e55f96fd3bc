//! The HTTP side of the one port: read a request head (bounded), route it, answer plain
//! responses, and complete a WebSocket upgrade by hand so the stream type stays generic.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Largest request head accepted.
pub const MAX_HEAD: usize = 8 * 1024;

/// A parsed request head, plus any bytes that arrived after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub rest: Vec<u8>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The `Sec-WebSocket-Key` of a well-formed upgrade request, or why it is not one.
    pub fn upgrade(&self) -> Result<&str, UpgradeError> {
        let upgrade = self.method == "GET"
            && self.header_has_token("connection", "upgrade")
            && self.header_has_token("upgrade", "websocket");
        if !upgrade {
            return Err(UpgradeError::NotUpgrade);
        }
        if self.header("sec-websocket-version") != Some("13") {
            return Err(UpgradeError::Version);
        }
        self.header("sec-websocket-key").ok_or(UpgradeError::NoKey)
    }

    /// The `Sec-WebSocket-Key` of a well-formed upgrade request, if this is one.
    pub fn websocket_key(&self) -> Option<&str> {
        self.upgrade().ok()
    }
}

/// Why a request to the WebSocket path is not an upgrade we take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    #[error("not a WebSocket upgrade")]
    NotUpgrade,
    /// Answered 426 with `Sec-WebSocket-Version: 13` (RFC 6455 section 4.2.2), so the client can
    /// retry with the one version we speak.
    #[error("unsupported Sec-WebSocket-Version")]
    Version,
    #[error("no Sec-WebSocket-Key")]
    NoKey,
}

/// Why a request head could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("request head over {MAX_HEAD} bytes")]
    TooLarge,
    #[error("malformed request head")]
    Malformed,
    #[error("connection closed before the request head ended")]
    Eof,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads until the end of the request head, never more than [`MAX_HEAD`] bytes in all.
///
/// The head is parsed only when the new bytes end a line with a blank one, or the buffer has
/// doubled since the last parse (so garbage is refused early): a head trickled a byte at a time
/// costs linear time, not quadratic. Whatever the segmentation, a head of up to `MAX_HEAD` bytes
/// is read and a longer one refused.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Head, HeadError> {
    let mut buf = vec![0u8; 1024];
    let mut len = 0;
    let mut parse_at = 0;
    loop {
        if len == buf.len() {
            buf.resize((2 * len).min(MAX_HEAD), 0);
        }
        let n = stream.read(&mut buf[len..]).await?;
        let start = len;
        len += n;
        let full = len == MAX_HEAD;
        let blank_line = ends_head(&buf[start.saturating_sub(2)..len]);
        if n == 0 || full || blank_line || len >= parse_at {
            parse_at = 2 * len;
            match parse(&buf[..len])? {
                Some(head) => return Ok(head),
                None if n == 0 => return Err(HeadError::Eof),
                None if full => return Err(HeadError::TooLarge),
                None => {}
            }
        }
    }
}

/// Whether `bytes` hold a blank line, which ends a head (httparse takes `\n` for `\r\n`).
fn ends_head(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(3).any(|w| w == b"\n\r\n")
}

/// The head, if `buf` holds a complete one; `None` while it is incomplete.
fn parse(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => Ok(Some(Head {
            method: req.method.unwrap_or_default().to_owned(),
            path: req.path.unwrap_or_default().to_owned(),
            headers: req
                .headers
                .iter()
                .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned()))
                .collect(),
            rest: buf[len..].to_vec(),
        })),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(HeadError::Malformed),
    }
}

/// Writes a complete HTTP/1.1 response and closes the exchange.
///
/// `extra` holds whole header lines, each ending in CRLF (`""` for none).
pub async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    content_type: &str,
    extra: &str,
    body: &[u8],
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await
}

/// Accepts a WebSocket upgrade: 101 with the derived accept key.
pub async fn switch_protocols<S: AsyncWrite + Unpin>(stream: &mut S, key: &str) -> io::Result<()> {
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    stream.flush().await
}

/// A stream that first yields bytes already read past the request head.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed { prefix, pos: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_an_upgrade_head_and_keeps_the_bytes_after_it() {
        let raw = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nEXTRA";
        let head = read_head(&mut &raw[..]).await.unwrap();
        assert_eq!((head.method.as_str(), head.path.as_str()), ("GET", "/ws"));
        assert_eq!(head.websocket_key(), Some("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(head.rest, b"EXTRA");
        let mut prefixed = Prefixed::new(head.rest, &b"MORE"[..]);
        let mut all = Vec::new();
        prefixed.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"EXTRAMORE");
    }

    #[tokio::test]
    async fn rejects_garbage_and_oversized_heads() {
        assert!(matches!(read_head(&mut &b"\x00\x01\x02\r\n\r\n"[..]).await, Err(HeadError::Malformed)));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(read_head(&mut big.as_bytes()).await, Err(HeadError::TooLarge)));
        assert!(matches!(read_head(&mut &b"GET / HTTP/1.1\r\n"[..]).await, Err(HeadError::Eof)));
        let plain = read_head(&mut &b"GET /metrics HTTP/1.1\r\n\r\n"[..]).await.unwrap();
        assert_eq!(plain.websocket_key(), None);
    }

    /// Yields its bytes `step` at a time, counting reads.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
        reads: usize,
    }

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = self.step.min(self.data.len()).min(buf.remaining());
            let (now, later) = self.data.split_at(n);
            buf.put_slice(now);
            self.data = later;
            self.reads += 1;
            Poll::Ready(Ok(()))
        }
    }

    fn head_of(len: usize) -> Vec<u8> {
        let start = b"GET /ws HTTP/1.1\r\nX: ";
        let mut head = start.to_vec();
        head.resize(len - 4, b'a');
        head.extend_from_slice(b"\r\n\r\n");
        head
    }

    #[tokio::test]
    async fn the_head_bound_is_exact_however_the_bytes_arrive() {
        for step in [1, 7, 1000, 1024, 5000, MAX_HEAD] {
            let mut fits = Trickle { data: &head_of(MAX_HEAD), step, reads: 0 };
            let head = read_head(&mut fits).await.unwrap_or_else(|e| panic!("step {step}: {e}"));
            assert!(head.rest.is_empty());
            let mut over = Trickle { data: &head_of(MAX_HEAD + 1), step, reads: 0 };
            assert!(matches!(read_head(&mut over).await, Err(HeadError::TooLarge)), "step {step}");
        }
    }

    #[tokio::test]
    async fn garbage_is_refused_at_the_first_read() {
        let mut garbage = Trickle { data: &[b'\x00'; 4096], step: 100, reads: 0 };
        assert!(matches!(read_head(&mut garbage).await, Err(HeadError::Malformed)));
        assert_eq!(garbage.reads, 1);
    }

    #[tokio::test]
    async fn a_wrong_version_is_told_apart_from_a_non_upgrade() {
        let head = |version: &str| Head {
            method: "GET".into(),
            path: "/ws".into(),
            headers: [("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Key", "k")]
                .into_iter()
                .chain((!version.is_empty()).then_some(("Sec-WebSocket-Version", version)))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            rest: Vec::new(),
        };
        assert_eq!(head("13").upgrade(), Ok("k"));
        assert_eq!(head("8").upgrade(), Err(UpgradeError::Version));
        assert_eq!(head("").upgrade(), Err(UpgradeError::Version));
        let post = Head { method: "POST".into(), ..head("13") };
        assert_eq!(post.upgrade(), Err(UpgradeError::NotUpgrade));
    }
}
