//! What the rest of the server sends a shard: new connections, refusals, the backend's inputs,
//! server requests, drain and death, over one bounded channel per shard; and the routes that
//! say which shard holds which connection.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use clientmq_core::{CloseReason, ConnectionId, Input, Peer, Reply, ServerRequestError};
use tokio::sync::{mpsc, oneshot};

use crate::admission::AddressSlot;
use crate::conn::Socket;

/// Which shard holds which connection, for deliveries and server requests. Routing only: the
/// shards' registries remain the only count.
pub type Routes = Arc<RwLock<HashMap<ConnectionId, usize>>>;

/// A message to a shard, handled in the order it was sent.
pub(crate) enum Command {
    /// A connection whose upgrade completed, to admit or refuse here.
    Open {
        peer: Peer,
        socket: Box<dyn Socket>,
        /// Bytes the client sent after its upgrade request, already read.
        read_ahead: Vec<u8>,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
        slot: Option<AddressSlot>,
    },
    /// A connection refused by a limit judged outside this shard, to close here.
    Refuse {
        close: CloseReason,
        /// The count the refusal was judged against: every shard's open connections plus
        /// admissions in flight.
        open: usize,
        socket: Box<dyn Socket>,
    },
    Input(Input),
    ServerRequest {
        conn: ConnectionId,
        request_type: String,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<Reply, ServerRequestError>>,
    },
    Drain,
    /// Answered once the shard has handled every command sent before this one and carried out
    /// what they caused (the interest they changed is with the backend).
    Settled(oneshot::Sender<()>),
    /// Drop every subscription of every connection with a session (the backend may have lost
    /// changes) and say what was dropped (see `Gateway::forget_subscriptions`).
    ForgetSubscriptions(oneshot::Sender<Vec<clientmq_core::Forgotten>>),
    /// Who may authenticate from now on (a reload of the token files).
    Tokens(clientmq_core::TokenPolicy),
    /// Drop every connection's transport at once, in id order (a simulated process death).
    AbortAll,
}

/// Commands queued per shard before senders wait.
const COMMAND_QUEUE: usize = 4096;

pub(crate) fn command_channel() -> (mpsc::Sender<Command>, mpsc::Receiver<Command>) {
    mpsc::channel(COMMAND_QUEUE)
}
