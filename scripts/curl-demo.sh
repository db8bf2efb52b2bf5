#!/usr/bin/env bash
# One request by hand: builds fipsrelay, starts a mock intake (fresh PKI) and the relay
# pointed at it, sends one Agent-like request through, and shows what the
# intake received and what the relay's status page says. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --locked -p fipsrelay -p loadgen --bins
bin=target/release
work=$(mktemp -d /tmp/fipsrelay-demo.XXXXXX)
base=${DD_FIPS_PORT_RANGE_START:-9803}
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

"$bin/mock-intake" --listen 127.0.0.1:0 --tls-dir "$work/tls" >"$work/mock.out" 2>"$work/mock.err" &
pids+=($!)
for _ in $(seq 100); do grep -q '^listening on' "$work/mock.out" 2>/dev/null && break; sleep 0.05; done
mock=$(sed -n 's/^listening on //p' "$work/mock.out")
[ -n "$mock" ] || { echo "mock intake did not start:"; cat "$work/mock.err"; exit 1; }
echo "== mock intake listening on $mock (TLS, CA in $work/tls/ca.pem)"

cat >"$work/fipsrelay.toml" <<TOML
[listen]
port_range_start = $base
[upstream]
ca_file = "$work/tls/ca.pem"
override_addr = "$mock"
[admin]
token_file = "$work/admin.token"
TOML
"$bin/fipsrelay" run --config "$work/fipsrelay.toml" 2>"$work/relay.log" &
pids+=($!)
for _ in $(seq 200); do grep -q 'fipsrelay ready' "$work/relay.log" 2>/dev/null && break; sleep 0.05; done
grep -q 'fipsrelay ready' "$work/relay.log" || { echo "relay did not start:"; cat "$work/relay.log"; exit 1; }
echo "== relay log"; cat "$work/relay.log"

printf '{"series":[{"metric":"demo.fipsrelay","points":[{"timestamp":%s,"value":1}],"type":1}]}' "$(date +%s)" >"$work/payload"
echo; echo "== curl -d @payload http://127.0.0.1:$((base + 1))/api/v2/series"
curl -sS -i -H 'Content-Type: application/json' -H 'DD-API-KEY: 00000000000000000000000000000000' \
  --data-binary @"$work/payload" "http://127.0.0.1:$((base + 1))/api/v2/series"
echo; echo; echo "== what the mock intake received (GET /mock/stats over TLS)"
port=${mock##*:}
curl -sS --cacert "$work/tls/ca.pem" --resolve "metrics.agent.ddog-gov.com:$port:127.0.0.1" \
  "https://metrics.agent.ddog-gov.com:$port/mock/stats"
echo; sleep 0.3
echo; echo "== relay status page (http://127.0.0.1:$base/)"
curl -sS "http://127.0.0.1:$base/" | head -8
echo "== demo done; files in $work"
