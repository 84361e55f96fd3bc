//! The fleet on a NATS server that requires TLS (with client certificates) and authenticates
//! every process with the least-privilege users of docs/nats.md: gateways by password, the
//! worker by NKey, its state in JetStream. The unmodified SDK chats through two gateways; a
//! gateway's user cannot read the requests, write to another gateway or touch the store, nobody
//! connects without credentials; a gateway
//! with credentials the server refuses is unready (log line, metric) until the server accepts
//! them; credentials rotate on SIGHUP, certificates and authorities at the next connection; no
//! secret appears in any log, `--help` or error.
//!
//! Needs nats-server (installed by the test kit when missing), Node.js and npm.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clientmq_testkit::nats::Nats;
use clientmq_testkit::node::{interop_dir, node_harness, npm_ci};
use clientmq_testkit::procs::{Log, Proc, free_port, http_get, scrape, wait_for, workspace_binary};

const PREFIX: &str = "clientmq";
const TOKEN: &str = "secure-token";
const GATEWAY_PASSWORD: &str = "gw-pa55-Kq7vX2";
const LATE_PASSWORD: &str = "late-pa55-Zr81";
const ROTATED_PASSWORD: &str = "rotated-pa55-Mm40";
const WAIT: Duration = Duration::from_secs(20);

/// A certificate authority, the server's certificate and a client certificate, as PEM files.
struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn issue(dir: &Path) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>, usage, name: &str| {
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let (cert_path, key_path) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    };
    let server =
        leaf(vec!["127.0.0.1".into(), "localhost".into()], ExtendedKeyUsagePurpose::ServerAuth, "server");
    let client = leaf(vec!["clientmq".into()], ExtendedKeyUsagePurpose::ClientAuth, "client");
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    Pki { ca: ca_path, server, client }
}

/// The production configuration of docs/nats.md, with this test's files and secrets: gateway
/// users `gw1` and `gw2`, each limited to its own gateway's subjects; `late` adds `gw3`. The
/// worker keeps its state in JetStream (its default), with exactly the store's subjects.
fn config(pki: &Pki, js_dir: &Path, worker_nkey: &str, late_password: Option<&str>) -> String {
    let p = PREFIX;
    let gateway = |name: &str, password: &str| {
        format!(
            r#"{{ user: {name}, password: "{password}", permissions: {{
      publish: {{ allow: ["{p}.req.>", "{p}.disconnected", "{p}.gateway.{name}.*.alive"] }}
      subscribe: {{ allow: ["{p}.gw.{name}.>", "{p}.room.*", "{p}.conv.*"] }}
      allow_responses: true
    }} }}"#
        )
    };
    let late = late_password.map_or(String::new(), |pass| gateway("gw3", pass));
    format!(
        r#"
jetstream {{ store_dir: "{js}" }}
tls {{
  cert_file: "{cert}"
  key_file: "{key}"
  ca_file: "{ca}"
  verify: true
  timeout: 2
}}
authorization {{
  WORKER = {{
    publish: {{ allow: ["{p}.gw.>", "{p}.room.*", "{p}.conv.*", {store}] }}
    subscribe: {{ allow: ["{p}.req.>", "{p}.disconnected", "{p}.gateway.>", "{p}.wk.*.>", "_INBOX.>"] }}
  }}
  users: [
    {gw1}
    {gw2}
    {{ nkey: {worker_nkey}, permissions: $WORKER }}
    {late}
  ]
}}
"#,
        js = js_dir.display(),
        store = store_permissions(p),
        gw1 = gateway("gw1", GATEWAY_PASSWORD),
        gw2 = gateway("gw2", GATEWAY_PASSWORD),
        cert = pki.server.0.display(),
        key = pki.server.1.display(),
        ca = pki.ca.display(),
    )
}

