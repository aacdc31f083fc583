#!/bin/bash
# After run_ablation_v19.sh (seed 1: the projected bank at weight 0.25 is 2.7 below CondInst on
# shapes, 0.9 above on cells): its seeds 2 and 3 on both datasets, and the same weight without
# the projection on cells (3 seeds; on shapes those are run_ablation_v2.sh's), so that the
# projection is measured against its own control. Two chains of about equal length.
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
PROJECTED="IUQ (defaults, weight 0.25, conflict projected)"
PLAIN="IUQ (defaults, weight 0.25)"
(
    "${RUN[@]}" --seeds 2 --variants "$PROJECTED"
    "${RUN[@]}" --seeds 1 2 --variants "$PLAIN" "${CELLS[@]}"
) &
FIRST=$!
(
    "${RUN[@]}" --seeds 2 3 --variants "$PROJECTED" "${CELLS[@]}"
    "${RUN[@]}" --seeds 3 --variants "$PROJECTED"
    "${RUN[@]}" --seeds 3 --variants "$PLAIN" "${CELLS[@]}"
) &
SECOND=$!
wait_chains "$FIRST" "$SECOND"
"${RUN[@]}" --seeds 1 2 3 --out benchmarks/results/ablation_v20_cells_cpu.json \
    --variants "$PROJECTED" "$PLAIN" "${CELLS[@]}"
"${RUN[@]}" --seeds 1 2 3 --out benchmarks/results/ablation_v20_shapes_cpu.json \
    --variants "$PROJECTED"
