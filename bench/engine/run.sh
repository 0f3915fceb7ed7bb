#!/usr/bin/env bash
# make bench-engine: our core-engine benchmarks and the OpenSSL / numpy baselines of
# ../shared/bench/engine, in the same run, then the ratios (bench/engine/compare.py).
# BENCH_QUICK=1 for a smoke run (small sizes; the ratios are then not meaningful).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
shared="${SHARED:-$root/../shared}"
out="${BENCH_OUT:-$root/target/bench-engine}"
mkdir -p "$out"
quick=()
baseline_args=(--repeats 3 --seconds 2)
if [[ "${BENCH_QUICK:-}" == 1 ]]; then
  quick=(--quick)
  baseline_args=(--repeats 1 --seconds 1)
fi

# numpy and threadpoolctl from PyPI, in the project's virtualenv.
venv="$root/.venv"
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import numpy, threadpoolctl' 2>/dev/null \
  || "$venv/bin/pip" install --quiet --disable-pip-version-check numpy threadpoolctl

echo "== core-engine (cargo bench -p core-engine --bench engine)" >&2
cargo bench -q -p core-engine --bench engine -- "${quick[@]}" | tail -n 1 > "$out/ours.json"

echo "== baselines (shared/bench/engine/baseline.sh ${baseline_args[*]})" >&2
PATH="$venv/bin:$PATH" BASELINE_JSON="$out/baseline.json" \
  bash "$shared/bench/engine/baseline.sh" "${baseline_args[@]}" > "$out/baseline.md"

"$venv/bin/python" bench/engine/compare.py "$out/ours.json" "$out/baseline.json" | tee "$out/results.md"
