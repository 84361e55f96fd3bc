//! A session's life on a stored worker, on the store model: its connection's end starts its
//! grace, a resume within it keeps it, and once the grace runs out it ends, leaving its rooms
//! with one `MemberLeft` each; a gateway that falls silent has its sessions detached and its
//! connections kept as orphans, told to it when it is back; a member's messages are stored
//! once each, in order, and a listener hears them; a gateway back on the bus is told again what
//! its connections hear; a session that says Bye leaves its rooms at once; a gateway whose bus
//! epoch rises is asked which connections it still has, and those it lost are detached; a room
//! nobody joins is forgotten once idle, and its alias is free again; a member's updates reach
//! the room, and what a non-member asks is refused with its status.

use std::sync::Arc;
use std::time::Duration;

use clientmq_bus::contract::{self, header};
use clientmq_bus::store::Store;
use clientmq_bus::store::loopback::ModelBus;
use clientmq_bus::{Bus as _, BusMessage, Subscription as _};
use clientmq_core::proto::{chat, pcast};
use prost::Message;

use super::layout::Layout;
use super::records::{EndedRecord, RoomKey, RoomRecord, SessionRecord, ended_key, session_key};
use super::testing::{Served, answers, conn, gateway, request, served};

/// The session's record as the store has it, if any.
async fn session(store: &Store<ModelBus>, layout: &Layout, id: &str) -> Option<SessionRecord> {
    let entry = layout.sessions.entry(store, &session_key(id)).await.unwrap()?;
    entry.value.map(|v| SessionRecord::decode(v.as_slice()).unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_session_outlives_its_connection_for_its_grace_then_leaves_its_rooms_once() {
    let bus = Arc::new(ModelBus::default());
    let _told = gateway(&bus).await;
    let mut events = bus.subscribe("clientmq.room.>", None).await.unwrap();
    let Served { mut replies, session: id, room_id, .. } = served(&bus, None, std::future::pending()).await;
    let join = chat::JoinRoom { room_id: Some(room_id.clone()), ..Default::default() };
    bus.publish(request(2, "chat.JoinRoom", join.encode_to_vec(), 10_000)).await.unwrap();
    assert_eq!(answers(&mut replies, Duration::from_millis(200)).await.len(), 1);
    let store = Store::new(bus.clone(), "reader", Duration::from_secs(1)).await.unwrap();
    let layout = Layout::new("clientmq", 1, 100);

    // The connection ends: the session is detached, its grace (30 s) running.
    let ended = BusMessage::new("clientmq.disconnected", Vec::new())
        .with(header::GATEWAY, "g1")
        .with(header::CONNECTION, conn());
    bus.publish(ended).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let detached = session(&store, &layout, &id).await.expect("kept through its grace");
    assert_eq!(detached.conn, None);
    assert!(detached.expires_ms.is_some(), "{detached:?}");

    // Resumed within it through another connection: attached again, nothing left.
    let d = "d".repeat(32);
    let auth = pcast::Authenticate { session_id: Some(id.clone()), ..Default::default() };
    let resume = BusMessage::new("clientmq.req.pcast.Authenticate", auth.encode_to_vec())
        .reply_to("t.reply.3")
        .with(header::GATEWAY, "g1")
        .with(header::CONNECTION, &d);
    bus.publish(resume).await.unwrap();
    let resumed = answers(&mut replies, Duration::from_millis(200)).await;
    let answer = pcast::AuthenticateResponse::decode(resumed[0].1.payload.as_slice()).unwrap();
    assert_eq!((answer.status.as_str(), answer.session_id.as_deref()), ("ok", Some(id.as_str())));
    let attached = session(&store, &layout, &id).await.unwrap();
    assert_eq!((attached.conn.as_deref(), attached.expires_ms), (Some(d.as_str()), None));

    // That one ends too, and nobody comes back: past the grace the session is gone, and so
    // is its member, with one MemberLeft.
    let ended = BusMessage::new("clientmq.disconnected", Vec::new())
        .with(header::GATEWAY, "g1")
        .with(header::CONNECTION, &d);
    bus.publish(ended).await.unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(session(&store, &layout, &id).await.is_some(), "not before its grace runs out");
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(session(&store, &layout, &id).await.is_none(), "ended once its grace ran out");
    let room = layout.rooms.entry(&store, &RoomKey::Room(room_id).key()).await.unwrap().unwrap();
    let room = RoomRecord::decode(room.value.unwrap().as_slice()).unwrap();
    assert!(room.member(&id).is_none(), "{:?}", room.members);
    let mut kinds = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(100), events.next()).await {
        let event = chat::RoomEvent::decode(msg.payload.as_slice()).unwrap();
        kinds.push(event.event_type);
    }
    let (joined, left) = (chat::RoomEventType::MemberJoined as i32, chat::RoomEventType::MemberLeft as i32);
    assert_eq!(kinds, [joined, left], "one arrival, one departure");
}

/// The ended mark of the test's connection as the store has it, if any.
async fn ended(store: &Store<ModelBus>, layout: &Layout) -> Option<EndedRecord> {
    let entry = layout.sessions.entry(store, &ended_key(&conn())).await.unwrap()?;
    entry.value.map(|v| EndedRecord::decode(v.as_slice()).unwrap())
}

/// Gateway `g1` says it is alive, as a gateway does every second, in bus epoch 1.
async fn announce(bus: &ModelBus) {
    announce_in(bus, 1).await;
}

async fn announce_in(bus: &ModelBus, epoch: u64) {
    let alive = BusMessage::new("clientmq.gateway.g1.alive", Vec::new())
        .with(header::GATEWAY, "g1")
        .with(header::CONNECTIONS, "1")
        .with(header::BUS_EPOCH, epoch.to_string());
    bus.publish(alive).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_silent_gateways_sessions_are_detached_and_its_connections_told_to_it_as_orphans() {
    let bus = Arc::new(ModelBus::default());
    let mut orphans = bus.subscribe("clientmq.gw.g1.orphans", None).await.unwrap();
    let Served { session: id, .. } = served(&bus, None, std::future::pending()).await;
    let store = Store::new(bus.clone(), "reader", Duration::from_secs(1)).await.unwrap();
    let layout = Layout::new("clientmq", 1, 100);
    for _ in 0..3 {
        announce(&bus).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(session(&store, &layout, &id).await.unwrap().conn.is_some(), "attached while g1 speaks");

    // Silent past the bound (5 s, checked every second).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let detached = session(&store, &layout, &id).await.expect("kept through its grace");
    assert!(detached.conn.is_none() && detached.expires_ms.is_some(), "{detached:?}");
    let marked = ended(&store, &layout).await.expect("its connection marked ended");
    assert_eq!(marked.orphan_of.as_deref(), Some("g1"));

    // Back: it is told its orphans, and once it says it closed them they are no longer kept.
    announce(&bus).await;
    let list = tokio::time::timeout(Duration::from_secs(3), orphans.next()).await.unwrap().unwrap();
    let ids = clientmq_bus::contract::parse_ids(&list.payload);
    assert_eq!(ids.iter().map(ToString::to_string).collect::<Vec<_>>(), [conn()]);
    bus.publish(BusMessage::new(list.reply.unwrap(), list.payload)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let marked = ended(&store, &layout).await.expect("still marked ended");
    assert_eq!(marked.orphan_of, None);
}

#[tokio::test(start_paused = true)]
async fn a_members_messages_are_stored_once_in_order_and_heard_by_a_listener() {
    let bus = Arc::new(ModelBus::default());
    let mut told = gateway(&bus).await;
    let Served { mut replies, room_id, .. } = served(&bus, None, std::future::pending()).await;
    let quiet = Duration::from_millis(200);
    let join = chat::JoinRoom { room_id: Some(room_id.clone()), ..Default::default() };
    bus.publish(request(2, "chat.JoinRoom", join.encode_to_vec(), 10_000)).await.unwrap();
    assert_eq!(answers(&mut replies, quiet).await.len(), 1);
    // Listening (a fetch subscribes the conversation) before anything is said.
    let fetch = chat::FetchRoomConversation {
        room_id: room_id.clone(),
        limit: 10,
        options: vec![chat::RoomConversationOption::Subscribe as i32],
        ..Default::default()
    };
    bus.publish(request(3, "chat.FetchRoomConversation", fetch.encode_to_vec(), 10_000)).await.unwrap();
    let fetched = answers(&mut replies, quiet).await;
    let read = chat::FetchRoomConversationResponse::decode(fetched[0].1.payload.as_slice()).unwrap();
    assert_eq!((read.status.as_str(), read.chat_messages.len()), ("ok", 0));
    let subscribed = super::testing::changes(&mut told);
    let conversation = format!("+conversation {room_id}");
    assert!(subscribed.iter().any(|m| m.3.contains(&conversation)), "{subscribed:?}");
    let heard_subject =
        clientmq_bus::contract::Subjects::new("clientmq").room(clientmq_core::Topic::Conversation, &room_id);
    let mut heard = bus.subscribe(&heard_subject, None).await.unwrap();

    for (n, text) in ["one", "two", "three"].into_iter().enumerate() {
        let message = chat::ChatMessage { message: text.into(), ..Default::default() };
        let send = chat::SendMessageToRoom { room_id: room_id.clone(), chat_message: message };
        bus.publish(request(4 + n, "chat.SendMessageToRoom", send.encode_to_vec(), 10_000)).await.unwrap();
        let sent = answers(&mut replies, quiet).await;
        let sent = chat::SendMessageToRoomResponse::decode(sent[0].1.payload.as_slice()).unwrap();
        assert_eq!(sent.status, "ok", "{text}");
    }
    let mut live = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(quiet, heard.next()).await {
        let event = chat::RoomConversationEvent::decode(msg.payload.as_slice()).unwrap();
        live.extend(event.chat_messages.into_iter().map(|m| m.message));
    }
    assert_eq!(live, ["one", "two", "three"], "heard live, once each, in order");
    bus.publish(request(9, "chat.FetchRoomConversation", fetch.encode_to_vec(), 10_000)).await.unwrap();
    let fetched = answers(&mut replies, quiet).await;
    let read = chat::FetchRoomConversationResponse::decode(fetched[0].1.payload.as_slice()).unwrap();
    let stored: Vec<&str> = read.chat_messages.iter().map(|m| m.message.as_str()).collect();
    assert_eq!(stored, ["one", "two", "three"], "stored once each, in order");
    let ids: std::collections::BTreeSet<&str> =
        read.chat_messages.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids.len(), 3, "each its own id");
}

#[tokio::test(start_paused = true)]
async fn a_gateway_back_on_the_bus_is_told_again_what_its_connections_hear() {
    let bus = Arc::new(ModelBus::default());
    let mut told = gateway(&bus).await;
    let mut answered = bus.subscribe("t.resubscribed", None).await.unwrap();
    let Served { mut replies, session: id, room_id, .. } = served(&bus, None, std::future::pending()).await;
    let join = chat::JoinRoom { room_id: Some(room_id.clone()), ..Default::default() };
    bus.publish(request(2, "chat.JoinRoom", join.encode_to_vec(), 10_000)).await.unwrap();
    assert_eq!(answers(&mut replies, Duration::from_millis(200)).await.len(), 1);
    let _ = super::testing::changes(&mut told);

    // Its own connection; one on the same gateway naming the session it no longer holds (it
    // moved on); and one naming a session the worker does not know.
    let (c, x, y): (clientmq_core::ConnectionId, clientmq_core::ConnectionId, clientmq_core::ConnectionId) =
        (conn().parse().unwrap(), "x".repeat(32).parse().unwrap(), "y".repeat(32).parse().unwrap());
    let list =
        clientmq_bus::contract::sessions_payload([(&c, id.as_str()), (&x, id.as_str()), (&y, "nobody")]);
    let ask =
        BusMessage::new("clientmq.resubscribe", list).reply_to("t.resubscribed").with(header::GATEWAY, "g1");
    bus.publish(ask).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(3), answered.next()).await.unwrap().unwrap();
    assert_eq!(answer.header(header::ERROR), None);
    let again = super::testing::changes(&mut told);
    let room = format!("+room {room_id}");
    assert!(again.iter().any(|m| m.0 == conn() && m.3.contains(&room)), "{again:?}");
    let off = format!("-room {room_id}");
    let x = "x".repeat(32);
    assert!(again.iter().any(|m| m.0 == x && m.3.contains(&off)), "the one it moved from: {again:?}");
    let y = "y".repeat(32);
    assert!(again.iter().all(|m| m.0 != y), "nothing for a session it does not know: {again:?}");

    // A list that does not read is answered so.
    let bad = BusMessage::new("clientmq.resubscribe", b"not a list".to_vec())
        .reply_to("t.resubscribed")
        .with(header::GATEWAY, "g1");
    bus.publish(bad).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(3), answered.next()).await.unwrap().unwrap();
    assert_eq!(answer.header(header::ERROR), Some("malformed"));
}

#[tokio::test(start_paused = true)]
async fn a_session_that_says_bye_leaves_its_rooms_at_once_and_its_connection_hears_them_no_more() {
    let bus = Arc::new(ModelBus::default());
    let mut told = gateway(&bus).await;
    let mut events = bus.subscribe("clientmq.room.>", None).await.unwrap();
    let Served { mut replies, session: id, room_id, .. } = served(&bus, None, std::future::pending()).await;
    let quiet = Duration::from_millis(200);
    let join = chat::JoinRoom { room_id: Some(room_id.clone()), ..Default::default() };
    bus.publish(request(2, "chat.JoinRoom", join.encode_to_vec(), 10_000)).await.unwrap();
    assert_eq!(answers(&mut replies, quiet).await.len(), 1);
    let _ = super::testing::changes(&mut told);
    let store = Store::new(bus.clone(), "reader", Duration::from_secs(1)).await.unwrap();
    let layout = Layout::new("clientmq", 1, 100);

    bus.publish(request(3, "pcast.Bye", pcast::Bye::default().encode_to_vec(), 10_000)).await.unwrap();
    let bye = answers(&mut replies, quiet).await;
    assert_eq!(contract::answer_type(&bye[0].1, "pcast.Bye"), "pcast.ByeResponse", "{bye:?}");
    assert!(session(&store, &layout, &id).await.is_none(), "ended at once, no grace");
    let off = super::testing::changes(&mut told);
    let room = format!("-room {room_id}");
    assert!(off.iter().any(|m| m.0 == conn() && m.3.contains(&room)), "{off:?}");
    let mut kinds = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(quiet, events.next()).await {
        kinds.push(chat::RoomEvent::decode(msg.payload.as_slice()).unwrap().event_type);
    }
    let (joined, left) = (chat::RoomEventType::MemberJoined as i32, chat::RoomEventType::MemberLeft as i32);
    assert_eq!(kinds, [joined, left]);
    // Its connection holds no session now: a request is unauthorized.
    let info = chat::GetRoomInfo { room_id: Some(room_id), ..Default::default() };
    bus.publish(request(4, "chat.GetRoomInfo", info.encode_to_vec(), 10_000)).await.unwrap();
    let after = answers(&mut replies, quiet).await;
    assert_eq!(super::testing::reason(&after[0].1).as_deref(), Some("unauthorized"));
}

#[tokio::test(start_paused = true)]
async fn a_gateway_back_in_a_new_epoch_is_asked_what_it_still_has_and_what_it_lost_is_detached() {
    let bus = Arc::new(ModelBus::default());
    let mut syncs = bus.subscribe("clientmq.gw.g1.sync", None).await.unwrap();
    let Served { session: id, .. } = served(&bus, None, std::future::pending()).await;
    let store = Store::new(bus.clone(), "reader", Duration::from_secs(1)).await.unwrap();
    let layout = Layout::new("clientmq", 1, 100);
    announce_in(&bus, 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(100), syncs.next()).await.is_err(),
        "no sync in the epoch the worker knows"
    );
    // Reconnected to the bus: messages may have been lost meanwhile (a disconnect notice).
    announce_in(&bus, 2).await;
    let sync = tokio::time::timeout(Duration::from_secs(3), syncs.next()).await.unwrap().unwrap();
    let asked = clientmq_bus::contract::parse_ids(&sync.payload);
    assert_eq!(asked.iter().map(ToString::to_string).collect::<Vec<_>>(), [conn()]);
    assert!(session(&store, &layout, &id).await.unwrap().conn.is_some());
    // The gateway no longer has it.
    bus.publish(BusMessage::new(sync.reply.unwrap(), sync.payload)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let detached = session(&store, &layout, &id).await.expect("kept through its grace");
    assert!(detached.conn.is_none() && detached.expires_ms.is_some(), "{detached:?}");
}

#[tokio::test(start_paused = true)]
async fn a_room_nobody_joins_is_forgotten_once_idle_and_its_alias_is_free_again() {
    let bus = Arc::new(ModelBus::default());
    let Served { mut replies, .. } = served(&bus, None, std::future::pending()).await;
    let quiet = Duration::from_millis(200);
    let room = |name: &str| chat::Room {
        name: name.into(),
        description: "d".into(),
        alias: Some("lobby".into()),
        r#type: chat::RoomType::MultiPartyChat as i32,
        ..Default::default()
    };
    let create =
        |name: &str| chat::CreateRoom { session_id: String::new(), room: room(name) }.encode_to_vec();
    let created = |heard: &[(usize, BusMessage)]| {
        let r = chat::CreateRoomResponse::decode(heard[0].1.payload.as_slice()).unwrap();
        (r.status, r.room.and_then(|r| r.name.into()))
    };
    bus.publish(request(2, "chat.CreateRoom", create("first"), 10_000)).await.unwrap();
    assert_eq!(created(&answers(&mut replies, quiet).await).0, "ok");
    bus.publish(request(3, "chat.CreateRoom", create("second"), 10_000)).await.unwrap();
    assert_eq!(created(&answers(&mut replies, quiet).await).0, "already-exists");

    // Idle past `room_idle` (an hour): forgotten, and the alias is another room's to take. The
    // session, its gateway silent, ended long before; a new one asks.
    tokio::time::sleep(Duration::from_secs(3700)).await;
    let auth = pcast::Authenticate { authentication_token: "t".into(), ..Default::default() };
    bus.publish(request(4, "pcast.Authenticate", auth.encode_to_vec(), 10_000)).await.unwrap();
    assert_eq!(answers(&mut replies, quiet).await.len(), 1);
    let info = chat::GetRoomInfo { alias: Some("lobby".into()), ..Default::default() };
    bus.publish(request(5, "chat.GetRoomInfo", info.encode_to_vec(), 10_000)).await.unwrap();
    let found = answers(&mut replies, quiet).await;
    let found = chat::GetRoomInfoResponse::decode(found[0].1.payload.as_slice()).unwrap();
    assert_eq!(found.status, "not-found");
    bus.publish(request(6, "chat.CreateRoom", create("third"), 10_000)).await.unwrap();
    assert_eq!(created(&answers(&mut replies, quiet).await), ("ok".to_owned(), Some("third".to_owned())));
}

#[tokio::test(start_paused = true)]
async fn a_members_updates_reach_the_room_and_a_non_member_is_refused() {
    let bus = Arc::new(ModelBus::default());
    let _told = gateway(&bus).await;
    let mut events = bus.subscribe("clientmq.room.>", None).await.unwrap();
    let Served { mut replies, room_id, .. } = served(&bus, None, std::future::pending()).await;
    let quiet = Duration::from_millis(200);
    let mut n = 2;
    let mut ask = async |ty: &str, payload: Vec<u8>| {
        n += 1;
        bus.publish(request(n, ty, payload, 10_000)).await.unwrap();
        let heard = answers(&mut replies, quiet).await;
        assert_eq!(heard.len(), 1, "{ty}: {heard:?}");
        heard.into_iter().next().unwrap().1.payload
    };
    let status_of = |payload: Vec<u8>| chat::UpdateMemberResponse::decode(payload.as_slice()).unwrap().status;
    let member = |name: &str| chat::Member {
        screen_name: name.into(),
        role: chat::MemberRole::Participant as i32,
        ..Default::default()
    };
    let rename = |name: &str| chat::MemberUpdate { screen_name: Some(name.into()), ..Default::default() };
    // Not a member yet: refused, by status.
    let update =
        chat::UpdateMember { room_id: Some(room_id.clone()), member: rename("x"), ..Default::default() };
    assert_eq!(status_of(ask("chat.UpdateMember", update.encode_to_vec()).await), "not-in-room");
    let no_room = chat::UpdateMember { member: rename("x"), ..Default::default() };
    assert_eq!(status_of(ask("chat.UpdateMember", no_room.encode_to_vec()).await), "bad-request");
    let say = chat::SendMessageToRoom {
        room_id: room_id.clone(),
        chat_message: chat::ChatMessage { message: "hi".into(), ..Default::default() },
    };
    let sent = ask("chat.SendMessageToRoom", say.encode_to_vec()).await;
    assert_eq!(chat::SendMessageToRoomResponse::decode(sent.as_slice()).unwrap().status, "not-in-room");

    let join = chat::JoinRoom { room_id: Some(room_id.clone()), member: member("a"), ..Default::default() };
    let joined =
        chat::JoinRoomResponse::decode(ask("chat.JoinRoom", join.encode_to_vec()).await.as_slice()).unwrap();
    assert_eq!(joined.status, "ok");
    let renamed =
        chat::UpdateMember { room_id: Some(room_id.clone()), member: rename("b"), ..Default::default() };
    let answer = chat::UpdateMemberResponse::decode(
        ask("chat.UpdateMember", renamed.encode_to_vec()).await.as_slice(),
    )
    .unwrap();
    assert_eq!(answer.status, "ok");
    assert!(answer.last_update.is_some());
    let mut room = chat::Room {
        room_id: Some(room_id.clone()),
        name: "renamed".into(),
        description: "d".into(),
        r#type: chat::RoomType::MultiPartyChat as i32,
        ..Default::default()
    };
    let updated =
        ask("chat.UpdateRoom", chat::UpdateRoom { room: room.clone(), ..Default::default() }.encode_to_vec())
            .await;
    assert_eq!(chat::UpdateRoomResponse::decode(updated.as_slice()).unwrap().status, "ok");
    room.room_id = Some("nowhere".into());
    let missing =
        ask("chat.UpdateRoom", chat::UpdateRoom { room, ..Default::default() }.encode_to_vec()).await;
    assert_eq!(chat::UpdateRoomResponse::decode(missing.as_slice()).unwrap().status, "not-found");
    let info = chat::GetRoomInfo { room_id: Some(room_id.clone()), ..Default::default() };
    let info =
        chat::GetRoomInfoResponse::decode(ask("chat.GetRoomInfo", info.encode_to_vec()).await.as_slice())
            .unwrap();
    assert_eq!(info.room.map(|r| r.name).as_deref(), Some("renamed"));
    assert_eq!(info.members.iter().map(|m| m.screen_name.as_str()).collect::<Vec<_>>(), ["b"]);

    let mut kinds = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(100), events.next()).await {
        kinds.push(chat::RoomEvent::decode(msg.payload.as_slice()).unwrap().event_type);
    }
    use chat::RoomEventType as E;
    assert_eq!(kinds, [E::MemberJoined as i32, E::MemberUpdated as i32, E::RoomUpdated as i32]);
}

