#!/usr/bin/env bash
# Observability benchmark, flow and DNS events on vs off, in one run:
#   1. weir-observe-bench (kernel side, BPF_PROG_TEST_RUN): per-packet cost of the real program
#      on vs off, sustained events through the agent's own reader path, events lost under overload
#      (every one counted);
#   2. a 2-node lab: pod<->pod TCP throughput (iperf3) and new-connection rate (connect, 1-byte
#      request/response, close), same node and across nodes, with the agents restarted with
#      --observe=true / false in alternating rounds (median reported), and the flows each mode
#      recorded (0 when off: the switch really is off).
# Prints tables with on/off ratios; JSON from part 1 goes to observe-bench-results.json.
# Needs root; the lab (wl-o<pid>-*) and the bench namespace are removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
IPERF_SECS=${IPERF_SECS:-4}
CRR_COUNT=${CRR_COUNT:-2000}
ROUNDS=${ROUNDS:-5}
# shellcheck source=scripts/release-bins.sh
. ./scripts/release-bins.sh bench-observe
BIN=$PWD/target/release

"$BIN/weir-observe-bench" "$@"

LAB="$BIN/weir-lab"
export WEIR_LAB="o$$"
cleanup() { "$LAB" down >/dev/null 2>&1 || true; }
trap cleanup EXIT
# The lab's own pods (the fallback runtime): what is measured is the datapath with observability
# on and off, unchanged by who made the pods.
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
  - {name: rr, image: x, command: ['$BIN/weir-lab', rr-serve, --port, '7000']}
"
done
echo "$pods" | "$LAB" apply -f - >/dev/null
wip() { "$LAB" get pods -o json | python3 -c "import json,sys; print(next(p['ip'] for p in json.load(sys.stdin) if p['name']=='$1'))"; }
W2=$(wip w2); W3=$(wip w3)
sleep 0.5

mode() { # on|off: restart both agents with flow events on or off (the datapath is reloaded)
  local v=true; [ "$1" = off ] && v=false
  for n in n1 n2; do WEIR_OBSERVE=$v "$LAB" agent restart "$n" >/dev/null; done
}
iperf_gbps() {
  "$LAB" exec default/w1 -- iperf3 -c "$1" -p 5201 -t "$IPERF_SECS" -J | python3 -c \
    'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9, 3))'
}
crr() {
  "$LAB" exec default/w1 -- "$BIN/weir-lab" crr "$1:7000" --count "$CRR_COUNT" | python3 -c \
    'import json,sys; print(round(json.load(sys.stdin)["conns_per_sec"], 1))'
}
flows_recorded() { sleep 0.2; "$LAB" observe -o json | wc -l; }
agent_cpu_ms() { # both agents' CPU time (user + system) so far, in ms
  local t=0 pid
  for pid in $("$LAB" agent pid n1) $("$LAB" agent pid n2); do
    t=$((t + $(awk '{print $14+$15}' "/proc/$pid/stat")))
  done
  echo $((t * 1000 / $(getconf CLK_TCK)))
}

echo "lab: iperf3 ${IPERF_SECS}s and $CRR_COUNT new connections, same node and across nodes, $ROUNDS alternating rounds..." >&2
declare -A M
for round in $(seq 1 "$ROUNDS"); do
  for m in $( [ $((round % 2)) = 1 ] && echo "on off" || echo "off on"); do
    mode "$m"
    c0=$(agent_cpu_ms)
    M[$m,tsame]+=" $(iperf_gbps "$W2")"
    M[$m,tcross]+=" $(iperf_gbps "$W3")"
    M[$m,csame]+=" $(crr "$W2")"
    M[$m,ccross]+=" $(crr "$W3")"
    M[$m,cpu]+=" $(( $(agent_cpu_ms) - c0 ))"
    M[$m,flows]+=" $(flows_recorded)"
  done
done
median() { python3 -c 'import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
printf '\nLab (median of %s rounds)             %12s %12s %8s\n' "$ROUNDS" "on" "off" "on/off"
for k in "tsame:throughput same node (Gbit/s)" "tcross:throughput across nodes (Gbit/s)" \
         "csame:new connections/s same node" "ccross:new connections/s across nodes"; do
  key=${k%%:*}; label=${k#*:}
  on=$(median ${M[on,$key]}); off=$(median ${M[off,$key]})
  printf '%-40s %12s %12s %8.3f\n' "$label" "$on" "$off" "$(python3 -c "print($on/$off)")"
done
echo "target: on/off >= 0.97 (observability costs <= 3 %)"
echo "flows recorded per round (both nodes): on:${M[on,flows]}  off:${M[off,flows]}"
echo "agents' CPU per round (both nodes; the iperf3 and connection runs), ms: on:${M[on,cpu]}  off:${M[off,cpu]}"
