#!/usr/bin/env bash
# The test command: installs build prerequisites when missing, checks the
# dependency policy (cargo deny: bans, licenses, sources; see deny.toml),
# then runs every test of the workspace (unit and end-to-end, both I/O
# backends), and the relay and fault-matrix tests once more over HTTP/2 to
# the mock intake (upstream.protocol = "h2"). FIPSRELAY_SKIP_DENY=1 skips the cargo-deny step (it is installed
# from crates.io the first time, which takes several minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if [ "${FIPSRELAY_SKIP_DENY:-0}" != "1" ]; then
  command -v cargo-deny >/dev/null 2>&1 || cargo install --locked cargo-deny
  cargo deny check bans licenses sources
fi
cargo build --workspace --all-targets --locked
cargo test --workspace --locked -- --test-threads 2
# The relay and fault-matrix tests again with HTTP/2 to the intake (tests
# that check the HTTP/1.1 session pool, or use the raw HTTP/1.1 intake, pin
# http1).
FIPSRELAY_TEST_PROTOCOL=h2 cargo test --locked --test relay --test faults -- --test-threads 2
