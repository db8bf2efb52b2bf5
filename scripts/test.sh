#!/usr/bin/env bash
# The test command: installs build prerequisites when missing, checks the
# dependency policy (cargo deny: bans, licenses, sources; see deny.toml),
# then runs every test of the workspace (unit and end-to-end, both I/O
# backends), first with upstream.protocol = "http1", then with the default,
# "auto" (HTTP/2 to the mock intake). FIPSRELAY_SKIP_DENY=1 skips the cargo-deny step (it is installed
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
# Every test again with the default upstream.protocol, auto, which speaks
# HTTP/2 to the mock intake and to nginx (the pass above pins http1; tests
# that check the HTTP/1.1 session pool, or use the raw HTTP/1.1 intake, pin
# it in both).
FIPSRELAY_TEST_PROTOCOL=auto cargo test --workspace --locked -- --test-threads 2
