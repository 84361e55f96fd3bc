//! What every bad-input test needs: a server on a loopback port with short timeouts, a client
//! below any WebSocket library (so it can send what a library would refuse to), and the checks
//! each test ends with: the open count is exact, nothing panicked, and a fresh well-behaved client
//! is still served. Black-box: bytes on a socket, metrics from the server's own exposition.
#![allow(dead_code)] // each test module uses a part

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use clientmq_core::proto::{mq, pcast};
use clientmq_core::{BackendRequest, Encoding, Frame, Reply, codec};
use clientmq_server::{Answer, Backend, Connections, Server, ServerConfig};
use clientmq_testkit::rawws::{self, RawFrame};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const MS: Duration = Duration::from_millis(1);
/// The longest any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(3);
/// The handshake timeout of [`config`].
pub const HANDSHAKE: Duration = Duration::from_millis(300);

pub type MqType = mq::message::MessageType;

static PANICS: AtomicUsize = AtomicUsize::new(0);
static HOOK: Once = Once::new();

/// Counts panics on the runtime's worker threads, where the server's tasks run (a connection
/// task catches its own panic, so the hook is the only place one shows). Assertions of the
/// tests themselves run on the test thread and are not counted.
fn watch_panics() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some("tokio-runtime-worker") {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// Panics seen in server tasks since the test binary started.
pub fn panics() -> usize {
    PANICS.load(Ordering::SeqCst)
}

/// Short timeouts, small frames, one shard unless a test wants more, any non-empty token.
pub fn config() -> ServerConfig {
    let mut c = ServerConfig { shards: 1, seed: Some(11), ..ServerConfig::default() };
    c.gateway.heartbeat_interval = Duration::from_secs(30);
    c.gateway.close_timeout = 300 * MS;
    c.gateway.request_timeout = Duration::from_secs(2);
    c.gateway.server_request_timeout = Duration::from_secs(2);
    c.gateway.drain_window = 100 * MS;
    c.handshake_timeout = HANDSHAKE;
    c.max_frame_bytes = 4096;
    c.gateway.max_message_size = 4096;
    c.gateway.tokens = clientmq_core::TokenPolicy::AcceptAny;
    c
}

/// Echoes every request (`<type>Response`, same payload); `pcast.Authenticate` gets `ok` and the
/// connection id as session; `x.Hang` is never answered (the gateway times it out). Remembers
/// every request and the gateway handle, for tests that push events or ask the client.
#[derive(Default)]
pub struct TestBackend {
    pub seen: Mutex<Vec<BackendRequest>>,
    pub gateway: Mutex<Option<Connections>>,
}

impl TestBackend {
    pub fn handle(&self) -> Connections {
        self.gateway.lock().unwrap().clone().expect("attached")
    }

    /// The connection of the latest request seen.
    pub fn last_conn(&self) -> clientmq_core::ConnectionId {
        self.seen.lock().unwrap().last().expect("a request seen").conn
    }
}

impl Backend for TestBackend {
    fn attach(&self, gateway: Connections) {
        *self.gateway.lock().unwrap() = Some(gateway);
    }

    fn request(&self, req: BackendRequest) -> Answer {
        self.seen.lock().unwrap().push(req.clone());
        Answer::Now(Ok(match req.request_type.as_str() {
            "x.Hang" => return Answer::Later,
            "pcast.Authenticate" => {
                let resp = pcast::AuthenticateResponse {
                    status: "ok".into(),
                    session_id: Some(req.conn.to_string()),
                    ..Default::default()
                };
                Reply { reply_type: "pcast.AuthenticateResponse".into(), payload: resp.encode_to_vec() }
            }
            _ => Reply { reply_type: String::new(), payload: req.payload },
        }))
    }
}

/// A running server on a loopback port.
pub struct Gw<B> {
    pub server: Server,
    pub addr: SocketAddr,
    pub backend: Arc<B>,
}

pub async fn start<B: Backend>(config: ServerConfig, backend: Arc<B>) -> Gw<B> {
    watch_panics();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::start(config, backend.clone());
    let runner = server.clone();
    tokio::spawn(async move { runner.run(listener).await });
    Gw { server, addr, backend }
}

/// A server with [`config`] changed by `tweak`, on a [`TestBackend`].
pub async fn start_test(tweak: impl FnOnce(&mut ServerConfig)) -> Gw<TestBackend> {
    let mut c = config();
    tweak(&mut c);
    start(c, Arc::default()).await
}

impl<B> Gw<B> {
    /// A series' value in the server's Prometheus text (0 for a series never written).
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.server.metrics_text();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().unwrap_or_else(|_| panic!("{series}: not a number in {text}")))
    }

    /// Waits (within [`WAIT`]) for a series to read `value`. A counter moves just after the
    /// shard has sent what the client sees, so a client may see an answer before it is counted.
    pub async fn expect(&self, series: &str, value: f64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let now = self.metric(series);
            if now == value {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{series} is {now}, expected {value}");
            tokio::time::sleep(5 * MS).await;
        }
    }

    pub async fn tcp(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }

    /// A connection upgraded to a WebSocket on `/ws`.
    pub async fn raw(&self) -> Raw<TcpStream> {
        Raw::upgrade(self.tcp().await, &[]).await
    }

    /// Waits until exactly `open` connections are open and none is closing, by the server's
    /// count and by its `/metrics`; then checks nothing panicked.
    pub async fn settles(&self, open: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text_open = self.metric("clientmq_connections_open");
            let closing = self.metric("clientmq_connections_closing");
            if self.server.open_connections() == open && text_open == open as f64 && closing == 0.0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "open count never settled at {open}: server says {}, /metrics says {text_open} \
                 ({closing} closing)",
                self.server.open_connections()
            );
            tokio::time::sleep(10 * MS).await;
        }
        assert_eq!(panics(), 0, "a server task panicked");
    }

    /// The end of every bad-input test: the count settles at `open`, a fresh client is served
    /// (`mq.PingPong` answered) and leaves, and the count is `open` again.
    pub async fn still_serves(&self, open: usize) {
        self.settles(open).await;
        let mut fresh = Raw::upgrade(self.tcp().await, &[]).await;
        let answer = fresh.call("mq.PingPong", vec![8, 1]).await;
        assert_eq!(answer.r#type, "mq.PingPongResponse", "{answer:?}");
        fresh.close_politely().await;
        self.settles(open).await;
    }
}

