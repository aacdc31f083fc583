#!/bin/bash
# The method issue's equivariance hypothesis: with GroupNorm in the backbone and the mask
# branch, "paired" views no longer halve the images BatchNorm's statistics come from. CondInst
# with GroupNorm against the paper's equivariance (query term, weight 3; no representation
# term) in paired mode with GroupNorm: full demo recipe, one core per run, one chain per
# variant. Cells on 3 seeds, then shapes on seed 1 (the session's time allowed no more); the
# last two commands only collect the runs into JSON.
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
CHAINS=()
BASE="CondInst (GN)"
EQUI="+equivariance (GN, paired, query 3, feat 0)"
for variant in "$BASE" "$EQUI"; do
    (
        "${RUN[@]}" --seeds 1 2 3 --variants "$variant" "${CELLS[@]}"
        "${RUN[@]}" --seeds 1 --variants "$variant"
    ) &
    CHAINS+=($!)
done
wait_chains "${CHAINS[@]}"
"${RUN[@]}" --seeds 1 --out benchmarks/results/ablation_v5_shapes_cpu.json \
    --variants CondInst "$BASE" "$EQUI"
"${RUN[@]}" --seeds 1 2 3 --out benchmarks/results/ablation_v5_cells_cpu.json \
    --variants CondInst "$BASE" "$EQUI" "${CELLS[@]}"
