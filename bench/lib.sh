# Shared by the bench scripts (source it from the repository root, with WORK
# set to a scratch directory). Postfix runs as a private instance under $WORK
# (its own config, queue and log), on loopback only; nothing system-wide is
# changed.

# Median of the numbers on stdin, one per line.
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

# Facts about this machine and checkout, read from them (one per line,
# "key: value"), for the raw output of a run.
machine_facts() {
  echo "cpus: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "memory_gib: $(free -g | awk '/Mem:/ {print $2}')"
  echo "kernel: $(uname -r)"
  echo "spool_fs: $(df -T "$WORK" | awk 'NR==2 {print $2}')"
  echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet -- . ':!tuning/results' || echo ' (dirty)')"
  echo "postfix: $(postconf -h mail_version 2>/dev/null || echo none)"
}

# The machine and commit lines of a results file.
machine_line() {
  machine_facts | python3 -c '
import sys
f = dict(l.rstrip("\n").split(": ", 1) for l in sys.stdin)
print("- machine: %s CPUs (%s), %s GiB, %s, spool on %s" % (f["cpus"], f["cpu"], f["memory_gib"], f["kernel"], f["spool_fs"]))
print("- commit: " + f["commit"])'
}

# postfix_private SMTPD_PORT [main.cf lines...]: a private Postfix instance
# under $WORK/postfix, its smtpd on 127.0.0.1:SMTPD_PORT, loopback only, no
# DNS, plus the given main.cf lines; its master runs in the foreground (under
# taskset -c $POSTFIX_CPUS if that is set; its processes inherit it). Sets
# PF_PID and PF_ETC (for postconf/postsuper -c).
postfix_private() {
  local port=$1
  shift
  local d=$WORK/postfix
  mkdir -p "$d/etc" "$d/queue" "$d/data"
  # Postfix's own user must reach its data directory (mktemp -d makes 0700).
  chmod 755 "$WORK" "$d"
  chown postfix "$d/data"
  {
    printf '%s\n' 'compatibility_level = 3.6' "queue_directory = $d/queue" "data_directory = $d/data" \
      'command_directory = /usr/sbin' 'daemon_directory = /usr/lib/postfix/sbin' 'mail_owner = postfix' \
      'setgid_group = postdrop' 'inet_interfaces = 127.0.0.1' 'inet_protocols = ipv4' 'myhostname = pf-bench.test' \
      'mydestination =' 'mynetworks = 127.0.0.0/8' 'local_transport = error:local delivery disabled' \
      'smtp_dns_support_level = disabled' 'smtpd_peername_lookup = no' 'notify_classes =' 'alias_maps =' \
      'local_recipient_maps =' 'maillog_file = /dev/stdout' 'smtpd_client_connection_count_limit = 0' \
      'smtpd_client_connection_rate_limit = 0'
    printf '%s\n' "$@"
  } > "$d/etc/main.cf"
  grep -v '^postlog' /etc/postfix/master.cf \
    | sed "s/^smtp      inet  n       -       y       -       -       smtpd/127.0.0.1:$port      inet  n       -       n       -       -       smtpd/" \
    > "$d/etc/master.cf"
  echo "postlog   unix-dgram n  -       n       -       1       postlogd" >> "$d/etc/master.cf"
  /usr/lib/postfix/sbin/post-install "config_directory=$d/etc" meta_directory=/etc/postfix create-missing
  PF_ETC=$d/etc
  setsid ${POSTFIX_CPUS:+taskset -c "$POSTFIX_CPUS"} /usr/lib/postfix/sbin/master -c "$PF_ETC" -d \
    > "$d/maillog" 2>&1 &
  PF_PID=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return; sleep 0.1; done
  echo "postfix did not start; see $d/maillog"
  exit 1
}

# Stops the private Postfix (its master stops its whole process group).
postfix_stop() {
  [ -n "${PF_PID:-}" ] || return 0
  kill "$PF_PID" 2>/dev/null || true
  wait "$PF_PID" 2>/dev/null || true
  PF_PID=
}

# Empties the private Postfix's queue.
postfix_empty_queue() { postsuper -c "$PF_ETC" -d ALL >/dev/null 2>&1 || true; }

# ringpost_start PORT [TOML LINE...]: ringpost on 127.0.0.1:PORT, fsync on,
# spool in $WORK/spool, admin on a free port, log level warn, plus the given
# lines (top-level keys first, then whole tables other than [[listener]],
# [admin], [spool] and [log]; $RP_SPOOL_EXTRA, if set, goes into [spool]);
# under taskset -c $RINGPOST_CPUS if that is set.
# Waits until it serves; sets RP_PID and RP_ADMIN.
ringpost_start() {
  local port=$1
  shift
  {
    echo 'hostname = "bench.test"'
    printf '%s\n' "$@"
    printf '[[listener]]\naddress = "127.0.0.1:%s"\n[admin]\naddress = "127.0.0.1:0"\n' "$port"
    printf '[spool]\ndir = "%s/spool"\nfsync = true\n%s\n[log]\nlevel = "warn"\n' "$WORK" "${RP_SPOOL_EXTRA:-}"
  } > "$WORK/ringpost.toml"
  ${RINGPOST_CPUS:+taskset -c "$RINGPOST_CPUS"} $BIN serve --config "$WORK/ringpost.toml" \
    > "$WORK/ringpost.out" 2> "$WORK/ringpost.err" &
  RP_PID=$!
  for _ in $(seq 50); do grep -q "workers" "$WORK/ringpost.out" 2>/dev/null && break; sleep 0.1; done
  RP_ADMIN=$(sed -n 's|^ringpost: admin http://||p' "$WORK/ringpost.out")
}
