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

    /// Subscribes a connection to a room or conversation (`subscribe`), or unsubscribes it.
    pub async fn set_subscription(&self, conn: ConnectionId, topic: Topic, room: &str, subscribe: bool) {
        if let Some(shard) = self.shard_of(&conn) {
            let input = Input::Subscription { conn, topic, room: room.to_owned(), subscribe };
            let _ = shard.send(Command::Input(input)).await;
        }
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

    /// The answer to a client request of `conn` (core token `token`), from a backend that
    /// answers itself: handed to the connection's shard in order with everything else the
    /// backend handed it before. Nothing when the connection is gone.
    pub async fn answer(&self, conn: ConnectionId, token: u64, result: Result<Reply, BackendError>) {
        if let Some(shard) = self.shard_of(&conn) {
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

/// A backend the gateway forwards client requests to. One instance serves every shard.
pub trait Backend: Send + Sync + 'static {
    /// Called once at start with a handle for deliveries and server-initiated requests.
    fn attach(&self, _gateway: Connections) {}

    /// Answers one client request. The gateway bounds it with the request timeout: a future
    /// that never finishes is dropped and the client gets `mq.Error{timeout}`. A backend that
    /// answers itself ([`Backend::answers_itself`]) is never asked.
    fn request(&self, req: BackendRequest) -> impl Future<Output = Result<Reply, BackendError>> + Send {
        let _ = req;
        std::future::ready(Err(BackendError::Unavailable))
    }

    /// Whether answers come back through [`Connections::answer`] instead of from the future of
    /// [`Backend::request`]: a bus backend, so that an answer and whatever it sends the
    /// connection around it reach the connection's shard in one order.
    fn answers_itself(&self) -> bool {
        false
    }

    /// Starts a request of a backend that answers itself. The gateway times it out on its own;
    /// an answer after that is traced as late.
    fn submit(&self, _req: BackendRequest) {}

    /// A connection ended (`pcast.ConnectionDisconnected`).
    fn disconnected(&self, _event: pcast::ConnectionDisconnected) {}

    /// A heartbeat round trip was measured.
    fn rtt(&self, _conn: ConnectionId, _rtt: Duration) {}

    /// Whether this backend decides subscriptions itself, sending every change through the
    /// handle in one order with its events and replies, instead of the gateway reading them from
    /// replies (the seed's way, and the default).
    fn decides_subscriptions(&self) -> bool {
        false
    }

    /// Whether it wants [`Backend::interest`] calls.
    fn wants_interest(&self) -> bool {
        false
    }

    /// A shard gained (`on`) or lost its interest in a room's or a conversation's events. Called
    /// in order with [`Backend::request`]: an interest reported before a request is in place
    /// before that request goes out.
    fn interest(&self, _shard: usize, _topic: Topic, _room: &str, _on: bool) {}

    /// Whether the backend can serve now (`/readyz` is 503 while it cannot).
    fn ready(&self) -> bool {
        true
    }
}
