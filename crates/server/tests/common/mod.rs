//! Helpers of the server's tests that need the server itself; the rest is clientmq-testkit's.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

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
