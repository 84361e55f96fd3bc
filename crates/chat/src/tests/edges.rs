//! The in-memory state at its edges: a departure's time, an empty alias, the invariant
//! check's teeth, the bound on remembered ended connections.

use super::*;

/// A departure is told with its own time, not the member's join; an empty alias is none.
#[test]
fn a_leave_is_stamped_with_its_time_and_an_empty_alias_is_none() {
    let mut f = Fixture::new(config());
    let a = conn(1);
    f.login(a);
    let made = f.create(a, Some(""));
    let room = made.room.unwrap();
    assert_eq!(room.alias, None);
    let id = room.room_id.unwrap();
    let joined = f.join(a, &id, "alice").self_.unwrap().last_update;
    f.advance(Duration::from_secs(2));
    let leave = chat::LeaveRoom { room_id: id.clone(), ..Default::default() };
    assert_eq!(f.call::<chat::LeaveRoomResponse>(a, "chat.LeaveRoom", leave).status, "ok");
    let left: Vec<u64> = (f.events().into_iter())
        .filter(|d| d.event_type == "chat.RoomEvent")
        .map(|d| chat::RoomEvent::decode(d.payload.as_slice()).unwrap())
        .filter(|e| e.event_type == RoomEventType::MemberLeft as i32)
        .map(|e| e.members[0].last_update)
        .collect();
    assert_eq!(left, [joined + 2_000]);
}

/// The invariant check has teeth: a binding without its session is reported as itself.
#[test]
fn a_binding_without_its_session_breaks_the_invariants() {
    let mut f = Fixture::new(config());
    let id = f.login(conn(1));
    f.state.check_invariants().unwrap();
    f.state.conns.insert(conn(2), "nobody".into());
    assert!(matches!(f.state.check_invariants(), Err(ChatInvariant::Binding(c)) if c == conn(2)));
    f.state.conns.remove(&conn(2));
    f.state.sessions.remove(&id);
    assert!(matches!(f.state.check_invariants(), Err(ChatInvariant::Binding(c)) if c == conn(1)));
}

/// Ended connections are remembered (a request that raced past its end binds nothing) up to a
/// bound: 4,096, the oldest forgotten first.
#[test]
fn ended_connections_are_remembered_up_to_their_bound() {
    let mut f = Fixture::new(config());
    for n in 0..4096 {
        f.state.disconnected(conn(1_000 + n), f.now);
    }
    assert_eq!(f.auth(conn(1_000), "good", None).status, "unauthorized", "the oldest of 4,096 is kept");
    f.state.disconnected(conn(9_999), f.now);
    assert_eq!(f.auth(conn(1_000), "good", None).status, "ok", "the 4,097th pushes it out");
    assert_eq!(f.auth(conn(1_001), "good", None).status, "unauthorized");
}
