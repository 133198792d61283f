#!/usr/bin/env python3
"""Checks the performance targets against the raw output of one
bench/compare.sh run.

usage: bench/targets.py RAW_DIR
Reads what compare.sh saved in RAW_DIR (compare JSON per cell, the half-peak
blast JSONs before and after the 100 KiB cells, the load-generator agreement
runs, the connections output) and prints a Markdown table: each target, the
measured value, and whether it holds. Exits 1 if a target does not hold or
its measurement is missing. bench/report.py shows the same table.

Every cell of the matrix has thresholds. 1 KiB: ringpost accepts (and
delivers end to end) at least 10x what Postfix does and at least half of what
smtp-sink takes (which stores nothing). 100 KiB: both MTAs are bound by bytes
(the disk's write rate at 50 connections; at 1,000 connections ringpost by
the CPU it spends copying each message into its batch and reading it back for
delivery, ~370 us a message), so the ratios are lower: at least 5x Postfix at
50 connections and 3x at 1,000, and at least half (50 connections) or 0.4x
(1,000) of smtp-sink; each is about two thirds of what was measured at
531f178. The half-peak latency is measured right after the 1 KiB cells and
again after the 100 KiB ones (a disk still busy with gigabytes written and
deleted); the target holds only if both hold.
"""
import json
import os
import re
import sys

SIZES = {1024: "1 KiB", 102400: "100 KiB"}
CONNECTIONS = (50, 1000)
PER = {1: "a new connection per message", 100: "100 messages per connection"}


def thresholds(size, conns):
    """(at least x Postfix, at least x smtp-sink) for one cell."""
    if size == 1024:
        return 10.0, 0.5
    return (5.0, 0.5) if conns == 50 else (3.0, 0.4)


def load(raw, name):
    path = os.path.join(raw, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def by_name(cell):
    return {t["name"]: t for t in cell["targets"]} if cell else {}


def evaluate(raw):
    """[(target, measured, holds)] for every target."""
    rows = []

    def check(target, value, ok):
        rows.append((target, value, ok))

    for size, size_label in SIZES.items():
        for conns in CONNECTIONS:
            for per, per_label in PER.items():
                label = f"{size_label}, {conns:,} connections, {per_label}"
                t = by_name(load(raw, f"{size}B-{conns}c-{per}pc.json"))
                rp, pf, ss = t.get("ringpost"), t.get("postfix"), t.get("smtp-sink")
                x_pf, x_ss = thresholds(size, conns)
                if not (rp and pf and ss):
                    check(f"{label}: accept", "not measured", False)
                    continue
                ratio = rp["rate_median"] / max(pf["rate_median"], 1e-9)
                check(f"{label}: accept at least {x_pf:g}x Postfix",
                      f"{rp['rate_median']:.0f} vs {pf['rate_median']:.0f} msg/s: {ratio:.1f}x", ratio >= x_pf)
                sink = rp["rate_median"] / max(ss["rate_median"], 1e-9)
                check(f"{label}: at least {x_ss:g}x smtp-sink",
                      f"{rp['rate_median']:.0f} vs {ss['rate_median']:.0f} msg/s: {sink:.2f}x", sink >= x_ss)
                e_rp, e_pf = rp.get("end_to_end_rate_median"), pf.get("end_to_end_rate_median")
                if e_rp and e_pf:
                    ratio = e_rp / e_pf
                    check(f"{label}: end to end at least {x_pf:g}x Postfix",
                          f"{e_rp:.0f} vs {e_pf:.0f} msg/s: {ratio:.1f}x", ratio >= x_pf)
                else:
                    check(f"{label}: end to end", "not measured", False)

    for when in ("before-100k", "after-100k"):
        half = load(raw, f"halfpeak-{when}-ringpost.json")
        name = f"p99 end of DATA to 250 at half the peak rate under 5 ms ({when.replace('-', ' the ')} cells)"
        if half:
            p99 = half["data_to_250_us"]["p99"]
            check(name, f"{p99 / 1000:.2f} ms at {half['rate']:.0f} msg/s", p99 < 5000)
        else:
            check(name, "not measured", False)

    agree = agreement(raw)
    if agree:
        blast, source = agree
        diff = abs(blast - source) / max(min(blast, source), 1e-9)
        check("ringpost-bench and smtp-source agree within 30% on ringpost's rate",
              f"{blast:.0f} vs {source:.0f} msg/s: {diff * 100:.0f}% apart", diff <= 0.30)
    else:
        check("ringpost-bench and smtp-source agree", "not measured", False)

    conns = os.path.join(raw, "connections.txt")
    text = open(conns).read() if os.path.exists(conns) else ""
    m = re.search(r"sessions open at once: (\d+) of (\d+)", text)
    b = re.search(r"RSS: .*: (\d+) bytes per connection", text)
    if m and b:
        check("10,000 concurrent connections held by one process, memory per connection written down",
              f"{m.group(1)} of {m.group(2)} open; {int(b.group(1)):,} bytes per connection",
              m.group(1) == m.group(2) and int(m.group(2)) >= 10000)
    else:
        check("10,000 concurrent connections", "not measured", False)
    return rows


def agreement_runs(raw):
    """Rates (msg/s) of each load generator's runs: what ringpost accepted
    (blast's count; for smtp-source, ringpost's own counter) over the time."""
    blast, source = [], []
    i = 1
    while os.path.exists(os.path.join(raw, f"agree-blast-{i}.json")):
        blast.append(load(raw, f"agree-blast-{i}.json")["rate"])
        with open(os.path.join(raw, f"agree-source-{i}.txt")) as f:
            fields = dict(line.split(": ", 1) for line in f.read().splitlines())
        source.append(int(fields["accepted"]) / float(fields["elapsed_s"]))
        i += 1
    return blast, source


def median(v):
    v = sorted(v)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def agreement(raw):
    blast, source = agreement_runs(raw)
    return (median(blast), median(source)) if blast and source else None


def table(rows):
    out = ["| target | measured | result |", "| --- | --- | --- |"]
    out += [f"| {t} | {v} | {'holds' if ok else 'DOES NOT HOLD'} |" for t, v, ok in rows]
    return "\n".join(out)


if __name__ == "__main__":
    rows = evaluate(sys.argv[1])
    print(table(rows))
    sys.exit(0 if all(ok for _, _, ok in rows) else 1)
