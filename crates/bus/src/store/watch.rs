//! Following a stream: an ephemeral push consumer without acknowledgements, whose messages
//! come to a subscription of the store client's own. What a worker's cache is fed from: a
//! bucket's current values (`LastPerSubject`), then every change, in the stream's order.
//!
//! Messages pushed while the client is away from the bus are lost, and a server restart can
//! lose the consumer: [`Watch::next`] reports a consumer sequence that skips as
//! [`StoreError::Gap`], and the owner starts a new watch from the last stream sequence it
//! holds (and does so after every reconnect, since a lost consumer pushes nothing at all).

use super::wire::{self, ConsumerConfig, ConsumerCreateRequest, DeliverPolicy};
use super::{Store, StoreError, StoredMsg};
use crate::{Bus, BusMessage, Subscription};

/// How long the server keeps a consumer whose deliver subject nobody hears (a watcher that
/// died without deleting it).
pub const INACTIVE_THRESHOLD_NANOS: u64 = 30_000_000_000;

/// A message a consumer pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub msg: StoredMsg,
    /// Its place among what this consumer pushed, from 1.
    pub consumer_seq: u64,
}

pub struct Watch<B: Bus> {
    store: Store<B>,
    stream: String,
    consumer: String,
    sub: B::Subscription,
    /// The consumer sequence the next message must have.
    next: u64,
}

impl<B: Bus> Store<B> {
    /// Follows `stream`'s messages matching `filter` (empty: all), from where `policy` says
    /// (`start` is the first sequence of [`DeliverPolicy::ByStartSequence`]).
    pub async fn watch(
        &self,
        stream: &str,
        filter: &str,
        policy: DeliverPolicy,
        start: Option<u64>,
    ) -> Result<Watch<B>, StoreError> {
        let deliver = format!(
            "{}-watch{}",
            self.inner.inbox,
            self.inner.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let sub = self.inner.bus.subscribe(&deliver, None).await?;
        let _ = self.inner.bus.flush().await;
        let config = ConsumerConfig {
            deliver_subject: deliver,
            deliver_policy: policy,
            opt_start_seq: start,
            ack_policy: "none".into(),
            filter_subject: filter.to_owned(),
            replay_policy: "instant".into(),
            inactive_threshold: INACTIVE_THRESHOLD_NANOS,
        };
        let request = ConsumerCreateRequest { stream_name: stream.to_owned(), config };
        let body = serde_json::to_vec(&request).expect("a request serialises");
        let response = self.api(&format!("{}{stream}", wire::CONSUMER_CREATE), body).await?;
        let consumer =
            response.name.ok_or_else(|| StoreError::Malformed("a consumer without a name".into()))?;
        Ok(Watch { store: self.clone(), stream: stream.to_owned(), consumer, sub, next: 1 })
    }
}

impl<B: Bus> Watch<B> {
    /// The next message, in the stream's order; `None` once the bus client is gone. After an
    /// error the watch is of no more use.
    pub async fn next(&mut self) -> Option<Result<Pushed, StoreError>> {
        let msg = self.sub.next().await?;
        Some(self.take(msg))
    }

    fn take(&mut self, msg: BusMessage) -> Result<Pushed, StoreError> {
        let bad = || StoreError::Malformed(format!("a pushed message's reply subject {:?}", msg.reply));
        // `$JS.ACK.[<domain>.<account>.]<stream>.<consumer>.<delivered>.<stream seq>.<consumer
        // seq>.<time>.<pending>[.<token>]`: the numbers follow the consumer's name.
        let reply = msg.reply.as_deref().ok_or_else(bad)?;
        let tokens: Vec<&str> = reply.split('.').collect();
        let at = tokens.iter().position(|t| *t == self.consumer).ok_or_else(bad)?;
        let number = |i: usize| tokens.get(at + i).and_then(|t| t.parse::<u64>().ok()).ok_or_else(bad);
        let (seq, consumer_seq) = (number(2)?, number(3)?);
        if consumer_seq != self.next {
            return Err(StoreError::Gap { expected: self.next, got: consumer_seq });
        }
        self.next += 1;
        let mut headers = msg.headers;
        headers.sort_by(|a, b| a.0.cmp(&b.0));
        let stored = StoredMsg { subject: msg.subject, seq, headers, data: msg.payload };
        Ok(Pushed { msg: stored, consumer_seq })
    }

