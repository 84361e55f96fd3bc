//! Bounds on waiting: a test that waits for something that never comes fails with what it was
//! waiting for instead of hanging CI.

use std::time::Duration;

/// How long any one test over sockets and processes may take. Each wait a test can name has its
/// own, shorter deadline; this one catches the rest, so a regression that leaves a wait
/// unanswered fails its test (and drops, so kills, the processes it started) instead of hanging CI.
/// Generous: it includes a first `npm ci` and a first nats-server install on a fresh machine
/// (each bounded itself at 3 minutes).
pub const TEST_DEADLINE: Duration = Duration::from_secs(300);

/// Runs a test body under [`TEST_DEADLINE`].
pub async fn bounded<F: std::future::Future>(test: F) -> F::Output {
    match tokio::time::timeout(TEST_DEADLINE, test).await {
        Ok(out) => out,
        Err(_) => panic!("the test did not end within {TEST_DEADLINE:?}: a wait was never answered"),
    }
}

/// Polls `cond` every 10 ms until it holds; panics after `within`.
pub async fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
