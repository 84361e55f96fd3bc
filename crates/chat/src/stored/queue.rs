//! Each connection's requests, served in order (a client may pipeline them) by a task of the
//! connection's own, concurrently across connections. The queue is bounded, and a request
//! leaves it unserved once its gateway has stopped waiting for the answer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use clientmq_bus::contract::{self, header};
use clientmq_bus::gateways::Gateways;
use clientmq_bus::{Bus, BusMessage};
use clientmq_core::ConnectionId;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;

use super::worker::{Node, now, tell};
use crate::wire::{self, reason};
use crate::worker::WorkerEvent;

/// Requests waiting on one connection. A gateway keeps at most `--max-pending-requests` (64 by
/// default) in flight on a connection; more than that here are ones it gave up on under a slow
/// store, which their deadlines clear. Past the bound a request is answered `unavailable`.
pub const QUEUED_PER_CONNECTION: usize = 128;

/// A request and the instant its gateway stops waiting for the answer (`Clientmq-Timeout-Ms`
/// from its arrival here; none without the header).
struct Queued {
    msg: BusMessage,
    until: Option<Instant>,
}

/// Each connection's requests waiting for the task that serves them, in order.
#[derive(Default, Clone)]
pub struct Queues(Arc<Mutex<BTreeMap<ConnectionId, mpsc::Sender<Queued>>>>);

impl Queues {
    /// Whether no connection has a request waiting or being served.
    pub fn is_empty(&self) -> bool {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).is_empty()
    }

    /// A request: checked, counted as proof of its gateway's life, and queued behind the
    /// connection's earlier ones.
    pub async fn request<B: Bus>(&self, node: &Arc<Node<B>>, gateways: &mut Gateways, msg: BusMessage) {
        let Some(reply) = msg.reply.clone() else { return };
        let g = msg.header(header::GATEWAY).filter(|g| contract::route_key_ok(g)).map(str::to_owned);
        let conn = msg.header(header::CONNECTION).and_then(|c| c.parse::<ConnectionId>().ok());
        let (Some(g), Some(conn)) = (g, conn) else {
            return refuse(node, reply, reason::MALFORMED).await;
        };
        if gateways.request_from(&g, conn, now()) {
            tell(node, WorkerEvent::GatewayBack { gateway: g });
        }
        let wait = msg.header(header::TIMEOUT_MS).and_then(|ms| ms.parse().ok()).map(Duration::from_millis);
        let queued = Queued { msg, until: wait.map(|w| Instant::now() + w) };
        let refused = {
            let mut queues = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            let sent = match queues.get(&conn) {
                Some(tx) => tx.try_send(queued),
                None => Err(TrySendError::Closed(queued)),
            };
            match sent {
                Ok(()) => None,
                Err(TrySendError::Full(queued)) => Some(queued),
                Err(TrySendError::Closed(queued)) => {
                    let (tx, rx) = mpsc::channel(QUEUED_PER_CONNECTION);
                    tx.try_send(queued).unwrap_or_else(|_| unreachable!("just made"));
                    queues.insert(conn, tx);
                    tokio::spawn(serve(node.clone(), self.clone(), conn, rx));
                    None
                }
            }
        };
        if let Some(queued) = refused {
            tracing::debug!(%conn, "too many requests queued on one connection");
            if let Some(m) = &node.metrics {
                m.unserved(&request_type(node, &queued.msg.subject), false);
            }
            refuse(node, reply, reason::UNAVAILABLE).await;
        }
    }
}

/// The request type a request's subject names.
fn request_type<B: Bus>(node: &Node<B>, subject: &str) -> String {
    let prefix = format!("{}.req.", node.subjects.prefix());
    subject.strip_prefix(&prefix).unwrap_or_default().to_owned()
}

async fn refuse<B: Bus>(node: &Node<B>, reply: String, reason: &str) {
    let refused = wire::error(reason);
    node.publish(BusMessage::new(reply, refused.payload).with(header::TYPE, refused.reply_type)).await;
}

