#!/usr/bin/env bash
# Builds ofe's OCI image with buildah from this machine's binary (no image is pulled: the
# Dockerfile's runtime stage is FROM scratch, fed the root filesystem assembled here) and
# writes an OCI archive that `podman load`, `docker load` and `skopeo copy` take.
#
#   scripts/image.sh [--binary PATH] [--tag NAME:TAG] [--out FILE]
#
# Defaults: the release binary (`cargo build --release` first), the tag deploy/ names
# (ghcr.io/ofe-dev/ofe:<version>), and target/image/ofe-<version>.oci.tar. Push with
#   skopeo copy oci-archive:target/image/ofe-<version>.oci.tar docker://ghcr.io/ofe-dev/ofe:<version>
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
binary="" tag="ghcr.io/ofe-dev/ofe:$version" out="target/image/ofe-$version.oci.tar"
while [ $# -gt 0 ]; do
  case $1 in
    --binary) binary=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "image.sh: unknown argument $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
done
need=()
for tool in buildah podman skopeo runc; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
  echo "image: installing ${need[*]}" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}") >&2
fi
if [ -z "$binary" ]; then
  cargo build --release --locked --bin ofe >&2
  binary=target/release/ofe
fi
scripts/image-rootfs.sh "$binary" target/image/rootfs
buildah bud --quiet --layers=false --build-arg ROOTFS=prebuilt --target runtime -f Dockerfile -t "$tag" . >&2
mkdir -p "$(dirname "$out")"
rm -f "$out"
skopeo copy --quiet "containers-storage:$tag" "oci-archive:$out:$tag" >&2
echo "image: $tag, written to $out ($(du -h "$out" | cut -f1))" >&2
echo "$out"
