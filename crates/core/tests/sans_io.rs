//! The core stays sans-IO: no async runtime, networking or clock crate in its dependency tree.

use std::process::Command;

#[test]
fn no_runtime_in_the_dependency_tree() {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "-p", "clientmq-core", "-e", "normal", "--prefix", "none", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8(out.stdout).expect("utf-8");
    assert!(tree.contains("clientmq-core"), "{tree}");
    for banned in ["tokio", "async-std", "smol", "mio", "socket2", "chrono", "getrandom"] {
        assert!(
            !tree.lines().any(|l| l.split_whitespace().next() == Some(banned)),
            "{banned} is in clientmq-core's dependency tree:\n{tree}"
        );
    }
}
