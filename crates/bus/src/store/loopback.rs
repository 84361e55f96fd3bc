//! A [`Bus`] in one process around a [`StoreModel`]: for tests of code that keeps its state in
//! the store, without a NATS server or a simulated network. Connected unless a test says
//! otherwise ([`ModelBus::set_connected`]); routes with NATS core's rules (a queue group's first
//! member gets each message; a request nobody takes is answered 503) and lets the model take
//! what JetStream would.

use std::sync::{Mutex, PoisonError};

use tokio::sync::mpsc;

use super::model::{Outcome, StoreModel, Version};
use super::wire::{ApiError, PubAckBody};
use crate::subject::subject_matches;
use crate::{Bus, BusError, BusMessage, BusStatus, NO_RESPONDERS, StatusCell, Subscription};

pub struct ModelBus {
    model: Mutex<StoreModel>,
    subs: Mutex<Vec<Sub>>,
    /// Refusals to give the next publishes to a subject instead of the model's answer.
    refusals: Mutex<Vec<Refusal>>,
    /// Subjects whose next taken publish's answer is lost (see [`ModelBus::lose_next_answer`]).
    losses: Mutex<Vec<String>>,
    /// Whether flushes wait (see [`ModelBus::hold_flushes`]).
    flushes_held: tokio::sync::watch::Sender<bool>,
    status: StatusCell,
    start: tokio::time::Instant,
}

/// A JetStream refusal a test has a publish get (nothing is stored).
struct Refusal {
    subject: String,
    err_code: u32,
    description: String,
    /// Every publish to the subject, not only the next.
    always: bool,
}

struct Sub {
    subject: String,
    queue: Option<String>,
    to: mpsc::UnboundedSender<BusMessage>,
}

impl Default for ModelBus {
    fn default() -> Self {
        ModelBus::new(Version::default())
    }
}

impl ModelBus {
    /// A bus whose store behaves as nats-server `version`.
    pub fn new(version: Version) -> ModelBus {
        ModelBus::build(version, true)
    }

    fn build(version: Version, connected: bool) -> ModelBus {
        let status = StatusCell::default();
        status.set_connected(connected);
        let model = Mutex::new(StoreModel::new(version));
        ModelBus {
            model,
            subs: Mutex::default(),
            flushes_held: tokio::sync::watch::Sender::new(false),
            losses: Mutex::default(),
            refusals: Mutex::default(),
            status,
            start: tokio::time::Instant::now(),
        }
    }

    /// A bus not connected yet: its first connection (epoch 1) comes when a test says so
    /// ([`ModelBus::set_connected`]).
    pub fn offline() -> ModelBus {
        ModelBus::build(Version::default(), false)
    }

    /// Writes stay in process this long after the model takes them (see
    /// [`StoreModel::set_flight`]; a clustered 2.10 model only).
    pub fn set_flight(&self, flight: std::time::Duration) {
        let nanos = u64::try_from(flight.as_nanos()).unwrap_or(u64::MAX);
        self.model.lock().unwrap_or_else(PoisonError::into_inner).set_flight(nanos);
    }

    /// The next publish to `subject` that expects an answer is refused with JetStream's
    /// `err_code` (503, as a clustered stream answers while it replicates) and stores nothing:
    /// for tests of what a client does with the answers a single model never gives, such as
    /// 10158 (a message with that id still in flight).
    pub fn refuse_next(&self, subject: &str, err_code: u32, description: &str) {
        self.refuse(subject, err_code, description, false);
    }

    /// [`ModelBus::refuse_next`] for every publish to `subject` from now on.
    pub fn refuse_always(&self, subject: &str, err_code: u32, description: &str) {
        self.refuse(subject, err_code, description, true);
    }

    fn refuse(&self, subject: &str, err_code: u32, description: &str, always: bool) {
        let (subject, description) = (subject.to_owned(), description.to_owned());
        let refusal = Refusal { subject, err_code, description, always };
        self.refusals.lock().unwrap_or_else(PoisonError::into_inner).push(refusal);
    }

    /// Flushes wait while `held` (a server slow to answer a ping), and go on once it is not.
    pub fn hold_flushes(&self, held: bool) {
        self.flushes_held.send_replace(held);
    }

    /// The next publish to `subject` that expects an answer is taken (stored, if the model
    /// stores it) but its answer is lost, as when a connection drops between JetStream's write
    /// and its acknowledgement: the publisher times out not knowing.
    pub fn lose_next_answer(&self, subject: &str) {
        self.losses.lock().unwrap_or_else(PoisonError::into_inner).push(subject.to_owned());
    }

