//! Chat state in the store (NATS JetStream), for workers that keep nothing of their own: the
//! layout they create and check at start, the records the buckets hold, and the cache a worker
//! keeps of them, how a decision made on the cache is written, the decisions about sessions and
//! room members, and how the events of room decisions reach the history once. Rooms' creation and
//! settings, chat messages, and the worker that runs them all come next; docs/nats.md ("The
//! store") has the design.

#[cfg(test)]
mod answers;
pub mod cache;
pub mod conversation;
pub mod decide;
pub mod directory;
pub mod ending;
pub mod follow;
pub mod history;
pub mod layout;
#[cfg(test)]
mod lifecycle;
mod queue;
pub mod records;
mod requests;
pub mod rooms;
#[cfg(test)]
mod serving;
pub mod sessions;
mod tell;
#[cfg(test)]
pub(crate) mod testing;
pub mod worker;
