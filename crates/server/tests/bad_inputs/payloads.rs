//! pcast and chat payloads against the embedded backend: the gateway decodes the payloads it
//! must read itself (`pcast.Authenticate`, `chat.JoinRoom`, `chat.LeaveRoom`,
//! `chat.FetchRoomConversation`) and refuses them `malformed`; the backend answers the rest.

use std::sync::Arc;

use clientmq_chat::ChatConfig;
use clientmq_core::proto::{chat, pcast};
use clientmq_server::EmbeddedBackend;
use prost::Message as _;

use crate::harness::{Gw, Raw, config, error_reason, start};

async fn start_chat() -> Gw<EmbeddedBackend> {
    let mut c = config();
    c.max_frame_bytes = 16 * 1024;
    c.gateway.max_message_size = 16 * 1024;
    start(c, Arc::new(EmbeddedBackend::new(ChatConfig::default(), Some(3)))).await
}

/// A truncated field: field 1, length 5, one byte of it.
const GARBAGE: [u8; 3] = [0x0a, 0x05, b'a'];

async fn authenticate(raw: &mut Raw<tokio::net::TcpStream>) -> String {
    let auth = pcast::Authenticate { authentication_token: "t".into(), ..Default::default() };
    let answer = raw.call("pcast.Authenticate", auth.encode_to_vec()).await;
    let resp = pcast::AuthenticateResponse::decode(answer.payload.as_slice()).unwrap();
    assert_eq!(resp.status, "ok");
    resp.session_id.unwrap()
}

