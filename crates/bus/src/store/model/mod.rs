//! The store's subset of JetStream in memory: what the simulated bus answers with, and what the
//! differential test holds to a real nats-server (`crates/bus/tests/store_model.rs`). It answers
//! the same requests with the same JSON, minus what the subset leaves out (timestamps are the
//! caller's clock; stream info carries only the message counts).
//!
//! The checks of a publish run in the order of the server version it models ([`Version`]).
//! Then the message is stored, a rollup removes its subject's others, and the per-subject limit
//! removes the oldest.

mod consumer;

use std::collections::BTreeMap;

use super::wire::{
    self, API, ApiError, ApiResponse, MsgGetRequest, PubAckBody, RawMessage, StreamConfig, StreamState, code,
    header,
};
use clientmq_core::calendar::rfc3339_nanos;

use crate::BusMessage;
use crate::subject::{subject_matches, valid_subject};

/// What the model made of a message published on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not an API subject nor a stream's: the bus routes it as any other.
    Ignored,
    /// Taken (stored or refused); the bus sends these, in order. For a publish: the stored
    /// message's republished copy, its copies to consumers, the answer. For an API request: the
    /// answer, then what it set off (a new consumer's first messages).
    Taken(Vec<Delivery>),
}

/// A message the server sends, and the subject it is routed by: its own, except for a message
/// pushed by a consumer, which goes to the consumer's deliver subject under its stored subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub to: String,
    pub msg: BusMessage,
}

impl Delivery {
    fn of(msg: BusMessage) -> Delivery {
        Delivery { to: msg.subject.clone(), msg }
    }
}

/// Which nats-server the model behaves as, where servers differ in what the subset shows: the
/// order of a publish's checks (which refusal a publish failing two gets, and whether a repeated
/// message id is acknowledged despite a wrong expected sequence) and a republished copy's time
/// stamp.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Version {
    /// 2.10 and later, one server (verified on 2.15.1, the pinned test server): size limit,
    /// expected last subject sequence, message id, rollup; copies carry `Nats-Time-Stamp`.
    #[default]
    V2_10,
    /// 2.10 and later, a stream with replicas in a cluster (verified on 2.15.1): its leader
    /// checks size limit, message id, expected last subject sequence, rollup.
    V2_10Clustered,
    /// 2.9, one server (Debian's 2.9.10): message id, expected last subject sequence, rollup,
    /// size limit; copies carry no time stamp; a consumer's start sequence past the stream's end
    /// is moved back to just after it, and its filter must lie within the stream's subjects.
    V2_9,
    /// 2.9, a stream with replicas in a cluster (verified on 2.9.10): as [`Version::V2_9`], but
    /// the leader checks the size limit and a non-zero expected sequence before proposing, the
    /// rest (message id, an expected 0, rollup) on applying.
    V2_9Clustered,
}

impl Version {
    fn is_2_9(self) -> bool {
        matches!(self, Version::V2_9 | Version::V2_9Clustered)
    }

    /// The behaviour of nats-server `version`, alone or clustered.
    pub fn of(version: (u32, u32, u32), clustered: bool) -> Version {
        match (version < (2, 10, 0), clustered) {
            (true, false) => Version::V2_9,
            (true, true) => Version::V2_9Clustered,
            (false, false) => Version::V2_10,
            (false, true) => Version::V2_10Clustered,
        }
    }
}

#[derive(Debug, Default)]
pub struct StoreModel {
    streams: BTreeMap<String, Stream>,
    version: Version,
    /// Consumers made so far: names ephemeral consumers.
    consumers_made: u64,
    /// Every message stored since the last [`StoreModel::take_journal`], when asked to keep them
    /// (what a simulator checks the truth against).
    journal: Option<Vec<crate::store::StoredMsg>>,
    /// How long a write stays in process after it is taken (nanoseconds): see
    /// [`StoreModel::set_flight`].
    flight: u64,
}

