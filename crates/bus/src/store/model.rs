//! The store's subset of JetStream in memory: what the simulated bus answers with, and what the
//! differential test holds to a real nats-server (`crates/bus/tests/store_model.rs`). It answers
//! the same requests with the same JSON, minus what the subset leaves out (timestamps are the
//! caller's clock; stream info carries only the message counts).
//!
//! The checks of a publish run in the order of the server version it models ([`Checks`]).
//! Then the message is stored, a rollup removes its subject's others, and the per-subject limit
//! removes the oldest.

use std::collections::BTreeMap;

use super::wire::{
    self, API, ApiError, ApiResponse, MsgGetRequest, PubAckBody, RawMessage, StreamConfig, StreamState, code,
    header,
};
use crate::BusMessage;
use crate::subject::{subject_matches, valid_subject};

/// What the model made of a message published on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not an API subject nor a stream's: the bus routes it as any other.
    Ignored,
    /// Taken (stored or refused) with nobody to tell: it had no reply subject.
    Taken,
    /// Taken, and this goes to its reply subject.
    Answer(BusMessage),
}

/// The order in which nats-server checks a publish: it decides which refusal a publish that
/// fails two checks gets (and whether a repeated message id is acknowledged despite them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Checks {
    /// nats-server 2.15 (and the pinned test server): the size limit, the expected last subject
    /// sequence, the message id, the rollup.
    #[default]
    SizeFirst,
    /// nats-server 2.9: the message id, the expected last subject sequence, the rollup, the
    /// size limit.
    IdFirst,
}

impl Checks {
    /// The order of a server version (verified on 2.9.10 and 2.15.1; 2.10 and later are taken to
    /// check as 2.15 does).
    pub fn of_version(version: (u32, u32, u32)) -> Checks {
        if version < (2, 10, 0) { Checks::IdFirst } else { Checks::SizeFirst }
    }
}

#[derive(Debug, Default)]
pub struct StoreModel {
    streams: BTreeMap<String, Stream>,
    checks: Checks,
}

#[derive(Debug)]
struct Stream {
    config: StreamConfig,
    msgs: BTreeMap<u64, Stored>,
    last_seq: u64,
    /// Message ids seen, with the sequence they were stored at and when (nanoseconds).
    ids: BTreeMap<String, (u64, u64)>,
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
    pub fn new(checks: Checks) -> StoreModel {
        StoreModel { checks, ..StoreModel::default() }
    }

    /// Takes `msg` as the server would at `now` (nanoseconds on the caller's clock).
    pub fn handle(&mut self, msg: &BusMessage, now: u64) -> Outcome {
        let body = if let Some(what) = msg.subject.strip_prefix(API) {
            serde_json::to_vec(&self.api(what, &msg.payload)).expect("an answer serialises")
        } else if let Some(name) = self.stream_of(&msg.subject) {
            let stream = self.streams.get_mut(&name).expect("found above");
            serde_json::to_vec(&stream.publish(msg, now, self.checks)).expect("an ack serialises")
        } else {
            return Outcome::Ignored;
        };
        match &msg.reply {
            Some(reply) => Outcome::Answer(BusMessage::new(reply.clone(), body)),
            None => Outcome::Taken,
        }
    }

    /// The stream whose subjects take `subject`.
    fn stream_of(&self, subject: &str) -> Option<String> {
        self.streams
            .values()
            .find(|s| s.config.subjects.iter().any(|p| subject_matches(p, subject)))
            .map(|s| s.config.name.clone())
    }

    fn api(&mut self, what: &str, body: &[u8]) -> ApiResponse {
        let (kind, result) = if what == wire::INFO {
            ("account_info_response", Ok(ApiResponse::default()))
        } else if let Some(name) = what.strip_prefix(wire::STREAM_CREATE) {
            ("stream_create_response", self.create(name, body))
        } else if let Some(name) = what.strip_prefix(wire::STREAM_INFO) {
            ("stream_info_response", self.info(name))
        } else if let Some(name) = what.strip_prefix(wire::STREAM_MSG_GET) {
            ("stream_msg_get_response", self.msg_get(name, body))
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
        let overlaps = self.streams.values().any(|s| {
            s.config.subjects.iter().any(|a| config.subjects.iter().any(|b| crate::subject::overlap(a, b)))
        });
        if overlaps {
            return Err(api_error(400, code::SUBJECTS_OVERLAP, "subjects overlap with an existing stream"));
        }
        let stream = Stream { config, msgs: BTreeMap::new(), last_seq: 0, ids: BTreeMap::new() };
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
        Ok(ApiResponse { config: Some(stream.config.clone()), state: Some(state), ..ApiResponse::default() })
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
            time: m.at.to_string(),
        };
        Ok(ApiResponse { message: Some(message), ..ApiResponse::default() })
    }
}

#[derive(Debug, Clone, Copy)]
enum Check {
    Size,
    Expected,
    Id,
    Rollup,
}

impl Stream {
    /// The answer to a publish that `check` stops: a refusal, or a repeated id's acknowledgement.
    fn check(&self, check: Check, msg: &BusMessage, msg_id: Option<&str>) -> Option<PubAckBody> {
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
            Check::Expected => {
                let expected = msg.header(header::EXPECTED_LAST_SUBJECT_SEQUENCE)?.parse::<u64>().ok()?;
                let last =
                    self.msgs.iter().rev().find(|(_, m)| m.subject == msg.subject).map_or(0, |(seq, _)| *seq);
                (expected != last).then(|| {
                    refused(api_error(400, code::WRONG_LAST_SEQUENCE, format!("wrong last sequence: {last}")))
                })
            }
            Check::Id => {
                let (seq, _) = self.ids.get(msg_id?)?;
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

    fn publish(&mut self, msg: &BusMessage, now: u64, checks: Checks) -> PubAckBody {
        let name = self.config.name.clone();
        let window = self.config.duplicate_window;
        self.ids.retain(|_, (_, at)| now.saturating_sub(*at) < window);
        let msg_id = msg.header(header::MSG_ID).filter(|id| !id.is_empty());
        let order = match checks {
            Checks::SizeFirst => [Check::Size, Check::Expected, Check::Id, Check::Rollup],
            Checks::IdFirst => [Check::Id, Check::Expected, Check::Rollup, Check::Size],
        };
        for check in order {
            if let Some(answer) = self.check(check, msg, msg_id) {
                return answer;
            }
        }
        let rollup = msg.header(header::ROLLUP);
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
        PubAckBody { stream: name, seq, ..PubAckBody::default() }
    }
}
