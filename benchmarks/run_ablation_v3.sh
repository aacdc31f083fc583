#!/bin/bash
# A seed-1 screen of the dice form of the inter-scene loss (MODEL.IUQ.INTER.LOSS_FORM dice,
# one other image's worth of foreign pixels in each query's dice denominator) at the full demo
# recipe on both datasets, one core per run, beside CondInst and the default bank of
# run_ablation_v2.sh (same root). It fell 6.5 (shapes) and 22 (cells) mask AP below CondInst,
# far outside the seed spread, so the 3-seed run and the 4-image variant were stopped.
set -e
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN=($PY benchmarks/ablation.py --jobs 2 --root output/ablation_v2 --seeds 1)
VARIANTS=(CondInst "IUQ (defaults, weight 0.1)" "IUQ (dice form, 1 image)")
"${RUN[@]}" --out benchmarks/results/ablation_v3_shapes_cpu.json --variants "${VARIANTS[@]}"
"${RUN[@]}" --out benchmarks/results/ablation_v3_cells_cpu.json --variants "${VARIANTS[@]}" \
    --dataset cells SOLVER.MAX_ITER 1400 SOLVER.STEPS "(1050,1300)" \
    INPUT.MIN_SIZE_TEST 160 INPUT.MAX_SIZE_TEST 256
