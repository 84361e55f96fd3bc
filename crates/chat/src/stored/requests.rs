//! The requests a stored worker serves, each decided on the store (see `worker`). Answers are
//! those of the in-memory worker; a store that does not answer makes `mq.Error{unavailable}`.

use clientmq_bus::Bus;
use clientmq_core::edge_auth::Claims;
use clientmq_core::proto::{chat, pcast};
use clientmq_core::{ConnectionId, Reply, Topic};
use prost::Message;

use super::cache::{Bucket, Cache, lock};
use super::decide::{DecideError, Decided, decide};
use super::history::{decide_room, decide_room_then};
use super::records::{RoomRecord, session_key};
use super::worker::Node;
use super::{conversation, directory, rooms, sessions};
use crate::rooms::{is_set, window};
use crate::wire::{self, reason, status};

const SESSION_ID_LEN: usize = 32;
const ROOM_ID_LEN: usize = 24;

/// Decodes a request and encodes its answer as `<type>Response`.
async fn respond<Req: Message + Default, Resp: Message, F: Future<Output = Result<Resp, DecideError>>>(
    request_type: &str,
    payload: &[u8],
    f: impl FnOnce(Req) -> F,
) -> Reply {
    let Ok(req) = Req::decode(payload) else { return wire::error(reason::MALFORMED) };
    match f(req).await {
        Ok(resp) => wire::reply(request_type, &resp),
        Err(e) => {
            tracing::warn!(%request_type, error = %e, "store unavailable");
            wire::error(reason::UNAVAILABLE)
        }
    }
}

/// Answers one request of connection `conn` through gateway `g`.
pub(crate) async fn handle<B: Bus>(
    n: &Node<B>,
    conn: ConnectionId,
    g: &str,
    request_type: &str,
    payload: &[u8],
    claims: Option<&Claims>,
) -> Reply {
    let c = conn.to_string();
    if request_type == "pcast.Authenticate" {
        return respond(request_type, payload, |auth| authenticate(n, &c, g, auth, claims)).await;
    }
    let session = match session_of(n, &c).await {
        Ok(Some(session)) => session,
        Ok(None) => return wire::error(reason::UNAUTHORIZED),
        Err(e) => {
            tracing::warn!(error = %e, "store unavailable");
            return wire::error(reason::UNAVAILABLE);
        }
    };
    let s = session.as_str();
    match request_type {
        "pcast.Bye" => respond(request_type, payload, |_: pcast::Bye| bye(n, s, &c)).await,
        "chat.CreateRoom" => respond(request_type, payload, |r| create_room(n, r)).await,
        "chat.GetRoomInfo" => respond(request_type, payload, |r| room_info(n, r)).await,
        "chat.JoinRoom" => respond(request_type, payload, |r| join_room(n, s, &c, g, r)).await,
        "chat.LeaveRoom" => respond(request_type, payload, |r| leave_room(n, s, &c, g, r)).await,
        "chat.UpdateMember" => respond(request_type, payload, |r| update_member(n, s, r)).await,
        "chat.UpdateRoom" => respond(request_type, payload, |r| update_room(n, s, r)).await,
        "chat.SendMessageToRoom" => respond(request_type, payload, |r| send(n, s, r)).await,
        "chat.FetchRoomConversation" => respond(request_type, payload, |r| fetch(n, s, &c, g, r)).await,
        _ => wire::error(reason::UNSUPPORTED),
    }
}

/// The session `conn` holds; the cache is caught up with the store before it is believed when
/// it knows none (the connection may have authenticated through another worker a moment ago).
async fn session_of<B: Bus>(n: &Node<B>, conn: &str) -> Result<Option<String>, DecideError> {
    if let Some(s) = lock(&n.cache).session_of(conn) {
        return Ok(Some(s.to_owned()));
    }
    n.catch_up(Bucket::Sessions).await?;
    Ok(lock(&n.cache).session_of(conn).map(str::to_owned))
}

/// Room `room_id` with `session` a member of it, reading the room's key when the cache does not
/// show it so (it may have joined through another worker a moment ago).
async fn membership<B: Bus>(
    n: &Node<B>,
    session: &str,
    room_id: &str,
) -> Result<Result<RoomRecord, &'static str>, DecideError> {
    let member =
        |cache: &Cache| cache.room(room_id).map(|r| (r.value.member(session).is_some(), r.value.clone()));
    let first = member(&lock(&n.cache));
    let found = match first {
        Some((true, room)) => return Ok(Ok(room)),
        _ => {
            directory::read(&n.store, &n.layout, &n.cache, &Some(room_id.to_owned()), &None).await?;
            member(&lock(&n.cache))
        }
    };
    Ok(match found {
        Some((true, room)) => Ok(room),
        Some((false, _)) => Err(status::NOT_IN_ROOM),
        None => Err(status::NOT_FOUND),
    })
}

