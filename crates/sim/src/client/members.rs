//! The chat clients: members that join, chat, leave, re-join, take their session over and
//! resume it, tracing what they ask for and hear in the form the checker reads.

use std::time::Duration;

use clientmq_core::Topic;
use clientmq_core::proto::{chat, mq, pcast};
use prost::Message as _;
use tokio::time::Instant;

use super::{Client, POLITE, Pump, Who};
use crate::scenario::ClientGroup;
use crate::trace::{Change, Digest, Heard};

/// How long a member that said `pcast.Bye` keeps its connection open: longer than a dead
/// worker's unfinished unsubscriptions may take to be repaired in most explored timelines.
const AFTER_BYE: Duration = Duration::from_secs(5);

pub(super) async fn polite(who: &Who, group: &ClientGroup) {
    let Some(mut c) = Client::connect(who, POLITE).await else { return };
    let leave_at = Instant::now() + Duration::from_secs_f64(group.stay_secs);
    if !c.authenticate().await {
        return c.abandon();
    }
    let Some(room_id) = c.enter_lobby(true).await else { return c.abandon() };
    if !c.chat(&room_id, 0..group.requests).await {
        return c.abandon();
    }
    match c.pump(Some(leave_at), None).await {
        Pump::Deadline => {}
        other => return c.ended(other),
    }
    if c.leave(&room_id).await {
        c.close(1000).await;
    }
}

/// A chat member as the SDK is one: it enters the lobby (subscribing to its conversation unless
/// `requests` is a multiple of 3), chats, leaves and enters again on the
/// same connection, takes its own session over with a second connection while the first is
/// still open (odd `requests`), chats on, and leaves at `stay_secs`. Closed by the server with
/// anything but 1000, 4000 or 4001, it reconnects (attempt^2 s apart, 4 attempts) and resumes
/// its session, which hears its rooms again without joining. With `bye`, it ends its session
/// with `pcast.Bye` instead of leaving, reads five seconds more, and closes 1000.
pub(super) async fn member(who: &Who, group: &ClientGroup, bye: bool) {
    let leave_at = Instant::now() + Duration::from_secs_f64(group.stay_secs);
    let mut session: Option<String> = None;
    let mut room: Option<String> = None;
    let mut attempt = 0u32;
    // Some members read the history without subscribing to the conversation.
    let listen = !group.requests.is_multiple_of(3);
    loop {
        if attempt > 0 {
            if attempt > 4 {
                return who.note("backoff-limit-reached");
            }
            tokio::time::sleep(Duration::from_secs(u64::from(attempt * attempt))).await;
        }
        attempt += 1;
        let Some(mut c) = Client::connect(who, POLITE).await else { continue };
        c.session_id = session.clone();
        if !c.authenticate().await {
            c.abandon();
            continue;
        }
        if c.session_id != session {
            room = None; // a new session is in no room
        }
        session = c.session_id.clone();
        let fresh = room.is_none();
        if fresh {
            room = c.enter_lobby(listen).await;
        }
        let Some(room_id) = room.clone() else { return c.abandon() };
        if fresh {
            let ok = c.chat(&room_id, 0..group.requests).await
                && c.leave(&room_id).await
                && c.enter_lobby(listen).await.is_some();
            if !ok {
                c.abandon();
                continue;
            }
            if !group.requests.is_multiple_of(2) {
                c = c.take_over().await;
            }
            if !c.chat(&room_id, group.requests..group.requests * 2).await {
                c.abandon();
                continue;
            }
        }
        match c.pump(Some(leave_at), None).await {
            Pump::Deadline => {}
            other => {
                let code = c.closed_with;
                c.ended(other);
                if matches!(code, Some(1000 | 4000 | 4001)) {
                    return;
                }
                continue;
            }
        }
        if bye {
            return c.bye().await;
        }
        if c.leave(&room_id).await {
            c.close(1000).await;
        }
        return;
    }
}

impl Client {
    /// Sends chat messages numbered `range` to a room; false if the connection ended.
    async fn chat(&mut self, room_id: &str, range: std::ops::Range<usize>) -> bool {
        for i in range {
            let text = format!("{} says {i}", self.who.name);
            let message = chat::ChatMessage { message: text, ..Default::default() };
            let send = chat::SendMessageToRoom { room_id: room_id.to_owned(), chat_message: message };
            if self.call("chat.SendMessageToRoom", send.encode_to_vec()).await.is_none() {
                return false;
            }
        }
        true
    }

    /// Leaves a room; false if the connection ended.
    async fn leave(&mut self, room_id: &str) -> bool {
        let session_id = self.session_id.clone().unwrap_or_default();
        let leave = chat::LeaveRoom { room_id: room_id.to_owned(), session_id, timestamp: 0 };
        let change = Change::Leave(room_id.to_owned());
        self.change(change, "chat.LeaveRoom", leave.encode_to_vec()).await.is_some()
    }

