#!/usr/bin/env python3
"""Power cuts under load (issue 15, part 3).

The spool lives on `ringpost-bench lazyfs`, a FUSE filesystem that keeps
written-but-unsynced data and namespace operations in memory (a name is
durable only once its directory is fsynced). Each round: mount it, start
ringpost on it, load it over SMTP (Python smtplib, several connections,
some messages with three recipients) while it delivers into local Maildirs
(on the real disk), and at a random moment cut the power: ringpost gets SIGKILL and the filesystem
drops what was not synced (`drop`) or keeps a random part of it (`partial`:
some pages inside each file's synced size, a prefix of the namespace
journal), fails every later request. The next round restarts on what remains. At the end ringpost runs once more
with no load until its queue is empty, and every Maildir file is read.

Checks: every (message, recipient) that got `250` was delivered (0 lost);
Maildir files of the same one more than once are duplicates (target <=
0.1%); messages that got no `250` may or may not arrive. Local delivery
names each file by queue id and recipient, so a delivery repeated after a
cut (done before it, not yet recorded in the spool) finds its copy and
writes no second one: `repeated_deliveries` (from
ringpost_local_already_delivered_total, scraped before each cut) counts
those, which a remote next hop would have received twice. Loopback only.

usage: bench/powercut.py [--cuts 20] [--min-acked 10000] [--seed N]
                         [--mode mixed|drop|partial] [--out FILE]
Writes a report (Markdown) to --out, default
tuning/results/<date>-powercut.md, and the raw log beside it.
"""

import argparse
import datetime
import json
import os
import random
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from benchlib import commit, free_port, machine, ringpost_config

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target/release/ringpost"
BENCH = ROOT / "target/release/ringpost-bench"
DOMAIN = "local.test"
USERS = 20



def control(path, command, timeout=10):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(str(path))
    s.sendall(command.encode() + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    return data.decode().strip()


class Lazyfs:
    def __init__(self, work, seed, log):
        self.backing = work / "backing"
        self.mount = work / "mnt"
        self.ctl = work / "lazyfs.sock"
        self.backing.mkdir(exist_ok=True)
        self.mount.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [str(BENCH), "lazyfs", "--backing", str(self.backing), "--mount", str(self.mount),
             "--control", str(self.ctl), "--seed", str(seed)],
            stdout=log, stderr=log)
        deadline = time.time() + 10
        while time.time() < deadline:
            if os.path.ismount(self.mount) and self.ctl.exists():
                return
            if self.proc.poll() is not None:
                sys.exit(f"lazyfs exited ({self.proc.returncode}); see the raw log")
            time.sleep(0.05)
        sys.exit("lazyfs did not mount")

    def cut(self, mode):
        return control(self.ctl, f"cut {mode}")

    def stop(self):
        try:
            control(self.ctl, "exit")
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if os.path.ismount(self.mount):
            subprocess.run(["umount", "-l", str(self.mount)], check=False)


class Ringpost:
    def __init__(self, work, spool, log, fsync=True):
        self.port = free_port()
        self.admin = free_port()
        config = work / "ringpost.toml"
        config.write_text(ringpost_config("mx.test", 2, self.admin, self.port, spool) + f"""segment_size = 1048576
fsync = {"true" if fsync else "false"}
[relay]
local_domains = ["{DOMAIN}"]
[local]
mail_dir = "{work / 'mail'}"
[delivery]
dns_servers = ["127.0.0.1:9"]
retry = ["1s"]
""")
        self.proc = subprocess.Popen([str(BIN), "serve", "--config", str(config)], stdout=log, stderr=log)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"ringpost exited ({self.proc.returncode}) at start; see the raw log")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(100).startswith(b"220"):
                        return
            except OSError:
                time.sleep(0.05)
        sys.exit("ringpost did not start")

    def metric(self, name):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == name:
                    return float(parts[1])
        return None

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


