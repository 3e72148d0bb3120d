#!/usr/bin/env bash
# Session store write rate under load: how many NATS KV writes phigate's
# coalesced "last seen" updates cost at ~10,000 requests/s.
#
#   benches/session-writes.sh [--rate 10000] [--seconds 20] [--sessions 1,10] [--write-interval 1s]
#
# Starts a real nats-server (JetStream), `phigate dev` as the token issuer and
# demo upstream, and `phigate run` with `sessions.store: nats`; drives it with
# oha at a fixed total rate spread over N sessions (one oha per session, each
# with its own `sid` token), and reads `phigate_session_store_writes_total`
# before and after. Needs target/release/phigate (cargo build --release -p phigate),
# nats-server and oha (benches/setup-perf-tools.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=10000 SECONDS_=20 SESSIONS=1,10 WI=1s
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) RATE=$2; shift 2 ;;
    --seconds) SECONDS_=$2; shift 2 ;;
    --sessions) SESSIONS=$2; shift 2 ;;
    --write-interval) WI=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
PHIGATE=$(realpath "${PHIGATE:-target/release/phigate}")
NATS=$(command -v nats-server || echo /usr/sbin/nats-server)
for b in "$PHIGATE" "$NATS" "$(command -v oha)"; do [ -x "$b" ] || { echo "missing $b" >&2; exit 1; }; done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
NP=$(free_port); DP=$(free_port); DA=$(free_port); PP=$(free_port); PA=$(free_port)
"$NATS" -a 127.0.0.1 -p "$NP" -js -sd "$W/nats" >"$W/nats.log" 2>&1 &
( cd "$W" && exec "$PHIGATE" dev --listen 127.0.0.1:$DP --admin-listen 127.0.0.1:$DA --audit-durability none >"$W/dev.log" 2>&1 ) &
for _ in $(seq 100); do grep -q "upstream   http://" "$W/dev.log" 2>/dev/null && curl -sf "http://127.0.0.1:$DA/readyz" >/dev/null && break; sleep 0.1; done
UP=$(grep -o 'upstream   http://[0-9.:]*' "$W/dev.log" | head -1 | sed 's|upstream   http://||')
mkdir -p "$W/policies"
cat > "$W/policies/p.yaml" <<'P'
version: 1
routes:
  - methods: [GET]
    path: /fhir/Patient/{id}
    scopes: { any_of: [user/Patient.rs] }
P
cat > "$W/gateway.yaml" <<C
listen: 127.0.0.1:$PP
admin_listen: 127.0.0.1:$PA
upstream: { address: "$UP" }
issuers:
  - issuer: phigate-dev
    audiences: [phigate-dev]
    jwks_uri: http://127.0.0.1:$DA/dev/jwks.json
    algorithms: [ES256]
policies: policies
audit: { dir: spool, durability: interval }
log: { format: json }
threads: 1
sessions:
  idle_timeout: 15m
  write_interval: $WI
  store: nats
  nats: { url: "nats://127.0.0.1:$NP", bucket: bench }
C
( cd "$W" && RUST_LOG=warn exec "$PHIGATE" run --config gateway.yaml >"$W/gw.log" 2>&1 ) &
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PA/readyz" >/dev/null && break; sleep 0.1; done
metric() { curl -s "http://127.0.0.1:$PA/metrics" | awk -v m="$1" '$1==m {print $2}'; }
requests() { curl -s "http://127.0.0.1:$PA/metrics" | awk '/^phigate_requests_total\{/ && /reason="allowed"/ {s+=$2} END {print s+0}'; }
echo "rate ${RATE}/s for ${SECONDS_}s, write_interval $WI, NATS JetStream KV on loopback"
printf "%-9s %12s %12s %14s %16s\n" sessions "requests/s" "writes" "writes/s" "writes/1k req"
for S in ${SESSIONS//,/ }; do
  w0=$(metric phigate_session_store_writes_total); r0=$(requests)
  per=$((RATE / S)); conns=$(( 32 / S > 2 ? 32 / S : 2 ))
  for i in $(seq "$S"); do
    T=$(curl -sf "http://127.0.0.1:$DA/dev/token?scope=user/Patient.rs&sid=bench-$S-$i&ttl=3600")
    oha --no-tui -z "${SECONDS_}s" -q "$per" -c "$conns" -H "Authorization: Bearer $T" "http://127.0.0.1:$PP/fhir/Patient/123" >"$W/oha-$S-$i.txt" 2>&1 &
  done
  wait $(jobs -p | tail -n "$S") 2>/dev/null || true
  w1=$(metric phigate_session_store_writes_total); r1=$(requests)
  python3 - "$S" "$r0" "$r1" "$w0" "$w1" "$SECONDS_" <<'PY'
import sys
s, r0, r1, w0, w1, secs = sys.argv[1], *map(float, sys.argv[2:])
req, w = r1 - r0, w1 - w0
print(f"{s:<9} {req/secs:12.0f} {w:12.0f} {w/secs:14.2f} {1000*w/max(req,1):16.3f}")
PY
done
