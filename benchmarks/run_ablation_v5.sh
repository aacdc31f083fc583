#!/bin/bash
# The method issue's equivariance hypothesis: with GroupNorm in the backbone and the mask
# branch, "paired" views no longer halve the images BatchNorm's statistics come from. CondInst
# with GroupNorm against the paper's equivariance (query term, weight 3; no representation
# term) in paired mode with GroupNorm: full demo recipe, one core per run, one chain per
# variant. Cells on 3 seeds, then shapes on seed 1 (the session's time allowed no more); the
# last two commands only collect the runs into JSON.
set -e
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN=($PY benchmarks/ablation.py --jobs 1 --root output/ablation_v2)
BASE="CondInst (GN)"
EQUI="+equivariance (GN, paired, query 3, feat 0)"
CELLS=(--dataset cells SOLVER.MAX_ITER 1400 SOLVER.STEPS "(1050,1300)"
    INPUT.MIN_SIZE_TEST 160 INPUT.MAX_SIZE_TEST 256)
for variant in "$BASE" "$EQUI"; do
    (
        "${RUN[@]}" --seeds 1 2 3 --variants "$variant" "${CELLS[@]}"
        "${RUN[@]}" --seeds 1 --variants "$variant"
    ) &
done
wait
"${RUN[@]}" --seeds 1 --out benchmarks/results/ablation_v5_shapes_cpu.json \
    --variants CondInst "$BASE" "$EQUI"
"${RUN[@]}" --seeds 1 2 3 --out benchmarks/results/ablation_v5_cells_cpu.json \
    --variants CondInst "$BASE" "$EQUI" "${CELLS[@]}"
