#!/usr/bin/env python3
"""Merges the rounds of `make bench-engine` into one ours.json and one baseline.json.

  python3 merge.py OUT_DIR ROUNDS [PAIRS]

Reads OUT_DIR/ours-crypto.json and OUT_DIR/baseline-openssl.json (measured once), and
OUT_DIR/ours-kernels-<r>.json and OUT_DIR/baseline-numpy-<r>.json for r = 1..ROUNDS
(our Analyze / sort / GEMM and numpy's, taken in turn so that a slow spell of the machine
falls on both sides). Every number is the median over the rounds; numpy's `runs_s` are
all kept. With PAIRS, OUT_DIR/ours-mv-<p>.json and OUT_DIR/membw-<p>.json for p = 1..PAIRS
(our mean + variance, then numpy's memory read, seconds apart) give each pair's ratio;
ours.json gets the pairs and the median ratio.
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
pairs = int(sys.argv[3]) if len(sys.argv) > 3 else 0
if pairs:
    paired = []
    for p in range(1, pairs + 1):
        mv, membw = load(f"ours-mv-{p}.json"), load(f"membw-{p}.json")
        # The lower of huge and ordinary pages, as the unpaired row holds to the floor.
        gb = min(mv["mean_variance_GB_per_s"], mv["mean_variance_small_pages_GB_per_s"])
        paired.append({"mean_variance_GB_per_s": gb,
                       "mem_read_GB_per_s": membw["mem_read_GB_per_s"],
                       "ratio": gb / membw["mem_read_GB_per_s"]})
    ours["mean_variance_pairs"] = paired
    ours["mean_variance_paired_ratio"] = median([p["ratio"] for p in paired])
json.dump(ours, open(f"{out}/ours.json", "w"))

baseline = load("baseline-openssl.json")
numpy_rounds = [load(f"baseline-numpy-{r}.json") for r in range(1, rounds + 1)]
baseline["numpy"] = merge([b["numpy"] for b in numpy_rounds])
baseline["rounds"] = rounds
json.dump(baseline, open(f"{out}/baseline.json", "w"), indent=1)
