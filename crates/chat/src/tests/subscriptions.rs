//! The subscription changes the state hands the gateway, in order with its events, and a seeded
//! run checking that a gateway fed with them (and with the replies it reads itself) always holds
//! exactly the memberships of the connections' sessions.

use std::collections::BTreeSet;

use clientmq_core::Topic;
use rand::RngExt;

use super::*;

/// A connection's number, as `conn(n)` made it.
fn n(c: ConnectionId) -> String {
    c.to_string().trim_start_matches('0').to_owned()
}

fn sub(sign: char, topic: Topic, room: &str, c: ConnectionId) -> String {
    format!("{sign}{} {room} @{}", topic.label(), n(c))
}

fn left(room: &str) -> String {
    format!("MemberLeft {room}")
}

/// What the state handed the gateway since the last call, one line an item.
fn outgoing(f: &mut Fixture) -> Vec<String> {
    let line = |o: Outgoing| match o {
        Outgoing::Subscription(s) => sub(if s.subscribe { '+' } else { '-' }, s.topic, &s.room, s.conn),
        Outgoing::Event(d) => match d.target {
            Target::Room(room) => {
                let e = chat::RoomEvent::decode(d.payload.as_slice()).unwrap();
                format!("{:?} {room}", RoomEventType::try_from(e.event_type).unwrap())
            }
            Target::Conversation(room) => format!("message {room}"),
            Target::Connection(c) => format!("event @{}", n(c)),
        },
    };
    f.state.take_outgoing().into_iter().map(line).collect()
}

fn subscribe_conversation(f: &mut Fixture, c: ConnectionId, room_id: &str) -> clientmq_core::Reply {
    let options = vec![chat::RoomConversationOption::Subscribe as i32];
    let req =
        chat::FetchRoomConversation { room_id: room_id.into(), limit: 1, options, ..Default::default() };
    f.raw(c, "chat.FetchRoomConversation", req.encode_to_vec())
}

/// `a`'s session in two rooms, `b`'s in the first; `a` subscribed to the first's conversation.
/// Returns the rooms in id order and `a`'s session.
fn two_rooms(f: &mut Fixture, a: ConnectionId, b: ConnectionId) -> ([String; 2], String) {
    let sa = f.login(a);
    f.login(b);
    let mut rooms = [(); 2].map(|_| f.create(a, None).room.unwrap().room_id.unwrap());
    rooms.sort();
    for room in &rooms {
        f.join(a, room, "alice");
    }
    f.join(b, &rooms[0], "bob");
    subscribe_conversation(f, a, &rooms[0]);
    outgoing(f);
    (rooms, sa)
}

#[test]
fn bye_unsubscribes_its_connection_from_each_room_before_the_room_hears_it_left() {
    let mut f = Fixture::new(config());
    let (a, b) = (conn(1), conn(2));
    let ([r1, r2], sa) = two_rooms(&mut f, a, b);
    f.call::<pcast::ByeResponse>(a, "pcast.Bye", pcast::Bye { session_id: sa, reason: String::new() });
    let expected = [
        sub('-', Topic::Room, &r1, a),
        sub('-', Topic::Conversation, &r1, a),
        left(&r1),
        sub('-', Topic::Room, &r2, a),
        sub('-', Topic::Conversation, &r2, a),
        left(&r2),
    ];
    assert_eq!(outgoing(&mut f), expected);
    // Its connection's end, later, has nothing left to change.
    f.state.disconnected(a, f.now);
    assert_eq!(outgoing(&mut f), Vec::<String>::new());
}

#[test]
fn a_takeover_moves_the_rooms_and_conversations_to_the_new_connection() {
    let mut f = Fixture::new(config());
    let (a, b, a2) = (conn(1), conn(2), conn(3));
    let ([r1, r2], sa) = two_rooms(&mut f, a, b);
    assert_eq!(f.auth(a2, "good", Some(&sa)).session_id.as_deref(), Some(sa.as_str()));
    let expected = [
        sub('-', Topic::Room, &r1, a),
        sub('-', Topic::Conversation, &r1, a),
        sub('-', Topic::Room, &r2, a),
        sub('-', Topic::Conversation, &r2, a),
        sub('+', Topic::Room, &r1, a2),
        sub('+', Topic::Conversation, &r1, a2),
        sub('+', Topic::Room, &r2, a2),
    ];
    assert_eq!(outgoing(&mut f), expected, "no member left or joined: no event");
    f.state.disconnected(a, f.now);
    assert_eq!(outgoing(&mut f), Vec::<String>::new());
}

