#!/usr/bin/env python3
"""Many destinations (issue 15, part 1): the internet played on loopback.

dnsmasq answers for D domains (d0.bench.test ... d<D-1>.bench.test), whose
MX hosts are H names spread over H loopback addresses (127.1.x.y); one
`ringpost-bench sink` process listens on all of them, some slow (a delay
before every reply), some throttling (421 at the greeting), and some
addresses have no receiver at all (dead: connection refused). Domain i's MX
is host i mod H; message n goes to domain n mod D.

Each scenario starts a fresh ringpost (one worker on CPU 0, fsync on,
`[delivery] hold = true`), loads it with M messages (`ringpost-bench
blast`, load and receivers on the other CPUs), then releases the hold (a
reload) and times how long the healthy receivers take to get every message
meant for them: the delivery rate. Scenarios (same messages, same
receivers):

  single   every message to d0 (one destination, one receiver)
  many     spread over D domains, every receiver healthy
  slow     as many, with 10% of the hosts slow
  hostile  as many, with 10% slow, 5% throttling and 5% dead

Targets: many >= 0.9x single; the healthy rate of slow (and of hostile)
within 10% of many. Also reports the DNS cache's counters (hits, misses,
coalesced lookups, stale answers) per scenario; with --ttl short enough
that the run outlives it, the answers of 10,000 domains expire during the
run and are refreshed (jittered expiry, serve-stale while one refreshes).

usage: bench/domains.py [--messages 200000] [--domains 10000] [--hosts 100]
                        [--slow-ms 2000] [--rounds 3] [--ttl 3600]
Loopback only. Writes tuning/results/<date>-domains.md and the raw JSON.
"""

import argparse
import datetime
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchlib import commit, free_port, machine, ringpost_config

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target/release/ringpost"
BENCH = ROOT / "target/release/ringpost-bench"
PORT = 2525  # the receivers' port (ringpost's [delivery] port)
DNS_PORT = 5354


def host_addr(h):
    return f"127.1.{h // 250}.{h % 250 + 1}"



