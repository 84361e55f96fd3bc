# clientmq tasks. `just --list` shows them.

# Run the server with the embedded backend in development mode.
run *ARGS:
    cargo run --release -p clientmq-server -- --dev-accept-any-token {{ARGS}}

# Every test of the workspace, simulator and SDK interop included.
test:
    cargo test --workspace

# Formatting and lints, as CI runs them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# List the failure scenarios.
sim:
    cargo run --release -p clientmq-sim -- list

# Replay one scenario, writing its trace and plot next to it in target/.
replay NAME *ARGS:
    cargo run --release -p clientmq-sim -- replay {{NAME}} --trace target/{{NAME}}.trace --plot target/{{NAME}}.svg {{ARGS}}

# Random fault schedules, on every core, collecting every failure (shrunk).
explore SEEDS="10000" FROM="0":
    cargo run --release -p clientmq-sim -- explore --seeds {{SEEDS}} --from {{FROM}} --keep-going

# Review changed trace snapshots (needs cargo-insta).
review:
    cargo insta test --review -p clientmq-sim

# Benchmarks against a tokio-tungstenite echo baseline and a Node gateway of the seed's design
# (bench/seed-gateway: needs node and npm), and simulator speed; writes BENCHMARKS.md.
bench *ARGS:
    cargo build --release -p clientmq-server -p clientmq-bench -p clientmq-sim
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; ulimit -n; ./target/release/clientmq-load suite --sim-bin target/release/clientmq-sim --out BENCHMARKS.md {{ARGS}}

# Fuzz the codec, the EdgeAuth verifier and the HTTP head reader: CASES each, on one core.
fuzz CASES="10000000":
    FUZZ_CASES={{CASES}} cargo test --release -p clientmq-core --test fuzz -- --ignored --test-threads=1 --nocapture
    FUZZ_CASES={{CASES}} cargo test --release -p clientmq-server --test fuzz -- --ignored --test-threads=1 --nocapture

# Mutation testing (`cargo install cargo-mutants`): the core against its own tests, then the
# server's shard bookkeeping (shards, their handles and routes, admission) against the loopback,
# bad-input and embedded tests and the simulator's scenarios, regressions, explored block and
# bus announcements.
# Reports go to target/mutants/; docs/mutants.md has the last run and why each survivor lives.
# The server run skips cargo-mutants' baseline, which would run only the mutated package's tests
# (without the simulator's targets); `just test` is that baseline.
mutants JOBS="2":
    cargo mutants -p clientmq-core --test-package clientmq-core --profile mutants -j {{JOBS}} --timeout 120 -o target/mutants/core
    cargo mutants -f 'crates/server/src/shard/mod.rs' -f 'crates/server/src/shard/handle.rs' -f 'crates/server/src/shard/ready.rs' -f crates/server/src/admission.rs --test-package clientmq-server --test-package clientmq-sim --profile mutants -j {{JOBS}} --baseline skip --timeout 180 --build-timeout 900 -o target/mutants/server --cargo-test-arg=--lib --cargo-test-arg=--test=loopback --cargo-test-arg=--test=bad_inputs --cargo-test-arg=--test=embedded --cargo-test-arg=--test=scenarios --cargo-test-arg=--test=regressions --cargo-test-arg=--test=explore_block --cargo-test-arg=--test=announce