/// Serves connection `conn`'s requests one after the other until none is waiting.
async fn serve<B: Bus>(
    node: Arc<Node<B>>,
    queues: Queues,
    conn: ConnectionId,
    mut rx: mpsc::Receiver<Queued>,
) {
    loop {
        let queued = match rx.try_recv() {
            Ok(queued) => queued,
            Err(_) => {
                // Gone from the map under the lock the loop queues under: nothing is lost.
                let mut queues = queues.0.lock().unwrap_or_else(PoisonError::into_inner);
                match rx.try_recv() {
                    Ok(queued) => queued,
                    Err(_) => {
                        queues.remove(&conn);
                        return;
                    }
                }
            }
        };
        let Queued { msg, until } = queued;
        let request_type = request_type(&node, &msg.subject);
        // Its gateway answered `timeout` already: whatever it did now would be unknown to the
        // client anyway, and it would hold up the connection's later requests.
        if until.is_some_and(|until| Instant::now() >= until) {
            tracing::debug!(%conn, subject = %msg.subject, "request left unserved: its gateway stopped waiting");
            if let Some(m) = &node.metrics {
                m.unserved(&request_type, true);
            }
            continue;
        }
        let Some(reply) = msg.reply.clone() else { continue };
        let g = msg.header(header::GATEWAY).unwrap_or_default().to_owned();
        let claims = msg
            .header(header::APPLICATION)
            .zip(msg.header(header::CLAIMS))
            .and_then(|(application, claims)| contract::parse_claims(application, claims));
        let answer =
            super::requests::handle(&node, conn, &g, &request_type, &msg.payload, claims.as_ref()).await;
        if let Some(m) = &node.metrics {
            m.request(&request_type, answer.reply_type == "mq.Error");
        }
        node.publish(contract::answer(reply, &request_type, answer.reply_type, answer.payload)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use clientmq_bus::Bus as _;
    use clientmq_bus::store::loopback::ModelBus;
    use clientmq_core::proto::chat;
    use prost::Message;

    use super::*;
    use crate::metrics::WorkerMetrics;
    use crate::stored::testing::{Served, answers, gateway_deaf, reason, request, served};

    /// A connection's join waits for its gateway's acknowledgement (a gateway cut off never
    /// gives it) while requests pile up behind it: those past the bound are refused at once,
    /// those whose gateway stopped waiting are left unserved, and the rest are served in order.
    #[tokio::test(start_paused = true)]
    async fn a_connection_queues_a_bounded_number_of_requests_and_drops_those_nobody_waits_for() {
        let bus = Arc::new(ModelBus::default());
        let _cut_off = gateway_deaf(&bus, Arc::new(std::sync::atomic::AtomicBool::new(true))).await;
        let metrics = Arc::new(WorkerMetrics::new());
        let Served { mut replies, room_id, .. } =
            served(&bus, Some(metrics.clone()), std::future::pending()).await;
        let join = chat::JoinRoom { room_id: Some(room_id.clone()), ..Default::default() };
        bus.publish(request(2, "chat.JoinRoom", join.encode_to_vec(), 10_000)).await.unwrap();
        let info = chat::GetRoomInfo { room_id: Some(room_id), ..Default::default() }.encode_to_vec();
        // Waited for 100 ms: gone by the time the join is answered.
        for n in 3..6 {
            bus.publish(request(n, "chat.GetRoomInfo", info.clone(), 100)).await.unwrap();
        }
        let over = QUEUED_PER_CONNECTION + 10;
        for n in 6..6 + over {
            bus.publish(request(n, "chat.GetRoomInfo", info.clone(), 10_000)).await.unwrap();
        }
        let heard = answers(&mut replies, Duration::from_secs(3)).await;
        let refused: Vec<usize> =
            heard.iter().filter(|(_, m)| reason(m).is_some()).map(|(n, _)| *n).collect();
        // The join and the three expired ones held places in the queue.
        let queued_first = QUEUED_PER_CONNECTION - 3;
        assert_eq!(refused, (6 + queued_first..6 + over).collect::<Vec<_>>());
        assert!(refused.iter().all(
            |n| reason(&heard.iter().find(|(m, _)| m == n).unwrap().1).as_deref() == Some("unavailable")
        ));
        // Served with their requests' own response types: no `Clientmq-Type` (contract::answer).
        let served: Vec<(usize, Option<&str>)> = (heard.iter())
            .filter(|(_, m)| reason(m).is_none())
            .map(|(n, m)| (*n, m.header(header::TYPE)))
            .collect();
        let expected: Vec<(usize, Option<&str>)> =
            std::iter::once(2).chain(6..6 + queued_first).map(|n| (n, None)).collect();
        assert_eq!(served, expected);
        // Each counted by its outcome.
        let rendered = metrics.render();
        let counted = |ty: &str, outcome: &str| {
            let series = format!("clientmq_chat_requests_total{{type=\"{ty}\",outcome=\"{outcome}\"}} ");
            let line = rendered.lines().find_map(|l| l.strip_prefix(series.as_str()));
            line.map_or(0, |n| n.parse::<u64>().unwrap())
        };
        let refused = u64::try_from(over - queued_first).unwrap();
        assert_eq!(counted("chat.GetRoomInfo", "refused"), refused, "{rendered}");
        assert_eq!(counted("chat.GetRoomInfo", "expired"), 3, "{rendered}");
        assert_eq!(counted("chat.GetRoomInfo", "ok"), u64::try_from(queued_first).unwrap(), "{rendered}");
        assert_eq!(counted("chat.GetRoomInfo", "error"), 0, "{rendered}");
        assert_eq!(counted("chat.JoinRoom", "ok"), 1, "{rendered}");
    }

    /// Stopped while a join waits for its acknowledgement with requests queued behind it, the
    /// worker takes no new request (nobody hears them: no responders) and answers every one it
    /// took, then returns.
    #[tokio::test(start_paused = true)]
    async fn a_draining_worker_answers_what_it_took_and_takes_nothing_more() {
        let bus = Arc::new(ModelBus::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let Served { mut replies, room_id, worker, .. } = served(&bus, None, async {
            let _ = stopped.await;
        })
        .await;
        let join = chat::JoinRoom { room_id: Some(room_id.clone()), ..Default::default() };
        bus.publish(request(2, "chat.JoinRoom", join.encode_to_vec(), 10_000)).await.unwrap();
        let info = chat::GetRoomInfo { room_id: Some(room_id), ..Default::default() }.encode_to_vec();
        for n in 3..8 {
            bus.publish(request(n, "chat.GetRoomInfo", info.clone(), 10_000)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        bus.publish(request(8, "chat.GetRoomInfo", info, 10_000)).await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), worker).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "the worker returns once drained: {ended:?}");
        // Every answer was out before it returned (a process exits then).
        let heard = answers(&mut replies, Duration::ZERO).await;
        let told: Vec<(usize, Option<&str>, Option<u16>)> =
            heard.iter().map(|(n, m)| (*n, m.header(header::TYPE), m.status)).collect();
        // Each with its request's own response type: no `Clientmq-Type` (contract::answer).
        let expected: Vec<(usize, Option<&str>, Option<u16>)> = (2..8).map(|n| (n, None, None)).collect();
        // The last, sent once the worker was draining: nobody subscribes.
        let not_taken = told.iter().position(|(n, _, _)| *n == 8).expect("no-responders for the last");
        assert_eq!(told[not_taken].2, Some(503));
        let mut taken = told.clone();
        taken.remove(not_taken);
        assert_eq!(taken, expected);
    }
}
