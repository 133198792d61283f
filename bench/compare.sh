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
# messages per connection. Latency at half each MTA's 1 KiB peak rate is
# measured twice: right after the 1 KiB cells and again after the 100 KiB
# ones. Then: ringpost-bench against Postfix's smtp-source on the same load,
# and 10,000 concurrent connections. Everything listens on loopback; Postfix
# is a private instance under the scratch directory.
#
# CPUs are split so that the load generator does not compete with the server
# being measured: the servers (ringpost with one worker, Postfix, smtp-sink) run
# on CPU 0, the client and the sink on the other CPUs. The figures are thus
# per server core.
#
# Every measurement is saved as it came (JSON, /metrics, counters) under
# tuning/results/<date>-raw/, and the report tuning/results/<date>.md is
# written from that by bench/report.py, with a table of the performance
# targets (bench/targets.py; the script exits 1 if one does not hold).
#
# usage: bench/compare.sh [ROUNDS] [MESSAGES_1K] [MESSAGES_100K]   (as root)
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
RAW=tuning/results/$DATE-raw
rm -rf "$RAW"
mkdir -p "$RAW"

if ! command -v postfix >/dev/null || ! command -v smtp-sink >/dev/null || ! command -v python3 >/dev/null \
  || ! command -v curl >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q && apt-get install -y -q --no-install-recommends postfix python3 curl
fi
cargo build --release -q --workspace
BIN=target/release/ringpost
BENCH=target/release/ringpost-bench

machine_facts > "$RAW/machine.txt"
{
  echo "date: $DATE"
  echo "command: bench/compare.sh $ROUNDS $M_SMALL $M_LARGE"
  echo "rounds: $ROUNDS"
  echo "messages_1k: $M_SMALL"
  echo "messages_100k: $M_LARGE"
  echo "server_cpus: $SERVER_CPUS"
  echo "client_cpus: $CLIENT_CPUS"
} > "$RAW/run.txt"

# --- the sink both MTAs deliver to --------------------------------------------
COUNT=$WORK/sink.count
taskset -c "$CLIENT_CPUS" $BENCH sink --listen "127.0.0.1:$SINK_PORT" --timeout 86400 --count-file "$COUNT" \
  > "$WORK/sink.out" &
SINK_PID=$!
RP_PID=
SS_PID=
cleanup() {
  kill $RP_PID $SS_PID $SINK_PID 2>/dev/null || true
  postfix_stop
}
trap cleanup EXIT
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
POSTFIX_CPUS=$SERVER_CPUS postfix_private "$PF_PORT" 'relay_domains =' \
  "relayhost = [127.0.0.1]:$SINK_PORT" "default_transport = smtp:[127.0.0.1]:$SINK_PORT" \
  "relay_transport = smtp:[127.0.0.1]:$SINK_PORT" 'smtpd_data_restrictions =' \
  'default_process_limit = 1100' 'message_size_limit = 52428800'

# --- smtp-sink: the protocol ceiling (as root it needs -u) --------------------
taskset -c "$SERVER_CPUS" smtp-sink -u postfix "127.0.0.1:$SS_PORT" 4096 &
SS_PID=$!

# --- ringpost, fsync on, relaying everything to the sink ----------------------
RINGPOST_CPUS=$SERVER_CPUS ringpost_start "$RP_PORT" 'threads = 1' '[limits]' 'connections = 5000' \
  '[[route]]' 'domain = "*"' "to = [\"127.0.0.1:$SINK_PORT\"]" '[delivery]' 'dns_servers = ["127.0.0.1:9"]'
sleep 1

# The count of messages ringpost has accepted, from its /metrics.
rp_accepted() {
  curl -s "http://$RP_ADMIN/metrics" | awk '$1 == "ringpost_messages_accepted_total" {print $2}'
}