#[derive(Debug)]
struct Stream {
    config: StreamConfig,
    msgs: BTreeMap<u64, Stored>,
    last_seq: u64,
    /// Message ids seen, with the sequence they were stored at and when (nanoseconds).
    ids: BTreeMap<String, (u64, u64)>,
    /// Subjects and message ids with a write in process, until when (nanoseconds; see
    /// [`StoreModel::set_flight`]).
    in_process: BTreeMap<String, u64>,
    ids_in_process: BTreeMap<String, u64>,
    consumers: BTreeMap<String, consumer::Consumer>,
}

#[derive(Debug, Clone)]
struct Stored {
    subject: String,
    headers: Vec<(String, String)>,
    data: Vec<u8>,
    at: u64,
}

fn api_error(code: u16, err_code: u32, description: impl Into<String>) -> ApiError {
    ApiError { code, err_code, description: description.into() }
}

impl StoreModel {
    pub fn new(version: Version) -> StoreModel {
        StoreModel { version, ..StoreModel::default() }
    }

    /// A clustered 2.10 stream's leader keeps each write in process while it replicates it
    /// (`nanos` here, from when the model takes it; 0, the default: never). Meanwhile a write
    /// to the same subject that expects its last sequence is refused (10164, "wrong last
    /// sequence") and a message with the same id too (10158, "duplicate message id is in
    /// process"), and neither is stored. A real cluster does so to the second of two writes
    /// sent back to back (`crates/bus/tests/store_model.rs` holds the model to it); the model
    /// takes the first at once, so its window stands for the replication a real first write
    /// is still in. Other versions ignore it: 2.9 was not verified.
    pub fn set_flight(&mut self, nanos: u64) {
        self.flight = nanos;
    }

    /// Starts keeping every message stored, for [`StoreModel::take_journal`].
    pub fn keep_journal(&mut self) {
        self.journal.get_or_insert_with(Vec::new);
    }

