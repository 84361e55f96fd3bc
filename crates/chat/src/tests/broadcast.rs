//! Broadcast rooms (channels and town halls): the audience hears the room and its conversation
//! but is not announced or listed, so a join costs one answer instead of a frame to every member.

use super::*;

fn as_role(name: &str, role: chat::MemberRole) -> chat::Member {
    chat::Member { role: role as i32, ..member(name) }
}

fn join_as(f: &mut Fixture, c: ConnectionId, room_id: &str, m: chat::Member) -> chat::JoinRoomResponse {
    let req = chat::JoinRoom { room_id: Some(room_id.into()), member: m, ..Default::default() };
    f.call(c, "chat.JoinRoom", req)
}

fn listed(resp: &chat::JoinRoomResponse) -> Vec<String> {
    resp.members.iter().map(|m| m.session_id.clone()).collect()
}

fn create_typed(f: &mut Fixture, c: ConnectionId, ty: chat::RoomType) -> String {
    let req = chat::CreateRoom {
        session_id: String::new(),
        room: chat::Room { r#type: ty as i32, ..room("b", None) },
    };
    f.call::<chat::CreateRoomResponse>(c, "chat.CreateRoom", req).room.unwrap().room_id.unwrap()
}

#[test]
fn a_channels_audience_is_neither_announced_nor_listed_but_hears_everything() {
    let mut f = Fixture::new(config());
    let (p, v, w) = (conn(1), conn(2), conn(3));
    let (sp, sv, sw) = (f.login(p), f.login(v), f.login(w));
    let id = create_typed(&mut f, p, chat::RoomType::Channel);
    let presenter = join_as(&mut f, p, &id, as_role("host", chat::MemberRole::Presenter));
    assert_eq!(listed(&presenter), vec![sp.clone()]);
    assert_eq!(f.room_events(), vec![(id.clone(), RoomEventType::MemberJoined, vec![sp.clone()])]);

    // Viewers join quietly: each sees the presenter and itself (as `self`), nobody hears of them.
    let viewer = join_as(&mut f, v, &id, as_role("v", chat::MemberRole::Audience));
    assert_eq!((listed(&viewer), viewer.self_.unwrap().session_id), (vec![sp.clone()], sv.clone()));
    join_as(&mut f, w, &id, as_role("w", chat::MemberRole::Audience));
    assert!(f.room_events().is_empty());
    assert_eq!(f.state.members(&id), sorted([sp.clone(), sv.clone(), sw.clone()]), "members all the same");
    let info: chat::GetRoomInfoResponse =
        f.call(v, "chat.GetRoomInfo", chat::GetRoomInfo { room_id: Some(id.clone()), ..Default::default() });
    assert_eq!(info.members.iter().map(|m| m.session_id.clone()).collect::<Vec<_>>(), vec![sp.clone()]);

    // The audience hears the conversation like anyone.
    assert!(f.fetch(v, &id, 10, None, None).is_empty());
    assert_eq!(f.send(p, &id, "hello"), "ok");
    assert_eq!(f.events().iter().filter(|d| d.event_type == "chat.RoomConversationEvent").count(), 1);

    // Made presenter, a viewer joins the listed members; made audience again, it leaves them.
    let role = |who: &str, role: chat::MemberRole| chat::UpdateMember {
        room_id: Some(id.clone()),
        member: chat::MemberUpdate { session_id: who.into(), role: Some(role as i32), ..Default::default() },
        ..Default::default()
    };
    assert_eq!(
        f.call::<chat::UpdateMemberResponse>(v, "chat.UpdateMember", role(&sv, chat::MemberRole::Presenter))
            .status,
        "ok"
    );
    assert_eq!(f.room_events(), vec![(id.clone(), RoomEventType::MemberJoined, vec![sv.clone()])]);
    assert_eq!(
        f.call::<chat::UpdateMemberResponse>(v, "chat.UpdateMember", role(&sv, chat::MemberRole::Audience))
            .status,
        "ok"
    );
    assert_eq!(f.room_events(), vec![(id.clone(), RoomEventType::MemberLeft, vec![sv.clone()])]);

    // A viewer's departure (its leave, or its session's end) is not heard either; the presenter's is.
    let leave = chat::LeaveRoom { room_id: id.clone(), ..Default::default() };
    assert_eq!(f.call::<chat::LeaveRoomResponse>(w, "chat.LeaveRoom", leave.clone()).status, "ok");
    f.state.disconnected(v, f.now);
    f.advance(10 * SEC);
    assert!(f.room_events().is_empty());
    assert_eq!(f.call::<chat::LeaveRoomResponse>(p, "chat.LeaveRoom", leave).status, "ok");
    assert_eq!(f.room_events(), vec![(id.clone(), RoomEventType::MemberLeft, vec![sp])]);
}

#[test]
fn the_audience_of_other_rooms_is_announced_and_a_later_type_change_keeps_a_channel_quiet() {
    let mut f = Fixture::new(config());
    let (a, b) = (conn(1), conn(2));
    let (_, sb) = (f.login(a), f.login(b));
    let chat_room = create_typed(&mut f, a, chat::RoomType::MultiPartyChat);
    join_as(&mut f, b, &chat_room, as_role("b", chat::MemberRole::Audience));
    assert_eq!(f.room_events(), vec![(chat_room, RoomEventType::MemberJoined, vec![sb.clone()])]);

    let hall = create_typed(&mut f, a, chat::RoomType::TownHall);
    join_as(&mut f, a, &hall, as_role("a", chat::MemberRole::Moderator));
    f.room_events();
    let update = chat::UpdateRoom {
        room: chat::Room { room_id: Some(hall.clone()), ..room("b", None) },
        ..Default::default()
    };
    assert_eq!(f.call::<chat::UpdateRoomResponse>(a, "chat.UpdateRoom", update).status, "ok");
    f.room_events();
    join_as(&mut f, b, &hall, as_role("b", chat::MemberRole::Audience));
    assert!(f.room_events().is_empty(), "decided when the room was created");
}
