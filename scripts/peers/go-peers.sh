#!/usr/bin/env bash
# Builds the Go programs of tests/peers/go (an OpenFunction function on functions-framework-go,
# and a CloudEvents Go SDK client) through the Go module proxy, into
# ~/.cache/ofe-tools/go-peers-<digest of their sources>/, and prints that directory. A cold
# build takes about a minute; an unchanged tree reuses it.
set -euo pipefail
src="$(cd "$(dirname "$0")/../../tests/peers/go" && pwd)"
digest=$(cat "$src/go.mod" "$src/go.sum" $(find "$src/cmd" -name '*.go' | sort) | sha256sum | cut -c1-12)
out="$HOME/.cache/ofe-tools/go-peers-$digest"
if [ ! -x "$out/of-function" ] || [ ! -x "$out/ce-sdk" ]; then
  export GOPATH="$HOME/.cache/ofe-tools/go" GOMODCACHE="$HOME/.cache/ofe-tools/go/mod" \
    GOCACHE="$HOME/.cache/ofe-tools/go/cache" CGO_ENABLED=0
  start=$(date +%s)
  echo "go-peers: building the Go peers (functions-framework-go, CloudEvents SDK)" >&2
  (cd "$src" && go build -trimpath -o "$out.tmp/" ./cmd/...) >&2
  rm -rf "$out" && mv "$out.tmp" "$out"
  echo "go-peers: built in $(( $(date +%s) - start )) s" >&2
fi
echo "$out"
