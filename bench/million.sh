#!/usr/bin/env bash
# A million queued messages (issue 15, part 2): COUNT 1 KiB messages to
# 10,000 domains whose next hop is down (a `[[route]]` for every domain to
# a closed loopback port), one worker pinned to CPU 0, fsync on, the load
# (`ringpost-bench blast --domains 10000`, 50 connections) on the other
# CPUs. Measures:
# - the server's resident memory growth per queued message, once every
#   message has had its first attempt and waits for its retry (or waits,
#   without one, for its domain's down destination to be probed again);
# - kill -9 with everything queued, then a restart: seconds until SMTP
#   answers (220) and /health says 200, the spool's size and how fast it
#   was read back (MB/s, against `cat` reading the same segment files,
#   both from the page cache that kill -9 leaves), and that every message
#   is back (/queue).
# Raw output under tuning/results/<date>-million-raw/, the report in
# tuning/results/<date>-million.md.
#
# usage: [COLD=1] bench/million.sh [BIN] [COUNT]   (loopback only; COUNT x ~1.3 KiB of disk)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/ringpost}
COUNT=${2:-1000000}
PORT=2670
WORK=$(mktemp -d /tmp/ringpost-million.XXXXXX)
. bench/lib.sh
DATE=$(date -u +%Y-%m-%d)
RAW=tuning/results/$DATE-million-raw
rm -rf "$RAW"
mkdir -p "$RAW"
BENCH=target/release/ringpost-bench
[ -x "$BENCH" ] || cargo build --release -q -p ringpost-bench
CLIENT_CPUS=1-$(($(nproc) - 1))
trap 'kill -9 ${RP_PID:-0} 2>/dev/null || true; rm -rf "$WORK"' EXIT

machine_facts > "$RAW/machine.txt"
{
  echo "date: $DATE"
  echo "command: bench/million.sh $*"
  echo "binary: $BIN ($($BIN --version))"
  echo "messages: $COUNT"
  echo "cold: ${COLD:-0}"
} > "$RAW/run.txt"

CONFIG=('threads = 1' '[limits]' 'connections = 5000'
  '[delivery]' 'dns_servers = ["127.0.0.1:9"]' 'retry = ["6h"]' 'max_age = "5d"'
  '[[route]]' 'domain = "*"' 'to = ["127.0.0.1:9"]')

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$RP_PID/status"; }
metric() { curl -s "http://$RP_ADMIN/metrics" | awk -v n="$1" '$1 == n {print $2}'; }
now() { date +%s.%N; }

RINGPOST_CPUS=0 ringpost_start "$PORT" "${CONFIG[@]}"
sleep 1
base=$(rss_kib)
echo "rss_start_kib: $base" >> "$RAW/run.txt"

t0=$(now)
taskset -c "$CLIENT_CPUS" $BENCH blast --target "127.0.0.1:$PORT" --messages "$COUNT" --connections 50 \
  --size 1024 --pipelining --domains 10000 --timeout 3600 --json "$RAW/blast.json" > "$RAW/blast.log" 2>&1
t1=$(now)
# Every message tried once (the next hop refuses) and waiting for its retry,
# or waiting without an attempt for its domain's destination, found down,
# to be probed again (`delivery::down`): none in flight.
waiting() {
  curl -s "http://$RP_ADMIN/queue" | python3 -c '
import json, sys
q = json.load(sys.stdin)
print(q["deferred"] if q["in_flight"] == 0 else 0)'
}
for _ in $(seq 600); do
  d=$(waiting)
  [ "${d:-0}" -ge "$COUNT" ] && break
  sleep 1
done
t2=$(now)
sleep 2
rss=$(rss_kib)
queued=$(metric ringpost_queue_messages)
{
  echo "accept_seconds: $(echo "$t1 - $t0" | bc)"
  echo "first_attempts_done_seconds: $(echo "$t2 - $t0" | bc)"
  echo "deferred: $(metric ringpost_deferred_total)"
  echo "parked: $(metric ringpost_queue_parked_messages)"
  echo "queued: $queued"
  echo "rss_queued_kib: $rss"
  echo "rss_growth_bytes_per_message: $(( (rss - base) * 1024 / COUNT ))"
  echo "spool_bytes: $(du -sb "$WORK/spool" | cut -f1)"
} >> "$RAW/run.txt"

