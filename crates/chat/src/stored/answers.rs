//! What a stored worker answers at the edges of its requests, on the store model: a message of
//! exactly the most bytes and one past it, an unknown room, a connection whose end was recorded,
//! and a connection that takes a new session letting go of the one it held (kept for its grace,
//! and its rooms unsubscribed at once).

use std::sync::Arc;
use std::time::Duration;

use clientmq_bus::BusMessage;
use clientmq_bus::contract::header;
use clientmq_bus::store::loopback::ModelBus;
use clientmq_bus::{Bus as _, Subscription as _};
use clientmq_core::proto::{chat, pcast};
use prost::Message;

use super::testing::{Served, answers, changes, conn, gateway, request_on, served};

const QUIET: Duration = Duration::from_millis(200);

/// The one answer to request `n` of `ty` on `on`, decoded.
async fn ask<R: Message + Default>(
    bus: &ModelBus,
    replies: &mut impl clientmq_bus::Subscription,
    on: &str,
    n: usize,
    ty: &str,
    req: impl Message,
) -> R {
    bus.publish(request_on(on, n, ty, req.encode_to_vec(), 10_000)).await.unwrap();
    let heard = answers(replies, QUIET).await;
    assert_eq!(heard.len(), 1, "{ty}: {heard:?}");
    R::decode(heard[0].1.payload.as_slice()).unwrap()
}

/// A served worker whose session (on [`conn`]) joined its room (request 2), with the fake
/// gateway that acknowledges the join's subscription: what it is told, the replies, the room.
async fn member(
    bus: &Arc<ModelBus>,
) -> (tokio::sync::mpsc::UnboundedReceiver<BusMessage>, impl clientmq_bus::Subscription, String) {
    let told = gateway(bus).await;
    let Served { mut replies, room_id, .. } = served(bus, None, std::future::pending()).await;
    let join = chat::JoinRoom { room_id: Some(room_id.clone()), ..Default::default() };
    let joined: chat::JoinRoomResponse = ask(bus, &mut replies, &conn(), 2, "chat.JoinRoom", join).await;
    assert_eq!(joined.status, "ok");
    (told, replies, room_id)
}

