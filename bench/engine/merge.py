#!/usr/bin/env python3
"""Merges the rounds of `make bench-engine` into one ours.json and one baseline.json.

  python3 merge.py OUT_DIR ROUNDS

Reads OUT_DIR/ours-crypto.json and OUT_DIR/baseline-openssl.json (measured once), and
OUT_DIR/ours-kernels-<r>.json and OUT_DIR/baseline-numpy-<r>.json for r = 1..ROUNDS
(our Analyze / sort / GEMM and numpy's, taken in turn so that a slow spell of the machine
falls on both sides). Every number is the median over the rounds; numpy's `runs_s` are
all kept.
"""
import json, statistics, sys

out, rounds = sys.argv[1], int(sys.argv[2])
load = lambda name: json.load(open(f"{out}/{name}"))
median = lambda values: statistics.median(values)

def merge(dicts):
    """The first dict's shape; each number the median of the dicts' values."""
    merged = {}
    for key, first in dicts[0].items():
        values = [d[key] for d in dicts if key in d]
        if isinstance(first, bool) or not isinstance(first, (int, float, dict)):
            merged[key] = first
        elif isinstance(first, dict):
            merged[key] = merge(values)
        else:
            merged[key] = median(values)
    if "runs_s" in dicts[0]:
        merged["runs_s"] = [run for d in dicts for run in d["runs_s"]]
    return merged

ours = load("ours-crypto.json")
kernels = [load(f"ours-kernels-{r}.json") for r in range(1, rounds + 1)]
ours.update({k: v for k, v in merge(kernels).items() if k not in ("n", "threads")})
ours["rounds"] = rounds
json.dump(ours, open(f"{out}/ours.json", "w"))

baseline = load("baseline-openssl.json")
numpy_rounds = [load(f"baseline-numpy-{r}.json") for r in range(1, rounds + 1)]
baseline["numpy"] = merge([b["numpy"] for b in numpy_rounds])
baseline["rounds"] = rounds
json.dump(baseline, open(f"{out}/baseline.json", "w"), indent=1)
