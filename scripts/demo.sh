#!/usr/bin/env bash
# README command 1: sets everything up on a fresh machine (root), brings up a 2-node lab,
# deploys a small app over both nodes, shows the pods and a connectivity check through weir's
# eBPF datapath, and leaves the lab running for you to explore (`--down` tears it down).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces, eBPF)" >&2; exit 1; }

./scripts/setup.sh
# shellcheck disable=SC1091
. "${WEIR_TOOLS:-$HOME/.cache/weir/tools}/env.sh"
cargo build --bins --locked --quiet

export WEIR_LAB=${WEIR_LAB:-demo}
lab=./target/debug/weir-lab
routing=${ROUTING:-direct}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

$lab down >/dev/null
say "weir-lab up --nodes 2 --routing $routing"
$lab up --nodes 2 --routing "$routing"

say "weir-lab apply -f deploy/examples/demo-app.yaml"
$lab apply -f deploy/examples/demo-app.yaml
$lab get pods

ip_of() { $lab get pods -o json | python3 -c "import json,sys; print(next(p['ip'] for p in json.load(sys.stdin) if p['name']=='$1'))"; }
web1=$(ip_of web-1); web2=$(ip_of web-2)
check() { printf '  %-44s %s\n' "$1" "$($lab probe "${@:2}" -o json)"; }
say "connectivity from demo/client (on n1)"
check "same node     -> web-1 $web1:8080/tcp" demo/client "$web1:8080"
check "across nodes  -> web-2 $web2:8080/tcp" demo/client "$web2:8080"
check "across nodes  -> web-2 $web2:5353/udp" demo/client "$web2:5353" --protocol udp
check "outside (masquerade) 172.30.0.200:8000" demo/client 172.30.0.200:8000
check "closed port   -> web-2 $web2:9/tcp" demo/client "$web2:9"

say "what the kernel says on n1 (programs per interface, counters)"
$lab datapath n1

if [ "${1:-}" = "--down" ]; then
  $lab down
  say "lab removed"
else
  cat <<MSG

The lab "$WEIR_LAB" is still up. Try:
  $lab get pods
  $lab probe demo/web-2 $web1:8080
  $lab exec demo/client -- ping -c 3 $web2
  $lab agent restart n1        # the pinned datapath keeps forwarding meanwhile
  $lab datapath n2
  $lab observe --last 20       # flows, drops and DNS from every node (-o json, --follow, filters)
  $lab metrics n1              # Prometheus metrics of n1's agent
Remove it with:  WEIR_LAB=$WEIR_LAB $lab down
MSG
fi
