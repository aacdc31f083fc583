#!/bin/bash
# The seeds the earlier screens left out, so that every equivariance comparison has 3 seeds on
# both datasets: shapes seeds 2 and 3 of run_ablation_v6.sh (extra mode) and of
# run_ablation_v5.sh/v7.sh (GroupNorm, paired; the views-only control on all three), then
# seeds 2 and 3 of run_ablation_v7.sh's two bank placements on both datasets, and one screen of
# ours: the query term at a tenth of the paper's weight in extra mode (cells, seed 1). Full demo
# recipe, one core per run, two chains; the last commands only collect the runs into JSON.
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
XVIEWS="views only (extra)"
XEQUI="+equivariance (extra, query 3, feat 0)"
XLIGHT="+equivariance (extra, query 0.3, feat 0)"
GN="CondInst (GN)"
GVIEWS="views only (GN, paired)"
GEQUI="+equivariance (GN, paired, query 3, feat 0)"
RANDOM_PLACE="IUQ (defaults, random placement)"
SAME="IUQ (defaults, same class only)"
(
    "${RUN[@]}" --seeds 2 3 --variants "$XVIEWS" "$XEQUI"
    "${RUN[@]}" --seeds 2 3 --variants "$RANDOM_PLACE" "${CELLS[@]}"
    "${RUN[@]}" --seeds 2 3 --variants "$SAME" "${CELLS[@]}"
) &
(
    "${RUN[@]}" --seeds 1 2 3 --variants "$GVIEWS"
    "${RUN[@]}" --seeds 2 3 --variants "$GN" "$GEQUI"
    "${RUN[@]}" --seeds 1 --variants "$XLIGHT" "${CELLS[@]}"
    "${RUN[@]}" --seeds 2 3 --variants "$RANDOM_PLACE"
    "${RUN[@]}" --seeds 2 3 --variants "$SAME"
) &
wait
"${RUN[@]}" --seeds 2 3 --out benchmarks/results/ablation_v8_shapes_extra_cpu.json \
    --variants "$XVIEWS" "$XEQUI"
"${RUN[@]}" --seeds 2 3 --out benchmarks/results/ablation_v8_shapes_gn_cpu.json \
    --variants "$GN" "$GEQUI"
"${RUN[@]}" --seeds 1 2 3 --out benchmarks/results/ablation_v8_shapes_gn_views_cpu.json \
    --variants "$GVIEWS"
"${RUN[@]}" --seeds 2 3 --out benchmarks/results/ablation_v8_shapes_bank_cpu.json \
    --variants "$RANDOM_PLACE" "$SAME"
"${RUN[@]}" --seeds 2 3 --out benchmarks/results/ablation_v8_cells_bank_cpu.json \
    --variants "$RANDOM_PLACE" "$SAME" "${CELLS[@]}"
"${RUN[@]}" --seeds 1 --out benchmarks/results/ablation_v8_cells_light_cpu.json \
    --variants "$XLIGHT" "${CELLS[@]}"
