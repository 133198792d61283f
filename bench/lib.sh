# Shared by the bench scripts (source it from the repository root, with WORK
# set to a scratch directory). Postfix runs on loopback only; its
# configuration is saved first and restored by postfix_restore.

# Median of the numbers on stdin, one per line.
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

# The machine and commit lines of a results file.
machine_line() {
  echo "- machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r), spool on $(df -T "$WORK" | awk 'NR==2 {print $2}')"
  echo "- commit: $(git rev-parse --short HEAD)$(git diff --quiet -- . ':!tuning/results' || echo ' (dirty)')"
}

# postfix_loopback SMTPD_PORT [postconf settings...]: Postfix's smtpd on
# 127.0.0.1:SMTPD_PORT, loopback only, no DNS, plus the given settings; then
# start it (under taskset -c $POSTFIX_CPUS if that is set).
postfix_loopback() {
  local port=$1
  shift
  postfix stop >/dev/null 2>&1 || true
  cp /etc/postfix/main.cf "$WORK/main.cf.orig"
  cp /etc/postfix/master.cf "$WORK/master.cf.orig"
  postconf -e 'inet_interfaces = loopback-only' 'inet_protocols = ipv4' 'mydestination =' \
    'mynetworks = 127.0.0.0/8' 'local_transport = error:local delivery disabled' \
    'smtp_dns_support_level = disabled' 'smtpd_peername_lookup = no' 'notify_classes =' \
    'alias_maps =' 'local_recipient_maps =' 'maillog_file = /var/log/postfix-bench.log' \
    'smtpd_client_connection_count_limit = 0' 'smtpd_client_connection_rate_limit = 0' "$@"
  sed -i "s/^smtp      inet  n       -       y       -       -       smtpd/$port      inet  n       -       n       -       -       smtpd/" /etc/postfix/master.cf
  grep -q "^postlog" /etc/postfix/master.cf || echo "postlog   unix-dgram n  -       n       -       1       postlogd" >> /etc/postfix/master.cf
  # Postfix's processes inherit the affinity of its master.
  ${POSTFIX_CPUS:+taskset -c "$POSTFIX_CPUS"} postfix start >/dev/null 2>&1 \
    || { echo "postfix did not start; see /var/log/postfix-bench.log"; exit 1; }
}

# Stops Postfix, restores its configuration and empties its queue.
postfix_restore() {
  postfix stop >/dev/null 2>&1 || true
  [ -f "$WORK/main.cf.orig" ] && cp "$WORK/main.cf.orig" /etc/postfix/main.cf
  [ -f "$WORK/master.cf.orig" ] && cp "$WORK/master.cf.orig" /etc/postfix/master.cf
  postsuper -d ALL >/dev/null 2>&1 || true
}

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
