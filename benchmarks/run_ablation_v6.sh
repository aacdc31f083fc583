#!/bin/bash
# The equivariance hypotheses of the method issue that were left: the query term (weight 3, no
# representation term) in "extra" mode (IMS_PER_BATCH originals plus their views, BatchNorm as
# in the demo model) against the same views without their losses, cells on 3 seeds and shapes
# on seed 1; full demo recipe, one core per run, one chain per variant. The last two commands
# only collect the runs into JSON.
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
CHAINS=()
VIEWS="views only (extra)"
EQUI="+equivariance (extra, query 3, feat 0)"
for variant in "$VIEWS" "$EQUI"; do
    (
        "${RUN[@]}" --seeds 1 2 3 --variants "$variant" "${CELLS[@]}"
        "${RUN[@]}" --seeds 1 --variants "$variant"
    ) &
    CHAINS+=($!)
done
wait_chains "${CHAINS[@]}"
"${RUN[@]}" --seeds 1 --out benchmarks/results/ablation_v6_shapes_cpu.json \
    --variants CondInst "$VIEWS" "$EQUI"
"${RUN[@]}" --seeds 1 2 3 --out benchmarks/results/ablation_v6_cells_cpu.json \
    --variants CondInst "$VIEWS" "$EQUI" "${CELLS[@]}"