async fn authenticate<B: Bus>(
    n: &Node<B>,
    conn: &str,
    g: &str,
    auth: pcast::Authenticate,
    claims: Option<&Claims>,
) -> Result<pcast::AuthenticateResponse, DecideError> {
    let refuse =
        |status: &str| pcast::AuthenticateResponse { status: status.to_owned(), ..Default::default() };
    if lock(&n.cache).ended(conn).is_some() {
        return Ok(refuse(status::UNAUTHORIZED));
    }
    let asked = auth.session_id.filter(|id| !id.is_empty());
    if let Some(id) = &asked
        && lock(&n.cache).session(id).is_none()
    {
        // Perhaps made a moment ago through another worker.
        super::follow::refresh(&n.store, &n.layout.sessions, Bucket::Sessions, &session_key(id), &n.cache)
            .await?;
    }
    // The session `conn` holds now, if another than the one it asks for, is let go first.
    let held = lock(&n.cache).session_of(conn).map(str::to_owned);
    if let Some(old) = held.filter(|old| Some(old) != asked.as_ref()) {
        let (now, grace) = (n.now_ms(), grace_ms(n));
        let detached =
            decide(&n.store, &n.layout, &n.cache, |c| sessions::let_go(c, conn, now, grace)).await?;
        if detached.as_deref() == Some(old.as_str()) {
            n.tell_released(&old).await?;
        }
    }
    let token_bound = claims.is_some_and(|c| c.session_id.is_some());
    let new_id = n.random_id(SESSION_ID_LEN);
    let max = n.config.max_sessions;
    let (result, previous) = decide(&n.store, &n.layout, &n.cache, |c| {
        let previous = asked.as_deref().and_then(|id| c.session(id)).map(|s| s.value.clone());
        sessions::authenticate(c, conn, g, asked.as_deref(), token_bound, &new_id, max).map(|r| (r, previous))
    })
    .await?;
    let id = match result {
        Ok(id) => id,
        Err(status) => return Ok(refuse(status)),
    };
    if previous.is_some() {
        // A resumed session's rooms, all of them: one joined through another worker a moment ago
        // may not be in this cache yet.
        n.catch_up(Bucket::Rooms).await?;
    }
    // Whether or not this attempt wrote: a retry after a worker died midway finds the binding
    // made, and perhaps not its subscriptions. Acknowledged, so that the answer comes after the
    // gateway hears the rooms at the server; tried twice (a lost telling left a resumed
    // connection deaf to a message published right after its answer: explore seed
    // 640,006,629).
    let binding = n.binding(&id);
    let tell_holder = async {
        n.tell_rooms(&id, (g, conn), true, binding).await || n.tell_rooms(&id, (g, conn), true, binding).await
    };
    // Beside it, the connection a takeover left (now or by an attempt that died midway) stops
    // hearing the session's rooms: its gateway, cut off, holds the acknowledgement for its
    // bound, and the new connection waited that long for its rooms (explore seed 650,004,653).
    let (released, told) = tokio::join!(n.tell_released(&id), tell_holder);
    released?;
    if told {
        // Told: a resumed session's new connection is owed its rooms no longer (should this
        // worker die before here, or the gateway not answer, any worker's sweep tells it).
        decide(&n.store, &n.layout, &n.cache, |c| sessions::told_holder(c, &id, conn, g)).await?;
    }
    // A connection whose end was recorded before this bind is let go again (see `sessions`).
    let written = lock(&n.cache).revision(Bucket::Sessions, &session_key(&id));
    n.followed(Bucket::Sessions, written).await;
    if lock(&n.cache).ended(conn).is_some() {
        let (now, grace) = (n.now_ms(), grace_ms(n));
        decide(&n.store, &n.layout, &n.cache, |c| sessions::detach(c, conn, now, grace)).await?;
        return Ok(refuse(status::UNAUTHORIZED));
    }
    Ok(pcast::AuthenticateResponse {
        status: status::OK.to_owned(),
        session_id: Some(id),
        redirect: None,
        roles: Vec::new(),
    })
}

fn grace_ms<B: Bus>(n: &Node<B>) -> u64 {
    u64::try_from(n.config.session_grace.as_millis()).unwrap_or(u64::MAX)
}

/// The session is let go with no grace first, so its record names `conn` until it is told to
/// stop hearing the session's rooms (which `end_session` does before it ends the session): a
/// worker that dies between those writes and unsubscriptions leaves both (the end, due at
/// once, and the telling) to any worker's sweep.
async fn bye<B: Bus>(n: &Node<B>, session: &str, conn: &str) -> Result<pcast::ByeResponse, DecideError> {
    let now = n.now_ms();
    decide(&n.store, &n.layout, &n.cache, |c| sessions::let_go(c, conn, now, 0)).await?;
    n.end_session(session, false).await?;
    Ok(pcast::ByeResponse { status: status::OK.to_owned() })
}

