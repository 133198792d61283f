#!/usr/bin/env python3
"""Writes the Markdown report of one bench/compare.sh run from its raw
output, and nothing else: every figure comes from a file in RAW_DIR, so the
report can be made again (and checked) from what the run saved.

usage: bench/report.py RAW_DIR > tuning/results/<date>.md
Exits 1 if a performance target does not hold (see bench/targets.py).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import targets  # noqa: E402
from histogram import bounds  # noqa: E402


def facts(raw, name):
    with open(os.path.join(raw, name)) as f:
        return dict(line.rstrip("\n").split(": ", 1) for line in f if ": " in line)


def cell_table(cell):
    """The medians of one matrix cell; ratios against the first target."""
    rows = cell["targets"]
    base = max(rows[0]["rate_median"], 1e-9)
    e2e_base = max(rows[0].get("end_to_end_rate_median") or 0, 1e-9)
    out = [f"| target | msg/s (median) | vs {rows[0]['name']} | latency p50 us | p99 us | end to end msg/s | vs first | runs msg/s (accepted) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        runs = " ".join(f"{x['rate']:.0f} ({x['accepted']})" for x in r["runs"])
        e = r.get("end_to_end_rate_median")
        e2e = f"{e:.0f} | {e / e2e_base:.2f}x" if e else "- | -"
        out.append(f"| {r['name']} | {r['rate_median']:.0f} | {r['rate_median'] / base:.2f}x | {r['p50_us']:.0f} "
                   f"| {r['p99_us']:.0f} | {e2e} | {runs} |")
    return "\n".join(out)


def half_peak(raw, when):
    out = ["| target | msg/s | accepted | end of DATA to 250 p50 us | p99 us | MAIL FROM to 250 p99 us |",
           "| --- | --- | --- | --- | --- | --- |"]
    for name in ("ringpost", "postfix"):
        path = os.path.join(raw, f"halfpeak-{when}-{name}.json")
        if not os.path.exists(path):
            out.append(f"| {name} | not measured | | | | |")
            continue
        b = json.load(open(path))
        d = b["data_to_250_us"]
        out.append(f"| {name} | {b['rate']:.0f} | {b['accepted']} | {d['p50']} | {d['p99']} | {b['latency_us']['p99']} |")
    before = os.path.join(raw, f"halfpeak-{when}-before.metrics")
    after = os.path.join(raw, f"halfpeak-{when}-after.metrics")
    if os.path.exists(before) and os.path.exists(after):
        total, (p50, p99) = bounds(before, after, "ringpost_store_latency_seconds", [0.5, 0.99])
        out.append("")
        out.append(f"ringpost's own store latency in that run (end of data to durable, its /metrics histogram, "
                   f"{total} messages): p50 at most {p50:g} ms, p99 at most {p99:g} ms.")
    return "\n".join(out)


def main():
    raw = sys.argv[1]
    m = facts(raw, "machine.txt")
    run = facts(raw, "run.txt")
    p = print
    p(f"# ringpost vs Postfix vs smtp-sink ({run['date']})")
    p()
    p(f"- machine: {m['cpus']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, {m['kernel']}, spool on {m['spool_fs']}")
    p(f"- commit: {m['commit']}")
    p(f"- ringpost fsync on, relaying to a sink; Postfix {m['postfix']} (a private instance) relaying to the same sink; "
      "smtp-sink stores nothing")
    p(f"- CPUs: servers on CPU {run['server_cpus']} (ringpost with one worker), load generator and sink on CPUs "
      f"{run['client_cpus']}: figures are per server core")
    p(f"- load: ringpost-bench compare, {run['rounds']} interleaved rounds per cell, medians; each run starts once the "
      "sink is quiet")
    p("- msg/s: messages the server accepted (250) per second, as the client sees it; end to end: accepted, stored and "
      "delivered to the sink, per second")
    p("- latency: MAIL FROM to the final 250, as the client sees it")
    p(f"- command: {run['command']}")
    p(f"- raw output: `{os.path.relpath(raw, os.path.join(raw, '..', '..', '..'))}`; this file is `bench/report.py` "
      "run on it")
    p()
    for size, size_label in targets.SIZES.items():
        for conns in targets.CONNECTIONS:
            for per in targets.PER:
                cell = targets.load(raw, f"{size}B-{conns}c-{per}pc.json")
                p(f"## {size_label}, {conns:,} connections, {per} message(s) per connection")
                p()
                p(cell_table(cell) if cell else "not measured")
                p()
        when = "before-100k" if size == 1024 else "after-100k"
        p(f"## Latency at half the peak rate, {when.replace('-', ' the ')} cells "
          "(1 KiB, 50 connections, 100 messages per connection)")
        p()
        p("Peak: each MTA's median accept rate in the 1 KiB, 50 connections, 100 per connection cell. The load starts")
        p("messages on a fixed schedule at half of it (ringpost-bench blast --rate) for about 20 s.")
        p()
        p(half_peak(raw, when))
        p()
    blast, source = targets.agreement_runs(raw)
    p("## ringpost-bench and smtp-source on the same load")
    p()
    p(f"Both against ringpost: 1 KiB, 50 sessions, {run['messages_1k']} messages, interleaved runs; the rate is what "
      "ringpost accepted (blast's count; for smtp-source, ringpost's own counter) over the run's time.")
    p()
    p("| load generator | msg/s (median) | runs |")
    p("| --- | --- | --- |")
    if blast and source:
        p(f"| ringpost-bench blast | {targets.median(blast):.0f} | {' '.join(f'{x:.0f}' for x in blast)} |")
        p(f"| smtp-source -d | {targets.median(source):.0f} | {' '.join(f'{x:.0f}' for x in source)} |")
    p()
    p("## 10,000 concurrent connections")
    p()
    p("One ringpost process (all workers, delivery held); every session greeted and EHLO answered, all open at once")
    p("(bench/connections.py):")
    p()
    path = os.path.join(raw, "connections.txt")
    for line in (open(path).read().splitlines() if os.path.exists(path) else ["not measured"]):
        p(f"    {line}")
    p()
    p("## Targets")
    p()
    rows = targets.evaluate(raw)
    p(targets.table(rows))
    return 0 if all(ok for _, _, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
