#!/usr/bin/env bash
# The headline comparison, from scratch: ringpost (fsync on) vs Postfix vs
# Postfix's smtp-sink (stores nothing: the protocol-only ceiling), with the
# same load from ringpost-bench, interleaved, on this machine.
#
# Both MTAs relay everything to one sink (ringpost-bench sink) while they are
# measured, so each does its whole job: accept, store durably, deliver. Each
# run starts when the sink has been quiet for a second (no target's backlog
# loads the next one's run), and for the MTAs the run also waits until the
# sink has every message: the end-to-end rate.
# Matrix: 1 KiB and 100 KiB messages x 50 and 1,000 connections x 1 and 100
# messages per connection, with latency at half each MTA's 1 KiB peak rate
# between the 1 KiB and the 100 KiB cells. Then: ringpost-bench against
# Postfix's smtp-source on the same load, and 10,000
# concurrent connections; last, a table of the performance targets (the
# script exits 1 if one does not hold). Everything listens on loopback.
#
# CPUs are split so that the load generator does not compete with the server
# being measured: the servers (ringpost with one worker, Postfix, smtp-sink) run
# on CPU 0, the client and the sink on the other CPUs. The figures are thus
# per server core.
#
# usage: bench/compare.sh [ROUNDS] [MESSAGES_1K] [MESSAGES_100K]   (as root)
# writes tuning/results/<date>.md and an SVG chart per cell
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
M_SMALL=${2:-20000}
M_LARGE=${3:-5000}
RP_PORT=2620
PF_PORT=2621
SS_PORT=2622
SINK_PORT=2623
CONN_PORT=2624
WORK=$(mktemp -d /tmp/ringpost-compare.XXXXXX)
. bench/lib.sh
SERVER_CPUS=0
CLIENT_CPUS=1-$(($(nproc) - 1))
if [ "$(nproc)" -lt 2 ]; then CLIENT_CPUS=0; fi
DATE=$(date -u +%Y-%m-%d)
OUT=tuning/results/$DATE.md

if ! command -v postfix >/dev/null || ! command -v smtp-sink >/dev/null || ! command -v python3 >/dev/null \
  || ! command -v curl >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q && apt-get install -y -q --no-install-recommends postfix python3 curl
fi
cargo build --release -q --workspace
BIN=target/release/ringpost
BENCH=target/release/ringpost-bench

# --- the sink both MTAs deliver to --------------------------------------------
COUNT=$WORK/sink.count
taskset -c "$CLIENT_CPUS" $BENCH sink --listen "127.0.0.1:$SINK_PORT" --timeout 86400 --count-file "$COUNT" \
  > "$WORK/sink.out" &
SINK_PID=$!
# Waits until the sink has counted nothing new for a second.
settle() {
  local a b
  a=$(cat "$COUNT" 2>/dev/null || echo 0)
  for _ in $(seq 300); do
    sleep 1
    b=$(cat "$COUNT" 2>/dev/null || echo 0)
    [ "$a" = "$b" ] && return
    a=$b
  done
}

# --- Postfix on loopback, relaying everything to the sink ---------------------
POSTFIX_CPUS=$SERVER_CPUS postfix_loopback "$PF_PORT" 'relay_domains =' \
  "relayhost = [127.0.0.1]:$SINK_PORT" "default_transport = smtp:[127.0.0.1]:$SINK_PORT" \
  "relay_transport = smtp:[127.0.0.1]:$SINK_PORT" 'smtpd_data_restrictions =' \
  'default_process_limit = 1100' 'message_size_limit = 52428800'

# --- smtp-sink: the protocol ceiling (as root it needs -u) --------------------
taskset -c "$SERVER_CPUS" smtp-sink -u postfix "127.0.0.1:$SS_PORT" 4096 &
SS_PID=$!

# --- ringpost, fsync on, relaying everything to the sink ----------------------
RINGPOST_CPUS=$SERVER_CPUS ringpost_start "$RP_PORT" 'threads = 1' '[limits]' 'connections = 5000' \
  '[[route]]' 'domain = "*"' "to = [\"127.0.0.1:$SINK_PORT\"]" '[delivery]' 'dns_servers = ["127.0.0.1:9"]'
