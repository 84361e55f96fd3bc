//! The backend port (the seed's MQWorker): the [`Backend`] trait, through which client requests
//! go out, and the [`Connections`], through which a backend answers, pushes events,
//! subscription changes and server requests to connections on any shard.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use clientmq_core::proto::pcast;
use clientmq_core::{
    BackendError, BackendRequest, CloseReason, ConnectionId, Input, Reply, ServerRequestError, Target, Topic,
};
use tokio::sync::{mpsc, oneshot};

use crate::command::{Command, Routes};

/// A cloneable handle through which a backend (and operators) reach connections on any shard:
/// answers, events, subscription changes, server requests, closes. The backend port's other half.
#[derive(Clone)]
pub struct Connections {
    pub(crate) shards: Arc<Vec<mpsc::Sender<Command>>>,
    pub(crate) routes: Routes,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
}

impl Connections {
    /// Where the bus backend counts what an operator sees of the bus.
    pub(crate) fn bus_metrics(&self) -> &crate::metrics::BusMetrics {
        &self.metrics.bus
    }

    fn shard_of(&self, conn: &ConnectionId) -> Option<&mpsc::Sender<Command>> {
        let shard = *self.routes.read().expect("routes lock").get(conn)?;
        self.shards.get(shard)
    }

    /// Pushes an event to one connection, or to every subscriber of a room or conversation.
    pub async fn deliver(&self, target: Target, event_type: &str, payload: Vec<u8>) {
        let input = |target| {
            Command::Input(Input::Deliver {
                target,
                event_type: event_type.to_owned(),
                payload: payload.clone(),
            })
        };
        match &target {
            Target::Connection(conn) => {
                if let Some(shard) = self.shard_of(conn) {
                    let _ = shard.send(input(target.clone())).await;
                }
            }
            // Subscribers may sit on any shard.
            Target::Room(_) | Target::Conversation(_) => {
                for shard in self.shards.iter() {
                    let _ = shard.send(input(target.clone())).await;
                }
            }
        }
    }

    /// Subscribes a connection to a room or conversation (`subscribe`), or unsubscribes it,
    /// unless a later `revision` of that subscription was applied (see `Input::Subscription`).
    pub async fn set_subscription(
        &self,
        conn: ConnectionId,
        topic: Topic,
        room: &str,
        subscribe: bool,
        revision: Option<clientmq_core::Revision>,
    ) {
        if let Some(shard) = self.shard_of(&conn) {
            let input = Input::Subscription { conn, topic, room: room.to_owned(), subscribe, revision };
            let _ = shard.send(Command::Input(input)).await;
        }
    }

