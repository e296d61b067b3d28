#!/usr/bin/env bash
# Builds kube-apiserver and kubectl of one Kubernetes release from source, through the Go module
# proxy, into ~/.cache/ofe-tools/kube-<version>/bin, and prints that directory.
#
# `go install k8s.io/kubernetes/cmd/kube-apiserver@v…` refuses: k8s.io/kubernetes replaces its
# k8s.io/* staging modules with paths inside its own repository, which its module zip lacks. So a
# module of our own requires k8s.io/kubernetes and points every staging module at its published
# v0.<minor>.<patch> tag instead. A fresh build takes several minutes on 2 cores; later runs reuse it.
set -euo pipefail
version=${OFE_KUBE_VERSION:-1.34.2}
staging=0.${version#1.}
out="$HOME/.cache/ofe-tools/kube-$version"
log() { echo "kube: $*" >&2; }
if [ -x "$out/bin/kube-apiserver" ] && [ -x "$out/bin/kubectl" ]; then echo "$out/bin"; exit 0; fi

export GOPATH="$HOME/.cache/ofe-tools/go" GOMODCACHE="$HOME/.cache/ofe-tools/go/mod" \
  GOCACHE="$HOME/.cache/ofe-tools/go/cache" GOFLAGS=-mod=mod CGO_ENABLED=0
build="$out/src"
mkdir -p "$build" "$out/bin"
cd "$build"
go mod download "k8s.io/kubernetes@v$version"
upstream="$GOMODCACHE/cache/download/k8s.io/kubernetes/@v/v$version.mod"
{
  echo "module ofe.dev/kube-build"
  echo "go 1.24.0"
  echo "require k8s.io/kubernetes v$version"
  echo "replace ("
  # Every `k8s.io/x => ./staging/src/k8s.io/x` line of upstream's go.mod, pointed at the tag.
  sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\t\1 => \1 v'"$staging"'#p' "$upstream"
  echo ")"
} >go.mod
start=$(date +%s)
log "building kube-apiserver and kubectl $version (several minutes on 2 cores)"
go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=v$version -X k8s.io/client-go/pkg/version.gitVersion=v$version" \
  -o "$out/bin/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl >&2
log "built in $(( $(date +%s) - start )) s"
echo "$out/bin"
