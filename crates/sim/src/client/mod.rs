//! Scripted clients. They speak WebSocket by hand (clientmq_testkit::rawws), so they can
//! misbehave below any WebSocket library: skip close replies, ignore pings, reset, stall.

use std::time::Duration;

use clientmq_core::proto::{mq, pcast};
use clientmq_core::{Encoding, Frame, codec};
use clientmq_testkit::rawws::{self, RawFrame};
use prost::Message as _;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use turmoil::net::TcpStream;

mod members;

use crate::scenario::{Behaviour, ClientGroup};
use crate::trace::{Change, Seen, Trace};
use members::{heard, member, polite, status_of};

/// The port every gateway listens on.
const GATEWAY_PORT: u16 = 8080;

/// How a client treats what the server sends.
#[derive(Debug, Clone, Copy)]
struct Manners {
    answer_pings: bool,
    answer_close: bool,
}

const POLITE: Manners = Manners { answer_pings: true, answer_close: true };

/// Why [`Client::pump`] returned.
#[derive(Debug)]
enum Pump {
    Response(mq::Message),
    Deadline,
    /// The server's close frame arrived (and was answered or not, per manners).
    Closed(Option<u16>),
    Eof,
    Error,
}

/// One simulated client: its trace name, the trace, and when it stops answering pings.
#[derive(Clone)]
struct Who {
    name: String,
    trace: Trace,
    mute_at: Option<Instant>,
    /// The gateway hosts to connect to: the first, then the next on each reconnect.
    gateways: Vec<String>,
    connects: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Who {
    fn note(&self, what: impl Into<String>) {
        self.trace.client(&self.name, what);
    }

    /// Where the next connection goes (a load balancer's round robin over the group's gateways),
    /// and its number.
    fn next_gateway(&self) -> ((String, u16), u32) {
        let n = self.connects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ((self.gateways[n % self.gateways.len()].clone(), GATEWAY_PORT), n as u32)
    }
}

struct Client {
    who: Who,
    /// This connection's number among the client's connections.
    conn: u32,
    /// Its end was traced.
    over: bool,
    stream: TcpStream,
    manners: Manners,
    encoding: Encoding,
    next_request: u32,
    session_id: Option<String>,
    /// The code of the server's close frame, once one came.
    closed_with: Option<u16>,
}

/// Runs one client of `group` to the end of its script.
pub async fn run(group: ClientGroup, index: usize, trace: Trace, gateways: Vec<String>) {
    let mute_at = group.mute_after_secs.map(|s| Instant::now() + Duration::from_secs_f64(s));
    let name = format!("{}-{index}", group.name);
    let who = Who { name, trace, mute_at, gateways, connects: Default::default() };
    let who = &who;
    match group.behaviour {
        Behaviour::Polite => polite(who, &group).await,
        Behaviour::IgnoreClose => stay(who, Manners { answer_pings: true, answer_close: false }).await,
        Behaviour::MutePongs => stay(who, Manners { answer_pings: false, answer_close: true }).await,
        Behaviour::Vanish => stay(who, POLITE).await,
        Behaviour::Reset => reset(who).await,
        Behaviour::DoubleClose => double_close(who).await,
        Behaviour::Slowloris => slowloris(who).await,
        Behaviour::Garbage => garbage(who).await,
        Behaviour::Flood => flood(who, &group).await,
        Behaviour::SdkReconnect => sdk_reconnect(who).await,
        Behaviour::SlowReader => slow_reader(who).await,
        Behaviour::Member => member(who, &group, false).await,
        Behaviour::ByeMember => member(who, &group, true).await,
    }
}

impl Client {
    async fn connect(who: &Who, manners: Manners) -> Option<Client> {
        let (gateway, conn) = who.next_gateway();
        let mut stream = match TcpStream::connect(gateway.clone()).await {
            Ok(s) => s,
            Err(e) => {
                who.note(format!("connect-failed {}", e.kind()));
                return None;
            }
        };
        match rawws::upgrade(&mut stream, "/ws", &[]).await {
            Ok(101) => {}
            Ok(status) => {
                who.note(format!("upgrade-refused status={status}"));
                return None;
            }
            Err(e) => {
                who.note(format!("upgrade-failed {}", e.kind()));
                return None;
            }
        }
        who.trace.seen(&who.name, conn, Seen::Connected { gateway: gateway.0 });
        let encoding = Encoding::Base64Text;
        let who = who.clone();
        Some(Client {
            who,
            conn,
            over: false,
            stream,
            manners,
            encoding,
            next_request: 0,
            session_id: None,
            closed_with: None,
        })
    }

