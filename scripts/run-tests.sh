#!/usr/bin/env bash
# Runs every test binary `cargo test --no-run` built, in two lanes at once (scripts/test.sh).
#   scripts/run-tests.sh LOG
# `cargo test` runs its binaries one after another, and the long ones (the lab suites) mostly
# wait on their lab's processes: two lanes use that idle time. Each binary still runs its own
# tests two at a time (libtest's default on this machine), from its package's directory, as
# cargo would. A binary's output is printed whole when it ends (lines of two binaries never
# interleave) and appended to LOG. Exit status: non-zero when any binary failed.
set -uo pipefail
cd "$(dirname "$0")/.."
log=${1:?usage: run-tests.sh LOG}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Every test executable of the build: "<package dir> <target kind> <target name> <executable>".
# Fresh artifacts are reported too, so this builds nothing after scripts/test.sh's build.
cargo test --locked --no-run --message-format=json 2>/dev/null | python3 -c '
import json, os, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(os.path.dirname(m["manifest_path"]), m["target"]["kind"][0], m["target"]["name"], m["executable"], sep="\t")
' >"$work/all" || { echo "run-tests: listing the test binaries failed"; exit 1; }
[ -s "$work/all" ] || { echo "run-tests: no test binaries"; exit 1; }

# Lane 1: the two longest suites, longest first (lab stories about 200 s, the policy truth tables
# about 60 s, run alone); lane 2: everything else, longest first (about 260 s together alone).
awk -F'\t' '$2 == "test" && $3 == "lab"' "$work/all" >"$work/lane1"
awk -F'\t' '$2 == "test" && $3 == "policy"' "$work/all" >>"$work/lane1"
awk -F'\t' '!($2 == "test" && ($3 == "lab" || $3 == "policy"))' "$work/all" |
  awk -F'\t' '{ w = ($3 == "adversary") ? 0 : ($3 == "datapath") ? 1 : ($3 == "cni") ? 2 : ($3 == "observe") ? 3 : 4; print w "\t" $0 }' |
  sort -s -n -k1,1 | cut -f2- >"$work/lane2"

run_lane() {
  local lane=$1 n=0 dir kind name exe out status
  while IFS=$'\t' read -r dir kind name exe; do
    n=$((n + 1))
    out="$work/$lane.$n.out"
    echo "[run-tests] lane $lane: $name ($kind) started at ${SECONDS}s"
    (cd "$dir" && "$exe") >"$out" 2>&1
    status=$?
    {
      flock 9
      echo "     Running $name ($kind) $exe"
      cat "$out"
      [ "$status" = 0 ] || echo "[run-tests] $name ($kind) FAILED with status $status"
      cat "$out" >>"$log"
    } 9>"$work/lock"
    [ "$status" = 0 ] || echo "$exe" >>"$work/failed"
  done <"$work/lane$lane"
}
run_lane 1 &
lane1=$!
run_lane 2
wait "$lane1"
if [ -s "$work/failed" ]; then
  echo "[run-tests] failed binaries:"
  cat "$work/failed"
  exit 1
fi
