//! Subscriptions the backend decides, and the interest a gateway reports so that it hears a room
//! from before the backend's decision to its last member's end.

use clientmq_core::proto::{chat, pcast};
use clientmq_core::{BackendError, Config, Encoding, Input, Output, Topic};
use prost::Message as _;

use crate::harness::{Harness, SEC, auth_payload, error_reason, ok_reply};

fn bus_config() -> Config {
    Config { tokens: clientmq_core::TokenPolicy::AcceptAny, ..Config::default() }
}

/// Interest outputs so far, as (topic, room, on), and forgets them.
fn interest(h: &mut Harness) -> Vec<(Topic, String, bool)> {
    h.take_outputs()
        .into_iter()
        .filter_map(|o| match o {
            Output::Interest { topic, room, on } => Some((topic, room, on)),
            _ => None,
        })
        .collect()
}

fn join(room: &str) -> Vec<u8> {
    chat::JoinRoom { room_id: Some(room.into()), ..Default::default() }.encode_to_vec()
}

fn joined() -> Result<clientmq_core::Reply, BackendError> {
    ok_reply("", chat::JoinRoomResponse { status: "ok".into(), ..Default::default() })
}

fn subscription(conn: clientmq_core::ConnectionId, room: &str, subscribe: bool) -> Input {
    Input::Subscription { conn, topic: Topic::Room, room: room.into(), subscribe, revision: None }
}

#[test]
fn a_join_naming_its_room_holds_interest_before_the_backend_sees_it() {
    let mut h = Harness::new(bus_config());
    let a = h.open();
    h.request(a, "C0", "chat.JoinRoom", join("r1"), Encoding::Binary);
    let outs = h.take_outputs();
    let interest_at = outs.iter().position(|o| matches!(o, Output::Interest { on: true, .. }));
    let backend_at = outs.iter().position(|o| matches!(o, Output::Backend(_)));
    assert!(interest_at.unwrap() < backend_at.unwrap(), "interest first: {outs:?}");
    let token = match &outs[backend_at.unwrap()] {
        Output::Backend(b) => b.token,
        _ => unreachable!(),
    };
    // The backend subscribes the connection, then answers: no gap in interest.
    h.input(subscription(a, "r1", true));
    h.input(Input::BackendReply { token, result: joined() });
    assert_eq!(interest(&mut h), vec![]);
    assert_eq!(h.gw.subscribers(Topic::Room, "r1"), vec![a]);
    // A second member changes nothing; the last one leaving ends the interest.
    let b = h.open();
    h.input(subscription(b, "r1", true));
    h.input(subscription(a, "r1", false));
    assert_eq!(interest(&mut h), vec![]);
    h.input(Input::TransportLost { conn: b, reason: clientmq_core::LostReason::Eof });
    assert_eq!(interest(&mut h), vec![(Topic::Room, "r1".into(), false)]);
}

#[test]
fn a_refused_join_a_timeout_or_a_disconnect_gives_the_interest_back() {
    let mut h = Harness::new(bus_config());
    let a = h.open();
    h.request(a, "C0", "chat.JoinRoom", join("r1"), Encoding::Binary);
    let token = h.backend_tokens()[0].0;
    assert_eq!(interest(&mut h), vec![(Topic::Room, "r1".into(), true)]);
    let refused = ok_reply("", chat::JoinRoomResponse { status: "not-found".into(), ..Default::default() });
    h.input(Input::BackendReply { token, result: refused });
    assert_eq!(interest(&mut h), vec![(Topic::Room, "r1".into(), false)]);

    h.request(a, "C1", "chat.JoinRoom", join("r2"), Encoding::Binary);
    h.advance(16 * SEC);
    assert_eq!(interest(&mut h), vec![(Topic::Room, "r2".into(), true), (Topic::Room, "r2".into(), false)]);

    let fetch = chat::FetchRoomConversation {
        room_id: "r3".into(),
        options: vec![chat::RoomConversationOption::Subscribe as i32],
        ..Default::default()
    };
    h.request(a, "C2", "chat.FetchRoomConversation", fetch.encode_to_vec(), Encoding::Binary);
    assert_eq!(interest(&mut h), vec![(Topic::Conversation, "r3".into(), true)]);
    h.input(Input::PeerClosed { conn: a, code: Some(1000) });
    assert_eq!(interest(&mut h), vec![(Topic::Conversation, "r3".into(), false)]);
}

