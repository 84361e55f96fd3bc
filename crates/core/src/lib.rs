//! clientmq-core: the wire types of the MQ protocol and the sans-IO gateway state machine.
//!
//! Nothing here performs I/O, reads a clock or draws ambient randomness: the production server
//! and the simulator drive the same [`Gateway`] with inputs and carry out its outputs. See
//! [`Gateway`] for the contract.

pub mod auth;
pub mod calendar;
pub mod codec;
pub mod config;
pub mod edge_auth;
pub mod event;
mod gateway;
mod ids;
pub mod port;
pub mod proto;
mod registry;
pub mod seed;
mod timers;

pub use auth::{Refusal, TokenPolicy};
pub use codec::{CodecError, Delivery, Encoding, Frame};
pub use config::{CloseReason, Config, ConfigError, close};
pub use event::{DisconnectPath, DropReason, Event, EventKind, LostReason, RequestOutcome, Stray, Topic};
pub use gateway::{
    Admission, Forgotten, Gateway, Input, InvariantViolation, Output, Peer, Revision, Stats, client_address,
};
pub use ids::{ConnectionId, ID_LEN, InvalidConnectionId};
pub use port::{BackendError, BackendRequest, Reply, ServerRequestError, Target};
pub use registry::ENDED_SUBSCRIPTIONS_KEPT;
