//! The backend port's vocabulary: what the gateway hands a backend (a request), what comes back
//! (a reply or an error), and where a backend's deliveries go. A leaf: the gateway and every
//! backend read it; it reads nothing of theirs.

use crate::ConnectionId;
use crate::edge_auth::Claims;

/// A client request on its way to the backend.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendRequest {
    /// Answer with [`crate::Input::BackendReply`] carrying this token.
    pub token: u64,
    pub conn: ConnectionId,
    /// The session the connection authenticated as, if it has.
    pub session_id: Option<String>,
    pub remote: std::net::IpAddr,
    pub request_type: String,
    /// The request's payload; for `pcast.Authenticate`, with the gateway's fields filled in.
    pub payload: Vec<u8>,
    /// The claims of the verified digest token a `pcast.Authenticate` carries (boxed: rare, and
    /// every output would otherwise be as large).
    pub claims: Option<Box<Claims>>,
}

/// A typed answer: the message type (empty means the request's type + `Response`) and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub reply_type: String,
    pub payload: Vec<u8>,
}

/// The backend could not answer; the client gets `mq.Error{<reason>}` (see [`BackendError::reason`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The backend tried and failed: `mq.Error{failed}`.
    #[error("backend failed: {0}")]
    Failed(String),
    /// The backend cannot be reached now (the bus is down): `mq.Error{unavailable}`, at once.
    #[error("backend unavailable")]
    Unavailable,
    /// Nobody serves this request type (no worker listens): `mq.Error{no-worker}`, at once.
    #[error("no worker serves this request type")]
    NoWorker,
}

impl BackendError {
    /// The `mq.Error` reason the client gets.
    pub fn reason(&self) -> &'static str {
        match self {
            BackendError::Failed(_) => "failed",
            BackendError::Unavailable => "unavailable",
            BackendError::NoWorker => "no-worker",
        }
    }
}

/// Why a server-initiated request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ServerRequestError {
    #[error("no such connection")]
    NotConnected,
    #[error("the connection is closing")]
    NotOpen,
    #[error("too many server requests pending on the connection")]
    TooManyPending,
    #[error("the client did not answer in time")]
    Timeout,
    #[error("the connection ended before the client answered")]
    Disconnected,
}

impl ServerRequestError {
    pub fn label(self) -> &'static str {
        match self {
            ServerRequestError::NotConnected => "not-connected",
            ServerRequestError::NotOpen => "not-open",
            ServerRequestError::TooManyPending => "too-many-pending",
            ServerRequestError::Timeout => "timeout",
            ServerRequestError::Disconnected => "disconnected",
        }
    }
}

/// Who a delivery goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Connection(ConnectionId),
    /// Every connection subscribed to the room (joined it).
    Room(String),
    /// Every connection subscribed to the room's conversation.
    Conversation(String),
}
