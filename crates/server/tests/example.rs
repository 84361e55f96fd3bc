//! The README's complete client, `examples/chat.js` (the unmodified Phenix web SDK), against the
//! server binary: two people in one room by its alias each read both messages, in order.

use std::time::Duration;

use clientmq_testkit::node::npm_ci;
use clientmq_testkit::procs::{Log, Proc, free_port, wait_for, wait_listening, workspace_dir};

const TOKEN: &str = "example-token";

fn chat(port: u16, name: &str, text: &str, log: &Log) -> Proc {
    let script = workspace_dir().join("examples/chat.js").display().to_string();
    let uri = format!("ws://127.0.0.1:{port}");
    let args = [&script, "--uri", &uri, "--token", TOKEN, "--room", "lobby", "--name", name, "--send", text];
    let args: Vec<String> =
        args.iter().map(|a| a.to_string()).chain(["--until".into(), "2".into()]).collect();
    Proc::spawn("node", &args, name, log)
}

async fn exits_zero(mut proc: Proc, log: &Log) {
    let status = tokio::time::timeout(Duration::from_secs(30), proc.child.wait()).await;
    let transcript = log.lock().unwrap().join("\n");
    match status {
        Ok(Ok(s)) => assert!(s.success(), "{} exited {s}:\n{transcript}", proc.tag),
        other => panic!("{} did not exit in time ({other:?}):\n{transcript}", proc.tag),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_client_chats_in_a_room_by_alias() {
    clientmq_testkit::deadline::bounded(async {
        npm_ci(&workspace_dir().join("examples"), "phenix-web-sdk/dist/phenix-node-sdk.js").await;
        let log = Log::default();
        let port = free_port();
        let args = ["--listen", &format!("127.0.0.1:{port}"), "--tokens", TOKEN].map(str::to_owned);
        let _server = Proc::spawn(env!("CARGO_BIN_EXE_clientmq-server"), &args, "server", &log);
        wait_listening(port, "the server").await;
        let alice = chat(port, "alice", "hello from alice", &log);
        wait_for(Duration::from_secs(20), "alice in the room", &log, || {
            let inside = log.lock().unwrap().iter().any(|l| l.starts_with("[alice] in room lobby"));
            async move { inside }
        })
        .await;
        let bob = chat(port, "bob", "hi from bob", &log);
        exits_zero(bob, &log).await;
        exits_zero(alice, &log).await;
        let lines = log.lock().unwrap().clone();
        for who in ["alice", "bob"] {
            let read: Vec<&str> = lines
                .iter()
                .filter_map(|l| l.strip_prefix(&format!("[{who}] ")))
                .filter(|l| l.starts_with("alice: ") || l.starts_with("bob: "))
                .collect();
            assert_eq!(
                read,
                ["alice: hello from alice", "bob: hi from bob"],
                "{who} read:\n{}",
                lines.join("\n")
            );
        }
    })
    .await
}
