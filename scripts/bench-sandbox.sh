#!/usr/bin/env bash
# Pod sandbox benchmark: RunPodSandbox -> address and StopPodSandbox + RemovePodSandbox, p50/p99,
# weir (a one-node lab whose containerd runs weir-cni) against Debian's bridge plugin through a
# second containerd of the same build and configuration, alternating pod by pod in one run.
# Prints a table with weir/bridge ratios and writes JSON (default sandbox-bench-results.json).
# Extra arguments go to `weir-sandbox-bench` (e.g. --pods 50). Needs root; the lab, namespace,
# containerd and cgroups it makes are removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/release-bins.sh
. ./scripts/release-bins.sh bench-sandbox
cargo build --release --locked --quiet --target x86_64-unknown-linux-musl -p weir-lab-pod
exec ./target/release/weir-sandbox-bench "$@"
