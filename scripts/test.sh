#!/usr/bin/env bash
# The test command: installs build prerequisites when missing, checks the
# dependency policy (cargo deny: bans, licenses, sources; see deny.toml),
# then runs every test of the workspace once (unit and end-to-end). The
# end-to-end tests run the relay with the product's defaults, the upstream
# protocol included (auto: HTTP/2 to the mock intake, which offers h2 by
# ALPN); each runs on both I/O backends, and those whose behaviour can differ
# by upstream protocol run on both protocols too (HTTP/1.1 pinned, and the
# default), as tests of their own (`both_backends_both_protocols!` in
# tests/common/mod.rs). FIPSRELAY_SKIP_DENY=1 skips the cargo-deny step (it
# is installed from crates.io the first time, which takes several minutes);
# FIPSRELAY_TEST_SKIP_URING=1 skips the io_uring variants where the host
# blocks io_uring.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if [ "${FIPSRELAY_SKIP_DENY:-0}" != "1" ]; then
  command -v cargo-deny >/dev/null 2>&1 || cargo install --locked cargo-deny
  cargo deny check bans licenses sources
fi
# The end-to-end tests need the workspace's binaries (loadgen, mock-intake)
# beside fipsrelay.
cargo build --workspace --all-targets --locked
cargo test --workspace --locked -- --test-threads 2
