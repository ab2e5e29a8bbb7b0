#!/usr/bin/env bash
# End-to-end on a kind cluster: build the image, create a 3-node cluster without a CNI or
# kube-proxy, install weir from deploy/kubernetes (through deploy/kind, which sets the API
# server's address), wait for the nodes to become Ready (they do
# only once weir's conflist is in place), then check pod-to-Service and NodePort traffic.
#
# Needs docker (or podman with KIND_EXPERIMENTAL_PROVIDER=podman), kind ≥ 0.27 and kubectl.
# It CANNOT run on weir's development/CI machines (no container engine there); the tests there
# cover the same path with a mock API server (operator/agent/tests/k8s_source.rs) and validate
# these manifests (operator/agent/tests/deploy.rs).
#
#   deploy/kind/run.sh            # create, install, check, delete the cluster
#   KEEP=1 deploy/kind/run.sh     # leave the cluster up (kind delete cluster --name weir)
set -euo pipefail
cd "$(dirname "$0")/../.."
CLUSTER=weir
IMAGE=weir:dev
for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is not installed" >&2; exit 1; }
done

cleanup() { [ "${KEEP:-0}" = 1 ] || kind delete cluster --name "$CLUSTER"; }
trap cleanup EXIT

docker build -f deploy/Dockerfile -t "$IMAGE" .
kind create cluster --config deploy/kind/cluster.yaml --wait 0s
kind load docker-image "$IMAGE" --name "$CLUSTER"
# The base install plus the API server's real address (there is no kube-proxy to serve the
# in-cluster one).
kubectl apply -k deploy/kind
kubectl -n kube-system rollout status daemonset/weir-agent --timeout=5m
# Nodes turn Ready when the runtime finds weir's conflist, which the agent writes once synced.
kubectl wait --for=condition=Ready nodes --all --timeout=5m

kubectl apply -f deploy/kind/smoke.yaml
kubectl -n weir-smoke rollout status deployment/web --timeout=3m
kubectl -n weir-smoke wait --for=condition=Ready pod/client --timeout=3m

echo "pod → ClusterIP Service"
kubectl -n weir-smoke exec client -- /agnhost connect --timeout=5s web:80
echo "pod → pod on every node"
for ip in $(kubectl -n weir-smoke get pods -l app=web -o jsonpath='{.items[*].status.podIP}'); do
  kubectl -n weir-smoke exec client -- /agnhost connect --timeout=5s "$ip:8080"
done
echo "NodePort on every node, from the host"
port=$(kubectl -n weir-smoke get service web -o jsonpath='{.spec.ports[0].nodePort}')
for node in $(kubectl get nodes -o jsonpath='{.items[*].status.addresses[?(@.type=="InternalIP")].address}'); do
  docker run --rm --network kind curlimages/curl:8.11.1 -sS --max-time 5 -o /dev/null -w "$node:$port %{http_code}\n" "http://$node:$port/"
done
echo "weir's view of one node"
kubectl -n kube-system exec daemonset/weir-agent -c agent -- /usr/local/bin/weir services
echo "kind e2e passed"
