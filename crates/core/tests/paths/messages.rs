//! Rows about messages: requests, responses, events, server requests, subscriptions.

use std::time::Duration;

use clientmq_core::proto::{chat, mq};
use clientmq_core::{
    BackendError, Config, ConnectionId, DropReason, Encoding, EventKind, Frame, Input, Output, Reply,
    RequestOutcome, ServerRequestError, Target, Topic, codec,
};
use mq::message::MessageType;
use prost::Message as _;

use crate::harness::*;

#[test]
fn unsupported_message_format_or_socket_not_open_dropped_and_counted() {
    let mut h = Harness::new(Config::default());
    let id = h.open();
    h.input(Input::Frame { conn: id, frame: Frame::Text("not base64!".into()) });
    h.input(Input::Frame { conn: id, frame: Frame::Binary(vec![0xff, 0xff]) });
    h.input(Input::Frame { conn: id, frame: Frame::Binary(Vec::new()) });
    let stats = h.gw.stats().clone();
    assert_eq!(stats.dropped.get("invalid-base64"), Some(&1));
    assert_eq!(stats.dropped.get("invalid-message"), Some(&1));
    assert_eq!(stats.dropped.get("empty"), Some(&1));
    // The connection is fine after garbage.
    assert_eq!(h.gw.open_connections(), 1);
    h.input(Input::Drain);
    h.advance(Duration::ZERO);
    assert_eq!(h.closes_of(id), vec![3333]);
    // Closing: a request is dropped, never forwarded.
    h.request(id, "C1", "chat.GetRoomInfo", Vec::new(), Encoding::Binary);
    assert!(h.backend_tokens().is_empty());
    assert_eq!(h.gw.stats().dropped.get("not-open"), Some(&1));
    let unknown: ConnectionId = "0123456789abcdefghijABCDEFGHIJ01".parse().unwrap();
    h.input(Input::Frame { conn: unknown, frame: Frame::Binary(vec![1]) });
    assert_eq!(h.gw.stats().dropped.get("unknown-connection"), Some(&1));
    assert!(h.events_of(id).iter().any(|k| matches!(k, EventKind::Dropped { reason: DropReason::NotOpen })));
}

