//! A room's conversation lives in the history stream, on the room's `conv` subject: a message is
//! appended expecting the subject's last sequence, so the room's messages have one order, the
//! stream's, and each message's id is made from the sequence it follows, so ids sort in that
//! order as strings (the SDK orders its history by comparing ids). Each send carries a message id
//! unique to it, so a send retried after a timeout is stored once, and two senders never take
//! each other's message for a repeat. A fetch reads the subject back from the stream.

use std::time::Duration;

use clientmq_bus::Bus;
use clientmq_bus::contract::header;
use clientmq_bus::store::wire::DeliverPolicy;
use clientmq_bus::store::{Expect, MsgQuery, Store, StoreError};
use clientmq_core::Topic;
use clientmq_core::proto::chat;
use prost::Message;

use super::decide::MAX_ATTEMPTS;
use super::layout::Layout;

/// The id of a message that follows stream sequence `after` in its room, sent at `now_ms`: it
/// sorts after the ids of the room's earlier messages, as a string of the in-memory ids' width.
pub fn message_id(after: u64, now_ms: u64) -> String {
    format!("{after:016x}{:011x}", now_ms & 0xfff_ffff_ffff)
}

/// A message taken by the history.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    /// Its stream sequence: the room's last as far as the sender knows (a hint for its next send).
    pub seq: u64,
    /// It had been stored already (a retry after a timeout).
    pub repeat: bool,
}

/// Appends `text` from `from` to room `room`'s conversation at `now_ms`, under `send_id` (unique
/// to this send, kept across its retries). `last` is the sequence of the room's last message as
/// the caller knows it, if it does (a wrong one costs a retry).
#[allow(clippy::too_many_arguments)]
pub async fn send<B: Bus>(
    store: &Store<B>,
    layout: &Layout,
    room: &str,
    from: chat::ChatUser,
    text: &str,
    now_ms: u64,
    send_id: &str,
    mut last: Option<u64>,
) -> Result<Sent, StoreError> {
    let subject = layout.history_subject(room, Topic::Conversation);
    let mut error = StoreError::Timeout(store.timeout());
    for _ in 0..MAX_ATTEMPTS {
        let after = match last {
            Some(seq) => seq,
            None => last_seq(store, layout, &subject).await?,
        };
        let message = chat::ChatMessage {
            message_id: message_id(after, now_ms),
            timestamp: now_ms,
            from: from.clone(),
            message: text.to_owned(),
        };
        let event = chat::RoomConversationEvent {
            session_id: from.session_id.clone().unwrap_or_default(),
            room_id: room.to_owned(),
            event_type: chat::RoomConversationEventType::Message as i32,
            chat_messages: vec![message],
        };
        let headers = vec![(header::TYPE.to_owned(), "chat.RoomConversationEvent".to_owned())];
        let expect =
            Expect { msg_id: Some(send_id.to_owned()), last_subject_seq: Some(after), rollup_subject: false };
        match store.publish(&subject, headers, event.encode_to_vec(), &expect).await {
            Ok(ack) => return Ok(Sent { seq: ack.seq, repeat: ack.duplicate }),
            // Another message came first (or ours did, before a timeout: its id finds it).
            Err(StoreError::WrongLastSequence(now)) => last = Some(now),
            Err(e @ (StoreError::InFlight(_) | StoreError::Timeout(_))) => {
                error = e;
                last = Some(after);
            }
            Err(e) => return Err(e),
        }
    }
    Err(error)
}

/// The sequence of the last message on `subject`, 0 if none.
async fn last_seq<B: Bus>(store: &Store<B>, layout: &Layout, subject: &str) -> Result<u64, StoreError> {
    match store.get(&layout.history.name, &MsgQuery::LastBySubject(subject.to_owned())).await {
        Ok(msg) => Ok(msg.seq),
        Err(StoreError::NotFound) => Ok(0),
        Err(e) => Err(e),
    }
}

