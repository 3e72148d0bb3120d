#!/usr/bin/env bash
# Produce an audit spool with the dev gateway: normal clinical traffic plus
# planted anomalies, for `phigate audit review`, `policy suggest`,
# `policy replay` and the HTML report.
#
#   scripts/demo-audit-spool.sh OUT_DIR [PHIGATE_BINARY]
#
# OUT_DIR/spool is the hash-chained spool; OUT_DIR/planted.txt lists what was
# planted. Planted: `snoop` reads 60 distinct patients (breadth); `prober`
# sends 30 writes it has no scope for (probing); `erdoc` uses break-glass 4
# times with one justification; `curious` reads watch-listed Patient/999
# (restricted record); `roamer` calls from 6 loopback addresses (token
# anomaly); `nightowl` (role billing) works outside billing hours when the
# review config says so.
set -euo pipefail
OUT=${1:?usage: demo-audit-spool.sh OUT_DIR [PHIGATE]}
PHIGATE=$(realpath "${2:-target/debug/phigate}")
mkdir -p "$OUT"; OUT=$(realpath "$OUT")
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P=$(free_port); A=$(free_port)
( cd "$OUT" && exec "$PHIGATE" dev --listen 127.0.0.1:$P --admin-listen 127.0.0.1:$A \
    --audit-dir "$OUT/spool" --audit-file "$OUT/audit.jsonl" >"$OUT/dev.log" 2>&1 ) &
DEV=$!
trap 'kill $DEV 2>/dev/null; wait $DEV 2>/dev/null' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$A/readyz" >/dev/null && nc -z 127.0.0.1 $P 2>/dev/null && break; sleep 0.1; done
tok() { curl -sf "http://127.0.0.1:$A/dev/token?ttl=3600&$1"; }
get() { curl -s -o /dev/null -w "%{http_code}\n" -H "Authorization: Bearer $1" "${@:3}" "http://127.0.0.1:$P$2"; }
: >"$OUT/planted.txt"
# Normal users: clinicians reading a few patients and their observations.
for n in 1 2 3 4 5 6 7 8; do
  T=$(tok "sub=nurse$n&client_id=ehr-app&roles=clinician&scope=user/Patient.rs%20user/Observation.rs%20user/Observation.c%20user/Encounter.rs")
  for p in 123 example 123 example; do
    get "$T" "/fhir/Patient/$p" >/dev/null
    get "$T" "/fhir/Observation?patient=$p" >/dev/null
  done
done
# Breadth: one clinician reads 60 distinct patients.
T=$(tok "sub=snoop&client_id=ehr-app&roles=clinician&scope=user/Patient.rs%20user/Observation.rs%20user/Encounter.rs")
for p in $(seq 1000 1059); do get "$T" "/fhir/Patient/$p" >/dev/null; done
echo "breadth: snoop read 60 distinct patients" >>"$OUT/planted.txt"
# Probing: 30 writes without the scope for them.
T=$(tok "sub=prober&client_id=scanner&scope=user/Patient.rs")
for i in $(seq 30); do
  get "$T" /fhir/Observation -X POST -H 'Content-Type: application/fhir+json' -d '{"resourceType":"Observation","status":"final"}' >/dev/null
done
echo "probing: prober sent 30 denied writes (insufficient_scope)" >>"$OUT/planted.txt"
# Break-glass: four emergency reads with the same justification.
T=$(tok "sub=erdoc&client_id=ehr-app&roles=clinician&scope=emergency.phi.read")
for p in 123 example 123 example; do
  get "$T" "/fhir/Patient/$p" -H 'X-Break-Glass-Reason: ETREAT patient unconscious in ED' >/dev/null
done
echo "break-glass: erdoc, 4 emergency reads, one justification repeated verbatim" >>"$OUT/planted.txt"
# Restricted record: a watch-listed patient (999: a staff member's record).
T=$(tok "sub=curious&client_id=ehr-app&roles=clinician&scope=user/Patient.rs")
get "$T" /fhir/Patient/999 >/dev/null
echo "restricted: curious read Patient/999 (watch list)" >>"$OUT/planted.txt"
# Token anomaly: one subject from six client addresses within a minute.
T=$(tok "sub=roamer&client_id=ehr-app&roles=clinician&scope=user/Patient.rs")
for ip in 2 3 4 5 6 7; do get "$T" /fhir/Patient/123 --interface 127.0.0.$ip >/dev/null; done
echo "token anomaly: roamer from 127.0.0.2-7" >>"$OUT/planted.txt"
# Off-hours: role billing outside billing hours (the review config sets hours that exclude now).
T=$(tok "sub=nightowl&client_id=billing-app&roles=billing&scope=user/Patient.rs%20user/Observation.rs")
for p in 123 example; do get "$T" "/fhir/Patient/$p" >/dev/null; done
echo "off-hours: nightowl (role billing)" >>"$OUT/planted.txt"
kill $DEV; wait $DEV 2>/dev/null || true
trap - EXIT
echo "spool: $OUT/spool ($(wc -l <"$OUT/audit.jsonl") records)"
