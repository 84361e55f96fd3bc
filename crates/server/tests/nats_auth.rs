//! The NATS binding against real nats-servers: the ways to authenticate that `nats_secure.rs`
//! does not run, each on a server configured for it (a token, right and wrong; a `.creds` file in
//! operator mode, a user JWT signed by an account signed by an operator, as `nsc` issues them),
//! and what the binding must carry whatever the headers (a reply subject).

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clientmq_bus::access::NatsArgs;
use clientmq_bus::nats::NatsBus;
use clientmq_bus::{Bus, BusMessage, Subscription};
use clientmq_testkit::nats::Nats;
use clientmq_testkit::procs::{Log, wait_for};

const WAIT: Duration = Duration::from_secs(10);

/// A bus on `nats` with `args`' credentials; waits until it is connected.
async fn connected(nats: &Nats, args: NatsArgs, log: &Log) -> NatsBus {
    let access = NatsArgs { nats: Some(nats.url()), ..args }.access().unwrap().unwrap();
    let bus = NatsBus::open(&access, "auth-test").await.unwrap();
    wait_for(WAIT, "connected", log, || async { bus.status().connected }).await;
    bus
}

/// Publishes on one bus and receives on another: the connection really serves.
async fn round_trip(a: &NatsBus, b: &NatsBus) {
    let mut sub = b.subscribe("auth.test", None).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        a.publish(BusMessage::new("auth.test", vec![7])).await.unwrap();
        if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            assert_eq!(msg.payload, [7]);
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing came through");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_connects_and_a_wrong_one_is_refused_and_counted() {
    clientmq_testkit::deadline::bounded(async {
        let log = Log::default();
        let nats = Nats::start_with(&log, &["--auth", "t0ken-for-the-test"]).await;
        let dir = std::env::temp_dir().join(format!("clientmq-nats-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "t0ken-for-the-test\n").unwrap();
        let by_flag = connected(
            &nats,
            NatsArgs { nats_token: Some("t0ken-for-the-test".into()), ..Default::default() },
            &log,
        )
        .await;
        let by_file =
            connected(&nats, NatsArgs { nats_token_file: Some(file), ..Default::default() }, &log).await;
        round_trip(&by_flag, &by_file).await;
        let url = format!("nats://t0ken-for-the-test@127.0.0.1:{}", nats.port);
        let in_url = NatsArgs { nats: Some(url), ..Default::default() }.access().unwrap().unwrap();
        let in_url = NatsBus::open(&in_url, "auth-test").await.unwrap();
        wait_for(WAIT, "connected with the token in the URL", &log, || async { in_url.status().connected })
            .await;

        let wrong =
            NatsArgs { nats: Some(nats.url()), nats_token: Some("wrong".into()), ..Default::default() };
        let wrong = NatsBus::open(&wrong.access().unwrap().unwrap(), "auth-test").await.unwrap();
        wait_for(WAIT, "refusals counted", &log, || async { wrong.failures().0 >= 2 }).await;
        assert!(!wrong.status().connected);
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

/// A JWT as NATS signs them: `ed25519-nkey` over the header and claims, by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, nats: serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": format!("{:X}", rand::random::<u128>()),
        "iat": 1_700_000_000,
        "iss": issuer.public_key(),
        "name": subject,
        "sub": subject,
        "nats": nats,
    });
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{body}");
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// An operator, an account and a user of it: the server's configuration and the user's `.creds`.
fn operator_mode(dir: &Path) -> (String, String) {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let no_limits = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1
    });
    let operator_jwt =
        jwt(&operator, &operator.public_key(), serde_json::json!({"type": "operator", "version": 2}));
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        serde_json::json!({"limits": no_limits, "type": "account", "version": 2}),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        serde_json::json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}),
    );
    let config = format!(
        "operator: {operator_jwt}\nresolver: MEMORY\nresolver_preload: {{\n  {}: {account_jwt}\n}}\n",
        account.public_key()
    );
    let creds = format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed().unwrap()
    );
    let path = dir.join("nats.conf");
    std::fs::write(&path, config).unwrap();
    (path.display().to_string(), creds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creds_file_connects_in_operator_mode_and_nothing_else_does() {
    clientmq_testkit::deadline::bounded(async {
        let log = Log::default();
        let dir = std::env::temp_dir().join(format!("clientmq-nats-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (config, creds) = operator_mode(&dir);
        let creds_file = dir.join("user.creds");
        std::fs::write(&creds_file, creds).unwrap();
        let nats = Nats::start_with(&log, &["-c", &config]).await;
        let one =
            connected(&nats, NatsArgs { nats_creds: Some(creds_file.clone()), ..Default::default() }, &log)
                .await;
        let two =
            connected(&nats, NatsArgs { nats_creds: Some(creds_file), ..Default::default() }, &log).await;
        round_trip(&one, &two).await;
        // An NKey the operator never signed for is refused.
        let stranger = dir.join("stranger.nk");
        std::fs::write(&stranger, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
        let refused = NatsArgs { nats: Some(nats.url()), nats_nkey: Some(stranger), ..Default::default() };
        let refused = NatsBus::open(&refused.access().unwrap().unwrap(), "auth-test").await.unwrap();
        wait_for(WAIT, "the stranger's refusals counted", &log, || async { refused.failures().0 >= 2 }).await;
        assert!(!refused.status().connected);
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

/// Sync and orphans lists travel without headers and must keep their reply subject (a planted
/// bug of #21 dropped it, and only a real server showed it): with and without headers, the
/// subscriber gets the reply subject and its answer arrives there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_subject_travels_with_and_without_headers() {
    clientmq_testkit::deadline::bounded(async {
        let log = Log::default();
        let nats = Nats::start(&log).await;
        let asker = connected(&nats, NatsArgs::default(), &log).await;
        let answerer = connected(&nats, NatsArgs::default(), &log).await;
        let mut asked = answerer.subscribe("bind.ask", None).await.unwrap();
        let mut answers = asker.subscribe("bind.answer.>", None).await.unwrap();
        // Both subscriptions in place at the server before anything is published: one message
        // each, no retries to leave a stale copy behind.
        clientmq_testkit::nats::in_place(&answerer, &mut asked, "bind.ask").await;
        clientmq_testkit::nats::in_place(&asker, &mut answers, "bind.answer.probe").await;
        for (n, headers) in [(1, false), (2, true)] {
            let mut msg = BusMessage::new("bind.ask", vec![n]).reply_to(format!("bind.answer.{n}"));
            if headers {
                msg = msg.with("Clientmq-Type", "x.Ask");
            }
            asker.publish(msg).await.unwrap();
            let got = tokio::time::timeout(WAIT, asked.next()).await.unwrap().unwrap();
            assert_eq!(got.reply.as_deref(), Some(format!("bind.answer.{n}").as_str()), "headers: {headers}");
            assert_eq!(got.headers.is_empty(), !headers);
            answerer.publish(BusMessage::new(got.reply.unwrap(), vec![n, n])).await.unwrap();
            let answer = tokio::time::timeout(WAIT, answers.next()).await.unwrap().unwrap();
            assert_eq!(
                (answer.subject.as_str(), answer.payload.as_slice()),
                (format!("bind.answer.{n}").as_str(), [n, n].as_slice())
            );
        }
    })
    .await;
}
