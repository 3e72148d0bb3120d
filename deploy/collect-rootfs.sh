#!/usr/bin/env bash
# Assemble the runtime root filesystem of the phigate image: the binary, the
# shared libraries it links (exactly what `ldd` lists, plus the dynamic
# loader), CA certificates for HTTPS key sets and upstreams, a passwd/group
# entry for the unprivileged user, and the spool and config directories.
# No shell, no package manager, nothing else.
#
#   deploy/collect-rootfs.sh BINARY OUTDIR
# Used by deploy/Containerfile (build stage) and deploy/build-image.sh.
set -euo pipefail
bin="$1"; out="$2"
uid=65532
rm -rf "$out"; mkdir -p "$out"
install -D -m 0755 "$bin" "$out/usr/local/bin/phigate"
# Shared libraries: "name => /path (addr)" and the loader "/lib64/ld-... (addr)".
ldd "$bin" | awk '/=>/ { print $3 } !/=>/ && $1 ~ /^\// { print $1 }' | while read -r lib; do
  [ -n "$lib" ] && [ -e "$lib" ] || continue
  mkdir -p "$out$(dirname "$lib")"
  cp -L "$lib" "$out$lib"
done
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$out/etc/ssl/certs/ca-certificates.crt"
fi
mkdir -p "$out/etc" "$out/tmp" "$out/etc/phigate/policies" "$out/var/lib/phigate/spool"
chmod 1777 "$out/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\nphigate:x:%s:%s:phigate:/var/lib/phigate:/sbin/nologin\n' "$uid" "$uid" > "$out/etc/passwd"
printf 'root:x:0:\nphigate:x:%s:\n' "$uid" > "$out/etc/group"
printf 'hosts: files dns\n' > "$out/etc/nsswitch.conf"
chown -R "$uid:$uid" "$out/var/lib/phigate" 2>/dev/null || true
chmod 0700 "$out/var/lib/phigate"
