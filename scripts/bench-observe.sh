#!/usr/bin/env bash
# Observability benchmark: per-packet cost of the real program with flow events on vs off
# (BPF_PROG_TEST_RUN, same run), sustained events through the agent's reader path, and events
# lost under overload (all counted). Prints a table and writes JSON (default
# observe-bench-results.json). Extra arguments go to `weir-observe-bench`.
# Needs root; its network namespace and bpffs mount are removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/release-bins.sh
. ./scripts/release-bins.sh bench-observe
exec ./target/release/weir-observe-bench "$@"