    fn note(&self, what: impl Into<String>) {
        self.who.note(what);
    }

    fn seen(&self, seen: Seen) {
        self.who.trace.seen(&self.who.name, self.conn, seen);
    }

    /// Traces the end of the connection as the client saw it; what it sees after that (an EOF
    /// after a close frame) is a note.
    fn over(&mut self, how: impl Into<String>) {
        if std::mem::replace(&mut self.over, true) {
            self.note(how);
        } else {
            self.seen(Seen::Ended(how.into()));
        }
    }

    async fn send_message(&mut self, msg: &mq::Message) -> bool {
        let (opcode, bytes) = match codec::encode(msg, self.encoding) {
            Frame::Text(t) => (rawws::TEXT, t.into_bytes()),
            Frame::Binary(b) => (rawws::BINARY, b),
        };
        rawws::write_frame(&mut self.stream, opcode, &bytes).await.is_ok()
    }

    /// Sends a request and returns its id.
    async fn request(&mut self, ty: &str, payload: Vec<u8>) -> String {
        let request_id = format!("C{}", self.next_request);
        self.next_request += 1;
        let msg = mq::Message {
            session_id: self.session_id.clone(),
            request_id: Some(request_id.clone()),
            r#type: ty.into(),
            payload,
            message_type: Some(mq::message::MessageType::Request as i32),
            ..Default::default()
        };
        if !self.send_message(&msg).await {
            self.note("send-failed");
        }
        request_id
    }

    /// Reads until `deadline`, a response to `wait_for`, or the end of the connection,
    /// answering pings, closes and server requests as its manners say.
    async fn pump(&mut self, deadline: Option<Instant>, wait_for: Option<&str>) -> Pump {
        loop {
            let read = rawws::read_frame(&mut self.stream);
            let frame = match deadline {
                Some(at) => match tokio::time::timeout_at(at, read).await {
                    Ok(r) => r,
                    Err(_) => return Pump::Deadline,
                },
                None => read.await,
            };
            let frame = match frame {
                Ok(Some(f)) => f,
                Ok(None) => return Pump::Eof,
                Err(_) => return Pump::Error,
            };
            if let Some(done) = self.on_frame(frame, wait_for).await {
                return done;
            }
        }
    }

    async fn on_frame(&mut self, frame: RawFrame, wait_for: Option<&str>) -> Option<Pump> {
        match frame.opcode {
            rawws::PING
                if self.manners.answer_pings && self.who.mute_at.is_none_or(|at| Instant::now() < at) =>
            {
                let _ = rawws::write_frame(&mut self.stream, rawws::PONG, &frame.payload).await;
            }
            rawws::CLOSE => {
                let code = frame.close_code();
                self.closed_with = self.closed_with.or(code);
                if self.manners.answer_close {
                    let _ = rawws::write_frame(&mut self.stream, rawws::CLOSE, &frame.payload).await;
                }
                return Some(Pump::Closed(code));
            }
            rawws::TEXT | rawws::BINARY => {
                let data = if frame.opcode == rawws::TEXT {
                    Frame::Text(String::from_utf8_lossy(&frame.payload).into_owned())
                } else {
                    Frame::Binary(frame.payload)
                };
                let Ok(msg) = codec::decode(&data, usize::MAX) else {
                    self.note("undecodable-frame");
                    return None;
                };
                return self.on_message(msg, wait_for).await;
            }
            _ => {}
        }
        None
    }