    /// Asks `conn`'s shard now, in order with what was handed to it before (by this task), and
    /// returns what resolves once the shard has handled all that and carried out what it caused:
    /// a subscription sent before has been applied, and the interest it changed reported to the
    /// backend. It may be waited for apart. At once for a connection that is gone.
    pub async fn settling(&self, conn: ConnectionId) -> impl Future<Output = ()> + Send + 'static {
        let (done, settled) = oneshot::channel();
        if let Some(shard) = self.shard_of(&conn) {
            // A shard gone drops `done`: resolved at once.
            let _ = shard.send(Command::Settled(done)).await;
        }
        async move {
            let _ = settled.await;
        }
    }

    /// Drops every subscription of every connection with a session, in every shard, and says
    /// what was dropped (see `Gateway::forget_subscriptions`).
    pub async fn forget_subscriptions(&self) -> Vec<clientmq_core::Forgotten> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            let (done, forgotten) = oneshot::channel();
            if shard.send(Command::ForgetSubscriptions(done)).await.is_ok() {
                all.extend(forgotten.await.unwrap_or_default());
            }
        }
        all
    }

    /// Sends a request to a client and waits for its answer (or the server request timeout).
    pub async fn server_request(
        &self,
        conn: ConnectionId,
        request_type: &str,
        payload: Vec<u8>,
    ) -> Result<Reply, ServerRequestError> {
        self.begin_server_request(conn, request_type, payload).await?.await
    }

    /// Sends a request to a client now, in order with what was handed to the connection's shard
    /// before; the returned future waits for the answer (or the server request timeout).
    pub async fn begin_server_request(
        &self,
        conn: ConnectionId,
        request_type: &str,
        payload: Vec<u8>,
    ) -> Result<impl Future<Output = Result<Reply, ServerRequestError>> + use<>, ServerRequestError> {
        let Some(shard) = self.shard_of(&conn) else { return Err(ServerRequestError::NotConnected) };
        let (reply, answer) = oneshot::channel();
        let cmd = Command::ServerRequest { conn, request_type: request_type.to_owned(), payload, reply };
        if shard.send(cmd).await.is_err() {
            return Err(ServerRequestError::NotConnected);
        }
        Ok(async move { answer.await.unwrap_or(Err(ServerRequestError::Disconnected)) })
    }

    /// The answer to the client request `token` ([`BackendRequest::token`]) that the backend
    /// answers [`Answer::Later`]: handed to the request's shard in order with everything this
    /// task handed it before. An answer after the gateway gave up (the request timed out, its
    /// connection ended) is traced there as late.
    pub async fn answer(&self, token: u64, result: Result<Reply, BackendError>) {
        let (shard, token) = split_token(token, self.shards.len());
        if let Some(shard) = self.shards.get(shard) {
            let _ = shard.send(Command::Input(Input::BackendReply { token, result })).await;
        }
    }

    /// Ids of every registered connection, in id order.
    pub fn connection_ids(&self) -> Vec<ConnectionId> {
        let mut ids: Vec<ConnectionId> = self.routes.read().expect("routes lock").keys().copied().collect();
        ids.sort();
        ids
    }

    /// Closes a connection with `close` (its session ended while its backend could not reach
    /// this gateway, say).
    pub async fn close(&self, conn: ConnectionId, close: CloseReason) {
        if let Some(shard) = self.shard_of(&conn) {
            let _ = shard.send(Command::Input(Input::Close { conn, close })).await;
        }
    }

    /// Open connections, summed over shards.
    pub fn open_connections(&self) -> usize {
        self.routes.read().expect("routes lock").len()
    }

    /// Whether `conn` is registered on any shard.
    pub fn is_connected(&self, conn: &ConnectionId) -> bool {
        self.routes.read().expect("routes lock").contains_key(conn)
    }

    /// Starts a drain on every shard.
    pub async fn drain(&self) {
        for shard in self.shards.iter() {
            let _ = shard.send(Command::Drain).await;
        }
    }
}

/// The token a backend sees for shard `index`'s core token `token` (shards number their
/// requests separately): unique across shards, and it names the shard.
pub(crate) fn backend_token(token: u64, index: usize, shards: usize) -> u64 {
    token * shards as u64 + index as u64
}

/// The shard and core token of a backend token: [`backend_token`] undone.
fn split_token(token: u64, shards: usize) -> (usize, u64) {
    let shards = shards.max(1) as u64;
    ((token % shards) as usize, token / shards)
}

/// How a backend answers a request: at once, or later through the handle (as a Phoenix
/// channel's `handle_in` returns `{:reply, ..}` or `{:noreply, ..}` and replies later).
#[derive(Debug)]
pub enum Answer {
    /// The answer, known when the request is handed over (the embedded chat, the echo).
    Now(Result<Reply, BackendError>),
    /// The backend answers later, once, through [`Connections::answer`] from any task: in order
    /// with the events and subscription changes it sent that connection before (a bus backend).
    /// The gateway times the request out on its own; an answer after that is traced as late.
    Later,
}

/// A backend the gateway forwards client requests to; one instance serves every shard. The
/// shards call it from their own tasks, so no method may block: work that waits goes to a task
/// of its own, which reaches connections through the [`Connections`] handle.
///
/// Subscriptions are the backend's to decide: it sends every change through
/// [`Connections::set_subscription`], before the answer to the request that caused it. The
/// gateway reads only the session from a successful `pcast.Authenticate` answer.
pub trait Backend: Send + Sync + 'static {
    /// Called once at start with the handle to every connection.
    fn attach(&self, _connections: Connections) {}

    /// A client request (`req.token` names it to [`Connections::answer`]).
    fn request(&self, req: BackendRequest) -> Answer;

    /// A shard gained (`on`) or lost its interest in a room's or a conversation's events: a
    /// first subscriber, a request naming the room in flight, or the last of them gone. Called
    /// in order with [`Backend::request`]: an interest reported before a request is in place
    /// before that request goes out.
    fn interest(&self, _shard: usize, _topic: Topic, _room: &str, _on: bool) {}

    /// A connection ended (`pcast.ConnectionDisconnected`).
    fn disconnected(&self, _event: pcast::ConnectionDisconnected) {}

    /// A heartbeat round trip was measured.
    fn rtt(&self, _conn: ConnectionId, _rtt: Duration) {}

    /// Whether the backend can serve now (`/readyz` is 503 while it cannot).
    fn ready(&self) -> bool {
        true
    }
}