/// The reason of an `mq.Error` answer, `None` for any other answer.
pub fn error_reason(msg: &mq::Message) -> Option<String> {
    (msg.r#type == "mq.Error").then(|| mq::Error::decode(msg.payload.as_slice()).expect("an mq.Error").reason)
}

/// How a connection ended, as the client saw it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ending {
    /// Code and reason of the server's close frame, if one came.
    pub close: Option<(u16, String)>,
    /// Data frames that came before the end.
    pub data: Vec<RawFrame>,
    /// The stream ended by an error (a reset) rather than a clean EOF.
    pub reset: bool,
}

impl Ending {
    pub fn code(&self) -> Option<u16> {
        self.close.as_ref().map(|(code, _)| *code)
    }
}

/// A client that writes frames by hand.
pub struct Raw<S> {
    pub stream: S,
    next: u32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    /// Upgrades `stream` on `/ws`; panics unless the answer is 101.
    pub async fn upgrade(mut stream: S, headers: &[(&str, &str)]) -> Raw<S> {
        let status = tokio::time::timeout(WAIT, rawws::upgrade(&mut stream, "/ws", headers))
            .await
            .expect("an upgrade answer in time")
            .expect("an upgrade answer");
        assert_eq!(status, 101);
        Raw { stream, next: 0 }
    }

