#!/usr/bin/env bash
# Builds every fuzz target and runs each for a bounded time (stable
# toolchain, no sanitizer: `cargo fuzz -s none`). Seeds in fuzz/seeds/<target>
# are read along with the (ignored) working corpus. Exits non-zero if a
# target fails to build or finds a crash.
#
# usage: fuzz/run.sh [SECONDS_PER_TARGET]   (default 20)
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_PER_TARGET=${1:-20}
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
cargo fuzz build -s none
for target in $(cargo fuzz list); do
  mkdir -p "corpus/$target"
  seeds=()
  [ -d "seeds/$target" ] && seeds=("seeds/$target")
  # mail-parser 0.11 has a debug_assert! that malformed MIME trips (it is
  # compiled out of release builds, the server's among them): the target
  # that feeds it whole messages runs as released (-O, no debug assertions).
  mode=()
  [ "$target" = feedback ] || [ "$target" = inject ] && mode=(-O)
  echo "== fuzz $target (${SECONDS_PER_TARGET}s)"
  log=$(mktemp)
  if ! cargo fuzz run -s none "${mode[@]}" "$target" "corpus/$target" "${seeds[@]}" -- \
    -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 > "$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz $target failed (the input is under fuzz/artifacts/$target)"
    exit 1
  fi
  grep -E '^(Done|stat::number_of_executed_units)' "$log" || true
  rm -f "$log"
done
