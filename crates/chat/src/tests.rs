//! The chat state machine, driven directly with synthetic time.

use std::time::{Duration, Instant};

use clientmq_core::proto::{chat, mq, pcast};
use clientmq_core::{ConnectionId, Target};
use prost::Message;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;
use chat::RoomEventType;
use clientmq_core::edge_auth::Claims;

const SEC: Duration = Duration::from_secs(1);

struct Fixture {
    state: ChatState,
    now: Instant,
}

fn conn(n: u32) -> ConnectionId {
    format!("{n:0>32}").parse().unwrap()
}

fn config() -> ChatConfig {
    ChatConfig {
        session_grace: 10 * SEC,
        room_idle: 100 * SEC,
        wall_clock_start_ms: 1_000_000,
        ..ChatConfig::default()
    }
}

fn member(name: &str) -> chat::Member {
    chat::Member {
        screen_name: name.into(),
        role: chat::MemberRole::Participant as i32,
        ..Default::default()
    }
}

fn room(name: &str, alias: Option<&str>) -> chat::Room {
    chat::Room {
        name: name.into(),
        description: "d".into(),
        r#type: chat::RoomType::MultiPartyChat as i32,
        alias: alias.map(str::to_owned),
        ..Default::default()
    }
}

impl Fixture {
    fn new(config: ChatConfig) -> Self {
        let now = Instant::now();
        Fixture { state: ChatState::new(config, StdRng::seed_from_u64(3), now), now }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.state.expire(self.now);
        self.state.check_invariants().unwrap();
    }

    fn raw(&mut self, c: ConnectionId, ty: &str, payload: Vec<u8>) -> clientmq_core::Reply {
        self.raw_with(c, ty, payload, None)
    }

    fn raw_with(
        &mut self,
        c: ConnectionId,
        ty: &str,
        payload: Vec<u8>,
        claims: Option<&Claims>,
    ) -> clientmq_core::Reply {
        let reply = self.state.handle(c, ty, &payload, claims, self.now);
        self.state.check_invariants().unwrap();
        reply
    }

    fn call<Resp: Message + Default>(&mut self, c: ConnectionId, ty: &str, req: impl Message) -> Resp {
        let reply = self.raw(c, ty, req.encode_to_vec());
        assert_eq!(reply.reply_type, format!("{ty}Response"), "{ty}: {reply:?}");
        Resp::decode(reply.payload.as_slice()).unwrap()
    }

    fn error(&mut self, c: ConnectionId, ty: &str, payload: Vec<u8>) -> String {
        let reply = self.raw(c, ty, payload);
        assert_eq!(reply.reply_type, "mq.Error");
        mq::Error::decode(reply.payload.as_slice()).unwrap().reason
    }

    fn auth(&mut self, c: ConnectionId, token: &str, session: Option<&str>) -> pcast::AuthenticateResponse {
        let req = pcast::Authenticate {
            authentication_token: token.into(),
            session_id: session.map(str::to_owned),
            ..Default::default()
        };
        self.call(c, "pcast.Authenticate", req)
    }

    fn login(&mut self, c: ConnectionId) -> String {
        let resp = self.auth(c, "good", None);
        assert_eq!(resp.status, "ok");
        resp.session_id.unwrap()
    }

    fn create(&mut self, c: ConnectionId, alias: Option<&str>) -> chat::CreateRoomResponse {
        self.call(
            c,
            "chat.CreateRoom",
            chat::CreateRoom { session_id: String::new(), room: room("r", alias) },
        )
    }

    fn join(&mut self, c: ConnectionId, room_id: &str, name: &str) -> chat::JoinRoomResponse {
        let req =
            chat::JoinRoom { room_id: Some(room_id.into()), member: member(name), ..Default::default() };
        self.call(c, "chat.JoinRoom", req)
    }

    fn send(&mut self, c: ConnectionId, room_id: &str, text: &str) -> String {
        let req = chat::SendMessageToRoom {
            room_id: room_id.into(),
            chat_message: chat::ChatMessage { message: text.into(), ..Default::default() },
        };
        self.call::<chat::SendMessageToRoomResponse>(c, "chat.SendMessageToRoom", req).status
    }

