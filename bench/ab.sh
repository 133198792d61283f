#!/usr/bin/env bash
# A/B of two ringpost binaries on the 1 KiB cells that matter most: the same
# load against each, interleaved (A B, B A, A B ...), each with one worker on CPU 0,
# fsync on, relaying everything to one sink; the load and the sink on the
# other CPUs. Saves every run's JSON under tuning/results/<date>-<name>-raw/
# and writes tuning/results/<date>-<name>.md from it (bench/ab_report.py).
#
# usage: bench/ab.sh BIN_A BIN_B [ROUNDS] [MESSAGES] [NAME]   (as root; loopback only)
# NAME defaults to "ab"; give each A/B of a day its own. A_EXTRA and B_EXTRA
# (TOML tables, @DIR@ standing for that side's work directory) configure one
# side differently: the same binary twice with B_EXTRA='[events]
# file = "@DIR@/events.jsonl"' measures what events cost.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_A=${1:?binary A}
BIN_B=${2:?binary B}
ROUNDS=${3:-5}
MESSAGES=${4:-20000}
NAME=${5:-ab}
A_PORT=2650
B_PORT=2651
SINK_PORT=2653
WORK=$(mktemp -d /tmp/ringpost-ab.XXXXXX)
. bench/lib.sh
DATE=$(date -u +%Y-%m-%d)
RAW=tuning/results/$DATE-$NAME-raw
rm -rf "$RAW"
mkdir -p "$RAW"
BENCH=target/release/ringpost-bench
[ -x "$BENCH" ] || cargo build --release -q -p ringpost-bench
CLIENT_CPUS=1-$(($(nproc) - 1))

machine_facts > "$RAW/machine.txt"
{
  echo "date: $DATE"
  echo "command: bench/ab.sh $*"
  echo "a: $BIN_A ($("$BIN_A" --version))"
  echo "b: $BIN_B ($("$BIN_B" --version))"
  echo "a_extra: ${A_EXTRA:-none}" | tr '\n' ' '; echo
  echo "b_extra: ${B_EXTRA:-none}" | tr '\n' ' '; echo
  echo "rounds: $ROUNDS"
  echo "messages: $MESSAGES"
} > "$RAW/run.txt"

COUNT=$WORK/sink.count
taskset -c "$CLIENT_CPUS" $BENCH sink --listen "127.0.0.1:$SINK_PORT" --timeout 86400 --count-file "$COUNT" \
  > "$WORK/sink.out" &
SINK_PID=$!
PIDS=()
trap 'kill $SINK_PID ${PIDS[*]} 2>/dev/null || true' EXIT
for side in a b; do
  port=$([ $side = a ] && echo $A_PORT || echo $B_PORT)
  BIN=$([ $side = a ] && echo "$BIN_A" || echo "$BIN_B")
  sub=$WORK/$side
  mkdir -p "$sub"
  extra=$([ $side = a ] && echo "${A_EXTRA:-}" || echo "${B_EXTRA:-}")
  WORK=$sub RINGPOST_CPUS=0 ringpost_start "$port" 'threads = 1' '[limits]' 'connections = 5000' \
    '[[route]]' 'domain = "*"' "to = [\"127.0.0.1:$SINK_PORT\"]" '[delivery]' 'dns_servers = ["127.0.0.1:9"]' \
    "${extra//@DIR@/$sub}"
  PIDS+=("$RP_PID")
done
sleep 1
for per in 100 1; do
  echo "== 1024B-50c-${per}pc"
  taskset -c "$CLIENT_CPUS" $BENCH compare --rounds "$ROUNDS" --messages "$MESSAGES" --size 1024 --connections 50 \
    --per-connection $per --target "a=127.0.0.1:$A_PORT" --target "b=127.0.0.1:$B_PORT" \
    --sink-count "$COUNT" --delivers a --delivers b --json "$RAW/1024B-50c-${per}pc.json" > /dev/null
done
python3 bench/ab_report.py "$RAW" > "tuning/results/$DATE-$NAME.md"
cat "tuning/results/$DATE-$NAME.md"