fn status_of<R: prost::Message + Default>(msg: &clientmq_core::proto::mq::Message) -> R {
    assert!(msg.r#type.ends_with("Response"), "{msg:?}");
    R::decode(msg.payload.as_slice()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payloads_get_mq_error_malformed() {
    clientmq_testkit::deadline::bounded(async {
        let gw = start_chat().await;
        let mut raw = gw.raw().await;
        // Read by the gateway: refused there, never forwarded.
        let answer = raw.call("pcast.Authenticate", GARBAGE.to_vec()).await;
        assert_eq!(error_reason(&answer).as_deref(), Some("malformed"));
        authenticate(&mut raw).await;
        for ty in ["chat.JoinRoom", "chat.LeaveRoom", "chat.FetchRoomConversation"] {
            let answer = raw.call(ty, GARBAGE.to_vec()).await;
            assert_eq!(error_reason(&answer).as_deref(), Some("malformed"), "{ty}");
        }
        gw.expect(r#"clientmq_requests_refused_total{reason="malformed"}"#, 4.0).await;
        gw.expect(r#"clientmq_requests_total{type="chat.JoinRoom",outcome="refused"}"#, 1.0).await;
        // Read by the backend: its mq.Error, counted as an error by its reason (finding 6).
        for ty in ["chat.CreateRoom", "chat.SendMessageToRoom", "pcast.Bye"] {
            let answer = raw.call(ty, GARBAGE.to_vec()).await;
            assert_eq!(error_reason(&answer).as_deref(), Some("malformed"), "{ty}");
        }
        gw.expect(r#"clientmq_requests_refused_total{reason="malformed"}"#, 4.0).await;
        gw.expect(r#"clientmq_backend_refusals_total{reason="malformed"}"#, 3.0).await;
        gw.expect(r#"clientmq_requests_total{type="chat.CreateRoom",outcome="error"}"#, 1.0).await;
        assert_eq!(gw.metric(r#"clientmq_requests_total{type="chat.CreateRoom",outcome="ok"}"#), 0.0);
        gw.still_serves(1).await;
        raw.close_politely().await;
        gw.settles(0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_before_authenticate_are_unauthorized() {
    clientmq_testkit::deadline::bounded(async {
        let gw = start_chat().await;
        let mut raw = gw.raw().await;
        let room = chat::Room { name: "r".into(), ..Default::default() };
        let create = chat::CreateRoom { room, ..Default::default() }.encode_to_vec();
        let join = chat::JoinRoom { room_id: Some("r1".into()), ..Default::default() }.encode_to_vec();
        let bye = pcast::Bye { session_id: "s".into(), reason: "x".into() }.encode_to_vec();
        for (ty, payload) in [("chat.CreateRoom", create), ("chat.JoinRoom", join), ("pcast.Bye", bye)] {
            let answer = raw.call(ty, payload).await;
            assert_eq!(error_reason(&answer).as_deref(), Some("unauthorized"), "{ty}");
            let series = format!("clientmq_requests_total{{type=\"{ty}\",outcome=\"error\"}}");
            gw.expect(&series, 1.0).await;
        }
        gw.expect(r#"clientmq_backend_refusals_total{reason="unauthorized"}"#, 3.0).await;
        gw.still_serves(1).await;
        raw.close_politely().await;
        gw.settles(0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_request_types_are_unsupported() {
    clientmq_testkit::deadline::bounded(async {
        let gw = start_chat().await;
        let mut raw = gw.raw().await;
        authenticate(&mut raw).await;
        for ty in ["foo.Bar", "chat.Nope", "pcast.AuthenticateResponse", "mq.Error"] {
            let answer = raw.call(ty, vec![1, 2, 3]).await;
            assert_eq!(error_reason(&answer).as_deref(), Some("unsupported"), "{ty}");
        }
        gw.expect(r#"clientmq_requests_total{type="other",outcome="error"}"#, 4.0).await;
        gw.expect(r#"clientmq_backend_refusals_total{reason="unsupported"}"#, 4.0).await;
        gw.still_serves(1).await;
        raw.close_politely().await;
        gw.settles(0).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_and_out_of_range_fields_get_a_status() {
    clientmq_testkit::deadline::bounded(async {
        let gw = start_chat().await;
        let mut raw = gw.raw().await;
        let session = authenticate(&mut raw).await;
        let create =
            |room: chat::Room| chat::CreateRoom { session_id: session.clone(), room }.encode_to_vec();
        let named =
            |name: &str| chat::Room { name: name.into(), description: "d".into(), ..Default::default() };
        let cases = [
            (named(&"n".repeat(2000)), "too-large"),
            (chat::Room { description: "d".repeat(2000), ..named("n") }, "too-large"),
            (chat::Room { options: vec!["o".into(); 100], ..named("n") }, "too-large"),
            (chat::Room { r#type: 99, ..named("n") }, "bad-request"),
            (named(""), "bad-request"),
        ];
        for (room, expected) in cases {
            let answer = raw.call("chat.CreateRoom", create(room)).await;
            assert_eq!(status_of::<chat::CreateRoomResponse>(&answer).status, expected);
        }
        // A member of a real room, saying too much and then nothing.
        let answer = raw.call("chat.CreateRoom", create(named("lobby"))).await;
        let room_id = status_of::<chat::CreateRoomResponse>(&answer).room.unwrap().room_id.unwrap();
        let member =
            chat::Member { session_id: session.clone(), screen_name: "me".into(), ..Default::default() };
        let join = chat::JoinRoom {
            room_id: Some(room_id.clone()),
            session_id: session.clone(),
            member: member.clone(),
            ..Default::default()
        };
        let answer = raw.call("chat.JoinRoom", join.encode_to_vec()).await;
        assert_eq!(status_of::<chat::JoinRoomResponse>(&answer).status, "ok");
        assert_eq!(raw.next_message().await.r#type, "chat.RoomEvent", "its own MemberJoined");
        let say = |text: String| {
            let chat_message = chat::ChatMessage { message: text, ..Default::default() };
            chat::SendMessageToRoom { room_id: room_id.clone(), chat_message }.encode_to_vec()
        };
        for (text, expected) in [("x".repeat(5000), "too-large"), (String::new(), "bad-request")] {
            let answer = raw.call("chat.SendMessageToRoom", say(text)).await;
            assert_eq!(status_of::<chat::SendMessageToRoomResponse>(&answer).status, expected);
        }
        // A member with a role out of range.
        let bad_member = chat::Member { role: 42, ..member };
        let join = chat::JoinRoom { member: bad_member, ..join };
        let answer = raw.call("chat.JoinRoom", join.encode_to_vec()).await;
        assert_eq!(status_of::<chat::JoinRoomResponse>(&answer).status, "bad-request");
        gw.expect(r#"clientmq_requests_total{type="chat.CreateRoom",outcome="ok"}"#, 6.0).await;
        gw.still_serves(1).await;
        raw.close_politely().await;
        gw.settles(0).await;
    })
    .await
}
