#!/usr/bin/env bash
# Recovery time of two ringpost binaries on one spool: COUNT 1 KiB messages
# queued by BIN_A with THREADS workers (so THREADS segment families) to
# 10,000 domains whose next hop is down, kill -9, then ROUNDS restarts of
# each binary, interleaved (A B, B A, ...), each killed with -9 once
# /health says 200; the page cache dropped before each restart with
# COLD=1 (needs root). Restarts are not pinned (recovery may use every
# CPU). Prints seconds to /health 200 per restart and the medians; writes
# tuning/results/<date>-NAME.md.
#
# usage: [COLD=1] bench/recovery.sh BIN_A BIN_B [THREADS] [COUNT] [ROUNDS] [NAME]   (loopback only)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_A=${1:?binary A}
BIN_B=${2:?binary B}
THREADS=${3:-2}
COUNT=${4:-1000000}
ROUNDS=${5:-5}
NAME=${6:-recovery}
PORT=2675
WORK=$(mktemp -d /tmp/ringpost-recovery.XXXXXX)
. bench/lib.sh
DATE=$(date -u +%Y-%m-%d)
OUT=tuning/results/$DATE-$NAME.md
BENCH=target/release/ringpost-bench
[ -x "$BENCH" ] || cargo build --release -q -p ringpost-bench
CLIENT_CPUS=1-$(($(nproc) - 1))
trap 'kill -9 ${RP_PID:-0} 2>/dev/null || true; rm -rf "$WORK"' EXIT
now() { date +%s.%N; }

BIN=$BIN_A
RINGPOST_CPUS=0 ringpost_start "$PORT" "threads = $THREADS" '[limits]' 'connections = 5000' \
  '[delivery]' 'dns_servers = ["127.0.0.1:9"]' 'retry = ["6h"]' 'max_age = "5d"' \
  '[[route]]' 'domain = "*"' 'to = ["127.0.0.1:9"]'
taskset -c "$CLIENT_CPUS" $BENCH blast --target "127.0.0.1:$PORT" --messages "$COUNT" --connections 50 \
  --size 1024 --pipelining --domains 10000 --timeout 3600 > /dev/null 2>&1
sleep 5
kill -9 "$RP_PID"
wait "$RP_PID" 2>/dev/null || true
segs=$(du -cb "$WORK"/spool/w*/*.seg | tail -1 | cut -f1)
families=$(ls -d "$WORK"/spool/w* | wc -l)

# one BIN: seconds until /health 200 after a start on the spool; then kill -9.
one() {
  local bin=$1 start health=""
  if [ "${COLD:-0}" = 1 ]; then sync; echo 3 > /proc/sys/vm/drop_caches; fi
  start=$(now)
  $bin serve --config "$WORK/ringpost.toml" > "$WORK/ringpost.out" 2> "$WORK/ringpost.err" &
  RP_PID=$!
  for _ in $(seq 6000); do
    admin=$(sed -n 's|^ringpost: admin http://||p' "$WORK/ringpost.out" 2>/dev/null || true)
    if [ -n "$admin" ] && [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$admin/health")" = 200 ]; then
      health=$(now)
      break
    fi
    sleep 0.01
  done
  local back
  back=$(curl -s "http://$admin/metrics" | awk '$1 == "ringpost_queue_messages" {print $2}')
  kill -9 "$RP_PID"
  wait "$RP_PID" 2>/dev/null || true
  echo "$(echo "$health - $start" | bc) $back"
}
: > "$WORK/runs"
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then sides=(a b); else sides=(b a); fi
  for s in "${sides[@]}"; do
    if [ "$s" = a ]; then res=$(one "$BIN_A"); else res=$(one "$BIN_B"); fi
    echo "$s $r $res" | tee -a "$WORK/runs"
  done
done
med() { awk -v s="$1" '$1 == s {print $3}' "$WORK/runs" | median; }
ma=$(med a)
mb=$(med b)
{
  echo "# Recovery time, two binaries on one spool: $NAME ($DATE)"
  echo
  machine_line
  echo "- a: $BIN_A ($($BIN_A --version)); b: $BIN_B ($($BIN_B --version))"
  echo "- spool: $COUNT messages of 1 KiB queued by a with threads = $THREADS ($families families), $((segs / 1000000)) MB of segments; restarts unpinned, $( [ "${COLD:-0}" = 1 ] && echo 'page cache dropped before each' || echo 'from the page cache')"
  echo "- command: $( [ "${COLD:-0}" = 1 ] && echo 'COLD=1 ')bench/recovery.sh $*"
  echo
  echo "| binary | seconds to /health 200 (median of $ROUNDS) | MB/s of segments |"
  echo "| --- | --- | --- |"
  echo "| a | $ma | $(echo "$segs / 1000000 / $ma" | bc) |"
  echo "| b | $mb | $(echo "$segs / 1000000 / $mb" | bc) |"
  echo
  echo "Runs (side, round, seconds, messages back): $(tr '\n' ';' < "$WORK/runs")"
} > "$OUT"
cat "$OUT"
