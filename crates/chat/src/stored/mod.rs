//! Chat state in the store (NATS JetStream), for workers that keep nothing of their own: the
//! layout they create and check at start. The records, the cache that follows them and the
//! decisions made on it come next; docs/nats.md ("The store") has the design.

pub mod layout;
