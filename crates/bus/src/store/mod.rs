//! The store: the subset of NATS JetStream that clientmq keeps state in, spoken over the
//! [`Bus`] seam so the same client runs on a real NATS server and on the simulated one.
//!
//! The subset is small on purpose, and [`model::StoreModel`] implements exactly it:
//! - streams created with the settings of [`wire::StreamConfig`] (`$JS.API.STREAM.CREATE`),
//!   their state (`STREAM.INFO`) and whether JetStream answers at all (`$JS.API.INFO`);
//! - a publish to a stream's subject with a reply subject, acknowledged with the message's
//!   sequence, with the publish headers JetStream acts on: `Nats-Msg-Id` (deduplicated within
//!   the stream's window: the first message's sequence comes back, marked duplicate),
//!   `Nats-Expected-Last-Subject-Sequence` (refused unless the subject's last message has that
//!   sequence, 0 for none: the optimistic concurrency every decision relies on) and
//!   `Nats-Rollup: sub` (the message replaces its subject's others);
//! - a message read back by sequence, as the last of a subject, or as the first of a subject
//!   from a sequence on (`STREAM.MSG.GET`, in nats-server since 2.2).
//!
//! [`kv::Bucket`] lays key-value buckets over that the way JetStream's own clients do (stream
//! `KV_<bucket>`, subject `$KV.<bucket>.<key>`, the revision is the sequence), so a bucket
//! written here reads the same from the `nats` tool. A differential test
//! (`crates/bus/tests/store_model.rs`) runs random sequences of these operations on a real
//! nats-server and on the model and requires the same answers.
//!
//! Nothing here retries: a [`StoreError::WrongLastSequence`] says what the subject's last
//! sequence is now, and deciding again is the caller's business.

pub mod kv;
pub mod loopback;
pub mod model;
pub mod watch;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::{Bus, BusError, BusMessage, NO_RESPONDERS, Subscription};
use wire::{API, ApiError, ApiResponse, MsgGetRequest, PubAckBody, StreamConfig, StreamState, code, header};

/// How long a store request waits for its answer unless told otherwise: long enough for a
/// clustered stream to elect a leader after losing one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a store operation did not happen (or may not have: see [`StoreError::Timeout`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The expected last sequence did not hold: the subject's last message has this sequence
    /// now (0: it has none). Nothing was written.
    #[error("wrong last sequence: the subject's last is {0}")]
    WrongLastSequence(u64),
    /// No message matched a read.
    #[error("no message found")]
    NotFound,
    #[error("stream not found")]
    NoStream,
    /// Nobody answered the subject: JetStream is off, or no stream captures a published subject.
    #[error("no responders: JetStream is not enabled, or no stream takes the subject")]
    NoResponders,
    /// Any other refusal, as JetStream worded it.
    #[error("JetStream error {err_code} ({code}): {description}")]
    Api { code: u16, err_code: u32, description: String },
    /// No answer in time. A write may or may not have happened: read before deciding again.
    #[error("no answer from JetStream within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("malformed answer from JetStream: {0}")]
    Malformed(String),
    /// A clustered stream could not decide yet: a write to the subject, or one with the same
    /// message id, is still being replicated (JetStream's 10164 and 10158). Nothing was
    /// written: read and decide again, or send the same message again.
    #[error("a write is still being replicated: {0}")]
    InFlight(String),
    /// A watch missed messages (pushed while this client was away): start a new one.
    #[error("a watch expected message {expected} of its consumer and got {got}")]
    Gap { expected: u64, got: u64 },
}

impl StoreError {
    fn from_api(e: ApiError) -> StoreError {
        let last = e.description.strip_prefix("wrong last sequence: ").and_then(|n| n.trim().parse().ok());
        match (e.err_code, last) {
            (code::WRONG_LAST_SEQUENCE, Some(last)) => StoreError::WrongLastSequence(last),
            (code::WRONG_LAST_SEQUENCE_UNKNOWN | code::DUPLICATE_IN_FLIGHT, _) => {
                StoreError::InFlight(e.description)
            }
            (code::NO_MESSAGE_FOUND, _) => StoreError::NotFound,
            (code::STREAM_NOT_FOUND, _) => StoreError::NoStream,
            _ => StoreError::Api { code: e.code, err_code: e.err_code, description: e.description },
        }
    }
}

/// A message as a stream keeps it, its headers sorted by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMsg {
    pub subject: String,
    pub seq: u64,
    pub headers: Vec<(String, String)>,
    pub data: Vec<u8>,
}

