#!/usr/bin/env bash
# Build the phigate OCI image on this machine, without a registry: the
# release binary WITHOUT dev mode is built locally, its runtime root
# filesystem assembled by collect-rootfs.sh, and deploy/Containerfile's
# `runtime` stage built with buildah (chroot isolation, no daemon) with the
# `build` stage replaced by that directory (--build-context build=DIR): the
# image config (user, entrypoint, volume, labels) is the Containerfile's.
#
#   deploy/build-image.sh [TAG]     # default localhost/phigate:<version>
#   deploy/build-image.sh --oci-archive phigate.tar [TAG]
# Needs buildah (Debian: `apt-get install buildah`; scripts/bootstrap.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
archive=""
if [ "${1:-}" = "--oci-archive" ]; then archive="$2"; shift 2; fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
tag="${1:-localhost/phigate:$version}"
command -v buildah >/dev/null || { echo "build-image: buildah not found (apt-get install buildah)" >&2; exit 1; }

target_dir="${CARGO_TARGET_DIR:-target}/image"
echo "build-image: cargo build --release -p phigate --no-default-features (no dev mode)" >&2
cargo build --release --locked -p phigate --no-default-features --target-dir "$target_dir"
bin="$target_dir/release/phigate"
if "$bin" dev --help >/dev/null 2>&1; then
  echo "build-image: the binary still has dev mode" >&2; exit 1
fi

ctx=$(mktemp -d); trap 'rm -rf "$ctx"' EXIT
deploy/collect-rootfs.sh "$bin" "$ctx/rootfs"
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
export BUILDAH_ISOLATION=chroot STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"
buildah --storage-driver "$STORAGE_DRIVER" bud --isolation chroot \
  --build-context build="$ctx" \
  --target runtime \
  --build-arg VERSION="$version" --build-arg REVISION="$revision" \
  --layers=false -f deploy/Containerfile -t "$tag" "$ctx" >&2
if [ -n "$archive" ]; then
  rm -f "$archive"
  buildah --storage-driver "$STORAGE_DRIVER" push "$tag" "oci-archive:$archive" >&2
fi
echo "build-image: built $tag" >&2
echo "$tag"
