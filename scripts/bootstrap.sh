#!/usr/bin/env bash
# Install the system packages phigate needs to build and test, on Debian/Ubuntu.
# Idempotent: installs only what is missing. Run as root or with sudo available.
#
#   cmake, make, g++ : pingora's zlib-ng (libz-ng-sys) and aws-lc-sys build C code
#   pkg-config       : -sys crates locate system libraries
#   curl             : the quick-start curl commands
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v make >/dev/null 2>&1 || need+=(make)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v curl >/dev/null 2>&1 || need+=(curl)

if [ ${#need[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "bootstrap: cargo not found; install the Rust toolchain (rustup) first" >&2
  exit 1
fi