async fn create_room<B: Bus>(
    n: &Node<B>,
    req: chat::CreateRoom,
) -> Result<chat::CreateRoomResponse, DecideError> {
    if let Err(status) = n.limits.room(&req.room) {
        return Ok(chat::CreateRoomResponse { status: status.to_owned(), room: None });
    }
    let id = n.random_id(ROOM_ID_LEN);
    directory::create(&n.store, &n.layout, &n.cache, req.room, &id, n.now_ms(), n.config.max_rooms).await
}

async fn room_info<B: Bus>(
    n: &Node<B>,
    req: chat::GetRoomInfo,
) -> Result<chat::GetRoomInfoResponse, DecideError> {
    Ok(match directory::lookup(&n.store, &n.layout, &n.cache, &req.room_id, &req.alias).await? {
        Some(room) => chat::GetRoomInfoResponse {
            status: status::OK.to_owned(),
            members: room.listed(),
            room: room.info,
            options: Vec::new(),
        },
        None => chat::GetRoomInfoResponse { status: status::NOT_FOUND.to_owned(), ..Default::default() },
    })
}

async fn join_room<B: Bus>(
    n: &Node<B>,
    session: &str,
    conn: &str,
    g: &str,
    req: chat::JoinRoom,
) -> Result<chat::JoinRoomResponse, DecideError> {
    let answer = |status: &str| chat::JoinRoomResponse { status: status.to_owned(), ..Default::default() };
    let Some(room) = directory::lookup(&n.store, &n.layout, &n.cache, &req.room_id, &req.alias).await? else {
        return Ok(answer(status::NOT_FOUND));
    };
    if let Err(status) = n.limits.member(&req.member) {
        return Ok(answer(status));
    }
    let room_id = room.room_id().to_owned();
    let (now, max_members, max_rooms) =
        (n.now_ms(), n.config.max_members_per_room, n.config.max_rooms_per_session);
    let join = |c: &Cache| {
        holding(c, conn, session, Err(status::UNAUTHORIZED), |c| {
            rooms::join(c, session, &room_id, req.member.clone(), now, max_members, max_rooms)
        })
    };
    // Subscribed once the join is written and before its event is appended: the member hears
    // its own arrival and everything after it, and a refused join subscribes nothing.
    let subscribe = |joined: &Result<RoomRecord, &str>, revision| {
        let (joined, room_id) = (joined.is_ok(), &room_id);
        async move {
            !joined || n.tell_holder(session, (g, conn), room_id, &[(Topic::Room, true)], revision).await
        }
    };
    let record = match decide_room_then(&n.store, &n.layout, &n.cache, &room_id, join, subscribe).await? {
        Ok(record) => record,
        Err(status) => return Ok(answer(status)),
    };
    Ok(chat::JoinRoomResponse {
        status: status::OK.to_owned(),
        members: record.listed(),
        self_: record.member(session).cloned(),
        room: record.info,
        options: Vec::new(),
    })
}

/// `decide`, if `conn` still holds `session` in the cache decided on; else nothing, answering
/// `refused`. A decision that subscribes is taken for the connection that asked only: one from a
/// connection whose session moved on while it waited (a resume elsewhere, an end) would subscribe
/// the new holder after its resume was answered, and under contention a decision waits seconds.
/// The cache lags the store by a follower's delay, so this narrows the window to that delay; the
/// store has no write conditional on two keys to close it.
fn holding<T>(
    cache: &Cache,
    conn: &str,
    session: &str,
    refused: T,
    decide: impl FnOnce(&Cache) -> Decided<T>,
) -> Decided<T> {
    if cache.session_of(conn) == Some(session) { decide(cache) } else { Decided::Nothing(refused) }
}

/// Leaving is idempotent: `ok` even when not a member, so the gateway drops its subscription.
async fn leave_room<B: Bus>(
    n: &Node<B>,
    session: &str,
    conn: &str,
    g: &str,
    req: chat::LeaveRoom,
) -> Result<chat::LeaveRoomResponse, DecideError> {
    let now = n.now_ms();
    let room = req.room_id.clone();
    // The cache may not show a membership made through another worker a moment ago; a leave
    // goes on whatever this says.
    let _member = membership(n, session, &room).await?;
    // Decided, then it stops hearing the room, then the others are told: its subscription ends
    // with its membership, and it does not hear its own departure.
    let leave = |c: &Cache| rooms::leave(c, session, &room, now);
    let unsubscribe = |_: &bool, revision| {
        let room = &room;
        async move {
            let off = [(Topic::Room, false), (Topic::Conversation, false)];
            n.tell_holder(session, (g, conn), room, &off, revision).await
        }
    };
    decide_room_then(&n.store, &n.layout, &n.cache, &room, leave, unsubscribe).await?;
    Ok(chat::LeaveRoomResponse { status: status::OK.to_owned() })
}