/// What a stored worker on prefix `p` publishes to, as docs/nats.md lists it: JetStream's API
/// for its three streams (create, read, follow; never delete or purge), its buckets' keys and
/// the history's subjects.
fn store_permissions(p: &str) -> String {
    let mut subjects = vec!["$JS.API.INFO".to_owned()];
    for stream in [format!("KV_{p}_sessions"), format!("KV_{p}_rooms"), format!("{p}_history")] {
        for api in ["STREAM.CREATE.", "STREAM.INFO.", "STREAM.MSG.GET.", "CONSUMER.CREATE."] {
            subjects.push(format!("$JS.API.{api}{stream}"));
        }
        for api in ["CONSUMER.INFO.", "CONSUMER.DELETE."] {
            subjects.push(format!("$JS.API.{api}{stream}.*"));
        }
    }
    subjects.extend([format!("$KV.{p}_sessions.>"), format!("$KV.{p}_rooms.>"), format!("{p}.history.>")]);
    subjects.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ")
}

fn tls_args(pki: &Pki) -> Vec<String> {
    let (cert, key) = &pki.client;
    ["--nats-ca", &pki.ca.display().to_string(), "--nats-cert", &cert.display().to_string()]
        .into_iter()
        .map(str::to_owned)
        .chain(["--nats-key".to_owned(), key.display().to_string()])
        .collect()
}

fn gateway(port: u16, nats: &[String], pki: &Pki, name: &str, log: &Log) -> Proc {
    let mut args: Vec<String> = ["--listen", &format!("127.0.0.1:{port}"), "--tokens", TOKEN]
        .into_iter()
        .chain(["--gateway-name", name, "--nats-prefix", PREFIX, "--drain-window-secs", "0.2"])
        .map(str::to_owned)
        .collect();
    args.extend(nats.iter().cloned());
    args.extend(tls_args(pki));
    Proc::spawn(env!("CARGO_BIN_EXE_clientmq-server"), &args, name, log)
}

async fn ready(port: u16) -> bool {
    http_get(port, "/readyz").await.0 == 200
}

