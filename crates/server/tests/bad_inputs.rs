//! Every bad input of docs/bad-inputs.md, sent as bytes on a socket to a running server: each
//! test checks the documented answer, the metric it bumps, that the open count is exact
//! afterwards, that no server task panicked, and that a fresh well-behaved client is still
//! served. The modules follow the table's layers.

mod common;

#[path = "common/bad_inputs.rs"]
mod harness;

#[path = "bad_inputs/bus.rs"]
mod bus;
#[path = "bad_inputs/envelope.rs"]
mod envelope;
#[path = "bad_inputs/framing.rs"]
mod framing;
#[path = "bad_inputs/http.rs"]
mod http;
#[path = "bad_inputs/limits.rs"]
mod limits;
#[path = "bad_inputs/payloads.rs"]
mod payloads;
#[path = "bad_inputs/tokens.rs"]
mod tokens;
