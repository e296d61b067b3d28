#!/usr/bin/env bash
# Builds Argo Events' EventSource and Sensor services (bench/peers/argo-events, which calls
# Argo's own entry points) through the Go module proxy, into
# ~/.cache/ofe-tools/argo-events-<version>/bin/argo-events, and prints that path. `ofe-bench
# --peer` runs it side by side with ofe.
#
# Argo Events' module pulls every EventSource and trigger kind it supports (cloud SDKs among
# them): the first build downloads and compiles a lot, several minutes on 2 cores.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
version=$(sed -n 's/^require github.com\/argoproj\/argo-events \(v[0-9.]*\)$/\1/p;s/^\tgithub.com\/argoproj\/argo-events \(v[0-9.]*\)$/\1/p' \
  "$here/bench/peers/argo-events/go.mod" | head -1)
out="$HOME/.cache/ofe-tools/argo-events-$version"
if [ -x "$out/bin/argo-events" ]; then echo "$out/bin/argo-events"; exit 0; fi
export GOPATH="$HOME/.cache/ofe-tools/go" GOMODCACHE="$HOME/.cache/ofe-tools/go/mod" \
  GOCACHE="$HOME/.cache/ofe-tools/go/cache" CGO_ENABLED=0 GOFLAGS=-mod=readonly
start=$(date +%s)
echo "argo-events: building $version (several minutes on 2 cores the first time)" >&2
mkdir -p "$out/bin"
(cd "$here/bench/peers/argo-events" && go build -trimpath -o "$out/bin/argo-events.tmp" .) >&2
mv "$out/bin/argo-events.tmp" "$out/bin/argo-events"
echo "argo-events: built in $(( $(date +%s) - start )) s" >&2
echo "$out/bin/argo-events"