    /// The messages stored since the last call, in the order they were stored.
    pub fn take_journal(&mut self) -> Vec<crate::store::StoredMsg> {
        self.journal.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Takes `msg` as the server would at `now` (nanoseconds on the caller's clock).
    pub fn handle(&mut self, msg: &BusMessage, now: u64) -> Outcome {
        let mut send = Vec::new();
        let body = if let Some(what) = msg.subject.strip_prefix(API) {
            let response = self.api(what, &msg.payload, &mut send);
            serde_json::to_vec(&response).expect("an answer serialises")
        } else if let Some(name) = self.stream_of(&msg.subject) {
            let stream = self.streams.get_mut(&name).expect("found above");
            let flight = if self.version == Version::V2_10Clustered { self.flight } else { 0 };
            let (ack, republished) = stream.publish(msg, now, self.version, flight);
            send.extend(republished.map(Delivery::of));
            if ack.error.is_none() && !ack.duplicate {
                send.extend(stream.push_stored(ack.seq));
                if let Some(journal) = &mut self.journal {
                    let (subject, headers, data) =
                        (msg.subject.clone(), msg.headers.clone(), msg.payload.clone());
                    journal.push(crate::store::StoredMsg { subject, seq: ack.seq, headers, data });
                }
            }
            serde_json::to_vec(&ack).expect("an ack serialises")
        } else {
            return Outcome::Ignored;
        };
        if let Some(reply) = &msg.reply {
            // An API answer goes before what the request set off (a new consumer's messages);
            // a publish's after its stream's copies, as nats-server sends them.
            let at = if msg.subject.starts_with(API) { 0 } else { send.len() };
            send.insert(at, Delivery::of(BusMessage::new(reply.clone(), body)));
        }
        Outcome::Taken(send)
    }

    /// The stream whose subjects take `subject`.
    fn stream_of(&self, subject: &str) -> Option<String> {
        self.streams
            .values()
            .find(|s| s.config.subjects.iter().any(|p| subject_matches(p, subject)))
            .map(|s| s.config.name.clone())
    }

    /// Answers an API request; what it makes the server send besides goes to `send`.
    fn api(&mut self, what: &str, body: &[u8], send: &mut Vec<Delivery>) -> ApiResponse {
        let (kind, result) = if what == wire::INFO {
            ("account_info_response", Ok(ApiResponse::default()))
        } else if let Some(name) = what.strip_prefix(wire::STREAM_CREATE) {
            ("stream_create_response", self.create(name, body))
        } else if let Some(name) = what.strip_prefix(wire::STREAM_INFO) {
            ("stream_info_response", self.info(name))
        } else if let Some(name) = what.strip_prefix(wire::STREAM_MSG_GET) {
            ("stream_msg_get_response", self.msg_get(name, body))
        } else if let Some(name) = what.strip_prefix(wire::CONSUMER_CREATE) {
            ("consumer_create_response", self.create_consumer(name, body, send))
        } else if let Some(names) = what.strip_prefix(wire::CONSUMER_INFO) {
            ("consumer_info_response", self.consumer_info(names))
        } else if let Some(names) = what.strip_prefix(wire::CONSUMER_DELETE) {
            ("consumer_delete_response", self.delete_consumer(names))
        } else {
            ("error_response", Err(api_error(400, code::BAD_REQUEST, "bad request")))
        };
        let mut response =
            result.unwrap_or_else(|e| ApiResponse { error: Some(e), ..ApiResponse::default() });
        response.kind = format!("io.nats.jetstream.api.v1.{kind}");
        response
    }

    fn stream(&self, name: &str) -> Result<&Stream, ApiError> {
        self.streams.get(name).ok_or_else(|| api_error(404, code::STREAM_NOT_FOUND, "stream not found"))
    }

    fn stream_mut(&mut self, name: &str) -> Result<&mut Stream, ApiError> {
        self.streams.get_mut(name).ok_or_else(|| api_error(404, code::STREAM_NOT_FOUND, "stream not found"))
    }

    fn create(&mut self, name: &str, body: &[u8]) -> Result<ApiResponse, ApiError> {
        let config: StreamConfig =
            serde_json::from_slice(body).map_err(|_| api_error(400, code::BAD_REQUEST, "bad request"))?;
        let well_formed = config.name == name
            && !name.is_empty()
            && !name.contains(['.', '*', '>', ' '])
            && !config.subjects.is_empty()
            && config.subjects.iter().all(|s| valid_subject(s, true));
        if !well_formed {
            return Err(api_error(400, code::BAD_REQUEST, "bad request"));
        }
        if let Some(existing) = self.streams.get(name) {
            if existing.config != config {
                return Err(api_error(
                    400,
                    code::STREAM_NAME_IN_USE,
                    "stream name already in use with a different configuration",
                ));
            }
            return self.info(name);
        }
        if let Some(republish) = &config.republish {
            // As nats-server: the source must be among the stream's subjects, the destination
            // outside them (a cycle), and its wildcards must name the source's.
            let valid = config.subjects.iter().any(|s| crate::subject::overlap(&republish.src, s))
                && !config.subjects.iter().any(|s| crate::subject::overlap(&republish.dest, s))
                && crate::subject::transform_valid(&republish.src, &republish.dest);
            if !valid {
                return Err(api_error(
                    400,
                    code::STREAM_INVALID_CONFIG,
                    "stream configuration for republish is not valid",
                ));
            }
        }
        let overlaps = self.streams.values().any(|s| {
            s.config.subjects.iter().any(|a| config.subjects.iter().any(|b| crate::subject::overlap(a, b)))
        });
        if overlaps {
            return Err(api_error(400, code::SUBJECTS_OVERLAP, "subjects overlap with an existing stream"));
        }
        let stream = Stream {
            config,
            msgs: BTreeMap::new(),
            last_seq: 0,
            ids: BTreeMap::new(),
            in_process: BTreeMap::new(),
            ids_in_process: BTreeMap::new(),
            consumers: BTreeMap::new(),
        };
        self.streams.insert(name.to_owned(), stream);
        self.info(name)
    }

    fn info(&self, name: &str) -> Result<ApiResponse, ApiError> {
        let stream = self.stream(name)?;
        let state = StreamState {
            messages: stream.msgs.len() as u64,
            // An empty stream starts after its last message, or at 0 if it never had one.
            first_seq: stream
                .msgs
                .keys()
                .next()
                .copied()
                .unwrap_or(stream.last_seq + u64::from(stream.last_seq > 0)),
            last_seq: stream.last_seq,
        };
        let config = serde_json::to_value(&stream.config).expect("a config serialises");
        Ok(ApiResponse { config: Some(config), state: Some(state), ..ApiResponse::default() })
    }

    fn msg_get(&self, name: &str, body: &[u8]) -> Result<ApiResponse, ApiError> {
        let stream = self.stream(name)?;
        let request: MsgGetRequest =
            serde_json::from_slice(body).map_err(|_| api_error(400, code::BAD_REQUEST, "bad request"))?;
        let found = match request {
            MsgGetRequest { last_by_subj: Some(s), seq: None, next_by_subj: None } => {
                stream.msgs.iter().rev().find(|(_, m)| subject_matches(&s, &m.subject))
            }
            MsgGetRequest { next_by_subj: Some(s), seq, last_by_subj: None } => {
                stream.msgs.range(seq.unwrap_or(0)..).find(|(_, m)| subject_matches(&s, &m.subject))
            }
            MsgGetRequest { seq: Some(seq), last_by_subj: None, next_by_subj: None } if seq > 0 => {
                stream.msgs.get_key_value(&seq)
            }
            _ => return Err(api_error(400, code::BAD_REQUEST, "bad request")),
        };
        let (seq, m) = found.ok_or_else(|| api_error(404, code::NO_MESSAGE_FOUND, "no message found"))?;
        let message = RawMessage {
            subject: m.subject.clone(),
            seq: *seq,
            hdrs: (!m.headers.is_empty()).then(|| wire::b64(&wire::header_block(&m.headers))),
            data: (!m.data.is_empty()).then(|| wire::b64(&m.data)),
            time: rfc3339_nanos(m.at),
        };
        Ok(ApiResponse { message: Some(message), ..ApiResponse::default() })
    }
}

#[derive(Debug, Clone, Copy)]
enum Check {
    Size,
    Expected,
    /// The expected last subject sequence, checked here only when it is not 0 (or only when it
    /// is): a clustered 2.9 stream checks the first before proposing, the second on applying.
    ExpectedNonZero,
    ExpectedZero,
    Id,
    Rollup,
}

impl Stream {
    /// The answer to a publish that `check` stops at `now`: a refusal, or a repeated id's
    /// acknowledgement.
    fn check(&self, check: Check, msg: &BusMessage, msg_id: Option<&str>, now: u64) -> Option<PubAckBody> {
        let refused = |e: ApiError| PubAckBody {
            error: Some(e),
            stream: self.config.name.clone(),
            ..PubAckBody::default()
        };
        match check {
            Check::Size => {
                // JetStream counts the header block (as a client writes it) with the payload.
                let headers = if msg.headers.is_empty() { 0 } else { wire::header_block(&msg.headers).len() };
                let limit = usize::try_from(self.config.max_msg_size).ok()?;
                (headers + msg.payload.len() > limit).then(|| {
                    refused(api_error(400, code::MESSAGE_TOO_LARGE, "message size exceeds maximum allowed"))
                })
            }
            Check::Expected | Check::ExpectedNonZero | Check::ExpectedZero => {
                let expected = msg.header(header::EXPECTED_LAST_SUBJECT_SEQUENCE)?.parse::<u64>().ok()?;
                if self.in_process.get(&msg.subject).is_some_and(|until| now < *until) {
                    return Some(refused(api_error(
                        400,
                        code::WRONG_LAST_SEQUENCE_UNKNOWN,
                        "wrong last sequence",
                    )));
                }
                match check {
                    Check::ExpectedNonZero if expected == 0 => return None,
                    Check::ExpectedZero if expected != 0 => return None,
                    _ => {}
                }
                let last =
                    self.msgs.iter().rev().find(|(_, m)| m.subject == msg.subject).map_or(0, |(seq, _)| *seq);
                (expected != last).then(|| {
                    refused(api_error(400, code::WRONG_LAST_SEQUENCE, format!("wrong last sequence: {last}")))
                })
            }
            Check::Id => {
                let (seq, _) = self.ids.get(msg_id?)?;
                if self.ids_in_process.get(msg_id?).is_some_and(|until| now < *until) {
                    return Some(refused(api_error(
                        409,
                        code::DUPLICATE_IN_FLIGHT,
                        "duplicate message id is in process",
                    )));
                }
                Some(PubAckBody {
                    stream: self.config.name.clone(),
                    seq: *seq,
                    duplicate: true,
                    ..PubAckBody::default()
                })
            }
            Check::Rollup => (msg.header(header::ROLLUP).is_some() && !self.config.allow_rollup_hdrs)
                .then(|| refused(api_error(500, code::ROLLUP_FAILED, "rollup not permitted"))),
        }
    }

    /// Stores `msg` or refuses it; the acknowledgement, and the copy to republish if any.
    fn publish(
        &mut self,
        msg: &BusMessage,
        now: u64,
        version: Version,
        flight: u64,
    ) -> (PubAckBody, Option<BusMessage>) {
        let name = self.config.name.clone();
        let window = self.config.duplicate_window;
        self.ids.retain(|_, (_, at)| now.saturating_sub(*at) < window);
        self.in_process.retain(|_, until| now < *until);
        self.ids_in_process.retain(|_, until| now < *until);
        let msg_id = msg.header(header::MSG_ID).filter(|id| !id.is_empty());
        let order: &[Check] = match version {
            Version::V2_10 => &[Check::Size, Check::Expected, Check::Id, Check::Rollup],
            Version::V2_10Clustered => &[Check::Size, Check::Id, Check::Expected, Check::Rollup],
            Version::V2_9 => &[Check::Id, Check::Expected, Check::Rollup, Check::Size],
            Version::V2_9Clustered => {
                &[Check::Size, Check::ExpectedNonZero, Check::Id, Check::ExpectedZero, Check::Rollup]
            }
        };
        for &check in order {
            if let Some(answer) = self.check(check, msg, msg_id, now) {
                return (answer, None);
            }
        }
        let rollup = msg.header(header::ROLLUP);
        let subject_last =
            self.msgs.iter().rev().find(|(_, m)| m.subject == msg.subject).map_or(0, |(s, _)| *s);
        self.last_seq += 1;
        let seq = self.last_seq;
        let subject = msg.subject.clone();
        match rollup {
            Some("sub") => self.msgs.retain(|_, m| m.subject != subject),
            Some("all") => self.msgs.clear(),
            _ => {}
        }
        self.msgs.insert(
            seq,
            Stored { subject, headers: msg.headers.clone(), data: msg.payload.clone(), at: now },
        );
        if self.config.max_msgs_per_subject > 0 {
            let same: Vec<u64> =
                self.msgs.iter().filter(|(_, m)| m.subject == msg.subject).map(|(s, _)| *s).collect();
            let excess = same.len().saturating_sub(self.config.max_msgs_per_subject as usize);
            for old in &same[..excess] {
                self.msgs.remove(old);
            }
        }
        if let Some(id) = msg_id {
            self.ids.insert(id.to_owned(), (seq, now));
        }
        if flight > 0 {
            self.in_process.insert(msg.subject.clone(), now.saturating_add(flight));
            if let Some(id) = msg_id {
                self.ids_in_process.insert(id.to_owned(), now.saturating_add(flight));
            }
        }
        let republished = self.config.republish.as_ref().and_then(|r| {
            let dest = crate::subject::transform(&r.src, &r.dest, &msg.subject)?;
            let mut copy = BusMessage::new(dest, msg.payload.clone());
            copy.headers = msg.headers.clone();
            copy.headers.extend([
                (header::STREAM.to_owned(), name.clone()),
                (header::SUBJECT.to_owned(), msg.subject.clone()),
                (header::SEQUENCE.to_owned(), seq.to_string()),
                (header::LAST_SEQUENCE.to_owned(), subject_last.to_string()),
            ]);
            if matches!(version, Version::V2_10 | Version::V2_10Clustered) {
                copy.headers.push((header::TIME_STAMP.to_owned(), rfc3339_nanos(now)));
            }
            Some(copy)
        });
        (PubAckBody { stream: name, seq, ..PubAckBody::default() }, republished)
    }
}