/// A served worker whose session joined its room and whose connection ended half a second
/// into one of the worker's one-second ticks: the session's record as detached, and the test's
/// instant of the end.
async fn detached_between_ticks(
    bus: &Arc<ModelBus>,
) -> (Store<ModelBus>, Layout, String, tokio::time::Instant) {
    let started = tokio::time::Instant::now();
    let Served { mut replies, session: id, room_id, .. } = served(bus, None, std::future::pending()).await;
    let join = chat::JoinRoom { room_id: Some(room_id), ..Default::default() };
    bus.publish(request(2, "chat.JoinRoom", join.encode_to_vec(), 10_000)).await.unwrap();
    assert_eq!(answers(&mut replies, Duration::from_millis(200)).await.len(), 1);
    let store = Store::new(bus.clone(), "reader", Duration::from_secs(1)).await.unwrap();
    let layout = Layout::new("clientmq", 1, 100);
    let half = Duration::from_secs(started.elapsed().as_secs() + 1) + Duration::from_millis(500);
    tokio::time::sleep_until(started + half).await;
    let at = tokio::time::Instant::now();
    let ended = BusMessage::new("clientmq.disconnected", Vec::new())
        .with(header::GATEWAY, "g1")
        .with(header::CONNECTION, conn());
    bus.publish(ended).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(session(&store, &layout, &id).await.expect("detached").expires_ms.is_some());
    (store, layout, id, at)
}