    async fn on_message(&mut self, msg: mq::Message, wait_for: Option<&str>) -> Option<Pump> {
        use mq::message::MessageType;
        match MessageType::try_from(msg.message_type.unwrap_or(0)) {
            Ok(MessageType::Request) => {
                // The SDK answers a server request of type X with XResponse.
                let answer = mq::Message {
                    request_id: msg.request_id.clone(),
                    r#type: format!("{}Response", msg.r#type),
                    payload: pcast::SendRequestToClientResponse { status: "ok".into(), ..Default::default() }
                        .encode_to_vec(),
                    message_type: Some(MessageType::Response as i32),
                    ..Default::default()
                };
                self.note(format!("server-request type={}", msg.r#type));
                self.send_message(&answer).await;
                None
            }
            Ok(MessageType::Event) => {
                match heard(&msg) {
                    Some(heard) => self.seen(Seen::Event(heard)),
                    None => self.note(format!("event type={}", msg.r#type)),
                }
                None
            }
            _ => {
                let rid = msg.request_id.clone().unwrap_or_default();
                let outcome = if msg.r#type == "mq.Error" {
                    let reason =
                        mq::Error::decode(msg.payload.as_slice()).map(|e| e.reason).unwrap_or_default();
                    format!("error={reason}")
                } else {
                    format!("type={}", msg.r#type)
                };
                self.note(format!("response id={rid} {outcome}"));
                (wait_for == Some(rid.as_str())).then_some(Pump::Response(msg))
            }
        }
    }

    /// Sends a request and waits for its answer (bounded: the gateway answers within 15 s).
    async fn call(&mut self, ty: &str, payload: Vec<u8>) -> Option<mq::Message> {
        let id = self.request(ty, payload).await;
        match self.pump(Some(Instant::now() + Duration::from_secs(30)), Some(&id)).await {
            Pump::Response(msg) => Some(msg),
            other => {
                self.ended(other);
                None
            }
        }
    }

    async fn authenticate(&mut self) -> bool {
        let auth = pcast::Authenticate {
            client_version: "2022.0.2".into(),
            device_id: self.who.name.clone(),
            platform: "sim".into(),
            platform_version: "1".into(),
            authentication_token: "sim-token".into(),
            session_id: self.session_id.clone(),
            ..Default::default()
        };
        if let Some(session) = &self.session_id {
            self.seen(Seen::Resume(session.clone()));
        }
        let Some(reply) = self.call("pcast.Authenticate", auth.encode_to_vec()).await else { return false };
        if let Ok(resp) = pcast::AuthenticateResponse::decode(reply.payload.as_slice())
            && resp.status == "ok"
        {
            self.session_id = resp.session_id;
            self.seen(Seen::Session(self.session_id.clone().unwrap_or_default()));
            return true;
        }
        false
    }

    /// Records how a pump ended: a server's close or the socket's end is the connection's end.
    fn ended(&mut self, how: Pump) {
        match how {
            Pump::Closed(Some(code)) => self.over(format!("closed-by-server code={code}")),
            Pump::Closed(None) => self.over("closed-by-server code=none"),
            Pump::Eof => self.over("eof"),
            Pump::Error => self.over("transport-error"),
            Pump::Deadline => self.note("deadline"),
            Pump::Response(_) => {}
        }
    }

    /// Gives the connection up without a close frame (its socket is dropped).
    fn abandon(mut self) {
        if !self.over {
            self.over("abandoned");
        }
    }

    /// Sends a request that changes what the session hears and waits for its answer; true if
    /// it was `ok`.
    async fn change(&mut self, change: Change, ty: &str, payload: Vec<u8>) -> Option<mq::Message> {
        self.seen(Seen::Asked(change.clone()));
        let reply = self.call(ty, payload).await?;
        if status_of(&reply).as_deref() == Some("ok") {
            self.seen(Seen::Done(change));
        }
        Some(reply)
    }

    /// Closes politely with `code` and waits for the server's answer.
    async fn close(mut self, code: u16) {
        let payload = rawws::close_payload(code, "bye");
        let _ = rawws::write_frame(&mut self.stream, rawws::CLOSE, &payload).await;
        self.note(format!("close-sent code={code}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.pump(Some(deadline), None).await {
                Pump::Closed(code) => self.note(format!("close-answered code={}", code.map_or(0, |c| c))),
                Pump::Response(_) => continue,
                other => {
                    self.ended(other);
                    return self.abandon();
                }
            }
        }
    }

    /// Keeps reading until the connection ends.
    async fn until_end(mut self) {
        loop {
            let how = self.pump(None, None).await;
            let closed = matches!(how, Pump::Closed(_));
            self.ended(how);
            if !closed {
                return;
            }
        }
    }
}

fn sleep_secs(secs: f64) -> tokio::time::Sleep {
    tokio::time::sleep(Duration::from_secs_f64(secs))
}

/// Connects, authenticates, and stays until the server ends it.
async fn stay(who: &Who, manners: Manners) {
    let Some(mut c) = Client::connect(who, manners).await else { return };
    if c.authenticate().await {
        c.until_end().await;
    }
}

async fn reset(who: &Who) {
    let Some(mut c) = Client::connect(who, POLITE).await else { return };
    c.request("chat.GetRoomInfo", Vec::new()).await;
    // Let the answer arrive unread: dropping a socket with unread data resets it.
    sleep_secs(0.5).await;
    c.note("reset");
}

async fn double_close(who: &Who) {
    let Some(mut c) = Client::connect(who, POLITE).await else { return };
    let payload = rawws::close_payload(1000, "bye");
    let _ = rawws::write_frame(&mut c.stream, rawws::CLOSE, &payload).await;
    let _ = rawws::write_frame(&mut c.stream, rawws::CLOSE, &payload).await;
    c.note("close-sent-twice");
    sleep_secs(1.0).await;
    let _ = c.stream.shutdown().await;
}

async fn slowloris(who: &Who) {
    let Ok(mut s) = TcpStream::connect(who.next_gateway().0).await else { return };
    let _ = s.write_all(b"GET /ws HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\n").await;
    who.note("upgrade-stalled");
    let mut buf = [0u8; 64];
    let read = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
    who.note(if matches!(read, Ok(0) | Err(_)) { "dropped-by-server" } else { "answered" });
}

async fn garbage(who: &Who) {
    let Some(mut c) = Client::connect(who, POLITE).await else { return };
    let junk: [(u8, &[u8]); 5] = [
        (rawws::TEXT, b"!!not-base64!!"),
        (rawws::BINARY, &[0xff, 0xff, 0xff, 0x01]),
        (rawws::TEXT, b"CgJDMBoA"), // base64 of a message cut short
        (rawws::BINARY, &[]),
        // A well-formed message of kind Event: clients may not send events.
        (rawws::BINARY, &[0x1a, 0x01, 0x78, 0x2a, 0x00, 0x38, 0x02]),
    ];
    for (opcode, bytes) in junk {
        let _ = rawws::write_frame(&mut c.stream, opcode, bytes).await;
    }
    c.note("garbage-sent");
    if c.authenticate().await {
        c.note("still-served");
        c.close(1000).await;
    }
}

async fn flood(who: &Who, group: &ClientGroup) {
    let Some(mut c) = Client::connect(who, POLITE).await else { return };
    let leave_at = Instant::now() + Duration::from_secs_f64(group.stay_secs);
    match c.pump(Some(leave_at), None).await {
        Pump::Deadline => c.close(1000).await,
        other => c.ended(other),
    }
}

async fn sdk_reconnect(who: &Who) {
    let mut session: Option<String> = None;
    let mut attempt = 0u32;
    loop {
        if attempt > 0 {
            if attempt > 4 {
                who.note("backoff-limit-reached");
                return;
            }
            who.note(format!("reconnect attempt={attempt}"));
            tokio::time::sleep(Duration::from_secs(u64::from(attempt * attempt))).await;
        }
        let Some(mut c) = Client::connect(who, POLITE).await else {
            attempt += 1;
            continue;
        };
        c.session_id = session.clone();
        if c.authenticate().await {
            attempt = 0;
            session = c.session_id.clone();
            c.note("authenticated");
        }
        let how = c.pump(None, None).await;
        let code = match how {
            Pump::Closed(code) => code,
            _ => None,
        };
        c.ended(how);
        // The SDK stops for good on 1000, 4000 and 4001; anything else means reconnect.
        if matches!(code, Some(1000 | 4000 | 4001)) {
            return;
        }
        attempt += 1;
    }
}

async fn slow_reader(who: &Who) {
    let Some(c) = Client::connect(who, POLITE).await else { return };
    c.note("stops-reading");
    // Hold the socket without reading until the gateway gives up on it.
    std::future::pending::<()>().await;
    drop(c);
}
