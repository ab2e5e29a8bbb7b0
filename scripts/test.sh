#!/usr/bin/env bash
# README command 2 (and what CI runs): installs what is missing, builds, runs every tier —
# unit (no root), datapath (BPF_PROG_TEST_RUN), CNI conformance in netns, lab e2e — and the
# fuzz smoke run (every cargo-fuzz target for 10 s).
# As root, privileged tests may not skip (WEIR_REQUIRE_PRIVILEGED=1); without root they skip
# with a printed reason.
set -euo pipefail
cd "$(dirname "$0")/.."

# Where the time goes: each phase prints the seconds since the start.
phase() { echo "[test] $1 at ${SECONDS}s"; }
phase setup
./scripts/setup.sh
# shellcheck disable=SC1091
. "${WEIR_TOOLS:-$HOME/.cache/weir/tools}/env.sh"
if [ "$(id -u)" = 0 ]; then export WEIR_REQUIRE_PRIVILEGED=1; fi

log=$(mktemp)
fuzz_log=$(mktemp)
fuzz_pid=
cleanup() {
  # The fuzz build runs in a session of its own: its whole process group goes.
  if [ -n "$fuzz_pid" ]; then kill -- "-$fuzz_pid" 2>/dev/null || true; fi
  rm -f "$log" "$fuzz_log"
}
trap cleanup EXIT
# The fuzz targets (another toolchain and flags: nothing shared with the other builds) build from
# the start, at the lowest CPU priority, in their own target directory: they take the CPU the
# lints, the test build and the tests leave idle (a build's last crates compile one at a time;
# the tests mostly wait on their lab's processes). In a session of their own (so cleanup ends
# them all), whose scheduler autogroup is niced too: with autogroups on, a process's nice value
# counts only against its own session, and a new session would otherwise get an equal share
# (the lints took 499 s instead of 220 s that way).
setsid sh -c 'if [ -w /proc/self/autogroup ]; then echo 19 >/proc/self/autogroup; fi; exec nice -n 19 ./scripts/fuzz.sh build' \
  >"$fuzz_log" 2>&1 &
fuzz_pid=$!

# Lints first: formatting, the supply-chain policy (deny.toml; advisories need a database this
# machine cannot fetch), clippy on the eBPF crate for its target. Clippy on the host crates runs
# inside the test build below.
phase lints
cargo fmt --all -- --check
cargo deny --log-level error check bans licenses sources
phase "eBPF clippy"
cargo +"$WEIR_BPF_TOOLCHAIN" clippy -p weir-bpf-programs --target bpfel-unknown-none -Z build-std=core --release --locked -- -D warnings

# default-members: everything but the eBPF crate, which build.rs compiles for the BPF target.
# `cargo test` builds every binary the tests run (each binary's package has integration tests),
# with the same features as the tests: a separate `cargo build --bins` would compile most of the
# dependency tree a second time (dev-dependencies change tokio's features).
# Clippy lints the workspace's crates as they compile: clippy-driver stands in for rustc on them
# (what `cargo clippy` does, which only checks) and still generates code, with `-D warnings` from
# CLIPPY_ARGS (cargo-clippy's way of passing its arguments to the driver). A separate
# `cargo clippy --all-targets` type-checked the whole dependency tree a second time: 270 s of
# the run. --all-targets: the bench binaries too. The same environment reaches run-tests.sh's
# `cargo test --no-run`, or its listing would rebuild every workspace crate without the driver;
# only these commands get it (the fuzz build is another toolchain's).
lint_env=(RUSTC_WORKSPACE_WRAPPER="$(rustup which clippy-driver)" CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__")
phase "build the tests, clippy on the host crates"
env "${lint_env[@]}" cargo test --locked --no-run --all-targets
# What the containerd lab's offline image holds (the sandbox process and the test server);
# linted as built for its target (the test build above saw its binary only as a test harness).
env "${lint_env[@]}" cargo build --locked --release --target x86_64-unknown-linux-musl -p weir-lab-pod
phase "run the tests (fuzz targets still building meanwhile)"
set +e
env "${lint_env[@]}" ./scripts/run-tests.sh "$log"
status=$?
set -e
phase "tests done; waiting for the fuzz build"
fuzz_built=0
if wait "$fuzz_pid"; then fuzz_built=1; fi
fuzz_pid=
# The fuzz smoke run: every cargo-fuzz target for 10 s from its corpus (scripts/fuzz.sh).
phase "fuzz smoke run"
if [ "$fuzz_built" = 0 ]; then
  cat "$fuzz_log"
  echo "fuzz build failed"
  status=1
elif ! ./scripts/fuzz.sh 10; then
  echo "fuzz smoke run failed"
  status=1
fi
phase done
# One closing line over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1) } }
     /^SKIPPED / { s++ }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
