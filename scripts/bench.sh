#!/usr/bin/env bash
# Benchmark: weir vs Debian's `bridge` CNI plugin (host-local IPAM), in one run on this machine.
#   - pod<->pod TCP throughput (iperf3, 5 s) and 1-byte request/response latency, same node and
#     across nodes (weir: direct routing through its eBPF datapath; bridge: cni0 + kernel routing);
#   - CNI ADD and DEL latency (p50/p99 over N pods) of the real plugin binaries.
# Prints a table with weir/bridge ratios and writes JSON (default bench-results.json).
# Everything runs in namespaces this script creates (wb-*) or in a weir lab; all removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench-results.json}
N_CNI=${N_CNI:-30}
IPERF_SECS=${IPERF_SECS:-4}
RR_COUNT=${RR_COUNT:-5000}
ROUNDS=${ROUNDS:-5}           # weir and bridge alternate; the median round is reported
# Request/response client and server share one CPU, so the figure is the network path and not
# cross-CPU wake-up noise (which dominates and varies ±25 % between runs on a 2-vCPU machine).
RR_CPU=${RR_CPU:-0}

# shellcheck source=scripts/release-bins.sh
. ./scripts/release-bins.sh bench
BIN=$PWD/target/release
LAB="$BIN/weir-lab"
export WEIR_LAB="b$$"
B="wb$$"                      # bridge baseline namespace prefix
WORK=$(mktemp -d /run/weir-bench.XXXXXX)
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  "$LAB" down >/dev/null 2>&1 || true
  for ns in $(ip netns list | awk '{print $1}' | grep "^$B-" || true); do ip netns del "$ns"; done
  rm -rf "$WORK"
}
trap cleanup EXIT
in_ns() { local ns=$1; shift; nsenter --net="/var/run/netns/$ns" -- "$@"; }
ms_now() { date +%s%N; }

# ---------------------------------------------------------------- weir lab
# The lab's own pods (the fallback runtime): the traffic measured here is the datapath's, and the
# CNI timings below call weir-cni directly; pod starts through containerd are bench-sandbox.sh's.
"$LAB" up --nodes 2 --routing direct --runtime builtin >/dev/null
pods=""
for spec in "w1 n1" "w2 n1" "w3 n2"; do
  set -- $spec
  pods+="---
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: default}
spec:
  nodeName: $2
  containers:
  - {name: iperf, image: x, command: [iperf3, -s, -p, '5201']}
  - {name: rr, image: x, command: [taskset, -c, '$RR_CPU', '$BIN/weir-lab', rr-serve, --port, '7000']}
"
done
echo "$pods" | "$LAB" apply -f - >/dev/null
wip() { "$LAB" get pods -o json | python3 -c "import json,sys; print(next(p['ip'] for p in json.load(sys.stdin) if p['name']=='$1'))"; }
W2=$(wip w2); W3=$(wip w3)
sleep 0.5

# ---------------------------------------------------------------- bridge baseline
ip netns add "$B-u"; ip -n "$B-u" link add br0 type bridge; ip -n "$B-u" link set br0 up
for i in 1 2; do
  ip netns add "$B-n$i"; ip -n "$B-n$i" link set lo up
  ip link add "u-n$i" netns "$B-u" type veth peer name eth0 netns "$B-n$i"
  ip -n "$B-u" link set "u-n$i" master br0 up
  ip -n "$B-n$i" addr add "172.29.0.1$i/24" dev eth0; ip -n "$B-n$i" link set eth0 up
  in_ns "$B-n$i" sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
