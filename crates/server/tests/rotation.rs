//! Secrets rotate without a restart: SIGHUP reads the token files and the TLS certificate again.
//! New authentications and handshakes use the new material; the connections already open stay
//! (an SDK client in a room keeps hearing it); a file that does not read keeps the old material
//! and counts `clientmq_reloads_total{outcome="failed"}`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clientmq_core::proto::{mq, pcast};
use clientmq_testkit::client::Client;
use clientmq_testkit::node::{interop_dir, npm_ci};
use clientmq_testkit::procs::{Log, Proc, free_port, scrape, wait_for, wait_listening, workspace_dir};
use prost::Message as _;

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether `token` authenticates a fresh connection on `port`.
async fn authenticates<S>(client: &mut Client<S>, token: &str) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let auth = pcast::Authenticate { authentication_token: token.into(), ..Default::default() };
    let reply = client.call("pcast.Authenticate", auth.encode_to_vec()).await;
    assert_eq!(reply.r#type, "pcast.AuthenticateResponse", "{reply:?}");
    pcast::AuthenticateResponse::decode(reply.payload.as_slice()).unwrap().status == "ok"
}

async fn fresh_authenticates(port: u16, token: &str) -> bool {
    authenticates(&mut Client::connect(("127.0.0.1", port)).await, token).await
}

async fn reloads(port: u16, what: &str, outcome: &str) -> f64 {
    scrape(port, &format!("clientmq_reloads_total{{what=\"{what}\",outcome=\"{outcome}\"}}")).await
}

/// SIGHUP, then waits for the reload of `what` to be counted with `outcome`, `count` times in all.
async fn hup(server: &Proc, port: u16, what: &str, outcome: &str, count: f64, log: &Log) {
    server.signal("-HUP");
    wait_for(Duration::from_secs(10), &format!("{what} reload {outcome}"), log, || async move {
        reloads(port, what, outcome).await == count
    })
    .await;
}

