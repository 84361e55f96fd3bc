//! Server-initiated requests: a backend asks a client, the client's answer comes back.

use super::requests::{PendingServerRequest, message};
use super::{Gateway, Output};
use crate::ConnectionId;
use crate::event::{DropReason, EventKind, Stray};
use crate::port::{Reply, ServerRequestError};
use crate::proto::mq;
use crate::timers::Timer;

use mq::message::MessageType;

impl Gateway {
    pub(crate) fn on_client_response(&mut self, id: ConnectionId, msg: mq::Message) {
        let number =
            msg.request_id.as_deref().and_then(|r| r.strip_prefix('S')).and_then(|n| n.parse::<u64>().ok());
        let Some(n) = number else {
            return self.drop_frame(id, DropReason::UnsolicitedResponse);
        };
        match self.server_requests.get(&n) {
            Some(req) if req.conn == id => {
                let req = self.server_requests.remove(&n).expect("just seen");
                self.timers.disarm(req.deadline, Timer::ServerRequest(n));
                if let Some(conn) = self.registry.get_mut(&id) {
                    conn.server_requests.remove(&n);
                }
                let reply = Reply { reply_type: msg.r#type, payload: msg.payload };
                self.push(Output::ServerRequestDone { token: req.token, result: Ok(reply) });
                self.trace(
                    Some(id),
                    EventKind::ServerRequestDone { request_id: format!("S{n}"), outcome: "ok" },
                );
            }
            // Pending, but on another connection: not this client's to answer.
            Some(_) => self.drop_frame(id, DropReason::UnsolicitedResponse),
            // Numbers are issued in order: one below the counter was ours once, so it is late.
            None if n < self.next_server_request => self.drop_frame(id, DropReason::LateResponse),
            None => self.drop_frame(id, DropReason::UnsolicitedResponse),
        }
    }

    pub(crate) fn on_server_request(
        &mut self,
        token: u64,
        id: ConnectionId,
        request_type: String,
        payload: Vec<u8>,
    ) {
        let refusal = match self.registry.get(&id) {
            None => Some(ServerRequestError::NotConnected),
            Some(c) if !c.is_open() => Some(ServerRequestError::NotOpen),
            Some(c) if c.server_requests.len() >= self.config.max_pending_server_requests => {
                Some(ServerRequestError::TooManyPending)
            }
            Some(_) => None,
        };
        if let Some(error) = refusal {
            if error == ServerRequestError::NotConnected {
                self.stray(id, Stray::ServerRequest);
            }
            return self.push(Output::ServerRequestDone { token, result: Err(error) });
        }
        let n = self.next_server_request;
        self.next_server_request += 1;
        let deadline = self.now + self.config.server_request_timeout;
        let request_id = format!("S{n}");
        self.registry.get_mut(&id).expect("checked above").server_requests.insert(n);
        self.server_requests.insert(n, PendingServerRequest { conn: id, token, deadline });
        self.timers.arm(deadline, Timer::ServerRequest(n));
        self.send_message(id, None, message(MessageType::Request, Some(&request_id), &request_type, payload));
        self.trace(Some(id), EventKind::ServerRequestSent { request_id, request_type });
    }

    pub(crate) fn on_server_request_timeout(&mut self, n: u64) {
        self.end_server_request(n, ServerRequestError::Timeout, false);
    }

    pub(crate) fn fail_server_request_on_disconnect(&mut self, n: u64) {
        self.end_server_request(n, ServerRequestError::Disconnected, true);
    }

    fn end_server_request(&mut self, n: u64, error: ServerRequestError, disarm: bool) {
        let Some(req) = self.server_requests.remove(&n) else {
            return;
        };
        if disarm {
            self.timers.disarm(req.deadline, Timer::ServerRequest(n));
        }
        if let Some(conn) = self.registry.get_mut(&req.conn) {
            conn.server_requests.remove(&n);
        }
        self.push(Output::ServerRequestDone { token: req.token, result: Err(error) });
        self.trace(
            Some(req.conn),
            EventKind::ServerRequestDone { request_id: format!("S{n}"), outcome: error.label() },
        );
    }
}
