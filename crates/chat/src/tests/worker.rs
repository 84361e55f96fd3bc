//! The in-memory worker on a bus (the store model's loopback, with a fake gateway `g1`): what it
//! answers, what it tells the gateway, and a session's grace after its connection ends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clientmq_bus::contract::{self, header};
use clientmq_bus::store::loopback::ModelBus;
use clientmq_bus::{Bus as _, BusMessage, Subscription as _};
use clientmq_core::proto::{chat, pcast};
use prost::Message;

use crate::metrics::WorkerMetrics;
use crate::stored::testing::{
    answers, changes, conn, gateway, metric, reason, request, request_on, worker_config,
};
use crate::worker::{WorkerEvent, WorkerObserver, run};

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
    assert_eq!(contract::answer_type(&heard[0].1, ty), format!("{ty}Response"), "{heard:?}");
    R::decode(heard[0].1.payload.as_slice()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_in_memory_worker_answers_tells_its_gateway_and_keeps_a_session_through_its_grace() {
    let bus = Arc::new(ModelBus::default());
    let mut told = gateway(&bus).await;
    let mut replies = bus.subscribe("t.reply.>", None).await.unwrap();
    let mut events = bus.subscribe("clientmq.room.>", None).await.unwrap();
    let config = worker_config(None, None);
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

/// Gateway `g1` says it is alive (bus epoch 1, one connection).
async fn announce(bus: &ModelBus) {
    let alive = BusMessage::new("clientmq.gateway.g1.alive", Vec::new())
        .with(header::GATEWAY, "g1")
        .with(header::CONNECTIONS, "1")
        .with(header::BUS_EPOCH, "1");
    bus.publish(alive).await.unwrap();
}

/// The next message on `sub`, within a second.
async fn next(sub: &mut impl clientmq_bus::Subscription) -> BusMessage {
    tokio::time::timeout(Duration::from_secs(1), sub.next()).await.expect("in time").expect("open")
}

/// The in-memory worker's loop around its state: the probe, refusals, what its observer and
/// metrics are told, a disconnect notice, a resubscribe, a silent gateway and its return, and
/// its own bus connection lost and back (a sync, answered).
#[tokio::test(start_paused = true)]
async fn the_in_memory_worker_serves_its_bus_and_tells_its_observer() {
    let bus = Arc::new(ModelBus::default());
    let mut told = gateway(&bus).await;
    let mut replies = bus.subscribe("t.reply.>", None).await.unwrap();
    let mut syncs = bus.subscribe("clientmq.gw.g1.sync", None).await.unwrap();
    let mut orphans = bus.subscribe("clientmq.gw.g1.orphans", None).await.unwrap();
    let mut resubscribed = bus.subscribe("t.resubscribed", None).await.unwrap();
    let events = Arc::new(Mutex::new(Vec::<String>::new()));
    let observer = {
        let events = events.clone();
        WorkerObserver(Arc::new(move |e: WorkerEvent| events.lock().unwrap().push(e.to_string())))
    };
    assert_eq!(format!("{observer:?}"), "WorkerObserver");
    let metrics = Arc::new(WorkerMetrics::new());
    let config = worker_config(Some(observer), Some(metrics.clone()));
    tokio::spawn(run(bus.clone(), config, std::future::pending()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let taken = || std::mem::take(&mut *events.lock().unwrap());
    let quiet = Duration::from_millis(200);

    // The latency probe: its payload back.
    let probe = BusMessage::new("clientmq.req.mq.PingPong", b"p".to_vec()).reply_to("t.reply.0");
    bus.publish(probe).await.unwrap();
    let pong = answers(&mut replies, quiet).await;
    assert_eq!(pong[0].1.payload, b"p");
    assert_eq!(pong[0].1.header(header::TYPE), None, "its default type, left out");
    assert_eq!(contract::answer_type(&pong[0].1, "mq.PingPong"), "mq.PingPongResponse");
    // A request without its gateway and connection is refused as malformed.
    let bare = BusMessage::new("clientmq.req.pcast.Authenticate", Vec::new()).reply_to("t.reply.1");
    bus.publish(bare).await.unwrap();
    assert_eq!(reason(&answers(&mut replies, quiet).await[0].1).as_deref(), Some("malformed"));

    let auth = pcast::Authenticate { authentication_token: "t".into(), ..Default::default() };
    let a: pcast::AuthenticateResponse = ask(&bus, &mut replies, 2, "pcast.Authenticate", auth).await;
    let id = a.session_id.unwrap();
    // A request whose payload does not decode is answered `mq.Error`, and counted an error.
    bus.publish(request(3, "chat.JoinRoom", vec![0xff], 10_000)).await.unwrap();
    assert_eq!(reason(&answers(&mut replies, quiet).await[0].1).as_deref(), Some("malformed"));
    let ok = r#"clientmq_chat_requests_total{type="pcast.Authenticate",outcome="ok"}"#;
    let error = r#"clientmq_chat_requests_total{type="chat.JoinRoom",outcome="error"}"#;
    assert_eq!((metric(&metrics, ok), metric(&metrics, error)), (1.0, 1.0));
    assert_eq!(taken(), [format!("bound {} session={id}", conn())]);

    // Its connection ends while g1 speaks: the notice alone detaches the session.
    announce(&bus).await;
    let ended = BusMessage::new("clientmq.disconnected", Vec::new())
        .with(header::GATEWAY, "g1")
        .with(header::CONNECTION, conn());
    bus.publish(ended).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(taken(), [format!("unbound {} session={id}", conn())]);

    // Resumed on `d`, in a room: a resubscribe tells `d` the room again.
    let d = "d".repeat(32);
    let resume = pcast::Authenticate { session_id: Some(id.clone()), ..Default::default() };
    bus.publish(request_on(&d, 4, "pcast.Authenticate", resume.encode_to_vec(), 10_000)).await.unwrap();
    let room =
        chat::Room { name: "r".into(), r#type: chat::RoomType::MultiPartyChat as i32, ..Default::default() };
    let create = chat::CreateRoom { session_id: String::new(), room };
    bus.publish(request_on(&d, 5, "chat.CreateRoom", create.encode_to_vec(), 10_000)).await.unwrap();
    let heard = answers(&mut replies, quiet).await;
    let made = chat::CreateRoomResponse::decode(heard[1].1.payload.as_slice()).unwrap();
    let room_id = made.room.and_then(|r| r.room_id).unwrap();
    let join = chat::JoinRoom { room_id: Some(room_id.clone()), ..Default::default() };
    bus.publish(request_on(&d, 6, "chat.JoinRoom", join.encode_to_vec(), 10_000)).await.unwrap();
    assert_eq!(answers(&mut replies, quiet).await.len(), 1);
    let _ = changes(&mut told);
    let dc: clientmq_core::ConnectionId = d.parse().unwrap();
    let list = clientmq_bus::contract::sessions_payload([(&dc, id.as_str())]);
    let ask_again =
        BusMessage::new("clientmq.resubscribe", list).reply_to("t.resubscribed").with(header::GATEWAY, "g1");
    bus.publish(ask_again).await.unwrap();
    assert_eq!(next(&mut resubscribed).await.header(header::ERROR), None);
    let again = changes(&mut told);
    assert!(again.iter().any(|m| m.0 == d && m.3.contains(&format!("+room {room_id}"))), "{again:?}");
    let bad = BusMessage::new("clientmq.resubscribe", b"?".to_vec()).reply_to("t.resubscribed");
    bus.publish(bad).await.unwrap();
    assert_eq!(next(&mut resubscribed).await.header(header::ERROR), Some("malformed"));
    let facts = taken();
    assert!(facts.contains(&format!("bound {d} session={id}")), "{facts:?}");
    assert!(facts.contains(&format!("hears room room={room_id} session={id}")), "{facts:?}");

    // g1 falls silent: counted gone with its one connection; back, it is told its orphan.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let gone = taken();
    assert!(gone.contains(&"gateway-gone g1 connections=1".to_owned()), "{gone:?}");
    assert!(gone.contains(&format!("unbound {d} session={id}")), "{gone:?}");
    assert_eq!(metric(&metrics, "clientmq_chat_sessions_detached"), 1.0);
    announce(&bus).await;
    let list = next(&mut orphans).await;
    let ids = clientmq_bus::contract::parse_ids(&list.payload);
    assert_eq!(ids.iter().map(ToString::to_string).collect::<Vec<_>>(), [d.as_str()]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(taken(), ["gateway-back g1"]);

    // On `e`; then the worker's own bus connection is lost and back: it asks g1 what ended.
    let e = "e".repeat(32);
    let resume = pcast::Authenticate { session_id: Some(id.clone()), ..Default::default() };
    bus.publish(request_on(&e, 7, "pcast.Authenticate", resume.encode_to_vec(), 10_000)).await.unwrap();
    assert_eq!(answers(&mut replies, quiet).await.len(), 1);
    let _ = taken();
    bus.set_connected(false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(taken(), ["bus-lost"]);
    assert_eq!(metric(&metrics, "clientmq_chat_bus_connected"), 0.0);
    assert!(tokio::time::timeout(quiet, syncs.next()).await.is_err(), "no sync while away");
    bus.set_connected(true);
    let sync = next(&mut syncs).await;
    let asked = clientmq_bus::contract::parse_ids(&sync.payload);
    assert_eq!(asked.iter().map(ToString::to_string).collect::<Vec<_>>(), [e.as_str()]);
    assert_eq!(taken(), ["bus-connected"]);
    assert_eq!(metric(&metrics, "clientmq_chat_bus_connected"), 1.0);
    assert_eq!(metric(&metrics, "clientmq_chat_bus_reconnects_total"), 1.0);
    // g1 lost `e` meanwhile.
    bus.publish(BusMessage::new(sync.reply.unwrap(), sync.payload)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(taken(), [format!("unbound {e} session={id}")]);

    // Lost and back between two looks: both said, and a new epoch's sync.
    bus.set_connected(false);
    bus.set_connected(true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(taken(), ["bus-lost", "bus-connected"]);
    assert_eq!(metric(&metrics, "clientmq_chat_bus_reconnects_total"), 2.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(metric(&metrics, "clientmq_chat_sessions"), 1.0);
    assert_eq!(metric(&metrics, "clientmq_chat_gateways"), 1.0);
    assert!(taken().iter().all(|e| !e.starts_with("broken")));
}

/// A worker that starts before its bus connects: not ready until it does, and its first
/// connection is no reconnection.
#[tokio::test(start_paused = true)]
async fn a_first_connection_is_not_counted_a_reconnection() {
    let bus = Arc::new(ModelBus::offline());
    let metrics = Arc::new(WorkerMetrics::new());
    let config = worker_config(None, Some(metrics.clone()));
    tokio::spawn(run(bus.clone(), config, std::future::pending()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(metric(&metrics, "clientmq_chat_bus_connected"), 0.0);
    bus.set_connected(true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(metric(&metrics, "clientmq_chat_bus_connected"), 1.0);
    assert_eq!(metric(&metrics, "clientmq_chat_bus_reconnects_total"), 0.0);
    bus.set_connected(false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    bus.set_connected(true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(metric(&metrics, "clientmq_chat_bus_reconnects_total"), 1.0);
}