/// A digest token of application `app-1` under `secret` (the phenix-edge-auth package mints it).
async fn mint(secret: &str) -> String {
    let out = tokio::process::Command::new("node")
        .args(["edge-auth.js", "mint", "--application", "app-1", "--secret", secret, "--auth-only"])
        .current_dir(interop_dir())
        .output()
        .await
        .expect("node runs");
    assert!(out.status.success(), "mint: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines().find_map(|l| l.strip_prefix("token ")).expect("a token line").to_owned()
}

fn chat(port: u16, name: &str, token: &str, send: &[&str], until: usize, log: &Log) -> Proc {
    chat_over(&format!("ws://127.0.0.1:{port}"), &[], (name, token), send, until, log)
}

/// The example client on `uri` (`wss://` with `NODE_EXTRA_CA_CERTS` in `env`) as `who` (name,
/// token).
fn chat_over(
    uri: &str,
    env: &[(&str, &str)],
    who: (&str, &str),
    send: &[&str],
    until: usize,
    log: &Log,
) -> Proc {
    let script = workspace_dir().join("examples/chat.js").display().to_string();
    let (name, token, until) = (who.0, who.1, until.to_string());
    let mut args = owned(&[
        &script, "--uri", uri, "--token", token, "--room", "lobby", "--name", name, "--until", &until,
    ]);
    for text in send {
        args.extend(owned(&["--send", text]));
    }
    Proc::spawn_with_env("node", &args, env, name, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_files_rotate_on_sighup_and_nobody_is_dropped() {
    clientmq_testkit::deadline::bounded(async {
        npm_ci(&workspace_dir().join("examples"), "phenix-web-sdk/dist/phenix-node-sdk.js").await;
        npm_ci(&interop_dir(), "phenix-edge-auth/package.json").await;
        // EdgeAuth digest tokens of one application, under its old and its new secret.
        let (digest_old, digest_new) = (mint("secret-1").await, mint("secret-2").await);
        let dir = tempdir("clientmq-rotation");
        let (tokens, edge) = (dir.join("tokens"), dir.join("edge-auth"));
        std::fs::write(&tokens, "# before\nold-token\n").unwrap();
        std::fs::write(&edge, "app-1 secret-1\n").unwrap();
        let log = Log::default();
        let port = free_port();
        let (listen, tokens_arg, edge_arg) =
            (format!("127.0.0.1:{port}"), tokens.display().to_string(), edge.display().to_string());
        let args = owned(&["--listen", &listen, "--tokens-file", &tokens_arg, "--edge-auth-file", &edge_arg]);
        let server = Proc::spawn(env!("CARGO_BIN_EXE_clientmq-server"), &args, "server", &log);
        wait_listening(port, "the server").await;

        // Connected before any rotation: an SDK client in a room, and a raw client.
        let bob = chat(port, "bob", "old-token", &[], 1, &log);
        wait_for(Duration::from_secs(20), "bob in the room", &log, || {
            let inside = log.lock().unwrap().iter().any(|l| l.starts_with("[bob] in room lobby"));
            async move { inside }
        })
        .await;
        let mut early = Client::connect(("127.0.0.1", port)).await;
        assert!(authenticates(&mut early, "old-token").await);
        assert!(fresh_authenticates(port, &digest_old).await, "the digest under the first secret");
        assert!(!fresh_authenticates(port, &digest_new).await, "not yet under the second");

        // New files: new authentications use them, the old token and secret are refused.
        std::fs::write(&tokens, "new-token\n").unwrap();
        std::fs::write(&edge, "app-1 secret-2\n").unwrap();
        hup(&server, port, "tokens", "ok", 1.0, &log).await;
        assert!(fresh_authenticates(port, "new-token").await, "the new token authenticates");
        assert!(!fresh_authenticates(port, "old-token").await, "the old token no longer does");
        assert!(fresh_authenticates(port, &digest_new).await, "the digest under the new secret");
        assert!(!fresh_authenticates(port, &digest_old).await, "not under the old one");

        // A file that does not read keeps what was there, says why and counts it.
        std::fs::write(&edge, "a line without its secret\n").unwrap();
        hup(&server, port, "tokens", "failed", 1.0, &log).await;
        assert!(fresh_authenticates(port, "new-token").await, "the previous tokens stay");
        assert!(log.lock().unwrap().iter().any(|l| l.contains("token files not reloaded")));
        std::fs::remove_file(&tokens).unwrap();
        hup(&server, port, "tokens", "failed", 2.0, &log).await;
        assert!(fresh_authenticates(port, "new-token").await, "the previous tokens stay");
        assert!(fresh_authenticates(port, &digest_new).await, "and the previous secrets");
        let secrets = ["secret-1", "secret-2"];
        assert!(
            !log.lock().unwrap().iter().any(|l| secrets.iter().any(|s| l.contains(s))),
            "no secret in the log"
        );

        // Nobody was dropped: the early connection answers, and bob, authenticated with the old
        // token, hears alice, who came in with the new one.
        let ping = early.call("mq.PingPong", mq::PingPong::default().encode_to_vec()).await;
        assert_eq!(ping.r#type, "mq.PingPongResponse", "{ping:?}");
        let alice = chat(port, "alice", "new-token", &["after the rotation"], 1, &log);
        for mut proc in [alice, bob] {
            let status = tokio::time::timeout(Duration::from_secs(30), proc.child.wait()).await;
            let transcript = log.lock().unwrap().join("\n");
            assert!(matches!(status, Ok(Ok(s)) if s.success()), "{} failed:\n{transcript}", proc.tag);
        }
        assert!(log.lock().unwrap().iter().any(|l| l == "[bob] alice: after the rotation"));
        assert_eq!(scrape(port, "clientmq_reloads_total{what=\"tls\",outcome=\"ok\"}").await, 0.0);
        server.kill().await;
        std::fs::remove_dir_all(&dir).unwrap();
    })
    .await
}

/// A TLS client that trusts only `cert` (PEM).
fn tls_connector(cert: &str) -> tokio_rustls::TlsConnector {
    use tokio_rustls::rustls::{
        ClientConfig, RootCertStore, pki_types::CertificateDer, pki_types::pem::PemObject,
    };
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()).unwrap();
    let config = ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls_client(
    port: u16,
    trusts: &str,
) -> std::io::Result<Client<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tls_connector(trusts).connect(name, tcp).await?;
    Ok(Client::upgrade(tls, &[]).await.expect("the upgrade over TLS"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_certificate_rotates_on_sighup_and_open_connections_stay() {
    clientmq_testkit::deadline::bounded(async {
        let dir = tempdir("clientmq-tls-rotation");
        let names = ["127.0.0.1".to_owned(), "localhost".to_owned()];
        let (first, second) = (
            rcgen::generate_simple_self_signed(names.clone()).unwrap(),
            rcgen::generate_simple_self_signed(names).unwrap(),
        );
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, first.cert.pem()).unwrap();
        std::fs::write(&key, first.signing_key.serialize_pem()).unwrap();
        let log = Log::default();
        let (port, admin) = (free_port(), free_port());
        let (listen, admin_listen) = (format!("127.0.0.1:{port}"), format!("127.0.0.1:{admin}"));
        let (cert_arg, key_arg) = (cert.display().to_string(), key.display().to_string());
        let tls = ["--tls-cert", &cert_arg, "--tls-key", &key_arg];
        let args = owned(
            &[&["--listen", &listen, "--admin-listen", &admin_listen, "--tokens", "t"][..], &tls].concat(),
        );
        let server = Proc::spawn(env!("CARGO_BIN_EXE_clientmq-server"), &args, "server", &log);
        wait_listening(admin, "the admin port").await;
        let mut early = tls_client(port, &first.cert.pem()).await.expect("the first certificate");
        assert!(authenticates(&mut early, "t").await);
        // An SDK client over wss://, trusting the first certificate only, in a room.
        npm_ci(&workspace_dir().join("examples"), "phenix-web-sdk/dist/phenix-node-sdk.js").await;
        let (ca_first, ca_second) = (dir.join("ca-first.pem"), dir.join("ca-second.pem"));
        std::fs::write(&ca_first, first.cert.pem()).unwrap();
        std::fs::write(&ca_second, second.cert.pem()).unwrap();
        let (ca_first, ca_second) = (ca_first.display().to_string(), ca_second.display().to_string());
        let uri = format!("wss://localhost:{port}");
        let bob = chat_over(&uri, &[("NODE_EXTRA_CA_CERTS", &ca_first)], ("bob", "t"), &[], 1, &log);
        wait_for(Duration::from_secs(20), "bob in the room", &log, || {
            let inside = log.lock().unwrap().iter().any(|l| l.starts_with("[bob] in room lobby"));
            async move { inside }
        })
        .await;
        assert!(tls_client(port, &second.cert.pem()).await.is_err(), "the second is not presented yet");

        // A certificate without its key does not load: the first stays.
        std::fs::write(&cert, second.cert.pem()).unwrap();
        hup(&server, admin, "tls", "failed", 1.0, &log).await;
        assert!(tls_client(port, &first.cert.pem()).await.is_ok(), "the previous certificate stays");

        std::fs::write(&key, second.signing_key.serialize_pem()).unwrap();
        hup(&server, admin, "tls", "ok", 1.0, &log).await;
        let mut late = tls_client(port, &second.cert.pem()).await.expect("the second certificate");
        assert!(authenticates(&mut late, "t").await);
        assert!(tls_client(port, &first.cert.pem()).await.is_err(), "the first is no longer presented");
        // The connections made under the first certificate are still served: the raw one answers,
        // and bob hears alice, who trusts only the second.
        let ping = early.call("mq.PingPong", mq::PingPong::default().encode_to_vec()).await;
        assert_eq!(ping.r#type, "mq.PingPongResponse", "{ping:?}");
        let trust_second = [("NODE_EXTRA_CA_CERTS", ca_second.as_str())];
        let alice = chat_over(&uri, &trust_second, ("alice", "t"), &["new cert"], 1, &log);
        for mut proc in [alice, bob] {
            let status = tokio::time::timeout(Duration::from_secs(30), proc.child.wait()).await;
            let transcript = log.lock().unwrap().join("\n");
            assert!(matches!(status, Ok(Ok(s)) if s.success()), "{} failed:\n{transcript}", proc.tag);
        }
        assert!(log.lock().unwrap().iter().any(|l| l == "[bob] alice: new cert"));
        server.kill().await;
        std::fs::remove_dir_all(&dir).unwrap();
    })
    .await
}
