//! Two gateways and one chat worker on a real nats-server, driven by the unmodified Phenix SDK
//! (`interop/fleet.js`): clients on different gateways share a room and chat both ways in order;
//! a gateway is SIGKILLed (one client resumes its session through the other gateway, the other's
//! session ends after the grace period); nats-server stops and starts again (requests fail fast
//! while it is away, everything works after, and nothing is left in the room at the end).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use clientmq_core::proto::{chat, mq, pcast};
use clientmq_testkit::client::Client as TestClient;
use clientmq_testkit::nats::Nats;
use clientmq_testkit::node::{Asking, interop_dir, judged, npm_ci};
use clientmq_testkit::procs::{
    Log, Proc, free_port, http_get, scrape, wait_for, wait_listening, workspace_binary,
};
use prost::Message as _;
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "fleet-token";
const GRACE_SECS: u64 = 4;
const HARNESS_TIMEOUT: Duration = Duration::from_secs(120);

/// A TCP proxy whose upstream can be switched: what a load balancer does for clients whose
/// gateway died.
async fn proxy(target: Arc<AtomicU16>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = target.load(Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    port
}

/// A client below any WebSocket library, for checks the SDK cannot make.
struct Raw(TestClient);

impl Raw {
    async fn connect(port: u16) -> Raw {
        Raw(TestClient::connect(("127.0.0.1", port)).await)
    }

    /// Sends a request and waits (at most 20 s: faults are under way) for its answer: its type
    /// and payload.
    async fn call(&mut self, ty: &str, payload: Vec<u8>) -> (String, Vec<u8>) {
        let id = self.0.request(ty, payload).await;
        let answer = self.0.answer_within(&id, Duration::from_secs(20)).await;
        (answer.r#type, answer.payload)
    }

    async fn authenticate(&mut self) -> (String, Vec<u8>) {
        let auth = pcast::Authenticate {
            client_version: "test".into(),
            device_id: "raw".into(),
            platform: "test".into(),
            platform_version: "1".into(),
            authentication_token: TOKEN.into(),
            ..Default::default()
        };
        self.call("pcast.Authenticate", auth.encode_to_vec()).await
    }

    async fn close(mut self) {
        self.0.close(1000, "done").await;
        let _ = self.0.next_frame_within(Duration::from_secs(2)).await;
    }
}

fn reason(payload: &[u8]) -> String {
    mq::Error::decode(payload).map(|e| e.reason).unwrap_or_default()
}

/// Whether a fresh client on `port` authenticates: gateway, bus and worker all answer.
async fn serves(port: u16) -> bool {
    let Ok(Ok(s)) =
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(("127.0.0.1", port))).await
    else {
        return false;
    };
    let Ok(client) = TestClient::upgrade(s, &[]).await else { return false };
    let mut raw = Raw(client);
    let (ty, payload) = raw.authenticate().await;
    let ok = ty == "pcast.AuthenticateResponse"
        && pcast::AuthenticateResponse::decode(payload.as_slice()).is_ok_and(|r| r.status == "ok");
    raw.close().await;
    ok
}

fn gateway(nats: &Nats, port: u16, name: &str, log: &Log) -> Proc {
    let args = [
        "--nats",
        &nats.url(),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--gateway-name",
        name,
        "--tokens",
        TOKEN,
        "--shards",
        "2",
        "--drain-window-secs",
        "0.2",
        "--drain-deadline-secs",
        "10",
    ]
    .map(str::to_owned);
    Proc::spawn(env!("CARGO_BIN_EXE_clientmq-server"), &args, name, log)
}

/// The bus goes away: the gateway says it is not ready and answers requests at once with
/// `unavailable`; then it comes back and the worker answers again.
async fn bus_outage(nats: &mut Nats, gw2: u16, worker: u16, log: &Log) {
    let mut raw = Raw::connect(gw2).await;
    nats.stop().await;
    wait_for(Duration::from_secs(15), "/readyz 503 while the bus is away", log, || async {
        http_get(gw2, "/readyz").await.0 == 503 && http_get(worker, "/readyz").await.0 == 503
    })
    .await;
    let started = Instant::now();
    let (ty, payload) = raw.authenticate().await;
    let took = started.elapsed();
    assert_eq!((ty.as_str(), reason(&payload).as_str()), ("mq.Error", "unavailable"));
    assert!(took < Duration::from_secs(1), "failed fast: {took:?}");
    raw.close().await;
    nats.restart().await;
    wait_for(Duration::from_secs(20), "/readyz 200 again", log, || async {
        http_get(gw2, "/readyz").await.0 == 200 && http_get(worker, "/readyz").await.0 == 200
    })
    .await;
    assert!(
        scrape(worker, "clientmq_chat_bus_reconnects_total").await >= 1.0,
        "the worker counts its return"
    );
    wait_for(Duration::from_secs(20), "the worker answering again", log, || serves(gw2)).await;
}

/// After everyone left: the room has no member left, and gateway 2 holds only this client.
async fn nothing_left(gw2: u16, alias: &str) {
    let mut raw = Raw::connect(gw2).await;
    let (ty, _) = raw.authenticate().await;
    assert_eq!(ty, "pcast.AuthenticateResponse");
    let info = chat::GetRoomInfo { alias: Some(alias.into()), ..Default::default() };
    let (ty, payload) = raw.call("chat.GetRoomInfo", info.encode_to_vec()).await;
    assert_eq!(ty, "chat.GetRoomInfoResponse");
    let info = chat::GetRoomInfoResponse::decode(payload.as_slice()).unwrap();
    assert_eq!(info.status, "ok", "the room is still known");
    assert!(info.members.is_empty(), "nothing left in the room: {:?}", info.members);
    assert_eq!(scrape(gw2, "clientmq_connections_open").await, 1.0);
    raw.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_and_a_chat_worker_on_nats_serve_the_sdk_through_faults() {
    through_faults(false).await;
}

/// The same with the worker on the store (JetStream, kept across the server's restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_and_a_stored_chat_worker_serve_the_sdk_through_faults() {
    through_faults(true).await;
}

async fn through_faults(store: bool) {
    clientmq_testkit::deadline::bounded(async {
        let dir = interop_dir();
        npm_ci(&dir, "phenix-web-sdk/dist/phenix-node-sdk.js").await;
        let log = Log::default();
        let store_dir =
            clientmq_testkit::procs::target_dir().join(format!("tmp/fleet-store-{}", free_port()));
        let store_dir = store_dir.display().to_string();
        let mut nats = match store {
            true => Nats::start_with(&log, &["-js", "-sd", &store_dir]).await,
            false => Nats::start(&log).await,
        };
        let chat_binary = workspace_binary("clientmq-chat").display().to_string();
        let grace = GRACE_SECS.to_string();
        let worker_port = free_port();
        let worker_listen = format!("127.0.0.1:{worker_port}");
        let worker_args = ["--nats", &nats.url(), "--session-grace-secs", &grace, "--seed", "5"]
            .into_iter()
            .chain(["--listen", &worker_listen])
            .chain((!store).then_some("--memory"))
            .map(str::to_owned)
            .collect::<Vec<_>>();
        let worker = Proc::spawn(&chat_binary, &worker_args, "chat", &log);
        let (p1, p2) = (free_port(), free_port());
        let gw1 = gateway(&nats, p1, "gw1", &log);
        let gw2 = gateway(&nats, p2, "gw2", &log);
        wait_listening(worker_port, "the worker's /healthz").await;
        assert_eq!(http_get(worker_port, "/healthz").await.0, 200);
        for port in [p1, p2] {
            wait_listening(port, "a gateway").await;
            wait_for(Duration::from_secs(20), "gateway, bus and worker to serve", &log, || serves(port))
                .await;
        }
        let upstream = Arc::new(AtomicU16::new(p1));
        let proxy_port = proxy(upstream.clone()).await;

        let env = [
            ("CLIENTMQ_GW1_PORT", p1.to_string()),
            ("CLIENTMQ_GW2_PORT", p2.to_string()),
            ("CLIENTMQ_PROXY_PORT", proxy_port.to_string()),
            ("CLIENTMQ_TOKEN", TOKEN.to_owned()),
            ("CLIENTMQ_GRACE_MS", (GRACE_SECS * 1000).to_string()),
        ];
        let mut harness = Asking::spawn("fleet.js", &dir, &env, &log);
        let mut gw1 = Some(gw1);
        let mut room = None;
        let run = async {
            while let Some(what) = harness.next_ask().await {
                match what.as_str() {
                    "kill-gw1" => {
                        gw1.take().expect("one kill").kill().await;
                        upstream.store(p2, Ordering::SeqCst);
                        harness.answer("done").await;
                    }
                    "stop-nats" => {
                        bus_outage(&mut nats, p2, worker_port, &log).await;
                        harness.answer("done").await;
                    }
                    other => {
                        if let Some(alias) = other.strip_prefix("room ") {
                            room = Some(alias.to_owned());
                        }
                    }
                }
            }
            harness.exit().await
        };
        let outcome = tokio::time::timeout(HARNESS_TIMEOUT, run).await;
        judged(outcome, HARNESS_TIMEOUT, "ok - fleet harness passed", &log);
        nothing_left(p2, &room.expect("the harness names its room")).await;
        // The worker's own view, on its --listen port: what it served, and whom it tracks.
        let served = |ty: &str| format!("clientmq_chat_requests_total{{type=\"{ty}\",outcome=\"ok\"}}");
        assert!(scrape(worker_port, &served("pcast.Authenticate")).await >= 2.0);
        assert!(scrape(worker_port, &served("chat.GetRoomInfo")).await >= 1.0);
        wait_for(Duration::from_secs(5), "the worker's gauges", &log, || async {
            scrape(worker_port, "clientmq_chat_gateways").await >= 2.0
                && scrape(worker_port, "clientmq_chat_rooms").await >= 1.0
                && scrape(worker_port, "clientmq_chat_bus_connected").await == 1.0
        })
        .await;
        gw2.terminate(Duration::from_secs(15)).await;
        worker.terminate(Duration::from_secs(5)).await;
        nats.stop().await;
        let _ = std::fs::remove_dir_all(&store_dir);
    })
    .await
}
