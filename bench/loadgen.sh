#!/usr/bin/env bash
# Is ringpost-bench blast the bottleneck of its own benchmark? It and
# Postfix's smtp-source load the same ringpost (one worker on CPU 0, fsync
# on, delivery held so only acceptance is measured), interleaved, 50
# sessions of 1 KiB messages, in both modes: connections reused (blast
# --per-connection 0, smtp-source -d) and a new connection per message
# (blast --per-connection 1, smtp-source without -d). Both clients run on
# the other CPUs. The rate is what ringpost accepted over the client's
# wall time (its own counter, for both clients). Writes
# tuning/results/<date>-loadgen.md.
#
# usage: bench/loadgen.sh [ROUNDS] [MESSAGES]   (loopback only)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
MESSAGES=${2:-20000}
PORT=2671
WORK=$(mktemp -d /tmp/ringpost-loadgen.XXXXXX)
. bench/lib.sh
DATE=$(date -u +%Y-%m-%d)
OUT=tuning/results/$DATE-loadgen.md
if ! command -v smtp-source > /dev/null || ! command -v curl > /dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q && apt-get install -y -q --no-install-recommends postfix curl
fi
cargo build --release -q -p ringpost -p ringpost-bench
BIN=target/release/ringpost
BENCH=target/release/ringpost-bench
CLIENT_CPUS=1-$(($(nproc) - 1))
RINGPOST_CPUS=0 ringpost_start "$PORT" 'threads = 1' '[limits]' 'connections = 5000' \
  '[delivery]' 'hold = true' 'dns_servers = ["127.0.0.1:9"]'
trap 'kill $RP_PID 2> /dev/null || true' EXIT
accepted() { curl -s "http://$RP_ADMIN/metrics" | awk '$1 == "ringpost_messages_accepted_total" {print $2}'; }
# run NAME COMMAND...: one run; prints "NAME RATE" (accepted per second of wall time).
run() {
  local name=$1 before after t0 t1
  shift
  before=$(accepted)
  t0=$(date +%s.%N)
  taskset -c "$CLIENT_CPUS" "$@" > /dev/null
  t1=$(date +%s.%N)
  after=$(accepted)
  echo "$name $(python3 -c "print(round(($after - $before) / ($t1 - $t0)))")"
}
RESULTS=$WORK/results
for i in $(seq "$ROUNDS"); do
  for mode in reuse new; do
    per=0 keep=-d
    [ "$mode" = new ] && per=1 keep=
    # Each round starts with the other client.
    order=(blast source)
    [ $((i % 2)) = 0 ] && order=(source blast)
    for who in "${order[@]}"; do
      case $who in
        blast) run "$mode blast" $BENCH blast --target "127.0.0.1:$PORT" --connections 50 --messages "$MESSAGES" \
          --size 1024 --per-connection $per ;;
        source) run "$mode smtp-source" smtp-source -s 50 -m "$MESSAGES" -l 1024 $keep -f blast@bench.test \
          -t sink@example.test "127.0.0.1:$PORT" ;;
      esac
      sleep 1
    done
  done
done | tee "$RESULTS"
{
  echo "# ringpost-bench blast against smtp-source ($DATE)"
  echo
  machine_line
  echo "- ringpost: one worker on CPU 0, fsync on, \`[delivery] hold = true\`; clients on CPUs $CLIENT_CPUS"
  echo "- load: 50 sessions, $MESSAGES messages of 1 KiB per run, $ROUNDS interleaved rounds (each round starts"
  echo "  with the other client); the rate is ringpost's accepted counter over the client's wall time"
  echo "- command: bench/loadgen.sh $ROUNDS $MESSAGES"
  echo
  echo "| mode | client | msg/s (median) | runs | blast / smtp-source |"
  echo "| --- | --- | --- | --- | --- |"
  for mode in reuse new; do
    b=$(awk -v m=$mode '$1 == m && $2 == "blast" {print $3}' "$RESULTS" | median)
    s=$(awk -v m=$mode '$1 == m && $2 == "smtp-source" {print $3}' "$RESULTS" | median)
    label="connections reused (-d)"
    [ "$mode" = new ] && label="a new connection per message"
    for who in blast smtp-source; do
      runs=$(awk -v m=$mode -v w=$who '$1 == m && $2 == w {printf "%s ", $3}' "$RESULTS")
      med=$b
      [ $who = smtp-source ] && med=$s
      ratio=""
      [ $who = blast ] && ratio=$(python3 -c "print(f'{$b / $s:.2f}')")
      echo "| $label | $who | $med | $runs| $ratio |"
    done
  done
} > "$OUT"
cat "$OUT"
