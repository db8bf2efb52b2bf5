#!/usr/bin/env bash
# loadgen's open loop against h2load --rps (Debian's nghttp2-client), both to
# a plain nginx (Debian's), installed when missing. Prints p50/p99 side by
# side and whether they agree within 20 % or 50 µs. Extra arguments go to the
# bench:   --quick   2 rates   --secs N   --reps N
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
need=()
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
[ -x /usr/sbin/nginx ] || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --locked --workspace --bins
cargo bench --locked --bench openloop -- "$@"