/// A gateway back from an absence asks to be told again: the connection that holds the session
/// hears its rooms and conversations again; the one it moved away from, to stop hearing them.
#[test]
fn a_resubscribe_tells_the_holder_what_it_hears_and_a_former_holder_to_stop() {
    let mut f = Fixture::new(config());
    let (a, b, a2) = (conn(1), conn(2), conn(3));
    let ([r1, r2], sa) = two_rooms(&mut f, a, b);
    assert_eq!(f.state.session_of(&a), Some(sa.as_str()));
    f.state.resubscribe(a, &sa);
    let heard =
        [sub('+', Topic::Room, &r1, a), sub('+', Topic::Conversation, &r1, a), sub('+', Topic::Room, &r2, a)];
    assert_eq!(outgoing(&mut f), heard);
    f.auth(a2, "good", Some(&sa));
    outgoing(&mut f);
    assert_eq!(f.state.session_of(&a), None, "taken over");
    f.state.resubscribe(a, &sa);
    // Unsubscribed from both of each room, as a takeover does (whatever it heard).
    let stop = [
        sub('-', Topic::Room, &r1, a),
        sub('-', Topic::Conversation, &r1, a),
        sub('-', Topic::Room, &r2, a),
        sub('-', Topic::Conversation, &r2, a),
    ];
    assert_eq!(outgoing(&mut f), stop);
}

#[test]
fn a_resume_after_the_old_connection_ended_subscribes_the_new_one() {
    let mut f = Fixture::new(config());
    let (a, b, a2) = (conn(1), conn(2), conn(3));
    let ([r1, r2], sa) = two_rooms(&mut f, a, b);
    // The gateway drops an ended connection's subscriptions itself.
    f.state.disconnected(a, f.now);
    f.advance(9 * SEC);
    assert_eq!(outgoing(&mut f), Vec::<String>::new());
    f.auth(a2, "good", Some(&sa));
    let expected = [
        sub('+', Topic::Room, &r1, a2),
        sub('+', Topic::Conversation, &r1, a2),
        sub('+', Topic::Room, &r2, a2),
    ];
    assert_eq!(outgoing(&mut f), expected);
    // The SDK's re-join repeats the subscription (the gateway keeps it once: a lost change
    // heals), no event; authenticating again as itself changes nothing.
    f.join(a2, &r1, "alice");
    assert_eq!(outgoing(&mut f), [sub('+', Topic::Room, &r1, a2)]);
    f.auth(a2, "good", Some(&sa));
    assert_eq!(outgoing(&mut f), Vec::<String>::new());
}

#[test]
fn authenticating_as_another_session_unsubscribes_from_the_first_ones_rooms() {
    let mut f = Fixture::new(config());
    let (a, b) = (conn(1), conn(2));
    let ([r1, r2], sa) = two_rooms(&mut f, a, b);
    let other = f.auth(a, "good", None).session_id.unwrap();
    let expected = [
        sub('-', Topic::Room, &r1, a),
        sub('-', Topic::Conversation, &r1, a),
        sub('-', Topic::Room, &r2, a),
        sub('-', Topic::Conversation, &r2, a),
    ];
    assert_eq!(outgoing(&mut f), expected);
    // Back to the first within its grace period: its rooms again; the empty one has none.
    f.auth(a, "good", Some(&sa));
    let expected =
        [sub('+', Topic::Room, &r1, a), sub('+', Topic::Conversation, &r1, a), sub('+', Topic::Room, &r2, a)];
    assert_eq!(outgoing(&mut f), expected);
    // The abandoned one expires with no connection to tell.
    f.advance(10 * SEC);
    assert_eq!(f.state.stats().sessions, 2);
    assert!(!f.state.sessions.contains_key(&other));
}

