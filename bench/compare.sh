#!/usr/bin/env bash
# The headline comparison, from scratch: ringpost (fsync on) vs Postfix vs
# Postfix's smtp-sink (stores nothing: the protocol-only ceiling), with the
# same load from ringpost-bench, interleaved, on this machine.
#
# Both MTAs relay everything to one sink (ringpost-bench sink) while they are
# measured, so each does its whole job: accept, store durably, deliver.
# Matrix: 1 KiB and 100 KiB messages x 50 and 1,000 connections x 1 and 100
# messages per connection. Everything listens on loopback.
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
M_SMALL=${2:-10000}
M_LARGE=${3:-3000}
RP_PORT=2620
PF_PORT=2621
SS_PORT=2622
SINK_PORT=2623
WORK=$(mktemp -d /tmp/ringpost-compare.XXXXXX)
. bench/lib.sh
SERVER_CPUS=0
CLIENT_CPUS=1-$(($(nproc) - 1))
if [ "$(nproc)" -lt 2 ]; then CLIENT_CPUS=0; fi
DATE=$(date -u +%Y-%m-%d)
OUT=tuning/results/$DATE.md

if ! command -v postfix >/dev/null || ! command -v smtp-sink >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q && apt-get install -y -q --no-install-recommends postfix
fi
cargo build --release -q --workspace
BIN=target/release/ringpost
BENCH=target/release/ringpost-bench

# --- the sink both MTAs deliver to --------------------------------------------
taskset -c "$CLIENT_CPUS" $BENCH sink --listen "127.0.0.1:$SINK_PORT" --timeout 86400 > "$WORK/sink.out" &
SINK_PID=$!

# --- Postfix on loopback, relaying everything to the sink ---------------------
POSTFIX_CPUS=$SERVER_CPUS postfix_loopback "$PF_PORT" 'relay_domains =' \
  "relayhost = [127.0.0.1]:$SINK_PORT" "default_transport = smtp:[127.0.0.1]:$SINK_PORT" \
  "relay_transport = smtp:[127.0.0.1]:$SINK_PORT" 'smtpd_data_restrictions =' \
  'default_process_limit = 1100' 'message_size_limit = 52428800'

# --- smtp-sink: the protocol ceiling (as root it needs -u) --------------------
taskset -c "$SERVER_CPUS" smtp-sink -u postfix "127.0.0.1:$SS_PORT" 4096 &
SS_PID=$!

# --- ringpost, fsync on, relaying everything to the sink ----------------------
cat > "$WORK/ringpost.toml" <<EOF
hostname = "bench.test"
threads = 1
[[listener]]
address = "127.0.0.1:$RP_PORT"
[admin]
address = "127.0.0.1:0"
[spool]
dir = "$WORK/spool"
fsync = true
[limits]
connections = 5000
[[route]]
domain = "*"
to = ["127.0.0.1:$SINK_PORT"]
[delivery]
dns_servers = ["127.0.0.1:9"]
[log]
level = "warn"
EOF
taskset -c "$SERVER_CPUS" $BIN serve --config "$WORK/ringpost.toml" > "$WORK/ringpost.out" 2> "$WORK/ringpost.err" &
RP_PID=$!
cleanup() {
  kill "$RP_PID" "$SS_PID" "$SINK_PID" 2>/dev/null || true
  postfix_restore
}
trap cleanup EXIT
for _ in $(seq 50); do grep -q "workers" "$WORK/ringpost.out" 2>/dev/null && break; sleep 0.1; done
sleep 1

{
  echo "# ringpost vs Postfix vs smtp-sink ($DATE)"
  echo
  machine_line
  echo "- ringpost fsync on, relaying to a sink; Postfix $(postconf -h mail_version) relaying to the same sink; smtp-sink stores nothing"
  echo "- CPUs: servers on CPU $SERVER_CPUS (ringpost with one worker), load generator and sink on CPUs $CLIENT_CPUS: figures are per server core"
  echo "- load: ringpost-bench compare, $ROUNDS interleaved rounds per cell, medians"
  echo "- latency: MAIL FROM to the final 250, as the client sees it"
  echo "- command: bench/compare.sh $ROUNDS $M_SMALL $M_LARGE"
  echo
} > "$OUT"

for size in 1024 102400; do
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
        --target "smtp-sink=127.0.0.1:$SS_PORT" \
        --json "$WORK/$cell.json" --svg "tuning/results/$DATE-$cell.svg" >> "$OUT"
      echo >> "$OUT"
      postsuper -d ALL >/dev/null 2>&1 || true
    done
  done
done
cat "$OUT"