    /// Whether `msg`'s answer is to be lost (once per [`ModelBus::lose_next_answer`]).
    fn answer_lost(&self, msg: &BusMessage) -> bool {
        let mut losses = self.losses.lock().unwrap_or_else(PoisonError::into_inner);
        let at = losses.iter().position(|s| *s == msg.subject).filter(|_| msg.reply.is_some());
        at.map(|at| losses.remove(at)).is_some()
    }

    /// The connection lost (`false`) or back (`true`: a new epoch), as a real client's would be;
    /// while it is lost, publishing fails with [`BusError::Disconnected`] and nothing is routed.
    pub fn set_connected(&self, connected: bool) {
        self.status.set_connected(connected);
    }

    /// The refusal `msg` gets, if a test set one for its subject.
    fn refusal(&self, msg: &BusMessage) -> Option<BusMessage> {
        let reply = msg.reply.as_ref()?;
        let mut refusals = self.refusals.lock().unwrap_or_else(PoisonError::into_inner);
        let at = refusals.iter().position(|r| r.subject == msg.subject)?;
        let r = if refusals[at].always { &refusals[at] } else { &refusals.remove(at) };
        let error = ApiError { code: 503, err_code: r.err_code, description: r.description.clone() };
        let body = PubAckBody { error: Some(error), ..PubAckBody::default() };
        let payload = serde_json::to_vec(&body).expect("an ack serializes");
        Some(BusMessage::new(reply.clone(), payload))
    }

    /// Hands `msg` to every subscription matching `to` (one per queue group); whether any took
    /// it.
    fn route(&self, to: &str, msg: &BusMessage) -> bool {
        let mut subs = self.subs.lock().unwrap_or_else(PoisonError::into_inner);
        subs.retain(|s| !s.to.is_closed());
        let mut groups: Vec<&str> = Vec::new();
        let mut taken = false;
        for sub in subs.iter().filter(|s| subject_matches(&s.subject, to)) {
            if let Some(group) = &sub.queue {
                if groups.contains(&group.as_str()) {
                    continue;
                }
                groups.push(group);
            }
            taken |= sub.to.send(msg.clone()).is_ok();
        }
        taken
    }
}

impl Bus for ModelBus {
    type Subscription = ModelSubscription;

    async fn publish(&self, msg: BusMessage) -> Result<(), BusError> {
        if !self.status.get().connected {
            return Err(BusError::Disconnected);
        }
        if let Some(refused) = self.refusal(&msg) {
            self.route(&refused.subject, &refused);
            return Ok(());
        }
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let outcome = self.model.lock().unwrap_or_else(PoisonError::into_inner).handle(&msg, now);
        let heard = self.route(&msg.subject, &msg);
        match (outcome, &msg.reply) {
            (Outcome::Taken(send), reply) => {
                let lost = self.answer_lost(&msg);
                for d in send.iter().filter(|d| !(lost && Some(&d.to) == reply.as_ref())) {
                    self.route(&d.to, &d.msg);
                }
            }
            (Outcome::Ignored, Some(reply)) if !heard => {
                let refusal =
                    BusMessage { status: Some(NO_RESPONDERS), ..BusMessage::new(reply.clone(), Vec::new()) };
                self.route(reply, &refusal);
            }
            _ => {}
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        subject: &str,
        queue_group: Option<&str>,
    ) -> Result<ModelSubscription, BusError> {
        let (to, from) = mpsc::unbounded_channel();
        let sub = Sub { subject: subject.to_owned(), queue: queue_group.map(str::to_owned), to };
        self.subs.lock().unwrap_or_else(PoisonError::into_inner).push(sub);
        Ok(ModelSubscription(from))
    }

    fn status(&self) -> BusStatus {
        self.status.get()
    }

    async fn flush(&self) -> Result<(), BusError> {
        let mut held = self.flushes_held.subscribe();
        let _ = held.wait_for(|held| !held).await;
        Ok(())
    }

    async fn changed(&self, seen: BusStatus) {
        self.status.changed(seen).await
    }
}

pub struct ModelSubscription(mpsc::UnboundedReceiver<BusMessage>);

impl Subscription for ModelSubscription {
    async fn next(&mut self) -> Option<BusMessage> {
        self.0.recv().await
    }

    /// Routing skips a closed channel, whose messages are still received.
    async fn drain(&mut self) {
        self.0.close();
    }
}
