# clientmq tasks. `just --list` shows them.

# Run the server with the embedded backend in development mode.
run *ARGS:
    cargo run --release -p clientmq-server -- --dev-accept-any-token {{ARGS}}

# Every test of the workspace, simulator and SDK interop included (needs Node.js and Python).
test:
    cargo test --workspace

# The fast inner loop: formatting, lints, then the unit and simulator tests; no Node.js, no NATS.
check:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo test --workspace --lib --bins
    cargo test -p clientmq-core --tests
    cargo test -p clientmq-sim --tests

# Formatting and lints, as CI runs them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# List the failure scenarios.
sim:
    cargo run --release -p clientmq-sim -- list

# Replay one scenario, writing its trace and plot next to it in target/.
replay NAME *ARGS:
    cargo run --release -p clientmq-sim -- replay {{NAME}} --trace target/{{file_stem(NAME)}}.trace --plot target/{{file_stem(NAME)}}.svg {{ARGS}}

# Random fault schedules, on every core, collecting every failure (shrunk, written under
# target/explore/).
explore SEEDS="10000" FROM="0":
    cargo run --release -p clientmq-sim -- explore --seeds {{SEEDS}} --from {{FROM}} --keep-going

# Review changed trace snapshots (needs cargo-insta).
review:
    cargo insta test --review -p clientmq-sim

# Benchmarks against a tokio-tungstenite echo baseline and a Node gateway of the seed's design
# (bench/seed-gateway: needs node and npm), and simulator speed; writes BENCHMARKS.md.
bench *ARGS:
    cargo build --release -p clientmq-server -p clientmq-chat -p clientmq-bench -p clientmq-sim
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; ulimit -n; ./target/release/clientmq-load suite --sim-bin target/release/clientmq-sim --out BENCHMARKS.md {{ARGS}}

# Only the fan-out figures (rooms of members, one publisher) against clientmq, a bare fan-out
# baseline, the Node seed and clientmq on NATS; rewrites their own block of BENCHMARKS.md.
bench-fanout *ARGS:
    cargo build --release -p clientmq-server -p clientmq-chat -p clientmq-bench
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; ./target/release/clientmq-load suite --only-fanout --out BENCHMARKS.md --command "just bench-fanout" {{ARGS}}

# Only the store figures: chat sends and joins through `clientmq-chat` on the store (state in
# JetStream), one and two workers, next to the in-memory worker; rewrites their own block of
# BENCHMARKS.md. Needs nats-server 2.9 or later (on PATH, or --nats-bin).
bench-store *ARGS:
    cargo build --release -p clientmq-server -p clientmq-chat -p clientmq-bench
    ./target/release/clientmq-load suite --only-store --out BENCHMARKS.md --command "just bench-store" {{ARGS}}

# Fuzz the codec, the EdgeAuth verifier and the HTTP head reader: CASES each, on one core.
fuzz CASES="10000000":
    FUZZ_CASES={{CASES}} cargo test --release -p clientmq-core --test fuzz -- --ignored --test-threads=1 --nocapture
    FUZZ_CASES={{CASES}} cargo test --release -p clientmq-server --test fuzz -- --ignored --test-threads=1 --nocapture

# Mutation testing (`cargo install cargo-mutants`): the core against its own tests, then the
# server's shard bookkeeping against the tests mutants.list names (that file says why each file
# and test is there). Reports go to target/mutants/; docs/mutants.md has the last run and why
# each survivor lives. The server run skips cargo-mutants' baseline, which would run only the
# mutated package's tests (without the simulator's targets); `just test` is that baseline.
mutants JOBS="2":
    mkdir -p target/mutants
    -cargo mutants -p clientmq-core --test-package clientmq-core --profile mutants -j {{JOBS}} --timeout 120 -o target/mutants/core
    cargo mutants $(sed -n 's/^file  *\([^ #]*\).*/-f \1/p' mutants.list) $(sed -n 's/^test  *\([^ #]*\).*/--cargo-test-arg=\1/p' mutants.list) --test-package clientmq-server --test-package clientmq-sim --profile mutants -j {{JOBS}} --baseline skip --timeout 180 --build-timeout 900 -o target/mutants/server

# Mutation testing of the fleet (mutants.fleet.list: the chat worker, the store client, the
# gateway's bus backend), in three passes, each on what the ones before missed: the chat and
# bus unit tests, then the crates' own tests on a real nats-server (`near`), then the
# simulator's (`far`). The gateway's files skip the first pass (no chat or bus test can see
# them). A pass exits 2 for what it leaves to the next: `-`, go on. Each takes
# --iterate, skipping what a run before caught: remove target/mutants/fleet to start over
# (after changing the code or weakening a test). Each pass builds only the targets it runs
# (`--cargo-arg`, not just `--cargo-test-arg`). Hours on two cores; an interrupted run resumes
# where it stopped when run again.
mutants-fleet JOBS="2":
    mkdir -p target/mutants
    -set -f; cargo mutants $(sed -n 's/^file  *\([^ #]*\).*/-f \1/p' mutants.fleet.list | grep -v '^-f crates/server/') $(sed -n 's/^exclude  *\([^ #]*\).*/-e \1/p' mutants.fleet.list) --test-package clientmq-chat --test-package clientmq-bus --cargo-arg=--lib --iterate --profile mutants -j {{JOBS}} --timeout 20 --build-timeout 900 -o target/mutants/fleet
    -set -f; cargo mutants $(sed -n 's/^file  *\([^ #]*\).*/-f \1/p' mutants.fleet.list) $(sed -n 's/^exclude  *\([^ #]*\).*/-e \1/p' mutants.fleet.list) $(sed -n 's/^near  *\([^ #]*\).*/--cargo-arg=\1/p' mutants.fleet.list) --iterate --test-package clientmq-server --test-package clientmq-bus --test-package clientmq-chat --profile mutants -j {{JOBS}} --baseline skip --timeout 300 --build-timeout 900 -o target/mutants/fleet
    set -f; cargo mutants $(sed -n 's/^file  *\([^ #]*\).*/-f \1/p' mutants.fleet.list) $(sed -n 's/^exclude  *\([^ #]*\).*/-e \1/p' mutants.fleet.list) $(sed -n 's/^far  *\([^ #]*\).*/--cargo-arg=\1/p' mutants.fleet.list) --iterate --test-package clientmq-sim --profile mutants -j {{JOBS}} --baseline skip --timeout 300 --build-timeout 900 -o target/mutants/fleet
