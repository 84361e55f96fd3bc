//! The `chat.*` requests: rooms, members, and each room's conversation.

use std::collections::{BTreeMap, VecDeque};

use clientmq_core::Topic;
use clientmq_core::proto::chat;
use clientmq_core::proto::chat::RoomEventType;

use crate::state::{ChatState, Deadline, Fact, ROOM_ID_LEN, Room, announcement};
use crate::wire::{self, status};

pub(crate) fn is_set(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

/// `member` as `update` leaves it at `now_ms`: only the fields the update carries change.
pub(crate) fn updated_member(
    member: &chat::Member,
    update: &chat::MemberUpdate,
    now_ms: u64,
) -> chat::Member {
    let mut member = member.clone();
    if let Some(name) = &update.screen_name {
        member.screen_name = name.clone();
    }
    if let Some(role) = update.role {
        member.role = role;
    }
    if let Some(state) = update.state {
        member.state = state;
    }
    if update.update_streams {
        member.streams = update.streams.clone();
    }
    member.last_update = now_ms;
    member
}

/// A room's `info` as an update to `new` leaves it, with `alias`. Absent fields keep their value:
/// an alias is only ever replaced, never cleared, and the SDK's UpdateRoom never carries options,
/// so an empty list leaves them as they are.
pub(crate) fn updated_info(info: &chat::Room, new: chat::Room, alias: Option<String>) -> chat::Room {
    let mut info = info.clone();
    info.alias = alias;
    info.name = new.name;
    info.description = new.description;
    info.r#type = new.r#type;
    if !new.options.is_empty() {
        info.options = new.options;
    }
    info.bridge_id = new.bridge_id.or(info.bridge_id.take());
    info.pin = new.pin.or(info.pin.take());
    info
}

/// The messages of a room's `history` (oldest first) that `req` asks for, oldest first (the SDK
/// drops a message older than all it holds). `limit` 0 means none, except between two ids, where
/// it means all of them. After an id: the first ones following it; otherwise the latest ones.
pub(crate) fn window<'a>(
    history: impl Iterator<Item = &'a chat::ChatMessage>,
    req: &chat::FetchRoomConversation,
) -> Vec<chat::ChatMessage> {
    let after = is_set(&req.after_message_id);
    let before = is_set(&req.before_message_id);
    let window: Vec<&chat::ChatMessage> = history
        .filter(|m| after.is_none_or(|a| m.message_id.as_str() > a))
        .filter(|m| before.is_none_or(|b| m.message_id.as_str() < b))
        .collect();
    let limit = match (req.limit, after, before) {
        (0, Some(_), Some(_)) => window.len(),
        (n, _, _) => (n as usize).min(window.len()),
    };
    let picked =
        if after.is_some() && before.is_none() { &window[..limit] } else { &window[window.len() - limit..] };
    picked.iter().map(|m| (*m).clone()).collect()
}

impl ChatState {
    /// The id of the room named by id, or else by alias.
    fn find_room(&self, room_id: &Option<String>, alias: &Option<String>) -> Option<String> {
        match (is_set(room_id), is_set(alias)) {
            (Some(id), _) => self.rooms.contains_key(id).then(|| id.to_owned()),
            (None, Some(alias)) => self.aliases.get(alias).cloned(),
            (None, None) => None,
        }
    }

