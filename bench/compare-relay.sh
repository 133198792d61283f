#!/usr/bin/env bash
# End-to-end relay rate with fsync on: accept, spool, deliver to a sink.
# ringpost vs Postfix, same machine, same load, interleaved (A B A B ...).
# Load: smtp-source, 1 KiB, 50 sessions, connections reused. The sink is
# ringpost-bench sink (stores nothing); the clock runs from the first message
# sent to the last one received by the sink.
#
# usage: bench/compare-relay.sh [ROUNDS] [MESSAGES]     (run as root)
# writes tuning/results/<date>-relay.md
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
MESSAGES=${2:-20000}
SESSIONS=50
SIZE=1024
RP_PORT=2610
PF_PORT=2611
SINK_PORT=2612
WORK=$(mktemp -d /tmp/ringpost-relay.XXXXXX)
. bench/lib.sh

command -v smtp-source >/dev/null || { echo "needs smtp-source (apt-get install postfix)"; exit 1; }
cargo build --release -q --workspace
BIN=target/release/ringpost
SINK=target/release/ringpost-bench

# --- Postfix on loopback, relaying everything to the sink --------------------
postfix_loopback "$PF_PORT" 'relay_domains =' \
  "relayhost = [127.0.0.1]:$SINK_PORT" "default_transport = smtp:[127.0.0.1]:$SINK_PORT" \
  "relay_transport = smtp:[127.0.0.1]:$SINK_PORT" 'smtpd_data_restrictions =' 'default_process_limit = 200'
cleanup() {
  postfix_restore
  kill "$RP_PID" 2>/dev/null || true
}
trap cleanup EXIT

# --- ringpost, fsync on, routing everything to the sink ----------------------
ringpost_start "$RP_PORT" '[limits]' 'connections_per_ip = 10000' '[[route]]' 'domain = "*"' \
  "to = [\"127.0.0.1:$SINK_PORT\"]" '[delivery]' 'dns_servers = ["127.0.0.1:9"]'

# run TARGET_PORT -> prints "accept_rate end_to_end_rate"
run() {
  local port=$1
  $SINK sink --listen "127.0.0.1:$SINK_PORT" --expect "$MESSAGES" --timeout 600 > "$WORK/sink.out" &
  local sink=$!
  sleep 0.3
  local t0 t1 t2
  t0=$(date +%s.%N)
  timeout 600 smtp-source -s $SESSIONS -m "$MESSAGES" -l $SIZE -d -f s@x.test -t r@example.net "127.0.0.1:$port"
  t1=$(date +%s.%N)
  wait $sink
  t2=$(date +%s.%N)
  awk -v n="$MESSAGES" -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN { printf "%.0f %.0f\n", n / (b - a), n / (c - a) }'
}


RP_E2E=""; PF_E2E=""; RP_ACC=""; PF_ACC=""
for i in $(seq "$ROUNDS"); do
  read -r rpa rpe < <(run $RP_PORT)
  read -r pfa pfe < <(run $PF_PORT)
  echo "round $i: ringpost accept $rpa/s end-to-end $rpe/s   postfix accept $pfa/s end-to-end $pfe/s"
  RP_E2E+="$rpe "; PF_E2E+="$pfe "; RP_ACC+="$rpa "; PF_ACC+="$pfa "
done

DATE=$(date -u +%Y-%m-%d)
OUT=tuning/results/$DATE-relay.md
rpe=$(echo $RP_E2E | tr ' ' '\n' | median); pfe=$(echo $PF_E2E | tr ' ' '\n' | median)
rpa=$(echo $RP_ACC | tr ' ' '\n' | median); pfa=$(echo $PF_ACC | tr ' ' '\n' | median)
{
  echo "# End-to-end relay, fsync on: ringpost vs Postfix ($DATE)"
  echo
  machine_line
  echo "- Postfix $(postconf -h mail_version) relaying to the sink (relayhost), ringpost with a \`[[route]] domain = \"*\"\` to the sink"
  echo "- load: smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE -d; sink: ringpost-bench sink; everything on the same 2 cores"
  echo "- end to end = messages / (time from the first message sent to the last one received by the sink)"
  echo "- command: bench/compare-relay.sh $ROUNDS $MESSAGES"
  echo
  echo "| | ringpost (median) | Postfix (median) | ratio | runs ringpost | runs Postfix |"
  echo "| --- | --- | --- | --- | --- | --- |"
  echo "| end to end msg/s | $rpe | $pfe | $(awk -v a="$rpe" -v b="$pfe" 'BEGIN {printf "%.1fx", a / b}') | $RP_E2E| $PF_E2E|"
  echo "| accept msg/s (during the run) | $rpa | $pfa | $(awk -v a="$rpa" -v b="$pfa" 'BEGIN {printf "%.1fx", a / b}') | $RP_ACC| $PF_ACC|"
} > "$OUT"
cat "$OUT"
