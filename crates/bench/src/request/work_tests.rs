//! Chat work against an in-process fake gateway: events between answers are skipped, statuses
//! other than `ok` are errors by status, setup failures are errors.

use std::time::Duration;

use clientmq_core::codec;
use clientmq_core::proto::{chat, mq, pcast};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio_tungstenite::tungstenite::Message;

use super::*;

/// An event frame, as a gateway delivers a room's conversation or member events.
fn event(n: u64) -> String {
    let msg = mq::Message {
        session_id: Some("s".into()),
        r#type: "chat.RoomConversationEvent".into(),
        payload: chat::RoomConversationEvent {
            session_id: "s".into(),
            room_id: "r".into(),
            event_type: chat::RoomConversationEventType::Message as i32,
            chat_messages: vec![chat::ChatMessage { message: format!("e{n}"), ..Default::default() }],
        }
        .encode_to_vec(),
        message_type: Some(mq::message::MessageType::Event as i32),
        ..Default::default()
    };
    crate::frame::base64_text(&msg)
}

/// A chat gateway for one room per connection: an event before every answer and after every
/// other one; every third send answered `not-member`; a leave when not a member and a join when
/// one answered `conflict`; creating a room answered `refused-create` when `refuse_rooms`.
async fn fake_chat(refuse_rooms: bool) -> Target {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            // Several frames an answer: without it, Nagle holds the second for the first's ACK.
            let _ = socket.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(socket).await else { return };
                let (mut n, mut sends, mut member) = (0u64, 0u64, false);
                while let Some(Ok(Message::Text(text))) = ws.next().await {
                    let frame = codec::Frame::Text(text.as_str().to_owned());
                    let request = codec::decode(&frame, usize::MAX).unwrap();
                    let status = |ok: bool| if ok { "ok" } else { "conflict" }.to_owned();
                    let payload = match request.r#type.as_str() {
                        "pcast.Authenticate" => pcast::AuthenticateResponse {
                            status: "ok".into(),
                            session_id: Some("s".into()),
                            ..Default::default()
                        }
                        .encode_to_vec(),
                        "chat.CreateRoom" => chat::CreateRoomResponse {
                            status: if refuse_rooms { "refused-create" } else { "ok" }.into(),
                            room: Some(chat::Room { room_id: Some("r".into()), ..Default::default() }),
                        }
                        .encode_to_vec(),
                        "chat.JoinRoom" => {
                            let was = std::mem::replace(&mut member, true);
                            chat::JoinRoomResponse { status: status(!was), ..Default::default() }
                                .encode_to_vec()
                        }
                        "chat.LeaveRoom" => {
                            let was = std::mem::replace(&mut member, false);
                            chat::LeaveRoomResponse { status: status(was) }.encode_to_vec()
                        }
                        "chat.FetchRoomConversation" => {
                            chat::FetchRoomConversationResponse { status: "ok".into(), ..Default::default() }
                                .encode_to_vec()
                        }
                        "chat.SendMessageToRoom" => {
                            sends += 1;
                            let status = if sends.is_multiple_of(3) { "not-member" } else { "ok" };
                            chat::SendMessageToRoomResponse { status: status.into() }.encode_to_vec()
                        }
                        other => panic!("unexpected {other}"),
                    };
                    let answer = mq::Message {
                        request_id: request.request_id,
                        r#type: format!("{}Response", request.r#type),
                        payload,
                        message_type: Some(mq::message::MessageType::Response as i32),
                        ..Default::default()
                    };
                    n += 1;
                    let mut out = vec![event(n), crate::frame::base64_text(&answer)];
                    if n.is_multiple_of(2) {
                        out.push(event(n));
                    }
                    for text in out {
                        if ws.send(Message::Text(text.into())).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    Target::parse(&url).unwrap()
}

fn opts(work: Work) -> RequestOpts {
    RequestOpts {
        connections: 2,
        warmup: Duration::from_millis(100),
        duration: Duration::from_millis(400),
        work,
        ..RequestOpts::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_skip_events_and_count_statuses_other_than_ok_as_errors() {
    let report = run(&fake_chat(false).await, &opts(Work::ChatSend)).await;
    let refused = report.refused.get("not-member").copied().unwrap_or(0);
    assert!(refused > 10, "{}", report.summary());
    assert_eq!(report.refused.len(), 1, "{:?}", report.refused);
    // Every error is a refusal: no event was taken for an answer.
    assert_eq!(report.errors, refused, "{}", report.summary());
    // Two of three sends are served; the first answer of each connection is one.
    assert!(report.completed >= refused && report.completed <= 2 * refused + 4, "{}", report.summary());
    assert_eq!(report.answer, "chat.SendMessageToRoomResponse");
    assert_eq!(report.first_error.as_deref(), Some("chat.SendMessageToRoomResponse{not-member}"));
    assert_eq!(report.connections, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_alternate_with_leaves_from_a_member() {
    let report = run(&fake_chat(false).await, &opts(Work::ChatJoin)).await;
    // The fake refuses a leave when not a member and a join when one.
    assert_eq!(report.errors, 0, "{}", report.summary());
    assert!(report.completed > 10, "{}", report.summary());
    assert_eq!(report.answer, "chat.LeaveRoomResponse", "a member after setup leaves first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_setups_are_errors_with_the_first_kept() {
    let report = run(&fake_chat(true).await, &opts(Work::ChatSend)).await;
    assert_eq!((report.connections, report.errors, report.completed), (0, 2, 0), "{}", report.summary());
    assert_eq!(report.first_error.as_deref(), Some("setup: chat.CreateRoom: status refused-create"));
}
