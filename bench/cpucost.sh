#!/usr/bin/env bash
# CPU per message, by thread, of one ringpost binary configured two ways (a:
# as is, b: with B_EXTRA, @DIR@ standing for its work directory), where
# throughput A/Bs are too noisy to see a few percent: each run is a fresh
# server (one worker on CPU 0, fsync on, relaying to ringpost-bench sink),
# warmed with 3,000 messages, then MESSAGES of 1 KiB from ringpost-bench
# blast (50 connections, 100 per connection; load and sink on the other
# CPUs); once the sink has them all, the CPU time of each of the server's
# threads (user + system, /proc/PID/task/*/stat) is divided by the messages
# it handled. Rounds alternate which side goes first. Writes
# tuning/results/<date>-<NAME>.md and keeps the raw numbers beside it.
#
# With BIN_B (and BIN_A) set, side b (a) runs that binary instead (B_EXTRA may then be
# empty): two builds compared the same way.
#
# usage: B_EXTRA='...' [BIN_B=path] bench/cpucost.sh [ROUNDS] [MESSAGES] [NAME]   (loopback only)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
MESSAGES=${2:-40000}
NAME=${3:-cpucost}
if [ -z "${BIN_B:-}" ]; then : "${B_EXTRA:?set B_EXTRA to the TOML that side b adds, or BIN_B}"; fi
B_EXTRA=${B_EXTRA:-}
PORT=2681
SINK_PORT=2680
DATE=$(date -u +%Y-%m-%d)
OUT=tuning/results/$DATE-$NAME.md
RAW=tuning/results/$DATE-$NAME-raw.txt
WORK=$(mktemp -d /tmp/ringpost-cpucost.XXXXXX)
. bench/lib.sh
cargo build --release -q -p ringpost -p ringpost-bench
A_BIN=${BIN_A:-target/release/ringpost}
BENCH=target/release/ringpost-bench
CLIENT_CPUS=1-$(($(nproc) - 1))
TICK=$(getconf CLK_TCK)
COUNT=$WORK/sink.count
taskset -c "$CLIENT_CPUS" $BENCH sink --listen "127.0.0.1:$SINK_PORT" --timeout 86400 --count-file "$COUNT" \
  > "$WORK/sink.out" &
SINK_PID=$!
RP_PID=
trap 'kill $SINK_PID $RP_PID 2> /dev/null || true' EXIT
sink_count() { cat "$COUNT" 2> /dev/null || echo 0; }

# one SIDE ROUND: prints "SIDE ROUND GROUP US_PER_MESSAGE" lines.
one() {
  local side=$1 round=$2 dir extra=() before total
  dir=$WORK/$side-$round
  mkdir -p "$dir"
  [ "$side" = b ] && [ -n "$B_EXTRA" ] && extra=("${B_EXTRA//@DIR@/$dir}")
  before=$(sink_count)
  local bin=$A_BIN
  [ "$side" = b ] && bin=${BIN_B:-$A_BIN}
  BIN=$bin WORK=$dir RINGPOST_CPUS=0 ringpost_start "$PORT" 'threads = 1' "${extra[@]}" '[limits]' 'connections = 5000' \
    '[[route]]' 'domain = "*"' "to = [\"127.0.0.1:$SINK_PORT\"]" '[delivery]' 'dns_servers = ["127.0.0.1:9"]'
  total=$((MESSAGES + 3000))
  taskset -c "$CLIENT_CPUS" $BENCH blast --target "127.0.0.1:$PORT" --messages 3000 --per-connection 100 \
    --from bench@example.com > /dev/null
  taskset -c "$CLIENT_CPUS" $BENCH blast --target "127.0.0.1:$PORT" --messages "$MESSAGES" --per-connection 100 \
    --from bench@example.com > /dev/null
  for _ in $(seq 600); do [ $(($(sink_count) - before)) -ge $total ] && break; sleep 0.1; done
  sleep 0.5
  for t in /proc/$RP_PID/task/*; do
    echo "$(cat "$t/comm") $(awk '{print $14 + $15}' "$t/stat")"
  done | awk -v s="$side" -v r="$round" -v n="$total" -v tick="$TICK" '
    { g = $1
      if (g ~ /^ringpost-webho/) g = "webhook thread"; else if (g ~ /^ringpost-w/) g = "worker"; else if (g ~ /^iou-wrk/) g = "io-wq (fdatasync)";
      else if (g == "ringpost-events") g = "event thread"; else if (g == "ringpost") g = "main and blocking pool";
      else g = "other"
      c[g] += $2 }
    END { for (g in c) printf "%s %s %s %.2f\n", s, r, g, c[g] * 1e6 / tick / n }'
  kill "$RP_PID"
  wait "$RP_PID" 2> /dev/null || true
  RP_PID=
}
: > "$RAW.tmp"
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then sides=(a b); else sides=(b a); fi
  for side in "${sides[@]}"; do one "$side" "$round" | tee -a "$RAW.tmp"; done
done
mv "$RAW.tmp" "$RAW"
{
  echo "# CPU per message, by thread: $NAME ($DATE)"
  echo
  machine_line
  echo "- b adds: \`$(echo "$B_EXTRA" | tr '\n' ' ')\`${BIN_B:+; b runs $BIN_B}"
  echo "- each run: a fresh ringpost (one worker on CPU 0, fsync on) relaying to ringpost-bench sink; 3,000 warm-up"
  echo "  messages then $MESSAGES, 1 KiB, 50 connections of 100 messages (load and sink on CPUs $CLIENT_CPUS); the"
  echo "  server's thread CPU (user + system) over the whole run divided by all $((MESSAGES + 3000)) messages, once the sink has them"
  echo "- $ROUNDS rounds, alternating which side goes first; medians; raw: \`$RAW\`"
  echo "- command: B_EXTRA='...' bench/cpucost.sh $ROUNDS $MESSAGES $NAME"
  echo
  python3 - "$RAW" << 'PY'
import statistics, sys
from collections import defaultdict
runs = defaultdict(lambda: defaultdict(float))  # (side, round) -> group -> us
for line in open(sys.argv[1]):
    side, rnd, *group, us = line.split()
    runs[(side, rnd)][" ".join(group)] += float(us)
groups = sorted({g for r in runs.values() for g in r})
med = lambda side, g: statistics.median(r.get(g, 0.0) for (s, _), r in runs.items() if s == side)
tot = lambda side: statistics.median(sum(r.values()) for (s, _), r in runs.items() if s == side)
print("| thread | a: us per message | b: us per message | b - a |")
print("| --- | --- | --- | --- |")
for g in groups:
    print(f"| {g} | {med('a', g):.1f} | {med('b', g):.1f} | {med('b', g) - med('a', g):+.1f} |")
a, b = tot("a"), tot("b")
print(f"| all threads | {a:.1f} | {b:.1f} | {b - a:+.1f} ({(b - a) / a * 100:+.1f}%) |")
print()
print("Per run (all threads, us per message): " + "; ".join(
    f"{s}{r} {sum(v.values()):.1f}" for (s, r), v in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0]))))
PY
} > "$OUT"
cat "$OUT"
