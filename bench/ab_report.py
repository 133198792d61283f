#!/usr/bin/env python3
"""The report of one bench/ab.sh run, written from its raw output alone.

usage: bench/ab_report.py RAW_DIR > tuning/results/<date>-ab.md
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import cell_table, facts  # noqa: E402


def main():
    raw = sys.argv[1]
    m, run = facts(raw, "machine.txt"), facts(raw, "run.txt")
    print(f"# A/B of two ringpost binaries ({run['date']})")
    print()
    print(f"- machine: {m['cpus']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, {m['kernel']}, spool on {m['spool_fs']}")
    print(f"- checkout: {m['commit']}")
    print(f"- a: {run['a']}")
    print(f"- b: {run['b']}")
    for side in ("a", "b"):
        extra = run.get(f"{side}_extra", "none").strip()
        if extra and extra != "none":
            print(f"- {side} configured with: `{extra}`")
    print("- each: one worker on CPU 0, fsync on, relaying to one sink; load and sink on the other CPUs;"
          f" ringpost-bench compare, {run['rounds']} interleaved rounds (each round starts with the other side), medians; msg/s counts accepted messages")
    print(f"- command: {run['command']}")
    print()
    for per in (100, 1):
        path = os.path.join(raw, f"1024B-50c-{per}pc.json")
        print(f"## 1 KiB, 50 connections, {per} message(s) per connection ({run['messages']} messages)")
        print()
        print(cell_table(json.load(open(path))) if os.path.exists(path) else "not measured")
        print()


if __name__ == "__main__":
    main()
