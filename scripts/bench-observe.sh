#!/usr/bin/env bash
# Observability benchmark, flow and DNS events on vs off, in one run:
#   1. weir-observe-bench (kernel side, BPF_PROG_TEST_RUN): per-packet cost of the real program
#      on vs off, sustained events through the agent's own reader path, events lost under overload
#      (every one counted);
#   2. a 2-node lab: pod<->pod TCP throughput (iperf3), new-connection rate (connect, 1-byte
#      request/response, close) and HTTP requests/s (wrk against nginx, keep-alive), same node
#      and across nodes, HTTP/2 requests/s (h2load against nginx over cleartext HTTP/2, 8
#      connections of 10 streams: what HTTP/2 observation costs, every segment copied and
#      decoded), with the agents restarted in three modes in rotating order each round
#      (median reported, and the ratio within each round: its median and range): on (flows, DNS
#      and HTTP: the default), flows (HTTP observation off) and off; the time of a fork+exec in a pod (the exec audit is on in both on and flows, off in
#      off: their difference is its cost per exec); and the flows each mode recorded (0 when off:
#      the switch really is off).
# Prints tables with on/off ratios; JSON from part 1 goes to observe-bench-results.json.
# Needs root; the lab (wl-o<pid>-*) and the bench namespace are removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
IPERF_SECS=${IPERF_SECS:-4}
CRR_COUNT=${CRR_COUNT:-2000}
WRK_SECS=${WRK_SECS:-4}
EXEC_COUNT=${EXEC_COUNT:-1000}
ROUNDS=${ROUNDS:-5}
# shellcheck source=scripts/release-bins.sh
. ./scripts/release-bins.sh bench-observe
BIN=$PWD/target/release

"$BIN/weir-observe-bench" "$@"

