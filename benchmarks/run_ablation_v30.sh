#!/bin/bash
# After run_ablation_v29.sh (5 seeds: the default bank -0.1 on shapes, -0.5 on cells): seeds 4
# and 5 of the per-query curriculum (own dice >= 0.8), the best 8-d bank on cells over 3 seeds
# (+0.6), so that it is compared with CondInst on the same 5 seeds.
set -e
cd "$(dirname "$0")/.."
source benchmarks/ablation_recipe.sh
GATED="IUQ (defaults, own dice >= 0.8)"
("${RUN[@]}" --seeds 4 --variants "$GATED" && "${RUN[@]}" --seeds 4 --variants "$GATED" "${CELLS[@]}") &
FIRST=$!
("${RUN[@]}" --seeds 5 --variants "$GATED" && "${RUN[@]}" --seeds 5 --variants "$GATED" "${CELLS[@]}") &
SECOND=$!
wait_chains "$FIRST" "$SECOND"
# CondInst's seeds 4 and 5 are in v29's JSON (ablation_v29_*_cpu.json); only the gated runs
# are summarized here, so that CondInst is not retrained.
"${RUN[@]}" --seeds 4 5 --out benchmarks/results/ablation_v30_shapes_cpu.json --variants "$GATED"
"${RUN[@]}" --seeds 4 5 --out benchmarks/results/ablation_v30_cells_cpu.json \
    --variants "$GATED" "${CELLS[@]}"
