#!/usr/bin/env python3
"""Quantiles of a ringpost /metrics histogram over an interval.

usage: bench/histogram.py BEFORE AFTER METRIC Q [Q ...]
BEFORE and AFTER are two saves of /metrics; prints the number of observations
between them, then for each quantile Q (0 to 1) the upper bound, in ms, of the
first bucket that holds it ("at most"). Also imported by bench/latency.sh.
"""
import re
import sys


def buckets(path, metric):
    out = {}
    with open(path) as f:
        for line in f:
            m = re.match(re.escape(metric) + r'_bucket\{le="([^"]+)"\} (\d+)', line)
            if m:
                out[m.group(1)] = int(m.group(2))
    return out


def bounds(before, after, metric, quantiles):
    """(observations, [upper bound in ms of the bucket holding each quantile])."""
    a, b = buckets(before, metric), buckets(after, metric)
    total = b["+Inf"] - a.get("+Inf", 0)
    ms = [float(next(k for k in b if b[k] - a.get(k, 0) >= q * total)) * 1000 for q in quantiles]
    return total, ms


if __name__ == "__main__":
    total, ms = bounds(sys.argv[1], sys.argv[2], sys.argv[3], [float(q) for q in sys.argv[4:]])
    print(total, *(f"{x:g}" for x in ms))