async fn update_member<B: Bus>(
    n: &Node<B>,
    session: &str,
    req: chat::UpdateMember,
) -> Result<chat::UpdateMemberResponse, DecideError> {
    let answer =
        |status: &str, last_update| chat::UpdateMemberResponse { status: status.to_owned(), last_update };
    let Some(room_id) = is_set(&req.room_id).map(str::to_owned) else {
        return Ok(answer(status::BAD_REQUEST, None));
    };
    if let Err(status) = n.limits.member_update(&req.member) {
        return Ok(answer(status, None));
    }
    if let Err(status) = membership(n, session, &room_id).await? {
        return Ok(answer(status, None));
    }
    let now = n.now_ms();
    let update = |c: &Cache| rooms::update_member(c, session, &room_id, &req.member, now);
    Ok(match decide_room(&n.store, &n.layout, &n.cache, &room_id, update).await? {
        Ok(at) => answer(status::OK, Some(at)),
        Err(status) => answer(status, None),
    })
}

async fn update_room<B: Bus>(
    n: &Node<B>,
    session: &str,
    req: chat::UpdateRoom,
) -> Result<chat::UpdateRoomResponse, DecideError> {
    let answer = |status: &str| chat::UpdateRoomResponse { status: status.to_owned() };
    let Some(room) =
        directory::lookup(&n.store, &n.layout, &n.cache, &req.room.room_id, &req.room.alias).await?
    else {
        return Ok(answer(status::NOT_FOUND));
    };
    let room_id = room.room_id().to_owned();
    if let Err(status) = membership(n, session, &room_id).await?.map(drop).and(n.limits.room(&req.room)) {
        return Ok(answer(status));
    }
    Ok(answer(
        directory::update(&n.store, &n.layout, &n.cache, session, &room_id, req.room, n.now_ms()).await?,
    ))
}

async fn send<B: Bus>(
    n: &Node<B>,
    session: &str,
    req: chat::SendMessageToRoom,
) -> Result<chat::SendMessageToRoomResponse, DecideError> {
    let answer = |status: &str| chat::SendMessageToRoomResponse { status: status.to_owned() };
    let room = match membership(n, session, &req.room_id).await? {
        Ok(room) => room,
        Err(status) => return Ok(answer(status)),
    };
    let text = req.chat_message.message;
    if text.is_empty() {
        return Ok(answer(status::BAD_REQUEST));
    }
    if text.len() > n.config.max_message_bytes {
        return Ok(answer(status::TOO_LARGE));
    }
    let me = room.member(session).expect("a member");
    let from = chat::ChatUser {
        session_id: Some(session.to_owned()),
        screen_name: me.screen_name.clone(),
        role: me.role,
        last_update: me.last_update,
    };
    let hint = n.hint(&req.room_id);
    let sent =
        conversation::send(&n.store, &n.layout, &req.room_id, from, &text, n.now_ms(), &n.send_id(), hint)
            .await?;
    n.set_hint(&req.room_id, sent.seq);
    Ok(answer(status::OK))
}

async fn fetch<B: Bus>(
    n: &Node<B>,
    session: &str,
    conn: &str,
    g: &str,
    req: chat::FetchRoomConversation,
) -> Result<chat::FetchRoomConversationResponse, DecideError> {
    let answer = |status: &str, chat_messages| chat::FetchRoomConversationResponse {
        status: status.to_owned(),
        chat_messages,
    };
    if let Err(status) = membership(n, session, &req.room_id).await? {
        return Ok(answer(status, Vec::new()));
    }
    // Remembered for a resume too.
    if req.options.contains(&(chat::RoomConversationOption::Subscribe as i32)) {
        let listen = |c: &Cache| {
            holding(c, conn, session, Err(status::UNAUTHORIZED), |c| rooms::listen(c, session, &req.room_id))
        };
        let subscribe = |listening: &Result<bool, &str>, revision| {
            let listening = listening.is_ok();
            let room = &req.room_id;
            async move {
                !listening
                    || n.tell_holder(session, (g, conn), room, &[(Topic::Conversation, true)], revision).await
            }
        };
        if let Err(status) =
            decide_room_then(&n.store, &n.layout, &n.cache, &req.room_id, listen, subscribe).await?
        {
            return Ok(answer(status, Vec::new()));
        }
    }
    let history = conversation::history(&n.store, &n.layout, &req.room_id).await?;
    Ok(answer(status::OK, window(history.iter(), &req)))
}

#[cfg(test)]
mod tests;
