#!/usr/bin/env bash
# README command 1: sets everything up on a fresh machine, brings up a 2-node lab and shows what
# weir is for, each step's output as the real run printed it: a Service load-balancing over pods
# on both nodes (no kube-proxy), DNS through a Service, a NetworkPolicy that drops a connection
# and `policy explain` naming the rule, `observe` showing the drop, the DNS answer and the Service
# translation, and the metric that counted the drop. The lab stays up to explore (`--down` removes
# it). Run it as root (`sudo ./scripts/demo.sh` otherwise; sudo itself is not needed as root).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces, eBPF): run it as root or with sudo" >&2; exit 1; }

./scripts/setup.sh
# shellcheck disable=SC1091
. "${WEIR_TOOLS:-$HOME/.cache/weir/tools}/env.sh"
cargo build --bins --locked --quiet
# The lab's pod image (sandbox process and test server), static for musl.
cargo build --locked --quiet --release --target x86_64-unknown-linux-musl -p weir-lab-pod

export WEIR_LAB=${WEIR_LAB:-demo}
lab=./target/debug/weir-lab
routing=${ROUTING:-direct}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '\033[2m$ weir-lab %s\033[0m\n' "$*"; $lab "$@"; }
# Retries a check for up to 5 s (the agents learn about objects by watching the cluster).
until_ok() { for _ in $(seq 25); do "$@" && return 0; sleep 0.2; done; "$@"; }
ip_of() { $lab get pods -o json | python3 -c "import json,sys; print(next(p['ip'] for p in json.load(sys.stdin) if p['name']=='$1'))"; }
vip_of() { $lab get services | python3 -c "import json,sys; print(next(s['clusterIP'] for s in json.load(sys.stdin) if s['name']=='$1'))"; }
# `probe FROM HOST:PORT [udp]`: connected/refused/timeout and what the server answered.
probe() { $lab probe "$1" "$2" --protocol "${3:-tcp}" --timeout 1s -o json |
  python3 -c "import json,sys; r=json.load(sys.stdin); print((r['result']+' '+(r.get('reply') or '')).strip())"; }

$lab down >/dev/null
say "A 2-node cluster in network namespaces: weir-agent and containerd on each node, pods made through CRI and wired by the real weir-cni"
run up --nodes 2 --routing "$routing"
run apply -f deploy/examples/demo-app.yaml
$lab get pods
web2=$(ip_of web-2); dns_ip=$(ip_of dns)
web_vip=$(vip_of web); dns_vip=$(vip_of dns)

say "A Service load-balancing over pods on both nodes: ClusterIP $web_vip:80, translated at connect() in the kernel"
served() { [ "$(probe demo/client "$web_vip:80")" != timeout ]; }
until_ok served
$lab weir n1 -- services | grep -E "^FRONTEND|^$web_vip:80 "
for i in 1 2 3 4 5 6; do
  printf '  demo/client -> %s:80  %s\n' "$web_vip" "$(probe demo/client "$web_vip:80")"
done

say "DNS through a Service: dig in the client pod, dnsmasq in the dns pod"
$lab exec demo/dns -- dnsmasq --no-resolv --no-hosts --user=root --group=root \
  --pid-file="/run/weir-lab/$WEIR_LAB/dnsmasq.pid" --listen-address="$dns_ip" --bind-interfaces \
  --local-ttl=60 --host-record=web.demo.lab,"$web_vip"
dig_web() { $lab exec demo/client -- dig +short +tries=1 +time=1 @"$dns_vip" web.demo.lab A; }
until_ok dig_web >/dev/null
printf '\033[2m$ dig @%s web.demo.lab   (in demo/client)\033[0m\n' "$dns_vip"
dig_web

say "NetworkPolicy: only app=client may reach web, on 8080"
printf '  before: demo/intruder -> web-2 %s:8080  %s\n' "$web2" "$(probe demo/intruder "$web2:8080")"
run apply -f deploy/examples/demo-policy.yaml
blocked() { [ "$(probe demo/intruder "$web2:8080")" = timeout ]; }
until_ok blocked
printf '  after:  demo/intruder -> web-2 %s:8080  %s\n' "$web2" "$(probe demo/intruder "$web2:8080")"
printf '  after:  demo/client   -> web-2 %s:8080  %s\n' "$web2" "$(probe demo/client "$web2:8080")"
run policy explain --from demo/intruder --to demo/web-2 --port 8080 || true

say "What on-call sees: flows from both nodes, merged (Hubble's fields; -o json for jq)"
sleep 0.5
run observe --namespace demo --verdict dropped --last 2 2>/dev/null
run observe --namespace demo --protocol dns --node n1 --last 2 2>/dev/null
run observe --to-service demo/web --verdict translated --last 2 2>/dev/null

say "The Prometheus metric that counted the drops (n2's agent, where web-2 runs)"
printf '\033[2m$ weir-lab metrics n2 | grep weir_flow_drops_total\033[0m\n'
$lab metrics n2 | grep '^weir_flow_drops_total'

if [ "${1:-}" = "--down" ]; then
  $lab down
  say "lab removed"
else
  cat <<MSG

The lab "$WEIR_LAB" is still up. Try:
  $lab observe --follow                 # every flow, drop and DNS message as it happens
  $lab policy show                      # each endpoint's effective policy
  $lab weir n2 -- datapath              # programs per interface and drop counters, from the kernel
  $lab exec demo/client -- ping -c 3 $web2
  $lab agent restart n1                 # the pinned datapath keeps forwarding meanwhile
Remove it with:  WEIR_LAB=$WEIR_LAB $lab down
MSG
fi
