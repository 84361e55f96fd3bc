//! EdgeAuth claims over the bus: a gateway with `--nats` and `--edge-auth-file` verifies a digest
//! token (minted now by the real `phenix-edge-auth` package, `node interop/edge-auth.js mint`)
//! and forwards the `pcast.Authenticate` to `interop/worker.js` with the verified claims in
//! `Clientmq-Application` and `Clientmq-Claims` (base64 of the claims JSON as signed). The
//! worker's `demo.Whoami` reports those headers as it saw them on the connection's Authenticate.
//!
//! Needs nats-server, Node.js and npm (`npm ci --ignore-scripts` runs once in interop/ when the
//! packages are missing).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clientmq_core::edge_auth::{Claims, RequiredTag, TokenType};
use clientmq_core::proto::{mq, pcast};
use clientmq_testkit::client::Client as TestClient;
use clientmq_testkit::nats::Nats;
use clientmq_testkit::node::{interop_dir, node_worker, npm_ci};
use clientmq_testkit::procs::{Log, Proc, free_port, http_get, wait_for};
use prost::Message as _;

const APP: &str = "bus-edge-app";
const SECRET: &str = "bus-edge-s3cret";
const STATIC_TOKEN: &str = "bus-static-token";
const PREFIX: &str = "edgebus";
const WAIT: Duration = Duration::from_secs(5);
const DEADLINE: Duration = Duration::from_secs(60);

/// A token minted now by `phenix-edge-auth`, and its claims JSON exactly as signed.
async fn mint(args: &[&str]) -> (String, String) {
    let out = tokio::process::Command::new("node")
        .arg("edge-auth.js")
        .arg("mint")
        .args(["--application", APP, "--secret", SECRET])
        .args(args)
        .current_dir(interop_dir())
        .kill_on_drop(true)
        .output()
        .await
        .expect("node runs (Node.js is needed for this test)");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "mint failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let field = |name: &str| {
        let prefix = format!("{name} ");
        text.lines().find_map(|l| l.strip_prefix(prefix.as_str())).expect(name).to_owned()
    };
    (field("token"), field("claims"))
}

/// A client speaking MQ in binary frames, with this test's requests.
struct Client(TestClient);

impl Client {
    async fn connect(port: u16) -> Client {
        Client(TestClient::connect_when_up(port).await)
    }

    async fn call(&mut self, ty: &str, payload: Vec<u8>) -> mq::Message {
        self.0.call(ty, payload).await
    }

    async fn authenticate(&mut self, token: &str, session: Option<&str>) -> pcast::AuthenticateResponse {
        let auth = pcast::Authenticate {
            authentication_token: token.into(),
            session_id: session.map(str::to_owned),
            ..Default::default()
        };
        let reply = self.call("pcast.Authenticate", auth.encode_to_vec()).await;
        assert_eq!(reply.r#type, "pcast.AuthenticateResponse", "{reply:?}");
        pcast::AuthenticateResponse::decode(reply.payload.as_slice()).unwrap()
    }

    /// The worker's `demo.Whoami`, as `name value` pairs.
    async fn whoami(&mut self) -> Vec<(String, String)> {
        let reply = self.call("demo.Whoami", Vec::new()).await;
        assert_eq!(reply.r#type, "demo.WhoamiResponse", "{reply:?}");
        String::from_utf8(reply.payload)
            .unwrap()
            .lines()
            .map(|l| {
                let (name, value) = l.split_once(' ').unwrap_or((l, ""));
                (name.to_owned(), value.to_owned())
            })
            .collect()
    }

    /// Closes politely and reads until the server's close.
    async fn close(mut self) {
        self.0.close(1000, "").await;
        while let Some(Ok(Some(frame))) = self.0.next_frame_within(WAIT).await {
            if frame.opcode == clientmq_testkit::rawws::CLOSE {
                break;
            }
        }
    }

    /// How many `pcast.Authenticate` the worker has seen (`demo.Stats`).
    async fn authentications_seen(&mut self) -> u64 {
        let reply = self.call("demo.Stats", Vec::new()).await;
        let stats = String::from_utf8(reply.payload).unwrap();
        stats.lines().find_map(|l| l.strip_prefix("pcast.Authenticate ")?.parse().ok()).unwrap_or(0)
    }
}

fn field<'a>(whoami: &'a [(String, String)], name: &str) -> &'a str {
    whoami.iter().find(|(n, _)| n == name).map_or_else(|| panic!("no {name} in {whoami:?}"), |(_, v)| v)
}

