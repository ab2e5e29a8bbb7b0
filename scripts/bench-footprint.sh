#!/usr/bin/env bash
# Agent footprint benchmark: weir-agent RSS and CPU while it ingests synthetic clusters
# (1k/10k pods × 100/1k Services) through its Kubernetes API source from a fake API server, and
# while pod updates stream in. Prints a table, the per-pod slope and the targets; writes JSON
# (default footprint-results.json). Extra arguments go to `weir-footprint-bench` (e.g.
# --sizes 1000x100,10000x1000 --churn-secs 5). Needs root; everything it creates (namespaces,
# a bpffs mount, a cgroup, a temp dir, the agent) is removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/release-bins.sh
. ./scripts/release-bins.sh bench-footprint
exec ./target/release/weir-footprint-bench "$@"
