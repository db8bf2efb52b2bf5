#!/usr/bin/env bash
# fipsrelay vs HAProxy (Debian's, installed when missing), same mock intake,
# same loadgen, on this machine. Extra arguments go to the bench:
#   --quick   3 s runs   --secs N   --reps N   --json FILE
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if [ ! -x /usr/sbin/haproxy ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq haproxy >/dev/null
fi
cargo build --release --locked --workspace --bins
cargo bench --locked --bench compare -- "$@"
