#!/usr/bin/env bash
# Installs everything weir needs to build and test on a Debian machine, idempotently:
#   - Debian packages the tests and the lab use (iproute2, iperf3, iptables, nftables, CNI plugins,
#     containerd, runc and podman, busybox-static and musl-tools for the weir image, ...)
#   - the musl target for the static binary in the lab's container images
#   - the pinned nightly toolchain (with rust-src) for the eBPF crate
#   - bpf-linker 0.13.0 built against that nightly's own libLLVM
#   - cargo-deny (supply-chain policy: bans, licenses, sources; see deny.toml)
#   - cargo-fuzz (the fuzz targets under fuzz/, run on the pinned nightly by scripts/fuzz.sh)
#   - grpcio from PyPI in a venv (a real gRPC server and client for the gRPC lab test)
# Prints nothing but progress; writes the tool environment to $WEIR_TOOLS/env.sh for other scripts.
set -euo pipefail

# The eBPF crate is pinned to this dated nightly (rustc 1.97, LLVM 22). Never track the latest nightly.
BPF_NIGHTLY_DATE=2026-05-20
BPF_NIGHTLY_COMMIT=e50aa6fba   # commit hash `rustc +nightly-$BPF_NIGHTLY_DATE --version` prints
BPF_LINKER_VERSION=0.13.0
CARGO_DENY_VERSION=0.20.2
CARGO_FUZZ_VERSION=0.13.2
WEIR_TOOLS=${WEIR_TOOLS:-$HOME/.cache/weir/tools}
mkdir -p "$WEIR_TOOLS"

log() { printf '[setup] %s\n' "$*" >&2; }

# --- Debian packages --------------------------------------------------------------------------
DEB_PKGS=(iproute2 iperf3 iptables nftables containernetworking-plugins dnsmasq-base bind9-dnsutils
          netcat-openbsd bpftool util-linux procps iputils-ping python3-venv prometheus protobuf-compiler
          python3-scapy containerd runc podman busybox-static musl-tools nginx-light curl wrk
          nghttp2-client openssl)
missing=()
# WEIR_SETUP_PACKAGES=0 skips them (the container build needs only the toolchains).
[ "${WEIR_SETUP_PACKAGES:-1}" = 0 ] && DEB_PKGS=()
for p in "${DEB_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Packages with a service (nginx, containerd) must not start it in the machine's own
  # namespace: the tests start their own, in lab pods. policy-rc.d tells invoke-rc.d so; one is
  # put in place only for the install when the machine has none.
  own_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && own_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$own_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

# --- PyPI packages, each pinned in a venv of its own ----------------------------------------
# pypi_venv PACKAGE VERSION: installs PACKAGE==VERSION in $WEIR_TOOLS/venv-PACKAGE-VERSION. The
# stamp marks a finished install: an interrupted one is redone from scratch.
pypi_venv() {
  local venv=$WEIR_TOOLS/venv-$1-$2
  if [ "${WEIR_SETUP_PACKAGES:-1}" != 0 ] && [ ! -e "$venv/.installed" ]; then
    log "installing $1 $2"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "$1==$2"
    touch "$venv/.installed"
  fi
}
# kubernetes-validate for the deploy/ manifest test.
KUBERNETES_VALIDATE_VERSION=1.37.0
KV_VENV=$WEIR_TOOLS/venv-kubernetes-validate-$KUBERNETES_VALIDATE_VERSION
pypi_venv kubernetes-validate "$KUBERNETES_VALIDATE_VERSION"
# grpcio for the gRPC lab test: a real gRPC server and client weir did not write.
GRPCIO_VERSION=1.85.4
GRPC_VENV=$WEIR_TOOLS/venv-grpcio-$GRPCIO_VERSION
pypi_venv grpcio "$GRPCIO_VERSION"

# --- pinned nightly for the eBPF crate -----------------------------------------------------
# Use the machine's `nightly` when it is exactly the pinned build; otherwise fetch the dated one.
if rustc +nightly --version 2>/dev/null | grep -q "$BPF_NIGHTLY_COMMIT"; then
  BPF_TOOLCHAIN=nightly
else
  BPF_TOOLCHAIN=nightly-$BPF_NIGHTLY_DATE
  if ! rustc +"$BPF_TOOLCHAIN" --version >/dev/null 2>&1; then
    log "installing toolchain $BPF_TOOLCHAIN"
    rustup toolchain install "$BPF_TOOLCHAIN" --profile minimal --component rust-src
  fi
