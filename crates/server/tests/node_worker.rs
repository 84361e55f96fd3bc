//! A worker in another language: `interop/worker.js` (Node, the official NATS client), written
//! from docs/nats.md alone, serves clients through a `clientmq-server` gateway on a real
//! nats-server. The clients are WebSocket clients written here, in both encodings.
//!
//! Needs nats-server, Node.js and npm (`npm ci --ignore-scripts` runs once in interop/ when the
//! `nats` package is missing).

use std::collections::BTreeMap;
use std::time::Duration;

use clientmq_core::Encoding;
use clientmq_core::proto::{mq, pcast};
use clientmq_testkit::client::Client as TestClient;
use clientmq_testkit::nats::Nats;
use clientmq_testkit::node::node_worker;
use clientmq_testkit::procs::{Log, Proc, free_port, http_get, scrape, wait_for};
use prost::Message as _;

use mq::message::MessageType;

const TOKEN: &str = "node-worker-token";
/// Not the default prefix: the worker and the gateway must agree on it.
const PREFIX: &str = "nodeit";
/// How long any one message or state may take to arrive.
const WAIT: Duration = Duration::from_secs(5);
/// An answer the gateway gives by itself ("at once" in the doc) must come faster than this.
const AT_ONCE: Duration = Duration::from_millis(500);
/// The whole test.
const DEADLINE: Duration = Duration::from_secs(90);
const OPEN: &str = "clientmq_connections_open";

fn error_reason(msg: &mq::Message) -> String {
    assert_eq!(msg.r#type, "mq.Error", "{msg:?}");
    mq::Error::decode(msg.payload.as_slice()).expect("an mq.Error").reason
}

/// One client speaking the MQ protocol in one encoding, strict about what arrives when.
struct Client {
    name: &'static str,
    c: TestClient,
}

impl Client {
    async fn connect(name: &'static str, port: u16, encoding: Encoding) -> Client {
        Client { name, c: TestClient::connect_when_up(port).await.with_encoding(encoding).named(name) }
    }

    /// Sends a request; returns its request id.
    async fn request(&mut self, ty: &str, payload: &[u8]) -> String {
        self.c.request(ty, payload.to_vec()).await
    }

    /// Answers a server request.
    async fn respond(&mut self, request_id: &str, ty: &str, payload: &[u8]) {
        self.c.respond(request_id, ty, payload.to_vec()).await;
    }

    async fn recv(&mut self) -> mq::Message {
        self.c.recv().await
    }

    /// The next message, which must be the response to `id`.
    async fn response(&mut self, id: &str) -> mq::Message {
        let msg = self.recv().await;
        if msg.message_type != Some(MessageType::Response as i32) || msg.request_id.as_deref() != Some(id) {
            panic!("{}: expected the response to {id}, got {msg:?}", self.name);
        }
        msg
    }

    /// A request and its response, with nothing else in between.
    async fn call(&mut self, ty: &str, payload: &[u8]) -> mq::Message {
        let id = self.request(ty, payload).await;
        self.response(&id).await
    }

    async fn authenticate(&mut self, token: &str) -> pcast::AuthenticateResponse {
        let auth = pcast::Authenticate {
            client_version: "node-worker-test".into(),
            device_id: self.name.into(),
            platform: "rust".into(),
            platform_version: "1".into(),
            authentication_token: token.into(),
            ..Default::default()
        };
        let msg = self.call("pcast.Authenticate", &auth.encode_to_vec()).await;
        assert_eq!(msg.r#type, "pcast.AuthenticateResponse", "{}: {msg:?}", self.name);
        pcast::AuthenticateResponse::decode(msg.payload.as_slice()).expect("an AuthenticateResponse")
    }

    /// The worker's `demo.Stats`: requests it saw, by type.
    async fn worker_stats(&mut self) -> BTreeMap<String, u64> {
        let msg = self.call("demo.Stats", &[]).await;
        assert_eq!(msg.r#type, "demo.StatsResponse");
        String::from_utf8(msg.payload)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(t, n)| (t.to_owned(), n.parse().unwrap()))
            .collect()
    }

    /// Closes politely and reads until the server's close.
    async fn close(mut self) {
        self.c.close(1000, "").await;
        while let Some(Ok(Some(frame))) = self.c.next_frame_within(WAIT).await {
            if frame.opcode == clientmq_testkit::rawws::CLOSE {
                break;
            }
        }
    }
}

/// `mq.Error{no-worker}` for `ty`, at once.
async fn expect_no_worker(client: &mut Client, ty: &str, payload: &[u8]) {
    let started = tokio::time::Instant::now();
    let msg = client.call(ty, payload).await;
    let took = started.elapsed();
    assert_eq!(error_reason(&msg), "no-worker", "{ty}: {msg:?}");
    assert!(took < AT_ONCE, "{ty}: no-worker took {took:?}, not at once");
}

async fn expect_open(port: u16, n: usize, log: &Log) {
    let what = format!("{OPEN} == {n}");
    wait_for(WAIT, &what, log, || async { scrape(port, OPEN).await == n as f64 }).await;
}

/// Runs `test` with a log, within [`DEADLINE`]; on a failure or past the deadline, prints
/// every line the processes printed, then fails.
async fn with_deadline<F, Fut>(test: F)
where
    F: FnOnce(Log) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let log = Log::default();
    let mut run = tokio::spawn(test(log.clone()));
    let outcome = tokio::time::timeout(DEADLINE, &mut run).await;
    if !matches!(outcome, Ok(Ok(()))) {
        run.abort();
    }
    // Shown on failure (and with --nocapture): what the processes said.
    println!("--- log ---\n{}\n--- end of log ---", log.lock().unwrap().join("\n"));
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
        Err(_) => panic!("the test did not finish within {DEADLINE:?}"),
    }
}