done
ip -n "$B-n1" route add 10.88.2.0/24 via 172.29.0.12
ip -n "$B-n2" route add 10.88.1.0/24 via 172.29.0.11
bridge_conf() {
  printf '{"cniVersion":"1.0.0","name":"bench","type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":false,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.88.%s.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}],"dataDir":"%s/ipam-n%s"}}' "$1" "$WORK" "$1"
}
bridge_cni() { # CMD NODE POD
  echo "$(bridge_conf "${2#n}")" | in_ns "$B-$2" env CNI_COMMAND="$1" CNI_CONTAINERID="$3" \
    CNI_NETNS="/var/run/netns/$B-$3" CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni /usr/lib/cni/bridge
}
bip() { ip -n "$B-$1" -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1; }
for spec in "b1 n1" "b2 n1" "b3 n2"; do
  set -- $spec
  ip netns add "$B-$1"; ip -n "$B-$1" link set lo up
  bridge_cni ADD "$2" "$1" >/dev/null
  # nsenter execs its command, so $! is the server's own PID (a backgrounded shell function
  # would record a subshell and leave the server behind).
  nsenter --net="/var/run/netns/$B-$1" -- iperf3 -s -p 5201 >/dev/null 2>&1 & PIDS+=($!)
  nsenter --net="/var/run/netns/$B-$1" -- taskset -c "$RR_CPU" "$BIN/weir-lab" rr-serve --port 7000 >/dev/null 2>&1 & PIDS+=($!)
done
B2=$(bip b2); B3=$(bip b3)
sleep 0.5

# ---------------------------------------------------------------- measurements
iperf_gbps() { # RUNNER... TARGET
  local target=${*: -1}; local runner=("${@:1:$#-1}")
  "${runner[@]}" iperf3 -c "$target" -p 5201 -t "$IPERF_SECS" -J | python3 -c \
    'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9, 3))'
}
rr_json() { local target=${*: -1}; local runner=("${@:1:$#-1}"); "${runner[@]}" taskset -c "$RR_CPU" "$BIN/weir-lab" rr "$target:7000" --count "$RR_COUNT"; }

echo "measuring throughput (iperf3, ${IPERF_SECS}s) and request/response latency ($RR_COUNT round trips), $ROUNDS alternating rounds..." >&2
median() { python3 -c 'import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
rr_median() { python3 -c 'import sys,json,statistics; r=[json.loads(x) for x in sys.argv[1:]]; print(json.dumps({k: statistics.median(x[k] for x in r) for k in ("p50_us","p99_us","mean_us")}))' "$@"; }
declare -A T R
for round in $(seq 1 "$ROUNDS"); do
  for cni in $( [ $((round % 2)) = 1 ] && echo "weir bridge" || echo "bridge weir"); do
    if [ "$cni" = weir ]; then run=("$LAB" exec default/w1 --); same=$W2; cross=$W3; else run=(in_ns "$B-b1"); same=$B2; cross=$B3; fi
    T[$cni,same]+=" $(iperf_gbps "${run[@]}" "$same")"
    T[$cni,cross]+=" $(iperf_gbps "${run[@]}" "$cross")"
    R[$cni,same]+=" $(rr_json "${run[@]}" "$same")"
    R[$cni,cross]+=" $(rr_json "${run[@]}" "$cross")"
  done
done
wt_same=$(median ${T[weir,same]}); bt_same=$(median ${T[bridge,same]})
wt_cross=$(median ${T[weir,cross]}); bt_cross=$(median ${T[bridge,cross]})
wr_same=$(rr_median ${R[weir,same]}); br_same=$(rr_median ${R[bridge,same]})
wr_cross=$(rr_median ${R[weir,cross]}); br_cross=$(rr_median ${R[bridge,cross]})

echo "measuring CNI ADD/DEL latency ($N_CNI pods each)..." >&2
CONF=$(python3 -c "import json; c=json.load(open('/run/weir-lab/$WEIR_LAB/nodes/n1/net.d/05-weir.conflist')); p=c['plugins'][0]; p['name']=c['name']; p['cniVersion']=c['cniVersion']; print(json.dumps(p))")
weir_cni() { # CMD POD
  echo "$CONF" | in_ns "wl-$WEIR_LAB-n1" env CNI_COMMAND="$1" CNI_CONTAINERID="$2" CNI_NETNS="/var/run/netns/$B-c$2" \
    CNI_IFNAME=eth0 CNI_PATH="/run/weir-lab/$WEIR_LAB/nodes/n1/cni-bin" \
    CNI_ARGS="K8S_POD_NAMESPACE=bench;K8S_POD_NAME=$2;K8S_POD_UID=uid-$2;IgnoreUnknown=1" "/run/weir-lab/$WEIR_LAB/nodes/n1/cni-bin/weir-cni"
}
# As on a cluster, the Pod objects exist (scheduled to n1) before the runtime asks for their
# network: the agent compiles each pod's policy from its object before wiring it.
for k in $(seq 1 "$N_CNI"); do
  printf -- '---\napiVersion: v1\nkind: Pod\nmetadata: {name: w%s, namespace: bench, uid: uid-w%s}\nspec: {nodeName: n1, containers: [{name: c, image: i}]}\n' "$k" "$k"
done > "/run/weir-lab/$WEIR_LAB/cluster/bench-pods.yaml"
sleep 1
: > "$WORK/weir_add"; : > "$WORK/weir_del"; : > "$WORK/bridge_add"; : > "$WORK/bridge_del"
for k in $(seq 1 "$N_CNI"); do
  ip netns add "$B-cw$k"; ip netns add "$B-cb$k"
done
for k in $(seq 1 "$N_CNI"); do
  t=$(ms_now); weir_cni ADD "w$k" >/dev/null; echo $(( $(ms_now) - t )) >> "$WORK/weir_add"
  t=$(ms_now); bridge_cni ADD n1 "cb$k" >/dev/null; echo $(( $(ms_now) - t )) >> "$WORK/bridge_add"
done
for k in $(seq 1 "$N_CNI"); do
  t=$(ms_now); weir_cni DEL "w$k" >/dev/null; echo $(( $(ms_now) - t )) >> "$WORK/weir_del"
  t=$(ms_now); bridge_cni DEL n1 "cb$k" >/dev/null; echo $(( $(ms_now) - t )) >> "$WORK/bridge_del"
done

python3 - "$OUT" "$WORK" <<PY
import json, sys
out, work = sys.argv[1], sys.argv[2]
def pct(name):
    v = sorted(int(x) / 1e6 for x in open(f"{work}/{name}").read().split())
    at = lambda p: v[round((len(v) - 1) * p)]
    return {"n": len(v), "p50_ms": round(at(.5), 2), "p99_ms": round(at(.99), 2)}
r = {
  "throughput_gbps": {"same_node": {"weir": $wt_same, "bridge": $bt_same}, "cross_node": {"weir": $wt_cross, "bridge": $bt_cross}},
  "rr_latency_us": {"same_node": {"weir": $wr_same, "bridge": $br_same}, "cross_node": {"weir": $wr_cross, "bridge": $br_cross}},
  "cni_ms": {"add": {"weir": pct("weir_add"), "bridge": pct("bridge_add")}, "del": {"weir": pct("weir_del"), "bridge": pct("bridge_del")}},
  "targets": {"throughput_ratio_min": 1.10, "rr_p50_ratio_max": 0.90, "add_p50_ratio_max": 1.0},
  "method": {"rounds": $ROUNDS, "iperf_secs": $IPERF_SECS, "rr_count": $RR_COUNT, "rr_cpu": $RR_CPU, "cni_pods": $N_CNI},
}
rows = []
for where in ("same_node", "cross_node"):
    t = r["throughput_gbps"][where]; rows.append((f"TCP throughput {where} (Gbit/s)", t["weir"], t["bridge"], t["weir"] / t["bridge"], ">= 1.10"))
    l = r["rr_latency_us"][where]
    rows.append((f"RR p50 {where} (us)", l["weir"]["p50_us"], l["bridge"]["p50_us"], l["weir"]["p50_us"] / l["bridge"]["p50_us"], "<= 0.90"))
    rows.append((f"RR p99 {where} (us)", l["weir"]["p99_us"], l["bridge"]["p99_us"], l["weir"]["p99_us"] / l["bridge"]["p99_us"], ""))
for op in ("add", "del"):
    c = r["cni_ms"][op]
    rows.append((f"CNI {op.upper()} p50 (ms)", c["weir"]["p50_ms"], c["bridge"]["p50_ms"], c["weir"]["p50_ms"] / c["bridge"]["p50_ms"], "<= 1.00" if op == "add" else ""))
    rows.append((f"CNI {op.upper()} p99 (ms)", c["weir"]["p99_ms"], c["bridge"]["p99_ms"], c["weir"]["p99_ms"] / c["bridge"]["p99_ms"], ""))
print(f"{'metric':<36}{'weir':>10}{'bridge':>10}{'weir/bridge':>13}  target")
for name, w, b, ratio, target in rows:
    print(f"{name:<36}{w:>10.2f}{b:>10.2f}{ratio:>13.2f}  {target}")
json.dump(r, open(out, "w"), indent=2)
print(f"\nJSON written to {out}")
PY