/// Room `room`'s conversation as the history keeps it (its last messages, up to the stream's
/// limit per subject), oldest first.
pub async fn history<B: Bus>(
    store: &Store<B>,
    layout: &Layout,
    room: &str,
) -> Result<Vec<chat::ChatMessage>, StoreError> {
    let subject = layout.history_subject(room, Topic::Conversation);
    let last = last_seq(store, layout, &subject).await?;
    if last == 0 {
        return Ok(Vec::new());
    }
    // However many messages, the read as a whole gets a few request timeouts at most. Making the
    // consumer is tried again within it: a cluster electing a new meta leader answers nothing
    // for a few seconds.
    let deadline = store.timeout().saturating_mul(4).max(Duration::from_millis(100));
    let until = tokio::time::Instant::now() + deadline;
    let mut watch = loop {
        match store.watch(&layout.history.name, &subject, DeliverPolicy::All, None).await {
            Ok(watch) => break watch,
            Err(StoreError::Timeout(_) | StoreError::InFlight(_)) if tokio::time::Instant::now() < until => {}
            Err(e) => return Err(e),
        }
    };
    let read = tokio::time::timeout(deadline, async {
        let mut messages = Vec::new();
        while let Some(pushed) = watch.next().await {
            let msg = pushed?.msg;
            let event = chat::RoomConversationEvent::decode(msg.data.as_slice())
                .map_err(|e| StoreError::Malformed(format!("message {}: {e}", msg.seq)))?;
            messages.extend(event.chat_messages);
            if msg.seq >= last {
                return Ok(messages);
            }
        }
        Err(StoreError::Timeout(deadline))
    })
    .await
    .unwrap_or(Err(StoreError::Timeout(deadline)));
    // The consumer goes either way (and the server drops a forgotten one after a while).
    let _ = watch.stop().await;
    read
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use clientmq_bus::store::loopback::ModelBus;
    use clientmq_bus::store::model::Version;
    use clientmq_bus::{Bus as _, Subscription};

    use super::*;

    fn user(session: &str) -> chat::ChatUser {
        chat::ChatUser { session_id: Some(session.into()), ..chat::ChatUser::default() }
    }

    /// Two workers sending to one room at once, 30 messages each, on a server that checks a
    /// message id before the expected sequence (2.9) and on one that checks it after (2.15):
    /// every send is taken once, the history holds all 60 in one order with ids rising in it,
    /// and a listener hears them in that order.
    #[tokio::test]
    async fn concurrent_senders_lose_nothing_and_ids_rise_in_the_room_s_order() {
        for version in [Version::V2_9, Version::V2_10] {
            let bus = Arc::new(ModelBus::new(version));
            let layout = Layout::new("clientmq", 1, 100);
            let mut stores = Vec::new();
            for name in ["w1", "w2"] {
                let store = Store::new(bus.clone(), name, Duration::from_secs(1)).await.unwrap();
                layout.ensure(&store).await.unwrap();
                stores.push(store);
            }
            let mut heard = bus.subscribe("clientmq.conv.r1", None).await.unwrap();
            let sender = |w: usize| {
                let (store, layout) = (stores[w].clone(), layout.clone());
                async move {
                    let mut last = None;
                    for n in 0..30 {
                        let text = format!("w{w}-{n}");
                        let sent =
                            send(&store, &layout, "r1", user("s1"), &text, 7, &format!("w{w}.{n}"), last)
                                .await
                                .unwrap();
                        assert!(!sent.repeat);
                        last = Some(sent.seq);
                    }
                }
            };
            tokio::join!(sender(0), sender(1));
            let history = history(&stores[0], &layout, "r1").await.unwrap();
            let texts: Vec<&str> = history.iter().map(|m| m.message.as_str()).collect();
            assert_eq!(texts.len(), 60, "{version:?}: {texts:?}");
            for w in 0..2 {
                let mine: Vec<&str> =
                    texts.iter().copied().filter(|t| t.starts_with(&format!("w{w}-"))).collect();
                let sent: Vec<String> = (0..30).map(|n| format!("w{w}-{n}")).collect();
                assert_eq!(mine, sent, "{version:?}: each sender's messages once, in its order");
            }
            assert!(history.windows(2).all(|p| p[0].message_id < p[1].message_id), "{version:?}: ids rise");
            let mut told = Vec::new();
            while told.len() < 60 {
                let msg = tokio::time::timeout(Duration::from_secs(1), heard.next()).await.unwrap().unwrap();
                let event = chat::RoomConversationEvent::decode(msg.payload.as_slice()).unwrap();
                told.extend(event.chat_messages.into_iter().map(|m| m.message));
            }
            assert_eq!(told, texts, "{version:?}: heard in the history's order");
        }
    }

    /// A send repeated after a timeout, with a stale or a current idea of the room's last
    /// message, is stored once and says it was a repeat.
    #[tokio::test]
    async fn a_repeated_send_is_stored_once() {
        let bus = Arc::new(ModelBus::default());
        let layout = Layout::new("clientmq", 1, 3);
        let store = Store::new(bus, "w1", Duration::from_secs(1)).await.unwrap();
        layout.ensure(&store).await.unwrap();
        let first = send(&store, &layout, "r1", user("s1"), "hi", 1, "w1.1", None).await.unwrap();
        for last in [Some(0), None] {
            let again = send(&store, &layout, "r1", user("s1"), "hi", 1, "w1.1", last).await.unwrap();
            assert_eq!(again, Sent { seq: first.seq, repeat: true });
        }
        // The stream keeps the room's last three.
        for n in 2..6 {
            send(&store, &layout, "r1", user("s1"), &format!("m{n}"), 2, &format!("w1.{n}"), None)
                .await
                .unwrap();
        }
        let texts: Vec<String> =
            history(&store, &layout, "r1").await.unwrap().into_iter().map(|m| m.message).collect();
        assert_eq!(texts, ["m3", "m4", "m5"]);
        assert!(history(&store, &layout, "empty").await.unwrap().is_empty());
    }

    /// A consumer refused for the moment (as a cluster answers while it elects a leader) is
    /// asked for again within the read's deadline; any other refusal is the read's error.
    #[tokio::test]
    async fn a_read_asks_again_for_a_consumer_refused_for_the_moment() {
        let bus = Arc::new(ModelBus::default());
        let layout = Layout::new("clientmq", 1, 3);
        let store = Store::new(bus.clone(), "w1", Duration::from_secs(1)).await.unwrap();
        layout.ensure(&store).await.unwrap();
        send(&store, &layout, "r1", user("s1"), "hi", 1, "w1.1", None).await.unwrap();
        let create = format!("$JS.API.CONSUMER.CREATE.{}", layout.history.name);
        for _ in 0..3 {
            bus.refuse_next(&create, clientmq_bus::store::wire::code::DUPLICATE_IN_FLIGHT, "busy");
        }
        let texts: Vec<String> =
            history(&store, &layout, "r1").await.unwrap().into_iter().map(|m| m.message).collect();
        assert_eq!(texts, ["hi"]);
        bus.refuse_next(&create, 10_003, "no");
        assert!(matches!(
            history(&store, &layout, "r1").await,
            Err(StoreError::Api { err_code: 10_003, .. })
        ));
    }

    /// A consumer refused for the moment, again and again, is asked for only until the read's
    /// deadline (four request timeouts, at least 100 ms; real time: the retries do not wait).
    #[tokio::test]
    async fn a_read_asks_again_only_until_its_deadline() {
        let bus = Arc::new(ModelBus::default());
        let layout = Layout::new("clientmq", 1, 3);
        let store = Store::new(bus.clone(), "w1", Duration::from_millis(10)).await.unwrap();
        layout.ensure(&store).await.unwrap();
        send(&store, &layout, "r1", user("s1"), "hi", 1, "w1.1", None).await.unwrap();
        let create = format!("$JS.API.CONSUMER.CREATE.{}", layout.history.name);
        bus.refuse_always(&create, clientmq_bus::store::wire::code::DUPLICATE_IN_FLIGHT, "busy");
        let started = std::time::Instant::now();
        assert!(matches!(history(&store, &layout, "r1").await, Err(StoreError::InFlight(_))));
        assert!(started.elapsed() >= Duration::from_millis(100), "{:?}", started.elapsed());
    }
}
