//! The bus's floor against a real nats-server: every way of sending gets every request answered,
//! counted once, so its CPU per request divides by what was served.

use std::time::Duration;

use clientmq_bench::floor::{self, FloorLoad, Publish};
use clientmq_testkit::nats::Nats;
use clientmq_testkit::procs::Log;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_of_the_floor_is_answered_once() {
    let log = Log::default();
    let nats = Nats::start(&log).await;
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_clientmq-load"));
    // 10 connections, 4,000 requests a second, for half a second: 2,000 requests.
    let offered = |publish, batch| FloorLoad {
        publish,
        rate: 4000.0,
        connections: 10,
        load: Duration::from_millis(500),
        batch,
    };
    for (publish, batch) in [
        (Publish::Headers, 1),
        (Publish::Bare, 1),
        (Publish::Raw, 1),
        (Publish::Nothing, 1),
        (Publish::Bare, 4),
    ] {
        let run = floor::run(exe, &nats.url(), &offered(publish, batch)).await.unwrap();
        // Answers, or slots when nothing is sent. (CPU time is read in ticks of 10 ms: too
        // coarse for a run this short to assert on.)
        assert_eq!(run.answered, 2000, "{publish:?} x {batch}: {run:?}");
    }
}
