#!/bin/bash
# The controls the earlier screens left out, full demo recipe, one core per run, two chains:
# - shapes, GroupNorm, paired: the views without their losses (seeds 1-3) beside GroupNorm
#   CondInst (seeds 2-3; seed 1 and the query term are run_ablation_v5.sh's): what halving the
#   distinct images per step costs on shapes;
# - the views in extra mode (8 images per step): shapes seed 2 of run_ablation_v6.sh's
#   views-only run (seed 3 did not fit in the session), against CondInst with 8 distinct
#   images per step (IMS_PER_BATCH 8; cells seeds 1-3, shapes seed 2): is their gain the
#   views' or the batch's?
# - ours: the query term at a tenth of the paper's weight in extra mode (cells, seed 1).
# The last commands only collect the runs into JSON.
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
CHAINS=()
XVIEWS="views only (extra)"
XLIGHT="+equivariance (extra, query 0.3, feat 0)"
BIG="CondInst (IMS_PER_BATCH 8)"
GN="CondInst (GN)"
GVIEWS="views only (GN, paired)"
(
    "${RUN[@]}" --seeds 2 --variants "$XVIEWS"
    "${RUN[@]}" --seeds 1 2 3 --variants "$BIG" "${CELLS[@]}"
    "${RUN[@]}" --seeds 2 --variants "$BIG"
) &
CHAINS+=($!)
(
    "${RUN[@]}" --seeds 1 --variants "$GVIEWS"
    "${RUN[@]}" --seeds 1 --variants "$XLIGHT" "${CELLS[@]}"
    "${RUN[@]}" --seeds 2 3 --variants "$GVIEWS" "$GN"
) &
CHAINS+=($!)
wait_chains "${CHAINS[@]}"
"${RUN[@]}" --seeds 1 2 3 --out benchmarks/results/ablation_v8_shapes_gn_views_cpu.json \
    --variants "$GVIEWS"
"${RUN[@]}" --seeds 2 3 --out benchmarks/results/ablation_v8_shapes_gn_cpu.json --variants "$GN"
"${RUN[@]}" --seeds 2 --out benchmarks/results/ablation_v8_shapes_big_cpu.json \
    --variants "$XVIEWS" "$BIG"
"${RUN[@]}" --seeds 1 2 3 --out benchmarks/results/ablation_v8_cells_big_cpu.json \
    --variants "$BIG" "${CELLS[@]}"
"${RUN[@]}" --seeds 1 --out benchmarks/results/ablation_v8_cells_light_cpu.json \
    --variants "$XLIGHT" "${CELLS[@]}"
