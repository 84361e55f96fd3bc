//! Chat state in the store (NATS JetStream), for workers that keep nothing of their own: the
//! layout they create and check at start, the records the buckets hold, and the cache a worker
//! keeps of them. The decisions made on the cache come next; docs/nats.md ("The store") has the
//! design.

pub mod cache;
pub mod follow;
pub mod layout;
pub mod records;