/// A session ends at its grace's instant, not at the worker's next tick after it: the worker
/// wakes for the next grace due.
#[tokio::test(start_paused = true)]
async fn a_session_ends_when_its_grace_runs_out_not_at_the_next_tick() {
    let bus = Arc::new(ModelBus::default());
    let _told = gateway(&bus).await;
    let (store, layout, id, at) = detached_between_ticks(&bus).await;
    let grace = crate::ChatConfig::default().session_grace;
    tokio::time::sleep_until(at + grace - Duration::from_millis(100)).await;
    assert!(session(&store, &layout, &id).await.is_some(), "not before its grace runs out");
    tokio::time::sleep_until(at + grace + Duration::from_millis(200)).await;
    assert!(session(&store, &layout, &id).await.is_none(), "ended as its grace ran out");
}

/// An end the store refuses (here the session's deletion, once) is tried again at the next
/// tick, not given up: the session ends, a second late.
#[tokio::test(start_paused = true)]
async fn an_end_the_store_refuses_is_tried_again() {
    let bus = Arc::new(ModelBus::default());
    let _told = gateway(&bus).await;
    let (store, layout, id, at) = detached_between_ticks(&bus).await;
    let subject = format!("$KV.{}.{}", layout.sessions.name(), session_key(&id));
    bus.refuse_next(&subject, clientmq_bus::store::wire::code::BAD_REQUEST, "refused once");
    let grace = crate::ChatConfig::default().session_grace;
    tokio::time::sleep_until(at + grace + Duration::from_secs(3)).await;
    assert!(session(&store, &layout, &id).await.is_none(), "ended at a later try");
}
