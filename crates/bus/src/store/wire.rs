//! JetStream's wire forms for the subset the store uses: the JSON bodies of its API and of a
//! publish acknowledgement, and the NATS header block a stored message carries. The client
//! writes requests and reads answers with these; the model reads requests and writes answers.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

/// API subjects (`$JS.API.` + these), each followed by the stream's name where it takes one.
pub const API: &str = "$JS.API.";
pub const INFO: &str = "INFO";
pub const STREAM_CREATE: &str = "STREAM.CREATE.";
pub const STREAM_INFO: &str = "STREAM.INFO.";
pub const STREAM_MSG_GET: &str = "STREAM.MSG.GET.";
pub const CONSUMER_CREATE: &str = "CONSUMER.CREATE.";
/// Followed by the stream's name, a dot and the consumer's.
pub const CONSUMER_DELETE: &str = "CONSUMER.DELETE.";
/// Followed by the stream's name, a dot and the consumer's.
pub const CONSUMER_INFO: &str = "CONSUMER.INFO.";

/// Headers of a publish that JetStream acts on.
pub mod header {
    pub const MSG_ID: &str = "Nats-Msg-Id";
    pub const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
    pub const ROLLUP: &str = "Nats-Rollup";
    /// A key-value delete or purge marker (`DEL`, `PURGE`); not JetStream's, its KV clients'.
    pub const KV_OPERATION: &str = "KV-Operation";
    /// On a republished message: its stream, subject and sequence, and the subject's previous.
    pub const STREAM: &str = "Nats-Stream";
    pub const SUBJECT: &str = "Nats-Subject";
    pub const SEQUENCE: &str = "Nats-Sequence";
    pub const LAST_SEQUENCE: &str = "Nats-Last-Sequence";
    /// On a republished message, from nats-server 2.10: when it was stored.
    pub const TIME_STAMP: &str = "Nats-Time-Stamp";
}

/// JetStream's error codes the store tells apart (`err_code` in an API error).
pub mod code {
    pub const WRONG_LAST_SEQUENCE: u32 = 10071;
    /// A clustered stream's leader cannot check the expected sequence with writes in flight.
    pub const WRONG_LAST_SEQUENCE_UNKNOWN: u32 = 10164;
    /// A clustered stream's leader has a message with that id in flight.
    pub const DUPLICATE_IN_FLIGHT: u32 = 10158;
    pub const NO_MESSAGE_FOUND: u32 = 10037;
    pub const STREAM_NOT_FOUND: u32 = 10059;
    pub const STREAM_NAME_IN_USE: u32 = 10058;
    pub const SUBJECTS_OVERLAP: u32 = 10065;
    pub const MESSAGE_TOO_LARGE: u32 = 10054;
    pub const ROLLUP_FAILED: u32 = 10111;
    pub const BAD_REQUEST: u32 = 10003;
    pub const STREAM_INVALID_CONFIG: u32 = 10052;
    pub const CONSUMER_NOT_FOUND: u32 = 10014;
    pub const JETSTREAM_NOT_ENABLED: u32 = 10039;
    pub const CONSUMER_NEEDS_FILTER: u32 = 10094;
    pub const CONSUMER_FILTER_NOT_SUBSET: u32 = 10093;
}

/// Where a stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    File,
    Memory,
}

/// The stream settings the store sets (the others keep JetStream's defaults: limits retention,
/// discard old, no limit on messages, bytes or age).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamConfig {
    pub name: String,
    pub subjects: Vec<String>,
    /// Messages kept per subject, oldest dropped first; -1 for no limit.
    pub max_msgs_per_subject: i64,
    /// Largest payload accepted, in bytes; -1 for no limit.
    pub max_msg_size: i32,
    /// Nanoseconds a `Nats-Msg-Id` is remembered for deduplication.
    pub duplicate_window: u64,
    pub storage: Storage,
    pub num_replicas: usize,
    /// Whether a publish may carry `Nats-Rollup` (replace the subject's messages).
    pub allow_rollup_hdrs: bool,
    /// Whether the API's message delete is refused (a key-value bucket's history is written by
    /// publishes only).
    pub deny_delete: bool,
    pub allow_direct: bool,
    /// Messages the stream stores on `src` are published again, once stored, to `dest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub republish: Option<RePublish>,
}

