//! clientmq-chat: the chat application behind the gateway. Sessions (`pcast.Authenticate`,
//! `pcast.Bye`) and chat rooms (`chat.*`: rooms, members, history) as the synchronous, sans-IO
//! [`ChatState`], and the [`worker`] that serves it on the bus (the `clientmq-chat` binary). The
//! gateway's embedded backend (`clientmq-server`) runs the same state in process.
//!
//! Membership lives here, and so does every decision about subscriptions: the state hands each
//! change (a join, a conversation subscribe, a leave, `pcast.Bye`, a session resumed or taken
//! over by another connection) to its host as an [`Outgoing`] item, in one order with the events
//! around it, so a subscription and the events it should or should not hear are applied in the
//! order they happened. A session keeps its rooms through a reconnect within its grace period,
//! and the connection that resumes it hears them at once; the SDK's own re-join (option
//! `reenter`) then changes nothing.

mod config;
pub mod metrics;
mod rooms;
mod state;
pub mod stored;
mod wire;
pub mod worker;

pub use config::{ChatArgs, ChatConfig, ConfigError};
pub use state::{ChatInvariant, ChatState, ChatStats, Fact};
pub use wire::{Delivery, Outgoing, Subscription, reason, status};

#[cfg(test)]
mod tests;