class Load:
    """Client threads sending until stopped; `acked` holds (token, rcpts)."""

    def __init__(self, port, round_no, threads):
        self.port = port
        self.round = round_no
        self.stop_flag = threading.Event()
        self.acked = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]
        for t in self.threads:
            t.start()

    def run(self, tid):
        n = 0
        rnd = random.Random(f"{self.round}-{tid}")
        while not self.stop_flag.is_set():
            try:
                smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=10)
                smtp.ehlo("load.test")
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)
                continue
            try:
                while not self.stop_flag.is_set():
                    n += 1
                    token = f"r{self.round}-t{tid}-{n}"
                    count = 3 if n % 10 == 0 else 1
                    rcpts = sorted({f"user{rnd.randrange(USERS)}@{DOMAIN}" for _ in range(count)})
                    body = (f"From: load@load.test\r\nTo: {', '.join(rcpts)}\r\nSubject: {token}\r\n"
                            f"X-Token: {token}\r\n\r\n" + ("x" * 70 + "\r\n") * 13)
                    smtp.sendmail("load@load.test", rcpts, body)
                    with self.lock:
                        self.acked.append((token, tuple(rcpts)))
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)
            finally:
                try:
                    smtp.close()
                except OSError:
                    pass

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(20)


def delivered(mail):
    """(token, rcpt) -> number of Maildir files."""
    seen = {}
    base = mail / DOMAIN
    if not base.exists():
        return seen
    for user in base.iterdir():
        rcpt = f"{user.name}@{DOMAIN}"
        for sub in ("new", "cur"):
            d = user / sub
            if not d.exists():
                continue
            for f in d.iterdir():
                token = None
                with open(f, "rb") as fh:
                    for line in fh:
                        if line.startswith(b"X-Token: "):
                            token = line[9:].strip().decode()
                            break
                        if line in (b"\r\n", b"\n"):
                            break
                key = (token, rcpt)
                seen[key] = seen.get(key, 0) + 1
    return seen


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cuts", type=int, default=20)
    ap.add_argument("--min-acked", type=int, default=10000,
                    help="keep cutting (past --cuts) until this many messages were acknowledged")
    ap.add_argument("--max-cuts", type=int, default=200)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--mode", choices=["mixed", "drop", "partial"], default="mixed")
    ap.add_argument("--threads", type=int, default=8, help="client connections")
    ap.add_argument("--out", default=None)
    ap.add_argument("--max-duplicate-rate", type=float, default=0.001)
    ap.add_argument("--fsync", choices=["true", "false"], default="true",
                    help="false: a control run that should lose mail (the harness can see loss)")
    ap.add_argument("--ringpost", default=None, help="the server binary (default: a release build)")
    ap.add_argument("--bench", default=None, help="the ringpost-bench binary (default: a release build)")
    args = ap.parse_args()
    global BIN, BENCH
    if args.ringpost:
        BIN = Path(args.ringpost)
    if args.bench:
        BENCH = Path(args.bench)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    out = Path(args.out) if args.out else ROOT / f"tuning/results/{date}-powercut.md"
    raw = out.with_suffix(".log")
    # Always (a no-op when up to date): a stale binary would be measured
    # under this checkout's commit.
    if not (args.ringpost or args.bench):
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "ringpost", "-p", "ringpost-bench"],
                       cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="ringpost-powercut."))
    log = open(raw, "w")
    print(f"powercut: seed {seed}, work {work}, log {raw}", flush=True)
    rounds = []
    acked = []
    repeated = 0
    lazy = None
    rp = None
    try:
        i = 0
        while i < args.cuts or (len(acked) < args.min_acked and i < args.max_cuts):
            mode = args.mode if args.mode != "mixed" else rng.choice(["drop", "partial"])
            log.write(f"--- round {i}: mode {mode}\n")
            log.flush()
            lazy = Lazyfs(work, rng.randrange(2**32), log)
            t0 = time.time()
            rp = Ringpost(work, lazy.mount / "spool", log, args.fsync == "true")
            start_s = time.time() - t0
            load = Load(rp.port, i, args.threads)
            run_s = rng.uniform(0.5, 3.0)
            time.sleep(run_s)
            try:
                found = rp.metric("ringpost_local_already_delivered_total") or 0
                overlapped = int(rp.metric("ringpost_spool_commits_overlapped_total") or 0)
                commits = int(rp.metric("ringpost_spool_commits_total") or 0)
            except OSError:
                found, overlapped, commits = 0, 0, 0
            repeated += found
            # The machine stops at once: ringpost first (nothing it does after
            # this instant reaches any disk, the Maildirs included), then
            # the spool's disk loses what was not synced.
            rp.kill()
            report = lazy.cut(mode)
            load.stop()
            lazy.stop()
            rp = lazy = None
            acked.extend(load.acked)
            rounds.append({"round": i, "mode": mode, "start_s": round(start_s, 2), "load_s": round(run_s, 2),
                           "acked": len(load.acked), "commits": f"{commits} ({overlapped} overlapped)",
                           "cut": report})
            print(f"round {i}: {mode}, restart {start_s:.2f} s, {len(load.acked)} acked in {run_s:.2f} s; {report}",
                  flush=True)
            i += 1
        # The machine comes back once more: deliver everything.
        lazy = Lazyfs(work, rng.randrange(2**32), log)
        rp = Ringpost(work, lazy.mount / "spool", log)
        deadline = time.time() + 600
        while time.time() < deadline:
            if rp.metric("ringpost_queue_messages") == 0:
                break
            time.sleep(0.5)
        queue_left = rp.metric("ringpost_queue_messages")
        repeated += rp.metric("ringpost_local_already_delivered_total") or 0
        corrupt = rp.metric("ringpost_spool_recovery_corrupt_total")
        undecodable = rp.metric("ringpost_spool_recovery_undecodable_total")
        rp.kill()
        lazy.stop()
        rp = lazy = None
    finally:
        if rp:
            rp.kill()
        if lazy:
            lazy.stop()
    seen = delivered(work / "mail")
    want = {}
    for token, rcpts in acked:
        for r in rcpts:
            want[(token, r)] = want.get((token, r), 0) + 1
    lost = sorted(k for k in want if k not in seen)
    dups = sum(c - 1 for k, c in seen.items() if k in want and c > 1)
    extra = sum(1 for k in seen if k not in want)
    pairs = len(want)
    result = {
        "seed": seed, "cuts": len(rounds), "acked_messages": len(acked), "acked_deliveries": pairs,
        "lost": len(lost), "duplicates": dups, "duplicate_rate": dups / pairs if pairs else 0,
        "duplicates_per_cut": round(dups / len(rounds), 1) if rounds else 0,
        "repeated_deliveries": int(repeated), "unacked_delivered": extra, "queue_left": queue_left,
        "recovery_corrupt_total_last_start": corrupt, "recovery_undecodable_total_last_start": undecodable,
    }
    print(json.dumps(result), flush=True)
    if lost:
        print("lost (first 20):", lost[:20], flush=True)
    write_report(out, args, result, rounds, lost)
    shutil.rmtree(work, ignore_errors=True)
    ok = not lost and queue_left == 0 and result["duplicate_rate"] <= args.max_duplicate_rate
    sys.exit(0 if ok else 1)