# kill -9, then the restart.
kill -9 "$RP_PID"
wait "$RP_PID" 2>/dev/null || true
segs=$(du -cb "$WORK"/spool/w*/*.seg | tail -1 | cut -f1)
# COLD=1: from the disk, not the page cache kill -9 leaves (a power cut's
# restart): the page cache is dropped before `cat` and again before the
# restart (needs root; affects only caches).
drop_caches() { if [ "${COLD:-0}" = 1 ]; then sync; echo 3 > /proc/sys/vm/drop_caches; fi; }
drop_caches
c0=$(now)
cat "$WORK"/spool/w*/*.seg > /dev/null
c1=$(now)
drop_caches
start=$(now)
taskset -c 0 $BIN serve --config "$WORK/ringpost.toml" \
  > "$WORK/ringpost.out" 2> "$WORK/ringpost.err" &
RP_PID=$!
smtp_at=""
health_at=""
for _ in $(seq 6000); do
  if [ -z "$smtp_at" ] && exec 3<>"/dev/tcp/127.0.0.1/$PORT" 2>/dev/null; then
    if read -r -t 5 line <&3 && [[ $line == 220* ]]; then smtp_at=$(now); fi
    exec 3<&- 3>&-
  fi
  if [ -z "$health_at" ]; then
    admin=$(sed -n 's|^ringpost: admin http://||p' "$WORK/ringpost.out" 2>/dev/null || true)
    if [ -n "$admin" ] && [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$admin/health")" = 200 ]; then
      health_at=$(now)
      RP_ADMIN=$admin
    fi
  fi
  [ -n "$smtp_at" ] && [ -n "$health_at" ] && break
  sleep 0.01
done
back=$(metric ringpost_queue_messages)
{
  echo "segment_bytes: $segs"
  echo "cat_seconds: $(echo "$c1 - $c0" | bc)"
  echo "restart_smtp_seconds: $(echo "$smtp_at - $start" | bc)"
  echo "restart_health_seconds: $(echo "$health_at - $start" | bc)"
  echo "recovered: $back"
  echo "rss_recovered_kib: $(rss_kib)"
} >> "$RAW/run.txt"
kill "$RP_PID"
wait "$RP_PID" 2>/dev/null || true
cat "$RAW/run.txt"
python3 - "$RAW" "$COUNT" > "tuning/results/$DATE-million.md" <<'EOF'
import json, sys
raw, count = sys.argv[1], int(sys.argv[2])
f = dict(l.rstrip("\n").split(": ", 1) for l in open(f"{raw}/run.txt"))
m = dict(l.rstrip("\n").split(": ", 1) for l in open(f"{raw}/machine.txt"))
b = json.load(open(f"{raw}/blast.json"))
mb = lambda n: int(n) / 1e6
restart = float(f["restart_health_seconds"])
print(f"# A million queued messages ({f['date']})\n")
print(f"- machine: {m['cpus']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, {m['kernel']}, spool on {m['spool_fs']}")
print(f"- commit: {m['commit']}")
print(f"- command: `{f['command'] or 'bench/million.sh'}` (one worker on CPU 0, fsync on, blast on the other CPUs)\n")
print("| what | value |\n| --- | --- |")
print(f"| messages queued (1 KiB, 10,000 domains, next hop down) | {count:,} accepted, {int(float(f['queued'])):,} queued |")
print(f"| accepted at | {b.get('rate', 0):,.0f} msg/s ({float(f['accept_seconds']):.1f} s) |")
print(f"| every message tried once, or waiting on its down domain ({int(float(f.get('parked', 0))):,} of them), after | {float(f['first_attempts_done_seconds']):.1f} s |")
print(f"| resident memory growth per queued message | {f['rss_growth_bytes_per_message']} bytes ({int(f['rss_queued_kib']) - int(f['rss_start_kib']):,} KiB for {count:,}) |")
print(f"| spool on disk | {mb(f['spool_bytes']):,.0f} MB |")
print(f"| kill -9, restart: SMTP answers after | {float(f['restart_smtp_seconds']):.2f} s |")
print(f"| kill -9, restart: /health 200 after | {restart:.2f} s |")
print(f"| messages back after the restart | {int(float(f['recovered'])):,} |")
where = "from the disk: page cache dropped" if f.get("cold", "0") == "1" else "page cache"
print(f"| segments read back at ({where}) | {mb(f['segment_bytes']) / restart:,.0f} MB/s (upper bound: includes start-up) |")
print(f"| `cat` of the same segment files ({where}) | {mb(f['segment_bytes']) / float(f['cat_seconds']):,.0f} MB/s |")
print(f"| resident memory after the restart | {int(f['rss_recovered_kib']):,} KiB |")
EOF
cat "tuning/results/$DATE-million.md"
