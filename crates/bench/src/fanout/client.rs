//! What the fan-out members and publishers say, in each protocol.
//!
//! - **clientmq**: the SDK's requests. A publisher authenticates, creates its room (a channel,
//!   alias `fanout-<r>`) and joins it as presenter; it publishes with `chat.SendMessageToRoom`.
//!   A member authenticates, joins by alias as audience (broadcast rooms announce no audience, so
//!   filling a room costs one answer per member) and fetches the conversation with `Subscribe`.
//!   It hears `chat.RoomConversationEvent`s.
//! - **plain** (the bare baseline and the Node seed's broadcast): a member sends `sub:<r>` and
//!   waits for it echoed; a publisher sends `pub:<r>:<frame>` and the server writes `<frame>` to
//!   every member of room `r`. The load generator builds `<frame>` as the event clientmq would
//!   deliver, byte for byte in size, so members read the same frames from every server.
//!
//! The chat message's text is `<room> <seq> <nanos>`: the room, the message's number in it, and
//! when it was due (nanoseconds since the run's base instant).

use clientmq_core::codec::{self, Frame};
use clientmq_core::proto::{chat, mq, pcast};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio_tungstenite::tungstenite::Message;

use crate::frame;
use crate::target::Ws;

/// Which protocol the server under test speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Clientmq,
    Plain,
}

/// The alias of room `r`.
pub fn alias(r: usize) -> String {
    format!("fanout-{r}")
}

/// The id of room `r` on the plain servers: as long as clientmq's room ids, so that the frames
/// are the same size.
pub fn plain_room_id(r: usize) -> String {
    format!("fanout-{r:017}")
}

/// A chat message's text.
pub fn text(room: usize, seq: u64, nanos: u64) -> String {
    format!("{room} {seq} {nanos}")
}

/// [`text`] made `pad` bytes longer with a last word of `x`s (larger messages).
pub fn padded_text(room: usize, seq: u64, nanos: u64, pad: usize) -> String {
    let mut text = text(room, seq, nanos);
    if pad > 0 {
        text.push(' ');
        text.extend(std::iter::repeat_n('x', pad - 1));
    }
    text
}

/// What a member read from one chat message: (room, seq, nanos).
pub fn parse_text(text: &str) -> Option<(usize, u64, u64)> {
    let mut parts = text.split(' ');
    let room = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let nanos = parts.next()?.parse().ok()?;
    let padding = parts.next().is_none_or(|p| p.bytes().all(|b| b == b'x'));
    (padding && parts.next().is_none()).then_some((room, seq, nanos))
}

/// The text of the chat message a frame carries, if it is a conversation event with one.
pub fn heard(frame: &str) -> Option<String> {
    let msg = codec::decode(&Frame::Text(frame.to_owned()), usize::MAX).ok()?;
    if msg.r#type != "chat.RoomConversationEvent" {
        return None;
    }
    let event = chat::RoomConversationEvent::decode(msg.payload.as_slice()).ok()?;
    event.chat_messages.into_iter().next().map(|m| m.message)
}

/// The event frame clientmq delivers for `text` in room `room_id` (the plain servers' payload).
pub fn event_frame(room_id: &str, text: String, now_ms: u64) -> String {
    let from = chat::ChatUser {
        session_id: Some("0123456789abcdef0123456789abcdef".into()),
        screen_name: "publisher".into(),
        role: chat::MemberRole::Presenter as i32,
        last_update: now_ms,
    };
    // clientmq's message ids: 11 hex digits of time, 16 of sequence.
    let message_id = format!("{:011x}{:016x}", now_ms & 0xfff_ffff_ffff, 1);
    let message = chat::ChatMessage { message_id, timestamp: now_ms, from, message: text };
    let event = chat::RoomConversationEvent {
        session_id: "0123456789abcdef0123456789abcdef".into(),
        room_id: room_id.to_owned(),
        event_type: chat::RoomConversationEventType::Message as i32,
        chat_messages: vec![message],
    };
    // clientmq names the recipient's session on every event; one name for all here.
    let msg = mq::Message {
        session_id: Some("0123456789abcdef0123456789abcdef".into()),
        r#type: "chat.RoomConversationEvent".into(),
        payload: event.encode_to_vec(),
        message_type: Some(mq::message::MessageType::Event as i32),
        ..Default::default()
    };
    frame::base64_text(&msg)
}