#[test]
fn leaving_unsubscribes_first_and_forgets_the_conversation_subscription() {
    let mut f = Fixture::new(config());
    let (a, b, a2) = (conn(1), conn(2), conn(3));
    let ([r1, _], sa) = two_rooms(&mut f, a, b);
    let leave = chat::LeaveRoom { room_id: r1.clone(), ..Default::default() };
    f.call::<chat::LeaveRoomResponse>(a, "chat.LeaveRoom", leave);
    let expected = [sub('-', Topic::Room, &r1, a), sub('-', Topic::Conversation, &r1, a), left(&r1)];
    assert_eq!(outgoing(&mut f), expected);
    // Joined again without subscribing to the conversation: a resume brings back the room only.
    f.join(a, &r1, "alice");
    f.state.disconnected(a, f.now);
    outgoing(&mut f);
    f.auth(a2, "good", Some(&sa));
    assert!(outgoing(&mut f).iter().all(|l| !l.starts_with("+conversation")));
}

#[test]
fn grace_expiry_and_forgotten_rooms_have_no_connection_to_unsubscribe() {
    let mut f = Fixture::new(config());
    let (a, b) = (conn(1), conn(2));
    let ([r1, r2], _) = two_rooms(&mut f, a, b);
    f.state.disconnected(a, f.now);
    f.advance(10 * SEC);
    assert_eq!(outgoing(&mut f), [left(&r1), left(&r2)]);
    f.advance(100 * SEC);
    assert_eq!(f.state.stats().rooms, 1, "the empty room is forgotten");
    assert_eq!(outgoing(&mut f), Vec::<String>::new());
}

/// The gateway's tables as the state's output leaves them (the gateway reads no subscription
/// from a reply).
#[derive(Default)]
struct Tables {
    table: BTreeSet<(ConnectionId, Topic, String)>,
}

impl Tables {
    fn apply(&mut self, f: &mut Fixture) {
        for o in f.state.take_outgoing() {
            if let Outgoing::Subscription(s) = o {
                match s.subscribe {
                    true => self.table.insert((s.conn, s.topic, s.room)),
                    false => self.table.remove(&(s.conn, s.topic, s.room)),
                };
            }
        }
    }

    /// Every bound connection hears exactly its session's rooms and subscribed conversations.
    fn check(&self, f: &Fixture) {
        let mut expected = BTreeSet::new();
        for (c, id) in &f.state.conns {
            let s = &f.state.sessions[id];
            expected.extend(s.rooms.iter().map(|r| (*c, Topic::Room, r.clone())));
            expected.extend(s.conversations.iter().map(|r| (*c, Topic::Conversation, r.clone())));
        }
        assert_eq!(self.table, expected);
    }
}

#[test]
fn a_gateway_fed_in_order_holds_exactly_the_memberships_of_each_connections_session() {
    for seed in 0..20 {
        let mut f = Fixture::new(ChatConfig { room_idle: 30 * SEC, ..config() });
        let mut rng = StdRng::seed_from_u64(seed);
        let mut gw = Tables::default();
        let admin = conn(1000);
        f.login(admin);
        let rooms: Vec<String> =
            (0..3).map(|_| f.create(admin, None).room.unwrap().room_id.unwrap()).collect();
        let mut live = vec![admin];
        let mut next = 1;
        for _ in 0..300 {
            let c = live[rng.random_range(0..live.len())];
            let room = rooms[rng.random_range(0..rooms.len())].clone();
            match rng.random_range(0..9) {
                0 => {
                    live.push(conn(next));
                    next += 1;
                }
                1 => {
                    // A new session, or another one resumed or taken over.
                    let known: Vec<String> = f.state.sessions.keys().cloned().collect();
                    let pick = rng.random_range(0..=known.len());
                    f.auth(c, "good", known.get(pick).map(String::as_str));
                }
                2 => {
                    let req = chat::JoinRoom {
                        room_id: Some(room.clone()),
                        member: member("m"),
                        ..Default::default()
                    };
                    f.raw(c, "chat.JoinRoom", req.encode_to_vec());
                }
                3 => {
                    let req = chat::LeaveRoom { room_id: room.clone(), ..Default::default() };
                    f.raw(c, "chat.LeaveRoom", req.encode_to_vec());
                }
                4 => {
                    subscribe_conversation(&mut f, c, &room);
                }
                5 => {
                    f.raw(c, "pcast.Bye", pcast::Bye::default().encode_to_vec());
                }
                6 if c != admin => {
                    // The gateway drops an ended connection's subscriptions before telling us.
                    gw.table.retain(|(held, _, _)| *held != c);
                    f.state.disconnected(c, f.now);
                    live.retain(|l| *l != c);
                }
                _ => f.advance(Duration::from_millis(rng.random_range(0..4000))),
            }
            gw.apply(&mut f);
            gw.check(&f);
        }
    }
}
