//! The bus (docs/nats.md): a gateway whose requests go to workers over a real nats-server, with
//! the chat worker in this process. What the gateway answers itself when a request cannot go to
//! a worker: a type that is not a subject, nobody serving the type, the bus away.

use std::sync::Arc;
use std::time::Duration;

use clientmq_bus::contract::DEFAULT_PREFIX;
use clientmq_bus::nats::NatsBus;
use clientmq_chat::ChatConfig;
use clientmq_chat::worker::{self, WorkerConfig};
use clientmq_server::BusBackend;

use crate::harness::{Raw, WAIT, config, error_reason, http, start};
use clientmq_testkit::nats::Nats;
use clientmq_testkit::procs::Log;

const GATEWAY: &str = "gw-badinputs";

/// Calls `mq.PingPong` (the chat worker echoes it) on fresh connections until one is answered.
async fn until_served(addr: std::net::SocketAddr, log: &Log) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut raw = Raw::upgrade(tokio::net::TcpStream::connect(addr).await.unwrap(), &[]).await;
        let answer = raw.call("mq.PingPong", vec![8, 1]).await;
        raw.close_politely().await;
        if answer.r#type == "mq.PingPongResponse" {
            return;
        }
        let logged = log.lock().unwrap().join("\n");
        assert!(tokio::time::Instant::now() < deadline, "never served: {answer:?}\n{logged}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_no_worker_can_take_are_answered_malformed_no_worker_or_unavailable() {
    clientmq_testkit::deadline::bounded(async {
        let log = Log::default();
        let mut nats = Nats::start(&log).await;
        let worker_bus = Arc::new(NatsBus::connect(&nats.url(), "chat-badinputs").await.unwrap());
        let worker_config = WorkerConfig {
            prefix: DEFAULT_PREFIX.into(),
            chat: ChatConfig::default(),
            seed: Some(5),
            name: "chat-badinputs".into(),
            observer: None,
            metrics: None,
        };
        let (stop_worker, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(worker::run(worker_bus, worker_config, async {
            let _ = stopped.await;
        }));
        let mut c = config();
        c.gateway.route_key = GATEWAY.into();
        let bus = Arc::new(NatsBus::connect(&nats.url(), GATEWAY).await.unwrap());
        let backend = Arc::new(BusBackend::new(bus, DEFAULT_PREFIX, GATEWAY, c.gateway.request_timeout));
        let gw = start(c, backend).await;
        until_served(gw.addr, &log).await;

        let mut raw = gw.raw().await;
        // Not a subject: wildcards, spaces, empty tokens, other characters.
        let not_subjects = ["x.*", "x.>", "a b", "a..b", ".a", "a.", "é.x", "a\u{0}b"];
        for ty in not_subjects {
            let answer = raw.call(ty, vec![1]).await;
            assert_eq!(error_reason(&answer).as_deref(), Some("malformed"), "{ty:?}");
        }
        // Nobody serves it. (The failed ones before were the first calls of `until_served`.)
        let failed = r#"clientmq_requests_total{type="other",outcome="failed"}"#;
        let failed_before = gw.metric(failed);
        let answer = raw.call("nobody.Serves", vec![1]).await;
        assert_eq!(error_reason(&answer).as_deref(), Some("no-worker"));
        gw.expect(failed, failed_before + 1.0).await;
        assert!(gw.metric(r#"clientmq_bus_answers_total{reason="no-worker"}"#) >= 1.0);
        assert!(gw.metric(r#"clientmq_bus_answers_total{reason="malformed"}"#) >= 8.0);
        assert!(gw.metric("clientmq_bus_announcements_total") >= 1.0);
        assert_eq!(gw.metric("clientmq_bus_connected"), 1.0);
        assert_eq!(gw.metric("clientmq_bus_reconnects_total"), 0.0);

        // The bus goes away: requests fail at once, and /readyz says so.
        nats.stop().await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while http(gw.addr, b"GET /readyz HTTP/1.1\r\n\r\n").await.0 != 503 {
            assert!(tokio::time::Instant::now() < deadline, "/readyz still 200 with the bus down");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = tokio::time::Instant::now();
        let answer = raw.call("chat.GetRoomInfo", vec![]).await;
        assert_eq!(error_reason(&answer).as_deref(), Some("unavailable"));
        assert!(started.elapsed() < Duration::from_millis(500), "at once: {:?}", started.elapsed());
        gw.expect(r#"clientmq_requests_total{type="chat.GetRoomInfo",outcome="failed"}"#, 1.0).await;
        assert!(gw.metric(r#"clientmq_bus_answers_total{reason="unavailable"}"#) >= 1.0);
        gw.expect("clientmq_bus_connected", 0.0).await;

        // It comes back: so does service, and the count is exact throughout.
        nats.restart().await;
        until_served(gw.addr, &log).await;
        gw.expect("clientmq_bus_connected", 1.0).await;
        gw.expect("clientmq_bus_reconnects_total", 1.0).await;
        gw.still_serves(1).await;
        raw.close_politely().await;
        gw.settles(0).await;
        let _ = stop_worker.send(());
        let _ = tokio::time::timeout(WAIT, worker).await;
    })
    .await
}
