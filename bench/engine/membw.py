#!/usr/bin/env python3
"""numpy's memory read bandwidth, measured as ../shared/bench/engine/baseline.py measures
it (1 GiB of float64: `src.sum()` on one core, BLAS `src @ src` on 1 and 2 threads,
median of `--repeats` runs each), for `make bench-engine` to pair with our mean +
variance seconds apart. Prints one JSON object: each measurement and the best, in GB/s.

  python3 membw.py [--repeats 3]
"""
import argparse, json, statistics, time

import numpy as np
from threadpoolctl import threadpool_limits

ap = argparse.ArgumentParser()
ap.add_argument("--repeats", type=int, default=3)
repeats = ap.parse_args().repeats

size = 1 << 30
src = np.ones(size // 8)

def gb_per_s(op):
    op()  # warm-up
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        op()
        runs.append(time.perf_counter() - start)
    return size / statistics.median(runs) / 1e9

each = {"src.sum(), 1 core": gb_per_s(src.sum)}
for threads in (1, 2):
    with threadpool_limits(limits=threads, user_api="blas"):
        each[f"BLAS ddot src.src, threads={threads}"] = gb_per_s(lambda: src @ src)
print(json.dumps({"mem_read_GB_per_s": max(each.values()), "each": each}))