impl StoredMsg {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A publish taken by a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubAck {
    pub stream: String,
    pub seq: u64,
    /// The message id was seen within the window: nothing new was stored, `seq` is the first's.
    pub duplicate: bool,
}

/// The conditions a publish carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expect {
    /// `Nats-Msg-Id`: a repeat within the duplicate window is acknowledged, not stored.
    pub msg_id: Option<String>,
    /// `Nats-Expected-Last-Subject-Sequence`: refused unless the subject's last is this.
    pub last_subject_seq: Option<u64>,
    /// `Nats-Rollup: sub`: this message replaces every other of its subject.
    pub rollup_subject: bool,
}

/// Which message a read wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MsgQuery {
    Seq(u64),
    LastBySubject(String),
    /// The first message of the subject (wildcards allowed) at or after the sequence.
    NextBySubject {
        from: u64,
        subject: String,
    },
}

/// A store client on a bus: requests go out with reply subjects under its own inbox, and one
/// task hands each answer to the request waiting for it. Cheap to clone.
pub struct Store<B: Bus> {
    inner: Arc<Inner<B>>,
}

impl<B: Bus> Clone for Store<B> {
    fn clone(&self) -> Self {
        Store { inner: self.inner.clone() }
    }
}

struct Inner<B: Bus> {
    bus: Arc<B>,
    inbox: String,
    next: AtomicU64,
    waiting: Arc<Mutex<BTreeMap<u64, oneshot::Sender<BusMessage>>>>,
    timeout: Duration,
    dispatch: tokio::task::JoinHandle<()>,
}

impl<B: Bus> Drop for Inner<B> {
    fn drop(&mut self) {
        self.dispatch.abort();
    }
}