fi
if ! rustup component list --toolchain "$BPF_TOOLCHAIN" --installed | grep -q '^rust-src'; then
  log "adding rust-src to $BPF_TOOLCHAIN"
  rustup component add rust-src --toolchain "$BPF_TOOLCHAIN"
fi

# --- musl target: the lab's container images hold a static weir-lab-pod (no registry here) --
if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
  log "adding the x86_64-unknown-linux-musl target"
  rustup target add x86_64-unknown-linux-musl
fi

# --- bpf-linker against the nightly's libLLVM ----------------------------------------------
SYSROOT=$(rustc +"$BPF_TOOLCHAIN" --print sysroot)
NIGHTLY_ID=$(rustc +"$BPF_TOOLCHAIN" --version | tr -c 'A-Za-z0-9.\n' '_' )
LLVM_SO=$(cd "$SYSROOT/lib" && ls libLLVM.so.* 2>/dev/null | head -n1 || true)
[ -n "$LLVM_SO" ] || { echo "setup: no libLLVM.so.* in $SYSROOT/lib" >&2; exit 1; }
LINKER_ROOT=$WEIR_TOOLS/bpf-linker-$BPF_LINKER_VERSION-$NIGHTLY_ID
if [ ! -x "$LINKER_ROOT/bin/bpf-linker" ]; then
  LLVM_PREFIX=$WEIR_TOOLS/llvm-$NIGHTLY_ID
  mkdir -p "$LLVM_PREFIX/lib"
  ln -sf "$SYSROOT/lib/$LLVM_SO" "$LLVM_PREFIX/lib/libLLVM.so"
  ln -sf "$SYSROOT/lib/$LLVM_SO" "$LLVM_PREFIX/lib/$LLVM_SO"
  log "building bpf-linker $BPF_LINKER_VERSION against $LLVM_SO (a few minutes, once per nightly)"
  LLVM_PREFIX=$LLVM_PREFIX RUSTFLAGS="-C link-args=-Wl,-rpath,$SYSROOT/lib" \
    cargo +"$BPF_TOOLCHAIN" install --locked bpf-linker@"$BPF_LINKER_VERSION" \
      --no-default-features --features llvm-22 --root "$LINKER_ROOT.tmp"
  rm -rf "$LINKER_ROOT"; mv "$LINKER_ROOT.tmp" "$LINKER_ROOT"
fi

# --- cargo-deny, with the host toolchain --------------------------------------------------
DENY_ROOT=$WEIR_TOOLS/cargo-deny-$CARGO_DENY_VERSION
if [ ! -x "$DENY_ROOT/bin/cargo-deny" ]; then
  log "building cargo-deny $CARGO_DENY_VERSION (a few minutes, once)"
  cargo install --locked cargo-deny@"$CARGO_DENY_VERSION" --root "$DENY_ROOT.tmp"
  rm -rf "$DENY_ROOT"; mv "$DENY_ROOT.tmp" "$DENY_ROOT"
fi

# --- cargo-fuzz, with the host toolchain (it drives the pinned nightly) --------------------
FUZZ_ROOT=$WEIR_TOOLS/cargo-fuzz-$CARGO_FUZZ_VERSION
if [ ! -x "$FUZZ_ROOT/bin/cargo-fuzz" ]; then
  log "building cargo-fuzz $CARGO_FUZZ_VERSION (a minute, once)"
  cargo install --locked cargo-fuzz@"$CARGO_FUZZ_VERSION" --root "$FUZZ_ROOT.tmp"
  rm -rf "$FUZZ_ROOT"; mv "$FUZZ_ROOT.tmp" "$FUZZ_ROOT"
fi

KV_ENV=
[ -e "$KV_VENV/.installed" ] && KV_ENV="export WEIR_KUBERNETES_VALIDATE=\"$KV_VENV/bin/kubernetes-validate\""
GRPC_ENV=
[ -e "$GRPC_VENV/.installed" ] && GRPC_ENV="export WEIR_GRPC_PYTHON=\"$GRPC_VENV/bin/python\""
cat > "$WEIR_TOOLS/env.sh" <<ENV
$KV_ENV
$GRPC_ENV
export PATH="$LINKER_ROOT/bin:$DENY_ROOT/bin:$FUZZ_ROOT/bin:\$PATH"
export WEIR_BPF_TOOLCHAIN="$BPF_TOOLCHAIN"
ENV
log "tools ready: bpf-linker $("$LINKER_ROOT/bin/bpf-linker" --version 2>/dev/null | head -n1), eBPF toolchain $BPF_TOOLCHAIN"
