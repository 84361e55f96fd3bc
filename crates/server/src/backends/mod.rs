//! The backends behind the gateway's port ([`crate::port`]): [`EchoBackend`] (a minimal one for
//! tests and benchmarks), [`embedded`] (the chat application in this process) and [`bus`]
//! (workers on NATS).

use clientmq_core::proto::pcast;
use clientmq_core::{BackendRequest, Reply};

use crate::port::{Answer, Backend};

pub mod bus;
pub mod embedded;

/// A minimal built-in backend: `pcast.Authenticate` gets status `ok` and a session id equal to
/// the connection id; any other request is answered `<type>Response` echoing its payload.
#[derive(Debug, Default, Clone)]
pub struct EchoBackend;

impl Backend for EchoBackend {
    fn request(&self, req: BackendRequest) -> Answer {
        let reply = if req.request_type == "pcast.Authenticate" {
            use prost::Message as _;
            let resp = pcast::AuthenticateResponse {
                status: "ok".into(),
                session_id: Some(req.conn.to_string()),
                ..Default::default()
            };
            Reply { reply_type: "pcast.AuthenticateResponse".into(), payload: resp.encode_to_vec() }
        } else {
            Reply { reply_type: String::new(), payload: req.payload }
        };
        Answer::Now(Ok(reply))
    }
}
