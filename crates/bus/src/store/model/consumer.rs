//! The model's consumers: ephemeral push consumers without acknowledgements, which is all a
//! worker's cache needs (a bucket's values, then its changes). No flow control, heartbeats or
//! redelivery; one is deleted when asked, never for inactivity (a real server deletes one whose
//! deliver subject nobody heard for its `inactive_threshold`).

use super::{ApiError, ApiResponse, Delivery, StoreModel, Stream, api_error};
use crate::BusMessage;
use crate::store::wire::{ConsumerConfig, ConsumerCreateRequest, DeliverPolicy, code};
use crate::subject::{subject_matches, subset, valid_subject};

#[derive(Debug, Clone)]
pub(super) struct Consumer {
    name: String,
    config: ConsumerConfig,
    /// Messages pushed so far: the consumer sequence of the last.
    pushed: u64,
    /// The first stream sequence it pushes when stored (what was there at its creation went
    /// out then; a start sequence further on holds it back).
    from: u64,
}

impl StoreModel {
    pub(super) fn create_consumer(
        &mut self,
        stream_name: &str,
        body: &[u8],
        send: &mut Vec<Delivery>,
    ) -> Result<ApiResponse, ApiError> {
        let bad = || api_error(400, code::BAD_REQUEST, "bad request");
        let request: ConsumerCreateRequest = serde_json::from_slice(body).map_err(|_| bad())?;
        let config = request.config;
        let well_formed = request.stream_name == stream_name
            && valid_subject(&config.deliver_subject, false)
            && (config.filter_subject.is_empty() || valid_subject(&config.filter_subject, true))
            && config.ack_policy == "none"
            && (config.deliver_policy == DeliverPolicy::ByStartSequence) == config.opt_start_seq.is_some();
        if !well_formed {
            return Err(bad());
        }
        if config.deliver_policy == DeliverPolicy::LastPerSubject && config.filter_subject.is_empty() {
            return Err(api_error(
                400,
                code::CONSUMER_NEEDS_FILTER,
                "consumer delivery policy is deliver last per subject, but optional filter subject is not set",
            ));
        }
        // 2.9 takes only a filter within the stream's subjects; later versions any.
        let within =
            |stream: &Stream| stream.config.subjects.iter().any(|p| subset(&config.filter_subject, p));
        if self.version.is_2_9()
            && !config.filter_subject.is_empty()
            && self.streams.get(stream_name).is_some_and(|s| !within(s))
        {
            return Err(api_error(
                400,
                code::CONSUMER_FILTER_NOT_SUBSET,
                "consumer filter subject is not a valid subset of the interest subjects",
            ));
        }
        self.consumers_made += 1;
        let name = format!("model{}", self.consumers_made);
        let version = self.version;
        let stream = self.stream_mut(stream_name)?;
        // 2.9 moves a start sequence past the stream's end back to just after it; later
        // versions wait for it.
        let start = config.opt_start_seq.unwrap_or(0);
        let start = if version.is_2_9() { start.min(stream.last_seq + 1) } else { start };
        let from = (stream.last_seq + 1).max(start);
        let mut consumer = Consumer { name: name.clone(), config: config.clone(), pushed: 0, from };
        let first: Vec<u64> = stream.starting(&config);
        for seq in first {
            send.push(stream.push(&mut consumer, seq));
        }
        stream.consumers.insert(name.clone(), consumer);
        let config = serde_json::to_value(&config).expect("a config serialises");
        Ok(ApiResponse { name: Some(name), config: Some(config), ..ApiResponse::default() })
    }

    pub(super) fn consumer_info(&self, names: &str) -> Result<ApiResponse, ApiError> {
        let (stream, consumer) = stream_and_consumer(names)?;
        let consumer = self.stream(stream)?.consumers.get(consumer).ok_or_else(consumer_not_found)?;
        let config = serde_json::to_value(&consumer.config).expect("a config serialises");
        Ok(ApiResponse { name: Some(consumer.name.clone()), config: Some(config), ..ApiResponse::default() })
    }

    pub(super) fn delete_consumer(&mut self, names: &str) -> Result<ApiResponse, ApiError> {
        let (stream, consumer) = stream_and_consumer(names)?;
        self.stream_mut(stream)?.consumers.remove(consumer).ok_or_else(consumer_not_found)?;
        Ok(ApiResponse { success: Some(true), ..ApiResponse::default() })
    }
}

/// `<stream>.<consumer>`, as the consumer API's subjects end.
fn stream_and_consumer(names: &str) -> Result<(&str, &str), ApiError> {
    names.split_once('.').ok_or_else(|| api_error(400, code::BAD_REQUEST, "bad request"))
}

fn consumer_not_found() -> ApiError {
    api_error(404, code::CONSUMER_NOT_FOUND, "consumer not found")
}

impl Stream {
    fn matches(config: &ConsumerConfig, subject: &str) -> bool {
        config.filter_subject.is_empty() || subject_matches(&config.filter_subject, subject)
    }

    /// The sequences a new consumer pushes first, in order.
    fn starting(&self, config: &ConsumerConfig) -> Vec<u64> {
        let mut matching =
            self.msgs.iter().filter(|(_, m)| Stream::matches(config, &m.subject)).map(|(s, _)| *s);
        match config.deliver_policy {
            DeliverPolicy::All => matching.collect(),
            DeliverPolicy::ByStartSequence => {
                let from = config.opt_start_seq.unwrap_or(1);
                matching.filter(|s| *s >= from).collect()
            }
            DeliverPolicy::New => Vec::new(),
            DeliverPolicy::Last => matching.next_back().into_iter().collect(),
            DeliverPolicy::LastPerSubject => {
                let mut last = std::collections::BTreeMap::new();
                for seq in matching {
                    last.insert(self.msgs[&seq].subject.clone(), seq);
                }
                let mut seqs: Vec<u64> = last.into_values().collect();
                seqs.sort_unstable();
                seqs
            }
        }
    }

    /// What the stream's consumers are sent for the message it just stored at `seq`.
    pub(super) fn push_stored(&mut self, seq: u64) -> Vec<Delivery> {
        let subject = self.msgs.get(&seq).map(|m| m.subject.clone());
        let Some(subject) = subject else { return Vec::new() };
        let mut consumers = std::mem::take(&mut self.consumers);
        let sent = consumers
            .values_mut()
            .filter(|c| seq >= c.from && Stream::matches(&c.config, &subject))
            .map(|c| self.push(c, seq))
            .collect();
        self.consumers = consumers;
        sent
    }

    /// The message at `seq` as `consumer` gets it next: to its deliver subject, under the
    /// message's own subject (as a NATS client sees a pushed message).
    fn push(&self, consumer: &mut Consumer, seq: u64) -> Delivery {
        consumer.pushed += 1;
        let m = &self.msgs[&seq];
        // The pending count (last token) is left at 0: nats-server's is an estimate, which
        // clientmq does not read.
        let reply =
            format!("$JS.ACK.{}.{}.1.{seq}.{}.{}.0", self.config.name, consumer.name, consumer.pushed, m.at);
        let msg = BusMessage {
            subject: m.subject.clone(),
            reply: Some(reply),
            headers: m.headers.clone(),
            payload: m.data.clone(),
            status: None,
        };
        Delivery { to: consumer.config.deliver_subject.clone(), msg }
    }
}