# --- latency at half the peak rate ---------------------------------------------
# Measured twice: right after the 1 KiB cells, and after the 100 KiB ones,
# which push gigabytes through both MTAs (the disk is still busy with
# writeback and, on a filesystem mounted with discard, trimming what was
# deleted, well after the sink is quiet).
latency_at_half_peak() {
  local when=$1 name port half rate
  for name in ringpost postfix; do
    port=$([ $name = ringpost ] && echo $RP_PORT || echo $PF_PORT)
    rate=$(python3 -c "import json,sys; print([t for t in json.load(open(sys.argv[1]))['targets'] if t['name']==sys.argv[2]][0]['rate_median'])" \
      "$RAW/1024B-50c-100pc.json" $name)
    half=$(python3 -c "print(max(1, round($rate / 2)))")
    settle
    [ $name = ringpost ] && curl -s "http://$RP_ADMIN/metrics" > "$RAW/halfpeak-$when-before.metrics"
    taskset -c "$CLIENT_CPUS" $BENCH blast --target "127.0.0.1:$port" --size 1024 --connections 50 \
      --per-connection 100 --rate "$half" --messages $((half * 20)) --json "$RAW/halfpeak-$when-$name.json" > /dev/null
    [ $name = ringpost ] && curl -s "http://$RP_ADMIN/metrics" > "$RAW/halfpeak-$when-after.metrics"
  done
  postfix_empty_queue
}

for size in 1024 102400; do
  messages=$([ $size = 1024 ] && echo "$M_SMALL" || echo "$M_LARGE")
  for conns in 50 1000; do
    for per in 1 100; do
      cell="${size}B-${conns}c-${per}pc"
      echo "== $cell"
      taskset -c "$CLIENT_CPUS" $BENCH compare --rounds "$ROUNDS" --messages "$messages" --size $size --connections $conns \
        --per-connection $per \
        --target "postfix=127.0.0.1:$PF_PORT" --target "ringpost=127.0.0.1:$RP_PORT" \
        --target "smtp-sink=127.0.0.1:$SS_PORT" --sink-count "$COUNT" --delivers postfix --delivers ringpost \
        --json "$RAW/$cell.json" --svg "tuning/results/$DATE-$cell.svg" > /dev/null
      postfix_empty_queue
    done
  done
  echo "== half-peak latency"
  latency_at_half_peak "$([ $size = 1024 ] && echo before-100k || echo after-100k)"
done

# --- ringpost-bench and smtp-source on the same load ------------------------------
# Both against ringpost: 1 KiB, 50 sessions, interleaved, each run once the
# sink is quiet. smtp-source's rate is what ringpost counted as accepted.
echo "== load generators"
for i in $(seq "$ROUNDS"); do
  settle
  taskset -c "$CLIENT_CPUS" $BENCH blast --target "127.0.0.1:$RP_PORT" --size 1024 --connections 50 \
    --messages "$M_SMALL" --json "$RAW/agree-blast-$i.json" > /dev/null
  settle
  before=$(rp_accepted)
  t0=$(date +%s.%N)
  taskset -c "$CLIENT_CPUS" smtp-source -s 50 -m "$M_SMALL" -l 1024 -d -f blast@bench.test -t sink@example.test \
    "127.0.0.1:$RP_PORT"
  t1=$(date +%s.%N)
  after=$(rp_accepted)
  printf 'accepted: %s\nelapsed_s: %s\nrequested: %s\n' "$((after - before))" \
    "$(python3 -c "print($t1 - $t0)")" "$M_SMALL" > "$RAW/agree-source-$i.txt"
done

# --- 10,000 concurrent connections ----------------------------------------------
echo "== 10,000 connections"
cat > "$WORK/connections.toml" <<CONF
hostname = "bench.test"
threads = $(nproc)
[[listener]]
address = "127.0.0.1:$CONN_PORT"
[admin]
address = "127.0.0.1:0"
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
  python3 bench/connections.py "$pid" 127.0.0.1 "$CONN_PORT" 10000 > "$RAW/connections.txt" || true
  kill "$pid"
  wait "$pid" || true
)

status=0
python3 bench/report.py "$RAW" > "$OUT" || status=$?
cat "$OUT"
exit $status