/// A stream's republish: each message stored on a subject matching `src` is published to `dest`
/// (its `*` tokens written `{{wildcard(1)}}`, ...; a last `>` carried over) by the stream itself,
/// in the stream's order, with the stored message's headers and `Nats-Stream`,
/// `Nats-Subject`, `Nats-Sequence` and `Nats-Last-Sequence` (the subject's previous sequence, 0
/// for none). In nats-server since 2.9.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RePublish {
    pub src: String,
    pub dest: String,
}

/// An API error as JetStream writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: u16,
    #[serde(default)]
    pub err_code: u32,
    #[serde(default)]
    pub description: String,
}

/// The answer to a publish captured by a stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PubAckBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    #[serde(default)]
    pub stream: String,
    #[serde(default)]
    pub seq: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// `STREAM.MSG.GET`: one message by sequence, the last of a subject, or the first of a subject
/// from a sequence on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsgGetRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_by_subj: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_by_subj: Option<String>,
}

/// A stored message as `STREAM.MSG.GET` returns it: headers as a base64 NATS header block,
/// data in base64, each absent when empty.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawMessage {
    pub subject: String,
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hdrs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default)]
    pub time: String,
}

/// Every API answer: the error when there is one, else the fields of its kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ApiResponse {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<RawMessage>,
    /// A stream's or a consumer's settings, as the server completed them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    /// A consumer's name (the server's choice for an ephemeral one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
    /// A clustered stream's placement: `leader` names the server that orders its writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StreamState>,
}

/// Where a consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliverPolicy {
    All,
    /// The last message matching the filter, then what follows.
    Last,
    /// Only what is stored from now on.
    New,
    /// From `opt_start_seq` on.
    ByStartSequence,
    /// The last message of each subject matching the filter, then what follows: a bucket's
    /// current values, then its changes.
    LastPerSubject,
}

/// An ephemeral push consumer without acknowledgements: the stream's messages matching
/// `filter_subject`, from where `deliver_policy` says, pushed to `deliver_subject` in order.
/// Each carries its position in a reply subject `$JS.ACK.<stream>.<consumer>.<delivered>.
/// <stream seq>.<consumer seq>.<time>.<pending>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerConfig {
    pub deliver_subject: String,
    pub deliver_policy: DeliverPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_start_seq: Option<u64>,
    /// Always `none` here.
    pub ack_policy: String,
    pub filter_subject: String,
    /// Always `instant` here.
    pub replay_policy: String,
    /// Nanoseconds without interest in `deliver_subject` after which the server deletes it.
    pub inactive_threshold: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsumerCreateRequest {
    pub stream_name: String,
    pub config: ConsumerConfig,
}

/// How many messages a stream holds and the range of their sequences.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamState {
    pub messages: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// Encodes header pairs as a NATS header block (`NATS/1.0`, one `Name: value` line each).
pub fn header_block(headers: &[(String, String)]) -> Vec<u8> {
    let mut block = b"NATS/1.0\r\n".to_vec();
    for (name, value) in headers {
        block.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    block.extend_from_slice(b"\r\n");
    block
}

/// Decodes a NATS header block into its pairs, in order; `None` if it is not one.
pub fn parse_header_block(block: &[u8]) -> Option<Vec<(String, String)>> {
    let text = std::str::from_utf8(block).ok()?;
    let mut lines = text.split("\r\n");
    if !lines.next()?.starts_with("NATS/1.0") {
        return None;
    }
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    Some(headers)
}

pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

pub fn unb64(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_block_round_trips() {
        let headers =
            vec![("KV-Operation".to_owned(), "DEL".to_owned()), ("A".to_owned(), "b: c".to_owned())];
        assert_eq!(parse_header_block(&header_block(&headers)), Some(headers));
        assert_eq!(parse_header_block(&header_block(&[])), Some(vec![]));
        assert_eq!(parse_header_block(b"HTTP/1.1 200\r\n\r\n"), None);
    }
}
