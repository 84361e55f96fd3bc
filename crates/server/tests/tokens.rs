//! The binary's token policy, from flags, environment and a file.

mod common;

use std::process::Stdio;
use std::time::Duration;

use clientmq_core::proto::{mq, pcast};
use clientmq_core::{Frame, codec};
use clientmq_testkit::procs::free_port;
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clientmq-server"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("CLIENTMQ_")) {
        cmd.env_remove(key);
    }
    cmd.env("CLIENTMQ_LOG_FORMAT", "json");
    cmd
}

/// Authenticates with `token` against a server on `port`; returns the answer's status.
async fn authenticate(port: u16, token: &str) -> String {
    let mut ws = common::connect_when_up(port).await;
    let auth = pcast::Authenticate { authentication_token: token.into(), ..Default::default() };
    let msg = mq::Message {
        request_id: Some("C0".into()),
        r#type: "pcast.Authenticate".into(),
        payload: auth.encode_to_vec(),
        ..Default::default()
    };
    ws.send(Message::Binary(msg.encode_to_vec().into())).await.unwrap();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(3), ws.next()).await.unwrap();
        if let Some(Ok(Message::Binary(b))) = next {
            let reply = codec::decode(&Frame::Binary(b.to_vec()), usize::MAX).unwrap();
            return pcast::AuthenticateResponse::decode(reply.payload.as_slice()).unwrap().status;
        }
    }
}

/// Stops the server with SIGTERM and returns everything it logged.
async fn stop(mut child: Child) -> String {
    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().await.unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert!(status.success());
    let mut log = String::new();
    child.stdout.take().unwrap().read_to_string(&mut log).await.unwrap();
    log
}

#[tokio::test]
async fn dev_mode_list_file_and_none() {
    clientmq_testkit::deadline::bounded(async {
        let dir = std::env::temp_dir().join(format!("clientmq-tokens-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tokens");
        std::fs::write(&file, "# accepted\nfrom-file\n").unwrap();
        let file = file.to_str().unwrap().to_owned();
        type Case = (&'static str, Vec<String>, Vec<(&'static str, &'static str)>);
        let cases: Vec<(Case, &str, &str, &str)> = vec![
            (("flag", vec!["--dev-accept-any-token".into()], vec![]), "anything", "ok", "DEVELOPMENT MODE"),
            (
                ("env", vec![], vec![("CLIENTMQ_DEV_ACCEPT_ANY_TOKEN", "1")]),
                "anything",
                "ok",
                "DEVELOPMENT MODE",
            ),
            (
                ("list", vec!["--tokens".into(), "a,b".into()], vec![]),
                "c",
                "unauthorized",
                "accepting configured",
            ),
            (("file", vec!["--tokens-file".into(), file], vec![]), "from-file", "ok", "accepting configured"),
            (
                ("none", vec![], vec![("CLIENTMQ_DEV_ACCEPT_ANY_TOKEN", "false")]),
                "x",
                "unauthorized",
                "refused",
            ),
        ];
        for ((name, args, envs), token, expected, logged) in cases {
            let port = free_port();
            let child = binary()
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(&args)
                .envs(envs)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            assert_eq!(authenticate(port, token).await, expected, "{name}");
            let log = stop(child).await;
            assert!(log.contains(logged), "{name}: {log}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    })
    .await
}

#[tokio::test]
async fn token_settings_that_cannot_work_are_refused() {
    clientmq_testkit::deadline::bounded(async {
        let cases: [&[&str]; 4] = [
            &["--dev-accept-any-token", "--tokens", "a"],
            &["--tokens-file", "/nonexistent/clientmq-tokens"],
            &["--max-sessions", "0"],
            &["--max-rooms-per-session", "1000"],
        ];
        for args in cases {
            let out = binary().args(args).output().await.unwrap();
            assert_eq!(out.status.code(), Some(2), "{args:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(args[0].trim_start_matches("--")), "{args:?}: {stderr}");
        }
    })
    .await
}
