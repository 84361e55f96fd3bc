//! The one MQ test client: raw WebSocket frames ([`crate::rawws`]) over any stream, so the same
//! client serves well-behaved checks and the ones that must misbehave. It speaks one encoding
//! (binary frames, or base64 text as the SDK does), answers the server's pings whenever it reads,
//! and keeps every message that arrives while it waits for an answer in [`Client::events`].

use std::time::Duration;

use clientmq_core::proto::mq::{self, message::MessageType};
use clientmq_core::{Encoding, Frame, codec};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::rawws::{self, RawFrame};

/// How long one wait for a message may take unless the test names another bound.
pub const WAIT: Duration = Duration::from_secs(5);

/// An MQ client on a WebSocket. See the module doc.
pub struct Client<S = TcpStream> {
    pub stream: S,
    encoding: Encoding,
    next_id: u32,
    /// Messages that arrived while the client waited for something else, in order.
    pub events: Vec<mq::Message>,
    /// Names the client in failure messages.
    name: String,
}

impl Client<TcpStream> {
    /// Connects to `ws://addr/ws` and upgrades, in binary frames.
    pub async fn connect(addr: impl tokio::net::ToSocketAddrs) -> Self {
        let stream = TcpStream::connect(addr).await.expect("the server accepts");
        Client::upgrade(stream, &[]).await.unwrap_or_else(|status| panic!("upgrade answered {status}"))
    }

    /// [`Client::connect`] to a loopback port, retrying for up to 5 s while a binary starts.
    pub async fn connect_when_up(port: u16) -> Self {
        for _ in 0..100 {
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)).await
                && let Ok(client) = Client::upgrade(stream, &[]).await
            {
                return client;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server on port {port} did not come up");
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Upgrades `stream` (`GET /ws` with `headers`); the HTTP status when it is not 101.
    pub async fn upgrade(mut stream: S, headers: &[(&str, &str)]) -> Result<Self, u16> {
        let upgrade = tokio::time::timeout(WAIT, rawws::upgrade(&mut stream, "/ws", headers)).await;
        match upgrade.expect("an upgrade answer in time") {
            Ok(101) => {}
            Ok(status) => return Err(status),
            Err(_) => return Err(0),
        }
        let name = "client".to_owned();
        Ok(Client { stream, encoding: Encoding::Binary, next_id: 0, events: Vec::new(), name })
    }

    /// Speaks `encoding` from now on (and expects answers in it).
    pub fn with_encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// Names the client in failure messages.
    pub fn named(mut self, name: &str) -> Self {
        name.clone_into(&mut self.name);
        self
    }

    /// Sends one message in the client's encoding.
    pub async fn send(&mut self, msg: &mq::Message) {
        let (opcode, payload) = match codec::encode(msg, self.encoding) {
            Frame::Text(text) => (rawws::TEXT, text.into_bytes()),
            Frame::Binary(bytes) => (rawws::BINARY, bytes),
        };
        if let Err(e) = rawws::write_frame(&mut self.stream, opcode, &payload).await {
            panic!("{}: send failed: {e}", self.name);
        }
    }

    /// Sends a request; returns its request id (`C0`, `C1`, ...).
    pub async fn request(&mut self, ty: &str, payload: Vec<u8>) -> String {
        let id = format!("C{}", self.next_id);
        self.next_id += 1;
        self.send(&mq::Message::request(&id, ty, payload)).await;
        id
    }

    /// Answers a server request.
    pub async fn respond(&mut self, request_id: &str, ty: &str, payload: Vec<u8>) {
        let msg = mq::Message {
            message_type: Some(MessageType::Response as i32),
            ..mq::Message::request(request_id, ty, payload)
        };
        self.send(&msg).await;
    }

    /// The next frame that is not a ping or pong (pings are answered), or `None` when nothing
    /// came within `within`. EOF is an `Err`.
    pub async fn next_frame_within(&mut self, within: Duration) -> Option<std::io::Result<Option<RawFrame>>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let read = tokio::time::timeout_at(deadline, rawws::read_frame(&mut self.stream)).await.ok()?;
            match read {
                Ok(Some(f)) if f.opcode == rawws::PING => {
                    let _ = rawws::write_frame(&mut self.stream, rawws::PONG, &f.payload).await;
                }
                Ok(Some(f)) if f.opcode == rawws::PONG => {}
                other => return Some(other),
            }
        }
    }

    /// The next message within `within`, or `None`. It must come in the client's encoding.
    pub async fn recv_within(&mut self, within: Duration) -> Option<mq::Message> {
        let frame = match self.next_frame_within(within).await? {
            Ok(Some(frame)) => frame,
            Ok(None) => panic!("{}: EOF while waiting for a message", self.name),
            Err(e) => panic!("{}: {e} while waiting for a message", self.name),
        };
        let frame = match (frame.opcode, self.encoding) {
            (rawws::BINARY, Encoding::Binary) => Frame::Binary(frame.payload),
            (rawws::TEXT, Encoding::Base64Text) => match String::from_utf8(frame.payload) {
                Ok(text) => Frame::Text(text),
                Err(e) => panic!("{}: a text frame that is not UTF-8: {e}", self.name),
            },
            (rawws::CLOSE, _) => {
                panic!("{}: closed ({:?}) while waiting for a message", self.name, frame.close_code())
            }
            (opcode, encoding) => panic!("{}: opcode {opcode} while speaking {encoding:?}", self.name),
        };
        match codec::decode(&frame, usize::MAX) {
            Ok(msg) => Some(msg),
            Err(e) => panic!("{}: undecodable frame {frame:?}: {e}", self.name),
        }
    }

    /// The next message, within [`WAIT`].
    pub async fn recv(&mut self) -> mq::Message {
        match self.recv_within(WAIT).await {
            Some(msg) => msg,
            None => panic!("{}: nothing arrived within {WAIT:?}", self.name),
        }
    }

    /// Waits (within `within`) for the answer to request `id`, keeping whatever comes first in
    /// [`Client::events`].
    pub async fn answer_within(&mut self, id: &str, within: Duration) -> mq::Message {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(msg) = self.recv_within(left).await else {
                panic!("{}: no answer to {id} within {within:?}", self.name)
            };
            if msg.request_id.as_deref() == Some(id) && msg.message_type != Some(MessageType::Request as i32)
            {
                return msg;
            }
            self.events.push(msg);
        }
    }

    /// A request and its answer (a response or an `mq.Error`), within [`WAIT`].
    pub async fn call(&mut self, ty: &str, payload: Vec<u8>) -> mq::Message {
        let id = self.request(ty, payload).await;
        self.answer_within(&id, WAIT).await
    }

    /// [`Client::call`] with a typed request, decoding its `<ty>Response`.
    pub async fn call_decoded<R: prost::Message + Default>(
        &mut self,
        ty: &str,
        req: impl prost::Message,
    ) -> R {
        let reply = self.call(ty, req.encode_to_vec()).await;
        assert_eq!(reply.r#type, format!("{ty}Response"), "{}: {reply:?}", self.name);
        R::decode(reply.payload.as_slice()).expect("a decodable response")
    }

    /// Sends a close frame with `code`.
    pub async fn close(&mut self, code: u16, reason: &str) {
        let _ = rawws::write_frame(&mut self.stream, rawws::CLOSE, &rawws::close_payload(code, reason)).await;
    }
}
