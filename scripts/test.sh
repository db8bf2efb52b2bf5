#!/usr/bin/env bash
# The test command: installs build prerequisites when missing, then runs
# every test of the workspace (unit and end-to-end, both I/O backends).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --workspace --all-targets --locked
cargo test --workspace --locked -- --test-threads 2