#[test]
fn a_join_by_alias_has_interest_only_once_subscribed() {
    let mut h = Harness::new(bus_config());
    let a = h.open();
    let by_alias = chat::JoinRoom { alias: Some("lobby".into()), ..Default::default() };
    h.request(a, "C0", "chat.JoinRoom", by_alias.encode_to_vec(), Encoding::Binary);
    let token = h.backend_tokens()[0].0;
    assert_eq!(interest(&mut h), vec![]);
    h.input(subscription(a, "r9", true));
    h.input(Input::BackendReply { token, result: joined() });
    assert_eq!(interest(&mut h), vec![(Topic::Room, "r9".into(), true)]);
}

#[test]
fn replies_do_not_subscribe_when_the_backend_decides_but_still_name_the_session() {
    let mut h = Harness::new(bus_config());
    let a = h.open();
    h.request(a, "C0", "pcast.Authenticate", auth_payload(), Encoding::Binary);
    h.request(a, "C1", "chat.JoinRoom", join("r1"), Encoding::Binary);
    let tokens = h.backend_tokens();
    let ok = pcast::AuthenticateResponse {
        status: "ok".into(),
        session_id: Some("s1".into()),
        ..Default::default()
    };
    h.input(Input::BackendReply { token: tokens[0].0, result: ok_reply("", ok) });
    h.input(Input::BackendReply { token: tokens[1].0, result: joined() });
    assert_eq!(h.gw.subscriptions(), 0, "the reply alone subscribes nobody");
    h.request(a, "C2", "chat.GetRoomInfo", vec![], Encoding::Binary);
    let forwarded = h.take_outputs().into_iter().rev().find_map(|o| match o {
        Output::Backend(b) => Some(b),
        _ => None,
    });
    assert_eq!(forwarded.unwrap().session_id.as_deref(), Some("s1"));
}

#[test]
fn an_unreachable_backend_or_no_worker_answers_at_once_with_its_reason() {
    let mut h = Harness::new(Config::default());
    let a = h.open();
    for (i, error) in [BackendError::Unavailable, BackendError::NoWorker].into_iter().enumerate() {
        h.take_outputs();
        h.request(a, &format!("C{i}"), "chat.GetRoomInfo", vec![], Encoding::Binary);
        let token = h.backend_tokens()[0].0;
        let reason = error.reason();
        h.input(Input::BackendReply { token, result: Err(error) });
        let sent = h.sent_to(a);
        assert_eq!(error_reason(&sent.last().unwrap().1), reason);
    }
    assert_eq!(BackendError::Unavailable.reason(), "unavailable");
    assert_eq!(BackendError::NoWorker.reason(), "no-worker");
}

#[test]
fn a_join_or_subscription_naming_no_room_holds_no_interest() {
    let mut h = Harness::new(bus_config());
    let a = h.open();
    h.request(a, "C0", "chat.JoinRoom", join(""), Encoding::Binary);
    let fetch = chat::FetchRoomConversation {
        room_id: String::new(),
        options: vec![chat::RoomConversationOption::Subscribe as i32],
        ..Default::default()
    };
    h.request(a, "C1", "chat.FetchRoomConversation", fetch.encode_to_vec(), Encoding::Binary);
    assert_eq!(h.backend_tokens().len(), 2, "both go to the backend");
    assert_eq!(interest(&mut h), vec![], "no interest in a room without a name");
    // The same subscription naming its room does hold interest.
    let fetch = chat::FetchRoomConversation { room_id: "r1".into(), ..fetch };
    h.request(a, "C2", "chat.FetchRoomConversation", fetch.encode_to_vec(), Encoding::Binary);
    assert_eq!(interest(&mut h), vec![(Topic::Conversation, "r1".into(), true)]);
}

/// A connection opened and authenticated as session `s1`.
fn authenticated(h: &mut Harness) -> clientmq_core::ConnectionId {
    let a = h.open();
    h.request(a, "C0", "pcast.Authenticate", auth_payload(), Encoding::Binary);
    let ok = pcast::AuthenticateResponse {
        status: "ok".into(),
        session_id: Some("s1".into()),
        ..Default::default()
    };
    h.input(Input::BackendReply { token: h.backend_tokens()[0].0, result: ok_reply("", ok) });
    a
}

