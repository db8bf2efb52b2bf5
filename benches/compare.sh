#!/usr/bin/env bash
# fipsrelay vs HAProxy (Debian's, installed when missing), same mock intake,
# same loadgen, on this machine; then the same proxies driven by wrk to an
# nginx-full TLS intake (both Debian's, installed when missing). Extra
# arguments go to the bench:
#   --quick   3 s runs   --secs N   --reps N   --json FILE   --no-external
#   --only SUBSTRING (e.g. "Agent mix", "1 MiB closed", idle)   --idle-secs N
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
need=()
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
[ -x /usr/bin/wrk ] || need+=(wrk)
[ -f /usr/share/nginx/modules/ngx_http_echo_module.so ] || need+=(nginx-full)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --locked --workspace --bins
cargo bench --locked --bench compare -- "$@"
