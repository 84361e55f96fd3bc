//! A [`Bus`] in one process around a [`StoreModel`]: for tests of code that keeps its state in
//! the store, without a NATS server or a simulated network. Always connected; routes with NATS
//! core's rules (a queue group's first member gets each message; a request nobody takes is
//! answered 503) and lets the model take what JetStream would.

use std::sync::{Mutex, PoisonError};

use tokio::sync::mpsc;

use super::model::{Outcome, StoreModel, Version};
use crate::subject::subject_matches;
use crate::{Bus, BusError, BusMessage, BusStatus, NO_RESPONDERS, StatusCell, Subscription};

pub struct ModelBus {
    model: Mutex<StoreModel>,
    subs: Mutex<Vec<Sub>>,
    status: StatusCell,
    start: tokio::time::Instant,
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
        let status = StatusCell::default();
        status.set_connected(true);
        let model = Mutex::new(StoreModel::new(version));
        ModelBus { model, subs: Mutex::default(), status, start: tokio::time::Instant::now() }
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
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let outcome = self.model.lock().unwrap_or_else(PoisonError::into_inner).handle(&msg, now);
        let heard = self.route(&msg.subject, &msg);
        match (outcome, &msg.reply) {
            (Outcome::Taken(send), _) => {
                for d in &send {
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
}