    /// Writes bytes as they are; errors are ignored (the server may have hung up already).
    pub async fn write(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    /// A masked, final frame.
    pub async fn frame(&mut self, opcode: u8, payload: &[u8]) {
        self.write(&rawws::encode_frame(opcode, payload, None)).await;
    }

    pub async fn send(&mut self, msg: &mq::Message) {
        self.frame(rawws::BINARY, &msg.encode_to_vec()).await;
    }

    pub async fn send_text(&mut self, msg: &mq::Message) {
        let Frame::Text(text) = codec::encode(msg, Encoding::Base64Text) else { unreachable!() };
        self.frame(rawws::TEXT, text.as_bytes()).await;
    }

    /// The next frame, within [`WAIT`]; `None` at EOF or on a reset.
    pub async fn read(&mut self) -> Option<RawFrame> {
        match tokio::time::timeout(WAIT, rawws::read_frame(&mut self.stream)).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(_)) => None,
            Err(_) => panic!("no frame and no end within {WAIT:?}"),
        }
    }

    /// The next data message, decoded; pings are skipped (not answered). Panics on a close,
    /// EOF or timeout.
    pub async fn next_message(&mut self) -> mq::Message {
        loop {
            let frame = self.read().await.expect("a message, not the end");
            match frame.opcode {
                rawws::PING | rawws::PONG => continue,
                rawws::BINARY => return codec::decode(&Frame::Binary(frame.payload), usize::MAX).unwrap(),
                rawws::TEXT => {
                    let text = String::from_utf8(frame.payload).unwrap();
                    return codec::decode(&Frame::Text(text), usize::MAX).unwrap();
                }
                _ => panic!("a message expected, got {frame:?}"),
            }
        }
    }

    /// Sends a binary request of `ty` and returns the answer to it.
    pub async fn call(&mut self, ty: &str, payload: Vec<u8>) -> mq::Message {
        let id = format!("C{}", self.next);
        self.next += 1;
        self.send(&mq::Message::request(&id, ty, payload)).await;
        let answer = self.next_message().await;
        assert_eq!(answer.request_id.as_deref(), Some(id.as_str()), "{answer:?}");
        assert_eq!(answer.message_type, Some(MqType::Response as i32));
        answer
    }

    /// Reads until the server ends the stream: answers its close frame with the same code (as a
    /// polite client does) and keeps reading until EOF.
    pub async fn ending(&mut self) -> Ending {
        let mut ending = Ending::default();
        loop {
            let frame = match tokio::time::timeout(WAIT, rawws::read_frame(&mut self.stream)).await {
                Ok(Ok(Some(frame))) => frame,
                Ok(Ok(None)) => return ending,
                Ok(Err(_)) => {
                    ending.reset = true;
                    return ending;
                }
                Err(_) => panic!("the server did not end the connection within {WAIT:?}: {ending:?}"),
            };
            match frame.opcode {
                rawws::CLOSE if ending.close.is_none() => {
                    let code = frame.close_code().unwrap_or(1005);
                    let reason = String::from_utf8_lossy(frame.payload.get(2..).unwrap_or_default()).into();
                    ending.close = Some((code, reason));
                    self.write(&rawws::encode_frame(rawws::CLOSE, &frame.payload, None)).await;
                }
                rawws::PING | rawws::PONG | rawws::CLOSE => {}
                _ => ending.data.push(frame),
            }
        }
    }

    /// Sends a close frame (1000) and waits for the server's answer and EOF.
    pub async fn close_politely(mut self) {
        self.frame(rawws::CLOSE, &rawws::close_payload(1000, "bye")).await;
        let ending = self.ending().await;
        assert_eq!(ending.code(), Some(1000), "the close is echoed: {ending:?}");
    }

    /// Asserts nothing but pings arrives within `quiet`.
    pub async fn silent_for(&mut self, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            match tokio::time::timeout_at(deadline, rawws::read_frame(&mut self.stream)).await {
                Err(_) => return,
                Ok(Ok(Some(f))) if f.opcode == rawws::PING => continue,
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }
}

/// Sends `request` as it is and reads the whole answer (the server closes after a plain
/// answer). Returns the status (0 when nothing came back) and the text of the answer.
pub async fn http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server neither answered nor closed within {WAIT:?}");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// Reads until EOF or reset; returns what came and how long it took. Panics after [`WAIT`].
pub async fn drained<S: AsyncRead + Unpin>(stream: &mut S) -> (Vec<u8>, Duration) {
    let started = tokio::time::Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, started.elapsed()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept the socket open for {WAIT:?}"),
        }
    }
}
