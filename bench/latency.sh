#!/usr/bin/env bash
# Latency at a fixed rate, ringpost alone: the client's end-of-DATA-to-250
# percentiles beside the server's own histograms (store latency, batch write,
# fdatasync) and its segment counters, for one or two ringpost binaries run
# interleaved (A B A B ...). ringpost (fsync on, one worker, CPU 0) relays
# everything to ringpost-bench sink; the load (1 KiB, 50 connections, 100
# messages per connection, blast --rate) and the sink run on CPU 1. Each
# round: a fresh server, 3 s of warm-up at the rate, then the measured run.
# Loopback only.
#
# usage: bench/latency.sh RATE SECONDS ROUNDS [BIN_A [BIN_B]]
# (binaries default to target/release/ringpost; set RP_SPOOL_EXTRA for more
# [spool] keys, e.g. 'segment_size = 1048576'). Prints a Markdown table made
# from the raw output, which it keeps under $RAW (default
# tuning/results/<date>-latency-raw/<time>/): per round and binary, the blast
# JSON and /metrics before and after.
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${1:?rate}
SECS=${2:?seconds}
ROUNDS=${3:?rounds}
BIN_A=${4:-target/release/ringpost}
BIN_B=${5:-}
PORT=2630
SINK_PORT=2633
BENCH=target/release/ringpost-bench
[ -x "$BENCH" ] || cargo build --release -q -p ringpost-bench
RAW=${RAW:-tuning/results/$(date -u +%F)-latency-raw/$(date -u +%H%M%S)}
mkdir -p "$RAW"
{
  echo "command: bench/latency.sh $*"
  echo "binaries: $BIN_A ${BIN_B}"
} > "$RAW/run.txt"

echo "| binary | msg/s | client p50 us | client p99 us | client p99.9 us | store p50/p99/p99.9 ms (at most) | write p99 ms | fdatasync p50/p99 ms | segments new/recycled/deleted |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for round in $(seq "$ROUNDS"); do
  for BIN in $BIN_A $BIN_B; do
    WORK=$(mktemp -d /tmp/ringpost-latency.XXXXXX)
    . bench/lib.sh
    taskset -c 1 $BENCH sink --listen "127.0.0.1:$SINK_PORT" --timeout 3600 > "$WORK/sink.out" &
    SINK_PID=$!
    RINGPOST_CPUS=0 ringpost_start "$PORT" 'threads = 1' '[limits]' 'connections = 5000' '[[route]]' \
      'domain = "*"' "to = [\"127.0.0.1:$SINK_PORT\"]" '[delivery]' 'dns_servers = ["127.0.0.1:9"]'
    trap 'kill $RP_PID $SINK_PID 2>/dev/null || true' EXIT
    sleep 1
    taskset -c 1 $BENCH blast --target "127.0.0.1:$PORT" --size 1024 --connections 50 --per-connection 100 \
      --rate "$RATE" --messages $((RATE * 3)) > /dev/null
    sleep 2
    OUTD=$RAW/round-$round-$(basename "$BIN")-$(echo "$BIN" | md5sum | cut -c1-6)
    mkdir -p "$OUTD"
    machine_facts > "$OUTD/machine.txt"
    curl -s "http://$RP_ADMIN/metrics" > "$OUTD/before.metrics"
    taskset -c 1 $BENCH blast --target "127.0.0.1:$PORT" --size 1024 --connections 50 --per-connection 100 \
      --rate "$RATE" --messages $((RATE * SECS)) --json "$OUTD/blast.json" > /dev/null
    curl -s "http://$RP_ADMIN/metrics" > "$OUTD/after.metrics"
    kill "$RP_PID" "$SINK_PID" 2>/dev/null || true
    wait "$RP_PID" "$SINK_PID" 2>/dev/null || true
    python3 - "$OUTD/before.metrics" "$OUTD/after.metrics" "$OUTD/blast.json" "$BIN" <<'PY'
import json, sys
sys.path.insert(0, "bench")
from histogram import bounds
before, after, blast, name = sys.argv[1:5]
def quantiles(metric, qs):
    return "/".join(f"{x:g}" for x in bounds(before, after, metric, qs)[1])
def counter(path, metric):
    for line in open(path):
        if line.startswith(metric + " "):
            return int(float(line.split()[1]))
    return 0
segs = "/".join(str(counter(after, f"ringpost_spool_segments_{k}_total") - counter(before, f"ringpost_spool_segments_{k}_total"))
                for k in ("created", "recycled", "deleted"))
b = json.load(open(blast))
d = b["data_to_250_us"]
print(f"| {name} | {b['rate']:.0f} | {d['p50']} | {d['p99']} | {d['p999']} "
      f"| {quantiles('ringpost_store_latency_seconds', (0.5, 0.99, 0.999))} "
      f"| {quantiles('ringpost_spool_write_seconds', (0.99,))} "
      f"| {quantiles('ringpost_spool_fdatasync_seconds', (0.5, 0.99))} | {segs} |")
PY
    rm -rf "$WORK"
  done
done
