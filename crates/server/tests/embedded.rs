//! The embedded backend behind a real server: requests over the wire, and the gateway's
//! subscription tables agreeing with the backend's membership whichever way a connection ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clientmq_core::proto::{chat, mq, pcast};
use clientmq_core::{Encoding, Frame, codec};
use clientmq_server::chat::{ChatConfig, TokenPolicy};
use clientmq_server::rawws::{self, RawFrame};
use clientmq_server::{EmbeddedBackend, Server, ServerConfig};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const MS: Duration = Duration::from_millis(1);
const GRACE: Duration = Duration::from_millis(800);

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;
type MqType = mq::message::MessageType;

async fn start(heartbeat: Duration) -> (Server, Arc<EmbeddedBackend>, SocketAddr) {
    let mut config = ServerConfig { shards: 2, seed: Some(7), ..ServerConfig::default() };
    config.gateway.heartbeat_interval = heartbeat;
    config.gateway.close_timeout = 300 * MS;
    config.gateway.drain_window = 100 * MS;
    let chat = ChatConfig { tokens: TokenPolicy::AcceptAny, session_grace: GRACE, ..ChatConfig::default() };
    let backend = Arc::new(EmbeddedBackend::new(chat, Some(7)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::start(config, backend.clone());
    let runner = server.clone();
    tokio::spawn(async move { runner.run(listener).await });
    (server, backend, addr)
}

fn request(id: &str, ty: &str, payload: Vec<u8>) -> mq::Message {
    mq::Message {
        request_id: Some(id.into()),
        r#type: ty.into(),
        payload,
        message_type: Some(MqType::Request as i32),
        ..Default::default()
    }
}

fn decode_response<R: prost::Message + Default>(ty: &str, msg: &mq::Message) -> R {
    assert_eq!(msg.r#type, format!("{ty}Response"), "{msg:?}");
    R::decode(msg.payload.as_slice()).unwrap()
}

fn auth(token: &str) -> pcast::Authenticate {
    pcast::Authenticate { authentication_token: token.into(), ..Default::default() }
}

fn join(room_id: &str, name: &str) -> chat::JoinRoom {
    let member = chat::Member { screen_name: name.into(), ..Default::default() };
    chat::JoinRoom { room_id: Some(room_id.into()), member, ..Default::default() }
}

fn subscribe(room_id: &str) -> chat::FetchRoomConversation {
    let options = vec![chat::RoomConversationOption::Subscribe as i32];
    chat::FetchRoomConversation { room_id: room_id.into(), limit: 10, options, ..Default::default() }
}

/// A well-behaved client in the SDK's encoding (base64 text). A reader task keeps reading, so
/// tungstenite answers the server's pings.
struct Client {
    tx: SplitSink<Ws, Message>,
    rx: mpsc::UnboundedReceiver<Message>,
    reader: tokio::task::JoinHandle<()>,
    next: u32,
    events: Vec<mq::Message>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let ws = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.unwrap().0;
        let (tx, mut stream) = ws.split();
        let (got, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                if matches!(m, Message::Text(_) | Message::Binary(_) | Message::Close(_)) {
                    let _ = got.send(m);
                }
            }
        });
        Client { tx, rx, reader, next: 0, events: Vec::new() }
    }

    async fn recv(&mut self) -> Message {
        tokio::time::timeout(Duration::from_secs(3), self.rx.recv())
            .await
            .expect("a message in time")
            .unwrap()
    }

    async fn request(&mut self, ty: &str, payload: Vec<u8>) -> mq::Message {
        let id = format!("C{}", self.next);
        self.next += 1;
        let Frame::Text(text) = codec::encode(&request(&id, ty, payload), Encoding::Base64Text) else {
            unreachable!()
        };
        self.tx.send(Message::Text(text.into())).await.unwrap();
        loop {
            let Message::Text(t) = self.recv().await else { panic!("closed while waiting for {ty}") };
            let msg = codec::decode(&Frame::Text(t.to_string()), usize::MAX).unwrap();
            match msg.message_type.and_then(|t| MqType::try_from(t).ok()) {
                Some(MqType::Response) if msg.request_id.as_deref() == Some(id.as_str()) => return msg,
                _ => self.events.push(msg),
            }
        }
    }

    async fn call<R: prost::Message + Default>(&mut self, ty: &str, req: impl prost::Message) -> R {
        let reply = self.request(ty, req.encode_to_vec()).await;
        decode_response(ty, &reply)
    }

    /// Waits for a room event of `kind` about `session`, skipping others (the client may see its
    /// own join: the gateway can subscribe it before the event goes out).
    async fn room_event(&mut self, kind: chat::RoomEventType, session: &str) {
        loop {
            if let Some(i) = self.events.iter().position(|e| e.r#type == "chat.RoomEvent") {
                let event = chat::RoomEvent::decode(self.events.remove(i).payload.as_slice()).unwrap();
                if event.event_type == kind as i32 && event.members.iter().any(|m| m.session_id == session) {
                    return;
                }
                continue;
            }
            let Message::Text(t) = self.recv().await else { panic!("closed while waiting for {kind:?}") };
            self.events.push(codec::decode(&Frame::Text(t.to_string()), usize::MAX).unwrap());
        }
    }

    /// Authenticates, joins `room_id` and subscribes to its conversation. Returns the session.
    async fn member_of(&mut self, room_id: &str, name: &str) -> String {
        let session =
            self.call::<pcast::AuthenticateResponse>("pcast.Authenticate", auth("t")).await.session_id;
        let joined: chat::JoinRoomResponse = self.call("chat.JoinRoom", join(room_id, name)).await;
        assert_eq!(joined.status, "ok");
        let fetched: chat::FetchRoomConversationResponse =
            self.call("chat.FetchRoomConversation", subscribe(room_id)).await;
        assert_eq!(fetched.status, "ok");
        session.unwrap()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A client below the WebSocket library, to end a connection by reset or by going mute.
struct Raw {
    s: TcpStream,
    next: u32,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert_eq!(rawws::upgrade(&mut s, "/ws", &[]).await.unwrap(), 101);
        Raw { s, next: 0 }
    }

    /// Sends a binary request and waits for its answer, answering pings meanwhile.
    async fn call<R: prost::Message + Default>(&mut self, ty: &str, req: impl prost::Message) -> R {
        let id = format!("C{}", self.next);
        self.next += 1;
        let msg = request(&id, ty, req.encode_to_vec()).encode_to_vec();
        rawws::write_frame(&mut self.s, rawws::BINARY, &msg).await.unwrap();
        loop {
            let read = tokio::time::timeout(Duration::from_secs(3), rawws::read_frame(&mut self.s)).await;
            let frame: RawFrame = read.expect("a frame in time").unwrap().expect("not EOF");
            match frame.opcode {
                rawws::PING => rawws::write_frame(&mut self.s, rawws::PONG, &frame.payload).await.unwrap(),
                rawws::BINARY => {
                    let msg = codec::decode(&Frame::Binary(frame.payload), usize::MAX).unwrap();
                    if msg.request_id.as_deref() == Some(id.as_str()) {
                        return decode_response(ty, &msg);
                    }
                }
                other => panic!("unexpected opcode {other}"),
            }
        }
    }

    async fn member_of(&mut self, room_id: &str, name: &str) -> String {
        let session =
            self.call::<pcast::AuthenticateResponse>("pcast.Authenticate", auth("t")).await.session_id;
        assert_eq!(
            self.call::<chat::JoinRoomResponse>("chat.JoinRoom", join(room_id, name)).await.status,
            "ok"
        );
        let fetched: chat::FetchRoomConversationResponse =
            self.call("chat.FetchRoomConversation", subscribe(room_id)).await;
        assert_eq!(fetched.status, "ok");
        session.unwrap()
    }
}

fn gauge(server: &Server, name: &str) -> f64 {
    let text = server.metrics_text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(f64::NAN, |v| v.trim().parse().unwrap())
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(10 * MS).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_and_unsupported_requests_get_mq_errors() {
    let (_server, _backend, addr) = start(Duration::from_secs(30)).await;
    let mut c = Client::connect(addr).await;
    let reason = |m: &mq::Message| {
        assert_eq!(m.r#type, "mq.Error");
        mq::Error::decode(m.payload.as_slice()).unwrap().reason
    };
    let create = chat::CreateRoom {
        room: chat::Room { name: "r".into(), ..Default::default() },
        ..Default::default()
    };
    assert_eq!(reason(&c.request("chat.CreateRoom", create.encode_to_vec()).await), "unauthorized");
    assert_eq!(reason(&c.request("pcast.SetupStream", vec![]).await), "unauthorized");
    let refused: pcast::AuthenticateResponse = c.call("pcast.Authenticate", auth("")).await;
    assert_eq!(refused.status, "unauthorized");
    let ok: pcast::AuthenticateResponse = c.call("pcast.Authenticate", auth("any")).await;
    assert_eq!(ok.status, "ok");
    assert_eq!(reason(&c.request("pcast.SetupStream", vec![]).await), "unsupported");
    let created: chat::CreateRoomResponse = c.call("chat.CreateRoom", create).await;
    assert_eq!(created.status, "ok");
}

/// How a member's connection ends.
#[derive(Debug, Clone, Copy)]
enum End {
    /// A close frame from the client.
    ClientClose,
    /// The socket closed without a close frame.
    Eof,
    /// The socket reset.
    Reset,
    /// The client stops answering pings: the server closes with 3334, then aborts.
    HeartbeatTimeout,
}

enum Victim {
    Ws(Client),
    Raw(Raw),
}

impl Victim {
    async fn end(self, end: End) {
        match (self, end) {
            (Victim::Ws(mut c), End::ClientClose) => {
                c.tx.send(Message::Close(None)).await.unwrap();
                while !matches!(c.recv().await, Message::Close(_)) {}
            }
            (Victim::Ws(c), End::Eof) => drop(c),
            (Victim::Raw(r), End::Reset) => {
                // Linger 0 makes the drop send a reset; it does not block.
                #[allow(deprecated)]
                r.s.set_linger(Some(Duration::ZERO)).unwrap();
                drop(r);
            }
            // Mute: read nothing, answer nothing, until the server gives up on it.
            (Victim::Raw(_r), End::HeartbeatTimeout) => tokio::time::sleep(Duration::from_secs(3)).await,
            (_, end) => unreachable!("{end:?} is set up with the other client"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_a_connection_ends_leaves_no_subscription_or_member_behind() {
    let (server, backend, addr) = start(150 * MS).await;
    let mut observer = Client::connect(addr).await;
    observer.call::<pcast::AuthenticateResponse>("pcast.Authenticate", auth("t")).await;
    let create = chat::CreateRoom {
        room: chat::Room { name: "lobby".into(), description: "d".into(), ..Default::default() },
        ..Default::default()
    };
    let room_id =
        observer.call::<chat::CreateRoomResponse>("chat.CreateRoom", create).await.room.unwrap().room_id;
    let room_id = room_id.unwrap();
    let observer_session = observer.member_of(&room_id, "observer").await;
    eventually("the observer's two subscriptions", || gauge(&server, "clientmq_subscriptions") == 2.0).await;

    for end in [End::ClientClose, End::Eof, End::Reset, End::HeartbeatTimeout] {
        let (victim, session) = match end {
            End::ClientClose | End::Eof => {
                let mut c = Client::connect(addr).await;
                let session = c.member_of(&room_id, "victim").await;
                (Victim::Ws(c), session)
            }
            End::Reset | End::HeartbeatTimeout => {
                let mut r = Raw::connect(addr).await;
                let session = r.member_of(&room_id, "victim").await;
                (Victim::Raw(r), session)
            }
        };
        observer.room_event(chat::RoomEventType::MemberJoined, &session).await;
        eventually("both members subscribed", || gauge(&server, "clientmq_subscriptions") == 4.0).await;
        assert_eq!(backend.members(&room_id).len(), 2);

        let _ending = tokio::spawn(victim.end(end));
        eventually("the gateway to drop the connection", || server.open_connections() == 1).await;
        eventually("the gateway to drop its subscriptions", || {
            gauge(&server, "clientmq_subscriptions") == 2.0
        })
        .await;
        assert!(
            backend.members(&room_id).contains(&session),
            "{end:?}: membership outlives the connection by the grace period"
        );
        observer.room_event(chat::RoomEventType::MemberLeft, &session).await;
        assert_eq!(backend.members(&room_id), vec![observer_session.clone()], "{end:?}");
        let stats = backend.stats();
        assert_eq!((stats.sessions, stats.connections, stats.detached), (1, 1, 0), "{end:?}: {stats:?}");
        backend.check_invariants().unwrap();
    }

    // Each end really took its own path through the gateway.
    for (series, count) in [
        (r#"clientmq_disconnects_total{path="client",code="1005"}"#, 1.0),
        (r#"clientmq_disconnects_total{path="lost",code="1006"}"#, 2.0),
        (r#"clientmq_disconnects_total{path="forced",code="3334"}"#, 1.0),
    ] {
        assert_eq!(gauge(&server, series), count, "{series}");
    }

    // Drain ends the observer too: nothing is left once its grace period is over.
    server.drain().await;
    eventually("every connection drained", || server.open_connections() == 0).await;
    assert_eq!(gauge(&server, "clientmq_subscriptions"), 0.0);
    eventually("every session over", || backend.stats().sessions == 0).await;
    let stats = backend.stats();
    assert_eq!((stats.members, stats.connections), (0, 0), "{stats:?}");
    backend.check_invariants().unwrap();
    assert_eq!(backend.dropped_deliveries(), 0);
}