/// What the server said to a client connected as `user` that tried to subscribe to `subscribe`
/// and publish to `publish`: its `-ERR` lines, in order.
async fn refusals(url: &str, pki: &Pki, user: (&str, &str), subscribe: &str, publish: &str) -> Vec<String> {
    let (errors, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password(user.0.into(), user.1.into())
        .add_root_certificates(pki.ca.clone())
        .add_client_certificate(pki.client.0.clone(), pki.client.1.clone())
        .require_tls(true)
        .event_callback(move |event| {
            let errors = errors.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = errors.send(e.to_string());
                }
            }
        })
        .connect(url)
        .await
        .expect("the gateway user connects");
    let _sub = client.subscribe(subscribe.to_owned()).await.unwrap();
    client.flush().await.unwrap();
    client.publish(publish.to_owned(), "forged".into()).await.unwrap();
    client.flush().await.unwrap();
    let mut said = Vec::new();
    while said.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), seen.recv()).await {
            Ok(Some(e)) => said.push(e.to_lowercase()),
            _ => break,
        }
    }
    said
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_runs_on_an_authenticated_least_privilege_tls_bus() {
    clientmq_testkit::deadline::bounded(async {
        let dir = std::env::temp_dir().join(format!("clientmq-nats-secure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = issue(&dir);
        let worker_key = nkeys::KeyPair::new_user();
        let worker_seed = worker_key.seed().unwrap();
        let seed_file = dir.join("worker.nk");
        std::fs::write(&seed_file, &worker_seed).unwrap();
        let conf = dir.join("nats.conf");
        let js_dir = dir.join("js");
        std::fs::write(&conf, config(&pki, &js_dir, &worker_key.public_key(), None)).unwrap();
        let log = Log::default();
        npm_ci(&interop_dir(), "phenix-web-sdk/dist/phenix-node-sdk.js").await;
        let mut nats = Nats::start_with(&log, &["-c", &conf.display().to_string()]).await;
        let plain = format!("127.0.0.1:{}", nats.port);

        // Nobody connects without credentials, even with a good client certificate.
        let anonymous = async_nats::ConnectOptions::new()
            .add_root_certificates(pki.ca.clone())
            .add_client_certificate(pki.client.0.clone(), pki.client.1.clone())
            .require_tls(true)
            .connect(format!("nats://{plain}"))
            .await;
        let refused = anonymous.expect_err("no credentials, no connection");
        assert_eq!(refused.kind(), async_nats::ConnectErrorKind::AuthorizationViolation, "{refused}");

        // The worker (NKey) and two gateways (the password in the URL, and in a file).
        let chat_port = free_port();
        let mut worker_args: Vec<String> = ["--nats", &format!("nats://{plain}"), "--nats-nkey"]
            .into_iter()
            .map(str::to_owned)
            .chain([seed_file.display().to_string(), "--listen".into(), format!("127.0.0.1:{chat_port}")])
            .collect();
        worker_args.extend(tls_args(&pki));
        let chat = workspace_binary("clientmq-chat").display().to_string();
        let _worker = Proc::spawn(&chat, &worker_args, "worker", &log);
        let password_file = dir.join("gateway.pass");
        std::fs::write(&password_file, format!("{GATEWAY_PASSWORD}\n")).unwrap();
        let (gw1_port, gw2_port) = (free_port(), free_port());
        let in_url = vec!["--nats".to_owned(), format!("nats://gw1:{GATEWAY_PASSWORD}@{plain}")];
        let _gw1 = gateway(gw1_port, &in_url, &pki, "gw1", &log);
        let in_file = ["--nats", &format!("nats://{plain}"), "--nats-user", "gw2", "--nats-password-file"]
            .into_iter()
            .map(str::to_owned)
            .chain([password_file.display().to_string()])
            .collect::<Vec<_>>();
        let _gw2 = gateway(gw2_port, &in_file, &pki, "gw2", &log);
        for (port, what) in [(chat_port, "the worker"), (gw1_port, "gateway 1"), (gw2_port, "gateway 2")] {
            wait_for(WAIT, &format!("{what} ready on the bus"), &log, || ready(port)).await;
        }

        // The SDK, through both gateways.
        let env = [("CLIENTMQ_GW1_PORT", gw1_port.to_string()), ("CLIENTMQ_GW2_PORT", gw2_port.to_string())];
        let env: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (*k, v.as_str())).chain([("CLIENTMQ_TOKEN", TOKEN)]).collect();
        let transcript =
            node_harness("secure.js", &interop_dir(), &env, Duration::from_secs(90), &Log::default()).await;
        assert!(transcript.contains("ok - secure fleet harness passed"), "{transcript}");

        // A gateway's user can neither read the requests or what is sent to another gateway,
        // nor write to another gateway.
        let url = format!("nats://{plain}");
        let refused = |said: &[String], what: &str| {
            let line = format!("permissions violation for {what}").to_lowercase();
            assert!(said.iter().any(|e| e.contains(&line)), "no `{line}` in {said:?}");
        };
        let gw1 = ("gw1", GATEWAY_PASSWORD);
        let said = refusals(&url, &pki, gw1, "clientmq.req.>", "clientmq.gw.gw2.x.event").await;
        refused(&said, "subscription to \"clientmq.req.>\"");
        refused(&said, "publish to \"clientmq.gw.gw2.x.event\"");
        let said = refusals(&url, &pki, gw1, "clientmq.gw.gw2.>", "clientmq.gateway.gw2.x.alive").await;
        refused(&said, "subscription to \"clientmq.gw.gw2.>\"");
        refused(&said, "publish to \"clientmq.gateway.gw2.x.alive\"");
        // Nor read or write the store: sessions, rooms and history are the workers' alone.
        let forged = "$JS.API.STREAM.DELETE.KV_clientmq_sessions";
        let said = refusals(&url, &pki, gw1, "$KV.clientmq_sessions.>", forged).await;
        refused(&said, "subscription to \"$KV.clientmq_sessions.>\"");
        refused(&said, &format!("publish to \"{forged}\""));

        // A gateway whose credentials the server refuses: unready, said in its log and counted,
        // until the server accepts them.
        let late_file = dir.join("late.pass");
        std::fs::write(&late_file, LATE_PASSWORD).unwrap();
        let gw3_port = free_port();
        let late = ["--nats", &url, "--nats-user", "gw3", "--nats-password-file"]
            .into_iter()
            .map(str::to_owned)
            .chain([late_file.display().to_string()])
            .collect::<Vec<_>>();
        let gw3 = gateway(gw3_port, &late, &pki, "gw3", &log);
        let refused = "clientmq_bus_connect_failures_total{reason=\"refused\"}";
        wait_for(WAIT, "gateway 3's refusals counted", &log, || async {
            scrape(gw3_port, refused).await >= 2.0
        })
        .await;
        assert!(!ready(gw3_port).await, "unready while refused");
        assert!(
            log.lock()
                .unwrap()
                .iter()
                .any(|l| l.starts_with("[gw3]") && l.contains("NATS refused this process's credentials"))
        );
        std::fs::write(&conf, config(&pki, &js_dir, &worker_key.public_key(), Some(LATE_PASSWORD))).unwrap();
        nats.reload();
        wait_for(WAIT, "gateway 3 ready once the server accepts it", &log, || ready(gw3_port)).await;

        // Rotation: the new password is loaded on SIGHUP and used by the next connection.
        std::fs::write(&late_file, ROTATED_PASSWORD).unwrap();
        gw3.signal("-HUP");
        let reloaded = "clientmq_reloads_total{what=\"nats\",outcome=\"ok\"}";
        wait_for(WAIT, "gateway 3 reloads its credentials", &log, || async {
            scrape(gw3_port, reloaded).await == 1.0
        })
        .await;
        std::fs::write(&conf, config(&pki, &js_dir, &worker_key.public_key(), Some(ROTATED_PASSWORD)))
            .unwrap();
        // And the TLS material: a new authority, server and client certificates, in the same
        // files. Every process reads them again when it connects; the old authority would not
        // accept the new server.
        let rotated = issue(&dir);
        assert_eq!(rotated.ca, pki.ca);
        nats.stop().await;
        nats.restart().await;
        let back = [(chat_port, "the worker"), (gw1_port, "gateway 1"), (gw2_port, "gateway 2")];
        for (port, what) in back.into_iter().chain([(gw3_port, "gateway 3 (rotated)")]) {
            wait_for(WAIT, &format!("{what} back on the restarted bus"), &log, || ready(port)).await;
        }

        // Not one secret in any line any process wrote.
        let lines = log.lock().unwrap().join("\n");
        for secret in [GATEWAY_PASSWORD, LATE_PASSWORD, ROTATED_PASSWORD, worker_seed.as_str()] {
            assert!(!lines.contains(secret), "a secret in the logs:\n{lines}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

#[tokio::test]
async fn no_secret_shows_in_help_or_errors() {
    let secret = "env-s3cret-value";
    let server = env!("CARGO_BIN_EXE_clientmq-server");
    let chat = workspace_binary("clientmq-chat");
    for (binary, args) in [
        (PathBuf::from(server), vec!["--help".to_owned()]),
        (chat.clone(), vec!["--help".to_owned()]),
        (
            PathBuf::from(server),
            vec!["--nats".into(), format!("nats://u:{secret}@h:1"), "--nats-token".into(), secret.into()],
        ),
        (chat.clone(), vec!["--nats".into(), format!("nats://u:{secret}@h:1,nats://v:{secret}@h:2")]),
        (chat, vec!["--nats".into(), format!("http://{secret}@h:1")]),
    ] {
        let out = tokio::process::Command::new(&binary)
            .args(&args)
            .env("CLIENTMQ_NATS_PASSWORD", secret)
            .env("CLIENTMQ_NATS_TOKEN", secret)
            .output()
            .await
            .unwrap();
        let said =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!said.contains(secret), "{} {args:?} shows a secret:\n{said}", binary.display());
        assert!(said.contains("--nats"), "{said}");
    }
}
