#!/usr/bin/env bash
# The long fuzz run: every target for RUNS executions (default 10 million),
# two at a time, seeds and the working corpus as inputs. Writes
# tuning/results/<date>-fuzz.md with each target's executions, time,
# corpus size and result (the crashing input, if any, is under
# fuzz/artifacts/<target>). Exits non-zero if a target fails.
#
# usage: fuzz/long.sh [RUNS] [TARGET...]   (no targets: all of them; with
# targets, the report is <date>-fuzz-<targets>.md)
set -euo pipefail
cd "$(dirname "$0")"
RUNS=${1:-10000000}
shift || true
TARGETS=("$@")
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
cargo fuzz build -s none
cargo fuzz build -s none -O
LOGS=$(mktemp -d)
one() {
  target=$1
  mode=()
  # As in run.sh: mail-parser's debug_assert! is compiled out of release builds.
  if [ "$target" = feedback ] || [ "$target" = inject ]; then mode=(-O); fi
  mkdir -p "corpus/$target"
  seeds=()
  [ -d "seeds/$target" ] && seeds=("seeds/$target")
  start=$(date +%s)
  if cargo fuzz run -s none "${mode[@]}" "$target" "corpus/$target" "${seeds[@]}" -- \
    -runs="$RUNS" -print_final_stats=1 > "$LOGS/$target.log" 2>&1; then
    result=ok
  else
    result=FAILED
  fi
  secs=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$LOGS/$target.log" | tail -1)
  corpus=$(ls "corpus/$target" | wc -l)
  echo "| $target | ${execs:-?} | $secs | $corpus | $result |" > "$LOGS/$target.row"
}
export -f one
export RUNS LOGS
if [ ${#TARGETS[@]} -eq 0 ]; then
  cargo fuzz list | xargs -P 2 -I{} bash -c 'one {}'
  SUFFIX=""
else
  printf '%s\n' "${TARGETS[@]}" | xargs -P 2 -I{} bash -c 'one {}'
  SUFFIX=-$(IFS=-; echo "${TARGETS[*]}")
fi
DATE=$(date -u +%Y-%m-%d)
OUT=../tuning/results/$DATE-fuzz$SUFFIX.md
{
  echo "# Fuzzing, $RUNS executions per target ($DATE)"
  echo
  echo "- machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(uname -r)"
  echo "- commit: $(git rev-parse --short HEAD)"
  echo "- command: \`fuzz/long.sh $RUNS ${TARGETS[*]}\` (cargo fuzz, stable toolchain, no sanitizer: \`-s none\`; two targets at a time)"
  echo
  echo "| target | executions | seconds | corpus files | result |"
  echo "| --- | --- | --- | --- | --- |"
  cat "$LOGS"/*.row
} > "$OUT"
cat "$OUT"
! grep -q FAILED "$OUT"
