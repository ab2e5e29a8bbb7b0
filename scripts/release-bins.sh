# Sourced (from the repository root) by the benchmark scripts: checks for root, installs the tools
# (setup.sh) and builds every binary in release mode. $1: the calling script's name.
[ "$(id -u)" = 0 ] || { echo "$1: needs root" >&2; exit 1; }
./scripts/setup.sh
# shellcheck disable=SC1091
. "${WEIR_TOOLS:-$HOME/.cache/weir/tools}/env.sh"
cargo build --release --bins --locked --quiet
