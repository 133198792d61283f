#!/usr/bin/env python3
"""Checks the performance targets against one bench/compare.sh run.

usage: bench/targets.py WORK_DIR
Reads what compare.sh left in WORK_DIR (compare JSON per cell, the half-peak
blast JSON, the load-generator agreement figures, the connections output) and
prints a Markdown table: each target, the measured value, and whether it holds.
Exits 1 if a target does not hold or its measurement is missing.
"""
import json
import os
import re
import sys


def load(work, name):
    path = os.path.join(work, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def by_name(cell):
    return {t["name"]: t for t in cell["targets"]} if cell else {}


def main():
    work = sys.argv[1]
    rows = []

    def check(target, value, ok):
        rows.append((target, value, "holds" if ok else "DOES NOT HOLD"))

    for per, label in (("1", "a new connection per message"), ("100", "100 messages per connection")):
        t = by_name(load(work, f"1024B-50c-{per}pc.json"))
        rp, pf, ss = t.get("ringpost"), t.get("postfix"), t.get("smtp-sink")
        if not (rp and pf and ss):
            check(f"1 KiB, 50 connections, {label}: accept", "not measured", False)
            continue
        ratio = rp["rate_median"] / max(pf["rate_median"], 1e-9)
        check(f"1 KiB, 50 connections, {label}: accept at least 10x Postfix",
              f"{rp['rate_median']:.0f} vs {pf['rate_median']:.0f} msg/s: {ratio:.1f}x", ratio >= 10)
        sink = rp["rate_median"] / max(ss["rate_median"], 1e-9)
        check(f"1 KiB, 50 connections, {label}: at least half of smtp-sink",
              f"{rp['rate_median']:.0f} vs {ss['rate_median']:.0f} msg/s: {sink:.2f}x", sink >= 0.5)
        e_rp, e_pf = rp.get("end_to_end_rate_median"), pf.get("end_to_end_rate_median")
        if e_rp and e_pf:
            ratio = e_rp / e_pf
            check(f"1 KiB, 50 connections, {label}: end to end at least 10x Postfix",
                  f"{e_rp:.0f} vs {e_pf:.0f} msg/s: {ratio:.1f}x", ratio >= 10)
        else:
            check(f"1 KiB, 50 connections, {label}: end to end", "not measured", False)

    half = load(work, "halfpeak-ringpost.json")
    if half:
        p99 = half["data_to_250_us"]["p99"]
        check("p99 end of DATA to 250 at half the peak rate under 5 ms",
              f"{p99 / 1000:.2f} ms at {half['rate']:.0f} msg/s", p99 < 5000)
    else:
        check("p99 end of DATA to 250 at half the peak rate", "not measured", False)

    agree = os.path.join(work, "agree.txt")
    if os.path.exists(agree):
        with open(agree) as f:
            blast, source = (float(x) for x in f.read().split())
        diff = abs(blast - source) / max(min(blast, source), 1e-9)
        check("ringpost-bench and smtp-source agree within 30% on ringpost's rate",
              f"{blast:.0f} vs {source:.0f} msg/s: {diff * 100:.0f}% apart", diff <= 0.30)
    else:
        check("ringpost-bench and smtp-source agree", "not measured", False)

    conns = os.path.join(work, "connections.txt")
    text = open(conns).read() if os.path.exists(conns) else ""
    m = re.search(r"sessions open at once: (\d+) of (\d+)", text)
    b = re.search(r"RSS: .*: (\d+) bytes per connection", text)
    if m and b:
        check("10,000 concurrent connections held by one process, memory per connection written down",
              f"{m.group(1)} of {m.group(2)} open; {int(b.group(1)):,} bytes per connection",
              m.group(1) == m.group(2) and int(m.group(2)) >= 10000)
    else:
        check("10,000 concurrent connections", "not measured", False)

    print("| target | measured | result |")
    print("| --- | --- | --- |")
    for target, value, result in rows:
        print(f"| {target} | {value} | {result} |")
    return 0 if all(r[2] == "holds" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
