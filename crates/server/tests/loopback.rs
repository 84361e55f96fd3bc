//! The server over real loopback sockets: well-behaved clients through tokio-tungstenite,
//! misbehaving ones through raw TCP.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clientmq_core::proto::{mq, pcast};
use clientmq_core::{BackendRequest, ConnectionId, Encoding, Reply, Target, codec};
use clientmq_server::{Answer, Backend, Connections, Server, ServerConfig};
use clientmq_testkit::deadline::eventually;
use clientmq_testkit::rawws::{self, RawFrame};
use common::metric;
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const MS: Duration = Duration::from_millis(1);
/// How long a test waits for the server to reach a state.
const WAIT: Duration = Duration::from_secs(3);

/// Answers like the echo backend after `delay`, and remembers every request.
#[derive(Default)]
struct TestBackend {
    delay: Duration,
    seen: Mutex<Vec<BackendRequest>>,
    gateway: Mutex<Option<Connections>>,
}

impl Backend for TestBackend {
    fn attach(&self, gateway: Connections) {
        *self.gateway.lock().unwrap() = Some(gateway);
    }

    fn request(&self, req: BackendRequest) -> Answer {
        self.seen.lock().unwrap().push(req.clone());
        let reply = Ok(Reply { reply_type: String::new(), payload: req.payload });
        if self.delay.is_zero() {
            return Answer::Now(reply);
        }
        let (gateway, delay) = (self.gateway.lock().unwrap().clone().expect("attached"), self.delay);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            gateway.answer(req.token, reply).await;
        });
        Answer::Later
    }
}

fn config() -> ServerConfig {
    let mut c = ServerConfig { shards: 2, seed: Some(1), ..ServerConfig::default() };
    c.gateway.heartbeat_interval = Duration::from_secs(30);
    c.gateway.close_timeout = 300 * MS;
    c.gateway.drain_window = 200 * MS;
    c.handshake_timeout = 300 * MS;
    c.max_frame_bytes = 4096;
    c.gateway.max_message_size = 4096;
    c.gateway.tokens = clientmq_core::TokenPolicy::AcceptAny;
    c
}

async fn start(
    config: ServerConfig,
    backend: Arc<TestBackend>,
) -> (Server, SocketAddr, tokio::task::JoinHandle<usize>) {
    start_with(config, backend).await
}

