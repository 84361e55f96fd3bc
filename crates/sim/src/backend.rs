//! The backend the simulated gateway uses: the server's own backend (embedded, or the bus
//! backend of a fleet), wrapped so a scenario can make it slow, failing or silent at any point
//! on its timeline.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clientmq_core::proto::pcast;
use clientmq_core::{BackendError, BackendRequest, ConnectionId, Topic};
use clientmq_server::{Answer, Backend, Connections};

use crate::scenario::BackendMode;

#[derive(Clone)]
pub struct SimBackend<B> {
    inner: Arc<B>,
    mode: Arc<Mutex<BackendMode>>,
    /// For a slow mode's answers, given after the delay.
    gateway: Arc<std::sync::OnceLock<Connections>>,
}

impl<B: Backend> SimBackend<B> {
    pub fn new(inner: B, mode: BackendMode) -> Self {
        Self::sharing(inner, Arc::new(Mutex::new(mode)))
    }

    /// A backend whose mode is the shared `mode` (a restarted gateway keeps the timeline's mode).
    pub fn sharing(inner: B, mode: Arc<Mutex<BackendMode>>) -> Self {
        SimBackend { inner: Arc::new(inner), mode, gateway: Arc::default() }
    }

    /// A handle that changes the mode of every clone.
    pub fn mode(&self) -> Arc<Mutex<BackendMode>> {
        self.mode.clone()
    }
}

impl<B: Backend> Backend for SimBackend<B> {
    fn attach(&self, gateway: Connections) {
        let _ = self.gateway.set(gateway.clone());
        self.inner.attach(gateway);
    }

    fn request(&self, req: BackendRequest) -> Answer {
        let mode = *self.mode.lock().expect("mode lock");
        match mode {
            BackendMode::Normal => self.inner.request(req),
            BackendMode::Slow { delay_secs } => {
                let (inner, gateway) = (self.inner.clone(), self.gateway.get().cloned());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs_f64(delay_secs)).await;
                    let token = req.token;
                    if let (Answer::Now(result), Some(gateway)) = (inner.request(req), gateway) {
                        gateway.answer(token, result).await;
                    }
                });
                Answer::Later
            }
            BackendMode::Fail => Answer::Now(Err(BackendError::Failed("scripted failure".into()))),
            BackendMode::Hang => Answer::Later,
        }
    }

    fn disconnected(&self, event: pcast::ConnectionDisconnected) {
        self.inner.disconnected(event);
    }

    fn rtt(&self, conn: ConnectionId, rtt: Duration) {
        self.inner.rtt(conn, rtt);
    }

    fn interest(&self, shard: usize, topic: Topic, room: &str, on: bool) {
        self.inner.interest(shard, topic, room, on);
    }

    fn ready(&self) -> bool {
        self.inner.ready()
    }
}
