#!/usr/bin/env bash
# Assembles the root filesystem of ofe's image in ROOTFS from BINARY: the binary (stripped), the
# shared libraries it links and the loader, exactly as `ldd` lists them, the CA bundle (for
# HTTPS sinks and TLS brokers), and an empty /var/lib/ofe and /tmp. Nothing else: no shell,
# no package manager. Used by scripts/image.sh and by the Dockerfile's builder stage.
#
#   image-rootfs.sh BINARY ROOTFS
set -euo pipefail
binary=$1 rootfs=$2
rm -rf "$rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/var/lib/ofe" "$rootfs/tmp"
strip --strip-debug -o "$rootfs/usr/local/bin/ofe" "$binary" 2>/dev/null || cp "$binary" "$rootfs/usr/local/bin/ofe"
chmod 0755 "$rootfs/usr/local/bin/ofe"
# Every absolute path ldd prints: the libraries (`name => /path (addr)`) and the loader.
for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
# Name the non-root user the image runs as, for tools that look it up.
mkdir -p "$rootfs/etc"
printf 'root:x:0:0:root:/:/sbin/nologin\nofe:x:65532:65532:ofe:/var/lib/ofe:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nofe:x:65532:\n' >"$rootfs/etc/group"
chmod 1777 "$rootfs/tmp"
