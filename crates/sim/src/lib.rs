//! clientmq-sim: runs the clientmq server unchanged under turmoil with scripted clients,
//! checks invariants after every trace event, and renders traces for snapshot review.
//!
//! `scenario` is the file format, `client` the scripted behaviours, `run` the runner,
//! `check` the invariant checker, `trace` the records, `plot` the SVG timeline and
//! `explore` the random fault schedules, `bus` a simulated NATS (broker host and client) for
//! gateways and workers on a bus.

pub mod backend;
pub mod bus;
pub mod check;
pub mod client;
pub mod explore;
pub mod plot;
pub mod reach;
pub mod run;
pub mod scenario;
pub mod shrink;
pub mod trace;

pub use run::{Outcome, RunOptions, run, run_with};
pub use scenario::Scenario;