    /// The room and its member record for `session`, or the status that says why not.
    fn membership(&self, session: &str, room_id: &str) -> Result<(&Room, &chat::Member), &'static str> {
        let room = self.rooms.get(room_id).ok_or(status::NOT_FOUND)?;
        let member = room.members.get(session).ok_or(status::NOT_IN_ROOM)?;
        Ok((room, member))
    }

    fn emit_room_event(
        &mut self,
        actor: &str,
        room_id: &str,
        kind: RoomEventType,
        members: Vec<chat::Member>,
    ) {
        let room = (kind == RoomEventType::RoomUpdated).then(|| self.rooms[room_id].info.clone());
        let event = wire::room_event(actor, room_id, kind, members, room, self.now_ms());
        self.outbox.push(event);
    }

    /// Tells the room that a member arrived (`before` none), changed, or left (`after` none),
    /// as the others see it (see [`announcement`]).
    fn announce_change(
        &mut self,
        actor: &str,
        room_id: &str,
        before: Option<&chat::Member>,
        after: Option<&chat::Member>,
    ) {
        let quiet = self.rooms[room_id].quiet_audience;
        let Some((kind, member)) = announcement(quiet, before, after) else { return };
        let member = member.clone();
        self.emit_room_event(actor, room_id, kind, vec![member]);
    }

    fn set_idle(&mut self, room_id: &str, idle: bool) {
        let until = self.now + self.config.room_idle;
        let Some(room) = self.rooms.get_mut(room_id) else { return };
        match (idle, room.idle_until) {
            (true, None) => {
                room.idle_until = Some(until);
                self.deadlines.insert((until, Deadline::Room(room_id.to_owned())));
            }
            (false, Some(at)) => {
                room.idle_until = None;
                self.deadlines.remove(&(at, Deadline::Room(room_id.to_owned())));
            }
            _ => {}
        }
    }

    pub(super) fn create_room(&mut self, _session: &str, req: chat::CreateRoom) -> chat::CreateRoomResponse {
        let answer = |status: &str, room: Option<chat::Room>| chat::CreateRoomResponse {
            status: status.to_owned(),
            room,
        };
        if let Err(status) = self.limits.room(&req.room) {
            return answer(status, None);
        }
        let alias = is_set(&req.room.alias).map(str::to_owned);
        if let Some(existing) = alias.as_ref().and_then(|a| self.aliases.get(a)) {
            // The SDK reads the room from an `already-exists` answer too.
            return answer(status::ALREADY_EXISTS, Some(self.rooms[existing].info.clone()));
        }
        if self.rooms.len() >= self.config.max_rooms {
            return answer(status::CAPACITY, None);
        }
        let id = loop {
            let id = wire::random_id(&mut self.rng, ROOM_ID_LEN);
            if !self.rooms.contains_key(&id) {
                break id;
            }
        };
        let info = chat::Room { room_id: Some(id.clone()), alias: alias.clone(), ..req.room };
        if let Some(alias) = alias {
            self.aliases.insert(alias, id.clone());
        }
        // Fixed at creation: a later type change does not make a silent audience heard.
        let broadcast = [chat::RoomType::Channel as i32, chat::RoomType::TownHall as i32];
        let room = Room {
            info: info.clone(),
            members: BTreeMap::new(),
            quiet_audience: broadcast.contains(&info.r#type),
            history: VecDeque::new(),
            idle_until: None,
        };
        self.rooms.insert(id.clone(), room);
        // Nobody is in it yet: it is forgotten unless someone joins.
        self.set_idle(&id, true);
        answer(status::OK, Some(info))
    }

    pub(super) fn get_room_info(&mut self, req: chat::GetRoomInfo) -> chat::GetRoomInfoResponse {
        match self.find_room(&req.room_id, &req.alias) {
            Some(id) => {
                let room = &self.rooms[&id];
                chat::GetRoomInfoResponse {
                    status: status::OK.to_owned(),
                    room: Some(room.info.clone()),
                    members: room.listed(),
                    options: Vec::new(),
                }
            }
            None => chat::GetRoomInfoResponse { status: status::NOT_FOUND.to_owned(), ..Default::default() },
        }
    }

    pub(super) fn join_room(&mut self, session: &str, req: chat::JoinRoom) -> chat::JoinRoomResponse {
        let answer =
            |status: &str| chat::JoinRoomResponse { status: status.to_owned(), ..Default::default() };
        let Some(room_id) = self.find_room(&req.room_id, &req.alias) else {
            return answer(status::NOT_FOUND);
        };
        if let Err(status) = self.limits.member(&req.member) {
            return answer(status);
        }
        // The member is who the connection authenticated as, whatever the payload claims.
        let member =
            chat::Member { session_id: session.to_owned(), last_update: self.now_ms(), ..req.member };
        let previous = self.rooms[&room_id].members.get(session).cloned();
        match &previous {
            None if self.sessions[session].rooms.len() >= self.config.max_rooms_per_session => {
                return answer(status::CAPACITY);
            }
            None if self.rooms[&room_id].members.len() >= self.config.max_members_per_room => {
                return answer(status::CAPACITY);
            }
            None => {
                self.rooms
                    .get_mut(&room_id)
                    .expect("found")
                    .members
                    .insert(session.to_owned(), member.clone());
                self.sessions.get_mut(session).expect("bound").rooms.insert(room_id.clone());
                let (session_id, room) = (session.to_owned(), room_id.clone());
                self.note(Fact::Hears { session: session_id, topic: Topic::Room, room });
                self.set_idle(&room_id, false);
                // Subscribed first: the member hears its own arrival and everything after it.
                self.subscribe_connection(session, Topic::Room, &room_id);
                self.announce_change(session, &room_id, None, Some(&member));
            }
            // Joining again (the SDK re-enters after a reconnect): an update, if anything changed.
            Some(old) => {
                self.subscribe_connection(session, Topic::Room, &room_id);
                let unchanged = chat::Member { last_update: old.last_update, ..member.clone() } == *old;
                if !unchanged {
                    self.rooms
                        .get_mut(&room_id)
                        .expect("found")
                        .members
                        .insert(session.to_owned(), member.clone());
                    self.announce_change(session, &room_id, Some(old), Some(&member));
                }
            }
        }
        let room = &self.rooms[&room_id];
        chat::JoinRoomResponse {
            status: status::OK.to_owned(),
            room: Some(room.info.clone()),
            members: room.listed(),
            options: Vec::new(),
            self_: room.members.get(session).cloned(),
        }
    }

    /// Leaving is idempotent: `ok` even when not a member, so the gateway drops its subscription.
    /// `remove_member` queues the unsubscription too, so the queue is right on its own even when
    /// the reply overtakes a resume's queued subscription.
    pub(super) fn leave_room(&mut self, session: &str, req: chat::LeaveRoom) -> chat::LeaveRoomResponse {
        self.remove_member(session, &req.room_id);
        chat::LeaveRoomResponse { status: status::OK.to_owned() }
    }

    /// Subscribes the connection of `session`, if it has one, to a room or its conversation.
    fn subscribe_connection(&mut self, session: &str, topic: Topic, room_id: &str) {
        if let Some(conn) = self.sessions.get(session).and_then(|s| s.conn) {
            self.outbox.push(wire::subscription(conn, topic, room_id, true));
        }
    }

    /// Removes `session` from a room: its connection stops hearing the room first, then the
    /// other members are told.
    pub(super) fn remove_member(&mut self, session: &str, room_id: &str) {
        let now_ms = self.now_ms();
        if let Some(s) = self.sessions.get_mut(session)
            && s.rooms.remove(room_id)
        {
            s.conversations.remove(room_id);
            if let Some(conn) = s.conn {
                self.outbox.extend(wire::unsubscribe(conn, room_id));
            }
            self.note(Fact::Left { session: session.to_owned(), room: room_id.to_owned() });
        }
        let Some(room) = self.rooms.get_mut(room_id) else { return };
        let Some(member) = room.members.remove(session) else { return };
        let empty = room.members.is_empty();
        let left = chat::Member { last_update: now_ms, ..member };
        self.announce_change(session, room_id, Some(&left), None);
        if empty {
            self.set_idle(room_id, true);
        }
    }

    pub(super) fn update_member(
        &mut self,
        session: &str,
        req: chat::UpdateMember,
    ) -> chat::UpdateMemberResponse {
        let answer =
            |status: &str| chat::UpdateMemberResponse { status: status.to_owned(), last_update: None };
        let Some(room_id) = is_set(&req.room_id).map(str::to_owned) else {
            return answer(status::BAD_REQUEST);
        };
        let update = req.member;
        if let Err(status) = self.limits.member_update(&update) {
            return answer(status);
        }
        let target =
            if update.session_id.is_empty() { session.to_owned() } else { update.session_id.clone() };
        let updater_role = match self.membership(session, &room_id) {
            Ok((_, me)) => me.role,
            Err(status) => return answer(status),
        };
        // Members change themselves; a moderator may change anyone.
        if target != session && updater_role != chat::MemberRole::Moderator as i32 {
            return answer(status::UNAUTHORIZED);
        }
        let now_ms = self.now_ms();
        let room = self.rooms.get_mut(&room_id).expect("checked");
        let Some(member) = room.members.get_mut(&target) else {
            return answer(status::NOT_IN_ROOM);
        };
        let before = member.clone();
        *member = updated_member(&before, &update, now_ms);
        let updated = member.clone();
        self.announce_change(session, &room_id, Some(&before), Some(&updated));
        chat::UpdateMemberResponse { status: status::OK.to_owned(), last_update: Some(now_ms) }
    }

    pub(super) fn update_room(&mut self, session: &str, req: chat::UpdateRoom) -> chat::UpdateRoomResponse {
        let answer = |status: &str| chat::UpdateRoomResponse { status: status.to_owned() };
        let Some(room_id) = self.find_room(&req.room.room_id, &req.room.alias) else {
            return answer(status::NOT_FOUND);
        };
        if let Err(status) = self.membership(session, &room_id).map(|_| ()).and(self.limits.room(&req.room)) {
            return answer(status);
        }
        let new = req.room;
        let old_alias = self.rooms[&room_id].info.alias.clone();
        let new_alias = is_set(&new.alias).map(str::to_owned);
        if let Some(alias) = &new_alias
            && old_alias.as_ref() != Some(alias)
        {
            if self.aliases.contains_key(alias) {
                return answer(status::ALREADY_EXISTS);
            }
            if let Some(old) = &old_alias {
                self.aliases.remove(old);
            }
            self.aliases.insert(alias.clone(), room_id.clone());
        }
        let info = &mut self.rooms.get_mut(&room_id).expect("found").info;
        *info = updated_info(info, new, new_alias.or(old_alias));
        self.emit_room_event(session, &room_id, RoomEventType::RoomUpdated, Vec::new());
        answer(status::OK)
    }

    pub(super) fn send_message(
        &mut self,
        session: &str,
        req: chat::SendMessageToRoom,
    ) -> chat::SendMessageToRoomResponse {
        let answer = |status: &str| chat::SendMessageToRoomResponse { status: status.to_owned() };
        let text = req.chat_message.message;
        let from = match self.membership(session, &req.room_id) {
            Ok((_, me)) => chat::ChatUser {
                session_id: Some(session.to_owned()),
                screen_name: me.screen_name.clone(),
                role: me.role,
                last_update: me.last_update,
            },
            Err(status) => return answer(status),
        };
        if text.is_empty() {
            return answer(status::BAD_REQUEST);
        }
        if text.len() > self.config.max_message_bytes {
            return answer(status::TOO_LARGE);
        }
        let now_ms = self.now_ms();
        let message = chat::ChatMessage {
            message_id: wire::message_id(now_ms, self.next_message),
            timestamp: now_ms,
            from,
            message: text,
        };
        self.next_message += 1;
        let room = self.rooms.get_mut(&req.room_id).expect("member of it");
        room.history.push_back(message.clone());
        while room.history.len() > self.config.max_history {
            room.history.pop_front();
        }
        self.outbox.push(wire::conversation_event(session, &req.room_id, message));
        answer(status::OK)
    }

    /// History, as [`window`] picks it.
    pub(super) fn fetch_conversation(
        &mut self,
        session: &str,
        req: chat::FetchRoomConversation,
    ) -> chat::FetchRoomConversationResponse {
        if let Err(status) = self.membership(session, &req.room_id) {
            return chat::FetchRoomConversationResponse {
                status: status.to_owned(),
                chat_messages: Vec::new(),
            };
        }
        // Remembered for a resume too.
        if req.options.contains(&(chat::RoomConversationOption::Subscribe as i32)) {
            let s = self.sessions.get_mut(session).expect("a member's session");
            if s.conversations.insert(req.room_id.clone()) {
                let (session, room) = (session.to_owned(), req.room_id.clone());
                self.note(Fact::Hears { session, topic: Topic::Conversation, room });
            }
            self.subscribe_connection(session, Topic::Conversation, &req.room_id);
        }
        let messages = window(self.rooms[&req.room_id].history.iter(), &req);
        chat::FetchRoomConversationResponse { status: status::OK.to_owned(), chat_messages: messages }
    }
}
