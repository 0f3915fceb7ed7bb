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

# Crypto and RPCs once, against OpenSSL once (the RPC rows alternate with their own
# baselines inside the benchmark).
echo "== core-engine: sealing and RPCs (cargo bench -p core-engine --bench engine)" >&2
ENGINE_BENCH_ONLY=seal,rpc cargo bench -q -p core-engine --bench engine -- "${quick[@]}" \
  | tail -n 1 > "$out/ours-crypto.json"
echo "== baselines: openssl speed (shared/bench/engine/baseline.sh ${baseline_args[*]} --skip-numpy)" >&2
PATH="$venv/bin:$PATH" BASELINE_JSON="$out/baseline-openssl.json" \
  bash "$shared/bench/engine/baseline.sh" "${baseline_args[@]}" --skip-numpy > "$out/baseline-openssl.md"
# Analyze, sort and GEMM against numpy in alternating rounds (ours, numpy, ours, …), so
# that a slow spell of this shared machine falls on both; medians over the rounds.
rounds=${ENGINE_BENCH_ROUNDS:-3}
[[ "${BENCH_QUICK:-}" == 1 ]] && rounds=1
for round in $(seq 1 "$rounds"); do
  echo "== round $round of $rounds: core-engine's Analyze, sort and GEMM, then numpy's" >&2
  ENGINE_BENCH_ONLY=analyze,sort,matmul cargo bench -q -p core-engine --bench engine -- "${quick[@]}" \
    | tail -n 1 > "$out/ours-kernels-$round.json"
  PATH="$venv/bin:$PATH" BASELINE_JSON="$out/baseline-numpy-$round.json" \
    bash "$shared/bench/engine/baseline.sh" "${baseline_args[@]}" --skip-openssl \
    > "$out/baseline-numpy-$round.md"
done
# Mean + variance against numpy's memory read in tight pairs (ours, then numpy's, seconds
# apart): this VM's memory bandwidth swings between about 30 and 58 GB/s from one minute
# to the next, more than the floor's margin. The floor takes the median of the pairs'
# ratios; the rounds above give the same row unpaired, for context.
pairs=${ENGINE_BENCH_PAIRS:-5}
[[ "${BENCH_QUICK:-}" == 1 ]] && pairs=1
echo "== $pairs pairs: core-engine's mean + variance, then numpy's memory read (bench/engine/membw.py)" >&2
for pair in $(seq 1 "$pairs"); do
  ENGINE_BENCH_ONLY=mv cargo bench -q -p core-engine --bench engine -- "${quick[@]}" \
    | tail -n 1 > "$out/ours-mv-$pair.json"
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$venv/bin/python" bench/engine/membw.py \
    > "$out/membw-$pair.json"
done
"$venv/bin/python" bench/engine/merge.py "$out" "$rounds" "$pairs"

"$venv/bin/python" bench/engine/compare.py "$out/ours.json" "$out/baseline.json" | tee "$out/results.md"