#[tokio::test(start_paused = true)]
async fn a_message_of_the_most_bytes_is_sent_and_one_more_is_too_large() {
    let bus = Arc::new(ModelBus::default());
    let (_told, mut replies, room_id) = member(&bus).await;
    let nowhere = chat::JoinRoom { room_id: Some("nowhere".into()), ..Default::default() };
    let lost: chat::JoinRoomResponse = ask(&bus, &mut replies, &conn(), 3, "chat.JoinRoom", nowhere).await;
    assert_eq!(lost.status, "not-found");
    let most = crate::ChatConfig::default().max_message_bytes;
    for (n, (text, status)) in
        [("x".repeat(most), "ok"), ("x".repeat(most + 1), "too-large"), (String::new(), "bad-request")]
            .into_iter()
            .enumerate()
    {
        let message = chat::ChatMessage { message: text, ..Default::default() };
        let send = chat::SendMessageToRoom { room_id: room_id.clone(), chat_message: message };
        let sent: chat::SendMessageToRoomResponse =
            ask(&bus, &mut replies, &conn(), 4 + n, "chat.SendMessageToRoom", send).await;
        assert_eq!(sent.status, status, "{n}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_connection_whose_end_was_recorded_is_refused() {
    let bus = Arc::new(ModelBus::default());
    let Served { mut replies, session, .. } = served(&bus, None, std::future::pending()).await;
    let ended = BusMessage::new("clientmq.disconnected", Vec::new())
        .with(header::GATEWAY, "g1")
        .with(header::CONNECTION, conn());
    bus.publish(ended).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = pcast::Authenticate { session_id: Some(session), ..Default::default() };
    let refused: pcast::AuthenticateResponse =
        ask(&bus, &mut replies, &conn(), 2, "pcast.Authenticate", again).await;
    assert_eq!((refused.status.as_str(), refused.session_id), ("unauthorized", None));
}

#[tokio::test(start_paused = true)]
async fn a_session_let_go_for_another_keeps_its_grace_and_its_connection_hears_its_rooms_no_more() {
    let bus = Arc::new(ModelBus::default());
    let mut told = gateway(&bus).await;
    let Served { mut replies, session: first, room_id, .. } =
        served(&bus, None, std::future::pending()).await;
    let join = chat::JoinRoom { room_id: Some(room_id.clone()), ..Default::default() };
    let joined: chat::JoinRoomResponse = ask(&bus, &mut replies, &conn(), 2, "chat.JoinRoom", join).await;
    assert_eq!(joined.status, "ok");
    let _ = changes(&mut told);

    // The same connection asks for a new session.
    let fresh = pcast::Authenticate { authentication_token: "t".into(), ..Default::default() };
    let second: pcast::AuthenticateResponse =
        ask(&bus, &mut replies, &conn(), 3, "pcast.Authenticate", fresh).await;
    assert_eq!(second.status, "ok");
    assert_ne!(second.session_id.as_deref(), Some(first.as_str()));
    let off = changes(&mut told);
    let unsubscribed = format!("-room {room_id}");
    assert!(off.iter().any(|m| m.0 == conn() && m.3.contains(&unsubscribed)), "{off:?}");

    // The one let go is kept for its grace: resumed on another connection a second later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let d = "d".repeat(32);
    let resume = pcast::Authenticate { session_id: Some(first.clone()), ..Default::default() };
    let resumed: pcast::AuthenticateResponse =
        ask(&bus, &mut replies, &d, 4, "pcast.Authenticate", resume).await;
    assert_eq!((resumed.status.as_str(), resumed.session_id.as_deref()), ("ok", Some(first.as_str())));
}

/// A send whose acknowledgement is lost (JetStream wrote it, the answer never came) is sent
/// again under its own message id: JetStream finds it by that id, and the room's history holds
/// it once, before the next send.
#[tokio::test(start_paused = true)]
async fn a_send_whose_acknowledgement_is_lost_is_stored_once() {
    let bus = Arc::new(ModelBus::default());
    let (_told, mut replies, room_id) = member(&bus).await;
    let layout = super::layout::Layout::new("clientmq", 1, 100);
    bus.lose_next_answer(&layout.history_subject(&room_id, clientmq_core::Topic::Conversation));
    for (n, text) in [(3, "first"), (4, "second")] {
        let message = chat::ChatMessage { message: text.into(), ..Default::default() };
        let send = chat::SendMessageToRoom { room_id: room_id.clone(), chat_message: message };
        bus.publish(request_on(&conn(), n, "chat.SendMessageToRoom", send.encode_to_vec(), 10_000))
            .await
            .unwrap();
        // Answered once the store's timeout let the worker send it again (the gateway, unheard
        // of for 5 s, would be counted gone: not waited for in silence).
        let answer = tokio::time::timeout(Duration::from_secs(3), replies.next()).await.unwrap().unwrap();
        let sent = chat::SendMessageToRoomResponse::decode(answer.payload.as_slice()).unwrap();
        assert_eq!(sent.status, "ok", "{text}");
    }
    let fetch = chat::FetchRoomConversation { room_id, limit: 10, ..Default::default() };
    let history: chat::FetchRoomConversationResponse =
        ask(&bus, &mut replies, &conn(), 5, "chat.FetchRoomConversation", fetch).await;
    let texts: Vec<&str> = history.chat_messages.iter().map(|m| m.message.as_str()).collect();
    assert_eq!(texts, ["first", "second"]);
}

/// A worker remembers the last sequence of each room's conversation it wrote (a hint, one per
/// room it sent to): its next send there is one conditional write, with no read of the
/// stream's last message first, even after sends to another room.
#[tokio::test(start_paused = true)]
async fn a_send_after_a_send_through_the_same_worker_is_one_write() {
    let bus = Arc::new(ModelBus::default());
    let _told = gateway(&bus).await;
    let Served { mut replies, room_id: a, .. } = served(&bus, None, std::future::pending()).await;
    let room =
        chat::Room { name: "b".into(), r#type: chat::RoomType::MultiPartyChat as i32, ..Default::default() };
    let create = chat::CreateRoom { session_id: String::new(), room };
    let created: chat::CreateRoomResponse =
        ask(&bus, &mut replies, &conn(), 2, "chat.CreateRoom", create).await;
    let b = created.room.and_then(|r| r.room_id).expect("room b");
    async fn asked(
        bus: &ModelBus,
        replies: &mut impl clientmq_bus::Subscription,
        n: usize,
        ty: &str,
        req: Vec<u8>,
    ) {
        bus.publish(request_on(&conn(), n, ty, req, 10_000)).await.unwrap();
        let heard = answers(replies, QUIET).await;
        assert_eq!(heard.len(), 1, "{ty}: {heard:?}");
    }
    let send = |room: &str, text: &str| {
        let message = chat::ChatMessage { message: text.into(), ..Default::default() };
        chat::SendMessageToRoom { room_id: room.to_owned(), chat_message: message }.encode_to_vec()
    };
    for (n, room) in [(3, &a), (4, &b)] {
        let join = chat::JoinRoom { room_id: Some(room.clone()), ..Default::default() };
        asked(&bus, &mut replies, n, "chat.JoinRoom", join.encode_to_vec()).await;
    }
    asked(&bus, &mut replies, 5, "chat.SendMessageToRoom", send(&a, "a1")).await;
    asked(&bus, &mut replies, 6, "chat.SendMessageToRoom", send(&b, "b1")).await;

    let layout = super::layout::Layout::new("clientmq", 1, 100);
    let mut api = bus.subscribe("$JS.API.>", None).await.unwrap();
    let mut writes =
        bus.subscribe(&layout.history_subject(&a, clientmq_core::Topic::Conversation), None).await.unwrap();
    asked(&bus, &mut replies, 7, "chat.SendMessageToRoom", send(&a, "a2")).await;
    async fn subjects(sub: &mut impl clientmq_bus::Subscription) -> Vec<String> {
        let mut heard = Vec::new();
        while let Ok(Some(msg)) = tokio::time::timeout(QUIET, sub.next()).await {
            heard.push(msg.subject);
        }
        heard
    }
    // The JetStream API's requests (and their answers) carry reads; a write is a publish.
    assert_eq!(subjects(&mut api).await, Vec::<String>::new(), "no read");
    assert_eq!(subjects(&mut writes).await.len(), 1, "one write");
}
