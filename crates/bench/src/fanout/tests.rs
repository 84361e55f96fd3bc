//! Fan-out mode against an in-process plain server that can lose or double a delivery.

use std::collections::BTreeMap;

use tokio::sync::mpsc;

use super::*;

/// What the test server does wrong to member number 0 of each room.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    DropThird,
    DoubleThird,
}

/// A plain-protocol fan-out server, in process.
async fn plain_server(fault: Fault) -> Target {
    type Members = Arc<Mutex<BTreeMap<String, Vec<mpsc::UnboundedSender<String>>>>>;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let rooms = Members::default();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let rooms = rooms.clone();
            tokio::spawn(async move {
                let ws = tokio_tungstenite::accept_async(socket).await.unwrap();
                let (mut sink, mut stream) = ws.split();
                let (tx, mut rx) = mpsc::unbounded_channel::<String>();
                tokio::spawn(async move {
                    while let Some(text) = rx.recv().await {
                        if sink.send(Message::Text(text.into())).await.is_err() {
                            return;
                        }
                    }
                });
                let mut published = 0u64;
                while let Some(Ok(Message::Text(text))) = stream.next().await {
                    if let Some(room) = text.strip_prefix("sub:") {
                        rooms.lock().unwrap().entry(room.to_owned()).or_default().push(tx.clone());
                        let _ = tx.send(text.as_str().to_owned());
                    } else if let Some((room, frame)) =
                        text.strip_prefix("pub:").and_then(|r| r.split_once(':'))
                    {
                        published += 1;
                        let rooms = rooms.lock().unwrap();
                        for (i, member) in rooms[room].iter().enumerate() {
                            let third = i == 0 && published == 3;
                            if !(third && fault == Fault::DropThird) {
                                let _ = member.send(frame.to_owned());
                            }
                            if third && fault == Fault::DoubleThird {
                                let _ = member.send(frame.to_owned());
                            }
                        }
                    }
                }
            });
        }
    });
    Target::parse(&url).unwrap()
}

fn opts(rate: Option<f64>) -> FanoutOpts {
    FanoutOpts {
        members: 20,
        rooms: 2,
        warmup: Duration::from_millis(100),
        duration: Duration::from_millis(400),
        rate,
        protocol: Protocol::Plain,
        sources: 1,
        hear_grace: Duration::from_millis(500),
        ..FanoutOpts::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_hears_every_message_of_its_room_once_in_order() {
    let target = plain_server(Fault::None).await;
    let paced = run(std::slice::from_ref(&target), &opts(Some(200.0))).await;
    assert!(paced.clean(), "{}", paced.summary());
    assert_eq!((paced.members, paced.rooms), (20, 2));
    // 200 messages/s for 0.5 s, 10 members a room: about 1,000 deliveries, 800 measured.
    assert!((90..=101).contains(&paced.published), "{}", paced.summary());
    let per_sec = paced.deliveries_per_sec();
    assert!((1_500.0..=2_100.0).contains(&per_sec), "{}", paced.summary());
    assert!(paced.latency.count > 500 && paced.frame_bytes > 200, "{}", paced.summary());
    let full = run(std::slice::from_ref(&target), &opts(None)).await;
    assert!(full.clean() && full.published > paced.published, "{}", full.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_or_doubled_delivery_is_counted() {
    let lost = run(&[plain_server(Fault::DropThird).await], &opts(Some(200.0))).await;
    // Member 0 of each of the two rooms.
    assert_eq!((lost.missing, lost.duplicated, lost.reordered), (2, 0, 2), "{}", lost.summary());
    assert!(!lost.clean());
    let doubled = run(&[plain_server(Fault::DoubleThird).await], &opts(Some(200.0))).await;
    assert_eq!((doubled.missing, doubled.duplicated), (0, 2), "{}", doubled.summary());
    assert!(!doubled.clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_members_are_held_unread_and_read_what_they_were_sent_at_the_end() {
    let target = plain_server(Fault::None).await;
    let report = run(std::slice::from_ref(&target), &FanoutOpts { slow_every: 5, ..opts(Some(200.0)) }).await;
    // 4 of 20 never read during the run; the 16 others hear everything, as before.
    assert_eq!((report.slow_members, report.members), (4, 16), "{}", report.summary());
    assert!(report.clean(), "{}", report.summary());
    // This server queues without bound: each slow member finds every message of its room waiting.
    assert_eq!(report.slow_frames, 4 * report.published / 2, "{}", report.summary());
    assert_eq!(report.slow_closed_3335, 0);
}