    /// Whether the server still has the consumer (`CONSUMER.INFO`): one on a node that died, or
    /// on a server that restarted, pushes nothing and says nothing.
    /// (Borrows the watch only to start: its subscription need not be shareable across threads.)
    pub fn alive(&self) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        self.call(wire::CONSUMER_INFO)
    }

    fn call(&self, kind: &str) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let (store, what) = (self.store.clone(), self.about(kind));
        async move { store.api(&what, Vec::new()).await.map(drop) }
    }

    /// The consumer API subject `kind` of this watch's consumer.
    fn about(&self, kind: &str) -> String {
        format!("{kind}{}.{}", self.stream, self.consumer)
    }

    /// Deletes the consumer (else the server does after [`INACTIVE_THRESHOLD_NANOS`]).
    pub async fn stop(self) -> Result<(), StoreError> {
        let deleting = self.call(wire::CONSUMER_DELETE);
        drop(self);
        deleting.await
    }

    /// Deletes the consumer and keeps the watch: it gets nothing more.
    pub fn delete(&self) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        self.call(wire::CONSUMER_DELETE)
    }
}

/// A watch that survives what loses messages: on a gap, once the bus client has reconnected
/// (the server may have lost the consumer, and what was pushed meanwhile is gone), or when the
/// server no longer has the consumer (asked after [`QUIET_CHECK`] without a message: the node that
/// held it died), it starts a new consumer after the last stream sequence it handed out. What it yields is each message
/// once, in the stream's order, with nothing skipped (a bucket's older values excepted: a
/// bucket keeps only the last).
pub struct Follower<B: Bus> {
    store: Store<B>,
    stream: String,
    filter: String,
    policy: DeliverPolicy,
    watch: Option<(Watch<B>, u64)>,
    /// The stream sequence of the last message handed out.
    last: Option<u64>,
}

/// How long a follower waits before trying again to start a consumer.
const RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// After this long without a message, a follower asks whether its consumer still exists.
pub const QUIET_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

impl<B: Bus> Follower<B> {
    pub fn new(store: &Store<B>, stream: &str, filter: &str, policy: DeliverPolicy) -> Follower<B> {
        let (stream, filter) = (stream.to_owned(), filter.to_owned());
        Follower { store: store.clone(), stream, filter, policy, watch: None, last: None }
    }

    /// The next message.
    pub async fn next(&mut self) -> StoredMsg {
        loop {
            let Some((watch, epoch)) = &mut self.watch else {
                self.start().await;
                continue;
            };
            let bus = self.store.inner.bus.clone();
            let seen = bus.status();
            if seen.epoch != *epoch {
                self.restart("the bus client reconnected").await;
                continue;
            }
            tokio::select! {
                biased;
                pushed = watch.next() => match pushed {
                    Some(Ok(pushed)) if self.last.is_some_and(|last| pushed.msg.seq <= last) => {}
                    Some(Ok(pushed)) => {
                        self.last = Some(pushed.msg.seq);
                        return pushed.msg;
                    }
                    Some(Err(e)) => self.restart(&e.to_string()).await,
                    None => self.restart("the watch ended").await,
                },
                _ = bus.changed(seen) => {}
                () = tokio::time::sleep(QUIET_CHECK) => {
                    if let Err(e) = watch.alive().await {
                        self.restart(&format!("its consumer is gone: {e}")).await;
                    }
                }
            }
        }
    }