async fn start_with<B: Backend>(
    config: ServerConfig,
    backend: Arc<B>,
) -> (Server, SocketAddr, tokio::task::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::start(config, backend);
    let runner = server.clone();
    let run = tokio::spawn(async move { runner.run(listener).await });
    (server, addr, run)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn connect(addr: SocketAddr) -> Ws {
    tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.unwrap().0
}

fn text(msg: &mq::Message) -> Message {
    match codec::encode(msg, Encoding::Base64Text) {
        clientmq_core::Frame::Text(t) => Message::Text(t.into()),
        clientmq_core::Frame::Binary(_) => unreachable!(),
    }
}

/// The next data message or close, skipping pings and pongs.
async fn next_message(ws: &mut Ws) -> Option<Message> {
    loop {
        match tokio::time::timeout(Duration::from_secs(3), ws.next()).await.ok()?? {
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(m) => return Some(m),
            Err(_) => return None,
        }
    }
}

fn decode(m: &Message) -> mq::Message {
    match m {
        Message::Text(t) => codec::decode(&clientmq_core::Frame::Text(t.to_string()), usize::MAX).unwrap(),
        Message::Binary(b) => codec::decode(&clientmq_core::Frame::Binary(b.to_vec()), usize::MAX).unwrap(),
        other => panic!("not a data message: {other:?}"),
    }
}

fn close_code(m: &Message) -> Option<u16> {
    match m {
        Message::Close(Some(f)) => Some(u16::from(f.code)),
        _ => None,
    }
}

async fn raw_upgrade(addr: SocketAddr, headers: &[(&str, &str)]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_eq!(rawws::upgrade(&mut s, "/ws", headers).await.unwrap(), 101);
    s
}

async fn read_frame(s: &mut TcpStream) -> Option<RawFrame> {
    tokio::time::timeout(Duration::from_secs(3), rawws::read_frame(s)).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_close_never_answered_is_forced_and_the_count_returns() {
    clientmq_testkit::deadline::bounded(async {
        let mut c = config();
        c.gateway.heartbeat_interval = 200 * MS;
        let (server, addr, _) = start(c, Arc::default()).await;
        // The polite client keeps reading (tungstenite answers pings while it reads).
        let (mut polite_tx, mut polite_rx) = connect(addr).await.split();
        let (got, mut replies) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(m)) = polite_rx.next().await {
                if matches!(m, Message::Text(_) | Message::Binary(_)) {
                    let _ = got.send(m);
                }
            }
        });
        let mut raw = raw_upgrade(addr, &[]).await;
        eventually(WAIT, "two open", || server.open_connections() == 2).await;
        // The raw client ignores pings: at the second heartbeat the server closes with 3334.
        let close = loop {
            let frame = read_frame(&mut raw).await.expect("a frame before EOF");
            if frame.opcode == rawws::CLOSE {
                break frame;
            }
            assert_eq!(frame.opcode, rawws::PING);
        };
        assert_eq!(close.close_code(), Some(3334));
        // It never answers the close: after the close timeout the socket is really closed.
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(3), raw.read_to_end(&mut rest)).await;
        assert!(matches!(read, Ok(Ok(_)) | Ok(Err(_))), "socket closed by the server");
        eventually(WAIT, "back to one open", || server.open_connections() == 1).await;
        assert_eq!(metric(&server, "clientmq_connections_open"), 1.0);
        assert_eq!(metric(&server, r#"clientmq_disconnects_total{path="forced",code="3334"}"#), 1.0);
        // The polite client answered every ping and is still there.
        polite_tx.send(text(&mq::Message::request("C0", "x.Echo", vec![]))).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(3), replies.recv()).await.unwrap().unwrap();
        assert_eq!(decode(&reply).request_id.as_deref(), Some("C0"));
        assert_eq!(server.open_connections(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_answering_pings_is_closed_3334() {
    clientmq_testkit::deadline::bounded(async {
        let mut c = config();
        c.gateway.heartbeat_interval = 100 * MS;
        let (server, addr, _) = start(c, Arc::default()).await;
        let mut raw = raw_upgrade(addr, &[]).await;
        // Answer the first ping, then go mute.
        let ping = read_frame(&mut raw).await.unwrap();
        assert_eq!(ping.opcode, rawws::PING);
        rawws::write_frame(&mut raw, rawws::PONG, &ping.payload).await.unwrap();
        let mut codes = Vec::new();
        while let Some(f) = read_frame(&mut raw).await {
            if f.opcode == rawws::CLOSE {
                codes.push(f.close_code().unwrap());
                rawws::write_frame(&mut raw, rawws::CLOSE, &f.payload).await.unwrap();
            }
        }
        assert_eq!(codes, vec![3334]);
        eventually(WAIT, "closed", || server.open_connections() == 0).await;
        assert_eq!(metric(&server, r#"clientmq_disconnects_total{path="server",code="3334"}"#), 1.0);
        assert!(metric(&server, "clientmq_rtt_seconds_count") >= 1.0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_over_the_limit_gets_exactly_n_1013_and_never_exceeds_it() {
    clientmq_testkit::deadline::bounded(async {
        let mut c = config();
        c.gateway.max_connections = 40;
        let (server, addr, _) = start(c, Arc::default()).await;
        let watcher = server.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let max_seen = tokio::spawn(async move {
            let mut max = 0;
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                max = max.max(watcher.open_connections());
                tokio::task::yield_now().await;
            }
            max
        });
        let clients: Vec<_> = (0..60)
            .map(|_| {
                tokio::spawn(async move {
                    let mut ws = connect(addr).await;
                    let first =
                        tokio::time::timeout(Duration::from_millis(1500), next_message(&mut ws)).await;
                    let code = first.ok().flatten().as_ref().and_then(close_code);
                    (code, ws)
                })
            })
            .collect();
        let mut rejected = 0;
        let mut kept = Vec::new();
        for c in clients {
            let (code, ws) = c.await.unwrap();
            match code {
                Some(1013) => rejected += 1,
                None => kept.push(ws),
                Some(other) => panic!("unexpected close {other}"),
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(rejected, 20);
        assert_eq!(kept.len(), 40);
        assert!(max_seen.await.unwrap() <= 40);
        assert_eq!(server.open_connections(), 40);
        assert_eq!(metric(&server, r#"clientmq_connections_rejected_total{code="1013"}"#), 20.0);
        // Room again as soon as one leaves.
        let mut one = kept.pop().unwrap();
        one.close(None).await.unwrap();
        eventually(WAIT, "39 open", || server.open_connections() == 39).await;
        let mut newcomer = connect(addr).await;
        newcomer.send(text(&mq::Message::request("C0", "x.Echo", vec![]))).await.unwrap();
        assert!(close_code(&next_message(&mut newcomer).await.unwrap()).is_none());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_truncated_and_unknown_frames_are_dropped_and_counted() {
    clientmq_testkit::deadline::bounded(async {
        let (server, addr, _) = start(config(), Arc::default()).await;
        let mut ws = connect(addr).await;
        let valid = mq::Message::request("C1", "some.UnknownType", vec![7]).encode_to_vec();
        ws.send(Message::Text("!!! not base64 !!!".into())).await.unwrap();
        ws.send(Message::Binary(vec![0xff, 0xff, 0xff].into())).await.unwrap();
        ws.send(Message::Binary(valid[..valid.len() / 2].to_vec().into())).await.unwrap();
        let event = mq::Message {
            message_type: Some(mq::message::MessageType::Event as i32),
            ..mq::Message::request("", "x.E", vec![])
        };
        ws.send(text(&event)).await.unwrap();
        // The connection is fine: an unknown request type still reaches the backend and is answered.
        ws.send(Message::Binary(valid.clone().into())).await.unwrap();
        let reply = next_message(&mut ws).await.unwrap();
        assert!(matches!(reply, Message::Binary(_)), "answered in the client's encoding");
        let reply = decode(&reply);
        assert_eq!(
            (reply.request_id.as_deref(), reply.r#type.as_str()),
            (Some("C1"), "some.UnknownTypeResponse")
        );
        assert_eq!(metric(&server, r#"clientmq_frames_dropped_total{reason="invalid-base64"}"#), 1.0);
        assert_eq!(metric(&server, r#"clientmq_frames_dropped_total{reason="invalid-message"}"#), 2.0);
        assert_eq!(metric(&server, r#"clientmq_frames_dropped_total{reason="client-event"}"#), 1.0);
        assert_eq!(server.open_connections(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frame_closes_1009() {
    clientmq_testkit::deadline::bounded(async {
        let (server, addr, _) = start(config(), Arc::default()).await;
        let mut ws = connect(addr).await;
        ws.send(Message::Binary(vec![0u8; 10_000].into())).await.unwrap();
        let close = next_message(&mut ws).await.unwrap();
        assert_eq!(close_code(&close), Some(1009));
        eventually(WAIT, "closed", || server.open_connections() == 0).await;
        assert_eq!(metric(&server, r#"clientmq_disconnects_total{path="lost",code="1009"}"#), 1.0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed() {
    clientmq_testkit::deadline::bounded(async {
        let mut c = config();
        c.outbound_queue = 8;
        let backend = Arc::new(TestBackend::default());
        let (server, addr, _) = start(c, backend.clone()).await;
        // Authenticate so the test learns the connection id, then never read again.
        let mut raw = raw_upgrade(addr, &[]).await;
        let auth = mq::Message::request("C0", "x.Hello", vec![]).encode_to_vec();
        rawws::write_frame(&mut raw, rawws::BINARY, &auth).await.unwrap();
        eventually(WAIT, "request seen", || !backend.seen.lock().unwrap().is_empty()).await;
        let conn: ConnectionId = backend.seen.lock().unwrap()[0].conn;
        let gateway = backend.gateway.lock().unwrap().clone().unwrap();
        // More than the socket buffers hold: the queue overflows, the core closes the connection.
        for _ in 0..4_000 {
            gateway.deliver(Target::Connection(conn), "x.Blob", vec![0u8; 3000]).await;
        }
        // The client reads again, within the close handshake: it finds what fitted, then 3335.
        let (mut frames, mut close) = (0, None);
        while let Some(frame) = rawws::read_frame(&mut raw).await.unwrap() {
            if frame.opcode == rawws::CLOSE {
                close = frame.close_code();
                break;
            }
            frames += 1;
        }
        assert_eq!(close, Some(3335), "after {frames} frames");
        assert!(frames < 4_000, "the queue was bounded: {frames} frames came");
        eventually(WAIT, "slow consumer closed", || server.open_connections() == 0).await;
        assert_eq!(metric(&server, r#"clientmq_disconnects_total{path="forced",code="3335"}"#), 1.0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_never_finished_is_dropped() {
    clientmq_testkit::deadline::bounded(async {
        let (server, addr, _) = start(config(), Arc::default()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /ws HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf))
            .await
            .expect("dropped in time");
        assert_eq!(n.unwrap_or(0), 0, "nothing answered, just closed");
        assert_eq!(server.open_connections(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_only_from_a_trusted_proxy() {
    clientmq_testkit::deadline::bounded(async {
        let auth =
            pcast::Authenticate { authentication_token: "t".into(), ..Default::default() }.encode_to_vec();
        for (trusted, expected) in [(false, "127.0.0.1"), (true, "203.0.113.5")] {
            let mut c = config();
            if trusted {
                c.gateway.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
            }
            let backend = Arc::new(TestBackend::default());
            let (_server, addr, _) = start(c, backend.clone()).await;
            let mut raw = raw_upgrade(addr, &[("X-Forwarded-For", "203.0.113.5")]).await;
            let msg = mq::Message::request("C0", "pcast.Authenticate", auth.clone()).encode_to_vec();
            rawws::write_frame(&mut raw, rawws::BINARY, &msg).await.unwrap();
            eventually(WAIT, "authenticate seen", || !backend.seen.lock().unwrap().is_empty()).await;
            let seen = backend.seen.lock().unwrap()[0].clone();
            let fwd = pcast::Authenticate::decode(seen.payload.as_slice()).unwrap();
            assert_eq!(fwd.remote_address.as_deref(), Some(expected));
            assert_eq!(seen.remote.to_string(), expected);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_allow_list_and_plain_endpoints() {
    clientmq_testkit::deadline::bounded(async {
        let mut c = config();
        c.allowed_origins = vec!["https://app.example".into()];
        // Long enough that the drain below is still under way while the endpoints are checked.
        c.gateway.close_timeout = Duration::from_secs(3);
        let (server, addr, _) = start(c, Arc::default()).await;
        let status = |headers: &'static [(&'static str, &'static str)]| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            rawws::upgrade(&mut s, "/ws", headers).await.unwrap()
        };
        assert_eq!(status(&[("Origin", "https://evil.example")]).await, 403);
        assert_eq!(status(&[]).await, 403);
        assert_eq!(status(&[("Origin", "https://app.example")]).await, 101);
        let get = |path: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        assert!(get("/metrics").await.contains("clientmq_connections_open"));
        // A client that will not answer the drain's close keeps the server draining for a while.
        let _stubborn = raw_upgrade(addr, &[("Origin", "https://app.example")]).await;
        eventually(WAIT, "registered", || server.open_connections() == 1).await;
        server.drain().await;
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        assert_eq!(status(&[("Origin", "https://app.example")]).await, 503);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_answers_in_flight_requests_before_3333_and_serve_returns() {
    clientmq_testkit::deadline::bounded(async {
        let backend = Arc::new(TestBackend { delay: 400 * MS, ..TestBackend::default() });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serve = tokio::spawn(clientmq_server::serve(listener, config(), backend.clone(), async {
            let _ = stopped.await;
        }));
        let mut clients = Vec::new();
        for i in 0..3 {
            let mut ws = connect(addr).await;
            ws.send(text(&mq::Message::request(&format!("C{i}"), "x.Slow", vec![]))).await.unwrap();
            clients.push(ws);
        }
        eventually(WAIT, "requests in flight", || backend.seen.lock().unwrap().len() == 3).await;
        stop.send(()).unwrap();
        for (i, ws) in clients.iter_mut().enumerate() {
            let first = next_message(ws).await.unwrap();
            assert_eq!(decode(&first).request_id, Some(format!("C{i}")), "the response comes first");
            let second = next_message(ws).await.unwrap();
            assert_eq!(close_code(&second), Some(3333));
            assert!(matches!(second, Message::Close(Some(ref f)) if f.code == CloseCode::from(3333)));
        }
        let left = tokio::time::timeout(Duration::from_secs(5), serve).await.expect("serve returns").unwrap();
        assert_eq!(left, 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_with_answers_queued_still_reads_every_one_and_the_close_echo() {
    clientmq_testkit::deadline::bounded(async {
        const ANSWERS: usize = 40;
        const PAYLOAD: usize = 240 * 1024;
        let mut c = config();
        c.max_frame_bytes = 256 * 1024;
        c.gateway.max_message_size = 256 * 1024;
        // The echo backend answers at once, so every answer is queued before the close is read.
        let (server, addr, _) = start_with(c, Arc::new(clientmq_server::EchoBackend)).await;
        // A small receive window stops the kernel buffering everything: most of the 9.6 MB of
        // answers stays queued in the server when the close arrives.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 * 1024).unwrap();
        let mut raw = socket.connect(addr).await.unwrap();
        assert_eq!(rawws::upgrade(&mut raw, "/ws", &[]).await.unwrap(), 101);
        for i in 0..ANSWERS {
            let req =
                mq::Message::request(&format!("C{i}"), "x.Echo", vec![i as u8; PAYLOAD]).encode_to_vec();
            rawws::write_frame(&mut raw, rawws::BINARY, &req).await.unwrap();
        }
        rawws::write_frame(&mut raw, rawws::CLOSE, &rawws::close_payload(1000, "")).await.unwrap();
        // The close handshake is done for the server (it released the connection) while most
        // answers still wait in its queue, beyond what the kernel's buffers hold (4 MiB here):
        // every answer it queued, then its close echo, must still arrive. A request in the
        // same read as the close is not answered (the client left), so the answers are a prefix.
        eventually(WAIT, "released", || server.open_connections() == 0).await;
        let mut answered = 0;
        let echo = loop {
            let frame = read_frame(&mut raw).await.expect("answers and the close echo before EOF");
            if frame.opcode != rawws::BINARY {
                break frame;
            }
            let answer = codec::decode(&clientmq_core::Frame::Binary(frame.payload), usize::MAX).unwrap();
            assert_eq!(answer.request_id, Some(format!("C{answered}")));
            assert_eq!(answer.payload, vec![answered as u8; PAYLOAD]);
            answered += 1;
        };
        assert_eq!(echo.close_code(), Some(1000));
        assert_eq!(read_frame(&mut raw).await, None, "then the server closes the socket");
        let queued = metric(&server, r#"clientmq_requests_total{type="other",outcome="ok"}"#);
        assert_eq!(answered as f64, queued, "every answer the server queued arrived");
        // A request read with the close is not answered (the client left) but it is counted:
        // every request the client sent is in the metrics, answered or undeliverable.
        let undeliverable =
            metric(&server, r#"clientmq_requests_total{type="other",outcome="undeliverable"}"#);
        assert_eq!(queued + undeliverable, ANSWERS as f64, "every request is counted once");
        assert!(answered * PAYLOAD > 6 << 20, "only {answered} answers were queued at the close");
        assert_eq!(metric(&server, r#"clientmq_disconnects_total{path="client",code="1000"}"#), 1.0);
    })
    .await
}

/// `--socket-send-buffer` is set on the listening socket; what it accepts inherits it, so a
/// client that stops reading holds that much kernel memory and no more.
#[tokio::test]
async fn accepted_sockets_inherit_the_send_buffer_set_on_the_listener() {
    let tuned = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    clientmq_server::set_send_buffer(&tuned, 64 * 1024).expect("SO_SNDBUF");
    let untuned = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    clientmq_server::set_send_buffer(&untuned, 0).expect("0 leaves it");
    let size = |l: &TcpListener| socket2::SockRef::from(l).send_buffer_size().expect("read SO_SNDBUF");
    let set = size(&tuned);
    assert!(set >= 64 * 1024, "the kernel keeps at least what was asked: {set}");
    assert_ne!(set, size(&untuned), "0 keeps the kernel's default");
    let _client = TcpStream::connect(tuned.local_addr().expect("addr")).await.expect("connect");
    let (accepted, _) = tuned.accept().await.expect("accept");
    let inherited = socket2::SockRef::from(&accepted).send_buffer_size().expect("read SO_SNDBUF");
    assert_eq!(inherited, set, "an accepted socket has its listener's send buffer");
}
