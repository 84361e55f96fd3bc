//! The test harness: a gateway driven step by step, with every output and event kept.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clientmq_core::proto::{mq, pcast};
use clientmq_core::{
    Admission, BackendError, Config, ConnectionId, DisconnectPath, Encoding, Event, EventKind, Gateway,
    Input, Output, Peer, Reply, codec,
};
use mq::message::MessageType;
use prost::Message as _;
use rand::SeedableRng;
use rand::rngs::StdRng;

pub const SEC: Duration = Duration::from_secs(1);

pub struct Harness {
    pub gw: Gateway,
    pub start: Instant,
    pub now: Instant,
    pub outputs: Vec<Output>,
    pub events: Vec<Event>,
}

impl Harness {
    pub fn new(config: Config) -> Self {
        let start = Instant::now();
        let gw = Gateway::new(config, Box::new(StdRng::seed_from_u64(1)), start).unwrap();
        Harness { gw, start, now: start, outputs: Vec::new(), events: Vec::new() }
    }

    pub fn drain(&mut self) {
        while let Some(o) = self.gw.poll_output() {
            self.outputs.push(o);
        }
        while let Some(e) = self.gw.poll_event() {
            self.events.push(e);
        }
        self.gw.check_invariants().unwrap();
    }

    pub fn open_from(&mut self, addr: &str, headers: &[(&str, &str)]) -> Admission {
        let peer = Peer {
            addr: addr.parse::<SocketAddr>().unwrap(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        let a = self.gw.open(&peer, self.now);
        self.drain();
        a
    }

    pub fn open(&mut self) -> ConnectionId {
        match self.open_from("10.0.0.1:5000", &[]) {
            Admission::Accepted(id) => id,
            other => panic!("expected admission, got {other:?}"),
        }
    }

    pub fn input(&mut self, input: Input) {
        self.gw.handle(input, self.now);
        self.drain();
    }

    /// Advances time, firing every timer on the way at its own deadline.
    pub fn advance(&mut self, by: Duration) {
        let target = self.now + by;
        while let Some(at) = self.gw.poll_timeout().filter(|at| *at <= target) {
            self.now = at;
            self.gw.handle_timeout(at);
            self.drain();
        }
        self.now = target;
        self.gw.handle_timeout(target);
        self.drain();
    }

    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    pub fn events_of(&self, id: ConnectionId) -> Vec<&EventKind> {
        self.events.iter().filter(|e| e.conn == Some(id)).map(|e| &e.kind).collect()
    }

    pub fn disconnects_of(&self, id: ConnectionId) -> Vec<(DisconnectPath, u16)> {
        self.events_of(id)
            .into_iter()
            .filter_map(|k| match k {
                EventKind::Disconnected { path, code, .. } => Some((*path, *code)),
                _ => None,
            })
            .collect()
    }

    pub fn request(&mut self, id: ConnectionId, request_id: &str, ty: &str, payload: Vec<u8>, enc: Encoding) {
        let msg = mq::Message {
            request_id: Some(request_id.into()),
            r#type: ty.into(),
            payload,
            message_type: Some(MessageType::Request as i32),
            ..Default::default()
        };
        self.input(Input::Frame { conn: id, frame: codec::encode(&msg, enc) });
    }

    pub fn backend_tokens(&self) -> Vec<(u64, String, Vec<u8>)> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Backend(b) => Some((b.token, b.request_type.clone(), b.payload.clone())),
                _ => None,
            })
            .collect()
    }

    /// Messages sent to `id`, decoded.
    pub fn sent_to(&self, id: ConnectionId) -> Vec<(Encoding, mq::Message)> {
        self.outputs
            .iter()
            .flat_map(|o| o.data_frames())
            .filter(|(conn, _)| *conn == id)
            .map(|(_, frame)| (frame.encoding(), codec::decode(&frame, usize::MAX).unwrap()))
            .collect()
    }

    pub fn closes_of(&self, id: ConnectionId) -> Vec<u16> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Close { conn, close } if *conn == id => Some(close.code),
                _ => None,
            })
            .collect()
    }
}

pub fn error_reason(msg: &mq::Message) -> String {
    assert_eq!(msg.r#type, "mq.Error");
    mq::Error::decode(msg.payload.as_slice()).unwrap().reason
}

pub fn ok_reply<M: prost::Message>(ty: &str, m: M) -> Result<Reply, BackendError> {
    Ok(Reply { reply_type: ty.into(), payload: m.encode_to_vec() })
}

pub fn auth_payload() -> Vec<u8> {
    pcast::Authenticate {
        client_version: "2022.0.2".into(),
        device_id: "d".into(),
        platform: "node".into(),
        platform_version: "20".into(),
        authentication_token: "t".into(),
        ..Default::default()
    }
    .encode_to_vec()
}
