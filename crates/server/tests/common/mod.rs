//! Helpers shared by the tests that start the server binary.

pub mod procs;

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A request message.
#[allow(dead_code)] // not every test binary that includes this module sends requests
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

/// Connects to `ws://127.0.0.1:{port}/ws`, retrying for up to 5 s while the binary starts.
#[allow(dead_code)]
pub async fn connect_when_up(port: u16) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
    let url = format!("ws://127.0.0.1:{port}/ws");
    for _ in 0..100 {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(&url).await {
            return ws;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server on port {port} did not come up");
}

/// Polls `cond` every 10 ms until it holds; panics after `within`.
#[allow(dead_code)] // not every test binary that includes this module waits
pub async fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A series' value in the server's Prometheus text; a series never written reads 0, as in
/// Prometheus.
#[allow(dead_code)]
pub fn metric(server: &clientmq_server::Server, series: &str) -> f64 {
    server
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// How long any one test over sockets and processes may take. Each wait a test can name has its
/// own, shorter deadline; this one catches the rest, so a regression that leaves a wait
/// unanswered fails its test (and drops, so kills, the processes it started) instead of hanging CI.
/// Generous: it includes a first `npm ci` on a fresh machine (bounded itself at 3 minutes).
pub const TEST_DEADLINE: Duration = Duration::from_secs(300);

/// Runs a test body under [`TEST_DEADLINE`].
pub async fn bounded<F: std::future::Future>(test: F) -> F::Output {
    match tokio::time::timeout(TEST_DEADLINE, test).await {
        Ok(out) => out,
        Err(_) => panic!("the test did not end within {TEST_DEADLINE:?}: a wait was never answered"),
    }
}