    fn fetch(
        &mut self,
        c: ConnectionId,
        room_id: &str,
        limit: u32,
        after: Option<&str>,
        before: Option<&str>,
    ) -> Vec<String> {
        let req = chat::FetchRoomConversation {
            room_id: room_id.into(),
            limit,
            after_message_id: after.map(str::to_owned),
            before_message_id: before.map(str::to_owned),
            ..Default::default()
        };
        let resp: chat::FetchRoomConversationResponse = self.call(c, "chat.FetchRoomConversation", req);
        assert_eq!(resp.status, "ok");
        resp.chat_messages.into_iter().map(|m| m.message).collect()
    }

    /// Events since the last call; subscription changes are left out (see `subscriptions.rs`).
    fn events(&mut self) -> Vec<Delivery> {
        let outgoing = self.state.take_outgoing().into_iter();
        outgoing.filter_map(|o| if let Outgoing::Event(d) = o { Some(d) } else { None }).collect()
    }

    /// Room events since the last call: (target room, kind, member session ids).
    fn room_events(&mut self) -> Vec<(String, RoomEventType, Vec<String>)> {
        self.events()
            .into_iter()
            .filter(|d| d.event_type == "chat.RoomEvent")
            .map(|d| {
                let Target::Room(room) = d.target else { panic!("room events go to rooms") };
                let e = chat::RoomEvent::decode(d.payload.as_slice()).unwrap();
                let kind = RoomEventType::try_from(e.event_type).unwrap();
                (room, kind, e.members.into_iter().map(|m| m.session_id).collect())
            })
            .collect()
    }
}

#[test]
fn requests_before_authenticate_are_unauthorized_and_unknown_types_unsupported() {
    let mut f = Fixture::new(config());
    let a = conn(1);
    assert_eq!(f.error(a, "chat.CreateRoom", vec![]), reason::UNAUTHORIZED);
    assert_eq!(f.error(a, "some.Thing", vec![]), reason::UNAUTHORIZED);
    // Tokens are the gateway's to check (crates/core/tests/paths/tokens.rs): what reaches the
    // chat logic was accepted.
    f.login(a);
    assert_eq!(f.error(a, "pcast.SetupStream", vec![]), reason::UNSUPPORTED);
    assert_eq!(f.error(a, "chat.DestroyRoom", vec![]), reason::UNSUPPORTED);
    assert_eq!(f.error(a, "chat.JoinRoom", vec![0xff, 0xff]), reason::MALFORMED);
}

