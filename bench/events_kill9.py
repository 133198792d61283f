#!/usr/bin/env python3
"""Delivery events survive kill -9 (at least once): ringpost (events file on,
fsync on, relaying to ringpost-bench sink) takes mail from sender threads
while it delivers; it is killed with SIGKILL mid-flow, restarted on the same
spool, again, ROUNDS times; then it runs until its queue is empty and stops.
Every message the senders saw acknowledged (its queue id in the 250) must
have a Delivery event in the events file. Loopback only; bounded in rounds
and time.

usage: bench/events_kill9.py [--rounds N] [--threads T] [--out FILE]
                            [--ringpost BIN --bench BIN]   (else release builds)
"""
import argparse
import json
import random
import re
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from benchlib import ROOT, commit, free_port, machine, ringpost_config

BIN = ROOT / "target/release/ringpost"
BENCH = ROOT / "target/release/ringpost-bench"


def start(work, admin_port, smtp_port, sink_port):
    cfg = ringpost_config("events-kill9.test", 1, admin_port, smtp_port, work / "spool")
    cfg += f'fsync = true\n[events]\nfile = "{work}/events.jsonl"\n'
    cfg += f'[[route]]\ndomain = "*"\nto = ["127.0.0.1:{sink_port}"]\n[delivery]\ndns_servers = ["127.0.0.1:9"]\n'
    (work / "ringpost.toml").write_text(cfg)
    p = subprocess.Popen([BIN, "serve", "--config", work / "ringpost.toml"], stdout=subprocess.DEVNULL,
                         stderr=open(work / "ringpost.err", "ab"))
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/health", timeout=1)
            return p
        except OSError:
            time.sleep(0.05)
    p.kill()
    sys.exit("ringpost did not start")


def queued(admin_port):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/queue", timeout=5) as r:
        return json.load(r)["messages"]


def sender(port, stop, acked, lock):
    """Sends 1 KiB messages on one connection after another until `stop`;
    records the queue id of every 250 to DATA."""
    body = "Subject: k\r\n\r\n" + ("x" * 1000) + "\r\n"
    while not stop.is_set():
        try:
            s = smtplib.SMTP("127.0.0.1", port, timeout=5)
            s.ehlo("sender.test")
            for _ in range(50):
                if stop.is_set():
                    break
                s.mail("s@sender.test")
                s.rcpt("r@a.test")
                code, text = s.data(body)
                m = re.search(rb"queued as ([0-9A-Za-z]+)", text)
                if code == 250 and m:
                    with lock:
                        acked.add(m.group(1).decode())
            s.quit()
        except (OSError, smtplib.SMTPException):
            time.sleep(0.05)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--out")
    ap.add_argument("--ringpost", help="the server binary (default: a release build made now)")
    ap.add_argument("--bench", help="the ringpost-bench binary (default: a release build made now)")
    args = ap.parse_args()
    global BIN, BENCH
    if args.ringpost and args.bench:
        BIN, BENCH = Path(args.ringpost), Path(args.bench)
    else:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "ringpost", "-p", "ringpost-bench"], cwd=ROOT,
                       check=True)
    work = Path(tempfile.mkdtemp(prefix="ringpost-events-kill9."))
    admin_port, smtp_port, sink_port = free_port(), free_port(), free_port()
    sink = subprocess.Popen([BENCH, "sink", "--listen", f"127.0.0.1:{sink_port}", "--timeout", "3600",
                             "--count-file", work / "sink.count"], stdout=subprocess.DEVNULL)
    acked, lock = set(), threading.Lock()
    rng = random.Random(12)
    try:
        for r in range(args.rounds):
            p = start(work, admin_port, smtp_port, sink_port)
            stop = threading.Event()
            threads = [threading.Thread(target=sender, args=(smtp_port, stop, acked, lock))
                       for _ in range(args.threads)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(1.0, 3.0))
            p.send_signal(signal.SIGKILL)
            p.wait()
            stop.set()
            for t in threads:
                t.join()
            print(f"round {r + 1}: killed; {len(acked)} acknowledged so far", flush=True)
        p = start(work, admin_port, smtp_port, sink_port)
        deadline = time.time() + 120
        while queued(admin_port) > 0 and time.time() < deadline:
            time.sleep(0.2)
        left = queued(admin_port)
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
    finally:
        sink.kill()
    delivered, events = set(), 0
    with open(work / "events.jsonl", "rb") as f:
        for line in f:
            try:
                e = json.loads(line)
            except ValueError:
                continue  # a line torn by a kill
            events += 1
            if e.get("type") == "Delivery":
                delivered.add(e.get("id"))
    missing = sorted(acked - delivered)
    report = (f"# Delivery events across kill -9\n\n- machine: {machine()}\n- commit: {commit()}\n"
              f"- command: bench/events_kill9.py --rounds {args.rounds} --threads {args.threads}\n\n"
              f"{args.rounds} kills; {len(acked)} messages acknowledged; {events} event lines; "
              f"{len(delivered)} messages with a Delivery event; queue left: {left}; "
              f"acknowledged without a Delivery event: {len(missing)}\n")
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return 1 if missing or left else 0


if __name__ == "__main__":
    sys.exit(main())