    /// Starts a consumer: the first from the policy, later ones after the last message.
    async fn start(&mut self) {
        let (policy, from) = match self.last {
            None => (self.policy, None),
            Some(last) => (DeliverPolicy::ByStartSequence, Some(last + 1)),
        };
        let epoch = self.store.inner.bus.status().epoch;
        match self.store.watch(&self.stream, &self.filter, policy, from).await {
            Ok(watch) => self.watch = Some((watch, epoch)),
            Err(e) => {
                tracing::warn!(stream = %self.stream, error = %e, "cannot follow the stream; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    }

    async fn restart(&mut self, why: &str) {
        tracing::info!(stream = %self.stream, why, "following the stream again");
        if let Some((watch, _)) = self.watch.take() {
            // Best effort, not waited for: a consumer left behind is deleted by the server once
            // idle.
            tokio::spawn(async move {
                let _ = watch.stop().await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::Expect;
    use crate::store::loopback::ModelBus;
    use crate::store::tests::store;

    async fn put(store: &Store<ModelBus>, subject: &str, data: &str) {
        store.publish(subject, Vec::new(), data.into(), &Expect::default()).await.unwrap();
    }

    /// A watch hands out the stream's messages in order with their sequences, says its
    /// consumer is alive, and once stopped leaves no consumer behind.
    #[tokio::test]
    async fn a_watch_follows_in_order_and_its_stop_deletes_its_consumer() {
        let store = store().await;
        put(&store, "t.a", "1").await;
        put(&store, "t.b", "2").await;
        let mut watch = store.watch("S", "t.>", DeliverPolicy::All, None).await.unwrap();
        for (seq, data) in [(1, "1"), (2, "2")] {
            let pushed = watch.next().await.unwrap().unwrap();
            assert_eq!((pushed.msg.seq, pushed.consumer_seq, pushed.msg.data), (seq, seq, data.into()));
        }
        watch.alive().await.unwrap();
        let info = watch.about(wire::CONSUMER_INFO);
        watch.stop().await.unwrap();
        assert!(store.api(&info, Vec::new()).await.is_err(), "the consumer is gone");
    }

    /// A consumer sequence that skips is a gap (what the client missed while away), and a
    /// pushed message without the consumer's reply subject is malformed.
    #[tokio::test]
    async fn a_skipped_consumer_sequence_is_a_gap() {
        let store = store().await;
        let mut watch = store.watch("S", "t.>", DeliverPolicy::All, None).await.unwrap();
        let pushed = |consumer_seq: u64| {
            let reply = format!("$JS.ACK.S.{}.1.7.{consumer_seq}.0.0", watch.consumer);
            BusMessage::new("t.a", b"x".to_vec()).reply_to(reply)
        };
        let (first, third) = (pushed(1), pushed(3));
        assert_eq!(watch.take(first).unwrap().msg.seq, 7);
        assert_eq!(watch.take(third), Err(StoreError::Gap { expected: 2, got: 3 }));
        let stray = BusMessage::new("t.a", Vec::new()).reply_to("$JS.ACK.S.other.1.7.2.0.0");
        assert!(matches!(watch.take(stray), Err(StoreError::Malformed(_))));
    }

    /// A follower whose consumer is deleted under it (its node died) notices at its quiet
    /// check, follows again after the last message it handed out, and hands out each message
    /// once, in order.
    #[tokio::test(start_paused = true)]
    async fn a_follower_whose_consumer_is_gone_follows_again_after_its_last() {
        let store = store().await;
        put(&store, "t.a", "1").await;
        put(&store, "t.b", "2").await;
        let mut follower = Follower::new(&store, "S", "t.>", DeliverPolicy::All);
        assert_eq!(follower.next().await.seq, 1);
        assert_eq!(follower.next().await.seq, 2);
        let (watch, _) = follower.watch.as_ref().unwrap();
        watch.delete().await.unwrap();
        put(&store, "t.a", "3").await;
        let next = tokio::time::timeout(QUIET_CHECK * 3, follower.next()).await.expect("followed again");
        assert_eq!((next.seq, next.data), (3, b"3".to_vec()));
        put(&store, "t.b", "4").await;
        let next = tokio::time::timeout(Duration::from_secs(1), follower.next()).await.unwrap();
        assert_eq!(next.seq, 4);
    }
}
