#!/usr/bin/env bash
# Builds the weir image offline, where no registry or docker is at hand: weir-agent, weir-cni
# and weir as static musl release binaries (as deploy/Dockerfile builds them) with Debian's
# busybox-static for the install-cni init container, as an OCI image layout tarball named as
# deploy/kubernetes runs it (weir:dev). Load it with `ctr -n k8s.io images import FILE` or
# `podman load -i FILE`.
#   scripts/image.sh [OUT]        (default: target/weir-image.tar)
# The lab runs an image built this way with `WEIR_IMAGE_BIN_DIR=target/x86_64-unknown-linux-musl/release
# weir-lab up --runtime containerd --agent image`; the tests build theirs from the test build's
# binaries (with their shared libraries), see ARCHITECTURE.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/weir-image.tar}
./scripts/setup.sh
# shellcheck disable=SC1091
. "${WEIR_TOOLS:-$HOME/.cache/weir/tools}/env.sh"
cargo build --release --locked --target x86_64-unknown-linux-musl \
  -p weir-operator-agent -p weir-cni -p weir-operator-cli --bins
WEIR_IMAGE_BIN_DIR=$PWD/target/x86_64-unknown-linux-musl/release \
  cargo run --locked -q -p weir-e2e --bin weir-lab -- image --out "$out"
