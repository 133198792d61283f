#!/usr/bin/env python3
"""Holds N concurrent SMTP sessions open against one ringpost process and
reports its memory per connection (RSS and private dirty pages from /proc).

usage: bench/connections.py PID HOST PORT N
Every session gets its greeting and answers EHLO, then idles; all N are open
at once when memory is read. Run with a file limit above N (ulimit -n).
"""
import resource
import selectors
import socket
import sys
import time


def memory_kib(pid):
    rss = dirty = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Private_Dirty:"):
                dirty = int(line.split()[1])
    return rss, dirty


def main():
    pid, host, port, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 100)), hard))
    before = memory_kib(pid)
    sel = selectors.DefaultSelector()
    socks = []
    state = {}
    started = time.time()
    for i in range(n):
        s = socket.create_connection((host, port), timeout=30)
        s.setblocking(False)
        socks.append(s)
        state[s] = b""
        sel.register(s, selectors.EVENT_READ)
        # Drain replies as we go so the server never waits on us.
        for key, _ in sel.select(timeout=0):
            advance(key.fileobj, state, sel)
    deadline = time.time() + 120
    while any(v != b"DONE" for v in state.values()) and time.time() < deadline:
        for key, _ in sel.select(timeout=1):
            advance(key.fileobj, state, sel)
    ready = sum(1 for v in state.values() if v == b"DONE")
    time.sleep(1)
    after = memory_kib(pid)
    elapsed = time.time() - started
    print(f"sessions open at once: {ready} of {n} (greeted and EHLO answered) in {elapsed:.1f} s")
    print(f"ringpost RSS: {before[0]} KiB -> {after[0]} KiB: {(after[0] - before[0]) * 1024 / max(ready, 1):.0f} bytes per connection")
    print(f"ringpost private dirty: {before[1]} KiB -> {after[1]} KiB: {(after[1] - before[1]) * 1024 / max(ready, 1):.0f} bytes per connection")
    for s in socks:
        s.close()
    return 0 if ready == n else 1


def advance(s, state, sel):
    try:
        data = s.recv(4096)
    except BlockingIOError:
        return
    if not data:
        state[s] = b"CLOSED"
        sel.unregister(s)
        return
    buf = state[s] + data
    if buf.startswith(b"220 ") and b"\r\n" in buf and b"EHLO-SENT" not in buf:
        s.send(b"EHLO load.test\r\n")
        state[s] = b"EHLO-SENT"
        return
    if state[s].startswith(b"EHLO-SENT"):
        rest = buf[len(b"EHLO-SENT"):]
        if b"\r\n250 " in b"\r\n" + rest and rest.endswith(b"\r\n"):
            state[s] = b"DONE"
            sel.unregister(s)
            return
    state[s] = buf


if __name__ == "__main__":
    sys.exit(main())
