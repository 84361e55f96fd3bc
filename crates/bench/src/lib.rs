//! clientmq-bench: drives a running gateway over loopback with the real protocol, and the same
//! load against a plain tokio-tungstenite echo server (the baseline) and a Node gateway of the
//! seed's design (`bench/seed-gateway`), so that ratios between them hold on a noisy machine.
//!
//! Modes (each bounded in time, each a function here and a subcommand of `clientmq-load`):
//!
//! - [`request`]: N connections, each sending requests in a loop (closed, or rate-limited with
//!   coordinated-omission correction); requests per second, latency percentiles, errors.
//! - [`idle`]: N idle connections held open while heartbeats run; the server's resident memory
//!   per connection, read from `/proc/<pid>/status` before and after.
//! - [`churn`]: connections opened and closed in a loop; cycles per second.
//! - [`floor`]: a bare async-nats requester and responder on the request load's schedule: what
//!   one request through NATS costs the NATS clients alone, the floor under the bus figures.
//!
//! [`suite`] runs all of them against the three servers ([`servers`]), the request load through
//! the NATS bus ([`bus`]), chat sends and joins through workers keeping their state in JetStream
//! ([`store`]), plus the simulator's figures,
//! and writes the table of `BENCHMARKS.md` ([`report`]). Loopback only: [`target::Target`]
//! refuses any other address.

pub mod bus;
pub mod churn;
pub mod fanout;
pub mod floor;
pub mod frame;
pub mod helper;
pub mod idle;
pub mod plan;
pub mod procfs;
pub mod report;
pub mod request;
pub mod servers;
pub mod stats;
pub mod store;
pub mod suite;
pub mod target;