def write_report(out, args, result, rounds, lost):
    lines = [
        f"# Power cuts under load ({datetime.date.today()})",
        "",
        f"- machine: {machine()}; backing directory on "
        f"{subprocess.run(['df', '-T', '/tmp'], capture_output=True, text=True).stdout.split()[9]}",
        f"- commit: {commit()}",
        f"- command: `bench/powercut.py --cuts {args.cuts} --min-acked {args.min_acked} --mode {args.mode} "
        f"--seed {result['seed']}{' --fsync false' if args.fsync == 'false' else ''}`",
        f"- setup: ringpost (2 workers, {'fsync on' if args.fsync == 'true' else 'fsync OFF (the control run)'}, 1 MiB segments) with its spool on `ringpost-bench lazyfs`; "
        f"{args.threads} smtplib connections; local delivery into Maildirs on the real disk; "
        "each round runs 0.5-3 s of load, then the power is cut (`drop`: every unsynced write and name "
        "operation is lost; `partial`: a random part of them reached the disk), at the instant ringpost gets SIGKILL.",
        "",
        "| result | value |",
        "| --- | --- |",
    ]
    for k, v in result.items():
        lines.append(f"| {k} | {v} |")
    lines += ["", "| round | mode | restart s | load s | acked | spool commits before the cut | what the cut did |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rounds:
        lines.append(f"| {r['round']} | {r['mode']} | {r['start_s']} | {r['load_s']} | {r['acked']} | "
                     f"{r.get('commits', '')} | {r['cut']} |")
    if lost:
        lines += ["", "Lost (first 50): " + ", ".join(f"{t} {r}" for t, r in lost[:50])]
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