def wait_port(port, proc, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited ({proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not start")


def roles(hosts, scenario):
    """host -> 'ok' | 'slow' | 'throttle' | 'dead'. Host 0 (d0's) is always ok."""
    r = {h: "ok" for h in range(hosts)}
    if scenario in ("slow", "hostile"):
        for h in range(hosts - hosts // 10, hosts):
            r[h] = "slow"
    if scenario == "hostile":
        n5 = max(1, hosts // 20)
        top = hosts - hosts // 10
        for h in range(top - n5, top):
            r[h] = "throttle"
        for h in range(top - 2 * n5, top - n5):
            r[h] = "dead"
    return r


def start_dns(work, domains, hosts, ttl):
    conf = work / "dnsmasq.conf"
    lines = [f"port={DNS_PORT}", "listen-address=127.0.0.1", "bind-interfaces", "no-resolv", "no-hosts",
             "local=/bench.test/", f"local-ttl={ttl}", "cache-size=0", "dns-forward-max=10000",
             f"log-facility={work / 'dnsmasq.log'}"]
    for h in range(hosts):
        lines.append(f"host-record=mx{h}.bench.test,{host_addr(h)}")
    for d in range(domains):
        lines.append(f"mx-host=d{d}.bench.test,mx{d % hosts}.bench.test,10")
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(["taskset", "-c", "1", "dnsmasq", "--keep-in-foreground", f"--conf-file={conf}",
                             f"--pid-file={work / 'dnsmasq.pid'}", "--user=root"],
                            stdout=subprocess.DEVNULL, stderr=open(work / "dnsmasq.err", "w"))
    # dnsmasq answers UDP; wait until it does.
    q = bytes.fromhex("abcd01000001000000000000") + b"\x02d0\x05bench\x04test\x00" + b"\x00\x0f\x00\x01"
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"dnsmasq exited: {(work / 'dnsmasq.err').read_text()}")
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.2)
        try:
            s.sendto(q, ("127.0.0.1", DNS_PORT))
            if len(s.recv(512)) > 12:
                return proc
        except OSError:
            pass
        finally:
            s.close()
    sys.exit("dnsmasq did not answer")


def start_sink(work, hosts, role, slow_ms, count_file):
    args = [str(BENCH), "sink", "--timeout", "3600", "--count-file", str(count_file)]
    for h in range(hosts):
        if role[h] == "dead":
            continue
        a = f"{host_addr(h)}:{PORT}"
        args += ["--listen", a]
        if role[h] == "slow":
            args += ["--slow", f"{a}={slow_ms}"]
        if role[h] == "throttle":
            args += ["--throttle", a]
    proc = subprocess.Popen(["taskset", "-c", "1"] + args, stdout=open(work / "sink.out", "w"),
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 20
    while time.time() < deadline:
        if count_file.exists():
            return proc
        if "listening" in (work / "sink.out").read_text():
            return proc
        time.sleep(0.05)
    sys.exit("sink did not start")


def read_count(path):
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


class Ringpost:
    def __init__(self, work):
        self.work = work
        self.port = free_port()
        self.admin = free_port()
        self.config = work / "ringpost.toml"
        self.write(hold=True)
        self.proc = subprocess.Popen(["taskset", "-c", "0", str(BIN), "serve", "--config", str(self.config)],
                                     stdout=open(work / "ringpost.out", "w"), stderr=open(work / "ringpost.err", "w"))
        wait_port(self.port, self.proc, "ringpost")

    def write(self, hold):
        self.config.write_text(ringpost_config("mx.bench.test", 1, self.admin, self.port, self.work / "spool") + f"""[limits]
connections = 10000
[delivery]
hold = {"true" if hold else "false"}
port = {PORT}
dns_servers = ["127.0.0.1:{DNS_PORT}"]
retry = ["1h"]
connect_timeout = "5s"
starttls = false
""")

    def release(self):
        self.write(hold=False)
        self.proc.send_signal(signal.SIGHUP)

    def metrics(self):
        out = {}
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                parts = line.split()
                if len(parts) == 2 and not line.startswith("#"):
                    try:
                        out[parts[0]] = float(parts[1])
                    except ValueError:
                        pass
        return out

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def run_scenario(args, scenario, base):
    work = Path(tempfile.mkdtemp(prefix=f"ringpost-domains-{scenario}.", dir=base))
    role = roles(args.hosts, scenario)
    if scenario == "single":
        healthy = args.messages
        slow_expected = 0
    else:
        per_host = [0] * args.hosts
        for n in range(args.messages):
            per_host[(n % args.domains) % args.hosts] += 1
        healthy = sum(c for h, c in enumerate(per_host) if role[h] == "ok")
        slow_expected = sum(c for h, c in enumerate(per_host) if role[h] == "slow")
    count_file = work / "count"
    sink = start_sink(work, args.hosts, role, args.slow_ms, count_file)
    rp = Ringpost(work)
    try:
        to = ["--to", "sink@d0.bench.test"] if scenario == "single" else \
            ["--to", "sink@bench.test", "--domains", str(args.domains)]
        t = time.time()
        blast = subprocess.run(["taskset", "-c", "1", str(BENCH), "blast", "--target", f"127.0.0.1:{rp.port}",
                                "--messages", str(args.messages), "--connections", "50", "--size", "1024",
                                "--pipelining", "--timeout", "600"] + to, capture_output=True, text=True)
        if blast.returncode != 0:
            sys.exit(f"blast failed: {blast.stderr}")
        accept_s = time.time() - t
        before = rp.metrics()
        perf = None
        if args.perf:
            data = Path(args.perf) / f"perf-{scenario}.data"
            perf = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-p", str(rp.proc.pid), "-o", str(data)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        cpu0 = (cpu_s(rp.proc.pid), cpu_s(sink.pid))
        t0 = time.time()
        rp.release()
        deadline = t0 + args.timeout
        done = None
        while time.time() < deadline:
            if read_count(count_file) >= healthy:
                done = time.time()
                break
            time.sleep(0.01)
        cpu1 = (cpu_s(rp.proc.pid), cpu_s(sink.pid))
        after = rp.metrics()
        got = read_count(count_file)
        if perf:
            perf.send_signal(signal.SIGINT)
            perf.wait()
        elapsed = (done or time.time()) - t0
        sink_json = {}
        result = {
            "scenario": scenario, "messages": args.messages, "healthy_messages": healthy,
            "delivered_healthy": got, "complete": done is not None, "seconds": round(elapsed, 3),
            "healthy_rate": round(got / elapsed, 1) if elapsed > 0 else 0, "accept_s": round(accept_s, 2),
            "slow_messages": slow_expected,
            "hosts": {k: sum(1 for v in role.values() if v == k) for k in ("ok", "slow", "throttle", "dead")},
            "rss_kib": rss_kib(rp.proc.pid),
            # Share of one CPU each used while delivering: which side is the
            # bottleneck.
            "ringpost_cpu": round((cpu1[0] - cpu0[0]) / elapsed, 2) if elapsed > 0 else 0,
            "sink_cpu": round((cpu1[1] - cpu0[1]) / elapsed, 2) if elapsed > 0 else 0,
        }
        # DNS: the whole run (a held message is planned, and its MX looked
        # up, while it is being accepted); outcomes: after the release.
        for k in ("ringpost_dns_cache_hits_total", "ringpost_dns_cache_misses_total",
                  "ringpost_dns_cache_coalesced_total", "ringpost_dns_cache_stale_total"):
            result[k.replace("ringpost_", "").replace("_total", "")] = after.get(k, 0)
        for k in ("ringpost_delivered_total", "ringpost_deferred_total"):
            result[k.replace("ringpost_", "").replace("_total", "")] = after.get(k, 0) - before.get(k, 0)
        return result, sink_json
    finally:
        rp.stop()
        sink.kill()
        sink.wait()
        shutil.rmtree(work, ignore_errors=True)


def cpu_s(pid):
    """User + system CPU seconds of a process so far."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def rss_kib(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=200000)
    ap.add_argument("--domains", type=int, default=10000)
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--slow-ms", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ttl", type=int, default=3600, help="TTL of every DNS answer (seconds)")
    ap.add_argument("--timeout", type=int, default=600, help="longest wait for one scenario's delivery")
    ap.add_argument("--scenarios", default="single,many,slow,hostile")
    ap.add_argument("--out", default=None)
    ap.add_argument("--perf", default=None, help="a directory: perf record ringpost during each delivery phase")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (dnsmasq, many loopback addresses)")
    # Always (a no-op when up to date): a stale binary would be measured
    # under this checkout's commit.
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "ringpost", "-p", "ringpost-bench"],
                   cwd=ROOT, check=True)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    out = Path(args.out) if args.out else ROOT / f"tuning/results/{date}-domains.md"
    base = Path(tempfile.mkdtemp(prefix="ringpost-domains."))
    dns = start_dns(base, args.domains, args.hosts, args.ttl)
    results = []
    try:
        # Interleaved: every scenario once per round.
        for r in range(args.rounds):
            for sc in args.scenarios.split(","):
                res, _ = run_scenario(args, sc, base)
                res["round"] = r
                results.append(res)
                print(json.dumps(res), flush=True)
    finally:
        dns.kill()
        dns.wait()
        shutil.rmtree(base, ignore_errors=True)
    raw = out.with_suffix(".json")
    raw.write_text(json.dumps({"args": vars(args), "results": results}, indent=1) + "\n")
    write_report(out, args, results)
    print(out.read_text())


def write_report(out, args, results):
    med = {}
    for sc in args.scenarios.split(","):
        rates = [r["healthy_rate"] for r in results if r["scenario"] == sc]
        med[sc] = statistics.median(rates) if rates else 0
    lines = [
        f"# Many destinations ({datetime.date.today()})",
        "",
        f"- machine: {machine()}",
        f"- commit: {commit()}",
        f"- command: `bench/domains.py --messages {args.messages} --domains {args.domains} --hosts {args.hosts} "
        f"--slow-ms {args.slow_ms} --rounds {args.rounds} --ttl {args.ttl}`",
        "- setup: ringpost (1 worker on CPU 0, fsync on, default delivery settings: 20 connections and 100 "
        "messages per connection per destination) loaded by `ringpost-bench blast` (50 connections, 1 KiB) "
        "while holding, then released; dnsmasq and one `ringpost-bench sink` process (listening on every "
        "healthy, slow and throttling host's address) on CPU 1. A rate is the messages the healthy receivers "
        "got divided by the seconds from the release until they had all of theirs. Scenarios ran interleaved, "
        "one of each per round; figures are medians over rounds.",
        "",
        "| scenario | hosts ok/slow/421/dead | healthy messages | median rate (msg/s) | rates per round | CPU ringpost / sink (median) | DNS hits / misses / coalesced / stale (whole run, last round) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for sc in args.scenarios.split(","):
        rs = [r for r in results if r["scenario"] == sc]
        if not rs:
            continue
        last = rs[-1]
        h = last["hosts"]
        hosts = "1 (d0's)" if sc == "single" else f"{h['ok']}/{h['slow']}/{h['throttle']}/{h['dead']}"
        lines.append(
            f"| {sc} | {hosts} | {last['healthy_messages']} | {med[sc]:.0f} | "
            f"{', '.join(str(round(r['healthy_rate'])) + ('' if r['complete'] else ' (incomplete)') for r in rs)} | "
            f"{statistics.median(r['ringpost_cpu'] for r in rs):.2f} / {statistics.median(r['sink_cpu'] for r in rs):.2f} | "
            f"{last['dns_cache_hits']:.0f} / {last['dns_cache_misses']:.0f} / {last['dns_cache_coalesced']:.0f} / "
            f"{last['dns_cache_stale']:.0f} |")
    lines += ["", "| target | ratio | holds |", "| --- | --- | --- |"]

    def target(name, num, den, lo, hi=None):
        if med.get(num) and med.get(den):
            ratio = med[num] / med[den]
            ok = ratio >= lo and (hi is None or ratio <= hi)
            lines.append(f"| {name} | {ratio:.3f} | {'yes' if ok else 'NO'} |")

    target("10,000 domains vs one (>= 0.9)", "many", "single", 0.9)
    target("healthy rate with 10% slow hosts vs none (within 10%)", "slow", "many", 0.9, 1.1)
    target("healthy rate with 10% slow, 5% throttling, 5% dead vs none (within 10%)", "hostile", "many", 0.9, 1.1)
    lines += ["", f"Raw results: `{out.with_suffix('.json').name}`."]
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
