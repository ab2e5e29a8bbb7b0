#!/usr/bin/env bash
# Service load-balancing benchmark: weir vs kube-proxy-style iptables-nft and nftables layouts at
# N = 1k, 10k, 30k Services (first-packet connect p50/p99, programming and update time).
# Prints a table and writes JSON (default svc-bench-results.json). Extra arguments go to
# `weir-svc-bench run` (e.g. --sizes 1000,10000 --connects 1000). Needs root; everything it
# creates (namespaces, a cgroup, a bpffs mount, one server process) is removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/release-bins.sh
. ./scripts/release-bins.sh bench-services
exec ./target/release/weir-svc-bench run "$@"
