#!/usr/bin/env bash
# The side-by-side proxy comparison in one command (benches/README.md).
# Installs nothing: run benches/setup-perf-tools.sh once on a fresh machine.
#
#   benches/sidebyside.sh                                   # every system and case, 5 rounds × 8 s (~15 min)
#   benches/sidebyside.sh --systems pingora,phigate --cases cached --rounds 1 --seconds 3   # smoke
#   benches/sidebyside.sh --out sidebyside.json             # also a machine-readable summary
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p phigate -p phigate-benches
exec target/release/sidebyside "$@"
