#!/usr/bin/env bash
# The CPU cost of two fipsrelay binaries on the same load, in one run: the
# glibc release build (`cargo build --release`) against the static musl one
# (scripts/build-static.sh), docs/install.md "Why static". One mock intake,
# each relay in turn with one worker on epoll, a closed loop of `loadgen`
# (16 connections, BODY-sized series bodies, 4k by default) through it for SECS seconds,
# interleaved A, B, A, B, ... REPS times. Per run: requests/s and the
# relay's CPU (utime + stime from /proc) per request; at the end the medians
# and the ratio B/A. Loopback only; every run is bounded by SECS.
#
#   benches/static_cpu.sh A_BINARY B_BINARY [SECS] [REPS] [BODY]
# loadgen and mock-intake come from target/release (cargo build --release
# --locked -p loadgen --bins).
set -euo pipefail
cd "$(dirname "$0")/.."
a=${1:?usage: benches/static_cpu.sh A_BINARY B_BINARY [SECS] [REPS] [BODY]}
b=${2:?usage: benches/static_cpu.sh A_BINARY B_BINARY [SECS] [REPS] [BODY]}
secs=${3:-10}
reps=${4:-3}
body=${5:-4k}
bin=${CARGO_TARGET_DIR:-target}/release
for tool in "$bin/loadgen" "$bin/mock-intake"; do
  [ -x "$tool" ] || { echo "static_cpu.sh: $tool missing: cargo build --release --locked -p loadgen --bins" >&2; exit 1; }
done
work=$(mktemp -d /tmp/fipsrelay-static-cpu.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
"$bin/mock-intake" --listen 127.0.0.1:0 --tls-dir "$work/tls" >"$work/mock.out" 2>"$work/mock.err" &
pids+=($!)
for _ in $(seq 100); do grep -q '^listening on' "$work/mock.out" 2>/dev/null && break; sleep 0.05; done
mock=$(sed -n 's/^listening on //p' "$work/mock.out")
[ -n "$mock" ] || { echo "static_cpu.sh: the mock intake did not start: $(cat "$work/mock.err")" >&2; exit 1; }
base=${FIPSRELAY_BENCH_PORT:-21800}
cat >"$work/relay.toml" <<TOML
[listen]
port_range_start = $base
[workers]
io = "epoll"
threads = 1
pin = false
[upstream]
ca_file = "$work/tls/ca.pem"
override_addr = "$mock"
[health]
enabled = false
[admin]
token_file = "$work/admin.token"
TOML
clk=$(getconf CLK_TCK)
# run BINARY LABEL: one measured run; prints "LABEL req/s cpu_us/req".
run() {
  "$1" run --config "$work/relay.toml" 2>"$work/relay.log" &
  local pid=$!
  for _ in $(seq 200); do grep -q 'fipsrelay ready' "$work/relay.log" 2>/dev/null && break; sleep 0.05; done
  grep -q 'fipsrelay ready' "$work/relay.log" || { echo "static_cpu.sh: $1 did not start: $(cat "$work/relay.log")" >&2; exit 1; }
  # A second of warm-up: sessions to the intake pooled, allocator warm.
  "$bin/loadgen" -q --ports $((base + 1)) --host 127.0.0.1 -c 16 --body-size "$body" -d 1s >/dev/null
  local t0 t1
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  "$bin/loadgen" -q --ports $((base + 1)) --host 127.0.0.1 -c 16 --body-size "$body" -d "${secs}s" --json "$work/run.json" >/dev/null
  t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  python3 - "$work/run.json" "$2" "$((t1 - t0))" "$clk" "$secs" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
ok = report["ok"]  # answers with a 2xx status
ticks, clk, secs = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
print(f"{sys.argv[2]} {ok / secs:.0f} {ticks / clk * 1e6 / max(ok, 1):.1f}")
PY
}
echo "# A = $a"
echo "# B = $b"
echo "# $reps x $secs s closed loop, 16 connections, $body bodies, one epoll worker; label req/s cpu_us/req"
for _ in $(seq "$reps"); do
  run "$a" A | tee -a "$work/results"
  run "$b" B | tee -a "$work/results"
done
python3 - "$work/results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = {k: (statistics.median(float(r[1]) for r in rows if r[0] == k),
           statistics.median(float(r[2]) for r in rows if r[0] == k)) for k in ("A", "B")}
for k, (rps, cpu) in med.items():
    print(f"median {k}: {rps:.0f} req/s, {cpu:.1f} us CPU/request")
print(f"ratio B/A: throughput {med['B'][0] / med['A'][0]:.3f}, CPU per request {med['B'][1] / med['A'][1]:.3f}")
PY
