#!/bin/bash
# The equivariance hypotheses of the method issue that were left: the query term (weight 3, no
# representation term) in "extra" mode (IMS_PER_BATCH originals plus their views, BatchNorm as
# in the demo model) against the same views without their losses, cells on 3 seeds and shapes
# on seed 1; full demo recipe, one core per run, one chain per variant. The last two commands
# only collect the runs into JSON.
set -e
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN=($PY benchmarks/ablation.py --jobs 1 --root output/ablation_v2)
VIEWS="views only (extra)"
EQUI="+equivariance (extra, query 3, feat 0)"
CELLS=(--dataset cells SOLVER.MAX_ITER 1400 SOLVER.STEPS "(1050,1300)"
    INPUT.MIN_SIZE_TEST 160 INPUT.MAX_SIZE_TEST 256)
for variant in "$VIEWS" "$EQUI"; do
    (
        "${RUN[@]}" --seeds 1 2 3 --variants "$variant" "${CELLS[@]}"
        "${RUN[@]}" --seeds 1 --variants "$variant"
    ) &
done
wait
"${RUN[@]}" --seeds 1 --out benchmarks/results/ablation_v6_shapes_cpu.json \
    --variants CondInst "$VIEWS" "$EQUI"
"${RUN[@]}" --seeds 1 2 3 --out benchmarks/results/ablation_v6_cells_cpu.json \
    --variants CondInst "$VIEWS" "$EQUI" "${CELLS[@]}"
