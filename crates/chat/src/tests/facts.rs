//! The facts the state keeps for a checker (the simulator's): who holds which session, who hears
//! which room, who left, whose session ended; kept only once asked for, handed out once each.

use super::*;

#[test]
fn facts_are_kept_once_asked_for_and_handed_out_once_each() {
    let mut f = Fixture::new(config());
    assert_eq!(f.state.config().session_grace, config().session_grace);
    let (a, b) = (conn(1), conn(2));
    f.login(a);
    assert!(f.state.take_facts().is_empty(), "not kept before keep_facts");
    f.state.keep_facts();
    let sb = f.login(b);
    let room_id = f.create(b, None).room.unwrap().room_id.unwrap();
    f.join(b, &room_id, "bob");
    let listen = chat::FetchRoomConversation {
        room_id: room_id.clone(),
        options: vec![chat::RoomConversationOption::Subscribe as i32],
        ..Default::default()
    };
    assert_eq!(
        f.call::<chat::FetchRoomConversationResponse>(b, "chat.FetchRoomConversation", listen).status,
        "ok"
    );
    let leave = chat::LeaveRoom { room_id: room_id.clone(), ..Default::default() };
    assert_eq!(f.call::<chat::LeaveRoomResponse>(b, "chat.LeaveRoom", leave).status, "ok");
    let bye = pcast::Bye { session_id: sb.clone(), reason: "done".into() };
    assert_eq!(f.call::<pcast::ByeResponse>(b, "pcast.Bye", bye).status, "ok");
    let told: Vec<String> = f.state.take_facts().iter().map(ToString::to_string).collect();
    let expected = [
        format!("bound {b} session={sb}"),
        format!("hears room room={room_id} session={sb}"),
        format!("hears conversation room={room_id} session={sb}"),
        format!("left room={room_id} session={sb}"),
        format!("unbound {b} session={sb}"),
        format!("session-ended session={sb}"),
    ];
    assert_eq!(told, expected);
    assert!(f.state.take_facts().is_empty(), "each handed out once");
}