#[test]
fn a_token_minted_for_a_session_resumes_it_or_nothing() {
    let mut f = Fixture::new(config());
    let sa = f.login(conn(1));
    f.state.disconnected(conn(1), f.now);
    let bound = |session: &str| {
        Claims::from_verified("app", &format!(r#"{{"expires":1,"sessionId":"{session}"}}"#)).unwrap()
    };
    let auth = |session: &str| {
        pcast::Authenticate { session_id: Some(session.to_owned()), ..Default::default() }.encode_to_vec()
    };
    // The gateway made sure the session asked for is the token's; it must still exist here.
    let resumed = f.raw_with(conn(2), "pcast.Authenticate", auth(&sa), Some(&bound(&sa)));
    let resumed = pcast::AuthenticateResponse::decode(resumed.payload.as_slice()).unwrap();
    assert_eq!((resumed.status.as_str(), resumed.session_id.as_deref()), ("ok", Some(sa.as_str())));
    let gone = f.raw_with(conn(3), "pcast.Authenticate", auth("gone"), Some(&bound("gone")));
    let gone = pcast::AuthenticateResponse::decode(gone.payload.as_slice()).unwrap();
    assert_eq!(gone.status, "unauthorized", "no new session for a session-bound token");
    assert_eq!(f.state.stats().sessions, 1);
}

#[test]
fn resume_within_grace_keeps_the_session_and_its_rooms() {
    let mut f = Fixture::new(config());
    let (a, b) = (conn(1), conn(2));
    let sa = f.login(a);
    let sb = f.login(b);
    assert_ne!(sa, sb);
    let room_id = f.create(a, None).room.unwrap().room_id.unwrap();
    f.join(a, &room_id, "alice");
    f.join(b, &room_id, "bob");
    f.room_events();
    f.state.disconnected(a, f.now);
    f.advance(9 * SEC);
    assert_eq!(f.state.stats().detached, 1);
    let a2 = conn(3);
    let resumed = f.auth(a2, "good", Some(&sa));
    assert_eq!(resumed.session_id.as_deref(), Some(sa.as_str()));
    assert_eq!(f.state.members(&room_id), sorted([sa.clone(), sb.clone()]));
    f.advance(60 * SEC);
    assert_eq!(f.state.members(&room_id).len(), 2, "no expiry once resumed");
    assert!(f.room_events().is_empty());
    // The SDK re-enters with the same member: nothing changed, nothing to tell.
    let again = f.join(a2, &room_id, "alice");
    assert_eq!((again.status.as_str(), again.members.len()), ("ok", 2));
    assert!(f.room_events().is_empty());
    f.join(a2, &room_id, "alice2");
    assert_eq!(f.room_events(), vec![(room_id.clone(), RoomEventType::MemberUpdated, vec![sa.clone()])]);
}

fn sorted<const N: usize>(mut ids: [String; N]) -> Vec<String> {
    ids.sort();
    ids.to_vec()
}

#[test]
fn after_the_grace_period_the_member_leaves_and_a_new_session_is_issued() {
    let mut f = Fixture::new(config());
    let (a, b) = (conn(1), conn(2));
    let sa = f.login(a);
    let sb = f.login(b);
    let room_id = f.create(a, None).room.unwrap().room_id.unwrap();
    f.join(a, &room_id, "alice");
    f.join(b, &room_id, "bob");
    f.room_events();
    f.state.disconnected(a, f.now);
    assert_eq!(f.state.next_deadline(), Some(f.now + 10 * SEC));
    f.advance(10 * SEC);
    assert_eq!(f.room_events(), vec![(room_id.clone(), RoomEventType::MemberLeft, vec![sa.clone()])]);
    assert_eq!(f.state.members(&room_id), vec![sb]);
    let fresh = f.auth(conn(3), "good", Some(&sa));
    assert_eq!(fresh.status, "ok");
    assert_ne!(fresh.session_id.as_deref(), Some(sa.as_str()));
}

#[test]
fn a_resume_takes_the_session_over_from_a_connection_not_yet_seen_ending() {
    let mut f = Fixture::new(config());
    let (old, new) = (conn(1), conn(2));
    let s = f.login(old);
    assert_eq!(f.auth(new, "good", Some(&s)).session_id.as_deref(), Some(s.as_str()));
    assert_eq!(f.error(old, "chat.GetRoomInfo", vec![]), reason::UNAUTHORIZED);
    // The old socket's end, when it comes, must not start the grace period of a live session.
    f.state.disconnected(old, f.now);
    assert_eq!(f.state.stats().detached, 0);
    assert_eq!(f.state.next_deadline(), None);
    // Re-authenticating without a session id on a bound connection starts a new one.
    let other = f.auth(new, "good", None).session_id.unwrap();
    assert_ne!(other, s);
    assert_eq!(f.state.stats().detached, 1);
}

#[test]
fn an_authenticate_that_raced_past_its_connection_end_binds_nothing() {
    let mut f = Fixture::new(config());
    f.state.disconnected(conn(1), f.now);
    assert_eq!(f.auth(conn(1), "good", None).status, "unauthorized");
    assert_eq!(f.state.stats().sessions, 0);
}

#[test]
fn bye_ends_the_session_and_its_memberships() {
    let mut f = Fixture::new(config());
    let (a, b) = (conn(1), conn(2));
    let sa = f.login(a);
    f.login(b);
    let room_id = f.create(a, None).room.unwrap().room_id.unwrap();
    f.join(a, &room_id, "alice");
    f.join(b, &room_id, "bob");
    f.room_events();
    let bye = pcast::Bye { session_id: sa.clone(), reason: "done".into() };
    assert_eq!(f.call::<pcast::ByeResponse>(a, "pcast.Bye", bye).status, "ok");
    assert_eq!(f.room_events(), vec![(room_id.clone(), RoomEventType::MemberLeft, vec![sa])]);
    assert_eq!(f.error(a, "chat.GetRoomInfo", vec![]), reason::UNAUTHORIZED);
    assert_eq!(f.state.stats().sessions, 1);
}

#[test]
fn rooms_are_created_found_and_aliases_are_unique() {
    let mut f = Fixture::new(config());
    let a = conn(1);
    f.login(a);
    let created = f.create(a, Some("lobby"));
    assert_eq!(created.status, "ok");
    let info = created.room.unwrap();
    let id = info.room_id.clone().unwrap();
    assert_eq!(id.len(), 24);
    let taken = f.create(a, Some("lobby"));
    assert_eq!((taken.status.as_str(), taken.room), ("already-exists", Some(info.clone())));
    for (room_id, alias) in [(Some(id.clone()), None), (None, Some("lobby".to_owned()))] {
        let req = chat::GetRoomInfo { room_id, alias, ..Default::default() };
        let resp: chat::GetRoomInfoResponse = f.call(a, "chat.GetRoomInfo", req);
        assert_eq!((resp.status.as_str(), resp.room.as_ref()), ("ok", Some(&info)));
    }
    let missing = chat::GetRoomInfo { alias: Some("nope".into()), ..Default::default() };
    assert_eq!(f.call::<chat::GetRoomInfoResponse>(a, "chat.GetRoomInfo", missing).status, "not-found");
    let bad =
        chat::CreateRoom { session_id: String::new(), room: chat::Room { r#type: 42, ..room("x", None) } };
    assert_eq!(f.call::<chat::CreateRoomResponse>(a, "chat.CreateRoom", bad).status, "bad-request");
}

#[test]
fn join_by_alias_answers_room_members_and_self_and_tells_the_room() {
    let mut f = Fixture::new(config());
    let (a, b) = (conn(1), conn(2));
    let sa = f.login(a);
    let sb = f.login(b);
    let id = f.create(a, Some("lobby")).room.unwrap().room_id.unwrap();
    f.join(a, &id, "alice");
    f.room_events();
    let mut claimed = member("bob");
    claimed.session_id = "someone-else".into();
    let req = chat::JoinRoom { alias: Some("lobby".into()), member: claimed, ..Default::default() };
    let resp: chat::JoinRoomResponse = f.call(b, "chat.JoinRoom", req);
    assert_eq!(resp.status, "ok");
    assert_eq!(resp.room.unwrap().room_id.as_deref(), Some(id.as_str()));
    assert_eq!(resp.members.len(), 2);
    let me = resp.self_.unwrap();
    assert_eq!((me.session_id.as_str(), me.screen_name.as_str()), (sb.as_str(), "bob"));
    assert!(me.last_update >= 1_000_000, "server time: {}", me.last_update);
    assert_eq!(f.room_events(), vec![(id.clone(), RoomEventType::MemberJoined, vec![sb.clone()])]);
    // Leaving tells the room; leaving again is still ok (the gateway drops its subscription).
    let leave = chat::LeaveRoom { room_id: id.clone(), ..Default::default() };
    assert_eq!(f.call::<chat::LeaveRoomResponse>(b, "chat.LeaveRoom", leave.clone()).status, "ok");
    assert_eq!(f.room_events(), vec![(id.clone(), RoomEventType::MemberLeft, vec![sb])]);
    assert_eq!(f.call::<chat::LeaveRoomResponse>(b, "chat.LeaveRoom", leave).status, "ok");
    assert!(f.room_events().is_empty());
    assert_eq!(f.state.members(&id), vec![sa]);
    let unknown = chat::JoinRoom { room_id: Some("nope".into()), member: member("x"), ..Default::default() };
    assert_eq!(f.call::<chat::JoinRoomResponse>(b, "chat.JoinRoom", unknown).status, "not-found");
}

#[test]
fn members_update_themselves_and_moderators_update_anyone() {
    let mut f = Fixture::new(config());
    let (a, b) = (conn(1), conn(2));
    let sa = f.login(a);
    let sb = f.login(b);
    let id = f.create(a, None).room.unwrap().room_id.unwrap();
    f.join(a, &id, "alice");
    f.join(b, &id, "bob");
    f.room_events();
    let update = |who: &str, name: &str| chat::UpdateMember {
        room_id: Some(id.clone()),
        member: chat::MemberUpdate {
            session_id: who.into(),
            screen_name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let own: chat::UpdateMemberResponse = f.call(b, "chat.UpdateMember", update(&sb, "bobby"));
    assert_eq!(own.status, "ok");
    assert!(own.last_update.is_some());
    assert_eq!(f.room_events(), vec![(id.clone(), RoomEventType::MemberUpdated, vec![sb.clone()])]);
    let other: chat::UpdateMemberResponse = f.call(b, "chat.UpdateMember", update(&sa, "x"));
    assert_eq!(other.status, "unauthorized");
    let promote = chat::UpdateMember {
        room_id: Some(id.clone()),
        member: chat::MemberUpdate { role: Some(chat::MemberRole::Moderator as i32), ..Default::default() },
        ..Default::default()
    };
    assert_eq!(f.call::<chat::UpdateMemberResponse>(a, "chat.UpdateMember", promote).status, "ok");
    assert_eq!(f.call::<chat::UpdateMemberResponse>(a, "chat.UpdateMember", update(&sb, "b2")).status, "ok");
    let no_room = chat::UpdateMember { room_id: None, ..update(&sb, "b3") };
    assert_eq!(f.call::<chat::UpdateMemberResponse>(a, "chat.UpdateMember", no_room).status, "bad-request");
}

#[test]
fn room_updates_reach_the_room_and_keep_aliases_unique() {
    let mut f = Fixture::new(config());
    let a = conn(1);
    f.login(a);
    let with_options = chat::Room { options: vec!["opt".into()], ..room("r", Some("one")) };
    let created: chat::CreateRoomResponse =
        f.call(a, "chat.CreateRoom", chat::CreateRoom { session_id: String::new(), room: with_options });
    let id = created.room.unwrap().room_id.unwrap();
    f.create(a, Some("two"));
    let update = |alias: &str, name: &str| chat::UpdateRoom {
        session_id: String::new(),
        room: chat::Room { room_id: Some(id.clone()), ..room(name, Some(alias)) },
        timestamp: 0,
    };
    assert_eq!(
        f.call::<chat::UpdateRoomResponse>(a, "chat.UpdateRoom", update("one", "n")).status,
        "not-in-room"
    );
    f.join(a, &id, "alice");
    f.events();
    assert_eq!(
        f.call::<chat::UpdateRoomResponse>(a, "chat.UpdateRoom", update("two", "n")).status,
        "already-exists"
    );
    assert_eq!(f.call::<chat::UpdateRoomResponse>(a, "chat.UpdateRoom", update("three", "new")).status, "ok");
    let events = f.events();
    let event = chat::RoomEvent::decode(events[0].payload.as_slice()).unwrap();
    assert_eq!(event.event_type, RoomEventType::RoomUpdated as i32);
    let info = event.room.unwrap();
    assert_eq!((info.name.as_str(), info.alias.as_deref()), ("new", Some("three")));
    assert_eq!(info.options, ["opt"], "an update without options keeps them");
    let by_old = chat::GetRoomInfo { alias: Some("one".into()), ..Default::default() };
    assert_eq!(f.call::<chat::GetRoomInfoResponse>(a, "chat.GetRoomInfo", by_old).status, "not-found");
}

#[test]
fn messages_get_server_ids_and_times_in_order_and_history_is_bounded() {
    let mut f = Fixture::new(ChatConfig { max_history: 3, max_message_bytes: 10, ..config() });
    let (a, b) = (conn(1), conn(2));
    let sa = f.login(a);
    f.login(b);
    let id = f.create(a, None).room.unwrap().room_id.unwrap();
    assert_eq!(f.send(a, &id, "hi"), "not-in-room");
    f.join(a, &id, "alice");
    f.events();
    for text in ["m1", "m2", "m3", "m4"] {
        assert_eq!(f.send(a, &id, text), "ok");
        f.now += Duration::from_millis(5);
    }
    assert_eq!(f.send(a, &id, "far too long"), "too-large");
    assert_eq!(f.send(a, &id, ""), "bad-request");
    let events: Vec<chat::ChatMessage> = f
        .events()
        .into_iter()
        .map(|d| {
            assert_eq!(
                (d.target, d.event_type),
                (Target::Conversation(id.clone()), "chat.RoomConversationEvent")
            );
            chat::RoomConversationEvent::decode(d.payload.as_slice()).unwrap().chat_messages.remove(0)
        })
        .collect();
    assert_eq!(events.len(), 4);
    assert!(events.windows(2).all(|w| w[0].message_id < w[1].message_id && w[0].timestamp < w[1].timestamp));
    assert_eq!(events[0].from.session_id.as_deref(), Some(sa.as_str()));
    assert_eq!(events[0].from.screen_name, "alice");
    // Only the latest three are kept; only members may read them.
    assert_eq!(f.fetch(a, &id, 10, None, None), ["m2", "m3", "m4"]);
    let not_member = chat::FetchRoomConversation { room_id: id.clone(), limit: 1, ..Default::default() };
    let resp: chat::FetchRoomConversationResponse = f.call(b, "chat.FetchRoomConversation", not_member);
    assert_eq!(resp.status, "not-in-room");
}

#[test]
fn fetch_pages_by_limit_before_and_after() {
    let mut f = Fixture::new(config());
    let a = conn(1);
    f.login(a);
    let id = f.create(a, None).room.unwrap().room_id.unwrap();
    f.join(a, &id, "alice");
    for n in 1..=6 {
        f.send(a, &id, &format!("m{n}"));
    }
    let ids: Vec<String> = f.state.rooms[&id].history.iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(f.fetch(a, &id, 2, None, None), ["m5", "m6"]);
    assert_eq!(f.fetch(a, &id, 0, None, None), Vec::<String>::new());
    assert_eq!(f.fetch(a, &id, 2, Some(&ids[1]), None), ["m3", "m4"]);
    assert_eq!(f.fetch(a, &id, 2, None, Some(&ids[4])), ["m3", "m4"]);
    assert_eq!(f.fetch(a, &id, 0, Some(&ids[0]), Some(&ids[4])), ["m2", "m3", "m4"]);
    assert_eq!(f.fetch(a, &id, 1, Some(&ids[0]), Some(&ids[4])), ["m4"]);
}

#[test]
fn every_bound_answers_with_a_status() {
    let cfg = ChatConfig {
        max_sessions: 2,
        max_rooms: 2,
        max_members_per_room: 1,
        max_rooms_per_session: 1,
        ..config()
    };
    let mut f = Fixture::new(cfg);
    let (a, b) = (conn(1), conn(2));
    f.login(a);
    f.login(b);
    assert_eq!(f.auth(conn(3), "good", None).status, "capacity");
    let r1 = f.create(a, None).room.unwrap().room_id.unwrap();
    let r2 = f.create(a, None).room.unwrap().room_id.unwrap();
    assert_eq!(f.create(a, None).status, "capacity");
    assert_eq!(f.join(a, &r1, "alice").status, "ok");
    assert_eq!(f.join(a, &r2, "alice").status, "capacity", "rooms per session");
    assert_eq!(f.join(b, &r1, "bob").status, "capacity", "members per room");
    let most = ChatConfig::default().max_message_bytes;
    assert_eq!(f.send(a, &r1, &"x".repeat(most)), "ok", "a message of the most bytes allowed");
    assert_eq!(f.send(a, &r1, &"x".repeat(most + 1)), "too-large");
    let huge = chat::Member { screen_name: "x".repeat(5000), ..member("x") };
    let req = chat::JoinRoom { room_id: Some(r2.clone()), member: huge, ..Default::default() };
    assert_eq!(f.call::<chat::JoinRoomResponse>(b, "chat.JoinRoom", req).status, "too-large");
}

#[test]
fn empty_rooms_are_forgotten_after_the_idle_time() {
    let mut f = Fixture::new(config());
    let a = conn(1);
    f.login(a);
    let id = f.create(a, Some("lobby")).room.unwrap().room_id.unwrap();
    f.advance(50 * SEC);
    f.join(a, &id, "alice");
    f.advance(500 * SEC);
    assert_eq!(f.state.stats().rooms, 1, "occupied rooms stay");
    let leave = chat::LeaveRoom { room_id: id.clone(), ..Default::default() };
    f.call::<chat::LeaveRoomResponse>(a, "chat.LeaveRoom", leave);
    f.advance(99 * SEC);
    assert_eq!(f.state.stats().rooms, 1);
    f.advance(SEC);
    assert_eq!(f.state.stats().rooms, 0);
    assert_eq!(f.create(a, Some("lobby")).status, "ok", "the alias is free again");
}

#[test]
fn the_same_seed_gives_the_same_ids() {
    let ids = || {
        let mut f = Fixture::new(config());
        let s = f.login(conn(1));
        let r = f.create(conn(1), None).room.unwrap().room_id.unwrap();
        (s, r)
    };
    assert_eq!(ids(), ids());
}

mod broadcast;
mod edges;
mod facts;
mod subscriptions;
mod worker;
