#!/usr/bin/env bash
# NetworkPolicy benchmark: per-packet cost of the real program with 10 / 1k / 10k rules selecting
# one pod (BPF_PROG_TEST_RUN, against the same program for a pod no policy selects), and
# convergence (compile + map writes) per kind of change. Prints a table and writes JSON (default
# policy-bench-results.json). Extra arguments go to `weir-policy-bench` (e.g. --rules 10,1000).
# Needs root; its network namespace and bpffs mount are removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/release-bins.sh
. ./scripts/release-bins.sh bench-policy
exec ./target/release/weir-policy-bench "$@"
