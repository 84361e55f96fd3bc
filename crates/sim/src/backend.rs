//! The backend the simulated gateway uses: the server's own backend (embedded, or the bus
//! backend of a fleet), wrapped so a scenario can make it slow, failing or silent at any point
//! on its timeline.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clientmq_core::proto::pcast;
use clientmq_core::{BackendError, BackendRequest, ConnectionId, Reply, Topic};
use clientmq_server::{Backend, Connections};

use crate::scenario::BackendMode;

#[derive(Clone)]
pub struct SimBackend<B> {
    inner: Arc<B>,
    mode: Arc<Mutex<BackendMode>>,
    /// For a failing mode's answers, when the inner backend answers itself.
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

    fn answers_itself(&self) -> bool {
        self.inner.answers_itself()
    }

    fn submit(&self, req: BackendRequest) {
        let mode = *self.mode.lock().expect("mode lock");
        match mode {
            BackendMode::Normal => self.inner.submit(req),
            BackendMode::Slow { delay_secs } => {
                let inner = self.inner.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs_f64(delay_secs)).await;
                    inner.submit(req);
                });
            }
            BackendMode::Fail => {
                let gateway = self.gateway.get().cloned();
                tokio::spawn(async move {
                    if let Some(gateway) = gateway {
                        let failed = Err(BackendError::Failed("scripted failure".into()));
                        gateway.answer(req.conn, req.token, failed).await;
                    }
                });
            }
            BackendMode::Hang => {}
        }
    }

    async fn request(&self, req: BackendRequest) -> Result<Reply, BackendError> {
        let mode = *self.mode.lock().expect("mode lock");
        match mode {
            BackendMode::Normal => self.inner.request(req).await,
            BackendMode::Slow { delay_secs } => {
                tokio::time::sleep(Duration::from_secs_f64(delay_secs)).await;
                self.inner.request(req).await
            }
            BackendMode::Fail => Err(BackendError::Failed("scripted failure".into())),
            BackendMode::Hang => std::future::pending().await,
        }
    }

    fn disconnected(&self, event: pcast::ConnectionDisconnected) {
        self.inner.disconnected(event);
    }

    fn rtt(&self, conn: ConnectionId, rtt: Duration) {
        self.inner.rtt(conn, rtt);
    }

    fn decides_subscriptions(&self) -> bool {
        self.inner.decides_subscriptions()
    }

    fn wants_interest(&self) -> bool {
        self.inner.wants_interest()
    }

    fn interest(&self, shard: usize, topic: Topic, room: &str, on: bool) {
        self.inner.interest(shard, topic, room, on);
    }

    fn ready(&self) -> bool {
        self.inner.ready()
    }
}
