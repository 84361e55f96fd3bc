//! What request mode sends: `mq.PingPong` (no session, no state), or the SDK's chat requests
//! on a room of the connection's own.
//!
//! - [`Work::ChatSend`]: the connection authenticates, creates a room (an alias unique to the run
//!   and connection: rooms outlive a run in the store), joins it and subscribes to its
//!   conversation; then each request is `chat.SendMessageToRoom` to it. The sender hears its
//!   own message as an event.
//! - [`Work::ChatJoin`]: the same room, created and joined; then requests alternate
//!   `chat.LeaveRoom` and `chat.JoinRoom` (a member after setup, so a leave comes first). The
//!   member hears its own arrival as an event.
//!
//! Events (no request id, or type Event) are skipped while waiting for an answer; an answer
//! whose status is not `ok` is a refusal, by status, like an `mq.Error`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use clientmq_core::codec::{self, Frame};
use clientmq_core::proto::{chat, mq};
use prost::Message as _;

use crate::fanout::client;
use crate::frame::{self, Answer};
use crate::target::Ws;

const SEND: &str = "chat.SendMessageToRoom";
const JOIN: &str = "chat.JoinRoom";
const LEAVE: &str = "chat.LeaveRoom";

/// The requests a run sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Work {
    /// `mq.PingPong`, answered without a session or shared state.
    #[default]
    Ping,
    /// `chat.SendMessageToRoom` to a room of the connection's own.
    ChatSend,
    /// `chat.LeaveRoom` and `chat.JoinRoom` in turn, on a room of the connection's own.
    ChatJoin,
}

impl Work {
    pub fn name(self) -> &'static str {
        match self {
            Work::Ping => "ping",
            Work::ChatSend => "chat send",
            Work::ChatJoin => "chat join",
        }
    }
}

/// One connection's part of the work, once set up.
#[derive(Debug, Clone)]
pub(crate) enum Load {
    Ping,
    Send { room: String },
    Join { session: String, room: String, member: chat::Member },
}

/// How an answer was judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Served; the answer as shown in reports.
    Served(String),
    /// Answered with a refusal (`mq.Error`, or a status other than `ok`): shown, and its reason.
    Refused { shown: String, reason: String },
    /// Not an answer to this request.
    Wrong(String),
}

/// A prefix for room aliases no earlier run of any process used.
pub(crate) fn run_nonce() -> String {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    format!("bench-{}-{ms}-{}", std::process::id(), RUNS.fetch_add(1, Ordering::Relaxed))
}

/// Prepares `ws` for `work`; `alias` names its room (and its device and screen name).
pub(crate) async fn setup(ws: &mut Ws, work: Work, alias: &str) -> Result<Load, String> {
    if work == Work::Ping {
        return Ok(Load::Ping);
    }
    let session = client::authenticate(ws, alias).await?;
    let room = chat::Room {
        alias: Some(alias.to_owned()),
        name: alias.to_owned(),
        r#type: chat::RoomType::MultiPartyChat as i32,
        ..Default::default()
    };
    let create = chat::CreateRoom { session_id: session.clone(), room };
    let created: chat::CreateRoomResponse = client::call(ws, "C1", "chat.CreateRoom", create).await?;
    client::ok("chat.CreateRoom", &created.status)?;
    let room = created.room.and_then(|r| r.room_id).ok_or("chat.CreateRoom: no room id")?;
    let member = client::member_record(&session, alias, chat::MemberRole::Participant);
    let join = chat::JoinRoom {
        room_id: Some(room.clone()),
        session_id: session.clone(),
        member: member.clone(),
        ..Default::default()
    };
    let joined: chat::JoinRoomResponse = client::call(ws, "C2", JOIN, join).await?;
    client::ok(JOIN, &joined.status)?;
    if work == Work::ChatJoin {
        return Ok(Load::Join { session, room, member });
    }
    let fetch = chat::FetchRoomConversation {
        session_id: session,
        room_id: room.clone(),
        limit: 0,
        options: vec![chat::RoomConversationOption::Subscribe as i32],
        ..Default::default()
    };
    let ty = "chat.FetchRoomConversation";
    let fetched: chat::FetchRoomConversationResponse = client::call(ws, "C3", ty, fetch).await?;
    client::ok(ty, &fetched.status)?;
    Ok(Load::Send { room })
}

