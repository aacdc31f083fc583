#!/bin/bash
# The full-schedule comparison on the current code (fused AdamW, channels-last demo model,
# float box coordinates in the mapper), 3 seeds, one core per run: CondInst and the bank at
# weight 0.1 on both embedded datasets, then the earlier default weight 0.25 on shapes.
# An interrupted run continues where it stopped (ablation.py skips finished runs).
set -e
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN=($PY benchmarks/ablation.py --jobs 2 --seeds 1 2 3 --root output/ablation_v2)
PAIR=(CondInst "IUQ (defaults, weight 0.1)")
"${RUN[@]}" --variants "${PAIR[@]}" --out benchmarks/results/ablation_v2_shapes_cpu.json
"${RUN[@]}" --variants "${PAIR[@]}" --dataset cells \
    --out benchmarks/results/ablation_v2_cells_cpu.json \
    SOLVER.MAX_ITER 1400 SOLVER.STEPS "(1050,1300)" INPUT.MIN_SIZE_TEST 160 INPUT.MAX_SIZE_TEST 256
"${RUN[@]}" --variants "${PAIR[@]}" "IUQ (defaults, weight 0.25)" \
    --out benchmarks/results/ablation_v2_shapes_cpu.json