cleanup() {
  kill "$RP_PID" "$SS_PID" "$SINK_PID" 2>/dev/null || true
  postfix_restore
}
trap cleanup EXIT
sleep 1

{
  echo "# ringpost vs Postfix vs smtp-sink ($DATE)"
  echo
  machine_line
  echo "- ringpost fsync on, relaying to a sink; Postfix $(postconf -h mail_version) relaying to the same sink; smtp-sink stores nothing"
  echo "- CPUs: servers on CPU $SERVER_CPUS (ringpost with one worker), load generator and sink on CPUs $CLIENT_CPUS: figures are per server core"
  echo "- load: ringpost-bench compare, $ROUNDS interleaved rounds per cell, medians; each run starts once the sink is quiet"
  echo "- msg/s: accepted per second as the client sees it; end to end: accepted, stored and delivered to the sink, per second"
  echo "- latency: MAIL FROM to the final 250, as the client sees it"
  echo "- command: bench/compare.sh $ROUNDS $M_SMALL $M_LARGE"
  echo
} > "$OUT"

# --- latency at half the peak rate ---------------------------------------------
# Measured right after the 1 KiB cells, before the 100 KiB ones: those push
# gigabytes through both MTAs, and the disk is still busy with it (writeback,
# and on a filesystem mounted with discard, trimming what was deleted) well
# after the sink is quiet; that adds to every fdatasync for a while.
latency_at_half_peak() {
rate_of() {
  python3 -c "import json,sys; print([t for t in json.load(open(sys.argv[1]))['targets'] if t['name']==sys.argv[2]][0]['rate_median'])" "$@"
}
{
  echo "## Latency at half the peak rate (1 KiB, 50 connections, 100 messages per connection)"
  echo
  echo "Peak: each MTA's median accept rate in that matrix cell above. The load starts messages on a"
  echo "fixed schedule at half of it (ringpost-bench blast --rate) for about 20 s."
  echo
  echo "| target | msg/s | end of DATA to 250 p50 us | p99 us | MAIL FROM to 250 p99 us |"
  echo "| --- | --- | --- | --- | --- |"
} >> "$OUT"
for name in ringpost postfix; do
  port=$([ $name = ringpost ] && echo $RP_PORT || echo $PF_PORT)
  half=$(python3 -c "print(max(1, round($(rate_of "$WORK/1024B-50c-100pc.json" $name) / 2)))")
  settle
  [ $name = ringpost ] && curl -s "http://$RP_ADMIN/metrics" > "$WORK/halfpeak-before.metrics"
  taskset -c "$CLIENT_CPUS" $BENCH blast --target "127.0.0.1:$port" --size 1024 --connections 50 --per-connection 100 \
    --rate "$half" --messages $((half * 20)) --json "$WORK/halfpeak-$name.json" > /dev/null
  [ $name = ringpost ] && curl -s "http://$RP_ADMIN/metrics" > "$WORK/halfpeak-after.metrics"
  python3 -c "
import json, sys
b = json.load(open(sys.argv[1]))
d = b['data_to_250_us']
print(f\"| {sys.argv[2]} | {b['rate']:.0f} | {d['p50']} | {d['p99']} | {b['latency_us']['p99']} |\")
" "$WORK/halfpeak-$name.json" $name >> "$OUT"
done
# ringpost's own view of the same run: end of data to durable, from the
# store-latency histogram of /metrics (the client's figure adds the network
# and the load generator's own scheduling, on a CPU it shares with the sink).
read -r total p50 p99 < <(python3 bench/histogram.py "$WORK/halfpeak-before.metrics" \
  "$WORK/halfpeak-after.metrics" ringpost_store_latency_seconds 0.5 0.99)
printf "\nringpost's own store latency in that run (end of data to durable, its /metrics histogram, %s messages): p50 at most %s ms, p99 at most %s ms.\n" \
  "$total" "$p50" "$p99" >> "$OUT"
echo >> "$OUT"
postsuper -d ALL >/dev/null 2>&1 || true
}

for size in 1024 102400; do
  [ $size = 102400 ] && latency_at_half_peak
  messages=$([ $size = 1024 ] && echo "$M_SMALL" || echo "$M_LARGE")
  for conns in 50 1000; do
    for per in 1 100; do
      cell="${size}B-${conns}c-${per}pc"
      echo "== $cell"
      {
        echo "## $((size / 1024)) KiB, $conns connections, $per message(s) per connection ($messages messages)"
        echo
      } >> "$OUT"
      taskset -c "$CLIENT_CPUS" $BENCH compare --rounds "$ROUNDS" --messages "$messages" --size $size --connections $conns \
        --per-connection $per \
        --target "postfix=127.0.0.1:$PF_PORT" --target "ringpost=127.0.0.1:$RP_PORT" \
        --target "smtp-sink=127.0.0.1:$SS_PORT" --sink-count "$COUNT" --delivers postfix --delivers ringpost \
        --json "$WORK/$cell.json" --svg "tuning/results/$DATE-$cell.svg" >> "$OUT"
      echo >> "$OUT"
      postsuper -d ALL >/dev/null 2>&1 || true
    done
  done
done
# --- ringpost-bench and smtp-source on the same load ------------------------------
# Both against ringpost: 1 KiB, 50 sessions reusing their connections,
# interleaved, each run once the sink is quiet.
blast_rates=()
source_rates=()
for _ in $(seq "$ROUNDS"); do
  settle
  taskset -c "$CLIENT_CPUS" $BENCH blast --target "127.0.0.1:$RP_PORT" --size 1024 --connections 50 \
    --messages "$M_SMALL" --json "$WORK/agree-blast.json" > /dev/null
  blast_rates+=("$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['rate'])" "$WORK/agree-blast.json")")
  settle
  t0=$(date +%s.%N)
  taskset -c "$CLIENT_CPUS" smtp-source -s 50 -m "$M_SMALL" -l 1024 -d -f blast@bench.test -t sink@example.test \
    "127.0.0.1:$RP_PORT"
  t1=$(date +%s.%N)
  source_rates+=("$(python3 -c "print($M_SMALL / ($t1 - $t0))")")
done
b_med=$(printf '%s\n' "${blast_rates[@]}" | median)
s_med=$(printf '%s\n' "${source_rates[@]}" | median)
echo "$b_med $s_med" > "$WORK/agree.txt"
{
  echo "## ringpost-bench and smtp-source on the same load"
  echo
  echo "Both against ringpost: 1 KiB, 50 sessions reusing their connections, $M_SMALL messages, $ROUNDS interleaved runs each."
  echo
  echo "| load generator | msg/s (median) | runs |"
  echo "| --- | --- | --- |"
  printf '| ringpost-bench blast | %.0f | %s|\n' "$b_med" "$(printf '%.0f ' "${blast_rates[@]}")"
  printf '| smtp-source -d | %.0f | %s|\n' "$s_med" "$(printf '%.0f ' "${source_rates[@]}")"
  echo
} >> "$OUT"

# --- 10,000 concurrent connections ----------------------------------------------
cat > "$WORK/connections.toml" <<CONF
hostname = "bench.test"
threads = $(nproc)
[[listener]]
address = "127.0.0.1:$CONN_PORT"
[spool]
dir = "$WORK/spool-connections"
[limits]
connections = 12000
[delivery]
hold = true
dns_servers = ["127.0.0.1:9"]
[log]
level = "warn"
CONF
(
  ulimit -n 20000
  $BIN serve --config "$WORK/connections.toml" > "$WORK/connections.out" 2>&1 &
  pid=$!
  for _ in $(seq 50); do grep -q "workers" "$WORK/connections.out" 2>/dev/null && break; sleep 0.1; done
  python3 bench/connections.py "$pid" 127.0.0.1 "$CONN_PORT" 10000 > "$WORK/connections.txt" || true
  kill "$pid"
  wait "$pid" || true
)
{
  echo "## 10,000 concurrent connections"
  echo
  echo "One ringpost process ($(nproc) workers, delivery held); every session greeted and EHLO answered,"
  echo "all open at once (bench/connections.py):"
  echo
  sed 's/^/    /' "$WORK/connections.txt"
  echo
  echo "## Targets"
  echo
} >> "$OUT"
status=0
python3 bench/targets.py "$WORK" >> "$OUT" || status=$?
cat "$OUT"
exit $status
