//! What a stored worker answers at the edges of its requests, on the store model: a message of
//! exactly the most bytes and one past it, an unknown room, a connection whose end was recorded,
//! and a connection that takes a new session letting go of the one it held (kept for its grace,
//! and its rooms unsubscribed at once).

use std::sync::Arc;
use std::time::Duration;

use clientmq_bus::Bus as _;
use clientmq_bus::BusMessage;
use clientmq_bus::contract::header;
use clientmq_bus::store::loopback::ModelBus;
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

#[tokio::test(start_paused = true)]
async fn a_message_of_the_most_bytes_is_sent_and_one_more_is_too_large() {
    let bus = Arc::new(ModelBus::default());
    // A join is answered once the gateway acknowledges the subscription.
    let _told = gateway(&bus).await;
    let Served { mut replies, room_id, .. } = served(&bus, None, std::future::pending()).await;
    let join = chat::JoinRoom { room_id: Some(room_id.clone()), ..Default::default() };
    let joined: chat::JoinRoomResponse = ask(&bus, &mut replies, &conn(), 2, "chat.JoinRoom", join).await;
    assert_eq!(joined.status, "ok");
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
