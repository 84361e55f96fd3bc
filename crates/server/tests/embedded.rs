//! The embedded backend behind a real server: requests over the wire, and the gateway's
//! subscription tables agreeing with the backend's membership whichever way a connection ends,
//! says Bye, or hands its session to another connection.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clientmq_chat::ChatConfig;
use clientmq_core::proto::{chat, mq, pcast};
use clientmq_core::{Encoding, Frame, codec};
use clientmq_server::{EmbeddedBackend, Server, ServerConfig};
use clientmq_testkit::client::Client as TestClient;
use clientmq_testkit::deadline::eventually;
use common::metric;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const MS: Duration = Duration::from_millis(1);
/// How long a test waits for the server to reach a state.
const WAIT: Duration = Duration::from_secs(5);
const GRACE: Duration = Duration::from_millis(800);

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;
type MqType = mq::message::MessageType;

async fn start(heartbeat: Duration) -> (Server, Arc<EmbeddedBackend>, SocketAddr) {
    start_with(heartbeat, GRACE).await
}

async fn start_with(heartbeat: Duration, grace: Duration) -> (Server, Arc<EmbeddedBackend>, SocketAddr) {
    let mut config = ServerConfig { shards: 2, seed: Some(7), ..ServerConfig::default() };
    config.gateway.heartbeat_interval = heartbeat;
    config.gateway.close_timeout = 300 * MS;
    config.gateway.drain_window = 100 * MS;
    config.gateway.tokens = clientmq_core::TokenPolicy::AcceptAny;
    let chat = ChatConfig { session_grace: grace, ..ChatConfig::default() };
    let backend = Arc::new(EmbeddedBackend::new(chat, Some(7)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::start(config, backend.clone());
    let runner = server.clone();
    tokio::spawn(async move { runner.run(listener).await });
    (server, backend, addr)
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

fn auth_as(session: &str) -> pcast::Authenticate {
    pcast::Authenticate { session_id: Some(session.into()), ..auth("t") }
}

fn rename(room_id: &str, name: &str) -> chat::UpdateMember {
    let member = chat::MemberUpdate { screen_name: Some(name.into()), ..Default::default() };
    chat::UpdateMember { room_id: Some(room_id.into()), member, ..Default::default() }
}

fn say(room_id: &str, text: &str) -> chat::SendMessageToRoom {
    let chat_message = chat::ChatMessage { message: text.into(), ..Default::default() };
    chat::SendMessageToRoom { room_id: room_id.into(), chat_message }
}

/// A room or conversation event as (room, what): `MemberUpdated <names>` or `message <texts>`.
fn describe(msg: &mq::Message) -> Option<(String, String)> {
    let names = |ms: &[chat::Member]| ms.iter().map(|m| m.screen_name.clone()).collect::<Vec<_>>().join(",");
    match msg.r#type.as_str() {
        "chat.RoomEvent" => {
            let e = chat::RoomEvent::decode(msg.payload.as_slice()).unwrap();
            let kind = chat::RoomEventType::try_from(e.event_type).unwrap();
            Some((e.room_id, format!("{kind:?} {}", names(&e.members))))
        }
        "chat.RoomConversationEvent" => {
            let e = chat::RoomConversationEvent::decode(msg.payload.as_slice()).unwrap();
            let texts: Vec<String> = e.chat_messages.into_iter().map(|m| m.message).collect();
            Some((e.room_id, format!("message {}", texts.join(","))))
        }
        _ => None,
    }
}

/// What `events` said about `room`, in order.
fn heard(events: &[mq::Message], room: &str) -> Vec<String> {
    events.iter().filter_map(describe).filter(|(r, _)| r == room).map(|(_, what)| what).collect()
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
    /// Every event received, kept.
    log: Vec<mq::Message>,
    session: Option<String>,
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
        Client { tx, rx, reader, next: 0, events: Vec::new(), log: Vec::new(), session: None }
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
        let Frame::Text(text) = codec::encode(&mq::Message::request(&id, ty, payload), Encoding::Base64Text)
        else {
            unreachable!()
        };
        self.tx.send(Message::Text(text.into())).await.unwrap();
        loop {
            let Message::Text(t) = self.recv().await else { panic!("closed while waiting for {ty}") };
            let msg = codec::decode(&Frame::Text(t.to_string()), usize::MAX).unwrap();
            match msg.message_type.and_then(|t| MqType::try_from(t).ok()) {
                Some(MqType::Response) if msg.request_id.as_deref() == Some(id.as_str()) => return msg,
                _ => self.received(msg),
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
            self.received(codec::decode(&Frame::Text(t.to_string()), usize::MAX).unwrap());
        }
    }

    fn received(&mut self, msg: mq::Message) {
        self.log.push(msg.clone());
        self.events.push(msg);
    }

    /// Authenticates as a new session.
    async fn authenticate(&mut self) -> String {
        let resp: pcast::AuthenticateResponse = self.call("pcast.Authenticate", auth("t")).await;
        assert_eq!(resp.status, "ok");
        self.session = resp.session_id;
        self.session.clone().unwrap()
    }

    /// Creates a room. Returns its id.
    async fn new_room(&mut self, name: &str) -> String {
        let room = chat::Room { name: name.into(), description: "d".into(), ..Default::default() };
        let create = chat::CreateRoom { room, ..Default::default() };
        self.call::<chat::CreateRoomResponse>("chat.CreateRoom", create).await.room.unwrap().room_id.unwrap()
    }

    /// Authenticates unless it has, joins `room_id` and subscribes to its conversation. Returns
    /// the session.
    async fn member_of(&mut self, room_id: &str, name: &str) -> String {
        let session = match self.session.clone() {
            Some(session) => session,
            None => self.authenticate().await,
        };
        let joined: chat::JoinRoomResponse = self.call("chat.JoinRoom", join(room_id, name)).await;
        assert_eq!(joined.status, "ok");
        let fetched: chat::FetchRoomConversationResponse =
            self.call("chat.FetchRoomConversation", subscribe(room_id)).await;
        assert_eq!(fetched.status, "ok");
        session
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A client below the WebSocket library, to end a connection by reset or by going mute.
struct Raw(TestClient);

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw(TestClient::connect(addr).await)
    }

    /// Sends a binary request and waits for its answer, keeping the events that come first.
    async fn call<R: prost::Message + Default>(&mut self, ty: &str, req: impl prost::Message) -> R {
        self.0.call_decoded(ty, req).await
    }

    /// Waits until this connection has heard `what` about `room`.
    async fn hears(&mut self, room: &str, what: &str) {
        while !heard(&self.0.events, room).iter().any(|w| w == what) {
            let msg = self.0.recv().await;
            self.0.events.push(msg);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_and_unsupported_requests_get_mq_errors() {
    clientmq_testkit::deadline::bounded(async {
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
        // A latency probe is echoed without a session.
        let probe = mq::PingPong { origin_timestamp: 7, count: Some(1) }.encode_to_vec();
        let pong = c.request("mq.PingPong", probe.clone()).await;
        assert_eq!((pong.r#type.as_str(), &pong.payload), ("mq.PingPongResponse", &probe));
        assert_eq!(reason(&c.request("pcast.SetupStream", vec![]).await), "unauthorized");
        let refused: pcast::AuthenticateResponse = c.call("pcast.Authenticate", auth("")).await;
        assert_eq!(refused.status, "unauthorized");
        let ok: pcast::AuthenticateResponse = c.call("pcast.Authenticate", auth("any")).await;
        assert_eq!(ok.status, "ok");
        assert_eq!(reason(&c.request("pcast.SetupStream", vec![]).await), "unsupported");
        let created: chat::CreateRoomResponse = c.call("chat.CreateRoom", create).await;
        assert_eq!(created.status, "ok");
    })
    .await
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
                r.0.stream.set_linger(Some(Duration::ZERO)).unwrap();
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
    clientmq_testkit::deadline::bounded(async {
        let (server, backend, addr) = start(150 * MS).await;
        let mut observer = Client::connect(addr).await;
        observer.authenticate().await;
        let room_id = observer.new_room("lobby").await;
        let observer_session = observer.member_of(&room_id, "observer").await;
        eventually(WAIT, "the observer's two subscriptions", || {
            metric(&server, "clientmq_subscriptions") == 2.0
        })
        .await;

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
            eventually(WAIT, "both members subscribed", || metric(&server, "clientmq_subscriptions") == 4.0)
                .await;
            assert_eq!(backend.members(&room_id).len(), 2);

            let _ending = tokio::spawn(victim.end(end));
            eventually(WAIT, "the gateway to drop the connection", || server.open_connections() == 1).await;
            eventually(WAIT, "the gateway to drop its subscriptions", || {
                metric(&server, "clientmq_subscriptions") == 2.0
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
            assert_eq!(metric(&server, series), count, "{series}");
        }

        // Drain ends the observer too: nothing is left once its grace period is over.
        server.drain().await;
        eventually(WAIT, "every connection drained", || server.open_connections() == 0).await;
        assert_eq!(metric(&server, "clientmq_subscriptions"), 0.0);
        eventually(WAIT, "every session over", || backend.stats().sessions == 0).await;
        let stats = backend.stats();
        assert_eq!((stats.members, stats.connections), (0, 0), "{stats:?}");
        backend.check_invariants().unwrap();
        assert_eq!(backend.dropped_deliveries(), 0);
    })
    .await
}

/// Waits until the gateway holds `n` room and conversation subscriptions over all connections.
async fn subscriptions(server: &Server, n: f64) {
    eventually(WAIT, &format!("{n} subscriptions"), || metric(server, "clientmq_subscriptions") == n).await;
}

/// The backend's queue to the gateway is ordered: once `barrier` hears a room event produced
/// after some others, anything of those others meant for it has arrived too. It starts over in a
/// room of its own, which `other` (who must be authenticated) then joins.
async fn hear_everything_so_far(barrier: &mut Client, other: &mut Client, other_session: &str) {
    barrier.authenticate().await;
    let room = barrier.new_room("barrier").await;
    let joined: chat::JoinRoomResponse = barrier.call("chat.JoinRoom", join(&room, "barrier")).await;
    assert_eq!(joined.status, "ok");
    let joined: chat::JoinRoomResponse = other.call("chat.JoinRoom", join(&room, "other")).await;
    assert_eq!(joined.status, "ok");
    barrier.room_event(chat::RoomEventType::MemberJoined, other_session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_bye_the_connection_hears_nothing_more_from_its_rooms() {
    clientmq_testkit::deadline::bounded(async {
        let (server, _backend, addr) = start(Duration::from_secs(30)).await;
        let mut observer = Client::connect(addr).await;
        observer.authenticate().await;
        let room = observer.new_room("lobby").await;
        let observer_session = observer.member_of(&room, "observer").await;
        let mut victim = Client::connect(addr).await;
        let victim_session = victim.member_of(&room, "victim").await;
        observer.room_event(chat::RoomEventType::MemberJoined, &victim_session).await;
        subscriptions(&server, 4.0).await;

        let bye = pcast::Bye { session_id: victim_session.clone(), reason: "done".into() };
        assert_eq!(victim.call::<pcast::ByeResponse>("pcast.Bye", bye).await.status, "ok");
        subscriptions(&server, 2.0).await;
        observer.room_event(chat::RoomEventType::MemberLeft, &victim_session).await;
        // The room carries on without it.
        let renamed: chat::UpdateMemberResponse =
            observer.call("chat.UpdateMember", rename(&room, "renamed")).await;
        assert_eq!(renamed.status, "ok");
        let said: chat::SendMessageToRoomResponse =
            observer.call("chat.SendMessageToRoom", say(&room, "hi")).await;
        assert_eq!(said.status, "ok");

        hear_everything_so_far(&mut victim, &mut observer, &observer_session).await;
        // Its own join may have reached it before its Bye; nothing after it did, not even its leaving.
        let heard = heard(&victim.log, &room);
        assert!(heard.iter().all(|w| w == "MemberJoined victim"), "{heard:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generic_client_resuming_its_session_hears_its_rooms_without_joining_again() {
    clientmq_testkit::deadline::bounded(async {
        // A grace period no slow test machine outlasts: this test resumes, it does not expire.
        let (server, backend, addr) = start_with(Duration::from_secs(30), Duration::from_secs(60)).await;
        let mut observer = Client::connect(addr).await;
        observer.authenticate().await;
        let room = observer.new_room("lobby").await;
        observer.member_of(&room, "observer").await;
        let mut first = Raw::connect(addr).await;
        let session = first.member_of(&room, "raw").await;
        observer.room_event(chat::RoomEventType::MemberJoined, &session).await;
        subscriptions(&server, 4.0).await;

        drop(first);
        eventually(WAIT, "the backend to see the connection end", || backend.stats().detached == 1).await;
        subscriptions(&server, 2.0).await;
        // Resumed on a new connection that only authenticates: its room and conversation come back.
        let mut second = Raw::connect(addr).await;
        let resumed: pcast::AuthenticateResponse = second.call("pcast.Authenticate", auth_as(&session)).await;
        assert_eq!(resumed.session_id.as_deref(), Some(session.as_str()));
        subscriptions(&server, 4.0).await;
        let renamed: chat::UpdateMemberResponse =
            observer.call("chat.UpdateMember", rename(&room, "back")).await;
        assert_eq!(renamed.status, "ok");
        observer
            .call::<chat::SendMessageToRoomResponse>("chat.SendMessageToRoom", say(&room, "welcome"))
            .await;
        second.hears(&room, "MemberUpdated back").await;
        second.hears(&room, "message welcome").await;
        second.0.events.clear();

        // Taken over by a third connection while the second is still open: the room follows.
        let mut third = Raw::connect(addr).await;
        let took: pcast::AuthenticateResponse = third.call("pcast.Authenticate", auth_as(&session)).await;
        assert_eq!(took.session_id.as_deref(), Some(session.as_str()));
        observer.call::<chat::SendMessageToRoomResponse>("chat.SendMessageToRoom", say(&room, "moved")).await;
        third.hears(&room, "message moved").await;
        let stats = backend.stats();
        assert_eq!((stats.sessions, stats.connections, stats.detached), (2, 2, 0), "{stats:?}");

        // The second hears nothing of the room since: checked behind a barrier event, as above but
        // on a raw connection.
        let barrier = second.call::<pcast::AuthenticateResponse>("pcast.Authenticate", auth("t")).await;
        assert_eq!(barrier.status, "ok");
        let create = chat::CreateRoom {
            room: chat::Room { name: "barrier".into(), ..Default::default() },
            ..Default::default()
        };
        let barrier_room =
            second.call::<chat::CreateRoomResponse>("chat.CreateRoom", create).await.room.unwrap();
        let barrier_room = barrier_room.room_id.unwrap();
        second.call::<chat::JoinRoomResponse>("chat.JoinRoom", join(&barrier_room, "second")).await;
        observer.call::<chat::JoinRoomResponse>("chat.JoinRoom", join(&barrier_room, "observer")).await;
        second.hears(&barrier_room, "MemberJoined observer").await;
        assert_eq!(heard(&second.0.events, &room), Vec::<String>::new());
        backend.check_invariants().unwrap();
    })
    .await
}
