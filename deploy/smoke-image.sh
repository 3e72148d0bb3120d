#!/usr/bin/env bash
# Smoke-test a built phigate image without running a container (these CI
# machines cannot: crun cannot set rlimits): mount its root filesystem with
# buildah and, in a chroot of it (needs root), run the binary the way the
# entrypoint would. Checks:
#   - the image config: ENTRYPOINT ["phigate"], CMD run --config
#     /etc/phigate/gateway.yaml, USER 65532, the spool VOLUME, OCI labels;
#   - `phigate --version` runs (every shared library is in the image);
#   - `phigate config check` accepts a sample configuration and policy;
#   - dev mode is absent: `phigate dev` is an unknown command and no
#     /dev/token code is in the binary;
#   - no shell in the image.
#
#   deploy/smoke-image.sh [TAG]
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
tag="${1:-localhost/phigate:$version}"
export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"
b() { buildah --storage-driver "$STORAGE_DRIVER" "$@"; }
fail() { echo "smoke-image: FAIL: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "needs root (buildah mount and chroot); run with sudo"

b inspect --type image "$tag" | VERSION="$version" python3 -c '
import json, os, sys
c = json.load(sys.stdin)["OCIv1"]["config"]
want = {
    "Entrypoint": ["phigate"],
    "Cmd": ["run", "--config", "/etc/phigate/gateway.yaml"],
    "User": "65532:65532",
}
bad = [f"{k}: {c.get(k)!r}, want {v!r}" for k, v in want.items() if c.get(k) != v]
if "/var/lib/phigate" not in (c.get("Volumes") or {}):
    bad.append("Volumes: " + repr(c.get("Volumes")))
labels = c.get("Labels") or {}
for k in ("title", "description", "version", "revision", "licenses", "source"):
    if not labels.get("org.opencontainers.image." + k):
        bad.append("label org.opencontainers.image." + k + " missing")
if labels.get("org.opencontainers.image.version") != os.environ["VERSION"]:
    bad.append("label version " + repr(labels.get("org.opencontainers.image.version")))
if bad:
    sys.exit("smoke-image: FAIL: image config: " + "; ".join(bad))
' || exit 1
echo "smoke-image: image config ok (entrypoint, cmd, user 65532, volume, OCI labels)"

ctr=$(b from --pull-never "$tag")
cleanup() { b umount "$ctr" >/dev/null 2>&1 || true; b rm "$ctr" >/dev/null 2>&1 || true; }
trap cleanup EXIT
root=$(b mount "$ctr")

[ ! -e "$root/bin/sh" ] && [ ! -e "$root/usr/bin/sh" ] || fail "the image has a shell"
run() { chroot --userspec=65532:65532 "$root" /usr/local/bin/phigate "$@"; }
out=$(run --version) || fail "phigate --version did not run in the image"
echo "smoke-image: $out"

# A sample configuration (key set from a file: no network in the chroot).
mkdir -p "$root/tmp/smoke/policies"
cp deploy/kubernetes/base/policies/fhir.yaml "$root/tmp/smoke/policies/"
cat > "$root/tmp/smoke/jwks.json" <<'JWKS'
{"keys":[{"kty":"EC","crv":"P-256","kid":"smoke","use":"sig","alg":"ES256",
 "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}
JWKS
cat > "$root/tmp/smoke/gateway.yaml" <<'YAML'
listen: 127.0.0.1:8080
admin_listen: 127.0.0.1:9090
upstream: { address: 127.0.0.1:8081 }
issuers:
  - issuer: https://idp.example.org
    audiences: [https://fhir.example.org]
    jwks_file: /tmp/smoke/jwks.json
    algorithms: [ES256]
policies: /tmp/smoke/policies
audit: { dir: /var/lib/phigate/spool }
YAML
chmod -R a+rX "$root/tmp/smoke"
run config check /tmp/smoke/gateway.yaml || fail "config check of the sample configuration"
echo "smoke-image: config check ok"

if run dev --help >/dev/null 2>&1; then fail "phigate dev exists in the image"; fi
if grep -q -a "/dev/token" "$root/usr/local/bin/phigate"; then fail "the binary contains /dev/token"; fi
echo "smoke-image: dev mode absent (no \`phigate dev\`, no /dev/token in the binary)"
size=$(du -sh "$root" | cut -f1)
echo "smoke-image: ok ($tag, root filesystem $size)"