/// The frame of request `id` of type `ty`.
pub fn request_frame(id: &str, ty: &str, payload: Vec<u8>) -> String {
    frame::base64_text(&frame::request(id, ty, payload))
}

/// The next text frame; control frames are skipped.
pub async fn next_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(c))) => return Err(format!("closed by the server: {c:?}")),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("read: {e}")),
            None => return Err("connection ended".into()),
        }
    }
}

/// Sends request `id` and returns the answer's payload, which must be a `<ty>Response`;
/// events before it are skipped.
pub(crate) async fn call<T: prost::Message + Default>(
    ws: &mut Ws,
    id: &str,
    ty: &str,
    req: impl prost::Message,
) -> Result<T, String> {
    let frame = request_frame(id, ty, req.encode_to_vec());
    ws.send(Message::Text(frame.into())).await.map_err(|e| format!("send {ty}: {e}"))?;
    loop {
        let text = next_text(ws).await?;
        let msg = codec::decode(&Frame::Text(text), usize::MAX).map_err(|e| format!("{ty}: {e}"))?;
        if msg.request_id.as_deref() == Some(id) {
            return answer(&msg, ty);
        }
    }
}

/// The payload of `msg`, which must answer a request of type `ty` with a `<ty>Response` (an
/// `mq.Error` is an error, with its reason).
fn answer<T: prost::Message + Default>(msg: &mq::Message, ty: &str) -> Result<T, String> {
    if msg.r#type != format!("{ty}Response") {
        let reason = mq::Error::decode(msg.payload.as_slice()).map(|e| e.reason).unwrap_or_default();
        return Err(format!("{ty}: answered {} {reason}", msg.r#type));
    }
    T::decode(msg.payload.as_slice()).map_err(|e| format!("{ty}Response: {e}"))
}

pub(crate) fn ok(ty: &str, status: &str) -> Result<(), String> {
    if status == "ok" { Ok(()) } else { Err(format!("{ty}: status {status}")) }
}

/// Authenticates `ws` as device `name` (request `C0`); the session's id.
pub(crate) async fn authenticate(ws: &mut Ws, name: &str) -> Result<String, String> {
    let auth = pcast::Authenticate {
        client_version: "clientmq-load".into(),
        device_id: name.into(),
        platform: "bench".into(),
        platform_version: "1".into(),
        authentication_token: "bench".into(),
        ..Default::default()
    };
    let r: pcast::AuthenticateResponse = call(ws, "C0", "pcast.Authenticate", auth).await?;
    ok("pcast.Authenticate", &r.status)?;
    r.session_id.ok_or_else(|| "pcast.Authenticate: no session".into())
}

pub(crate) fn member_record(session: &str, name: &str, role: chat::MemberRole) -> chat::Member {
    chat::Member {
        session_id: session.into(),
        screen_name: name.into(),
        role: role as i32,
        ..Default::default()
    }
}

/// Makes `ws` the publisher of room `r`; the room's id (what plain servers are told to use).
pub async fn publisher(ws: &mut Ws, protocol: Protocol, r: usize) -> Result<String, String> {
    if protocol == Protocol::Plain {
        return Ok(plain_room_id(r));
    }
    let session = authenticate(ws, &format!("publisher-{r}")).await?;
    let room = chat::Room {
        alias: Some(alias(r)),
        name: alias(r),
        r#type: chat::RoomType::Channel as i32,
        ..Default::default()
    };
    let create = chat::CreateRoom { session_id: session.clone(), room };
    let created: chat::CreateRoomResponse = call(ws, "C1", "chat.CreateRoom", create).await?;
    if created.status != "already-exists" {
        ok("chat.CreateRoom", &created.status)?;
    }
    let room_id = created.room.and_then(|r| r.room_id).ok_or("chat.CreateRoom: no room id")?;
    let join = chat::JoinRoom {
        room_id: Some(room_id.clone()),
        session_id: session.clone(),
        member: member_record(&session, "publisher", chat::MemberRole::Presenter),
        ..Default::default()
    };
    let joined: chat::JoinRoomResponse = call(ws, "C2", "chat.JoinRoom", join).await?;
    ok("chat.JoinRoom", &joined.status)?;
    Ok(room_id)
}

/// Makes `ws` a member of room `r`, hearing its conversation from now on.
pub async fn member(ws: &mut Ws, protocol: Protocol, r: usize, n: usize) -> Result<(), String> {
    if protocol == Protocol::Plain {
        let sub = format!("sub:{}", plain_room_id(r));
        ws.send(Message::Text(sub.clone().into())).await.map_err(|e| format!("send sub: {e}"))?;
        let echo = next_text(ws).await?;
        return if echo == sub { Ok(()) } else { Err(format!("sub: answered {echo:?}")) };
    }
    let session = authenticate(ws, &format!("member-{n}")).await?;
    let join = chat::JoinRoom {
        alias: Some(alias(r)),
        session_id: session.clone(),
        member: member_record(&session, "m", chat::MemberRole::Audience),
        ..Default::default()
    };
    let joined: chat::JoinRoomResponse = call(ws, "C1", "chat.JoinRoom", join).await?;
    ok("chat.JoinRoom", &joined.status)?;
    let room_id = joined.room.and_then(|r| r.room_id).ok_or("chat.JoinRoom: no room id")?;
    let fetch = chat::FetchRoomConversation {
        session_id: session,
        room_id,
        limit: 0,
        options: vec![chat::RoomConversationOption::Subscribe as i32],
        ..Default::default()
    };
    let fetched: chat::FetchRoomConversationResponse =
        call(ws, "C2", "chat.FetchRoomConversation", fetch).await?;
    ok("chat.FetchRoomConversation", &fetched.status)
}

/// What a publisher sends for message `text` to room `room_id`, as request `id` (clientmq) or
/// as a plain publish.
pub fn publish_frame(protocol: Protocol, room_id: &str, id: &str, text: String, now_ms: u64) -> String {
    match protocol {
        Protocol::Clientmq => {
            let send = chat::SendMessageToRoom {
                room_id: room_id.to_owned(),
                chat_message: chat::ChatMessage { message: text, ..Default::default() },
            };
            request_frame(id, "chat.SendMessageToRoom", send.encode_to_vec())
        }
        Protocol::Plain => format!("pub:{room_id}:{}", event_frame(room_id, text, now_ms)),
    }
}

/// Whether a frame a clientmq publisher read answers a send with `ok`; `None` for anything but
/// an answer (events, its own room's traffic).
pub fn send_answered_ok(frame: &str) -> Option<Result<(), String>> {
    let msg = codec::decode(&Frame::Text(frame.to_owned()), usize::MAX).ok()?;
    msg.request_id.as_ref()?;
    let ty = "chat.SendMessageToRoom";
    Some(answer::<chat::SendMessageToRoomResponse>(&msg, ty).and_then(|r| ok(ty, &r.status)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_round_trip_and_plain_frames_carry_what_clientmq_would() {
        assert_eq!(parse_text(&text(3, 41, 123_456)), Some((3, 41, 123_456)));
        assert_eq!(parse_text("3 41"), None);
        assert_eq!(parse_text("3 41 5 6"), None);
        let padded = padded_text(3, 41, 9, 100);
        assert_eq!((padded.len(), parse_text(&padded)), (text(3, 41, 9).len() + 100, Some((3, 41, 9))));
        let frame = event_frame("fanout-3", text(3, 41, 9), 1_700_000_000_000);
        assert_eq!(heard(&frame).as_deref(), Some("3 41 9"));
        let publish = publish_frame(Protocol::Plain, "fanout-3", "C9", text(3, 1, 2), 0);
        let plain = publish.strip_prefix("pub:fanout-3:").expect("a plain publish names its room");
        assert_eq!(heard(plain).as_deref(), Some("3 1 2"));
        // A request is no event.
        let request = publish_frame(Protocol::Clientmq, "abc", "C9", text(0, 0, 0), 0);
        assert_eq!(heard(&request), None);
        assert_eq!(send_answered_ok(&request).map(|r| r.is_ok()), Some(false), "a request is no ok answer");
    }
}
