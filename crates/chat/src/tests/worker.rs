//! The in-memory worker on a bus (the store model's loopback, with a fake gateway `g1`): what it
//! answers, what it tells the gateway, and a session's grace after its connection ends.

use std::sync::Arc;
use std::time::Duration;

use clientmq_bus::contract::header;
use clientmq_bus::store::loopback::ModelBus;
use clientmq_bus::{Bus as _, BusMessage, Subscription as _};
use clientmq_core::proto::{chat, pcast};
use prost::Message;

use crate::stored::testing::{answers, changes, conn, gateway, request, request_on};
use crate::worker::{WorkerConfig, run};

async fn ask<R: Message + Default>(
    bus: &ModelBus,
    replies: &mut impl clientmq_bus::Subscription,
    n: usize,
    ty: &str,
    req: impl Message,
) -> R {
    bus.publish(request(n, ty, req.encode_to_vec(), 10_000)).await.unwrap();
    let heard = answers(replies, Duration::from_millis(200)).await;
    assert_eq!(heard.len(), 1, "{ty}: {heard:?}");
    assert_eq!(heard[0].1.header(header::TYPE), Some(format!("{ty}Response").as_str()), "{heard:?}");
    R::decode(heard[0].1.payload.as_slice()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_in_memory_worker_answers_tells_its_gateway_and_keeps_a_session_through_its_grace() {
    let bus = Arc::new(ModelBus::default());
    let mut told = gateway(&bus).await;
    let mut replies = bus.subscribe("t.reply.>", None).await.unwrap();
    let mut events = bus.subscribe("clientmq.room.>", None).await.unwrap();
    let config = WorkerConfig {
        prefix: "clientmq".into(),
        chat: crate::ChatConfig::default(),
        seed: Some(1),
        name: "w1".into(),
        observer: None,
        metrics: None,
    };
    tokio::spawn(run(bus.clone(), config, std::future::pending()));
    tokio::time::sleep(Duration::from_millis(100)).await;

    let auth = pcast::Authenticate { authentication_token: "t".into(), ..Default::default() };
    let a: pcast::AuthenticateResponse = ask(&bus, &mut replies, 0, "pcast.Authenticate", auth).await;
    assert_eq!(a.status, "ok");
    let id = a.session_id.unwrap();
    let room = chat::Room {
        name: "r".into(),
        description: "d".into(),
        r#type: chat::RoomType::MultiPartyChat as i32,
        ..Default::default()
    };
    let made: chat::CreateRoomResponse =
        ask(&bus, &mut replies, 1, "chat.CreateRoom", chat::CreateRoom { session_id: String::new(), room })
            .await;
    let room_id = made.room.and_then(|r| r.room_id).unwrap();
    let join = chat::JoinRoom { room_id: Some(room_id.clone()), ..Default::default() };
    let joined: chat::JoinRoomResponse = ask(&bus, &mut replies, 2, "chat.JoinRoom", join).await;
    assert_eq!(joined.status, "ok");
    let on = changes(&mut told);
    assert!(on.iter().any(|m| m.0 == conn() && m.3.contains(&format!("+room {room_id}"))), "{on:?}");

    // Its connection ends: the session waits out its grace (30 s), then leaves the room.
    let ended = BusMessage::new("clientmq.disconnected", Vec::new())
        .with(header::GATEWAY, "g1")
        .with(header::CONNECTION, conn());
    bus.publish(ended).await.unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let info = chat::GetRoomInfo { room_id: Some(room_id.clone()), ..Default::default() };
    let d = "d".repeat(32);
    let resume = pcast::Authenticate { session_id: Some(id.clone()), ..Default::default() };
    bus.publish(request_on(&d, 3, "pcast.Authenticate", resume.encode_to_vec(), 10_000)).await.unwrap();
    let back = answers(&mut replies, Duration::from_millis(200)).await;
    let back = pcast::AuthenticateResponse::decode(back[0].1.payload.as_slice()).unwrap();
    assert_eq!(back.session_id.as_deref(), Some(id.as_str()), "resumed within its grace");
    bus.publish(request_on(&d, 4, "chat.GetRoomInfo", info.encode_to_vec(), 10_000)).await.unwrap();
    let got = answers(&mut replies, Duration::from_millis(200)).await;
    let got = chat::GetRoomInfoResponse::decode(got[0].1.payload.as_slice()).unwrap();
    assert_eq!(got.members.len(), 1, "still a member");
    let ended = BusMessage::new("clientmq.disconnected", Vec::new())
        .with(header::GATEWAY, "g1")
        .with(header::CONNECTION, &d);
    bus.publish(ended).await.unwrap();
    tokio::time::sleep(Duration::from_secs(35)).await;
    let e = "e".repeat(32);
    let gone = pcast::Authenticate { session_id: Some(id.clone()), ..Default::default() };
    let late = request_on(&e, 5, "pcast.Authenticate", gone.encode_to_vec(), 10_000);
    bus.publish(late).await.unwrap();
    let late = answers(&mut replies, Duration::from_millis(200)).await;
    let late = pcast::AuthenticateResponse::decode(late[0].1.payload.as_slice()).unwrap();
    assert_ne!(late.session_id.as_deref(), Some(id.as_str()), "its grace ran out: a new session");
    let mut kinds = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(100), events.next()).await {
        kinds.push(chat::RoomEvent::decode(msg.payload.as_slice()).unwrap().event_type);
    }
    let (joined, left) = (chat::RoomEventType::MemberJoined as i32, chat::RoomEventType::MemberLeft as i32);
    assert_eq!(kinds, [joined, left]);
}
