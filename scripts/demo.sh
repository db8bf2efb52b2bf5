#!/usr/bin/env bash
# The demo: installs build prerequisites when missing, builds the release
# binaries, then runs `fipsrelay demo`: a mock intake with a fresh PKI, the
# relay pointed at it, and a verified 10-second load over several product
# ports. Extra arguments go to `fipsrelay demo` (e.g. --seconds 30).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --locked --workspace --bins
exec target/release/fipsrelay demo "$@"