/// The claims the worker saw, decoded from `Clientmq-Claims`: the JSON exactly as signed.
fn claims_seen(whoami: &[(String, String)]) -> String {
    let decoded = STANDARD.decode(field(whoami, "claims")).expect("Clientmq-Claims is standard base64");
    String::from_utf8(decoded).expect("UTF-8 JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_gets_the_verified_claims_of_an_edge_auth_token_in_headers() {
    clientmq_testkit::deadline::bounded(async {
        let log = Log::default();
        let outcome = tokio::time::timeout(DEADLINE, claims_over_the_bus(log.clone())).await;
        let transcript = log.lock().unwrap().join("\n");
        println!("--- log ---\n{transcript}\n--- end of log ---");
        outcome.unwrap_or_else(|_| panic!("the test did not finish within {DEADLINE:?}"));
    })
    .await
}

async fn claims_over_the_bus(log: Log) {
    let dir = std::env::temp_dir().join(format!("clientmq-edge-auth-bus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secrets = dir.join("edge-auth");
    std::fs::write(&secrets, format!("{APP} {SECRET}\n")).unwrap();

    npm_ci(&interop_dir(), "phenix-edge-auth/package.json").await;
    npm_ci(&interop_dir(), "nats").await;
    let nats = Nats::start(&log).await;
    let port = free_port();
    let args = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--nats",
        &nats.url(),
        "--nats-prefix",
        PREFIX,
        "--edge-auth-file",
        &secrets.display().to_string(),
        "--tokens",
        STATIC_TOKEN,
        "--close-timeout-secs",
        "2",
        "--drain-window-secs",
        "0.2",
    ]
    .map(str::to_owned);
    let gateway = Proc::spawn(env!("CARGO_BIN_EXE_clientmq-server"), &args, "gateway", &log);
    wait_for(WAIT, "the gateway on the bus (/readyz 200)", &log, || async {
        http_get(port, "/readyz").await.0 == 200
    })
    .await;
    let worker = node_worker(&nats, PREFIX, &log).await;

    // A static token: the worker gets the Authenticate without claims headers.
    let mut a = Client::connect(port).await;
    let plain = a.authenticate(STATIC_TOKEN, None).await;
    assert_eq!(plain.status, "ok", "{plain:?}");
    let session = plain.session_id.expect("the worker's session id");
    let whoami = a.whoami().await;
    assert_eq!((field(&whoami, "application"), field(&whoami, "claims")), ("", ""), "{whoami:?}");

    // A digest token limited to a room: the worker sees the application and the signed claims.
    let (token, signed) = mint(&["--expires-in", "120", "--auth-only", "--room", "r1"]).await;
    let mut b = Client::connect(port).await;
    let answer = b.authenticate(&token, None).await;
    assert_eq!(answer.status, "ok", "{answer:?}");
    let whoami = b.whoami().await;
    assert_eq!(field(&whoami, "application"), APP, "{whoami:?}");
    assert_eq!(claims_seen(&whoami), signed, "Clientmq-Claims is the claims JSON byte for byte");
    let claims = Claims::from_verified(APP, &claims_seen(&whoami)).expect("claims a gateway verified");
    assert_eq!(claims.required_tag, Some(RequiredTag::RoomId("r1".into())));
    assert_eq!(claims.token_type, TokenType::Auth);
    assert_eq!(claims.session_id, None);
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(
        (now_ms + 60_000..now_ms + 121_000).contains(&claims.expires_ms),
        "expires ~120 s from now: {} (now {now_ms})",
        claims.expires_ms
    );

    // A digest token minted for a's session resumes it on another connection; the claims say so.
    let (token, signed) = mint(&["--expires-in", "120", "--session", &session, "--room", "r1"]).await;
    let mut c = Client::connect(port).await;
    let resumed = c.authenticate(&token, Some(&session)).await;
    assert_eq!((resumed.status.as_str(), resumed.session_id.as_deref()), ("ok", Some(session.as_str())));
    let whoami = c.whoami().await;
    assert_eq!(field(&whoami, "session"), session, "{whoami:?}");
    assert_eq!(field(&whoami, "application"), APP, "{whoami:?}");
    assert_eq!(claims_seen(&whoami), signed);
    let claims = Claims::from_verified(APP, &signed).unwrap();
    assert_eq!(claims.session_id.as_deref(), Some(session.as_str()));
    assert_eq!(claims.required_tag, Some(RequiredTag::RoomId("r1".into())));
    assert_eq!(claims.token_type, TokenType::Unrestricted);
    assert!(signed.contains(&format!("\"sessionId\":\"{session}\"")) && signed.contains("\"expires\":"));

    // Refused tokens never reach the worker: a wrong secret, and the session token without its session.
    let seen = c.authentications_seen().await;
    let mut d = Client::connect(port).await;
    let forged = mint(&["--secret", "not-the-secret"]).await.0; // the last --secret wins
    assert_eq!(d.authenticate(&forged, None).await.status, "unauthorized");
    assert_eq!(d.authenticate(&token, None).await.status, "unauthorized");
    assert_eq!(c.authentications_seen().await, seen, "the worker saw neither refused Authenticate");
    for (reason, expected) in [("bad-digest", 1.0), ("session", 1.0)] {
        let series = format!("clientmq_token_refusals_total{{reason=\"{reason}\"}}");
        assert_eq!(clientmq_testkit::procs::scrape(port, &series).await, expected, "{series}");
    }

    for client in [a, b, c, d] {
        client.close().await;
    }
    worker.terminate(WAIT).await;
    gateway.terminate(Duration::from_secs(10)).await;
    drop(nats);
    std::fs::remove_dir_all(&dir).unwrap();
}
