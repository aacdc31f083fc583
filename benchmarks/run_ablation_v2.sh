#!/bin/bash
# The full-schedule comparison on the current code (fused AdamW, channels-last demo model,
# float box coordinates in the mapper), both embedded datasets, 3 seeds, one core per run.
# Ordered so that a cut-short run still leaves complete pairs: CondInst and the lower weight
# on both datasets first, then the defaults (what the demo trains).
set -e
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CELLS=(--dataset cells SOLVER.MAX_ITER 1400 "SOLVER.STEPS" "(1050,1300)"
       INPUT.MIN_SIZE_TEST 160 INPUT.MAX_SIZE_TEST 256)
for variants in 'CondInst|IUQ (defaults, weight 0.1)' \
                'CondInst|IUQ (defaults, weight 0.1)|IUQ (defaults)'; do
    IFS='|' read -ra V <<< "$variants"
    $PY benchmarks/ablation.py --jobs 2 --seeds 1 2 3 --variants "${V[@]}" \
        --root output/ablation_v2 --out benchmarks/results/ablation_v2_shapes_cpu.json
    $PY benchmarks/ablation.py --jobs 2 --seeds 1 2 3 --variants "${V[@]}" "${CELLS[@]:0:2}" \
        --root output/ablation_v2 --out benchmarks/results/ablation_v2_cells_cpu.json \
        "${CELLS[@]:2}"
done