impl Load {
    /// Whether frames that are events are skipped while waiting for an answer.
    pub(crate) fn hears_events(&self) -> bool {
        !matches!(self, Load::Ping)
    }

    /// The chat request type of request `n`, if a chat request.
    fn chat_type(&self, n: u64) -> Option<&'static str> {
        match self {
            Load::Ping => None,
            Load::Send { .. } => Some(SEND),
            Load::Join { .. } if n.is_multiple_of(2) => Some(LEAVE),
            Load::Join { .. } => Some(JOIN),
        }
    }

    /// The frame of request `n`, with id `id`.
    pub(crate) fn frame(&self, id: &str, n: u64) -> String {
        let payload = match self {
            Load::Ping => return frame::request_frame(id, n),
            Load::Send { room } => {
                let chat_message = chat::ChatMessage { message: format!("m{n}"), ..Default::default() };
                chat::SendMessageToRoom { room_id: room.clone(), chat_message }.encode_to_vec()
            }
            Load::Join { session, room, .. } if n.is_multiple_of(2) => {
                chat::LeaveRoom { room_id: room.clone(), session_id: session.clone(), timestamp: 0 }
                    .encode_to_vec()
            }
            Load::Join { session, room, member } => chat::JoinRoom {
                room_id: Some(room.clone()),
                session_id: session.clone(),
                member: member.clone(),
                ..Default::default()
            }
            .encode_to_vec(),
        };
        client::request_frame(id, self.chat_type(n).expect("a chat request"), payload)
    }

    /// Judges `answer`, received for request `n` with id `id`.
    pub(crate) fn check(&self, answer: &str, id: &str, n: u64) -> Verdict {
        let Some(ty) = self.chat_type(n) else { return ping_verdict(answer, id) };
        let Ok(msg) = codec::decode(&Frame::Text(answer.to_owned()), usize::MAX) else {
            return Verdict::Wrong("answer is not an mq.Message".into());
        };
        if msg.request_id.as_deref() != Some(id) {
            return Verdict::Wrong(format!("answer to another request than {id}"));
        }
        if msg.r#type == "mq.Error" {
            return refusal(frame::error_reason(answer));
        }
        let expected = format!("{ty}Response");
        if msg.r#type != expected {
            return Verdict::Wrong(format!("{ty} answered {}", msg.r#type));
        }
        match status(ty, &msg.payload) {
            Ok(status) if status == "ok" => Verdict::Served(expected),
            Ok(status) => Verdict::Refused { shown: format!("{expected}{{{status}}}"), reason: status },
            Err(e) => Verdict::Wrong(e),
        }
    }
}

/// Whether a frame is an event rather than an answer (undecodable frames are answers: wrong).
pub(crate) fn is_event(text: &str) -> bool {
    codec::decode(&Frame::Text(text.to_owned()), usize::MAX).is_ok_and(|msg| {
        msg.request_id.is_none() || msg.message_type == Some(mq::message::MessageType::Event as i32)
    })
}

fn refusal(reason: Option<String>) -> Verdict {
    let reason = reason.unwrap_or_else(|| "undecodable".into());
    Verdict::Refused { shown: format!("mq.Error{{{reason}}}"), reason }
}

fn ping_verdict(answer: &str, id: &str) -> Verdict {
    match frame::check_answer(answer, id) {
        // A refusal (rate-limited, too-many-requests, ...) is not service.
        Answer::Matched(ty) if ty == "mq.Error" => refusal(frame::error_reason(answer)),
        Answer::Matched(ty) => Verdict::Served(ty),
        Answer::Mismatch => Verdict::Wrong(format!("answer to another request than {id}")),
        Answer::Undecodable => Verdict::Wrong("answer is not an mq.Message".into()),
    }
}

/// The status of a chat answer's payload.
fn status(ty: &str, payload: &[u8]) -> Result<String, String> {
    let status = match ty {
        SEND => chat::SendMessageToRoomResponse::decode(payload).map(|r| r.status),
        JOIN => chat::JoinRoomResponse::decode(payload).map(|r| r.status),
        _ => chat::LeaveRoomResponse::decode(payload).map(|r| r.status),
    };
    status.map_err(|e| format!("{ty}Response: {e}"))
}
