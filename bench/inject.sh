#!/usr/bin/env bash
# The injection API against SMTP on one server: the same number of 1 KiB
# messages queued by one POST of N personalised recipients
# (`ringpost-bench inject`) and by SMTP over 50 connections
# (`ringpost-bench blast`), interleaved (SMTP, HTTP, HTTP, SMTP, ...), one
# worker pinned to CPU 0, fsync on, [delivery] hold = true (acceptance
# only: nothing is relayed, so both sides measure the same thing). For each
# run: messages/s, the server's CPU time per message (from /proc/PID/stat)
# and its peak resident memory above where it started (sampled every 20 ms).
# Raw output under tuning/results/<date>-inject-raw/, the report in
# tuning/results/<date>-inject.md.
#
# usage: bench/inject.sh [BIN] [ROUNDS] [RECIPIENTS]   (loopback only)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/ringpost}
ROUNDS=${2:-5}
N=${3:-10000}
PORT=2660
HTTP=2661
WORK=$(mktemp -d /tmp/ringpost-inject.XXXXXX)
. bench/lib.sh
DATE=$(date -u +%Y-%m-%d)
RAW=tuning/results/$DATE-inject-raw
rm -rf "$RAW"
mkdir -p "$RAW"
BENCH=target/release/ringpost-bench
[ -x "$BENCH" ] || cargo build --release -q -p ringpost-bench
CLIENT_CPUS=1-$(($(nproc) - 1))
TOKEN=bench-token-$RANDOM$RANDOM
HASH=$(printf '%s\n' "$TOKEN" | $BIN hash-password)

machine_facts > "$RAW/machine.txt"
{
  echo "date: $DATE"
  echo "command: bench/inject.sh $*"
  echo "binary: $BIN ($($BIN --version))"
  echo "rounds: $ROUNDS"
  echo "messages_per_run: $N"
} > "$RAW/run.txt"

RINGPOST_CPUS=0 ringpost_start "$PORT" 'threads = 1' '[limits]' 'connections = 5000' \
  '[[listener]]' "address = \"127.0.0.1:$HTTP\"" 'kind = "http"' \
  '[[http_token]]' 'name = "bench"' "hash = \"$HASH\"" \
  '[delivery]' 'hold = true' 'dns_servers = ["127.0.0.1:9"]'
trap 'kill $RP_PID 2>/dev/null || true' EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$RP_PID/stat"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$RP_PID/status"; }

# run NAME ROUND COMMAND...: runs the load, with CPU and memory of the server.
run() {
  local name=$1 round=$2
  shift 2
  local out=$RAW/$name-$round
  local base; base=$(rss_kib)
  ( peak=$base; while [ ! -e "$out.done" ]; do r=$(rss_kib); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.02; done
    echo "$peak" > "$out.peak" ) &
  local sampler=$!
  local t0; t0=$(cpu_ticks)
  taskset -c "$CLIENT_CPUS" "$@" --json "$out.json" > "$out.log" 2>&1
  local t1; t1=$(cpu_ticks)
  touch "$out.done"
  wait $sampler
  echo "{\"cpu_ticks\": $((t1 - t0)), \"hz\": $(getconf CLK_TCK), \"rss_base_kib\": $base, \"rss_peak_kib\": $(cat "$out.peak")}" \
    > "$out.server.json"
  rm -f "$out.done" "$out.peak"
  tail -1 "$out.log"
}

for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order="smtp http"; else order="http smtp"; fi
  for side in $order; do
    if [ $side = smtp ]; then
      run smtp "$r" $BENCH blast --target "127.0.0.1:$PORT" --messages "$N" --connections 50 --size 1024
    else
      run http "$r" $BENCH inject --target "127.0.0.1:$HTTP" --token "$TOKEN" --recipients "$N" --size 1024
    fi
  done
done
python3 bench/inject_report.py "$RAW" > "tuning/results/$DATE-inject.md"
cat "tuning/results/$DATE-inject.md"