/// nats-server and one gateway on it, ready (on the bus); returns the gateway's port.
async fn start_gateway(log: &Log) -> (Nats, Proc, u16) {
    let nats = Nats::start(log).await;
    let port = free_port();
    let (listen, url) = (format!("127.0.0.1:{port}"), nats.url());
    let bus = ["--listen", &listen, "--nats", &url, "--nats-prefix", PREFIX, "--tokens", TOKEN];
    let quick = ["--shards", "2", "--drain-window-secs", "0.2", "--close-timeout-secs", "2"];
    let gateway_args: Vec<String> = bus.iter().chain(&quick).map(|a| (*a).to_owned()).collect();
    let gateway = Proc::spawn(env!("CARGO_BIN_EXE_clientmq-server"), &gateway_args, "gateway", log);
    wait_for(WAIT, "the gateway ready (/readyz 200: on the bus)", log, || async {
        http_get(port, "/readyz").await.0 == 200
    })
    .await;
    (nats, gateway, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_worker_written_from_the_doc_serves_clients_through_the_gateway() {
    clientmq_testkit::deadline::bounded(async {
        with_deadline(serve_clients).await;
    })
    .await
}

async fn serve_clients(log: Log) {
    let (nats, gateway, port) = start_gateway(&log).await;

    // --- No worker yet: the gateway answers by itself, at once. ---
    let mut a = Client::connect("a", port, Encoding::Base64Text).await;
    expect_open(port, 1, &log).await;
    expect_no_worker(&mut a, "demo.Echo", b"anyone?").await;
    let auth = pcast::Authenticate { authentication_token: TOKEN.into(), ..Default::default() };
    expect_no_worker(&mut a, "pcast.Authenticate", &auth.encode_to_vec()).await;

    // --- The worker. ---
    let worker = node_worker(&nats, PREFIX, &log).await;

    // --- Authentication: the gateway refuses a wrong token itself; the worker sees only the good. ---
    let refused = a.authenticate("not-the-token").await;
    assert_eq!(refused.status, "unauthorized", "{refused:?}");
    assert_eq!(refused.session_id, None);
    let accepted = a.authenticate(TOKEN).await;
    assert_eq!(accepted.status, "ok", "{accepted:?}");
    let session_a = accepted.session_id.expect("a session id");
    let stats = a.worker_stats().await;
    assert_eq!(stats.get("pcast.Authenticate"), Some(&1), "the worker saw only the accepted one: {stats:?}");
    // What the worker learns from the headers; the gateway stamps the session on what it sends.
    let whoami = a.call("demo.Whoami", &[]).await;
    assert_eq!(whoami.session_id.as_deref(), Some(session_a.as_str()));
    let whoami = String::from_utf8(whoami.payload).unwrap();
    let field = |name: &str| {
        whoami.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')).unwrap_or_default().to_owned()
    };
    assert!(field("gateway").starts_with("gw."), "{whoami}");
    assert_eq!(field("connection").len(), 32, "{whoami}");
    assert_eq!(field("session"), session_a, "{whoami}");
    assert_eq!(field("remote"), "127.0.0.1", "{whoami}");

    // --- Echo, in both encodings: same bytes, the worker's response type. ---
    let bytes: Vec<u8> = (0..=255).collect();
    let echo = a.call("demo.Echo", &bytes).await;
    assert_eq!((echo.r#type.as_str(), &echo.payload), ("demo.EchoResponse", &bytes));
    let mut b = Client::connect("b", port, Encoding::Binary).await;
    expect_open(port, 2, &log).await;
    assert_eq!(b.authenticate(TOKEN).await.status, "ok");
    let echo = b.call("demo.Echo", &bytes).await;
    assert_eq!((echo.r#type.as_str(), &echo.payload), ("demo.EchoResponse", &bytes));
    let echo = b.call("demo.Echo", &[]).await;
    assert_eq!((echo.r#type.as_str(), echo.payload.len()), ("demo.EchoResponse", 0));

    // --- Notify: the worker publishes the event before it answers; the client sees that order. ---
    for round in 0..10 {
        let payload = format!("notify {round}");
        let id = a.request("demo.Notify", payload.as_bytes()).await;
        let first = a.recv().await;
        assert_eq!(first.message_type, Some(MessageType::Event as i32), "round {round}: {first:?}");
        assert_eq!(first.r#type, "demo.Note");
        assert!(String::from_utf8_lossy(&first.payload).starts_with("note for "), "{first:?}");
        let response = a.response(&id).await;
        assert_eq!(
            (response.r#type.as_str(), response.payload),
            ("demo.NotifyResponse", payload.into_bytes())
        );
    }

    // --- Rooms: both join "r"; one shouts, both hear it. ---
    for client in [&mut a, &mut b] {
        let joined = client.call("demo.Join", b"r").await;
        assert_eq!(joined.r#type, "demo.JoinResponse", "{joined:?}");
    }
    let id = a.request("demo.Shout", b"hello r").await;
    // The reply (under P.gw.G) and the room event (P.room.r) may come in either order.
    let (mut replied, mut heard) = (false, false);
    while !(replied && heard) {
        let msg = a.recv().await;
        match MessageType::try_from(msg.message_type.unwrap_or(0)) {
            Ok(MessageType::Response) if msg.request_id.as_deref() == Some(id.as_str()) => {
                assert_eq!(msg.r#type, "demo.ShoutResponse", "{msg:?}");
                replied = true;
            }
            Ok(MessageType::Event) if msg.r#type == "demo.Shouted" => {
                assert_eq!(msg.payload, b"hello r");
                heard = true;
            }
            _ => panic!("a: unexpected {msg:?}"),
        }
    }
    let heard = b.recv().await;
    assert_eq!(heard.message_type, Some(MessageType::Event as i32), "{heard:?}");
    assert_eq!((heard.r#type.as_str(), heard.payload.as_slice()), ("demo.Shouted", &b"hello r"[..]));
    // A room id that is not a plain token ("lobby 1" is `_6c6f6262792031` on the bus): b alone is in it.
    assert_eq!(b.call("demo.Join", b"lobby 1").await.r#type, "demo.JoinResponse");
    let id = b.request("demo.Shout", b"hello lobby").await;
    let mut got = [b.recv().await, b.recv().await];
    got.sort_by_key(|m| m.message_type);
    assert_eq!(got[0].request_id.as_deref(), Some(id.as_str()), "{got:?}");
    assert_eq!((got[1].r#type.as_str(), got[1].payload.as_slice()), ("demo.Shouted", &b"hello lobby"[..]));
    // a is not in "lobby 1": its next message is the answer to its next request.
    let echo = a.call("demo.Echo", b"quiet?").await;
    assert_eq!(echo.payload, b"quiet?");
    // No interest window: the worker answers a join once the gateway acknowledged the
    // subscription, so a room joined is heard at once (a fresh room each time: the gateway must
    // subscribe to it at the server first).
    for n in 0..20 {
        let room = format!("fresh-{n}");
        assert_eq!(a.call("demo.Join", room.as_bytes()).await.r#type, "demo.JoinResponse");
        let id = a.request("demo.Shout", b"at once").await;
        let mut got = [a.recv().await, a.recv().await];
        got.sort_by_key(|m| m.message_type);
        assert_eq!(got[0].request_id.as_deref(), Some(id.as_str()), "{room}: {got:?}");
        assert_eq!((got[1].r#type.as_str(), got[1].payload.as_slice()), ("demo.Shouted", &b"at once"[..]));
    }

    // --- Ask: a server request to the client; its answer becomes the answer to the request. ---
    let ask = a.request("demo.Ask", b"what is six times seven?").await;
    let question = a.recv().await;
    assert_eq!(question.message_type, Some(MessageType::Request as i32), "{question:?}");
    assert_eq!(question.r#type, "demo.Question");
    assert_eq!(question.payload, b"what is six times seven?");
    let server_id = question.request_id.clone().unwrap_or_default();
    assert!(server_id.starts_with('S'), "a server request id: {question:?}");
    a.respond(&server_id, "demo.QuestionResponse", b"42").await;
    let answer = a.response(&ask).await;
    assert_eq!((answer.r#type.as_str(), answer.payload.as_slice()), ("demo.AskResponse", &b"42"[..]));
    // The gateway's refusal reaches the client through the worker: 16 server requests may be
    // pending per connection, the 17th fails with Clientmq-Error `too-many-pending`.
    let mut asks = BTreeMap::new();
    for n in 0..17 {
        let question = format!("question {n}");
        asks.insert(b.request("demo.Ask", question.as_bytes()).await, question);
    }
    let (mut questions, mut refused) = (Vec::new(), Vec::new());
    for _ in 0..17 {
        let msg = b.recv().await;
        if msg.message_type == Some(MessageType::Request as i32) {
            assert_eq!(msg.r#type, "demo.Question", "{msg:?}");
            questions.push(msg);
        } else {
            assert!(asks.contains_key(msg.request_id.as_deref().unwrap_or_default()), "{msg:?}");
            refused.push(error_reason(&msg));
        }
    }
    assert_eq!((questions.len(), refused), (16, vec!["too-many-pending".to_owned()]));
    for q in &questions {
        let answer = format!("answer to {}", String::from_utf8_lossy(&q.payload));
        b.respond(q.request_id.as_deref().unwrap(), "demo.QuestionResponse", answer.as_bytes()).await;
    }
    for _ in 0..16 {
        let msg = b.recv().await;
        let question = asks.get(msg.request_id.as_deref().unwrap_or_default()).expect("one of the asks");
        assert_eq!(msg.r#type, "demo.AskResponse", "{msg:?}");
        assert_eq!(msg.payload, format!("answer to {question}").into_bytes());
    }
    expect_open(port, 2, &log).await;

    // --- The worker stops (SIGTERM): no-worker again, at once. ---
    worker.terminate(WAIT).await;
    expect_no_worker(&mut a, "demo.Echo", b"still there?").await;
    expect_no_worker(&mut b, "demo.Echo", b"still there?").await;
    expect_open(port, 2, &log).await;

    // --- Clients leave; the gateway drains and exits 0. ---
    b.close().await;
    expect_open(port, 1, &log).await;
    a.close().await;
    expect_open(port, 0, &log).await;
    gateway.terminate(Duration::from_secs(10)).await;
    drop(nats);
}

/// docs/nats.md: "Everything a worker publishes under `P.gw.G.` reaches gateway G in the order it
/// was published, and G applies it in that order." Effects published before a reply are checked
/// above with `demo.Notify`; here, the rest: a reply published before an event, and a `.request`
/// published before a reply (each once overtaken, when the gateway handed replies and server
/// requests to the shard from tasks of their own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_applies_what_a_worker_publishes_under_its_subjects_in_publish_order() {
    clientmq_testkit::deadline::bounded(async {
        with_deadline(publish_order).await;
    })
    .await
}

async fn publish_order(log: Log) {
    const ROUNDS: usize = 50;
    let (nats, gateway, port) = start_gateway(&log).await;
    let worker = node_worker(&nats, PREFIX, &log).await;
    let mut a = Client::connect("a", port, Encoding::Base64Text).await;
    assert_eq!(a.authenticate(TOKEN).await.status, "ok");
    let (mut event_first, mut reply_first) = (0, 0);
    for _ in 0..ROUNDS {
        // Published: the reply, then the event.
        let id = a.request("demo.ReplyThenNotify", b"x").await;
        let (first, _second) = (a.recv().await, a.recv().await);
        if first.request_id.as_deref() != Some(id.as_str()) {
            event_first += 1;
        }
        // Published: the server request, then the reply.
        let id = a.request("demo.AskThenReply", b"q").await;
        let (first, second) = (a.recv().await, a.recv().await);
        if first.request_id.as_deref() == Some(id.as_str()) {
            reply_first += 1;
        }
        let question = if first.message_type == Some(MessageType::Request as i32) { first } else { second };
        a.respond(question.request_id.as_deref().unwrap_or_default(), "demo.QuestionResponse", b"").await;
    }
    if event_first + reply_first > 0 {
        panic!(
            "the gateway reordered what the worker published under P.gw.G.: in {ROUNDS} rounds, \
             an event published after a reply reached the client first {event_first} times, \
             and a reply published after a server request reached it first {reply_first} times"
        );
    }
    worker.terminate(WAIT).await;
    a.close().await;
    gateway.terminate(Duration::from_secs(10)).await;
}
