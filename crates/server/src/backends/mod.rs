//! The backend port (the seed's MQWorker): client requests go out, replies come back, and the
//! backend pushes events and server requests through a [`GatewayHandle`].

use std::future::Future;
use std::time::Duration;

use clientmq_core::proto::pcast;
use clientmq_core::{BackendError, BackendRequest, ConnectionId, Reply, Topic};

use crate::shard::GatewayHandle;

pub mod bus;
pub mod embedded;

/// A backend the gateway forwards client requests to. One instance serves every shard.
pub trait Backend: Send + Sync + 'static {
    /// Called once at start with a handle for deliveries and server-initiated requests.
    fn attach(&self, _gateway: GatewayHandle) {}

    /// Answers one client request. The gateway bounds it with the request timeout: a future
    /// that never finishes is dropped and the client gets `mq.Error{timeout}`. A backend that
    /// answers itself ([`Backend::answers_itself`]) is never asked.
    fn request(&self, req: BackendRequest) -> impl Future<Output = Result<Reply, BackendError>> + Send {
        let _ = req;
        std::future::ready(Err(BackendError::Unavailable))
    }

    /// Whether answers come back through [`GatewayHandle::answer`] instead of from the future of
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

/// A minimal built-in backend: `pcast.Authenticate` gets status `ok` and a session id equal to
/// the connection id; any other request is answered `<type>Response` echoing its payload.
#[derive(Debug, Default, Clone)]
pub struct EchoBackend;

impl Backend for EchoBackend {
    fn request(&self, req: BackendRequest) -> impl Future<Output = Result<Reply, BackendError>> + Send {
        let reply = if req.request_type == "pcast.Authenticate" {
            use prost::Message as _;
            let resp = pcast::AuthenticateResponse {
                status: "ok".into(),
                session_id: Some(req.conn.to_string()),
                ..Default::default()
            };
            Reply { reply_type: "pcast.AuthenticateResponse".into(), payload: resp.encode_to_vec() }
        } else {
            Reply { reply_type: String::new(), payload: req.payload }
        };
        std::future::ready(Ok(reply))
    }
}
