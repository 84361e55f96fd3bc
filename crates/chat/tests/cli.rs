//! The `clientmq-chat` binary's command line: its defaults are the chat logic's, and a flag that
//! cannot work is refused with its name before anything starts. (Its work on the bus is tested
//! with the gateways in the server's fleet tests, which start this binary.) Without JetStream the
//! default worker refuses to start; `--memory` serves there.

use std::process::Command;
use std::time::Duration;

fn chat(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clientmq-chat"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("CLIENTMQ_")) {
        cmd.env_remove(key);
    }
    cmd.args(args).output().expect("clientmq-chat runs")
}

#[test]
fn help_shows_the_chat_logics_own_defaults() {
    let out = chat(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let defaults = clientmq_chat::ChatConfig::default();
    for (flag, default) in [
        ("--session-grace-secs", defaults.session_grace.as_secs_f64().to_string()),
        ("--max-sessions", defaults.max_sessions.to_string()),
        ("--max-chat-history", defaults.max_history.to_string()),
    ] {
        let line = help.lines().position(|l| l.contains(flag)).unwrap_or_else(|| panic!("{flag} in --help"));
        let text: String = help.lines().skip(line).take(4).collect();
        assert!(text.contains(&format!("[default: {default}]")), "{flag} defaults to {default}:\n{text}");
    }
}

#[test]
fn a_flag_that_cannot_work_is_refused_by_name() {
    let out = chat(&["--nats", "nats://127.0.0.1:1", "--max-sessions", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("--max-sessions (CLIENTMQ_MAX_SESSIONS) must be greater than zero"), "{said}");
}

#[test]
fn the_bus_is_required() {
    let out = chat(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nats"));
}

#[test]
fn memory_and_store_replicas_are_refused_together() {
    let out = chat(&["--nats", "nats://127.0.0.1:1", "--memory", "--store-replicas", "3"]);
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("--memory") && said.contains("--store-replicas"), "{said}");
}

/// The store is the default: on a server without JetStream the worker refuses to start and says
/// both ways out; with `--memory` it serves there, and reloads its NATS credentials on SIGHUP.
#[tokio::test]
async fn without_jetstream_the_worker_says_what_to_do_and_memory_serves_and_reloads() {
    use clientmq_testkit::nats::Nats;
    use clientmq_testkit::procs::{Log, free_port, http_get, scrape, wait_for};

    let log = Log::default();
    let nats = Nats::start(&log).await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_clientmq-chat"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("CLIENTMQ_")) {
        cmd.env_remove(key);
    }
    let refused = tokio::time::timeout(Duration::from_secs(30), cmd.args(["--nats", &nats.url()]).output())
        .await
        .expect("refuses within 30 s")
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("JetStream is not enabled") && said.contains("-js"), "{said}");
    assert!(said.contains("--memory"), "{said}");

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let token = std::env::temp_dir().join(format!("clientmq-cli-token-{}", std::process::id()));
    std::fs::write(&token, "t0\n").unwrap();
    let args = ["--nats", &nats.url(), "--memory", "--listen", &listen, "--nats-token-file"]
        .map(str::to_owned)
        .into_iter()
        .chain([token.display().to_string()])
        .collect::<Vec<_>>();
    let worker =
        clientmq_testkit::procs::Proc::spawn(env!("CARGO_BIN_EXE_clientmq-chat"), &args, "chat", &log);
    wait_for(Duration::from_secs(20), "the in-memory worker ready", &log, || async {
        http_get(port, "/readyz").await.0 == 200
    })
    .await;

    // SIGHUP reads the NATS credentials again, and counts whether it could.
    let reloads = |outcome: &'static str| async move {
        let series = format!("clientmq_chat_reloads_total{{what=\"nats\",outcome=\"{outcome}\"}}");
        scrape(port, &series).await
    };
    worker.signal("-HUP");
    wait_for(Duration::from_secs(10), "a reload", &log, || async { reloads("ok").await == 1.0 }).await;
    std::fs::remove_file(&token).unwrap();
    worker.signal("-HUP");
    wait_for(Duration::from_secs(10), "a failed reload", &log, || async { reloads("failed").await == 1.0 })
        .await;
    assert_eq!(reloads("ok").await, 1.0);
}
