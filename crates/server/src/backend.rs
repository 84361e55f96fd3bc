//! The backend port (the seed's MQWorker): client requests go out, replies come back, and the
//! backend pushes events and server requests through a [`GatewayHandle`].

use std::future::Future;
use std::time::Duration;

use clientmq_core::proto::pcast;
use clientmq_core::{BackendError, BackendRequest, ConnectionId, Reply};

use crate::shard::GatewayHandle;

/// A backend the gateway forwards client requests to. One instance serves every shard.
pub trait Backend: Send + Sync + 'static {
    /// Called once at start with a handle for deliveries and server-initiated requests.
    fn attach(&self, _gateway: GatewayHandle) {}

    /// Answers one client request. The gateway bounds it with the request timeout: a future
    /// that never finishes is dropped and the client gets `mq.Error{timeout}`.
    fn request(&self, req: BackendRequest) -> impl Future<Output = Result<Reply, BackendError>> + Send;

    /// A connection ended (`pcast.ConnectionDisconnected`).
    fn disconnected(&self, _event: pcast::ConnectionDisconnected) {}

    /// A heartbeat round trip was measured.
    fn rtt(&self, _conn: ConnectionId, _rtt: Duration) {}
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
