//! Fan-out to a large room through a real server and its embedded backend: a message published
//! while the gateway is still writing the previous one to the room goes out in the same write
//! to every socket not yet written, so each socket's write carries every frame in flight.
//!
//! On a current-thread runtime, so the order in which the shard, the backend's forwarder and the
//! clients run is the scheduler's alone, whatever the machine's load.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use clientmq_chat::ChatConfig;
use clientmq_core::proto::{chat, pcast};
use clientmq_server::{EmbeddedBackend, Listener, Server, ServerConfig};
use clientmq_testkit::client::Client;
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Members of the room: a message's pass over them takes many of the shard's turns.
const MEMBERS: usize = 1024;

/// Accepts TCP connections and counts the writes the server makes to all of them.
struct Counting {
    listener: TcpListener,
    writes: Arc<AtomicU64>,
}

struct CountingStream {
    inner: TcpStream,
    writes: Arc<AtomicU64>,
}

impl Listener for Counting {
    type Stream = CountingStream;

    async fn accept(&mut self) -> io::Result<(CountingStream, SocketAddr)> {
        let (inner, addr) = self.listener.accept().await?;
        inner.set_nodelay(true)?;
        Ok((CountingStream { inner, writes: self.writes.clone() }, addr))
    }
}

impl AsyncRead for CountingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn authenticate(client: &mut Client, device: &str) -> String {
    let auth = pcast::Authenticate {
        device_id: device.into(),
        authentication_token: "t".into(),
        ..Default::default()
    };
    let r: pcast::AuthenticateResponse = client.call_decoded("pcast.Authenticate", auth).await;
    assert_eq!(r.status, "ok");
    r.session_id.expect("a session")
}

/// Joins `session` to the room in `role`.
async fn join(client: &mut Client, room_id: &str, session: &str, role: chat::MemberRole) {
    let member = chat::Member {
        session_id: session.into(),
        screen_name: "m".into(),
        role: role as i32,
        ..Default::default()
    };
    let join = chat::JoinRoom {
        room_id: Some(room_id.into()),
        session_id: session.into(),
        member,
        ..Default::default()
    };
    let joined: chat::JoinRoomResponse = client.call_decoded("chat.JoinRoom", join).await;
    assert_eq!(joined.status, "ok");
}

/// Sends `text` to the room and waits for the answer.
async fn say(publisher: &mut Client, room_id: &str, text: &str) {
    let send = chat::SendMessageToRoom {
        room_id: room_id.into(),
        chat_message: chat::ChatMessage { message: text.into(), ..Default::default() },
    };
    let r: chat::SendMessageToRoomResponse = publisher.call_decoded("chat.SendMessageToRoom", send).await;
    assert_eq!(r.status, "ok");
}

/// The chat messages a member hears, in order, until it has heard `n`.
async fn hear(client: &mut Client, n: usize) -> Vec<String> {
    let mut heard = Vec::new();
    while heard.len() < n {
        let msg = client.recv().await;
        if msg.r#type == "chat.RoomConversationEvent" {
            let event = chat::RoomConversationEvent::decode(msg.payload.as_slice()).expect("an event");
            heard.extend(event.chat_messages.into_iter().map(|m| m.message));
        }
    }
    heard
}

#[tokio::test]
async fn a_message_published_mid_pass_shares_the_writes_of_the_sockets_not_yet_written() {
    // Every member comes from one address.
    let mut config =
        ServerConfig { shards: 1, seed: Some(7), max_connections_per_address: 0, ..ServerConfig::default() };
    config.gateway.tokens = clientmq_core::TokenPolicy::AcceptAny;
    let chat = ChatConfig { max_members_per_room: MEMBERS + 1, ..ChatConfig::default() };
    let backend = Arc::new(EmbeddedBackend::new(chat, Some(7)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let writes = Arc::new(AtomicU64::new(0));
    let server = Server::start(config, backend);
    let runner = server.clone();
    let counting = Counting { listener, writes: writes.clone() };
    tokio::spawn(async move { runner.run(counting).await });

    // The publisher makes a channel and presents in it; the members join as audience (a
    // channel announces no audience) and subscribe to its conversation.
    let mut publisher = Client::connect(addr).await.named("publisher");
    let session = authenticate(&mut publisher, "publisher").await;
    let room =
        chat::Room { name: "big".into(), r#type: chat::RoomType::Channel as i32, ..Default::default() };
    let created: chat::CreateRoomResponse = publisher
        .call_decoded("chat.CreateRoom", chat::CreateRoom { session_id: session.clone(), room })
        .await;
    let room_id = created.room.and_then(|r| r.room_id).expect("a room id");
    join(&mut publisher, &room_id, &session, chat::MemberRole::Presenter).await;
    let mut members = Vec::new();
    for n in 0..MEMBERS {
        let mut client = Client::connect(addr).await.named(&format!("member {n}"));
        let session = authenticate(&mut client, &format!("member-{n}")).await;
        join(&mut client, &room_id, &session, chat::MemberRole::Audience).await;
        let fetch = chat::FetchRoomConversation {
            session_id: session,
            room_id: room_id.clone(),
            options: vec![chat::RoomConversationOption::Subscribe as i32],
            ..Default::default()
        };
        let fetched: chat::FetchRoomConversationResponse =
            client.call_decoded("chat.FetchRoomConversation", fetch).await;
        assert_eq!(fetched.status, "ok");
        members.push(client);
    }

    // The second message goes out as soon as the first is answered: while the shard is still
    // writing the first to the room.
    let before = writes.load(Ordering::Relaxed);
    say(&mut publisher, &room_id, "first").await;
    say(&mut publisher, &room_id, "second").await;
    for client in &mut members {
        assert_eq!(hear(client, 2).await, ["first", "second"]);
    }
    let made = writes.load(Ordering::Relaxed) - before;

    // Written one message at a time, the room would take two writes a member. The second
    // message joins the first once the shard has read it and the backend has handed it over,
    // a few turns into the pass.
    let most = MEMBERS as u64 * 5 / 4;
    assert!(made <= most, "{made} writes for 2 messages to {MEMBERS} members (at most {most} expected)");
    assert!(made >= MEMBERS as u64, "{made} writes: fewer than one a member");
}