LAB="$BIN/weir-lab"
export WEIR_LAB="o$$"
NGINX_DIR=$(mktemp -d /tmp/weir-bench-nginx.XXXXXX)
cleanup() {
  local pid
  for pid in $(cat "$NGINX_DIR"/*.pid 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
  sleep 0.2
  "$LAB" down >/dev/null 2>&1 || true
  rm -rf "$NGINX_DIR"
}
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
# nginx (Debian's) in w2 and w3, answering /ok from memory; keep-alive as configured by default.
for w in w2 w3; do
  ip=$(wip "$w")
  mkdir -p "$NGINX_DIR/$w"
  cat >"$NGINX_DIR/$w.conf" <<EOF
daemon on; worker_processes 1; pid $NGINX_DIR/$w.pid; error_log $NGINX_DIR/$w/error.log;
events {}
http { access_log off; keepalive_requests 100000000; client_body_temp_path $NGINX_DIR/$w/body; proxy_temp_path $NGINX_DIR/$w/proxy;
  fastcgi_temp_path $NGINX_DIR/$w/fcgi; uwsgi_temp_path $NGINX_DIR/$w/uwsgi; scgi_temp_path $NGINX_DIR/$w/scgi;
  server { listen $ip:8088; location = /ok { return 200 "ok\n"; } }
  server { listen $ip:8089 http2; location = /ok { return 200 "ok\n"; } } }
EOF
  "$LAB" exec "default/$w" -- nginx -c "$NGINX_DIR/$w.conf" -p "$NGINX_DIR/$w/"
done
sleep 0.5

mode() { # on|flows|off: restart both agents so (the datapath is reloaded)
  local v=true h=true
  [ "$1" = off ] && v=false
  [ "$1" = on ] || h=false
  for n in n1 n2; do WEIR_OBSERVE=$v WEIR_OBSERVE_HTTP=$h "$LAB" agent restart "$n" >/dev/null; done
}
exec_us() { # mean wall time of one fork+exec of /bin/true in a pod, in microseconds
  "$LAB" exec default/w1 -- python3 -c "
import subprocess, time
n = $EXEC_COUNT
t = time.perf_counter()
for _ in range(n):
    subprocess.run(['/bin/true'])
print(round((time.perf_counter() - t) / n * 1e6, 1))"
}
wrk_rps() {
  "$LAB" exec default/w1 -- wrk -t1 -c8 -d"${WRK_SECS}s" "http://$1:8088/ok" | awk '/^Requests\/sec:/ {print $2}'
}
h2_rps() { # HTTP/2 with prior knowledge (h2c), as gRPC speaks it
  "$LAB" exec default/w1 -- h2load -c8 -m10 -D "$WRK_SECS" "http://$1:8089/ok" | awk '/^finished in/ {print $4}'
}
h2_lost() { # each agent: HTTP/2 directions given up on / events lost in the kernel
  local n out=""
  for n in n1 n2; do
    out+="$n:$("$LAB" metrics "$n" | awk '/^weir_http2_lost_total/ {s += $2} /^weir_events_lost_total/ {e = $2}
                                          END {printf "%d/%d", s, e}') "
  done
  echo "$out"
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

echo "lab: iperf3 ${IPERF_SECS}s, $CRR_COUNT new connections, wrk ${WRK_SECS}s, same node and across nodes, $ROUNDS rounds of three modes..." >&2
declare -A M
orders=("on flows off" "flows off on" "off on flows")
for round in $(seq 1 "$ROUNDS"); do
  for m in ${orders[$((round % 3))]}; do
    mode "$m"
    c0=$(agent_cpu_ms)
    M[$m,tsame]+=" $(iperf_gbps "$W2")"
    M[$m,tcross]+=" $(iperf_gbps "$W3")"
    M[$m,csame]+=" $(crr "$W2")"
    M[$m,ccross]+=" $(crr "$W3")"
    M[$m,hsame]+=" $(wrk_rps "$W2")"
    M[$m,hcross]+=" $(wrk_rps "$W3")"
    M[$m,h2same]+=" $(h2_rps "$W2")"
    M[$m,h2cross]+=" $(h2_rps "$W3")"
    if [ "$m" = on ]; then M[on,h2lost]+=" [$(h2_lost)]"; fi
    M[$m,exec]+=" $(exec_us)"
    M[$m,cpu]+=" $(( $(agent_cpu_ms) - c0 ))"
    M[$m,flows]+=" $(flows_recorded)"
  done
done
keys=("tsame:throughput same node (Gbit/s)" "tcross:throughput across nodes (Gbit/s)"
      "csame:new connections/s same node" "ccross:new connections/s across nodes"
      "hsame:HTTP requests/s same node" "hcross:HTTP requests/s across nodes"
      "h2same:HTTP/2 requests/s same node" "h2cross:HTTP/2 requests/s across nodes"
      "exec:fork+exec of /bin/true in a pod (us)")
# A B: per measure, the medians of modes A and B and their ratio; and the ratio within each
# round (a round runs its modes one after the other, so slow drifts of the machine cancel out):
# its median and range, which say how far the ratio of medians can be trusted.
table() {
  printf '\nLab (median of %s rounds)             %12s %12s %8s   %s\n' "$ROUNDS" "$1" "$2" "$1/$2" \
    "within rounds: median (min-max)"
  for k in "${keys[@]}"; do
    key=${k%%:*}; label=${k#*:}
    python3 -c '
import statistics, sys
a, b = ([float(x) for x in v.split()] for v in sys.argv[2:4])
r = [x / y for x, y in zip(a, b)]
ma, mb = statistics.median(a), statistics.median(b)
print(f"{sys.argv[1]:<40} {ma:12} {mb:12} {ma / mb:8.3f}   {statistics.median(r):.3f} ({min(r):.3f}-{max(r):.3f})")
' "$label" "${M[$1,$key]}" "${M[$2,$key]}"
  done
}
table on off
echo "target: on/off >= 0.97 (observability costs <= 3 %)"
table on flows
echo "target: HTTP requests/s on/flows >= 0.97 (HTTP observation costs <= 3 %)"
table flows off
for k in "${keys[@]}"; do
  key=${k%%:*}
  echo "spread ${k#*:}: on:${M[on,$key]}  flows:${M[flows,$key]}  off:${M[off,$key]}"
done
echo "flows recorded per round (both nodes): on:${M[on,flows]}  flows:${M[flows,flows]}  off:${M[off,flows]}"
# HTTP/2 decoding must have kept up: a direction given up on (a lost event makes a gap) would make
# the on mode's figures those of copying without decoding.
echo "per on round, each node's HTTP/2 directions given up on / events lost in the kernel: ${M[on,h2lost]}"
echo "agents' CPU per round (both nodes; all the runs of the round), ms: on:${M[on,cpu]}  flows:${M[flows,cpu]}  off:${M[off,cpu]}"
