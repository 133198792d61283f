"""The report of bench/inject.sh, from its raw output directory."""
import json
import pathlib
import statistics
import sys

raw = pathlib.Path(sys.argv[1])
facts = dict(l.split(": ", 1) for l in (raw / "machine.txt").read_text().splitlines())
run = dict(l.split(": ", 1) for l in (raw / "run.txt").read_text().splitlines())


def side(name):
    rows = []
    for f in sorted(raw.glob(f"{name}-*.json")):
        if f.name.endswith(".server.json"):
            continue
        load = json.loads(f.read_text())
        server = json.loads(f.with_name(f.name[:-5] + ".server.json").read_text())
        msgs = load["accepted"]
        cpu_us = server["cpu_ticks"] / server["hz"] * 1e6 / max(msgs, 1)
        rows.append((load["rate"], cpu_us, (server["rss_peak_kib"] - server["rss_base_kib"]) / 1024, msgs))
    return rows


smtp, http = side("smtp"), side("http")
med = lambda rows, i: statistics.median(r[i] for r in rows)
print(f"# Injection API vs SMTP ({run['date']})\n")
print(f"- machine: {facts['cpus']} CPUs ({facts['cpu']}), {facts['memory_gib']} GiB, {facts['kernel']}, spool on {facts['spool_fs']}")
print(f"- commit: {facts['commit']}")
print(f"- command: `{run['command']}` ({run['binary']})")
print(f"- {run['rounds']} interleaved rounds of {run['messages_per_run']} messages of 1 KiB each side; one worker on CPU 0,")
print("  fsync on, `[delivery] hold = true`; SMTP: `ringpost-bench blast`, 50 connections;")
print("  HTTP: `ringpost-bench inject`, one POST of all the recipients (personalised subject and body)\n")
print("| | msg/s (median) | server CPU per message (median) | peak RSS above start (median) |")
print("| --- | --- | --- | --- |")
for name, rows in (("SMTP", smtp), ("HTTP inject", http)):
    print(f"| {name} | {med(rows, 0):,.0f} | {med(rows, 1):.1f} us | {med(rows, 2):.1f} MiB |")
print(f"\nHTTP/SMTP rate ratio (median of the rates): {med(http, 0) / med(smtp, 0):.2f}\n")
print("Every run (rate msg/s, CPU us/msg, RSS MiB):\n")
for name, rows in (("smtp", smtp), ("http", http)):
    print(f"- {name}: " + "; ".join(f"{r[0]:,.0f}, {r[1]:.1f}, {r[2]:.1f}" for r in rows))