    /// Ends the session with `pcast.Bye`, then reads for [`AFTER_BYE`] (hearing nothing of its
    /// rooms, the checker requires) and closes 1000.
    async fn bye(mut self) {
        let bye =
            pcast::Bye { session_id: self.session_id.clone().unwrap_or_default(), reason: "done".into() };
        if self.change(Change::Bye, "pcast.Bye", bye.encode_to_vec()).await.is_none() {
            return self.abandon();
        }
        match self.pump(Some(Instant::now() + AFTER_BYE), None).await {
            Pump::Deadline => self.close(1000).await,
            other => self.ended(other),
        }
    }

    /// Authenticates a second connection as this one's session: the new one holds the session
    /// and hears its rooms; this one, left open, keeps reading for five seconds, then closes.
    /// Returns the connection that holds the session (this one if the takeover failed or took
    /// over a second: meanwhile this one is not read).
    async fn take_over(self) -> Client {
        let who = self.who.clone();
        let session = self.session_id.clone();
        let next = tokio::time::timeout(Duration::from_secs(1), async move {
            let mut next = Client::connect(&who, POLITE).await?;
            next.session_id = session;
            if next.authenticate().await {
                return Some(next);
            }
            next.abandon();
            None
        });
        let Ok(Some(next)) = next.await else { return self };
        let mut old = self;
        tokio::spawn(async move {
            match old.pump(Some(Instant::now() + Duration::from_secs(5)), None).await {
                Pump::Deadline => old.close(1000).await,
                other => old.ended(other),
            }
        });
        next
    }

    /// Creates the room `lobby` (or finds it), joins it and fetches its conversation, subscribing
    /// to it if `listen`.
    async fn enter_lobby(&mut self, listen: bool) -> Option<String> {
        let session = self.session_id.clone().unwrap_or_default();
        let room = chat::Room {
            alias: Some("lobby".into()),
            name: "lobby".into(),
            r#type: chat::RoomType::MultiPartyChat as i32,
            ..Default::default()
        };
        let create = chat::CreateRoom { session_id: session.clone(), room };
        let reply = self.call("chat.CreateRoom", create.encode_to_vec()).await?;
        let created = chat::CreateRoomResponse::decode(reply.payload.as_slice()).ok()?;
        let room_id = created.room.and_then(|r| r.room_id)?;
        let member = chat::Member {
            session_id: session.clone(),
            screen_name: self.who.name.clone(),
            role: chat::MemberRole::Participant as i32,
            state: chat::MemberState::Active as i32,
            ..Default::default()
        };
        let join = chat::JoinRoom {
            room_id: Some(room_id.clone()),
            session_id: session.clone(),
            member,
            ..Default::default()
        };
        let change = Change::Join(room_id.clone());
        let joined = self.change(change, "chat.JoinRoom", join.encode_to_vec()).await?;
        if status_of(&joined).as_deref() != Some("ok") {
            return None;
        }
        let options = if listen { vec![chat::RoomConversationOption::Subscribe as i32] } else { Vec::new() };
        let fetch = chat::FetchRoomConversation {
            session_id: session,
            room_id: room_id.clone(),
            limit: 10,
            options,
            ..Default::default()
        };
        if listen {
            let change = Change::Listen(room_id.clone());
            self.change(change, "chat.FetchRoomConversation", fetch.encode_to_vec()).await?;
        } else {
            self.call("chat.FetchRoomConversation", fetch.encode_to_vec()).await?;
        }
        Some(room_id)
    }
}

/// The `status` of a chat or pcast response (field 1 of each of them); none for an `mq.Error`.
pub(super) fn status_of(reply: &mq::Message) -> Option<String> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Status {
        #[prost(string, tag = "1")]
        status: String,
    }
    if reply.r#type == "mq.Error" {
        return None;
    }
    Status::decode(reply.payload.as_slice()).ok().map(|s| s.status)
}

/// A room or conversation event, as the checker reads it.
pub(super) fn heard(msg: &mq::Message) -> Option<Heard> {
    let digest = Digest::of(&msg.r#type, &msg.payload);
    match msg.r#type.as_str() {
        "chat.RoomEvent" => {
            let e = chat::RoomEvent::decode(msg.payload.as_slice()).ok()?;
            let what = match chat::RoomEventType::try_from(e.event_type) {
                Ok(chat::RoomEventType::MemberJoined) => "member-joined",
                Ok(chat::RoomEventType::MemberLeft) => "member-left",
                Ok(chat::RoomEventType::MemberUpdated) => "member-updated",
                Ok(chat::RoomEventType::RoomUpdated) => "room-updated",
                Ok(chat::RoomEventType::RoomEnded) => "room-ended",
                Err(_) => "unknown",
            };
            Some(Heard {
                topic: Topic::Room,
                room: e.room_id,
                actor: e.session_id,
                what: what.into(),
                digest,
            })
        }
        "chat.RoomConversationEvent" => {
            let e = chat::RoomConversationEvent::decode(msg.payload.as_slice()).ok()?;
            let (topic, room, actor) = (Topic::Conversation, e.room_id, e.session_id);
            Some(Heard { topic, room, actor, what: "message".into(), digest })
        }
        _ => None,
    }
}
