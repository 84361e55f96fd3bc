//! The `clientmq-chat` binary's command line: its defaults are the chat logic's, and a flag that
//! cannot work is refused with its name before anything starts. (Its work on the bus is tested
//! with the gateways in the server's fleet tests, which start this binary.)

use std::process::Command;

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