/// The bus was away, so subscription changes may have been lost: every connection with a
/// session drops what it hears (interest ends with the last subscriber) and is listed with
/// its session and what it dropped, for the backend to tell it again. A connection without a
/// session is left alone, and the revisions applied stay, so a late change older than one
/// applied before is still dropped.
#[test]
fn subscriptions_are_forgotten_for_the_backend_to_tell_again() {
    let mut h = Harness::new(bus_config());
    let a = authenticated(&mut h);
    let b = h.open();
    let at = |room| Some(clientmq_core::Revision { binding: Some(3), room });
    let stamped = |conn, topic, room: &str, subscribe, revision| Input::Subscription {
        conn,
        topic,
        room: room.into(),
        subscribe,
        revision: at(revision),
    };
    h.input(stamped(a, Topic::Room, "r1", true, 5));
    h.input(stamped(a, Topic::Conversation, "r1", true, 5));
    h.input(subscription(b, "r2", true));
    interest(&mut h);
    let forgotten = h.gw.forget_subscriptions(h.now);
    h.drain();
    assert_eq!(
        forgotten,
        vec![clientmq_core::Forgotten {
            conn: a,
            session: "s1".into(),
            subscriptions: vec![(Topic::Room, "r1".into(), at(5)), (Topic::Conversation, "r1".into(), at(5))],
        }]
    );
    assert_eq!(h.gw.subscribers(Topic::Room, "r1"), vec![]);
    assert_eq!(h.gw.subscribers(Topic::Room, "r2"), vec![b], "no session: nothing to tell again");
    assert_eq!(
        interest(&mut h),
        vec![(Topic::Room, "r1".into(), false), (Topic::Conversation, "r1".into(), false)]
    );
    // Told again: a change as new as the last applied applies, an older one does not.
    h.input(stamped(a, Topic::Room, "r1", true, 4));
    assert_eq!(h.gw.subscribers(Topic::Room, "r1"), vec![]);
    h.input(stamped(a, Topic::Room, "r1", true, 5));
    assert_eq!(h.gw.subscribers(Topic::Room, "r1"), vec![a]);
    h.gw.check_invariants().unwrap();
}

/// Nobody told the connections again, so the gateway restores what it forgot, each at the
/// revision it was last changed at: a change applied meanwhile (a `pcast.Bye`'s unsubscribe,
/// a binding moved) is newer and stands, and what nobody changed comes back.
#[test]
fn forgotten_subscriptions_restored_at_their_revisions_do_not_undo_a_later_change() {
    let mut h = Harness::new(bus_config());
    let a = authenticated(&mut h);
    let change = |topic, room: &str, subscribe, revision| Input::Subscription {
        conn: a,
        topic,
        room: room.into(),
        subscribe,
        revision,
    };
    let at = |binding, room| Some(clientmq_core::Revision { binding: Some(binding), room });
    h.input(change(Topic::Room, "r1", true, at(3, 5)));
    h.input(change(Topic::Conversation, "r1", true, at(3, 6)));
    h.input(change(Topic::Room, "r2", true, at(3, 7)));
    h.input(change(Topic::Room, "r3", true, None));
    let forgotten = h.gw.forget_subscriptions(h.now).remove(0).subscriptions;
    assert_eq!(
        forgotten,
        vec![
            (Topic::Room, "r1".into(), at(3, 5)),
            (Topic::Room, "r2".into(), at(3, 7)),
            (Topic::Room, "r3".into(), None),
            (Topic::Conversation, "r1".into(), at(3, 6)),
        ]
    );
    // Meanwhile: r1 left (both topics), r2 unchanged.
    h.input(change(Topic::Room, "r1", false, at(3, 8)));
    h.input(change(Topic::Conversation, "r1", false, at(3, 8)));
    for (topic, room, revision) in forgotten {
        h.input(change(topic, &room, true, revision));
    }
    h.drain();
    assert_eq!(h.gw.subscribers(Topic::Room, "r1"), vec![], "the leave stands");
    assert_eq!(h.gw.subscribers(Topic::Conversation, "r1"), vec![]);
    assert_eq!(h.gw.subscribers(Topic::Room, "r2"), vec![a], "unchanged: restored");
    assert_eq!(h.gw.subscribers(Topic::Room, "r3"), vec![a], "never stamped: restored");
    // A session bound again since: nothing of the old binding comes back.
    let forgotten = h.gw.forget_subscriptions(h.now).remove(0).subscriptions;
    h.input(change(Topic::Room, "r9", true, at(4, 1)));
    for (topic, room, revision) in forgotten.into_iter().filter(|(_, _, r)| r.is_some()) {
        h.input(change(topic, &room, true, revision));
    }
    h.drain();
    assert_eq!(h.gw.subscribers(Topic::Room, "r2"), vec![], "read off an older binding");
    assert_eq!(h.gw.subscribers(Topic::Room, "r9"), vec![a]);
    h.gw.check_invariants().unwrap();
}
