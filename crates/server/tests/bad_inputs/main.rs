//! Every bad input of docs/bad-inputs.md, sent as bytes on a socket to a running server: each
//! test checks the documented answer, the metric it bumps, that the open count is exact
//! afterwards, that no server task panicked, and that a fresh well-behaved client is still
//! served. The modules follow the table's layers.

mod harness;

mod bus;
mod envelope;
mod framing;
mod http;
mod limits;
mod payloads;
mod tokens;