#[test]
fn client_request_to_backend_timeout_failure_success() {
    let mut h = Harness::new(Config::default());
    let id = h.open();
    h.request(id, "C0", "chat.GetRoomInfo", Vec::new(), Encoding::Base64Text);
    h.request(id, "C1", "chat.GetRoomInfo", Vec::new(), Encoding::Base64Text);
    h.request(id, "C2", "chat.GetRoomInfo", Vec::new(), Encoding::Binary);
    let tokens = h.backend_tokens();
    assert_eq!(tokens.len(), 3);
    h.input(Input::BackendReply {
        token: tokens[0].0,
        result: ok_reply("", chat::GetRoomInfoResponse { status: "ok".into(), ..Default::default() }),
    });
    h.input(Input::BackendReply { token: tokens[1].0, result: Err(BackendError::Failed("down".into())) });
    h.advance(15 * SEC);
    let sent = h.sent_to(id);
    assert_eq!(sent.len(), 3);
    // Success: the request's type + Response, in the encoding the client used for it.
    assert_eq!(sent[0].0, Encoding::Base64Text);
    assert_eq!(sent[0].1.r#type, "chat.GetRoomInfoResponse");
    assert_eq!(sent[0].1.request_id.as_deref(), Some("C0"));
    assert_eq!(sent[0].1.message_type, Some(MessageType::Response as i32));
    assert_eq!(error_reason(&sent[1].1), "failed");
    // The third went out binary and timed out at 15 s.
    assert_eq!(sent[2].0, Encoding::Binary);
    assert_eq!(sent[2].1.request_id.as_deref(), Some("C2"));
    assert_eq!(error_reason(&sent[2].1), "timeout");
    let r = &h.gw.stats().requests;
    assert_eq!((r[&RequestOutcome::Ok], r[&RequestOutcome::Failed], r[&RequestOutcome::Timeout]), (1, 1, 1));
    assert_eq!(h.gw.pending_requests(), 0);
    // A reply after the timeout is traced as late and sends nothing.
    h.take_outputs();
    h.input(Input::BackendReply { token: tokens[2].0, result: Err(BackendError::Failed("late".into())) });
    assert!(h.take_outputs().is_empty());
    assert!(matches!(h.events.last().unwrap().kind, EventKind::LateReply { .. }));
}

#[test]
fn response_ready_but_socket_no_longer_open_dropped() {
    let mut h = Harness::new(Config::default());
    let id = h.open();
    h.request(id, "C0", "chat.GetRoomInfo", Vec::new(), Encoding::Base64Text);
    let token = h.backend_tokens()[0].0;
    h.input(Input::SendFailed { conn: id });
    assert_eq!(h.closes_of(id), vec![3335]);
    h.take_outputs();
    h.input(Input::BackendReply { token, result: ok_reply("", chat::GetRoomInfoResponse::default()) });
    assert!(h.sent_to(id).is_empty());
    assert_eq!(h.gw.stats().requests[&RequestOutcome::Undeliverable], 1);
}

#[test]
fn subscriptions_are_the_backends_and_replies_change_none() {
    let mut h = Harness::new(Config::default());
    let id = h.open();
    let sub = |topic, subscribe| Input::Subscription {
        conn: id,
        topic,
        room: "room-1".into(),
        subscribe,
        revision: None,
    };
    let join = chat::JoinRoom { alias: Some("lobby".into()), ..Default::default() };
    h.request(id, "C0", "chat.JoinRoom", join.encode_to_vec(), Encoding::Base64Text);
    let fetch = chat::FetchRoomConversation {
        room_id: "room-1".into(),
        options: vec![chat::RoomConversationOption::Subscribe as i32],
        limit: 10,
        ..Default::default()
    };
    h.request(id, "C1", "chat.FetchRoomConversation", fetch.encode_to_vec(), Encoding::Base64Text);
    let t = h.backend_tokens();
    // A successful join's reply alone subscribes nothing: the seed read replies, this gateway
    // takes what the backend decides.
    let room = chat::Room { room_id: Some("room-1".into()), ..Default::default() };
    let joined = chat::JoinRoomResponse { status: "ok".into(), room: Some(room), ..Default::default() };
    h.input(Input::BackendReply { token: t[0].0, result: ok_reply("chat.JoinRoomResponse", joined) });
    assert_eq!(h.gw.subscriptions(), 0);
    // The backend's decisions, then its answer.
    h.input(sub(Topic::Room, true));
    h.input(sub(Topic::Conversation, true));
    h.input(Input::BackendReply {
        token: t[1].0,
        result: ok_reply(
            "",
            chat::FetchRoomConversationResponse { status: "ok".into(), ..Default::default() },
        ),
    });
    assert_eq!(h.gw.subscribers(Topic::Room, "room-1"), vec![id]);
    assert_eq!(h.gw.subscribers(Topic::Conversation, "room-1"), vec![id]);
    assert_eq!(h.gw.subscriptions(), 2);
    // Twice is once.
    h.input(sub(Topic::Room, true));
    assert_eq!(h.gw.subscriptions(), 2);
    // Room deliveries reach subscribers.
    h.take_outputs();
    h.input(Input::Deliver {
        target: Target::Room("room-1".into()),
        event_type: "chat.RoomEvent".into(),
        payload: vec![],
    });
    let sent = h.sent_to(id);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.message_type, Some(MessageType::Event as i32));
    assert_eq!(sent[0].1.r#type, "chat.RoomEvent");
    // A successful leave's reply alone unsubscribes nothing either.
    let leave = chat::LeaveRoom { room_id: "room-1".into(), ..Default::default() };
    h.request(id, "C2", "chat.LeaveRoom", leave.encode_to_vec(), Encoding::Base64Text);
    let token = h.backend_tokens()[0].0;
    h.input(Input::BackendReply {
        token,
        result: ok_reply("", chat::LeaveRoomResponse { status: "ok".into() }),
    });
    assert_eq!(h.gw.subscriptions(), 2);
    h.input(sub(Topic::Room, false));
    h.input(sub(Topic::Conversation, false));
    assert_eq!(h.gw.subscriptions(), 0);
    // A decision about a connection that is gone is stray, and changes nothing.
    h.input(Input::TransportLost { conn: id, reason: clientmq_core::LostReason::Eof });
    h.input(sub(Topic::Room, true));
    assert_eq!(h.gw.subscriptions(), 0);
    assert!(h.events_of(id).iter().any(|k| matches!(
        k,
        EventKind::Stray { what: clientmq_core::Stray::Subscription, after_end: true }
    )));
}

#[test]
fn client_response_with_or_without_pending_server_request() {
    let mut h = Harness::new(Config::default());
    let id = h.open();
    h.input(Input::ServerRequest { token: 77, conn: id, request_type: "pcast.Ping".into(), payload: vec![] });
    let request_id = h.sent_to(id)[0].1.request_id.clone().unwrap();
    assert_eq!(request_id, "S0");
    let answer = |rid: &str| mq::Message {
        request_id: Some(rid.into()),
        r#type: "pcast.PingResponse".into(),
        payload: vec![9],
        message_type: Some(MessageType::Response as i32),
        ..Default::default()
    };
    h.input(Input::Frame { conn: id, frame: codec::encode(&answer("S0"), Encoding::Base64Text) });
    let done: Vec<_> = h.outputs.iter().filter(|o| matches!(o, Output::ServerRequestDone { .. })).collect();
    assert_eq!(
        done,
        vec![&Output::ServerRequestDone {
            token: 77,
            result: Ok(Reply { reply_type: "pcast.PingResponse".into(), payload: vec![9] })
        }]
    );
    // Without a pending request: traced and ignored.
    h.input(Input::Frame { conn: id, frame: codec::encode(&answer("S999"), Encoding::Base64Text) });
    h.input(Input::Frame { conn: id, frame: codec::encode(&answer("C5"), Encoding::Base64Text) });
    assert_eq!(h.gw.stats().dropped.get("unsolicited-response"), Some(&2));
    assert_eq!(h.gw.open_connections(), 1);
}

#[test]
fn client_event_traced_as_unsupported() {
    let mut h = Harness::new(Config::default());
    let id = h.open();
    let event = mq::Message {
        r#type: "chat.RoomEvent".into(),
        message_type: Some(MessageType::Event as i32),
        ..Default::default()
    };
    h.input(Input::Frame { conn: id, frame: codec::encode(&event, Encoding::Binary) });
    assert!(
        h.events_of(id).iter().any(|k| matches!(k, EventKind::Dropped { reason: DropReason::ClientEvent }))
    );
    assert!(h.backend_tokens().is_empty());
}

#[test]
fn server_request_counter_timeout_unknown_or_closed_socket_late_answer() {
    let mut h = Harness::new(Config::default());
    let id = h.open();
    h.input(Input::ServerRequest { token: 1, conn: id, request_type: "X".into(), payload: vec![] });
    h.input(Input::ServerRequest { token: 2, conn: id, request_type: "X".into(), payload: vec![] });
    let ids: Vec<_> = h.sent_to(id).into_iter().map(|(_, m)| m.request_id.unwrap()).collect();
    assert_eq!(ids, vec!["S0", "S1"]);
    h.advance(15 * SEC);
    let timeouts = h
        .outputs
        .iter()
        .filter(|o| matches!(o, Output::ServerRequestDone { result: Err(ServerRequestError::Timeout), .. }))
        .count();
    assert_eq!(timeouts, 2);
    // A late answer is traced as late, not as unknown.
    let late = mq::Message {
        request_id: Some("S1".into()),
        r#type: "XResponse".into(),
        message_type: Some(MessageType::Response as i32),
        ..Default::default()
    };
    h.input(Input::Frame { conn: id, frame: codec::encode(&late, Encoding::Base64Text) });
    assert_eq!(h.gw.stats().dropped.get("late-response"), Some(&1));
    // Unknown socket and closing socket: an error at once.
    h.take_outputs();
    let unknown: ConnectionId = "0123456789abcdefghijABCDEFGHIJ01".parse().unwrap();
    h.input(Input::ServerRequest { token: 3, conn: unknown, request_type: "X".into(), payload: vec![] });
    h.input(Input::SendFailed { conn: id });
    h.input(Input::ServerRequest { token: 4, conn: id, request_type: "X".into(), payload: vec![] });
    let results: Vec<_> = h
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::ServerRequestDone { token, result } => Some((*token, result.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        results,
        vec![(3, Err(ServerRequestError::NotConnected)), (4, Err(ServerRequestError::NotOpen))]
    );
}

#[test]
fn backend_driven_subscriptions_and_answers_from_the_wrong_connection() {
    let mut h = Harness::new(Config::default());
    let a = h.open();
    let b = h.open();
    // The backend subscribes and unsubscribes a connection itself (resume, Bye, takeover).
    let set = |conn, topic, subscribe| Input::Subscription {
        conn,
        topic,
        room: "r".into(),
        subscribe,
        revision: None,
    };
    h.input(set(a, Topic::Room, true));
    h.input(set(a, Topic::Conversation, true));
    assert_eq!(h.gw.subscribers(Topic::Room, "r"), vec![a]);
    h.input(set(a, Topic::Room, false));
    assert_eq!((h.gw.subscriptions(), h.gw.subscribers(Topic::Room, "r")), (1, vec![]));
    let unknown: ConnectionId = "0123456789abcdefghijABCDEFGHIJ01".parse().unwrap();
    h.input(set(unknown, Topic::Room, true));
    assert_eq!(h.gw.subscriptions(), 1);
    // S0 is pending on a; b answering it is unsolicited and a's request stays pending.
    h.input(Input::ServerRequest { token: 5, conn: a, request_type: "X".into(), payload: vec![] });
    let answer = mq::Message {
        request_id: Some("S0".into()),
        r#type: "XResponse".into(),
        message_type: Some(MessageType::Response as i32),
        ..Default::default()
    };
    h.input(Input::Frame { conn: b, frame: codec::encode(&answer, Encoding::Base64Text) });
    assert_eq!(h.gw.stats().dropped.get("unsolicited-response"), Some(&1));
    assert_eq!(h.gw.pending_server_requests(), 1);
    h.input(Input::Frame { conn: a, frame: codec::encode(&answer, Encoding::Base64Text) });
    assert_eq!(h.gw.pending_server_requests(), 0);
}

/// Several backend processes decide one subscription: changes carry the revision of the
/// decision behind them, and one older than a change already applied is dropped, so a late
/// message from a slower process cannot undo a newer decision. Changes without a revision
/// apply as they come.
#[test]
fn subscription_changes_older_than_the_last_applied_are_dropped() {
    let mut h = Harness::new(Config::default());
    let a = h.open();
    let set = |room: &str, subscribe, revision| Input::Subscription {
        conn: a,
        topic: Topic::Room,
        room: room.into(),
        subscribe,
        revision: Some(clientmq_core::Revision::room(revision)),
    };
    h.input(set("r", true, 5));
    h.input(set("r", false, 3));
    assert_eq!(h.gw.subscribers(Topic::Room, "r"), vec![a], "an older leave does not undo the join");
    h.input(set("r", true, 5));
    h.input(set("r", false, 7));
    h.input(set("r", true, 6));
    assert_eq!(h.gw.subscribers(Topic::Room, "r"), vec![], "an older join does not undo the leave");
    let stale: Vec<String> = (h.events_of(a).into_iter())
        .filter(|k| matches!(k, EventKind::SubscriptionStale { .. }))
        .map(ToString::to_string)
        .collect();
    assert_eq!(stale, ["subscription-stale room=r revision=3", "subscription-stale room=r revision=6"]);
    // The embedded backend's changes (no revision) apply as they come.
    h.input(Input::Subscription {
        conn: a,
        topic: Topic::Room,
        room: "r".into(),
        subscribe: true,
        revision: None,
    });
    assert_eq!(h.gw.subscribers(Topic::Room, "r"), vec![a]);
    // An ended subscription's revision is kept for the last ENDED_SUBSCRIPTIONS_KEPT of them: beyond, a
    // late change finds nothing to compare with and applies.
    h.input(set("old", true, 10));
    h.input(set("old", false, 11));
    for n in 0..=clientmq_core::ENDED_SUBSCRIPTIONS_KEPT as u64 {
        h.input(set(&format!("other-{n}"), true, 20 + 2 * n));
        h.input(set(&format!("other-{n}"), false, 21 + 2 * n));
    }
    h.input(set("old", true, 10));
    assert_eq!(h.gw.subscribers(Topic::Room, "old"), vec![a]);
    h.gw.check_invariants().unwrap();
}

/// The session a connection holds is a record of its own, so a change also carries the
/// binding's revision the decider read: a subscribe read off an older binding than a change
/// applied to the connection is dropped whatever its room's revision (a decider that read "the
/// session is on this connection" just before a takeover moved it), and changes to one
/// subscription are ordered by binding, then room.
#[test]
fn a_subscription_change_read_off_an_older_binding_is_dropped() {
    let mut h = Harness::new(Config::default());
    let a = h.open();
    let set = |room: &str, subscribe, binding, revision| Input::Subscription {
        conn: a,
        topic: Topic::Room,
        room: room.into(),
        subscribe,
        revision: Some(clientmq_core::Revision { binding: Some(binding), room: revision }),
    };
    h.input(set("r", true, 10, 5));
    // Taken over at binding 12: the old connection is told to stop hearing the room, at the
    // room's revision the takeover read.
    h.input(set("r", false, 12, 5));
    // A repair that read the binding before the takeover, with the same (or a newer) room.
    h.input(set("r", true, 10, 5));
    h.input(set("r", true, 11, 9));
    assert_eq!(h.gw.subscribers(Topic::Room, "r"), vec![], "read off a binding the takeover replaced");
    // Bound to another session, a member of the room too, at 14: its changes apply.
    h.input(set("r", true, 14, 9));
    assert_eq!(h.gw.subscribers(Topic::Room, "r"), vec![a]);
    // The first session's late release (another takeover, decided at 13 after the room moved
    // on): older by its binding, whatever the room's revision.
    h.input(set("r", false, 13, 10));
    assert_eq!(h.gw.subscribers(Topic::Room, "r"), vec![a], "an older binding's leave");
    // A subscribe's binding is held to the connection's, not only to its subscription's.
    h.input(set("other", true, 13, 2));
    assert_eq!(h.gw.subscribers(Topic::Room, "other"), vec![]);
    let stale: Vec<String> = (h.events_of(a).into_iter())
        .filter(|k| matches!(k, EventKind::SubscriptionStale { .. }))
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        stale,
        [
            "subscription-stale room=r revision=5 binding=10",
            "subscription-stale room=r revision=9 binding=11",
            "subscription-stale room=r revision=10 binding=13",
            "subscription-stale room=other revision=2 binding=13",
        ]
    );
    h.gw.check_invariants().unwrap();
}

/// An `mq.Error` the backend decided (finding 6 of docs/bad-inputs.md) goes out as it is and is
/// an error, by its reason, not an answered request; a reason no clientmq backend uses is
/// `other`, so a worker cannot grow the metric's labels.
#[test]
fn a_backends_own_mq_error_is_an_error_by_its_reason() {
    let mut h = Harness::new(Config::default());
    let id = h.open();
    h.request(id, "C0", "chat.CreateRoom", vec![1], Encoding::Binary);
    h.request(id, "C1", "chat.CreateRoom", vec![2], Encoding::Binary);
    let tokens = h.backend_tokens();
    let refusal = |reason: &str| {
        Ok(Reply {
            reply_type: "mq.Error".into(),
            payload: mq::Error { reason: reason.into() }.encode_to_vec(),
        })
    };
    h.input(Input::BackendReply { token: tokens[0].0, result: refusal("unauthorized") });
    h.input(Input::BackendReply { token: tokens[1].0, result: refusal("a reason of its own") });
    let sent = h.sent_to(id);
    assert_eq!(
        sent.iter().map(|(_, m)| error_reason(m)).collect::<Vec<_>>(),
        ["unauthorized", "a reason of its own"]
    );
    let said: Vec<String> = h
        .events_of(id)
        .iter()
        .filter_map(|k| match k {
            EventKind::BackendRefused { reason } => Some(format!("refused {reason}")),
            EventKind::Answered { outcome, .. } => Some(format!("answered {}", outcome.label())),
            _ => None,
        })
        .collect();
    assert_eq!(said, ["refused unauthorized", "answered error", "refused other", "answered error"]);
    assert_eq!(h.gw.stats().requests.get(&RequestOutcome::Error), Some(&2));
}

/// A request read together with the client's close frame (the same read, so no answer can come
/// before the close): the client left, so it gets no answer, but the request is counted, once,
/// as undeliverable; the backend's answer, when it comes, is traced as late.
#[test]
fn a_request_read_with_the_clients_close_is_counted_not_answered() {
    let mut h = Harness::new(Config::default());
    let id = h.open();
    h.request(id, "C0", "chat.GetRoomInfo", Vec::new(), Encoding::Binary);
    h.input(Input::PeerClosed { conn: id, code: Some(1000) });
    let token = h.backend_tokens()[0].0;
    assert_eq!(h.gw.stats().requests.get(&RequestOutcome::Undeliverable), Some(&1));
    h.input(Input::BackendReply { token, result: ok_reply("", chat::GetRoomInfoResponse::default()) });
    assert!(h.sent_to(id).is_empty(), "no answer after the client's close");
    assert_eq!(h.gw.stats().requests.values().sum::<u64>(), 1, "counted once");
    assert_eq!(h.gw.open_connections(), 0);
}

/// Without a reader of the trace, a room's event still reaches every subscriber byte for byte
/// as with one; only the per-subscriber `Delivered` events are left out.
#[test]
fn deliveries_are_traced_only_when_asked_and_sent_the_same_either_way() {
    let run = |trace_deliveries: bool| {
        let mut h = Harness::new(Config { trace_deliveries, ..Config::default() });
        let ids = [h.open(), h.open()];
        for conn in ids {
            h.input(Input::Subscription {
                conn,
                topic: Topic::Room,
                room: "room-1".into(),
                subscribe: true,
                revision: None,
            });
        }
        h.take_outputs();
        h.input(Input::Deliver {
            target: Target::Room("room-1".into()),
            event_type: "chat.RoomEvent".into(),
            payload: vec![1, 2, 3],
        });
        let sent: Vec<_> = ids.iter().map(|id| h.sent_to(*id)).collect();
        let delivered = ids
            .iter()
            .map(|id| h.events_of(*id).iter().filter(|k| matches!(k, EventKind::Delivered { .. })).count())
            .collect::<Vec<_>>();
        (sent, delivered)
    };
    let (traced, delivered) = run(true);
    assert_eq!(delivered, vec![1, 1]);
    assert!(traced.iter().all(|s| s.len() == 1 && s[0].1.r#type == "chat.RoomEvent"), "{traced:?}");
    let (untraced, none) = run(false);
    assert_eq!(none, vec![0, 0]);
    assert_eq!(untraced, traced, "the same frames");
}
