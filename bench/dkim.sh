#!/usr/bin/env bash
# DKIM signing under load: one ringpost binary run four ways (no keys, an
# RSA-2048 key, an Ed25519 key, both), each with one worker on CPU 0, fsync
# on, relaying to one sink; ringpost-bench compare drives them interleaved
# (each round starts with the next one) with 1 KiB messages whose From: is
# the signed domain; load and sink on the other CPUs. Before the load, the
# criterion bench `dkim` measures the raw sign rate on CPU 0 (the physical
# limit). Saves raw output under tuning/results/<date>-dkim-raw/ and writes
# tuning/results/<date>-dkim.md (bench/dkim_report.py).
#
# usage: bench/dkim.sh [ROUNDS] [MESSAGES]   (as root; loopback only)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
MESSAGES=${2:-20000}
SINK_PORT=2659 # below the servers' ports (2661-2664)
WORK=$(mktemp -d /tmp/ringpost-dkim.XXXXXX)
. bench/lib.sh
DATE=$(date -u +%Y-%m-%d)
RAW=tuning/results/$DATE-dkim-raw
rm -rf "$RAW"
mkdir -p "$RAW"
cargo build --release -q -p ringpost -p ringpost-bench
cargo bench -q -p ringpost-bench --bench dkim --no-run 2> /dev/null
BIN=target/release/ringpost
BENCH=target/release/ringpost-bench
CLIENT_CPUS=1-$(($(nproc) - 1))

machine_facts > "$RAW/machine.txt"
{
  echo "date: $DATE"
  echo "command: bench/dkim.sh $*"
  echo "rounds: $ROUNDS"
  echo "messages: $MESSAGES"
} > "$RAW/run.txt"

# The raw rate first, on the server's CPU, with nothing else running.
taskset -c 0 cargo bench -q -p ringpost-bench --bench dkim -- --warm-up-time 2 --measurement-time 5 \
  > "$RAW/criterion.txt" 2>&1

KEYS=$WORK/keys
mkdir -p "$KEYS"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$KEYS/rsa.pem" 2> /dev/null
openssl genpkey -algorithm ed25519 -out "$KEYS/ed.pem"
entry() { printf '[[dkim]]\ndomain = "example.com"\nselector = "%s"\nkey = "%s"\n' "$1" "$2"; }

COUNT=$WORK/sink.count
taskset -c "$CLIENT_CPUS" $BENCH sink --listen "127.0.0.1:$SINK_PORT" --timeout 86400 --count-file "$COUNT" \
  > "$WORK/sink.out" &
SINK_PID=$!
PIDS=()
trap 'kill $SINK_PID ${PIDS[*]} 2>/dev/null || true' EXIT
TARGETS=()
port=2660
for variant in unsigned rsa ed25519 both; do
  sub=$WORK/$variant
  mkdir -p "$sub"
  keys=()
  case $variant in
    rsa) keys=("$(entry r "$KEYS/rsa.pem")") ;;
    ed25519) keys=("$(entry e "$KEYS/ed.pem")") ;;
    both) keys=("$(entry r "$KEYS/rsa.pem")" "$(entry e "$KEYS/ed.pem")") ;;
  esac
  port=$((port + 1))
  WORK=$sub RINGPOST_CPUS=0 ringpost_start "$port" 'threads = 1' "${keys[@]}" '[limits]' 'connections = 5000' \
    '[[route]]' 'domain = "*"' "to = [\"127.0.0.1:$SINK_PORT\"]" '[delivery]' 'dns_servers = ["127.0.0.1:9"]'
  PIDS+=("$RP_PID")
  TARGETS+=(--target "$variant=127.0.0.1:$port" --delivers "$variant")
done
sleep 1
for per in 100 1; do
  echo "== 1024B-50c-${per}pc"
  taskset -c "$CLIENT_CPUS" $BENCH compare --rounds "$ROUNDS" --messages "$MESSAGES" --size 1024 --connections 50 \
    --per-connection $per --from bench@example.com "${TARGETS[@]}" --sink-count "$COUNT" \
    --json "$RAW/1024B-50c-${per}pc.json" > /dev/null
done
python3 bench/dkim_report.py "$RAW" > "tuning/results/$DATE-dkim.md"
cat "tuning/results/$DATE-dkim.md"