impl<B: Bus> Store<B> {
    /// A client whose answers come to `_INBOX.<inbox>.<n>`: `inbox` must be unique on the bus
    /// (a process name and a random part). Its subscription is made here; call within a tokio
    /// runtime.
    pub async fn new(bus: Arc<B>, inbox: &str, timeout: Duration) -> Result<Store<B>, StoreError> {
        let inbox = format!("_INBOX.{inbox}");
        let mut sub = bus.subscribe(&format!("{inbox}.*"), None).await?;
        // Once flushed, the server has the subscription before any request of ours: the first
        // answer is not lost. (Disconnected, it is restored before anything else is sent.)
        let _ = bus.flush().await;
        let waiting: Arc<Mutex<BTreeMap<u64, oneshot::Sender<BusMessage>>>> = Arc::default();
        let handing = waiting.clone();
        let dispatch = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let token = msg.subject.rsplit('.').next().and_then(|t| t.parse::<u64>().ok());
                let waiter =
                    token.and_then(|t| handing.lock().unwrap_or_else(PoisonError::into_inner).remove(&t));
                if let Some(waiter) = waiter {
                    let _ = waiter.send(msg);
                }
            }
        });
        let inner = Inner { bus, inbox, next: AtomicU64::new(1), waiting, timeout, dispatch };
        Ok(Store { inner: Arc::new(inner) })
    }

    /// Sends `msg` with a reply subject of ours and waits for the answer.
    async fn request(&self, mut msg: BusMessage) -> Result<BusMessage, StoreError> {
        let inner = &self.inner;
        let token = inner.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let forget = || inner.waiting.lock().unwrap_or_else(PoisonError::into_inner).remove(&token);
        inner.waiting.lock().unwrap_or_else(PoisonError::into_inner).insert(token, tx);
        msg.reply = Some(format!("{}.{token}", inner.inbox));
        if let Err(e) = inner.bus.publish(msg).await {
            forget();
            return Err(e.into());
        }
        match tokio::time::timeout(inner.timeout, rx).await {
            Ok(Ok(answer)) if answer.status == Some(NO_RESPONDERS) => Err(StoreError::NoResponders),
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(StoreError::Bus(BusError::Disconnected)),
            Err(_) => {
                forget();
                Err(StoreError::Timeout(inner.timeout))
            }
        }
    }

    async fn api(&self, what: &str, body: Vec<u8>) -> Result<ApiResponse, StoreError> {
        let answer = self.request(BusMessage::new(format!("{API}{what}"), body)).await?;
        let response: ApiResponse =
            serde_json::from_slice(&answer.payload).map_err(|e| StoreError::Malformed(e.to_string()))?;
        match response.error {
            Some(e) => Err(StoreError::from_api(e)),
            None => Ok(response),
        }
    }

    /// How long a request waits for its answer.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Whether JetStream answers for this account (`$JS.API.INFO`).
    pub async fn check(&self) -> Result<(), StoreError> {
        self.api(wire::INFO, Vec::new()).await.map(drop)
    }

    /// Creates the stream, or finds it there with the same settings; a stream of that name with
    /// other settings is an [`StoreError::Api`] (`err_code` 10058). Returns the settings as the
    /// server holds them: a server that does not know a setting leaves it out.
    pub async fn create_stream(&self, config: &StreamConfig) -> Result<serde_json::Value, StoreError> {
        let body = serde_json::to_vec(config).expect("a stream config serialises");
        let response = self.api(&format!("{}{}", wire::STREAM_CREATE, config.name), body).await?;
        Ok(response.config.unwrap_or_default())
    }

    pub async fn stream_state(&self, stream: &str) -> Result<StreamState, StoreError> {
        let response = self.api(&format!("{}{stream}", wire::STREAM_INFO), Vec::new()).await?;
        response.state.ok_or_else(|| StoreError::Malformed("stream info without state".into()))
    }

    /// The name of the server leading a clustered stream (`None` for a stream without one).
    pub async fn stream_leader(&self, stream: &str) -> Result<Option<String>, StoreError> {
        let response = self.api(&format!("{}{stream}", wire::STREAM_INFO), Vec::new()).await?;
        let leader = response.cluster.as_ref().and_then(|c| c.get("leader")).and_then(|l| l.as_str());
        Ok(leader.map(str::to_owned))
    }

    /// Publishes to a stream's subject and waits for the stream to take it.
    pub async fn publish(
        &self,
        subject: &str,
        mut headers: Vec<(String, String)>,
        data: Vec<u8>,
        expect: &Expect,
    ) -> Result<PubAck, StoreError> {
        if let Some(id) = &expect.msg_id {
            headers.push((header::MSG_ID.into(), id.clone()));
        }
        if let Some(seq) = expect.last_subject_seq {
            headers.push((header::EXPECTED_LAST_SUBJECT_SEQUENCE.into(), seq.to_string()));
        }
        if expect.rollup_subject {
            headers.push((header::ROLLUP.into(), "sub".into()));
        }
        let msg = BusMessage { subject: subject.to_owned(), headers, payload: data, ..BusMessage::default() };
        let answer = self.request(msg).await?;
        let ack: PubAckBody =
            serde_json::from_slice(&answer.payload).map_err(|e| StoreError::Malformed(e.to_string()))?;
        match ack.error {
            Some(e) => Err(StoreError::from_api(e)),
            None => Ok(PubAck { stream: ack.stream, seq: ack.seq, duplicate: ack.duplicate }),
        }
    }

    /// Reads one message of a stream.
    pub async fn get(&self, stream: &str, query: &MsgQuery) -> Result<StoredMsg, StoreError> {
        let request = match query {
            MsgQuery::Seq(seq) => MsgGetRequest { seq: Some(*seq), ..MsgGetRequest::default() },
            MsgQuery::LastBySubject(s) => {
                MsgGetRequest { last_by_subj: Some(s.clone()), ..MsgGetRequest::default() }
            }
            MsgQuery::NextBySubject { from, subject } => MsgGetRequest {
                seq: Some(*from),
                next_by_subj: Some(subject.clone()),
                ..MsgGetRequest::default()
            },
        };
        let body = serde_json::to_vec(&request).expect("a request serialises");
        let response = self.api(&format!("{}{stream}", wire::STREAM_MSG_GET), body).await?;
        let raw = response.message.ok_or_else(|| StoreError::Malformed("no message in the answer".into()))?;
        let bad = |what: &str| StoreError::Malformed(format!("message {}: {what}", raw.seq));
        let mut headers = match &raw.hdrs {
            Some(h) => {
                wire::unb64(h).and_then(|b| wire::parse_header_block(&b)).ok_or_else(|| bad("headers"))?
            }
            None => Vec::new(),
        };
        // A NATS client keeps a name's values in order but not the order of names.
        headers.sort_by(|a, b| a.0.cmp(&b.0));
        let data = match &raw.data {
            Some(d) => wire::unb64(d).ok_or_else(|| bad("data"))?,
            None => Vec::new(),
        };
        Ok(StoredMsg { subject: raw.subject, seq: raw.seq, headers, data })
    }
}

#[cfg(test)]
mod tests {
    use super::loopback::ModelBus;
    use super::*;
    use wire::Storage;

    /// A store on the model with stream `S` on `t.>`.
    pub(in crate::store) async fn store() -> Store<ModelBus> {
        let store = Store::new(Arc::new(ModelBus::default()), "w", Duration::from_secs(1)).await.unwrap();
        let config = StreamConfig {
            name: "S".into(),
            subjects: vec!["t.>".into()],
            max_msgs_per_subject: -1,
            max_msg_size: -1,
            duplicate_window: 120_000_000_000,
            storage: Storage::Memory,
            num_replicas: 1,
            allow_rollup_hdrs: false,
            deny_delete: false,
            allow_direct: true,
            republish: None,
        };
        store.create_stream(&config).await.unwrap();
        store
    }

