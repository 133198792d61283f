#!/usr/bin/env bash
# Accept rate with fsync on: ringpost vs Postfix, same machine, same load,
# interleaved (A B A B ...). Load: Postfix's smtp-source, 1 KiB messages,
# 50 sessions, with and without connection reuse.
#
# Postfix gets `HOLD` at the end of DATA, so it does what ringpost does in this
# version (accept, fsync, queue) and spends no CPU on deliveries. Everything
# listens on loopback; nothing can leave the machine.
#
# usage: bench/compare-accept.sh [ROUNDS] [MESSAGES]     (run as root)
# writes tuning/results/<date>-accept.md
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
MESSAGES=${2:-20000}
SESSIONS=50
SIZE=1024
RP_PORT=2600
PF_PORT=2601
WORK=$(mktemp -d /tmp/ringpost-bench.XXXXXX)
. bench/lib.sh

command -v smtp-source >/dev/null || { echo "needs smtp-source (apt-get install postfix)"; exit 1; }
cargo build --release -q
BIN=target/release/ringpost

# --- Postfix on loopback, HOLD everything it accepts -------------------------
# With HOLD the transport is never used; a dead loopback port keeps it harmless.
postfix_loopback "$PF_PORT" 'relay_domains = example.test' \
  'default_transport = smtp:[127.0.0.1]:9' 'relay_transport = smtp:[127.0.0.1]:9' \
  'smtpd_data_restrictions = check_client_access static:HOLD' 'default_process_limit = 200'
trap 'postfix_restore; kill $RP_PID 2>/dev/null || true' EXIT

# --- ringpost, fsync on ------------------------------------------------------
# Like Postfix's HOLD above: queue, deliver nothing (and ask no DNS server).
ringpost_start "$RP_PORT" '[limits]' 'connections_per_ip = 10000' '[delivery]' 'hold = true' \
  'dns_servers = ["127.0.0.1:9"]'

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

# run TARGET_PORT REUSE -> prints "rate cpu_us_per_msg" (cpu only for ringpost)
run() {
  local port=$1 reuse=$2 flag=""
  [ "$reuse" = yes ] && flag="-d"
  local c0 c1 t0 t1
  c0=$(cpu_ticks $RP_PID)
  t0=$(date +%s.%N)
  timeout 600 smtp-source -s $SESSIONS -m "$MESSAGES" -l $SIZE $flag -f s@x.test -t r@example.test "127.0.0.1:$port"
  t1=$(date +%s.%N)
  c1=$(cpu_ticks $RP_PID)
  awk -v n="$MESSAGES" -v a="$t0" -v b="$t1" -v c="$((c1 - c0))" -v tick="$TICK" \
    'BEGIN { printf "%.0f %.0f\n", n / (b - a), c / tick * 1e6 / n }'
}


declare -A R
for reuse in yes no; do
  for i in $(seq "$ROUNDS"); do
    read -r rp rp_cpu < <(run $RP_PORT $reuse)
    read -r pf _ < <(run $PF_PORT $reuse)
    postsuper -d ALL >/dev/null 2>&1 || true
    echo "reuse=$reuse round $i: ringpost $rp/s (${rp_cpu} us CPU/msg)  postfix $pf/s"
    R[rp_$reuse]+="$rp "; R[pf_$reuse]+="$pf "; R[cpu_$reuse]+="$rp_cpu "
  done
done

DATE=$(date -u +%Y-%m-%d)
OUT=tuning/results/$DATE-accept.md
{
  echo "# Accept rate, fsync on: ringpost vs Postfix ($DATE)"
  echo
  machine_line
  echo "- Postfix $(postconf -h mail_version), HOLD at end of DATA (accept + fsync + queue, no delivery)"
  echo "- load: smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE [-d], on the same 2 cores"
  echo "- command: bench/compare-accept.sh $ROUNDS $MESSAGES"
  echo
  echo "| connections | ringpost msg/s (median) | Postfix msg/s (median) | ratio | ringpost CPU us/msg | runs ringpost | runs Postfix |"
  echo "| --- | --- | --- | --- | --- | --- | --- |"
  for reuse in yes no; do
    rp=$(echo ${R[rp_$reuse]} | tr ' ' '\n' | median)
    pf=$(echo ${R[pf_$reuse]} | tr ' ' '\n' | median)
    cpu=$(echo ${R[cpu_$reuse]} | tr ' ' '\n' | median)
    label=$([ $reuse = yes ] && echo "reused (-d)" || echo "one per message")
    echo "| $label | $rp | $pf | $(awk -v a="$rp" -v b="$pf" 'BEGIN {printf "%.1fx", a / b}') | $cpu | ${R[rp_$reuse]}| ${R[pf_$reuse]}|"
  done
} > "$OUT"
cat "$OUT"
