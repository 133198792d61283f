#!/usr/bin/env python3
"""Do two fdatasyncs in flight on one file overlap on this disk?

A pipelined spool commit (the next batch written and synced while the
current fdatasync runs) bounds a message's wait by one fdatasync only if
the disk serves two syncs of the same file at once. This writes 8 KiB and
fdatasyncs, N times in one thread, then N times split over two threads
(the syscalls run in parallel: Python releases its lock around them), on a
preallocated file in DIR (put it on the spool's filesystem), and prints
the wall time of each and the sync latencies.

usage: bench/syncoverlap.py [DIR] [N]     (writes 64 MiB in DIR, removed after)
"""
import os
import statistics
import sys
import threading
import time

d = sys.argv[1] if len(sys.argv) > 1 else "."
n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
path = os.path.join(d, f"syncoverlap.{os.getpid()}")
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
try:
    os.ftruncate(fd, 64 << 20)
    os.fsync(fd)
    buf = b"x" * 8192
    lat = {"one": [], "two": []}

    def op(kind, off):
        os.pwrite(fd, buf, off % (64 << 20))
        t = time.perf_counter()
        os.fdatasync(fd)
        lat[kind].append(time.perf_counter() - t)

    t0 = time.perf_counter()
    for i in range(n):
        op("one", i * 8192)
    one = time.perf_counter() - t0

    def stream(first):
        for i in range(first, n, 2):
            op("two", i * 8192)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=stream, args=(k,)) for k in (0, 1)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    two = time.perf_counter() - t0
    for k, wall in (("one", one), ("two", two)):
        v = sorted(lat[k])
        print(f"{k} thread(s): {n} write+fdatasync in {wall:.3f} s ({n / wall:.0f}/s); "
              f"sync p50 {statistics.median(v) * 1e6:.0f} us, p99 {v[int(len(v) * 0.99)] * 1e6:.0f} us")
    print(f"two in flight / one at a time, throughput: {one / two:.2f}x")
finally:
    os.close(fd)
    os.unlink(path)
