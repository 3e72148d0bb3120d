#!/usr/bin/env bash
# Throughput of the proxy with the session check, as a ratio against the
# plain cached-token path measured in the same run (interleaved rounds):
# three `phigate run` instances — no sessions, `store: memory`, `store: nats`
# (a real nats-server) — the same token (with `sid`), the same demo upstream,
# driven in turn by wrk (keep-alive, saturating). Each instance has one worker
# thread; wrk and the upstream run beside it (2-core machines: compare ratios,
# not absolutes).
#
#   benches/session-overhead.sh [--rounds 3] [--seconds 5]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=3 SECS=5
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
PHIGATE=$(realpath "${PHIGATE:-target/release/phigate}")
NATS=$(command -v nats-server || echo /usr/sbin/nats-server)
for b in "$PHIGATE" "$NATS" "$(command -v wrk)"; do [ -x "$b" ] || { echo "missing $b" >&2; exit 1; }; done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$W"' EXIT
NP=$(free_port); DP=$(free_port); DA=$(free_port)
"$NATS" -a 127.0.0.1 -p "$NP" -js -sd "$W/nats" >"$W/nats.log" 2>&1 &
( cd "$W" && exec "$PHIGATE" dev --listen 127.0.0.1:$DP --admin-listen 127.0.0.1:$DA --audit-durability none >"$W/dev.log" 2>&1 ) &
for _ in $(seq 100); do grep -q "upstream   http://" "$W/dev.log" 2>/dev/null && curl -sf "http://127.0.0.1:$DA/readyz" >/dev/null && break; sleep 0.1; done
UP=$(grep -o 'upstream   http://[0-9.:]*' "$W/dev.log" | head -1 | sed 's|upstream   http://||')
declare -A PORT ADMIN
for v in none memory nats; do
  PORT[$v]=$(free_port); ADMIN[$v]=$(free_port)
  mkdir -p "$W/$v/policies"
  printf 'version: 1\nroutes:\n  - methods: [GET]\n    path: /fhir/Patient/{id}\n    scopes: { any_of: [user/Patient.rs] }\n' >"$W/$v/policies/p.yaml"
  case $v in
    none) S="" ;;
    memory) S=$'sessions:\n  idle_timeout: 15m\n  store: memory\n' ;;
    nats) S=$(printf 'sessions:\n  idle_timeout: 15m\n  store: nats\n  nats: { url: "nats://127.0.0.1:%s", bucket: bench }\n' "$NP") ;;
  esac
  cat >"$W/$v/gateway.yaml" <<C
listen: 127.0.0.1:${PORT[$v]}
admin_listen: 127.0.0.1:${ADMIN[$v]}
upstream: { address: "$UP" }
issuers:
  - issuer: phigate-dev
    audiences: [phigate-dev]
    jwks_uri: http://127.0.0.1:$DA/dev/jwks.json
    algorithms: [ES256]
policies: policies
audit: { dir: spool, durability: interval }
threads: 1
$S
C
  ( cd "$W/$v" && RUST_LOG=warn exec "$PHIGATE" run --config gateway.yaml >"$W/$v/gw.log" 2>&1 ) &
done
for v in none memory nats; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:${ADMIN[$v]}/readyz" >/dev/null && break; sleep 0.1; done
done
T=$(curl -sf "http://127.0.0.1:$DA/dev/token?scope=user/Patient.rs&sid=bench&ttl=3600")
declare -A RES
for r in $(seq "$ROUNDS"); do
  for v in none memory nats; do
    out=$(wrk -t1 -c16 -d"${SECS}s" -H "Authorization: Bearer $T" "http://127.0.0.1:${PORT[$v]}/fhir/Patient/123" 2>&1)
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
    [ -z "$non2xx" ] || { echo "non-2xx answers from $v: $non2xx" >&2; exit 1; }
    RES[$v,$r]=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  done
done
echo "cached ES256 token with sid, 1 proxy thread, wrk -c16, $ROUNDS rounds × ${SECS}s interleaved"
for k in "${!RES[@]}"; do echo "$k ${RES[$k]}"; done >"$W/results.txt"
python3 - "$ROUNDS" "$W/results.txt" <<'PY'
import sys, statistics
rounds = int(sys.argv[1])
res = {}
for line in open(sys.argv[2]):
    k, v = line.split()
    var, r = k.split(","); res.setdefault(var, {})[int(r)] = float(v)
print(f"{'variant':<16}{'req/s median':>14}{'× no sessions: median [min–max]':>36}")
for var in ["none", "memory", "nats"]:
    rps = [res[var][r] for r in range(1, rounds + 1)]
    ratios = [res[var][r] / res["none"][r] for r in range(1, rounds + 1)]
    print(f"{var:<16}{statistics.median(rps):>14.0f}{statistics.median(ratios):>18.2f} [{min(ratios):.2f}–{max(ratios):.2f}]")
PY
