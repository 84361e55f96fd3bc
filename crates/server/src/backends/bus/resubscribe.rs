//! A gateway back on the bus after an absence asks the workers to tell its connections again
//! what they hear: a subscription change sent while it was away is lost (NATS does not keep
//! it), and a connection whose session was taken over meanwhile would go on hearing its rooms.
//!
//! Every connection with a session drops its subscriptions first (it hears nothing rather than
//! what it may no longer be owed), then the gateway sends the workers' queue group the list of
//! those connections and their sessions (`P.resubscribe`, at most [`IDS_PER_MESSAGE`] a
//! message, with a reply subject). A worker publishes each listed connection's subscriptions,
//! as the store says now (and those whose session moved, to stop hearing its rooms), then
//! answers. With nobody to ask (no responders: a worker that keeps nothing per connection), the
//! connections get back what they had; with no answer within [`WAIT`] (the workers' store may
//! be electing a leader), they get it back meanwhile and the list is sent again, a few times.

use std::sync::Arc;
use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clientmq_bus::contract::{self, IDS_PER_MESSAGE, ToGateway, header};
use clientmq_bus::{Bus, BusMessage, NO_RESPONDERS};
use clientmq_core::Forgotten;
use tokio::sync::oneshot;

use super::Shared;
use crate::port::Connections;

/// How long a list waits for its answer before it is sent again.
const WAIT: Duration = Duration::from_secs(2);
/// How many times a list is sent before its connections get back what they had.
const TRIES: u32 = 5;

/// Forgets what the gateway's connections hear and has the workers tell them again.
pub(super) async fn resubscribe<B: Bus>(s: Arc<Shared<B>>, gateway: Connections) {
    let forgotten = gateway.forget_subscriptions().await;
    for chunk in forgotten.chunks(IDS_PER_MESSAGE) {
        let outcome = if ask(&s, &gateway, chunk).await { "told" } else { "restored" };
        gateway.bus_metrics().resubscribed(outcome);
    }
}

/// Whether a worker told these connections again (if not, they have what they had).
async fn ask<B: Bus>(s: &Shared<B>, gateway: &Connections, chunk: &[Forgotten]) -> bool {
    let mut restored = false;
    let payload = contract::sessions_payload(chunk.iter().map(|f| (&f.conn, f.session.as_str())));
    for _ in 0..TRIES {
        let n = s.next_resubscribe.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        s.resubscribes.lock().unwrap_or_else(PoisonError::into_inner).insert(n, tx);
        let msg = BusMessage::new(s.subjects.resubscribe(), payload.clone())
            .reply_to(s.subjects.gateway(&s.route_key, ToGateway::Resubscribed(n)))
            .with(header::GATEWAY, s.route_key.as_str());
        let answer = match s.bus.publish(msg).await {
            Ok(()) => tokio::time::timeout(WAIT, rx).await.ok().and_then(Result::ok),
            Err(_) => {
                tokio::time::sleep(WAIT).await;
                None
            }
        };
        s.resubscribes.lock().unwrap_or_else(PoisonError::into_inner).remove(&n);
        match answer {
            Some(msg) if msg.status == Some(NO_RESPONDERS) => {
                if !restored {
                    restore(gateway, chunk).await;
                }
                return false;
            }
            Some(msg) if msg.header(header::ERROR).is_none() => return true,
            Some(msg) => tracing::warn!(error = ?msg.header(header::ERROR), "resubscribe list refused"),
            None => tracing::debug!("resubscribe list not answered; sending it again"),
        }
        // Deaf no longer than one wait: what they had, until a worker says otherwise. Restored
        // at their last revisions, so a change applied since the forgetting stands.
        if !restored {
            restore(gateway, chunk).await;
            restored = true;
        }
    }
    false
}

/// Gives connections back what they had, each subscription at the last revision applied to it
/// before it was forgotten: what a worker on the bus would have to say is gone, and a change it
/// made since (an unsubscribe, a session moved) is newer and stands.
async fn restore(gateway: &Connections, chunk: &[Forgotten]) {
    for f in chunk {
        for (topic, room, revision) in &f.subscriptions {
            gateway.set_subscription(f.conn, *topic, room, true, *revision).await;
        }
    }
}