    /// Reads by sequence, by a subject's next from a sequence and by its last, and the
    /// stream's state, as the model answers them (the differential test holds the model to
    /// nats-server).
    #[tokio::test]
    async fn messages_are_read_back_by_sequence_and_by_subject() {
        let store = store().await;
        store.check().await.unwrap();
        for (subject, data) in [("t.a", "1"), ("t.b", "2"), ("t.a", "3"), ("t.b", "4")] {
            store.publish(subject, Vec::new(), data.into(), &Expect::default()).await.unwrap();
        }
        let read = async |query: MsgQuery| {
            let msg = store.get("S", &query).await.unwrap();
            (msg.seq, msg.subject, String::from_utf8(msg.data).unwrap())
        };
        assert_eq!(read(MsgQuery::Seq(2)).await, (2, "t.b".into(), "2".into()));
        let next = MsgQuery::NextBySubject { from: 2, subject: "t.a".into() };
        assert_eq!(read(next).await, (3, "t.a".into(), "3".into()));
        assert_eq!(read(MsgQuery::LastBySubject("t.b".into())).await, (4, "t.b".into(), "4".into()));
        let past = store.get("S", &MsgQuery::NextBySubject { from: 4, subject: "t.a".into() }).await;
        assert_eq!(past, Err(StoreError::NotFound));
        let state = store.stream_state("S").await.unwrap();
        assert_eq!((state.messages, state.first_seq, state.last_seq), (4, 1, 4));
        assert_eq!(store.stream_state("T").await, Err(StoreError::NoStream));
        // A subject no stream takes: nobody answers the publish.
        let nobody = store.publish("u.a", Vec::new(), Vec::new(), &Expect::default()).await;
        assert_eq!(nobody, Err(StoreError::NoResponders));
    }

    /// A store dropped stops its task that hands answers out, though the bus (whose end would
    /// end that task too) lives on.
    #[tokio::test(flavor = "current_thread")]
    async fn a_dropped_store_leaves_no_task_behind() {
        let tasks = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
        let before = tasks();
        let bus = Arc::new(ModelBus::default());
        let store = Store::new(bus.clone(), "w", Duration::from_secs(1)).await.unwrap();
        assert_eq!(tasks(), before + 1, "its dispatch task");
        drop(store);
        tokio::task::yield_now().await;
        assert_eq!(tasks(), before);
        drop(bus);
    }

    /// A server whose JetStream does not answer for the account fails the check.
    #[tokio::test]
    async fn the_check_fails_where_jetstream_refuses() {
        let bus = Arc::new(ModelBus::default());
        let store = Store::new(bus.clone(), "w", Duration::from_secs(1)).await.unwrap();
        store.check().await.unwrap();
        bus.refuse_next("$JS.API.INFO", 10_039, "jetstream not enabled for account");
        assert!(matches!(store.check().await, Err(StoreError::Api { err_code: 10_039, .. })));
    }

    fn refused(err_code: u32, description: &str) -> StoreError {
        StoreError::from_api(ApiError { code: 400, err_code, description: description.to_owned() })
    }

    /// Each refusal a caller acts on has a variant of its own; the rest keep JetStream's words.
    #[test]
    fn jetstream_refusals_map_to_what_a_caller_acts_on() {
        let wrong = refused(code::WRONG_LAST_SEQUENCE, "wrong last sequence: 7");
        assert_eq!(wrong, StoreError::WrongLastSequence(7));
        let unreadable = refused(code::WRONG_LAST_SEQUENCE, "wrong last sequence");
        assert!(matches!(unreadable, StoreError::Api { err_code: code::WRONG_LAST_SEQUENCE, .. }));
        for in_flight in [code::WRONG_LAST_SEQUENCE_UNKNOWN, code::DUPLICATE_IN_FLIGHT] {
            assert_eq!(refused(in_flight, "busy"), StoreError::InFlight("busy".into()));
        }
        assert_eq!(refused(code::NO_MESSAGE_FOUND, "no message found"), StoreError::NotFound);
        assert_eq!(refused(code::STREAM_NOT_FOUND, "stream not found"), StoreError::NoStream);
        let other = refused(code::MESSAGE_TOO_LARGE, "message size exceeds maximum allowed");
        let words = StoreError::Api {
            code: 400,
            err_code: code::MESSAGE_TOO_LARGE,
            description: "message size exceeds maximum allowed".into(),
        };
        assert_eq!(other, words);
    }
}
