#!/usr/bin/env bash
# Fuzz smoke run (the README test command runs it): every cargo-fuzz target under fuzz/ for a
# bounded time on the pinned nightly, starting from its corpus in fuzz/corpus/<target>/ (seeds
# kept in the repository; what libFuzzer finds goes to a scratch copy, not into the tree).
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 10 s, every target)
#   scripts/fuzz.sh build                                (only build every target)
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the run.
# The targets build in a target directory of their own (target/fuzz): a fuzz build never holds
# the lock of the tests' build directory, so scripts/test.sh builds them while the tests run.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. "${WEIR_TOOLS:-$HOME/.cache/weir/tools}/env.sh"
build_only=0
if [ "${1:-}" = build ]; then build_only=1; shift; fi
secs=${1:-10}
shift || true
targets=("$@")
# cargo runs in fuzz/, so that it reads fuzz/.cargo/config.toml (the fuzz build's profile).
cd fuzz
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list --fuzz-dir .)
# The targets never load the datapath: no eBPF object is built for them.
export WEIR_BPF_STUB=1
# Panics and arithmetic overflow are what these targets look for in safe Rust: no sanitizer,
# the dev profile (debug assertions and overflow checks on; weir's crates unoptimised, see the
# workspace Cargo.toml, and fuzz/.cargo/config.toml for dependencies the targets never run).
# Built from clean, that took 272 s (468 s of CPU) against 419 s (741 s) for cargo-fuzz's
# optimised default with 16 codegen units; a smoke run of seconds per target gains little from
# optimised code, and the test command builds this beside its tests.
opts=(--fuzz-dir . --target-dir ../target/fuzz -s none --dev)
cargo +"$WEIR_BPF_TOOLCHAIN" fuzz build "${opts[@]}"
[ "$build_only" = 0 ] || exit 0
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# Two targets at a time (libFuzzer runs one process per target; the machine has two cores).
# Each target's lines are printed together when it ends.
run_target() {
  set +e
  local t=$1 status
  mkdir -p "$scratch/$t"
  [ -d "corpus/$t" ] && cp -r "corpus/$t/." "$scratch/$t/"
  {
    echo "fuzz: $t for ${secs}s"
    cargo +"$WEIR_BPF_TOOLCHAIN" fuzz run "${opts[@]}" "$t" "$scratch/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 2>&1 |
      grep -E '^(stat::number_of_executed_units|stat::new_units_added|==|SUMMARY|Failing input|thread .* panicked)'
    status=${PIPESTATUS[0]}
    [ "$status" = 0 ] || echo "fuzz: $t failed (input in fuzz/artifacts/$t/)"
  } >"$scratch/$t.out" 2>&1
  cat "$scratch/$t.out"
  return "$status"
}
failed=0
running=0
for t in "${targets[@]}"; do
  if [ "$running" -ge 2 ]; then
    wait -n || failed=1
    running=$((running - 1))
  fi
  run_target "$t" &
  running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
  wait -n || failed=1
  running=$((running - 1))
done
[ "$failed" = 0 ] || exit 1
echo "fuzz: ${#targets[@]} targets, ${secs}s each, no failure"
